"""Truncated SVD: the best rank-r approximation in Frobenius norm (Eckart-Young), the papers' baseline."""

from __future__ import annotations

import torch

from .base import LowRankFactors, Method


class TruncatedSVD(Method):
    name = "svd"

    def fit(self, weight: torch.Tensor, rank: int) -> LowRankFactors:
        u, s, vh = torch.linalg.svd(weight.double(), full_matrices=False)
        # Split the singular values evenly between the two factors: both then have similar ranges, which keeps
        # later int8/int4 quantisation of either factor well conditioned.
        root = s[:rank].sqrt()
        left = (u[:, :rank] * root).to(weight.dtype)
        right = (root[:, None] * vh[:rank]).to(weight.dtype)
        return LowRankFactors(left.contiguous(), right.contiguous())
