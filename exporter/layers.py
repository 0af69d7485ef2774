"""Low-rank stand-ins for the layers edgefold compresses. Each exports to ONNX as its factors, never densely."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .methods import LowRankFactors


class LowRankLinear(nn.Module):
    """``y = (x @ down^T) @ up^T + bias``: two MatMuls (in x r, r x out) and the original bias."""

    def __init__(self, factors: LowRankFactors, bias: torch.Tensor | None):
        super().__init__()
        if factors.bias is not None:
            # A per-column offset of W's rows is a constant vector added to x before the product, which
            # is no longer a plain Linear; methods that store one are applied to embeddings only.
            raise ValueError("LowRankLinear takes factors without a row offset")
        self.up = nn.Parameter(factors.left)  # out x r
        self.down = nn.Parameter(factors.right)  # r x in
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone())

    @property
    def rank(self) -> int:
        return self.down.shape[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(F.linear(x, self.down), self.up, self.bias)


class LowRankEmbedding(nn.Module):
    """``E[ids] ~= table[ids] @ proj + offset``: a Gather on the (V x r) table, then an (r x d) MatMul."""

    def __init__(self, factors: LowRankFactors, padding_idx: int | None = None):
        super().__init__()
        self.table = nn.Parameter(factors.left)  # V x r
        self.proj = nn.Parameter(factors.right)  # r x d
        self.offset = None if factors.bias is None else nn.Parameter(factors.bias)
        self.padding_idx = padding_idx

    @property
    def rank(self) -> int:
        return self.proj.shape[0]

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        hidden = F.embedding(input_ids, self.table) @ self.proj
        return hidden if self.offset is None else hidden + self.offset


class TiedLowRankHead(nn.Module):
    """An output projection tied to a factorised embedding: ``logits = h @ E^T (+ bias)``, sharing its factors.

    With ``E ~= T P + 1 o^T``, ``h @ E^T = (h @ P^T) @ T^T + (h . o)``: no parameter of its own but the bias.
    """

    def __init__(self, embedding: LowRankEmbedding, bias: torch.Tensor | None):
        super().__init__()
        self.embedding = embedding
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone())

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = (hidden @ self.embedding.proj.t()) @ self.embedding.table.t()
        if self.embedding.offset is not None:
            logits = logits + (hidden @ self.embedding.offset).unsqueeze(-1)
        return logits if self.bias is None else logits + self.bias
