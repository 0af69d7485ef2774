"""``compress_(model, config)``: walk a transformers model and swap targeted modules for low-rank ones."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from torch import nn
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from edgefold.runtime import EdgefoldError

from .allocate import SENSITIVITY_TEXTS, Sensitivity, allocate, measure
from .architectures import ALL_KINDS, EMBEDDINGS, ArchitectureSpec, parse_targets, spec_for
from .calibration import Calibration
from .frequency import fit_frequency_aware
from .layers import LowRankEmbedding, TiedLowRankHead, low_rank_module
from .methods import FREQUENCY_DEFAULT, FitContext, GroupMethod, Method, TruncatedSVD, get_method
from .plan import RANK_MULTIPLE, plan_rank
from .statistics import collect_statistics
from .verify import ValidationScorer


ALLOCATIONS = ("uniform", "sensitivity")
FP32_BYTES = 4


@dataclass(frozen=True)
class CompressionConfig:
    """What to compress and how hard. ``ratio`` R: the targeted weights keep at most 1/R of their parameters.

    ``frequency``: weight embedding rows by calibration token counts and keep the most frequent exact (None:
    the method's default, on for ``ae``). ``calibration``: a text file, or None for the shipped corpus.
    ``method_options``: NAME=VALUE settings of the method (see ``AutoencoderOptions``). ``rank_multiple``: ranks
    are multiples of it (8 suits SIMD kernels; int4 quantisation needs its block size, 32).

    ``allocation``: "uniform" gives every module the ratio; "sensitivity" makes the ratio (or ``size_budget``,
    the fp32 bytes of the whole model's weights) a budget for all targeted weights together, with ranks
    allocated per module by measured fidelity loss (see ``exporter.allocate``).
    """

    method: str = "svd"
    targets: frozenset[str] = frozenset(ALL_KINDS)
    ratio: float = 2.0
    seed: int = 0
    frequency: bool | None = None
    calibration: str | None = None
    method_options: dict[str, str] = field(default_factory=dict)
    rank_multiple: int = RANK_MULTIPLE
    allocation: str = "uniform"
    size_budget: int | None = None

    def __post_init__(self) -> None:
        if self.size_budget is not None:
            object.__setattr__(self, "allocation", "sensitivity")
        if isinstance(self.targets, str):
            object.__setattr__(self, "targets", parse_targets(self.targets))
        unknown = set(self.targets) - set(ALL_KINDS)
        if unknown:
            raise EdgefoldError(f"unknown target(s) {sorted(unknown)}; choose from: {', '.join(ALL_KINDS)}")
        if not self.targets:
            raise EdgefoldError("no targets given")
        if not isinstance(self.ratio, (int, float)) or not self.ratio > 1:
            raise EdgefoldError(f"--ratio must be a number greater than 1 (got {self.ratio!r})")
        if not isinstance(self.rank_multiple, int) or self.rank_multiple < 1:
            raise EdgefoldError(f"rank_multiple must be a positive integer (got {self.rank_multiple!r})")
        self._check_allocation()
        self.build_method()  # refuses an unknown method or option now, before any work

    def _check_allocation(self) -> None:
        if self.allocation not in ALLOCATIONS:
            raise EdgefoldError(f"unknown allocation {self.allocation!r}; choose from: {', '.join(ALLOCATIONS)}")
        if self.size_budget is not None and (not isinstance(self.size_budget, int) or self.size_budget <= 0):
            raise EdgefoldError(f"--size-budget must be a positive number of bytes (got {self.size_budget!r})")
        if self.allocation == "sensitivity" and (self.uses_frequency or isinstance(self.build_method(), GroupMethod)):
            raise EdgefoldError("ranks allocated by sensitivity work per module: not with frequency-aware "
                                "embeddings (--no-frequency) nor with a cross-layer method")

    def build_method(self) -> Method | None:
        return get_method(self.method, self.method_options)

    @property
    def uses_frequency(self) -> bool:
        return FREQUENCY_DEFAULT[self.method] if self.frequency is None else self.frequency

    @property
    def needs_calibration(self) -> bool:
        """Frequency weighting needs token counts; the autoencoder selects its checkpoint on validation text;
        data-aware methods need statistics of the model's activations on calibration text."""
        method = self.build_method()
        return (self.uses_frequency or self.method == "ae" or bool(method and method.needs)
                or self.allocation == "sensitivity")


@dataclass
class ModuleRecord:
    """One targeted module: its weight shape (rows x cols, rows = tokens or output units) and what it became.

    Parameter counts are of the weight matrix and what replaces it (factors, decoder bias, kept norms, exact
    rows and their lookup); the Linear biases are kept as they are and not counted.
    """

    name: str
    kinds: tuple[str, ...]
    shape: tuple[int, int]
    rank: int | None
    params_before: int
    params_after: int
    status: str  # "factorised", "storage" (decoded at load: bytes only), or "dense" with the reason in note
    note: str = ""
    fit: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        """JSON-ready: the same values the manifest file holds (lists, not tuples)."""
        record = asdict(self)
        record.update(kinds=list(self.kinds), shape=list(self.shape))
        return record


def compress_(model: nn.Module, config: CompressionConfig, tokenizer: PreTrainedTokenizerBase | None = None,
              calibration: Calibration | None = None, progress: bool = True) -> list[ModuleRecord]:
    """Replace, in place, every module of ``model`` that ``config`` targets by its low-rank form.

    ``tokenizer`` is needed when the config uses calibration text (``config.needs_calibration``), which is
    ``calibration`` or, when None, loaded from ``config.calibration``. Returns one record per targeted module,
    including those left dense because a factorisation would save nothing.
    """
    spec = spec_for(model.config.model_type)
    method = config.build_method()
    if method is None:  # --method none
        return []
    selected = _select(model, spec, config.targets)
    if not selected:
        raise EdgefoldError(f"no module of this {spec.name} model matches the targets {sorted(config.targets)}")
    output_embeddings = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    for _, module, kinds in selected:
        method.check_module(kinds[0], tied=output_embeddings is not None
                            and getattr(output_embeddings, "weight", None) is getattr(module, "weight", False))
    if isinstance(method, GroupMethod):
        return _compress_groups(model, spec, config, method, selected, output_embeddings, progress)
    fitting = _Fitting(model, config, method, tokenizer, calibration, progress)
    fitting.collect_statistics(selected, spec)
    if config.allocation == "sensitivity":
        fitting.allocate_ranks(selected, spec)
    records = []
    for name, module, kinds in tqdm(selected, desc=f"{method.name} fit", unit="module", disable=not progress):
        records.append(fitting.compress_module(name, module, kinds, _dense_weight(module, spec, kinds)))
        if kinds == (EMBEDDINGS,) and records[-1].status == "factorised":
            _retie_head(model, module, model.get_submodule(name), output_embeddings)
    return records


class _Fitting:
    """Fits one module at a time: the method, calibration counts and validation scoring it needs."""

    def __init__(self, model, config: CompressionConfig, method: Method, tokenizer, calibration, progress: bool):
        self.model, self.config, self.method, self.progress = model, config, method, progress
        self.calibration = self.scorer = None
        if config.needs_calibration:
            if tokenizer is None:
                raise EdgefoldError(f"method {config.method} uses calibration text: give compress_ a tokenizer")
            self.calibration = calibration or Calibration.load(config.calibration)
            self.tokenizer = tokenizer
            self.scorer = ValidationScorer(model, self.calibration.validation_texts, tokenizer)
        self.statistics: dict[str, dict[str, torch.Tensor]] = {}
        self.allocated: dict[str, int | None] | None = None
        self.sensitivities: dict[str, Sensitivity] = {}

    def collect_statistics(self, selected: list[tuple[str, nn.Module, tuple]], spec: ArchitectureSpec) -> None:
        """What the method needs of the Linears' activations, on the original model (before any swap) and the
        calibration fit split only."""
        linears = {name: (module, spec.transposed) for name, module, kinds in selected if kinds != (EMBEDDINGS,)}
        if self.method.needs and linears:
            self.statistics = collect_statistics(self.model, linears, self.method.needs, self.calibration.fit_texts,
                                                 self.tokenizer, self.config.seed, self.progress)

    def allocate_ranks(self, selected: list[tuple[str, nn.Module, tuple]], spec: ArchitectureSpec) -> None:
        """Measure each module's fidelity loss at a few ranks, then share the whole budget greedily."""
        # Iterative methods would train once per candidate rank: truncated SVD measures for them.
        proxy = TruncatedSVD() if self.method.iterative else self.method
        scorer = ValidationScorer(self.model, self.calibration.validation_texts[:SENSITIVITY_TEXTS], self.tokenizer)
        for name, module, kinds in tqdm(selected, desc="sensitivity", unit="module", disable=not self.progress):
            weight = _dense_weight(module, spec, kinds)
            context = FitContext(seed=self.config.seed, kind=kinds[0], **self.statistics.get(name, {}))
            score = scorer.for_module(name, kinds[0], module)
            self.sensitivities[name] = measure(name, *weight.shape, self.config.rank_multiple,
                                               lambda rank: 1.0 - score(proxy.fit(weight, rank, context)))
        self.allocated = allocate(list(self.sensitivities.values()), self._budget(selected))

    def _budget(self, selected: list[tuple[str, nn.Module, tuple]]) -> float:
        targeted = sum(s.dense_params for s in self.sensitivities.values())
        if self.config.size_budget is None:
            return targeted / self.config.ratio
        untargeted = sum(p.numel() for p in self.model.parameters()) - targeted
        return self.config.size_budget / FP32_BYTES - untargeted

    def compress_module(self, name: str, module: nn.Module, kinds: tuple[str, ...],
                        weight: torch.Tensor) -> ModuleRecord:
        rows, cols = weight.shape
        ratio = self.config.ratio
        record = ModuleRecord(name, kinds, (rows, cols), None, rows * cols, rows * cols, "dense")
        record.fit["budget_params"] = int(rows * cols / ratio)
        multiple = self.config.rank_multiple
        svd_rank = plan_rank(rows, cols, ratio, multiple=multiple)
        record.fit["svd_params_at_same_ratio"] = svd_rank * (rows + cols) if svd_rank else None
        context = FitContext(seed=self.config.seed, progress=self.progress, kind=kinds[0],
                             score=self.scorer.for_module(name, kinds[0], module) if self.scorer else None,
                             **self.statistics.pop(name, {}))
        torch.manual_seed(self.config.seed)
        if kinds == (EMBEDDINGS,) and self.config.uses_frequency:
            counts = self.calibration.token_counts(self.tokenizer, rows)
            factors = fit_frequency_aware(weight, ratio, self.method, counts, context, multiple)
        else:
            rank = self._rank(name, rows, cols, kinds[0], record)
            factors = None if rank is None else self.method.fit(weight, rank, context)
        if factors is None:
            record.note = record.note or f"a factorisation would save nothing at ratio {ratio:g}"
            return record
        replacement = low_rank_module(kinds[0], factors, module)
        self.model.set_submodule(name, replacement)
        if kinds != (EMBEDDINGS,):
            factors = factors.folded()  # as the Linear stores them
        record.rank, record.params_after, record.status = replacement.rank, factors.num_params, "factorised"
        record.fit.update(context.details)
        return record


    def _rank(self, name: str, rows: int, cols: int, kind: str, record: ModuleRecord) -> int | None:
        """The allocated rank where the budget is global, else the largest within the module's own 1/R."""
        if self.allocated is None:
            extra = self.method.extra_params(rows, cols, kind)
            return plan_rank(rows, cols, self.config.ratio, extra, self.config.rank_multiple)
        sensitivity = self.sensitivities[name]
        record.fit["sensitivity"] = {"ranks": sensitivity.ranks, "fidelity_lost": sensitivity.losses}
        if self.allocated[name] is None:
            record.note = "kept dense by the global allocation"
        return self.allocated[name]


def _compress_groups(model: nn.Module, spec: ArchitectureSpec, config: CompressionConfig, method: GroupMethod,
                     selected: list, output_embeddings, progress: bool) -> list[ModuleRecord]:
    """The grouped branch: modules of one kind (and shape) in all layers are fitted together, the group keeping
    at most 1/R of its parameters with everything stored counted (shared tensors once)."""
    if config.frequency:
        raise EdgefoldError(f"method {method.name} fits groups of Linear weights and uses no token counts")
    groups: dict[tuple, list] = {}
    for name, module, kinds in selected:
        weight = _dense_weight(module, spec, kinds)
        groups.setdefault((kinds, tuple(weight.shape)), []).append((name, module, weight))
    records = {}
    for (kinds, (rows, cols)), members in tqdm(groups.items(), desc=f"{method.name} fit", unit="group",
                                               disable=not progress):
        context = FitContext(seed=config.seed, progress=progress, kind=kinds[0])
        fitted = method.fit_group([weight for _, _, weight in members], config.ratio, context)
        group = {"group": "+".join(kinds), "group_members": len(members), "group_params_before":
                 len(members) * rows * cols, "group_params_after": sum(fitted.params) if fitted else None}
        for i, (name, module, _) in enumerate(members):
            record = ModuleRecord(name, kinds, (rows, cols), None, rows * cols, rows * cols, "dense",
                                  fit={"budget_params": int(rows * cols / config.ratio), **group})
            records[name] = record
            if fitted is None:
                record.note = f"a {method.name} fit would save nothing at ratio {config.ratio:g}"
                continue
            replacement = low_rank_module(kinds[0], fitted.forms[i], module)
            model.set_submodule(name, replacement)
            record.status, record.params_after = method.compression, fitted.params[i]
            record.rank = getattr(replacement, "rank", None)  # a factorised module's; decoded rows have none
            record.fit.update(context.details)
            if kinds == (EMBEDDINGS,):
                _retie_head(model, module, replacement, output_embeddings)
    return [records[name] for name, _, _ in selected]


def _select(model: nn.Module, spec: ArchitectureSpec, targets: frozenset[str]) -> list[tuple[str, nn.Module, tuple]]:
    selected = []
    for name, module in model.named_modules():
        kinds = spec.kinds_of(name)
        if not kinds or not set(kinds) & targets:
            continue
        if not set(kinds) <= targets:
            raise EdgefoldError(
                f"{spec.name} stores {', '.join(kinds)} in one matrix ({name}): target all of them or none"
            )
        selected.append((name, module, kinds))
    return selected


def _dense_weight(module: nn.Module, spec: ArchitectureSpec, kinds: tuple[str, ...]) -> torch.Tensor:
    weight = module.weight.detach().float()
    # GPT-2's Conv1D stores (in x out); every method sees rows = output units (or tokens).
    return weight.t().contiguous() if spec.transposed and kinds != (EMBEDDINGS,) else weight


def _retie_head(model: nn.Module, old_embedding: nn.Module, new_embedding: LowRankEmbedding, head) -> None:
    """A head that shared the embedding's weight (GPT-2's lm_head, BERT's MLM decoder) shares its factors."""
    if head is None or getattr(head, "weight", None) is not old_embedding.weight:
        return
    head_name = next(name for name, module in model.named_modules() if module is head)
    model.set_submodule(head_name, TiedLowRankHead(new_embedding, getattr(head, "bias", None)))
