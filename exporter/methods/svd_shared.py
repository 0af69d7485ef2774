"""Cross-layer shared basis SVD (Basis Sharing, ICLR 2025), plain form: the linear control for "compress together".

The same-kind matrices of all layers (each out x in) are stacked row-wise into one (L*out x in) matrix, whose
truncated SVD gives one right basis B (k x in) shared by every layer and per-layer coefficients C_l (out x k):
W_l ~= C_l B. Every layer stays a factorised Linear (fewer FLOPs), and the graph stores B once. The budget is
that of a rank-k factorisation of the stacked matrix, so sharing buys rank: k * (L*out + in) <= L*out*in / R.
``--method-option layers=N`` shares one basis among N consecutive layers instead (Basis Sharing's groups are
small); each such group keeps the budget.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..plan import plan_rank
from edgefold.runtime import EdgefoldError

from .base import FitContext, GroupFit, GroupMethod, LowRankFactors, parse_options, shared_charges
from .svd import TruncatedSVD


@dataclass(frozen=True)
class SharedBasisOptions:
    layers: int = 0  # consecutive layers sharing one basis; 0: all layers of the kind

    @classmethod
    def parse(cls, options: dict[str, str], method: str) -> SharedBasisOptions:
        parsed = parse_options(cls, options, method)
        if parsed.layers < 0:
            raise EdgefoldError("layers must be >= 0 (0: all layers share one basis)")
        return parsed


class SharedBasisSVD(GroupMethod):
    name = "svd-shared"

    def __init__(self, options: SharedBasisOptions | None = None):
        self.options = options or SharedBasisOptions()

    def fit_group(self, weights: list[torch.Tensor], ratio: float, context: FitContext) -> GroupFit | None:
        size = self.options.layers or len(weights)
        fits = [self._fit_shared(weights[i:i + size], ratio, context) for i in range(0, len(weights), size)]
        if None in fits:
            return None
        context.details["bases"] = len(fits)
        return GroupFit([f for fit in fits for f in fit.forms], [p for fit in fits for p in fit.params])

    def _fit_shared(self, weights: list[torch.Tensor], ratio: float, context: FitContext) -> GroupFit | None:
        rows, cols = weights[0].shape
        stacked = torch.cat(weights)
        rank = plan_rank(stacked.shape[0], cols, ratio)
        if rank is None:
            return None
        factors = TruncatedSVD().fit(stacked, rank)
        # One Parameter object: every layer's LowRankLinear holds it, so torch counts it once and the exporter
        # writes one initializer.
        basis = nn.Parameter(factors.right, requires_grad=False)
        lefts = [left.contiguous() for left in factors.left.split(rows)]
        context.details.update(shared_rank=rank, shared_params=basis.numel())
        return GroupFit([LowRankFactors(left, basis) for left in lefts],
                        shared_charges([left.numel() for left in lefts], basis.numel()))
