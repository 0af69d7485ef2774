"""A grouped method applied to the selected modules: those of one kind (and shape) in all layers fitted together,
the group keeping at most 1/R of its parameters with everything stored counted (shared tensors once)."""

from __future__ import annotations

import torch
from torch import nn
from tqdm.auto import tqdm

from edgefold.exporter.bias import correct_bias_
from edgefold.exporter.config import CompressionConfig
from edgefold.exporter.methods.base import FitContext, GroupMethod
from edgefold.exporter.nn.swap import dense_weight, retie_head, swap
from edgefold.exporter.planning.selection import Selected
from edgefold.exporter.records import ModuleRecord
from edgefold.exporter.source.architectures import EMBEDDINGS, ArchitectureSpec


def fit_groups(model: nn.Module, spec: ArchitectureSpec, config: CompressionConfig, method: GroupMethod,
               selected: Selected, means: dict[str, torch.Tensor], progress: bool) -> list[ModuleRecord]:
    """Fit and swap in every group; one record per selected module, in its order. ``means``: the input means of
    the Linears whose biases are corrected."""
    groups: dict[tuple, list] = {}
    for name, module, kinds in selected:
        weight = dense_weight(module, spec, kinds)
        groups.setdefault((kinds, tuple(weight.shape)), []).append((name, module, weight))
    records = {}
    for (kinds, shape), members in tqdm(groups.items(), desc=f"{method.name} fit", unit="group",
                                        disable=not progress):
        for record in _fit_group(model, config, method, kinds, shape, members, means, progress):
            records[record.name] = record
    return [records[name] for name, _, _ in selected]


def _fit_group(model: nn.Module, config: CompressionConfig, method: GroupMethod, kinds: tuple[str, ...],
               shape: tuple[int, int], members: list[tuple[str, nn.Module, torch.Tensor]],
               means: dict[str, torch.Tensor], progress: bool) -> list[ModuleRecord]:
    rows, cols = shape
    context = FitContext(seed=config.seed, progress=progress, kind=kinds[0], rank_multiple=config.rank_multiple)
    fitted = method.fit_group([weight for _, _, weight in members], config.ratio, context)
    group = {"group": "+".join(kinds), "group_members": len(members), "group_params_before":
             len(members) * rows * cols, "group_params_after": sum(fitted.params) if fitted else None}
    records = []
    for i, (name, module, weight) in enumerate(members):
        record = ModuleRecord.dense(name, kinds, shape, fit={"budget_params": int(rows * cols / config.ratio), **group})
        records.append(record)
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
    return records
