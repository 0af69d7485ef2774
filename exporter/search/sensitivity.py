"""Each module's choices, and the fidelity each loses when it is the only change: the search's predictions.

Measured in torch on the selection split: every module at every precision (simulated, see ``simulate``; a dense
Linear's 4-bit weights fitted by GPTQ on its input moments where the search's algorithm is GPTQ), kept or
factorised (the word embeddings frequency-aware at a few ratios; Linears, in the full search, whitened SVD at a
few ranks), one module at a time against the original model. Factors are fitted once here and reused by every
candidate that chooses them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from edgefold.exporter.calibration.corpus import Calibration
from edgefold.exporter.calibration.statistics import collect_statistics
from edgefold.exporter.checks.verify import ValidationScorer
from edgefold.exporter.distributed import Executor
from edgefold.exporter.graph.quantize import PRECISIONS
from edgefold.exporter.methods import FitContext, LowRankFactors, TruncatedSVD
from edgefold.exporter.methods.base import INPUT_MOMENTS
from edgefold.exporter.methods.frequency import fit_frequency_aware
from edgefold.exporter.methods.whitened import WhitenedSVD
from edgefold.exporter.nn.layers import low_rank_module
from edgefold.exporter.nn.swap import dense_weight, plannable_modules, transposed
from edgefold.exporter.planning.plan import PLAN_RANK_MULTIPLE, ModuleChoice
from edgefold.exporter.planning.sensitivity import candidate_ranks
from edgefold.exporter.search.latency import OpShape
from edgefold.exporter.search.simulate import fake_quantized
from edgefold.exporter.search.space import Option
from edgefold.exporter.search.splits import SENSITIVITY_DOMAIN_ITEMS, SENSITIVITY_ITEMS, Splits
from edgefold.exporter.source.architectures import EMBEDDINGS, OUTPUT_HEAD, spec_for

RANK_MULTIPLE = PLAN_RANK_MULTIPLE
#: Fit texts the whitening statistics are collected on: one forward pass each.
STATISTICS_ITEMS = 256
#: Words of each second-domain text the sensitivities are measured on.
DOMAIN_WORDS = 24
#: Word embedding ratios tried (frequency-aware: exact rows for frequent tokens, a low-rank rest).
EMBEDDING_RATIOS = (1.5, 2.0, 3.0)


@dataclass
class Space:
    """Per module (in model order), its options, dense fp32 first; and the factors of the factorised ones."""

    options: dict[str, list[Option]] = field(default_factory=dict)
    fitted: dict[tuple[str, str], LowRankFactors] = field(default_factory=dict)

    def factors_for(self, plan_modules: dict[str, ModuleChoice]) -> dict[str, LowRankFactors]:
        return {name: self.fitted[(name, c.structure)] for name, c in plan_modules.items() if c.factorised}


@dataclass(frozen=True)
class ModuleInputs:
    """What every module's measurement shares (sent to each worker once): the original model inside its scorer,
    the fit text and its statistics, and the threads its sums run on (the same wherever it runs: a float sum's
    order, and so its last bits, depends on how many threads split it)."""

    scorer: ValidationScorer
    tokenizer: PreTrainedTokenizerBase
    calibration: Calibration
    statistics: dict[str, dict]
    factorise_linears: bool
    seed: int
    threads: int
    algorithm: str = "rtn"


def measure_space(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, splits: Splits, *,
                  factorise_linears: bool, seed: int = 0, progress: bool = True, executor: Executor | None = None,
                  algorithm: str = "rtn", also_on: list[str] | tuple[str, ...] = ()) -> Space:
    """Every module's options with their measured losses (see the module docstring): inline, or one task per
    module on ``executor`` (the same numbers either way). ``algorithm``: how low-bit weights are chosen (rtn,
    gptq), as the candidates' graphs will choose them. ``also_on``: texts of a second domain the losses are
    measured on too (the first :data:`SENSITIVITY_DOMAIN_ITEMS`), so that a choice fitted to the user's text
    (token frequencies) is not predicted to be cheaper in loss than it is elsewhere."""
    spec = spec_for(model.config.model_type)
    selected = [(name, kinds) for name, _, kinds in plannable_modules(model, spec)]
    # a domain's first words carry its vocabulary; whole docstrings would cost three times the user's texts
    domain = [" ".join(text.split()[:DOMAIN_WORDS]) for text in list(also_on)[:SENSITIVITY_DOMAIN_ITEMS]]
    texts = splits.selection.texts[:SENSITIVITY_ITEMS] + domain
    scorer = ValidationScorer(model, texts, tokenizer)
    calibration = splits.calibration()
    statistics = {}
    if factorise_linears or algorithm == "gptq":
        linears = {name: (model.get_submodule(name), spec.transposed) for name, kinds in selected
                   if kinds != (EMBEDDINGS,) and (algorithm == "gptq" or kinds != (OUTPUT_HEAD,))}
        statistics = collect_statistics(model, linears, frozenset({INPUT_MOMENTS}),
                                        calibration.fit_texts[:STATISTICS_ITEMS], tokenizer, seed, progress)
    inputs = ModuleInputs(scorer, tokenizer, calibration, statistics, factorise_linears, seed,
                          torch.get_num_threads(), algorithm)
    if executor is None:
        measured = [measure_module(inputs, item)
                    for item in tqdm(selected, desc="sensitivity", unit="module", disable=not progress)]
    else:
        measured = executor.map(measure_module, selected, inputs, labels=[f"sensitivity of {n}" for n, _ in selected],
                                cpus=inputs.threads)
    space = Space()
    for (name, _), (options, fitted) in zip(selected, measured):
        space.options[name] = options
        space.fitted.update({(name, structure): factors for structure, factors in fitted.items()})
    return space


def measure_module(inputs: ModuleInputs, module: tuple[str, tuple[str, ...]]) -> tuple[list[Option], dict]:
    """One module's options (its fits at every precision, each scored alone), and its factors by structure."""
    torch.set_num_threads(inputs.threads)
    name, kinds = module
    model = inputs.scorer.model
    spec = spec_for(model.config.model_type)
    original = model.get_submodule(name)
    weight = dense_weight(original, spec, kinds)
    torch.manual_seed(inputs.seed)
    if kinds == (EMBEDDINGS,):
        counts = inputs.calibration.token_counts(inputs.tokenizer, weight.shape[0])
        context = FitContext(seed=inputs.seed, kind=EMBEDDINGS,
                             score=inputs.scorer.for_module(name, EMBEDDINGS, original))
        structures = _embedding_structures(weight, counts, context)
    elif inputs.factorise_linears and kinds != (OUTPUT_HEAD,):
        structures = _linear_structures(weight, kinds[0], inputs.statistics.get(name), inputs.seed)
    else:
        structures = []
    moments = inputs.statistics.get(name, {}).get(INPUT_MOMENTS) if inputs.algorithm == "gptq" else None
    options: list[Option] = []
    for choice, factors in [(ModuleChoice(), None), *structures]:
        options += _options(inputs.scorer, name, kinds[0], original, choice, factors, transposed(spec, kinds),
                            tuple(weight.shape), moments if factors is None else None)
    return options, {choice.structure: factors for choice, factors in structures}


def dense_operators(model: PreTrainedModel) -> set[OpShape]:
    """The operators of every module as it is: what a latency table must cover before anything else."""
    spec = spec_for(model.config.model_type)
    return {op for _, module, kinds in plannable_modules(model, spec)
            for op in _operators(tuple(dense_weight(module, spec, kinds).shape), kinds[0], None)[0]}


#: Probes for a table measured on a board: factor ranks on this grid (the fit chooses the exact ones; times are
#: scaled from the nearest), and embedding factor tables of this many rows (a Gather's time does not grow with it).
PROBE_RANK_STEP, PROBE_TABLE_ROWS = 64, 4096


def probe_shapes(model: PreTrainedModel, factorise_linears: bool) -> list[OpShape]:
    """Every operator a search of ``model`` may cost: what a latency table measured elsewhere must cover."""
    spec = spec_for(model.config.model_type)
    shapes = set(dense_operators(model))
    for _, module, kinds in plannable_modules(model, spec):
        rows, cols = dense_weight(module, spec, kinds).shape
        if kinds == (EMBEDDINGS,):
            for rank in range(RANK_MULTIPLE, int(rows * cols / (rows + cols)), PROBE_RANK_STEP):
                shapes |= {OpShape("Gather", min(rows, PROBE_TABLE_ROWS), rank), OpShape("MatMul", rank, cols)}
        elif factorise_linears and kinds != (OUTPUT_HEAD,):
            for rank in candidate_ranks(rows, cols, RANK_MULTIPLE):
                shapes |= {OpShape("MatMul", cols, rank), OpShape("MatMul", rank, rows)}
    return sorted(shapes)


def _embedding_structures(weight: torch.Tensor, counts: torch.Tensor,
                          context: FitContext) -> list[tuple[ModuleChoice, LowRankFactors]]:
    structures = []
    for ratio in EMBEDDING_RATIOS:
        factors = fit_frequency_aware(weight, ratio, TruncatedSVD(), counts, context, RANK_MULTIPLE)
        if factors is not None:
            structures.append((ModuleChoice(ratio=ratio), factors))
    return structures


def _linear_structures(weight: torch.Tensor, kind: str, statistics: dict | None,
                       seed: int) -> list[tuple[ModuleChoice, LowRankFactors]]:
    rows, cols = weight.shape
    context = FitContext(seed=seed, kind=kind, **(statistics or {}))
    return [(ModuleChoice(rank=rank), WhitenedSVD().fit(weight, rank, context))
            for rank in candidate_ranks(rows, cols, RANK_MULTIPLE)]


def _options(scorer: ValidationScorer, name: str, kind: str, original: nn.Module, choice: ModuleChoice,
             factors: LowRankFactors | None, transposed: bool, shape: tuple[int, int],
             moments: torch.Tensor | None = None) -> list[Option]:
    """``choice``'s structure at every precision, each scored alone (4-bit by GPTQ on ``moments``, if given)."""
    module = original if factors is None else low_rank_module(kind, factors, original)
    ops, extra = _operators(shape, kind, factors)
    options = []
    for precision in PRECISIONS:
        at = ModuleChoice(choice.rank, choice.ratio, precision)
        if precision == "fp32" and factors is None:
            options.append(Option(at, ops, extra, 0.0))  # the original itself
            continue
        candidate = fake_quantized(module, precision, transposed, moments)
        loss = max(0.0, 1.0 - scorer.with_module(name, kind, original, candidate))
        options.append(Option(at, ops, extra, loss))
    return options


def _operators(shape: tuple[int, int], kind: str, factors: LowRankFactors | None) -> tuple[tuple[OpShape, ...], int]:
    """The operators carrying the weights, and the bytes of what is stored beside them unquantised."""
    rows, cols = shape
    if kind == EMBEDDINGS:
        if factors is None:
            return (OpShape("Gather", rows, cols),), 0
        ops = [OpShape("Gather", rows, factors.rank), OpShape("MatMul", factors.rank, cols)]
        if factors.exact_rows is not None:
            ops.append(OpShape("Gather", len(factors.exact_rows), cols))
            return tuple(ops), 4 * rows  # the int32 slot of every token
        return tuple(ops), 0
    if factors is None:
        return (OpShape("MatMul", cols, rows),), 0
    rank = factors.folded().rank
    return (OpShape("MatMul", cols, rank), OpShape("MatMul", rank, rows)), 0
