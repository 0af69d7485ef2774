"""Truncated SVD: the best rank-r approximation in Frobenius norm (Eckart-Young), the papers' baseline.

With row weights it is weighted SVD: the basis minimises the weighted error (frequent tokens count more), and
every row, seen or not, is then projected onto that basis, which is the best each row can get from it.
"""

from __future__ import annotations

import torch

from edgefold.exporter.methods.base import FitContext, LowRankFactors, Method


class TruncatedSVD(Method):
    name = "svd"

    def fit(self, weight: torch.Tensor, rank: int, context: FitContext | None = None) -> LowRankFactors:
        weights = context.row_weights if context else None
        if weights is None:
            u, s, vh = torch.linalg.svd(weight.double(), full_matrices=False)
            # Split the singular values evenly between the two factors: similar ranges in both keep later
            # int8/int4 quantisation of either factor well conditioned.
            root = s[:rank].sqrt()
            left, right = u[:, :rank] * root, root[:, None] * vh[:rank]
        else:
            basis = svd_basis(weight.double() * weights.double().sqrt()[:, None], rank)  # rank x cols, orthonormal
            left, right = weight.double() @ basis.T, basis
        return LowRankFactors(left.to(weight.dtype).contiguous(), right.to(weight.dtype).contiguous())


def svd_basis(matrix: torch.Tensor, rank: int) -> torch.Tensor:
    """The top ``rank`` right singular vectors of ``matrix`` (rank x cols)."""
    return torch.linalg.svd(matrix, full_matrices=False)[2][:rank]
