"""What every compression method is: a function from a weight matrix and a rank to low-rank factors."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import torch


@dataclass
class LowRankFactors:
    """``weight ~= left @ right + bias`` (bias added to every row), for a (rows x cols) weight.

    For an embedding table the rows are tokens: ``left`` is the (V x r) table looked up per token and ``right``
    the (r x d) projection. For a Linear the rows are output units: ``left`` is (out x r), ``right`` (r x in).
    """

    left: torch.Tensor
    right: torch.Tensor
    bias: torch.Tensor | None = None

    @property
    def rank(self) -> int:
        return self.right.shape[0]

    @property
    def num_params(self) -> int:
        extra = 0 if self.bias is None else self.bias.numel()
        return self.left.numel() + self.right.numel() + extra

    def dense(self) -> torch.Tensor:
        product = self.left @ self.right
        return product if self.bias is None else product + self.bias


class Method(ABC):
    """A training-free compressor of one weight matrix at a given rank."""

    name: ClassVar[str]
    #: Stored parameters beyond rank * (rows + cols): the budget planner subtracts them, so every method is
    #: compared at the same number of stored parameters.
    has_bias: ClassVar[bool] = False

    def extra_params(self, rows: int, cols: int) -> int:
        return cols if self.has_bias else 0

    @abstractmethod
    def fit(self, weight: torch.Tensor, rank: int) -> LowRankFactors:
        """Factor ``weight`` (rows x cols, float32) at ``rank``."""
