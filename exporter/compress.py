"""``compress_(model, config)``: walk a transformers model and swap targeted modules for low-rank ones."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from edgefold.runtime import EdgefoldError

from .architectures import ALL_KINDS, EMBEDDINGS, ArchitectureSpec, parse_targets, spec_for
from .layers import LowRankEmbedding, LowRankLinear, TiedLowRankHead
from .methods import Method, get_method
from .plan import plan_rank


@dataclass(frozen=True)
class CompressionConfig:
    """What to compress and how hard. ``ratio`` R: the targeted weights keep 1/R of their parameters."""

    method: str = "svd"
    targets: frozenset[str] = frozenset(ALL_KINDS)
    ratio: float = 2.0
    seed: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.targets, str):
            object.__setattr__(self, "targets", parse_targets(self.targets))
        unknown = set(self.targets) - set(ALL_KINDS)
        if unknown:
            raise EdgefoldError(f"unknown target(s) {sorted(unknown)}; choose from: {', '.join(ALL_KINDS)}")
        if not self.targets:
            raise EdgefoldError("no targets given")
        if not isinstance(self.ratio, (int, float)) or not self.ratio > 1:
            raise EdgefoldError(f"--ratio must be a number greater than 1 (got {self.ratio!r})")
        get_method(self.method)  # refuses an unknown name now, before any work


@dataclass
class ModuleRecord:
    """One targeted module: its weight shape (rows x cols, rows = tokens or output units) and what it became.

    Parameter counts are of the weight matrix and what replaces it; biases are kept as they are and not counted.
    """

    name: str
    kinds: tuple[str, ...]
    shape: tuple[int, int]
    rank: int | None
    params_before: int
    params_after: int
    status: str  # "factorised", or "dense" with the reason in note
    note: str = ""

    def as_dict(self) -> dict:
        """JSON-ready: the same values the manifest file holds (lists, not tuples)."""
        record = asdict(self)
        record.update(kinds=list(self.kinds), shape=list(self.shape))
        return record


def compress_(model: nn.Module, config: CompressionConfig, progress: bool = True) -> list[ModuleRecord]:
    """Replace, in place, every module of ``model`` that ``config`` targets by its low-rank form.

    Returns one record per targeted module, including those left dense because a factorisation would
    save nothing at this ratio.
    """
    spec = spec_for(model.config.model_type)
    method = get_method(config.method)
    selected = _select(model, spec, config.targets)
    if not selected:
        raise EdgefoldError(f"no module of this {spec.name} model matches the targets {sorted(config.targets)}")
    output_embeddings = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    records = []
    for name, module, kinds in tqdm(selected, desc=f"{method.name} fit", unit="module", disable=not progress):
        torch.manual_seed(config.seed)
        records.append(_compress_module(model, name, module, kinds, spec, method, config.ratio))
        if kinds == (EMBEDDINGS,) and records[-1].status == "factorised":
            _retie_head(model, module, model.get_submodule(name), output_embeddings)
    return records


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


def _compress_module(model, name, module, kinds, spec, method: Method, ratio: float) -> ModuleRecord:
    weight = _dense_weight(module, spec, kinds)
    rows, cols = weight.shape
    rank = plan_rank(rows, cols, ratio, method.extra_params(rows, cols))
    record = ModuleRecord(name, kinds, (rows, cols), rank, rows * cols, rows * cols, "dense")
    if rank is None:
        record.note = f"rank would save nothing at ratio {ratio:g}"
        return record
    factors = method.fit(weight, rank)
    if kinds == (EMBEDDINGS,):
        replacement = LowRankEmbedding(factors, getattr(module, "padding_idx", None))
    else:
        replacement = LowRankLinear(factors, module.bias)
    model.set_submodule(name, replacement)
    record.params_after = factors.num_params
    record.status = "factorised"
    return record


def _retie_head(model: nn.Module, old_embedding: nn.Module, new_embedding: LowRankEmbedding, head) -> None:
    """A head that shared the embedding's weight (GPT-2's lm_head, BERT's MLM decoder) shares its factors."""
    if head is None or getattr(head, "weight", None) is not old_embedding.weight:
        return
    head_name = next(name for name, module in model.named_modules() if module is head)
    model.set_submodule(head_name, TiedLowRankHead(new_embedding, getattr(head, "bias", None)))
