"""Structured pruning: each block keeps its most useful units, and its reader is re-solved for the ones that go.

A block (see ``methods.structured``) is one layer's units: FFN neurons, attention heads. For the reader's input
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
budget, as ``planning.sensitivity`` does for ranks).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from edgefold.exporter.bias import corrected_bias
from edgefold.exporter.calibration.corpus import Calibration
from edgefold.exporter.calibration.sequential import layer_of
from edgefold.exporter.calibration.statistics import collect_statistics
from edgefold.exporter.checks.verify import ValidationScorer
from edgefold.exporter.config import CompressionConfig
from edgefold.exporter.methods.base import INPUT_MEAN, INPUT_MOMENTS
from edgefold.exporter.methods.structured import Block, StructuredMethod
from edgefold.exporter.methods.whitened import DAMPING
from edgefold.exporter.nn.swap import dense_weight
from edgefold.exporter.planning.sensitivity import SENSITIVITY_TEXTS, Sensitivity, allocate, candidate_widths
from edgefold.exporter.records import ModuleRecord
from edgefold.exporter.source.architectures import ArchitectureSpec
from edgefold.runtime import EdgefoldError


def prune_(model: nn.Module, spec: ArchitectureSpec, config: CompressionConfig, method: StructuredMethod,
           selected: list[tuple[str, nn.Module, tuple]], tokenizer: PreTrainedTokenizerBase | None,
           calibration: Calibration | None, progress: bool = True) -> list[ModuleRecord]:
    """Prune, in place, the blocks ``selected`` spans; one record per selected module, in its order."""
    if config.frequency:
        raise EdgefoldError(f"method {method.name} prunes units of Linears and uses no token counts")
    method.check_model(model)
    if config.allocation == "sensitivity" and method.same_units_every_layer(model):
        raise EdgefoldError(f"method {method.name} keeps the same number of {method.unit_name}s in every layer of "
                            f"a {spec.name} model: widths cannot be allocated per layer (give --ratio, allocation "
                            "uniform)")
    if tokenizer is None:
        raise EdgefoldError(f"method {method.name} uses calibration text: give compress_ a tokenizer")
    calibration = calibration or Calibration.load(config.calibration)
    blocks = find_blocks(method, selected)
    readers = {block.reader: (model.get_submodule(block.reader), spec.transposed) for block in blocks}
    statistics = collect_statistics(model, readers, method.needs, calibration.fit_texts, tokenizer, config.seed,
                                    progress)
    units = [_BlockUnits.of(model, spec, method, block, statistics[block.reader], config) for block in blocks]
    sensitivities: dict[str, Sensitivity] = {}
    if config.allocation == "sensitivity":
        scorer = ValidationScorer(model, calibration.validation_texts[:SENSITIVITY_TEXTS], tokenizer)
        sensitivities = {b.block.layer: b.sensitivity(model, method, scorer) for b in
                         tqdm(units, desc="sensitivity", unit="block", disable=not progress)}
        budget = config.budget_params(model, sum(b.params for b in units))
        widths = allocate(list(sensitivities.values()), budget)
    else:
        widths = {b.block.layer: b.uniform_width(config.ratio) for b in units}
    records: dict[str, ModuleRecord] = {}
    for block_units in tqdm(units, desc=f"{method.name} prune", unit="block", disable=not progress):
        layer = block_units.block.layer
        for record in block_units.prune(model, spec, method, selected, widths[layer], config):
            records[record.name] = record
        if layer in sensitivities:  # on the reader's record: one per block
            records[block_units.block.reader].fit["sensitivity"] = {"widths": sensitivities[layer].ranks,
                                                                    "fidelity_lost": sensitivities[layer].losses}
    return [records[name] for name, _, _ in selected]


def find_blocks(method: StructuredMethod, selected: list[tuple[str, nn.Module, tuple]]) -> list[Block]:
    """The selected modules grouped per layer into blocks; a layer without all of the method's kinds targeted is
    refused in one line."""
    layers: dict[str, list[tuple[str, tuple]]] = {}
    for name, _, kinds in selected:
        layers.setdefault(layer_of(name), []).append((name, kinds))
    blocks = []
    for layer, members in layers.items():
        missing = set(method.block_kinds) - {kind for _, kinds in members for kind in kinds}
        if missing:
            raise EdgefoldError(f"method {method.name} removes {method.unit_name}s from "
                                f"{', '.join(method.block_kinds)} together, but {layer} has no "
                                f"{', '.join(sorted(missing))} targeted: pass --targets {method.targets_hint()}")
        reader = next(name for name, kinds in members if kinds == (method.reader_kind,))
        blocks.append(Block(layer, tuple(name for name, _ in members if name != reader), reader))
    return blocks


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
class _BlockUnits:
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
           statistics: dict[str, torch.Tensor], config: CompressionConfig) -> _BlockUnits:
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
              selected: list[tuple[str, nn.Module, tuple]], width: int | None,
              config: CompressionConfig) -> list[ModuleRecord]:
        """Shrink the block to ``width`` units (None or all: keep it whole); records of its modules."""
        kinds_of = {name: kinds for name, _, kinds in selected}
        names = (*self.block.writers, self.block.reader)
        shapes = {name: tuple(dense_weight(model.get_submodule(name), spec, kinds_of[name]).shape) for name in names}
        records = {name: ModuleRecord(name, kinds_of[name], shapes[name], None, shapes[name][0] * shapes[name][1],
                                      shapes[name][0] * shapes[name][1], "dense") for name in names}
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
