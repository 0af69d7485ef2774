"""Attention heads, per architecture: which input columns of the attention output projection each head owns,
and how a layer loses heads.

Every supported architecture merges its heads head-major before the output projection (head h owns columns
``h * head_dim .. (h + 1) * head_dim``), and the query projection lays its rows out the same way. Under
grouped-query attention (Llama, Mistral, Qwen2 with fewer key/value heads than query heads) query head h reads
key/value head ``h // group``; one removable unit is then a key/value head with the ``group`` query heads that
share it, so the group ratio, which the forward pass takes from the module, stays what it was.

A layer loses heads by slicing: the query, key and value projections keep the kept heads' rows, the output
projection their columns, and the attention module's head counts follow (transformers' own ``prune_heads`` did
the same for BERT-likes, DistilBERT and GPT-2 until transformers 5 removed it; every forward here infers the head
count from the tensors or reads the counts set here). ``config.pruned_heads`` records the removed query heads
(original numbering), as transformers' convention had it.

A Llama-family config can hold only what an exporter reads to shape the KV cache, one shape for every layer:
``num_key_value_heads`` takes the kept count, and ``num_attention_heads`` stays the original, because
``ORTModelForCausalLM`` sizes a head as ``hidden_size // num_attention_heads``; transformers 4 cannot prune a
Llama, so it refuses to build one from this config instead of building a wrong one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from torch import nn
from transformers import PretrainedConfig

from edgefold.exporter.nn.narrow import narrowed
from edgefold.exporter.source.architectures import ArchitectureSpec

#: How far above the output projection each family's attention module sits (BERT nests it in ``output``).
_ATTENTION_DEPTH = {"bert": 2, "distilbert": 1, "gpt2": 1, "llama": 1}


@dataclass(frozen=True)
class HeadLayout:
    """One layer's attention as removable units: ``units`` of ``group`` query heads, each ``head_dim`` wide."""

    units: int
    group: int
    head_dim: int

    def unit_columns(self) -> list[torch.Tensor]:
        """Per unit, the output projection's input columns it owns."""
        width = self.group * self.head_dim
        return [torch.arange(unit * width, (unit + 1) * width) for unit in range(self.units)]


def attention_of(model: nn.Module, spec: ArchitectureSpec, reader: str) -> nn.Module:
    """The attention module whose output projection is the module named ``reader``."""
    return model.get_submodule(reader.rsplit(".", _ATTENTION_DEPTH[spec.name])[0])


def head_layout(attention: nn.Module, spec: ArchitectureSpec) -> HeadLayout:
    """The heads ``attention`` has now (fewer than the config says once some were removed)."""
    if spec.name == "bert":
        return HeadLayout(attention.self.num_attention_heads, 1, attention.self.attention_head_size)
    if spec.name == "distilbert":
        return HeadLayout(attention.n_heads, 1, attention.attention_head_size)
    if spec.name == "gpt2":
        return HeadLayout(attention.num_heads, 1, attention.head_dim)
    return HeadLayout(attention.k_proj.out_features // attention.head_dim, attention.num_key_value_groups,
                      attention.head_dim)


def remove_heads(model: nn.Module, spec: ArchitectureSpec, reader: str, kept: list[int]) -> None:
    """Keep only the units ``kept`` (current numbering, ascending) of the attention that ``reader`` projects:
    its query, key, value and output projections are replaced by narrower copies and the config records the
    removed query heads (original numbering) in ``pruned_heads``."""
    attention = attention_of(model, spec, reader)
    layout = head_layout(attention, spec)
    if not kept or len(set(kept)) != len(kept) or not set(kept) <= set(range(layout.units)):
        raise ValueError(f"cannot keep units {kept} of the {layout.units} of {reader}")
    layer = layer_index(reader)
    removed = [h for unit in range(layout.units) if unit not in kept
               for h in range(unit * layout.group, (unit + 1) * layout.group)]
    removed = _original_heads(model.config, layer, layout.units * layout.group, removed)
    if spec.name == "llama":
        _check_same_count(model.config, layer, len(kept))
        model.config.num_key_value_heads = len(kept)
    _SLICERS[spec.name](attention, layout, kept)
    recorded = set(pruned_heads(model.config).get(layer, ()))
    model.config.pruned_heads[layer] = sorted(recorded | set(removed))


def pruned_heads(config: PretrainedConfig) -> dict[int, list[int]]:
    """``config.pruned_heads``, created empty where the config has none (transformers 5 dropped the field)."""
    if getattr(config, "pruned_heads", None) is None:
        config.pruned_heads = {}
    return config.pruned_heads


def layer_index(module_name: str) -> int:
    """The index of the layer a module belongs to, as ``config.pruned_heads`` keys it."""
    indices = re.findall(r"\.(\d+)\.", module_name)
    if len(indices) != 1:
        raise ValueError(f"cannot tell which layer {module_name} belongs to")
    return int(indices[0])


def _original_heads(config: PretrainedConfig, layer: int, count: int, heads: list[int]) -> list[int]:
    """``heads`` of a layer with ``count`` heads left, numbered as before any removal (as transformers'
    ``prune_heads`` and ``config.pruned_heads`` number them)."""
    gone = set(pruned_heads(config).get(layer, ()))
    remaining = sorted(set(range(count + len(gone))) - gone)
    return [remaining[h] for h in heads]


def _check_same_count(config: PretrainedConfig, layer: int, count: int) -> None:
    """The config holds one key/value head count for all layers: a layer may not keep another number."""
    if any(other != layer for other in pruned_heads(config)) and config.num_key_value_heads != count:
        raise ValueError(f"layer {layer} would keep {count} key/value heads where the layers pruned before keep "
                         f"{config.num_key_value_heads}: every layer must keep the same number")


def _slice_grouped(attention: nn.Module, layout: HeadLayout, kept: list[int]) -> None:
    """Llama family: q and o keep the kept units' query heads, k and v their key/value heads (the forward infers
    the counts from the tensors)."""
    columns = _columns(layout, kept)
    key_rows = torch.cat([torch.arange(unit * layout.head_dim, (unit + 1) * layout.head_dim) for unit in kept])
    attention.q_proj = narrowed(attention.q_proj, columns, outputs=True)
    attention.k_proj = narrowed(attention.k_proj, key_rows, outputs=True)
    attention.v_proj = narrowed(attention.v_proj, key_rows, outputs=True)
    attention.o_proj = narrowed(attention.o_proj, columns, outputs=False)


def _slice_bert(attention: nn.Module, layout: HeadLayout, kept: list[int]) -> None:
    columns = _columns(layout, kept)
    for name in ("query", "key", "value"):
        setattr(attention.self, name, narrowed(getattr(attention.self, name), columns, outputs=True))
    attention.output.dense = narrowed(attention.output.dense, columns, outputs=False)
    attention.self.num_attention_heads = len(kept)
    attention.self.all_head_size = len(kept) * layout.head_dim


def _slice_distilbert(attention: nn.Module, layout: HeadLayout, kept: list[int]) -> None:
    columns = _columns(layout, kept)
    for name in ("q_lin", "k_lin", "v_lin"):
        setattr(attention, name, narrowed(getattr(attention, name), columns, outputs=True))
    attention.out_lin = narrowed(attention.out_lin, columns, outputs=False)
    attention.n_heads = len(kept)
    attention.dim = len(kept) * layout.head_dim  # transformers 4 merges the heads back to ``dim``


def _slice_gpt2(attention: nn.Module, layout: HeadLayout, kept: list[int]) -> None:
    """GPT-2 packs q, k and v side by side in one Conv1D, each ``split_size`` wide, and splits them by it."""
    columns = _columns(layout, kept)
    width = attention.split_size
    attention.c_attn = narrowed(attention.c_attn, torch.cat([columns, columns + width, columns + 2 * width]),
                                outputs=True)
    attention.c_proj = narrowed(attention.c_proj, columns, outputs=False)
    attention.num_heads = len(kept)
    attention.split_size = len(kept) * layout.head_dim


def _columns(layout: HeadLayout, kept: list[int]) -> torch.Tensor:
    return torch.cat([layout.unit_columns()[unit] for unit in kept])


_SLICERS = {"bert": _slice_bert, "distilbert": _slice_distilbert, "gpt2": _slice_gpt2, "llama": _slice_grouped}
