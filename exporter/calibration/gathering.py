"""What the fits of one compression read of calibration text, gathered on the model before it is changed.

``compress_`` selects the modules, then gathers here: the statistics of the targeted Linears' inputs (all at once
on the original model, or stage by stage for a sequential fit, or layer by layer in a streamed run), or only
their means for a grouped fit's bias correction. Statistics are of the calibration FIT split only.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from edgefold.exporter.calibration.batches import TextBatch, max_text_length, tokenize
from edgefold.exporter.calibration.corpus import Calibration
from edgefold.exporter.calibration.sequential import LayerwiseActivations, forward_stages
from edgefold.exporter.calibration.statistics import STATISTICS_BATCH, MomentSums, collect_statistics
from edgefold.exporter.methods.base import INPUT_MEAN, INPUT_MOMENTS, Method
from edgefold.exporter.planning.selection import Selected
from edgefold.exporter.source.architectures import EMBEDDINGS, ArchitectureSpec
from edgefold.runtime import EdgefoldError

if TYPE_CHECKING:
    from edgefold.exporter.config import CompressionConfig

def calibration_text(config: CompressionConfig, tokenizer: PreTrainedTokenizerBase | None,
                     calibration: Calibration | None, user: str) -> Calibration:
    """``calibration``, or the config's file (the shipped text when it names none); ``user`` (what needs it) is
    named where no tokenizer was given to read it with."""
    if tokenizer is None:
        raise EdgefoldError(f"{user} uses calibration text: give compress_ a tokenizer")
    return calibration or Calibration.load(config.calibration)


def linear_inputs(selected: Selected, spec: ArchitectureSpec) -> dict[str, tuple[nn.Module, bool]]:
    """The selected Linears (not the embeddings) as the statistics hooks take them: name -> (module, transposed)."""
    return {name: (module, spec.transposed) for name, module, kinds in selected if kinds != (EMBEDDINGS,)}


def input_means(model: nn.Module, spec: ArchitectureSpec, config: CompressionConfig, selected: Selected,
                tokenizer: PreTrainedTokenizerBase | None, calibration: Calibration | None,
                progress: bool) -> dict[str, torch.Tensor]:
    """E[x] of the targeted Linears' inputs where their biases are to be corrected (else nothing)."""
    linears = linear_inputs(selected, spec)
    if not (config.bias_correction and linears):
        return {}
    calibration = calibration_text(config, tokenizer, calibration, "bias correction")
    statistics = collect_statistics(model, linears, frozenset({INPUT_MEAN}), calibration.fit_texts, tokenizer,
                                    config.seed, progress)
    return {name: values[INPUT_MEAN] for name, values in statistics.items()}


class FitStatistics:
    """The statistics a per-module fit reads, by module name (taken once with :meth:`pop`).

    ``calibration`` None: the fit reads none. A sequential fit keeps a copy of the original model, made here
    before anything is swapped, to measure each stage's inputs in both models.
    """

    def __init__(self, model: nn.Module, config: CompressionConfig, method: Method, calibration: Calibration | None,
                 tokenizer: PreTrainedTokenizerBase | None, progress: bool):
        self.model, self.config, self.method, self.progress = model, config, method, progress
        self.calibration, self.tokenizer = calibration, tokenizer
        self.statistics: dict[str, dict[str, torch.Tensor]] = {}
        self.original = copy.deepcopy(model) if method.sequential else None
        self._fit_batches: list[TextBatch] | None = None
        self.activations: LayerwiseActivations | None = None

    @property
    def needs(self) -> frozenset[str]:
        """The statistics of the Linears' inputs the fit uses: the method's, and E[x] for bias correction."""
        return frozenset(self.method.needs | ({INPUT_MEAN} if self.config.bias_correction else set()))

    def collect(self, linears: dict[str, tuple[nn.Module, bool]]) -> None:
        """What the fit needs of ``linears``' inputs, on the model as it is (the original, before any swap)."""
        if self.method.sequential and self.config.allocation != "sensitivity":
            return  # every stage is measured when it is fitted (measure_stage); only an allocation needs it now
        if self.needs and linears:
            self.statistics = collect_statistics(self.model, linears, self.needs, self.calibration.fit_texts,
                                                 self.tokenizer, self.config.seed, self.progress)

    def stages(self, selected: Selected) -> list[Selected]:
        """The order of the fit: module by module; for a sequential fit the embeddings first, then the Linears in
        the order the model runs them, those reading one input together."""
        if not self.method.sequential:
            return [[entry] for entry in selected]
        by_name = {name: (name, module, kinds) for name, module, kinds in selected}
        linears = {name: (module, False) for name, module, kinds in selected if kinds != (EMBEDDINGS,)}
        first = self.fit_batches()[0]
        return ([[entry] for entry in selected if entry[2] == (EMBEDDINGS,)]
                + [[by_name[name] for name in stage] for stage in forward_stages(self.model, linears, first)])

    def measure_stage(self, stage: Selected) -> None:
        """Sequential fit: the inputs of a stage of Linears in the model compressed so far, anchored to the
        original model's."""
        if self.original is None or stage[0][2] == (EMBEDDINGS,):
            return
        names = [name for name, _, _ in stage]
        if self.activations is None:  # after the embeddings: both models' hidden states at the first layer
            self.activations = LayerwiseActivations(self.original, self.model, names[0], self.fit_batches())
        self.statistics.update(self.activations.measure(names))

    def add_moments(self, sums: MomentSums) -> None:
        """A streamed layer's statistics, summed while its original weights were resident."""
        self.statistics.update({name: {INPUT_MOMENTS: moments, INPUT_MEAN: mean}
                                for name, (moments, mean) in sums.means().items()})

    def fit_batches(self) -> list[TextBatch]:
        """The calibration fit split, tokenised as the statistics see it."""
        if self._fit_batches is None:
            self._fit_batches = tokenize(self.tokenizer, self.calibration.fit_texts, max_text_length(self.model),
                                         batch_size=STATISTICS_BATCH)
        return self._fit_batches

    def pop(self, name: str) -> dict[str, torch.Tensor]:
        return self.statistics.pop(name, {})
