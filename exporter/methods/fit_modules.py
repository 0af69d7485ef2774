"""A per-module method applied to the selected modules, one at a time: each module's budget (the config's ratio,
its plan's rank, or a rank allocated by sensitivity under one budget), the fit (frequency-aware for the word
embeddings where asked), the swap and the bias correction, and one record each."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from edgefold.exporter.bias import correct_bias_
from edgefold.exporter.calibration.corpus import Calibration
from edgefold.exporter.calibration.gathering import FitStatistics, calibration_text, linear_inputs
from edgefold.exporter.checks.verify import ValidationScorer
from edgefold.exporter.config import CompressionConfig
from edgefold.exporter.methods.base import FitContext, LowRankFactors, Method
from edgefold.exporter.methods.frequency import fit_frequency_aware
from edgefold.exporter.methods.svd import TruncatedSVD
from edgefold.exporter.nn.swap import dense_weight, retie_head, swap
from edgefold.exporter.planning.ranks import plan_rank
from edgefold.exporter.planning.selection import Selected
from edgefold.exporter.planning.sensitivity import Sensitivity, measure, share_budget
from edgefold.exporter.records import ModuleRecord
from edgefold.exporter.source.architectures import EMBEDDINGS, ArchitectureSpec


class ModuleFitter:
    """Fits one module at a time: the method, its calibration statistics (``data``) and validation scoring.

    ``fitted``: factors already fitted for some modules of a plan, used as they are."""

    def __init__(self, model: nn.Module, spec: ArchitectureSpec, config: CompressionConfig, method: Method,
                 tokenizer: PreTrainedTokenizerBase | None, calibration: Calibration | None, progress: bool,
                 fitted: Mapping[str, LowRankFactors]):
        self.model, self.spec, self.config, self.method, self.progress = model, spec, config, method, progress
        self.fitted = fitted
        self.allocated: dict[str, int | None] | None = None
        if config.plan is not None:
            self.allocated = {name: choice.rank for name, choice in config.plan.modules.items()}
        self.sensitivities: dict[str, Sensitivity] = {}
        if config.needs_calibration and not self._all_fitted():
            calibration = calibration_text(config, tokenizer, calibration, f"method {config.method}")
        else:
            calibration = None
        self.scorer = None
        if calibration is not None and config.scores_candidates:
            self.scorer = ValidationScorer(model, calibration.validation_texts, tokenizer)
        self.data = FitStatistics(model, config, method, calibration, tokenizer, progress)

    def gather(self, selected: Selected) -> None:
        """The statistics of the Linears still to fit, on the original model and the calibration fit split."""
        self.data.collect({name: entry for name, entry in linear_inputs(selected, self.spec).items()
                           if name not in self.fitted
                           and (self.allocated is None or self.allocated.get(name) is not None)})

    def allocate(self, selected: Selected) -> None:
        """Measure each module's fidelity loss at a few ranks, then share the whole budget greedily."""
        # Iterative methods would train once per candidate rank: truncated SVD measures for them.
        proxy = TruncatedSVD() if self.method.iterative else self.method

        def measure_one(entry: tuple, scorer: ValidationScorer) -> Sensitivity:
            name, module, kinds = entry
            weight = dense_weight(module, self.spec, kinds)
            context = FitContext(seed=self.config.seed, kind=kinds[0], **self.data.statistics.get(name, {}))
            score = scorer.for_module(name, kinds[0], module)
            return measure(name, *weight.shape, self.config.rank_multiple,
                           lambda rank: 1.0 - score(proxy.fit(weight, rank, context)))

        self.sensitivities, self.allocated = share_budget(self.model, self.config, self.data.calibration,
                                                          self.data.tokenizer, selected, measure_one, "module",
                                                          self.progress)

    def fit(self, name: str, module: nn.Module, kinds: tuple[str, ...]) -> ModuleRecord:
        """Fit and swap in the module at ``name`` (a head tied to the embeddings follows them); its record."""
        weight = dense_weight(module, self.spec, kinds)
        rows, cols = weight.shape
        ratio = self._ratio(name, rows, cols)
        record = ModuleRecord.dense(name, kinds, (rows, cols))
        if ratio is None:
            record.note = "kept dense by the plan"
            return record
        record.fit["budget_params"] = int(rows * cols / ratio)
        svd_rank = plan_rank(rows, cols, ratio, multiple=self.config.rank_multiple)
        record.fit["svd_params_at_same_ratio"] = svd_rank * (rows + cols) if svd_rank else None
        context = FitContext(seed=self.config.seed, progress=self.progress, kind=kinds[0],
                             score=self.scorer.for_module(name, kinds[0], module) if self.scorer else None,
                             **self.data.pop(name))
        torch.manual_seed(self.config.seed)
        factors = self._factors(name, kinds, weight, ratio, context, record)
        if factors is None:
            record.note = record.note or f"a factorisation would save nothing at ratio {ratio:g}"
            return record
        self._swap(name, module, kinds, weight, factors, context, record)
        return record

    def _factors(self, name: str, kinds: tuple[str, ...], weight: torch.Tensor, ratio: float, context: FitContext,
                 record: ModuleRecord) -> LowRankFactors | None:
        if name in self.fitted:
            return self.fitted[name]
        rows, cols = weight.shape
        if kinds == (EMBEDDINGS,) and self.config.uses_frequency:
            counts = self.data.calibration.token_counts(self.data.tokenizer, rows)
            return fit_frequency_aware(weight, ratio, self.method, counts, context, self.config.rank_multiple)
        rank = self._rank(name, rows, cols, kinds[0], record)
        return None if rank is None else self.method.fit(weight, rank, context)

    def _swap(self, name: str, module: nn.Module, kinds: tuple[str, ...], weight: torch.Tensor,
              factors: LowRankFactors, context: FitContext, record: ModuleRecord) -> None:
        replacement = swap(self.model, name, kinds[0], factors)
        if kinds == (EMBEDDINGS,):
            retie_head(self.model, module, replacement)
        else:
            factors = factors.folded()  # as the Linear stores them
            if self.config.bias_correction:
                record.fit["bias_shift"] = correct_bias_(replacement, weight, context.input_mean, context.anchor_mean)
        record.rank, record.params_after, record.status = replacement.rank, factors.num_params, "factorised"
        record.fit.update(context.details)

    def _all_fitted(self) -> bool:
        plan = self.config.plan
        return plan is not None and set(plan.factorised) <= set(self.fitted)

    def _ratio(self, name: str, rows: int, cols: int) -> float | None:
        """The module's budget as a compression factor: the config's, or what its plan implies (None: dense)."""
        if self.config.plan is None:
            return self.config.ratio
        choice = self.config.plan.modules[name]
        return rows * cols / (choice.rank * (rows + cols)) if choice.rank else choice.ratio

    def _rank(self, name: str, rows: int, cols: int, kind: str, record: ModuleRecord) -> int | None:
        """The allocated rank where the budget is global, else the largest within the module's own 1/R."""
        if self.config.plan is not None:
            return self.allocated[name]
        if self.allocated is None:
            extra = self.method.extra_params(rows, cols, kind)
            return plan_rank(rows, cols, self.config.ratio, extra, self.config.rank_multiple)
        sensitivity = self.sensitivities[name]
        record.fit["sensitivity"] = {"ranks": sensitivity.ranks, "fidelity_lost": sensitivity.losses}
        if self.allocated[name] is None:
            record.note = "kept dense by the global allocation"
        return self.allocated[name]
