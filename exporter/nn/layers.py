"""Low-rank stand-ins for the layers edgefold compresses. Each exports to ONNX as its factors, never densely."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from edgefold.exporter.methods import DecodedRows, LowRankFactors


def _optional(tensor: torch.Tensor | None) -> nn.Parameter | None:
    return None if tensor is None else nn.Parameter(tensor.detach().clone())


def _parameter(tensor: torch.Tensor) -> nn.Parameter:
    """A Parameter of ``tensor``; one that already is a Parameter is shared (a group's basis), not copied."""
    return tensor if isinstance(tensor, nn.Parameter) else nn.Parameter(tensor)


class LowRankLinear(nn.Module):
    """``y = (x @ down^T) @ up^T + bias``: two MatMuls (in x r, r x out) and the original bias.

    Factors with a bias or row scale (an autoencoder's) are folded first, so nothing runs between the MatMuls.
    """

    def __init__(self, factors: LowRankFactors, bias: torch.Tensor | None):
        super().__init__()
        factors = factors.folded()
        self.up = nn.Parameter(factors.left)  # out x r
        self.down = _parameter(factors.right)  # r x in, possibly shared by the layers of a group
        self.bias = _optional(bias)

    @property
    def rank(self) -> int:
        return self.down.shape[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(F.linear(x, self.down), self.up, self.bias)


class LowRankEmbedding(nn.Module):
    """``E[ids] ~= table[ids] @ proj (+ offset)``: a Gather on the (V x r) table, then an (r x d) MatMul.

    Optional, from the autoencoder and the frequency-aware fit: ELU, a per-token scale, and exact rows for
    the most frequent tokens (a Gather of each id's slot, then Where).
    """

    def __init__(self, factors: LowRankFactors, padding_idx: int | None = None):
        super().__init__()
        self.table = nn.Parameter(factors.left)  # V x r
        self.proj = nn.Parameter(factors.right)  # r x d
        self.offset = _optional(factors.bias)  # d
        self.scale = _optional(factors.row_scale)  # V
        self.elu = factors.activation == "elu"
        self.exact_rows = _optional(factors.exact_rows)  # N x d
        if factors.exact_index is not None:
            slot = torch.full((factors.left.shape[0],), -1, dtype=torch.int32)
            slot[factors.exact_index] = torch.arange(len(factors.exact_index), dtype=torch.int32)
            self.register_buffer("slot", slot)
        else:
            self.slot = None
        self.padding_idx = padding_idx

    @property
    def rank(self) -> int:
        return self.proj.shape[0]

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        hidden = F.embedding(input_ids, self.table) @ self.proj
        if self.offset is not None:
            hidden = hidden + self.offset
        if self.elu:
            hidden = F.elu(hidden)
        if self.scale is not None:
            hidden = hidden * self.scale[input_ids].unsqueeze(-1)
        if self.slot is not None:
            slot = self.slot[input_ids]
            exact = F.embedding(slot.clamp(min=0).long(), self.exact_rows)
            hidden = torch.where((slot >= 0).unsqueeze(-1), exact, hidden)
        return hidden


class TiedLowRankHead(nn.Module):
    """An output projection tied to a factorised embedding: ``logits = h @ E^T (+ bias)``, sharing its factors.

    With ``E ~= diag(s) (T P + 1 o^T)``, ``h @ E^T = ((h @ P^T) @ T^T + h . o) * s``; exact rows give their
    tokens' logits from ``h @ X^T`` instead. No parameter of its own but the bias.
    """

    def __init__(self, embedding: LowRankEmbedding, bias: torch.Tensor | None):
        super().__init__()
        if embedding.elu:
            raise ValueError("an ELU embedding cannot be tied to an output head")
        self.embedding = embedding
        self.bias = _optional(bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        e = self.embedding
        logits = (hidden @ e.proj.t()) @ e.table.t()
        if e.offset is not None:
            logits = logits + (hidden @ e.offset).unsqueeze(-1)
        if e.scale is not None:
            logits = logits * e.scale
        if e.slot is not None:
            exact = (hidden @ e.exact_rows.t())[..., e.slot.clamp(min=0).long()]
            logits = torch.where(e.slot >= 0, exact, logits)
        return logits if self.bias is None else logits + self.bias


class DecodedLinear(nn.Module):
    """A Linear whose weight is stored as latent codes, a decoder (shared by a group) and row norms.

    Storage compression: torch computes with the decoded dense weight, a buffer and so not counted as stored;
    the stored form is the parameters (the shared decoder counted once). In the ONNX file,
    ``decoding.store_decoded_weights`` puts the stored form in the dense weight's place as a constant subgraph.
    """

    def __init__(self, rows: DecodedRows, bias: torch.Tensor | None):
        super().__init__()
        self.latent = nn.Parameter(rows.latent, requires_grad=False)  # out x latent size
        self.norms = nn.Parameter(rows.norms, requires_grad=False)  # out
        self.decoder = rows.decoder.requires_grad_(False)
        self.register_buffer("weight", rows.dense())  # out x in
        self.bias = _optional(bias)

    def stored(self) -> DecodedRows:
        return DecodedRows(self.latent, self.decoder, self.norms)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)


def low_rank_module(kind: str, factors: LowRankFactors | DecodedRows, original: nn.Module) -> nn.Module:
    """The stand-in for ``original`` (an embedding, or a Linear/Conv1D of the given kind)."""
    if isinstance(factors, DecodedRows):
        return DecodedLinear(factors, original.bias)
    if kind == "embeddings":
        return LowRankEmbedding(factors, getattr(original, "padding_idx", None))
    return LowRankLinear(factors, original.bias)
