"""``compress_(model, config)``: walk a transformers model and swap targeted modules for low-rank ones."""

from __future__ import annotations

import copy
from collections.abc import Mapping

import torch
from torch import nn
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from edgefold.exporter.bias import correct_bias_
from edgefold.exporter.calibration.batches import TextBatch, max_text_length, tokenize
from edgefold.exporter.calibration.corpus import Calibration
from edgefold.exporter.calibration.sequential import LayerwiseActivations, forward_stages, layer_of
from edgefold.exporter.calibration.statistics import STATISTICS_BATCH, MomentSums, collect_statistics, hooks
from edgefold.exporter.calibration.streaming import LayerStream
from edgefold.exporter.checks.verify import ValidationScorer
from edgefold.exporter.config import CompressionConfig
from edgefold.exporter.methods import FitContext, GroupMethod, LowRankFactors, Method, TruncatedSVD
from edgefold.exporter.methods.base import INPUT_MEAN, INPUT_MOMENTS, ROW_IMPORTANCE
from edgefold.exporter.methods.frequency import fit_frequency_aware
from edgefold.exporter.methods.structured import StructuredMethod
from edgefold.exporter.nn.swap import (
    dense_weight,
    retie_head,
    select_modules,
    swap,
    tied_head,
)
from edgefold.exporter.planning.ranks import plan_rank
from edgefold.exporter.planning.sensitivity import (
    SENSITIVITY_TEXTS,
    Sensitivity,
    allocate,
    measure,
)
from edgefold.exporter.prune import prune_
from edgefold.exporter.records import ModuleRecord
from edgefold.exporter.source.architectures import (
    EMBEDDINGS,
    ArchitectureSpec,
    spec_for,
)
from edgefold.exporter.source.lazy import LazyWeights
from edgefold.runtime import EdgefoldError


def compress_(model: nn.Module, config: CompressionConfig, tokenizer: PreTrainedTokenizerBase | None = None,
              calibration: Calibration | None = None, progress: bool = True,
              fitted: Mapping[str, LowRankFactors] | None = None) -> list[ModuleRecord]:
    """Replace, in place, every module of ``model`` that ``config`` targets by its low-rank form.

    ``tokenizer`` is needed when the config uses calibration text (``config.needs_calibration``), which is
    ``calibration`` or, when None, loaded from ``config.calibration``. ``fitted``: factors already fitted for
    some modules of a plan (a search fits each once, then exports many plans), used as they are. Returns one
    record per targeted module, including those left dense because a factorisation would save nothing.
    ``config.then`` compresses other targets afterwards, on the model compressed so far.
    """
    records = []
    while config is not None:
        records += _compress_stage(model, config, tokenizer, calibration, progress, fitted)
        config = config.then
    return records


def _compress_stage(model: nn.Module, config: CompressionConfig, tokenizer: PreTrainedTokenizerBase | None,
                    calibration: Calibration | None, progress: bool,
                    fitted: Mapping[str, LowRankFactors] | None) -> list[ModuleRecord]:
    spec = spec_for(model.config.model_type)
    method = config.build_method()
    if method is None:  # --method none
        return []
    selected = _select(model, spec, config, method)
    if not selected:
        return []
    if isinstance(method, GroupMethod):
        means = _input_means(model, spec, config, selected, tokenizer, calibration, progress)
        return _compress_groups(model, spec, config, method, selected, means, progress)
    if isinstance(method, StructuredMethod):
        return prune_(model, spec, config, method, selected, tokenizer, calibration, progress)
    fitting = _Fitting(model, config, method, tokenizer, calibration, progress, fitted or {})
    fitting.collect_statistics(selected, spec)
    if config.allocation == "sensitivity":
        fitting.allocate_ranks(selected, spec)
    records = {}
    bar = tqdm(total=len(selected), desc=f"{method.name} fit", unit="module", disable=not progress)
    for stage in fitting.stages(selected):
        fitting.measure_stage(stage)
        for name, module, kinds in stage:
            records[name] = fitting.compress_module(name, module, kinds, dense_weight(module, spec, kinds))
            if kinds == (EMBEDDINGS,) and records[name].status == "factorised":
                retie_head(model, module, model.get_submodule(name))
            bar.update()
    bar.close()
    return [records[name] for name, _, _ in selected]


def _select(model: nn.Module, spec: ArchitectureSpec, config: CompressionConfig,
            method: Method) -> list[tuple[str, nn.Module, tuple]]:
    """The modules the config (or its plan) compresses, each checked against the method; none matching the
    targets is refused, a plan may leave nothing to do."""
    selected = select_modules(model, spec, config.targets)
    if config.plan is not None:
        config.plan.check(model)
        selected = [entry for entry in selected if entry[0] in config.plan.modules]
        if not selected:
            return []
    if not selected:
        raise EdgefoldError(f"no module of this {spec.name} model matches the targets {sorted(config.targets)}")
    for _, module, kinds in selected:
        method.check_module(kinds[0], tied=tied_head(model, module) is not None)
    return selected


def check_streamable(config: CompressionConfig, fitted: Mapping[str, LowRankFactors] | None = None) -> None:
    """Refuse, in one line and before any work, what a layer-streamed run cannot do: anything that needs the
    whole model at once. Per-module fits on input moments and means (``svd``, ``svd-whitened``, bias correction)
    are what it runs."""
    method = config.build_method()
    reasons = [
        (isinstance(method, GroupMethod), f"method {config.method} fits the matrices of all layers together"),
        (isinstance(method, StructuredMethod), f"method {config.method} measures what to prune on the whole model"),
        (method is not None and method.sequential, "a sequential fit runs the original and the compressed model "
         "side by side"),
        (method is not None and ROW_IMPORTANCE in method.needs, f"method {config.method} takes gradients through "
         "the whole model"),
        (config.scores_candidates, "frequency-aware embeddings and the autoencoder score candidates on the whole "
         "model (pass --no-frequency, or another method)"),
        (config.allocation != "uniform", f"allocation {config.allocation} measures every module on the whole model"),
        (config.then is not None, "a mix compresses each config on the model the one before left"),
        (bool(fitted), "factors fitted beforehand (a search) come from the whole model"),
    ]
    for refused, reason in reasons:
        if refused:
            raise EdgefoldError(f"a streamed run cannot do this: {reason}; run it without streaming")


def compress_streamed_(model: nn.Module, weights: LazyWeights, config: CompressionConfig,
                       tokenizer: PreTrainedTokenizerBase | None = None, calibration: Calibration | None = None,
                       progress: bool = True) -> list[ModuleRecord]:
    """:func:`compress_` on a skeleton from ``weights`` (:meth:`LazyWeights.skeleton`), one layer resident at a
    time (see ``calibration.streaming``): each layer is read from the file, the calibration batches' hidden states
    carried through its original weights while its Linears' statistics are collected, then its modules are fitted
    and swapped and its original weights released. The factors are bitwise those of :func:`compress_`. Afterwards
    the model is the compressed one, whole: what it still reads of the original (untargeted modules) is read."""
    check_streamable(config)
    method = config.build_method()
    records = []
    if method is not None:
        spec = spec_for(model.config.model_type)
        selected = _select(model, spec, config, method)
        fitting = _Fitting(model, config, method, tokenizer, calibration, progress, {})
        records = _fit_streamed(fitting, spec, selected, weights)
    weights.materialise(model)
    return records


def _fit_streamed(fitting: _Fitting, spec: ArchitectureSpec, selected: list[tuple[str, nn.Module, tuple]],
                  weights: LazyWeights) -> list[ModuleRecord]:
    needs = fitting.linear_needs()
    # the first layer's inputs come from the original embeddings: captured before the embeddings are fitted
    stream = LayerStream(fitting.model, weights, fitting.fit_batches() if needs else [])
    records = {}
    bar = tqdm(total=len(selected), desc=f"{fitting.method.name} fit (streamed)", unit="module",
               disable=not fitting.progress)
    by_layer: dict[str, list[tuple[str, nn.Module, tuple]]] = {}
    for name, module, kinds in selected:
        if kinds == (EMBEDDINGS,):  # resident with the other modules outside the layers
            records[name] = fitting.compress_module(name, module, kinds, dense_weight(module, spec, kinds))
            if records[name].status == "factorised":
                retie_head(fitting.model, module, fitting.model.get_submodule(name))
                weights.release(name)  # the original table is not read again
            bar.update()
        else:
            by_layer.setdefault(layer_of(name), []).append((name, module, kinds))
    for layer_name, layer in stream.layers():
        stage = by_layer.pop(layer_name, [])
        sums = MomentSums()
        linears = {name: (module, spec.transposed) for name, module, _ in stage} if needs else {}
        with hooks(linears, lambda name: lambda _module, inputs: sums.add(name, inputs[0], stream.mask)):
            stream.carry(layer)
        fitting.statistics.update({name: {INPUT_MOMENTS: moments, INPUT_MEAN: mean}
                                   for name, (moments, mean) in sums.means().items()})
        for name, module, kinds in stage:
            records[name] = fitting.compress_module(name, module, kinds, dense_weight(module, spec, kinds))
            bar.update()
    bar.close()
    return [records[name] for name, _, _ in selected]


class _Fitting:
    """Fits one module at a time: the method, calibration counts and validation scoring it needs."""

    def __init__(self, model, config: CompressionConfig, method: Method, tokenizer, calibration, progress: bool,
                 fitted: Mapping[str, LowRankFactors]):
        self.model, self.config, self.method, self.progress, self.fitted = model, config, method, progress, fitted
        self.calibration = self.scorer = None
        self.allocated: dict[str, int | None] | None = None
        if config.plan is not None:
            self.allocated = {name: choice.rank for name, choice in config.plan.modules.items()}
        if config.needs_calibration and not self._all_fitted():
            if tokenizer is None:
                raise EdgefoldError(f"method {config.method} uses calibration text: give compress_ a tokenizer")
            self.calibration = calibration or Calibration.load(config.calibration)
            self.tokenizer = tokenizer
            if config.scores_candidates:
                self.scorer = ValidationScorer(model, self.calibration.validation_texts, tokenizer)
        self.statistics: dict[str, dict[str, torch.Tensor]] = {}
        self.sensitivities: dict[str, Sensitivity] = {}
        # A sequential fit measures each stage against the original model, so keep it before anything is swapped.
        self.original = copy.deepcopy(model) if method.sequential else None
        self._fit_batches: list[TextBatch] | None = None
        self.activations: LayerwiseActivations | None = None

    def collect_statistics(self, selected: list[tuple[str, nn.Module, tuple]], spec: ArchitectureSpec) -> None:
        """What the method needs of the Linears' activations, on the original model (before any swap) and the
        calibration fit split only."""
        linears = {name: (module, spec.transposed) for name, module, kinds in selected
                   if kinds != (EMBEDDINGS,) and name not in self.fitted
                   and (self.allocated is None or self.allocated.get(name) is not None)}
        needs = self.linear_needs()
        if self.method.sequential and self.config.allocation != "sensitivity":
            return  # every stage is measured when it is fitted (measure_stage); only an allocation needs it now
        if needs and linears:
            self.statistics = collect_statistics(self.model, linears, needs, self.calibration.fit_texts,
                                                 self.tokenizer, self.config.seed, self.progress)

    def linear_needs(self) -> frozenset[str]:
        """The statistics of the Linears' inputs the fit uses: the method's, and E[x] for bias correction."""
        return frozenset(self.method.needs | ({INPUT_MEAN} if self.config.bias_correction else set()))

    def stages(self, selected: list[tuple[str, nn.Module, tuple]]) -> list[list[tuple[str, nn.Module, tuple]]]:
        """The order of the fit: module by module; for a sequential fit the embeddings first, then the Linears in
        the order the model runs them, those reading one input together."""
        if not self.method.sequential:
            return [[entry] for entry in selected]
        by_name = {name: (name, module, kinds) for name, module, kinds in selected}
        linears = {name: (module, False) for name, module, kinds in selected if kinds != (EMBEDDINGS,)}
        first = self.fit_batches()[0]
        return ([[entry] for entry in selected if entry[2] == (EMBEDDINGS,)]
                + [[by_name[name] for name in stage] for stage in forward_stages(self.model, linears, first)])

    def measure_stage(self, stage: list[tuple[str, nn.Module, tuple]]) -> None:
        """Sequential fit: the inputs of a stage of Linears in the model compressed so far, anchored to the
        original model's."""
        if self.original is None or stage[0][2] == (EMBEDDINGS,):
            return
        names = [name for name, _, _ in stage]
        if self.activations is None:  # after the embeddings: both models' hidden states at the first layer
            self.activations = LayerwiseActivations(self.original, self.model, names[0], self.fit_batches())
        self.statistics.update(self.activations.measure(names))

    def fit_batches(self) -> list[TextBatch]:
        """The calibration fit split, tokenised as the statistics see it."""
        if self._fit_batches is None:
            self._fit_batches = tokenize(self.tokenizer, self.calibration.fit_texts, max_text_length(self.model),
                                         batch_size=STATISTICS_BATCH)
        return self._fit_batches

    def _all_fitted(self) -> bool:
        plan = self.config.plan
        return plan is not None and set(plan.factorised) <= set(self.fitted)

    def allocate_ranks(self, selected: list[tuple[str, nn.Module, tuple]], spec: ArchitectureSpec) -> None:
        """Measure each module's fidelity loss at a few ranks, then share the whole budget greedily."""
        # Iterative methods would train once per candidate rank: truncated SVD measures for them.
        proxy = TruncatedSVD() if self.method.iterative else self.method
        scorer = ValidationScorer(self.model, self.calibration.validation_texts[:SENSITIVITY_TEXTS], self.tokenizer)
        for name, module, kinds in tqdm(selected, desc="sensitivity", unit="module", disable=not self.progress):
            weight = dense_weight(module, spec, kinds)
            context = FitContext(seed=self.config.seed, kind=kinds[0], **self.statistics.get(name, {}))
            score = scorer.for_module(name, kinds[0], module)
            self.sensitivities[name] = measure(name, *weight.shape, self.config.rank_multiple,
                                               lambda rank: 1.0 - score(proxy.fit(weight, rank, context)))
        measured = list(self.sensitivities.values())
        budget = self.config.budget_params(self.model, sum(s.dense_params for s in measured))
        self.allocated = allocate(measured, budget)

    def compress_module(self, name: str, module: nn.Module, kinds: tuple[str, ...],
                        weight: torch.Tensor) -> ModuleRecord:
        rows, cols = weight.shape
        ratio = self._ratio(name, rows, cols)
        record = ModuleRecord(name, kinds, (rows, cols), None, rows * cols, rows * cols, "dense")
        if ratio is None:
            record.note = "kept dense by the plan"
            return record
        record.fit["budget_params"] = int(rows * cols / ratio)
        multiple = self.config.rank_multiple
        svd_rank = plan_rank(rows, cols, ratio, multiple=multiple)
        record.fit["svd_params_at_same_ratio"] = svd_rank * (rows + cols) if svd_rank else None
        context = FitContext(seed=self.config.seed, progress=self.progress, kind=kinds[0],
                             score=self.scorer.for_module(name, kinds[0], module) if self.scorer else None,
                             **self.statistics.pop(name, {}))
        torch.manual_seed(self.config.seed)
        if name in self.fitted:
            factors = self.fitted[name]
        elif kinds == (EMBEDDINGS,) and self.config.uses_frequency:
            counts = self.calibration.token_counts(self.tokenizer, rows)
            factors = fit_frequency_aware(weight, ratio, self.method, counts, context, multiple)
        else:
            rank = self._rank(name, rows, cols, kinds[0], record)
            factors = None if rank is None else self.method.fit(weight, rank, context)
        if factors is None:
            record.note = record.note or f"a factorisation would save nothing at ratio {ratio:g}"
            return record
        replacement = swap(self.model, name, kinds[0], factors)
        if kinds != (EMBEDDINGS,):
            factors = factors.folded()  # as the Linear stores them
            if self.config.bias_correction:
                record.fit["bias_shift"] = correct_bias_(replacement, weight, context.input_mean, context.anchor_mean)
        record.rank, record.params_after, record.status = replacement.rank, factors.num_params, "factorised"
        record.fit.update(context.details)
        return record

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


def _input_means(model: nn.Module, spec: ArchitectureSpec, config: CompressionConfig, selected: list, tokenizer,
                 calibration: Calibration | None, progress: bool) -> dict[str, torch.Tensor]:
    """E[x] of the targeted Linears' inputs where their biases are to be corrected (else nothing)."""
    linears = {name: (module, spec.transposed) for name, module, kinds in selected if kinds != (EMBEDDINGS,)}
    if not (config.bias_correction and linears):
        return {}
    if tokenizer is None:
        raise EdgefoldError("bias correction uses calibration text: give compress_ a tokenizer")
    calibration = calibration or Calibration.load(config.calibration)
    statistics = collect_statistics(model, linears, frozenset({INPUT_MEAN}), calibration.fit_texts, tokenizer,
                                    config.seed, progress)
    return {name: values[INPUT_MEAN] for name, values in statistics.items()}


def _compress_groups(model: nn.Module, spec: ArchitectureSpec, config: CompressionConfig, method: GroupMethod,
                     selected: list, means: dict[str, torch.Tensor], progress: bool) -> list[ModuleRecord]:
    """The grouped branch: modules of one kind (and shape) in all layers are fitted together, the group keeping
    at most 1/R of its parameters with everything stored counted (shared tensors once). ``means``: the input
    means of the Linears whose biases are corrected."""
    if config.frequency:
        raise EdgefoldError(f"method {method.name} fits groups of Linear weights and uses no token counts")
    groups: dict[tuple, list] = {}
    for name, module, kinds in selected:
        weight = dense_weight(module, spec, kinds)
        groups.setdefault((kinds, tuple(weight.shape)), []).append((name, module, weight))
    records = {}
    for (kinds, (rows, cols)), members in tqdm(groups.items(), desc=f"{method.name} fit", unit="group",
                                               disable=not progress):
        context = FitContext(seed=config.seed, progress=progress, kind=kinds[0], rank_multiple=config.rank_multiple)
        fitted = method.fit_group([weight for _, _, weight in members], config.ratio, context)
        group = {"group": "+".join(kinds), "group_members": len(members), "group_params_before":
                 len(members) * rows * cols, "group_params_after": sum(fitted.params) if fitted else None}
        for i, (name, module, weight) in enumerate(members):
            record = ModuleRecord(name, kinds, (rows, cols), None, rows * cols, rows * cols, "dense",
                                  fit={"budget_params": int(rows * cols / config.ratio), **group})
            records[name] = record
            if fitted is None:
                record.note = f"a {method.name} fit would save nothing at ratio {config.ratio:g}"
                continue
            replacement = swap(model, name, kinds[0], fitted.forms[i])
            record.status, record.params_after = method.compression, fitted.params[i]
            record.rank = getattr(replacement, "rank", None)  # a factorised module's; decoded rows have none
            record.fit.update(context.details)
            if kinds == (EMBEDDINGS,):
                retie_head(model, module, replacement)
            elif name in means:
                record.fit["bias_shift"] = correct_bias_(replacement, weight, means[name])
    return [records[name] for name, _, _ in selected]
