"""The direction-aware autoencoder ("Direction is what you need", RepL4NLP 2021), as its released code does it.

The rows of a weight matrix are the samples (tokens of an embedding table, output units of a Linear). With the
default linear form, encoder Linear(d -> k) and decoder Linear(k -> d) with bias, the stored latent table
Z = enc(W) and the decoder ARE a rank-k factorisation plus a bias, folded like SVD's. The loss cares about each
row's direction: a cosine term plus an annealed power-L1 term.

Data-aware (``whitened=true``, Linears only): the rows are fitted in the whitened input space, W S with
S S^T the second moment of the layer's input on calibration text (see ``whitened``), so a row's direction there
is the direction of its output unit's activations over calibration inputs, and the loss measures the layer's
output. The decoder is un-whitened afterwards (D S^-1, bias b S^-1): the same rank and fold as before.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F
from tqdm.auto import tqdm

from edgefold.exporter.methods.base import (
    INPUT_MOMENTS,
    FitContext,
    LowRankFactors,
    Method,
    MethodOptions,
    require,
)
from edgefold.exporter.methods.svd import svd_basis
from edgefold.exporter.methods.whitened import required, unwhiten, whitening
from edgefold.runtime import EdgefoldError


@dataclass(frozen=True)
class AutoencoderOptions(MethodOptions):
    """The paper code's loss and schedule, with one departure: its released configuration starts from random
    weights, edgefold from truncated SVD (``svd_init``), so the fit begins where the baseline ends. Set any with
    ``--method-option NAME=VALUE`` (``svd_init=false`` for the paper's start)."""

    epochs: int = 30
    batch_size: int = 32
    lr: float = 1e-3
    lr_step_epochs: int = 4  # StepLR: multiply the learning rate by lr_gamma every lr_step_epochs
    lr_gamma: float = 0.5
    cosine_weight: float = 0.1995  # weight of mean(1 - cos(reconstructed row, row))
    power_l1_weight: float = 0.0025  # weight of mean((|error| + 1e-10) ** alpha)
    rmse_weight: float = 0.0
    alpha_start: float = 1.0  # alpha anneals linearly from alpha_start to alpha_end ...
    alpha_end: float = 0.1
    anneal_epochs: int = 20  # ... over these first epochs, then stays at alpha_end
    activation: str = "linear"  # or "elu": ELU after encoder and decoder (embeddings only)
    svd_init: bool = True  # start from the truncated-SVD solution, so the fit begins where the baseline ends
    preserve_norms: bool = False  # store each row's norm and learn directions only
    validate_every: int = 5  # epochs between validation checks (checkpoint selection; the start is checked too)
    whitened: bool = False  # Linears: fit rows in the whitened input space, so the loss is on layer outputs

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self, "> 0", lambda v: v > 0, "lr", "lr_gamma", "alpha_start", "alpha_end")
        require(self, ">= 1", lambda v: v >= 1, "batch_size", "lr_step_epochs", "validate_every")
        require(self, ">= 0", lambda v: v >= 0, "epochs", "anneal_epochs", "cosine_weight", "power_l1_weight",
                "rmse_weight")
        require(self, "linear or elu", lambda v: v in ("linear", "elu"), "activation")
        if not (self.cosine_weight or self.power_l1_weight or self.rmse_weight):
            raise EdgefoldError("the loss needs a weight > 0: cosine_weight, power_l1_weight or rmse_weight")


class _Autoencoder(nn.Module):
    def __init__(self, cols: int, rank: int, elu: bool):
        super().__init__()
        self.encoder = nn.Linear(cols, rank)
        self.decoder = nn.Linear(rank, cols)
        self.elu = elu

    def encode(self, rows: torch.Tensor) -> torch.Tensor:
        latent = self.encoder(rows)
        return F.elu(latent) if self.elu else latent

    def forward(self, rows: torch.Tensor, norms: torch.Tensor | None) -> torch.Tensor:
        decoded = self.decoder(self.encode(rows))
        if self.elu:
            decoded = F.elu(decoded)
        if norms is not None:
            decoded = decoded * (norms / decoded.norm(dim=-1, keepdim=True).clamp_min(1e-12))
        return decoded


class DirectionAwareAutoencoder(Method):
    name = "ae"
    iterative = True
    frequency_default = True
    options_type = AutoencoderOptions
    options: AutoencoderOptions

    def __init__(self, options: AutoencoderOptions | None = None):
        super().__init__(options)
        self.needs = frozenset({INPUT_MOMENTS}) if self.options.whitened else frozenset()

    def extra_params(self, rows: int, cols: int, kind: str) -> int:
        if kind != "embeddings":
            return 0  # the bias and norms fold into one rank of the budget's factors (see fit)
        return cols + (rows if self.options.preserve_norms else 0)  # decoder bias (+ one norm per row)

    def check_module(self, kind: str, tied: bool = False) -> None:
        if self.options.activation == "elu" and (kind != "embeddings" or tied):
            raise EdgefoldError("the ELU autoencoder decodes rows non-linearly, which only folds into an "
                                "embedding lookup not tied to an output head; use activation=linear here")

    def fit(self, weight: torch.Tensor, rank: int, context: FitContext) -> LowRankFactors:
        """For a Linear, ``rank`` is that of the folded factors: ``rank - 1`` latent dimensions plus the bias,
        so the graph has exactly SVD's size and FLOPs at the same budget. Embeddings keep the bias as an Add."""
        o = self.options
        if context.kind != "embeddings":
            rank -= 1
        torch.manual_seed(context.seed)
        generator = torch.Generator().manual_seed(context.seed)
        weight = weight.float()
        whitener = None
        if o.whitened and context.kind != "embeddings":
            whitener = whitening(required(context.input_moments, self.name, "input moments"))
            weight = (weight.double() @ whitener).float()
        norms = weight.norm(dim=-1, keepdim=True) if o.preserve_norms else None
        model = _Autoencoder(weight.shape[1], rank, o.activation == "elu")
        if o.svd_init:
            _start_from_svd(model, weight, rank, context.row_weights)
        optimizer = torch.optim.Adam(model.parameters(), lr=o.lr)
        schedule = torch.optim.lr_scheduler.StepLR(optimizer, o.lr_step_epochs, o.lr_gamma)
        best = _Checkpoint(self._factors(model, weight, norms, whitener), context.score)
        bar = tqdm(range(o.epochs), desc="ae epochs", unit="epoch", leave=False, disable=not context.progress)
        for epoch in bar:
            loss = self._epoch(model, optimizer, weight, norms, alpha_at(epoch, o), context.row_weights, generator)
            schedule.step()
            if (epoch + 1) % o.validate_every == 0 or epoch + 1 == o.epochs:
                best.offer(epoch + 1, self._factors(model, weight, norms, whitener))
            bar.set_postfix(loss=f"{loss:.4f}", val=f"{best.last:.4f}" if best.last is not None else "-")
        context.details.update(best.report(), final_loss=loss if o.epochs else None)
        return best.factors

    def _epoch(self, model, optimizer, weight, norms, alpha, row_weights, generator) -> float:
        rows = weight.shape[0]
        if row_weights is None:
            order = torch.randperm(rows, generator=generator)
        else:  # frequent rows are drawn more often: an unbiased estimate of the weighted loss
            order = torch.multinomial(row_weights, rows, replacement=True, generator=generator)
        total = 0.0
        for start in range(0, rows, self.options.batch_size):
            batch = order[start:start + self.options.batch_size]
            target = weight[batch]
            loss = direction_loss(model(target, None if norms is None else norms[batch]), target, alpha,
                                  self.options)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.item() * len(batch)
        return total / rows

    @torch.no_grad()
    def _factors(self, model: _Autoencoder, weight: torch.Tensor, norms: torch.Tensor | None,
                 whitener: torch.Tensor | None) -> LowRankFactors:
        """The decoder's factors in the original space (un-whitened where the rows were whitened)."""
        latent = model.encode(weight)
        factors = LowRankFactors(latent.contiguous(), model.decoder.weight.T.contiguous(),
                                 model.decoder.bias.clone(), activation="elu" if model.elu else None)
        if norms is not None:
            decoded = factors.dense()
            factors.row_scale = (norms[:, 0] / decoded.norm(dim=-1).clamp_min(1e-12)).contiguous()
        if whitener is not None:  # row scales commute with the right-multiplication by S^-1
            factors.right = unwhiten(factors.right, whitener).float().contiguous()
            factors.bias = unwhiten(factors.bias[None], whitener)[0].float()
        return factors


def alpha_at(epoch: int, o: AutoencoderOptions) -> float:
    """The power-L1 exponent in ``epoch`` (0-based): linear from alpha_start to alpha_end, then held."""
    return o.alpha_start + (o.alpha_end - o.alpha_start) * min(epoch / max(o.anneal_epochs, 1), 1.0)


def direction_loss(decoded: torch.Tensor, target: torch.Tensor, alpha: float, o: AutoencoderOptions) -> torch.Tensor:
    """The paper's loss: cosine distance of each row, plus the power-L1 error, plus (weight 0) RMSE."""
    cosine = F.cosine_similarity(decoded, target, dim=-1)
    error = decoded - target
    loss = o.cosine_weight * (1 - cosine).mean() + o.power_l1_weight * (error.abs() + 1e-10).pow(alpha).mean()
    if o.rmse_weight:
        loss = loss + o.rmse_weight * error.pow(2).mean().sqrt()
    return loss


@torch.no_grad()
def _start_from_svd(model: _Autoencoder, weight: torch.Tensor, rank: int, row_weights) -> None:
    """Encoder = projection on the (weighted) top singular directions, decoder = its transpose, biases 0:
    the autoencoder then reproduces (weighted) truncated SVD exactly."""
    matrix = weight.double() if row_weights is None else weight.double() * row_weights.double().sqrt()[:, None]
    basis = svd_basis(matrix, rank).float()
    model.encoder.weight.copy_(basis)
    model.encoder.bias.zero_()
    model.decoder.weight.copy_(basis.T)
    model.decoder.bias.zero_()


class _Checkpoint:
    """Keeps the factors with the best validation score (the last ones when nothing scores them)."""

    def __init__(self, factors: LowRankFactors, score):
        self.score_fn, self.factors, self.epoch = score, factors, 0
        self.initial = self.best = self.last = score(factors) if score else None

    def offer(self, epoch: int, factors: LowRankFactors) -> None:
        if self.score_fn is None:
            self.factors, self.epoch = factors, epoch
            return
        self.last = self.score_fn(factors)
        if self.last > self.best:
            self.factors, self.epoch, self.best = copy.deepcopy(factors), epoch, self.last

    def report(self) -> dict:
        return {"selected_epoch": self.epoch, "validation_fidelity_start": self.initial,
                "validation_fidelity_selected": self.best}
