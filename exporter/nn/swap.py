"""The one walk over ``named_modules``: which modules a config targets, their weights as methods see them, and
the swap of a module for its compressed form (tied heads follow their embedding)."""

from __future__ import annotations

import torch
from torch import nn

from edgefold.exporter.methods import DecodedRows, LowRankFactors
from edgefold.exporter.nn.layers import (
    LowRankEmbedding,
    TiedLowRankHead,
    low_rank_module,
)
from edgefold.exporter.source.architectures import ALL_KINDS, EMBEDDINGS, OUTPUT_HEAD, ArchitectureSpec
from edgefold.runtime import EdgefoldError


def select_modules(model: nn.Module, spec: ArchitectureSpec,
                   targets: frozenset[str]) -> list[tuple[str, nn.Module, tuple]]:
    """(name, module, kinds) of every module ``targets`` covers; a fused matrix must be targeted whole."""
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


def plannable_modules(model: nn.Module, spec: ArchitectureSpec) -> list[tuple[str, nn.Module, tuple]]:
    """What a plan may name: every compressible module, and an output head with a weight of its own (a head tied
    to the embeddings follows them)."""
    selected = select_modules(model, spec, frozenset(ALL_KINDS))
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    tied = any(tied_head(model, module) for _, module, kinds in selected if kinds == (EMBEDDINGS,))
    if isinstance(head, nn.Linear) and not tied:
        selected.append((next(name for name, m in model.named_modules() if m is head), head, (OUTPUT_HEAD,)))
    return selected


def dense_weight(module: nn.Module, spec: ArchitectureSpec, kinds: tuple[str, ...]) -> torch.Tensor:
    weight = module.weight.detach().float()
    # GPT-2's Conv1D stores (in x out); every method sees rows = output units (or tokens).
    return weight.t().contiguous() if transposed(spec, kinds) else weight


def transposed(spec: ArchitectureSpec, kinds: tuple[str, ...]) -> bool:
    """Whether the module stores its weight (in x out): the architecture's Linears do (GPT-2's Conv1D), its
    embeddings and a head of its own (an nn.Linear) never."""
    return spec.transposed and kinds not in ((EMBEDDINGS,), (OUTPUT_HEAD,))


def tied_head(model: nn.Module, embedding: nn.Module) -> tuple[str, nn.Module] | None:
    """(name, module) of the output head that shares ``embedding``'s weight (GPT-2's lm_head, BERT's MLM
    decoder), or None."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is None or getattr(head, "weight", None) is not getattr(embedding, "weight", False):
        return None
    return next((name, module) for name, module in model.named_modules() if module is head)


def retie_head(model: nn.Module, old_embedding: nn.Module, new_embedding: LowRankEmbedding) -> None:
    """A head that shared the old embedding's weight shares the new one's factors."""
    found = tied_head(model, old_embedding)
    if found:
        model.set_submodule(found[0], TiedLowRankHead(new_embedding, getattr(found[1], "bias", None)))


def swap(model: nn.Module, name: str, kind: str, form: LowRankFactors | DecodedRows) -> nn.Module:
    """Replace the module at ``name`` (of ``kind``) by the layer that computes with ``form``; returns it."""
    replacement = low_rank_module(kind, form, model.get_submodule(name))
    model.set_submodule(name, replacement)
    return replacement
