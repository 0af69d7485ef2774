"""The units of one block: scored, the best kept, and the reader re-solved for the ones that go.

A block (see ``structured.base``) is one layer's units: FFN neurons, attention heads. For the reader's input
x (the units' outputs; calibration statistics C = E[x x^T] and mu = E[x] on the ORIGINAL model, fit split only):

- score: a unit's columns j contribute ``C_jj * ||W[:, j]||^2``, the output error of removing it alone with
  nothing repaired; the top k units stay (MoDeGPT's diagonal criterion);
- repair: the reader's new weight on the kept columns S is the least-squares fit of the old output from what
  remains, ``W' = W C[:, S] C[S, S]^-1`` (damped like whitened SVD): the old output's projection on the kept units.
  With bias correction the fit has an intercept: the same on the covariance C - mu mu^T, and
  ``b' = b + W mu - W' mu_S`` makes the mean output error zero. Scores then use the variance too (a unit that
  is constant on calibration text moves into the bias for free).

Widths: uniform (each block keeps at most 1/R of its parameters, in multiples of ``rank_multiple`` where a unit is
one column) or by sensitivity (each block measured alone at a few widths, widths shared greedily under one
budget, as ``planning.sensitivity`` does for ranks; ``structured.blocks`` chooses).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from edgefold.exporter.bias import corrected_bias
from edgefold.exporter.checks.verify import ValidationScorer
from edgefold.exporter.config import CompressionConfig
from edgefold.exporter.methods.base import INPUT_MEAN, INPUT_MOMENTS
from edgefold.exporter.methods.whitened import DAMPING
from edgefold.exporter.nn.swap import dense_weight
from edgefold.exporter.planning.sensitivity import Sensitivity, candidate_widths
from edgefold.exporter.records import ModuleRecord
from edgefold.exporter.source.architectures import ArchitectureSpec
from edgefold.exporter.structured.base import Block, StructuredMethod


def unit_scores(weight: torch.Tensor, moments: torch.Tensor, mean: torch.Tensor, units: list[torch.Tensor],
                centred: bool) -> torch.Tensor:
    """Per unit, the output error of removing it alone unrepaired: its columns' ``C_jj ||W[:, j]||^2`` summed
    (C the second moment of the reader's input, or its covariance when ``centred``)."""
    second = moments.diagonal().double() - (mean.double() ** 2 if centred else 0)
    columns = second * weight.double().pow(2).sum(dim=0)
    return torch.stack([columns[unit].sum() for unit in units])


def top_units(scores: torch.Tensor, width: int) -> list[int]:
    """The ``width`` best-scored units, ascending."""
    return sorted(torch.argsort(scores, descending=True, stable=True)[:width].tolist())


def repair(weight: torch.Tensor, moments: torch.Tensor, mean: torch.Tensor, columns: torch.Tensor,
           bias: torch.Tensor | None, centred: bool,
           damping: float = DAMPING) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(W', b'): the least-squares reader on the kept input ``columns``, float64.

    ``centred`` fits an intercept: W' on the covariance, ``b' = b + W mu - W' mu_S`` (b None counts as zero);
    otherwise W' on the second moment and ``b' = b``. The kept block of the matrix is damped by ``damping`` times
    its mean diagonal, so units that never vary on calibration text leave it invertible.
    """
    weight, mean = weight.double(), mean.double()
    matrix = moments.double() - (torch.outer(mean, mean) if centred else 0)
    kept = matrix[columns][:, columns]
    shift = damping * kept.diagonal().mean().clamp_min(torch.finfo(torch.float64).tiny)
    kept = kept + shift * torch.eye(len(columns), dtype=torch.float64)
    solved = torch.linalg.solve(kept, matrix[columns] @ weight.T).T  # W C[:, S] C[S, S]^-1 (C symmetric)
    if not centred:
        return solved, bias
    return solved, corrected_bias(weight, solved, bias, mean[columns], anchor_mean=mean)


def output_error(weight: torch.Tensor, moments: torch.Tensor, mean: torch.Tensor, columns: torch.Tensor,
                 new_weight: torch.Tensor, bias_shift: torch.Tensor | None = None) -> float:
    """``E||(W x + b) - (W' x_S + b')||^2 / E||W x||^2`` on the statistics (``bias_shift`` = b' - b)."""
    weight, moments = weight.double(), moments.double()
    difference = -weight
    difference[:, columns] += new_weight.double()
    error = ((difference @ moments) * difference).sum()
    if bias_shift is not None:
        shift = bias_shift.double()
        error = error + 2 * shift @ difference @ mean.double() + shift @ shift
    return float(error / ((weight @ moments) * weight).sum())


@dataclass
class BlockUnits:
    """One block ready to prune: its units, its reader's weight (rows = outputs) and statistics, the scores."""

    block: Block
    units: list[torch.Tensor]
    weight: torch.Tensor
    bias: torch.Tensor | None
    moments: torch.Tensor
    mean: torch.Tensor
    centred: bool
    multiple: int
    params: int
    scores: torch.Tensor

    @classmethod
    def of(cls, model: nn.Module, spec: ArchitectureSpec, method: StructuredMethod, block: Block,
           statistics: dict[str, torch.Tensor], config: CompressionConfig) -> BlockUnits:
        units = method.unit_columns(model, spec, block)
        reader = model.get_submodule(block.reader)
        weight = dense_weight(reader, spec, (method.reader_kind,)).double()
        moments, mean = statistics[INPUT_MOMENTS], statistics[INPUT_MEAN]
        centred = config.bias_correction
        # Rank multiples suit single-column units (neurons); a head is already a SIMD-friendly width.
        multiple = config.rank_multiple if all(len(unit) == 1 for unit in units) else 1
        params = sum(model.get_submodule(name).weight.numel() for name in (*block.writers, block.reader))
        bias = None if reader.bias is None else reader.bias.detach().double()
        return cls(block, units, weight, bias, moments, mean, centred, multiple, params,
                   unit_scores(weight, moments, mean, units, centred))

    def uniform_width(self, ratio: float) -> int:
        """The most units within 1/R of the block's parameters, in multiples (at least one); all: nothing saved."""
        return min(len(self.units), max(self.multiple, int(len(self.units) / ratio) // self.multiple * self.multiple))

    def candidate(self, width: int) -> tuple[list[int], torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(kept units, their reader columns, W', b') at ``width``."""
        kept = top_units(self.scores, width)
        columns = torch.cat([self.units[u] for u in kept])
        return (kept, columns, *repair(self.weight, self.moments, self.mean, columns, self.bias, self.centred))

    def sensitivity(self, model: nn.Module, method: StructuredMethod, scorer: ValidationScorer) -> Sensitivity:
        """Fidelity lost on validation text with this block alone at each candidate width. The reader with the
        dropped units' columns zeroed computes exactly what the pruned block would, so one module is swapped."""
        if self.params % len(self.units):
            raise ValueError(f"the units of {self.block.layer} differ in size: widths cannot be counted in units")
        reader = model.get_submodule(self.block.reader)
        widths = candidate_widths(len(self.units), self.multiple)
        losses = []
        for width in widths:
            _, columns, new_weight, new_bias = self.candidate(width)
            full = torch.zeros_like(self.weight)
            full[:, columns] = new_weight
            stand_in = nn.Linear(full.shape[1], full.shape[0], bias=new_bias is not None)
            stand_in.weight.data = full.float()
            if new_bias is not None:
                stand_in.bias.data = new_bias.float()
            losses.append(1.0 - scorer.with_module(self.block.reader, method.reader_kind, reader, stand_in))
        per_unit = self.params // len(self.units)
        return Sensitivity(self.block.layer, len(self.units), per_unit, widths, losses, per_rank=per_unit)

    def prune(self, model: nn.Module, spec: ArchitectureSpec, method: StructuredMethod,
              kinds_of: dict[str, tuple[str, ...]], width: int | None, config: CompressionConfig) -> list[ModuleRecord]:
        """Shrink the block to ``width`` units (None or all: keep it whole); records of its modules (``kinds_of``:
        their kinds by name)."""
        names = (*self.block.writers, self.block.reader)
        records = {name: ModuleRecord.dense(name, kinds_of[name], tuple(dense_weight(
            model.get_submodule(name), spec, kinds_of[name]).shape)) for name in names}
        if width is None or width >= len(self.units):
            note = ("kept whole by the global allocation" if config.allocation == "sensitivity" else
                    f"pruning would save nothing at ratio {config.ratio:g}")
            for record in records.values():
                record.note = note
            return list(records.values())
        kept, columns, new_weight, new_bias = self.candidate(width)
        method.shrink(model, spec, self.block, kept, new_weight.float(), None if new_bias is None else
                      new_bias.float())
        shared = {"block": self.block.layer, "unit": method.unit_name, "units": len(self.units), "units_kept": width}
        if config.allocation != "sensitivity":
            shared["block_budget_params"] = int(self.params / config.ratio)
        for name, record in records.items():
            record.status, record.params_after = "pruned", model.get_submodule(name).weight.numel()
            record.fit.update(shared)
        shift = None if new_bias is None else new_bias - (0 if self.bias is None else self.bias)
        records[self.block.reader].fit["output_error"] = {
            "dropped": output_error(self.weight, self.moments, self.mean, columns, self.weight[:, columns]),
            "repaired": output_error(self.weight, self.moments, self.mean, columns, new_weight, shift)}
        return list(records.values())
