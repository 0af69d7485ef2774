"""Whitened SVD (SVD-LLM's truncation-aware whitening): truncate where the layer's OUTPUT error is measured.

With M = E[x x^T] the second moment of the layer's input on calibration text and S its Cholesky factor
(M = S S^T), the mean output error of a replacement W' is ``tr((W - W') M (W - W')^T) = ||(W - W') S||_F^2``.
Truncated SVD of W S is therefore the best rank-r replacement for the output (Eckart-Young in the whitened
space), and ``W' = SVD_r(W S) S^-1``: the right factor is un-whitened by a triangular solve, never an inverse.
``sequential=true`` (the idea of AA-SVD and SVD-LLM's closed-form local update) compresses the Linears in the
order the model runs them, each against the input x^ it receives in the model compressed so far while its target
stays the original output W x: the best rank-r W' for ``E||W x - W' x^||^2`` is ``[W A S^-T]_r S^-1`` with
``A = E[x x^T]`` and ``S S^T = E[x^ x^T]`` (substitute Z = W' S: the error is ``||Z - W A S^-T||_F^2`` plus a
constant). Each layer so corrects the error of those before it. Without anchors A = S S^T and this is W S.
Embeddings have no input activations to whiten: there this method is ``svd`` (its frequency-aware form,
``--frequency``, weights token rows by calibration counts, which is the data-aware form for a lookup table).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from edgefold.exporter.methods.base import (
    INPUT_MOMENTS,
    FitContext,
    LowRankFactors,
    Method,
    MethodOptions,
)
from edgefold.exporter.methods.svd import TruncatedSVD

#: Damping added to M before Cholesky, relative to its mean diagonal: keeps S invertible where some input
#: directions never vary on calibration text (a dead unit), while changing the metric negligibly elsewhere.
DAMPING = 1e-4


@dataclass(frozen=True)
class WhitenedOptions(MethodOptions):
    sequential: bool = False  # fit each Linear to the original output from its input in the model compressed so far


class WhitenedSVD(Method):
    name = "svd-whitened"
    needs = frozenset({INPUT_MOMENTS})
    options_type = WhitenedOptions
    options: WhitenedOptions

    @property
    def sequential(self) -> bool:
        return self.options.sequential

    def fit(self, weight: torch.Tensor, rank: int, context: FitContext) -> LowRankFactors:
        if context.kind == "embeddings":
            return TruncatedSVD().fit(weight, rank, context)
        whitener = whitening(required(context.input_moments, self.name, "input moments"))
        u, s, vh = torch.linalg.svd(_target(weight.double(), whitener, context.anchor_moments), full_matrices=False)
        root = s[:rank].sqrt()
        left, right = u[:, :rank] * root, unwhiten(root[:, None] * vh[:rank], whitener)
        return LowRankFactors(left.to(weight.dtype).contiguous(), right.to(weight.dtype).contiguous())


def _target(weight: torch.Tensor, whitener: torch.Tensor, anchor: torch.Tensor | None) -> torch.Tensor:
    """``W A S^-T`` (by a triangular solve), or ``W S`` where the input is the original one (A = S S^T)."""
    if anchor is None:
        return weight @ whitener
    return torch.linalg.solve_triangular(whitener, (weight @ anchor.double()).T, upper=False).T


def whitening(moments: torch.Tensor, damping: float = DAMPING) -> torch.Tensor:
    """S, lower triangular with S S^T = M + damping * mean(diag M) * I (float64)."""
    moments = moments.double()
    shift = damping * moments.diagonal().mean().clamp_min(torch.finfo(torch.float64).tiny)
    return torch.linalg.cholesky(moments + shift * torch.eye(len(moments), dtype=torch.float64))


def unwhiten(rows: torch.Tensor, whitener: torch.Tensor) -> torch.Tensor:
    """``rows @ S^-1`` by a triangular solve (rows in the whitened input space back to the original one)."""
    return torch.linalg.solve_triangular(whitener, rows.double(), upper=False, left=False)


def required(statistic: torch.Tensor | None, method: str, what: str) -> torch.Tensor:
    """The statistic, or a clear error where a caller fitted a Linear without collecting it."""
    if statistic is None:
        raise ValueError(f"method {method} needs the {what} of calibration text for a Linear: fit it through "
                         "compress_, which collects them")
    return statistic
