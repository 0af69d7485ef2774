"""Fisher-weighted SVD (FWSVD, ICLR 2022): rows that matter more to the model's loss are kept more precisely.

Each output unit's importance I_i is the summed squared gradient of its weights on calibration text (see
``calibration.statistics`` for the loss: the model's own LM loss, or a Gaussian-output Fisher where the model has
no head). The fit is the SVD of diag(sqrt(I)) W truncated and un-weighted. For a diagonal row weighting that is
exactly every row of W projected on the top right singular vectors of the weighted matrix, which is how it is
computed here. Embeddings: as ``svd`` (``--frequency`` weights their rows by token counts).
"""

from __future__ import annotations

from dataclasses import replace

import torch

from edgefold.exporter.methods.base import (
    ROW_IMPORTANCE,
    FitContext,
    LowRankFactors,
    Method,
)
from edgefold.exporter.methods.svd import TruncatedSVD
from edgefold.exporter.methods.whitened import required

#: Floor of a row's importance, relative to the mean: a row no calibration token moved still counts a little.
IMPORTANCE_FLOOR = 1e-6


class FisherWeightedSVD(Method):
    name = "svd-fisher"
    needs = frozenset({ROW_IMPORTANCE})

    def fit(self, weight: torch.Tensor, rank: int, context: FitContext) -> LowRankFactors:
        if context.kind == "embeddings":
            return TruncatedSVD().fit(weight, rank, context)
        importance = required(context.row_importance, self.name, "row importance").double()
        importance = importance + IMPORTANCE_FLOOR * importance.mean().clamp_min(torch.finfo(torch.float64).tiny)
        # FWSVD is SVD with rows weighted: the basis of the weighted rows, every row projected onto it.
        return TruncatedSVD().fit(weight, rank, replace(context, row_weights=importance))
