"""Attention-head pruning (``--method prune-heads``): each layer's attention keeps its most useful heads.

A head is rows of the query, key and value projections and the columns of the output projection that read its
output; with grouped-query attention a unit is one key/value head with the query heads that share it. Removing
units leaves four narrower dense matrices (and a smaller KV cache for a causal LM). Which units stay, and how the
output projection is re-solved for the ones that go (``W_o C[:, S] C[S, S]^-1``), is ``structured.units``'; where
a head lives in each architecture is ``nn.heads``'.

Causal LMs are exported with a KV cache whose shape optimum takes from config.json, one shape for all layers:
Llama-family layers therefore all keep the same number of units. A GPT-2 config cannot describe fewer heads of
the same width, so a GPT-2 causal LM's cache is exported with each layer's kept heads instead (``onnx.export``).
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from edgefold.exporter.structured.base import Block, StructuredMethod
from edgefold.exporter.nn import heads
from edgefold.exporter.source.architectures import ArchitectureSpec, spec_for


class PruneHeads(StructuredMethod):
    name = "prune-heads"
    block_kinds = ("q", "k", "v", "attention-output")
    reader_kind = "attention-output"
    unit_name = "head"

    def same_units_every_layer(self, model: nn.Module) -> bool:
        """Whether every layer must keep the same number of units: a Llama-family config holds one key/value
        head count, which optimum reads to shape every layer's cache."""
        return spec_for(model.config.model_type).name == "llama"

    def unit_columns(self, model: nn.Module, spec: ArchitectureSpec, block: Block) -> list[torch.Tensor]:
        return heads.head_layout(heads.attention_of(model, spec, block.reader), spec).unit_columns()

    def shrink(self, model: nn.Module, spec: ArchitectureSpec, block: Block, kept: list[int],
               reader_weight: torch.Tensor, reader_bias: torch.Tensor | None) -> None:
        heads.remove_heads(model, spec, block.reader, kept)
        reader = model.get_submodule(block.reader)
        weight = reader_weight.t() if isinstance(reader, Conv1D) else reader_weight  # Conv1D stores (in x out)
        if weight.shape != reader.weight.shape:
            raise ValueError(f"{block.reader} takes a {tuple(reader.weight.shape)} weight, not {tuple(weight.shape)}")
        dtype = reader.weight.dtype
        reader.weight = nn.Parameter(weight.to(dtype).contiguous())
        reader.bias = None if reader_bias is None else nn.Parameter(reader_bias.to(dtype).contiguous())
