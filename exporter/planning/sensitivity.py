"""A global budget: ranks allocated per module by measured sensitivity, instead of one ratio for every module.

Each module is compressed alone at a few ranks and the fidelity lost on validation text is measured. Starting
from every module dense, the step that loses the least fidelity per parameter saved is taken, again and again,
until the targeted weights fit the budget; no module goes below its floor. Sensitivities are measured one module
at a time and summed, which assumes the losses add up; the export's fidelity check measures the real total.
Structured pruning allocates the widths of its blocks the same way (a block's parameters counted per unit).
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

from torch import nn
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from edgefold.exporter.calibration.corpus import Calibration
from edgefold.exporter.checks.verify import ValidationScorer
from edgefold.runtime import EdgefoldError

if TYPE_CHECKING:
    from edgefold.exporter.config import CompressionConfig

Entry = TypeVar("Entry")

#: Candidate ranks, as shares of the break-even rank rows*cols/(rows+cols) at which factors save nothing.
RANK_SHARES = (0.125, 0.25, 0.5, 0.75)
#: Candidate widths of a pruned block, as shares of its units: finer steps, since a block's parameters follow its
#: width in exact proportion (no break-even) and a mild budget (R = 1.33) needs widths between 3/4 and all.
WIDTH_SHARES = (0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 0.875)
#: Validation texts each measurement runs on: enough to rank modules, few enough for 4 measurements a module.
SENSITIVITY_TEXTS = 32


@dataclass
class Sensitivity:
    """One module's measured trade: fidelity lost at each candidate rank (ascending), dense costing nothing.

    ``per_rank``: the parameters one step of rank costs; None for factors, ``rows + cols``. A pruned block counts
    in units instead: ``rows`` units of ``cols`` parameters each, ``ranks`` the widths kept, ``per_rank = cols``.
    """

    name: str
    rows: int
    cols: int
    ranks: list[int]
    losses: list[float]
    per_rank: int | None = None

    @property
    def dense_params(self) -> int:
        return self.rows * self.cols

    def params(self, step: int) -> int:
        """Parameters at ``step``: an index into ``ranks``, or ``len(ranks)`` for dense."""
        if step == len(self.ranks):
            return self.dense_params
        return self.ranks[step] * (self.rows + self.cols if self.per_rank is None else self.per_rank)

    def loss(self, step: int) -> float:
        return 0.0 if step == len(self.ranks) else self.losses[step]


def candidate_ranks(rows: int, cols: int, multiple: int) -> list[int]:
    """Ranks worth measuring: multiples of ``multiple`` below the break-even rank, ascending, no repeats."""
    break_even = rows * cols / (rows + cols)
    ranks = {max(multiple, int(share * break_even) // multiple * multiple) for share in RANK_SHARES}
    return sorted(r for r in ranks if r * (rows + cols) < rows * cols)


def candidate_widths(units: int, multiple: int) -> list[int]:
    """Widths worth measuring for a block of ``units``: multiples of ``multiple`` (at least one), fewer than
    all, ascending, no repeats."""
    widths = {max(multiple, int(share * units) // multiple * multiple) for share in WIDTH_SHARES}
    return sorted(w for w in widths if w < units)


def measure(name: str, rows: int, cols: int, multiple: int, loss_at: Callable[[int], float]) -> Sensitivity:
    """``loss_at(rank)``: fidelity lost on validation text with this module alone at ``rank``."""
    ranks = candidate_ranks(rows, cols, multiple)
    return Sensitivity(name, rows, cols, ranks, [loss_at(rank) for rank in ranks])


def share_budget(model: nn.Module, config: CompressionConfig, calibration: Calibration,
                 tokenizer: PreTrainedTokenizerBase, entries: Iterable[Entry],
                 measure_one: Callable[[Entry, ValidationScorer], Sensitivity], unit: str,
                 progress: bool) -> tuple[dict[str, Sensitivity], dict[str, int | None]]:
    """Each of ``entries`` (a module, a block) measured alone on the validation text, then the config's budget
    shared greedily: (the sensitivities by name, the ranks or widths allocated by name)."""
    scorer = ValidationScorer(model, calibration.validation_texts[:SENSITIVITY_TEXTS], tokenizer)
    measured = [measure_one(entry, scorer) for entry in tqdm(entries, desc="sensitivity", unit=unit,
                                                             disable=not progress)]
    budget = config.budget_params(model, sum(s.dense_params for s in measured))
    return {s.name: s for s in measured}, allocate(measured, budget)


def allocate(sensitivities: list[Sensitivity], budget_params: float) -> dict[str, int | None]:
    """Ranks (None: dense) whose parameters sum to at most ``budget_params``, greedy on loss per parameter."""
    step = {s.name: len(s.ranks) for s in sensitivities}
    total = sum(s.dense_params for s in sensitivities)
    heap = [_next_step(s, step[s.name]) for s in sensitivities]
    heap = [entry for entry in heap if entry]
    heapq.heapify(heap)
    by_name = {s.name: s for s in sensitivities}
    while total > budget_params:
        if not heap:
            floor = sum(s.params(0) if s.ranks else s.dense_params for s in sensitivities)
            raise EdgefoldError(f"the budget of {budget_params:,.0f} parameters is below what the targeted modules "
                                f"need at their smallest ranks ({floor:,}); raise the budget")
        _, name = heapq.heappop(heap)
        module = by_name[name]
        total -= module.params(step[name]) - module.params(step[name] - 1)
        step[name] -= 1
        entry = _next_step(module, step[name])
        if entry:
            heapq.heappush(heap, entry)
    return {s.name: None if step[s.name] == len(s.ranks) else s.ranks[step[s.name]] for s in sensitivities}


def _next_step(module: Sensitivity, step: int) -> tuple[float, str] | None:
    """(loss added per parameter saved, name) of stepping ``module`` one rank down, or None at its floor."""
    if step == 0:
        return None
    saved = module.params(step) - module.params(step - 1)
    # Losses measured on a finite sample can dip below a larger rank's: never count a step as a gain.
    added = max(module.loss(step - 1) - module.loss(step), 0.0)
    return added / saved, module.name
