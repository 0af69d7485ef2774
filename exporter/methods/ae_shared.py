"""The cross-layer autoencoder ("Revisiting Offline Compression", EACL Findings 2023), as its released code does it.

Rows of each Linear weight are the samples. By default ("concatenated", ``ae-shared``) the same-kind matrices of
all layers are stacked and ONE autoencoder is trained on all their rows: every row keeps its own latent code,
the decoder is shared by the layers. ``ae-separated`` trains one per matrix, the paper's comparison.
Encoder m -> 8x -> 4x -> x and decoder x -> 2x -> 4x -> m, LeakyReLU between layers, Tanh after the decoder;
each decoded row is rescaled to the original row's L2 norm (the norms are stored), so the network learns
directions. Loss 0.909 * mean(1 - cos) + 0.091 * RMSE; Adam 1e-3, StepLR(10, 0.8), batch 16, 30 epochs.
Here the batch is 128 by default (``batch_size=16`` gives the paper's): on all-MiniLM-L6-v2's query group at
R = 2, 30 epochs, one thread, mean row cosine 0.745 at batch 16 (74 s), 0.751 at 64 (44 s), 0.720 at 128
(12 s); scaling the learning rate with the batch fitted worse (10 epochs at 128: 0.583 at 1e-3, 0.554 at
2.8e-3, 0.401 at 8e-3), so it stays 1e-3. Batch 16 makes a fit of all 36 MiniLM Linears take about 18 min.

Stored: latent codes, decoder, norms (the Linear biases stay as they are). x is the largest latent size whose
stored parameters fit the budget. The result is STORAGE compression: decoded, the weight is dense again.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F
from tqdm.auto import tqdm

from edgefold.exporter.methods.base import (
    DecodedRows,
    FitContext,
    GroupFit,
    GroupMethod,
    MethodOptions,
    RowDecoder,
    require,
    shared_charges,
)
from edgefold.runtime import EdgefoldError

#: Decoder widths as multiples of the latent size x (the first is x itself, the output is m).
_DECODER_WIDTHS = (1, 2, 4)
_ENCODER_WIDTHS = (8, 4, 1)


@dataclass(frozen=True)
class CrossLayerOptions(MethodOptions):
    """The paper's defaults. Set any with ``--method-option NAME=VALUE``."""

    epochs: int = 30
    batch_size: int = 128  # the paper's 16 is about 7x slower for a slightly better fit (module docstring)
    lr: float = 1e-3
    lr_step_epochs: int = 10  # StepLR: multiply the learning rate by lr_gamma every lr_step_epochs
    lr_gamma: float = 0.8
    cosine_weight: float = 0.909  # weight of mean(1 - cos(decoded row, row))
    rmse_weight: float = 0.091  # weight of the RMSE of the norm-rescaled rows
    negative_slope: float = 0.01  # of every LeakyReLU

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self, "> 0", lambda v: v > 0, "lr", "lr_gamma")
        require(self, ">= 1", lambda v: v >= 1, "batch_size", "lr_step_epochs")
        require(self, ">= 0", lambda v: v >= 0, "epochs", "cosine_weight", "rmse_weight", "negative_slope")
        if not (self.cosine_weight or self.rmse_weight):
            raise EdgefoldError("the loss needs a weight > 0: cosine_weight or rmse_weight")


def latent_size(rows: int, cols: int, budget: float) -> int | None:
    """The largest x whose stored parameters fit ``budget``: rows*x latent codes + the decoder
    (x*2x + 2x) + (2x*4x + 4x) + (4x*cols + cols) + rows norms; None when not even x = 1 fits."""
    a, b, c = 10, rows + 6 + 4 * cols, cols + rows - budget  # 10x^2 + bx + c <= 0
    x = math.floor((-b + math.sqrt(max(b * b - 4 * a * c, 0))) / (2 * a))
    return x if x >= 1 and stored_params(rows, cols, x) <= budget else None


def stored_params(rows: int, cols: int, x: int) -> int:
    return rows * x + _decoder_params(cols, x) + rows


def _decoder_params(cols: int, x: int) -> int:
    sizes = [w * x for w in _DECODER_WIDTHS] + [cols]
    return sum(a * b + b for a, b in zip(sizes, sizes[1:]))


class _Autoencoder(nn.Module):
    def __init__(self, cols: int, x: int, slope: float):
        super().__init__()
        sizes = [cols] + [w * x for w in _ENCODER_WIDTHS]
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(sizes, sizes[1:])):
            layers += [nn.Linear(a, b)] + ([nn.LeakyReLU(slope)] if i < len(sizes) - 2 else [])
        self.encoder = nn.Sequential(*layers)
        self.decoder = RowDecoder([w * x for w in _DECODER_WIDTHS] + [cols], slope)

    def forward(self, rows: torch.Tensor, norms: torch.Tensor) -> torch.Tensor:
        directions = self.decoder(self.encoder(rows))
        return directions / directions.norm(dim=-1, keepdim=True).clamp_min(1e-12) * norms


def loss_of(decoded: torch.Tensor, target: torch.Tensor, o: CrossLayerOptions) -> torch.Tensor:
    cosine = F.cosine_similarity(decoded, target, dim=-1)
    return o.cosine_weight * (1 - cosine).mean() + o.rmse_weight * (decoded - target).pow(2).mean().sqrt()


class CrossLayerAutoencoder(GroupMethod):
    name = "ae-shared"
    compression = "storage"
    shared = True  # one autoencoder for the whole group; False: one per matrix
    options_type = CrossLayerOptions
    options: CrossLayerOptions

    def check_module(self, kind: str, tied: bool = False) -> None:
        if kind == "embeddings":
            raise EdgefoldError(f"method {self.name} compresses Linear layers across layers; target attention "
                                "and/or ffn (compress embeddings with --method svd or ae)")

    def fit_group(self, weights: list[torch.Tensor], ratio: float, context: FitContext) -> GroupFit | None:
        rows, cols = weights[0].shape
        parts = [torch.cat(weights)] if self.shared else [w for w in weights]
        sizes = [latent_size(len(part), cols, len(part) * cols / ratio) for part in parts]
        if None in sizes:
            return None
        started, forms, params, losses = time.perf_counter(), [], [], []
        for i, (part, x) in enumerate(zip(parts, sizes)):
            decoded, loss = self._fit(part, x, context, seed=context.seed + i)
            losses.append(loss)
            members = [DecodedRows(latent, decoded.decoder, norms) for latent, norms in
                       zip(decoded.latent.split(rows), decoded.norms.split(rows))]
            forms += members
            params += shared_charges([m.latent.numel() + m.norms.numel() for m in members],
                                     decoded.decoder.num_params)
        cosines = [F.cosine_similarity(f.dense(), w, dim=-1).mean().item() for f, w in zip(forms, weights)]
        context.details.update(latent_size=sizes[0] if self.shared else sizes, decoders=len(parts),
                               decoder_params=_decoder_params(cols, sizes[0]) * len(parts),
                               final_loss=losses, mean_row_cosine=sum(cosines) / len(cosines),
                               fit_seconds=round(time.perf_counter() - started, 2))
        return GroupFit(forms, params)

    def _fit(self, weight: torch.Tensor, x: int, context: FitContext, seed: int) -> tuple[DecodedRows, float]:
        """Train one autoencoder on the rows of ``weight``; returns their stored form and the last epoch's loss."""
        o = self.options
        torch.manual_seed(seed)
        generator = torch.Generator().manual_seed(seed)
        norms = weight.norm(dim=-1, keepdim=True)
        model = _Autoencoder(weight.shape[1], x, o.negative_slope)
        optimizer = torch.optim.Adam(model.parameters(), lr=o.lr)
        schedule = torch.optim.lr_scheduler.StepLR(optimizer, o.lr_step_epochs, o.lr_gamma)
        loss = float("nan")
        bar = tqdm(range(o.epochs), desc=f"{self.name} x={x}", unit="epoch", leave=False,
                   disable=not context.progress)
        for _ in bar:
            loss = self._epoch(model, optimizer, weight, norms, generator)
            schedule.step()
            bar.set_postfix(loss=f"{loss:.4f}")
        with torch.no_grad():
            latent = model.encoder(weight)
        return DecodedRows(latent.contiguous(), model.decoder, norms[:, 0].contiguous()), loss

    def _epoch(self, model, optimizer, weight, norms, generator) -> float:
        order = torch.randperm(len(weight), generator=generator)
        total = 0.0
        for batch in order.split(self.options.batch_size):
            target = weight[batch]
            loss = loss_of(model(target, norms[batch]), target, self.options)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.item() * len(batch)
        return total / len(weight)


class SeparatedAutoencoder(CrossLayerAutoencoder):
    """The paper's "separated" alternative: the same autoencoder, one per matrix (no decoder shared)."""

    name = "ae-separated"
    shared = False
