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

from edgefold.exporter.methods.base import (
    FitContext,
    GroupFit,
    GroupMethod,
    LowRankFactors,
    MethodOptions,
    require,
    shared_charges,
)
from edgefold.exporter.methods.svd import TruncatedSVD
from edgefold.exporter.planning.ranks import plan_rank


@dataclass(frozen=True)
class SharedBasisOptions(MethodOptions):
    layers: int = 0  # consecutive layers sharing one basis; 0: all layers of the kind

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self, ">= 0 (0: all layers share one basis)", lambda v: v >= 0, "layers")


class SharedBasisSVD(GroupMethod):
    name = "svd-shared"
    options_type = SharedBasisOptions
    options: SharedBasisOptions

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
        rank = plan_rank(stacked.shape[0], cols, ratio, multiple=context.rank_multiple)
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
