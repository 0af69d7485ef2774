"""What the search may do to each module, and what each choice costs: bytes on disk, or predicted latency.

A module's weights run as one or two operators (a dense Linear: one MatMul; factorised at rank r: in x r then
r x out; the word embeddings: a Gather, then an r x d MatMul when factorised, plus a Gather of the exact rows).
A choice's cost is the sum over those operators at its precision; the rest of the model (biases, norms, the
other embeddings, attention's own products) is a fixed cost measured once on the fp32 graph.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from edgefold.exporter.graph.quantize import LOW_BITS
from edgefold.exporter.planning.plan import ModuleChoice
from edgefold.exporter.search.latency import OpShape
from edgefold.runtime.optable import LatencyTable

OBJECTIVES = ("size", "latency")
#: Bytes per scale: MatMulNBits and GatherBlockQuantized store one fp32 scale per block (symmetric: no zero point).
_SCALE_BYTES = 4


@dataclass(frozen=True)
class Option:
    """One choice for one module: its operators, bytes stored beside them, and the fidelity it loses alone."""

    choice: ModuleChoice
    ops: tuple[OpShape, ...]
    extra_bytes: int = 0  # the exact rows' slot lookup (int32, one per vocabulary row): never quantised
    loss: float = 0.0


def weight_bytes(op: OpShape, precision: str) -> int:
    """Bytes of one operator's weight at ``precision``: MatMul k x n blocked along k; Gather rows blocked along n."""
    values = op.k * op.n
    if precision == "fp32":
        return 4 * values
    if precision == "int8":
        return values
    bits, size = LOW_BITS[precision]
    outer, inner = (op.n, op.k) if op.op == "MatMul" else (op.k, op.n)
    blocks = outer * math.ceil(inner / size)
    return blocks * (size * bits // 8 + _SCALE_BYTES)


def option_bytes(option: Option) -> int:
    return sum(weight_bytes(op, option.choice.precision) for op in option.ops) + option.extra_bytes


class Cost:
    """The objective's cost of a plan: fixed + the sum of its modules' options."""

    def __init__(self, objective: str, fixed: float, table: LatencyTable | None = None):
        self.objective, self.fixed, self.table = objective, fixed, table
        self._ms: dict[tuple[OpShape, str], float] = {}

    def of(self, option: Option) -> float:
        if self.objective == "size":
            return float(option_bytes(option))
        return sum(self._op_ms(op, option.choice.precision) for op in option.ops)

    def _op_ms(self, op: OpShape, precision: str) -> float:
        if (op, precision) not in self._ms:
            self._ms[(op, precision)] = table_ms(self.table, op, precision)
        return self._ms[(op, precision)]

    def total(self, options: dict[str, Option]) -> float:
        return self.fixed + sum(self.of(option) for option in options.values())


def table_ms(table: LatencyTable, op: OpShape, precision: str) -> float:
    """The measured time of ``op``, or one scaled from the nearest measured shape of the same operator and
    precision (a factor's rank depends on the fit, so a table measured on a board covers a grid of ranks): a
    MatMul's time grows with k * n, a Gather's with n alone (it copies one row per token, however many rows)."""
    key = (op.op, op.k, op.n, precision)
    if key in table:
        return table.ms(*key)

    def size(k: int, n: int) -> int:
        return k * n if op.op == "MatMul" else n

    measured = [(k, n, ms) for (o, k, n, p), ms in table.entries.items() if o == op.op and p == precision]
    if not measured:
        return table.ms(*key)  # raises, naming what is missing
    k, n, ms = min(measured, key=lambda e: (abs(math.log(size(e[0], e[1]) / size(op.k, op.n))), e[0], e[1]))
    return ms * size(op.k, op.n) / size(k, n)


def fixed_cost(objective: str, dense: dict[str, Option], measured: float, table: LatencyTable | None) -> float:
    """What the untouched rest costs: the fp32 model's measured bytes (or ms) less its modules' fp32 options."""
    return max(measured - Cost(objective, 0.0, table).total(dense), 0.0)
