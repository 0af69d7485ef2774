"""What every compression method is: a function from a weight matrix and a rank to a low-rank form."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import ClassVar

import torch
from torch.nn import functional as F

#: Calibration statistics a method may need (collected by ``exporter.statistics``, passed in ``FitContext``).
INPUT_MOMENTS = "input_moments"
ROW_IMPORTANCE = "row_importance"


@dataclass
class LowRankFactors:
    """A (rows x cols) weight in low-rank form: ``row_scale * act(left @ right + bias)``, exact rows overriding.

    Rows are tokens for an embedding table (``left`` is the V x r table looked up per token, ``right`` the
    r x d projection) and output units for a Linear (``left`` is out x r, ``right`` r x in). Everything but
    ``left`` and ``right`` is optional:

    - ``bias`` (cols): a decoder bias added to every row (the autoencoder's);
    - ``row_scale`` (rows): rescales each decoded row to the original row's norm;
    - ``activation``: "elu" applies ELU to the decoded rows (the paper's non-linear variant; embeddings only);
    - ``exact_index`` / ``exact_rows``: rows stored exactly (the most frequent tokens); a lookup of all rows to
      their slot costs one entry per row.
    """

    left: torch.Tensor
    right: torch.Tensor
    bias: torch.Tensor | None = None
    row_scale: torch.Tensor | None = None
    activation: str | None = None
    exact_index: torch.Tensor | None = None
    exact_rows: torch.Tensor | None = None

    @property
    def rank(self) -> int:
        return self.right.shape[0]

    @property
    def num_params(self) -> int:
        """Stored numbers, the slot lookup of exact rows included (one per row)."""
        count = self.left.numel() + self.right.numel()
        for extra in (self.bias, self.row_scale, self.exact_rows):
            count += 0 if extra is None else extra.numel()
        return count + (0 if self.exact_index is None else self.left.shape[0])

    def dense(self) -> torch.Tensor:
        product = self.left @ self.right
        if self.bias is not None:
            product = product + self.bias
        if self.activation == "elu":
            product = F.elu(product)
        if self.row_scale is not None:
            product = product * self.row_scale[:, None]
        if self.exact_index is not None:
            product = product.index_copy(0, self.exact_index, self.exact_rows)
        return product

    def folded(self) -> LowRankFactors:
        """The same matrix as plain factors: ``[s*T | s] @ [P ; o]``, one rank more when there is a bias.

        Exact for the linear form; a Linear then runs as two MatMuls with nothing in between.
        """
        if self.activation is not None or self.exact_index is not None:
            raise ValueError("only linear factors without exact rows fold into plain factors")
        left, right = self.left, self.right
        if self.bias is not None:
            left = torch.cat([left, torch.ones(left.shape[0], 1, dtype=left.dtype)], dim=1)
            right = torch.cat([right, self.bias[None]], dim=0)
        if self.row_scale is not None:
            left = left * self.row_scale[:, None]
        return LowRankFactors(left.contiguous(), right.contiguous())

    def with_exact_rows(self, weight: torch.Tensor, index: torch.Tensor) -> LowRankFactors:
        """These factors with ``weight``'s rows at ``index`` stored exactly."""
        if not index.numel():
            return self
        return replace(self, exact_index=index, exact_rows=weight[index].clone())


@dataclass
class FitContext:
    """What a method may use beyond the weight.

    ``kind``: the module kind (see architectures). ``row_weights``: how much each row matters (token
    frequencies), summing to 1, or None for uniform. ``input_moments`` (cols x cols) and ``row_importance``
    (rows), float64: calibration statistics of a Linear, given where the method ``needs`` them (see
    ``exporter.statistics``).
    ``score``: validation fidelity of candidate factors (higher is better), for methods that select a
    checkpoint; computed on text the method does not fit on. ``details`` collects what the method reports.
    """

    row_weights: torch.Tensor | None = None
    input_moments: torch.Tensor | None = None
    row_importance: torch.Tensor | None = None
    score: Callable[[LowRankFactors], float] | None = None
    kind: str = "embeddings"
    seed: int = 0
    progress: bool = False
    details: dict = field(default_factory=dict)


class Method(ABC):
    """A training-free compressor of one weight matrix at a given rank."""

    name: ClassVar[str]
    #: Calibration statistics the method uses for Linears ("input_moments", "row_importance"); they are
    #: collected on the original model and passed through ``FitContext``.
    needs: frozenset[str] = frozenset()

    def extra_params(self, rows: int, cols: int, kind: str) -> int:
        """Stored parameters beyond rank * (rows + cols) for a module of ``kind``; the budget planner subtracts
        them, so every method is compared at the same number of stored parameters."""
        return 0

    def check_module(self, kind: str, tied: bool = False) -> None:
        """Refuse a module the method's output cannot be folded into (raises EdgefoldError); ``tied``: the
        module's weight is shared with an output head."""

    @abstractmethod
    def fit(self, weight: torch.Tensor, rank: int, context: FitContext) -> LowRankFactors:
        """Factor ``weight`` (rows x cols, float32) at ``rank``."""
