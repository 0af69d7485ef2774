"""FFN neuron pruning (``--method prune-ffn``): each layer's FFN keeps its most useful neurons, narrower and dense.

A neuron j of an FFN is row j of every FFN-in matrix (both gate and up in a gated FFN: they are multiplied
element-wise, so they lose the same rows) and column j of the FFN-out matrix that reads it. Removing it leaves
two (or three) narrower dense matrices: no factor overhead, fewer bytes and FLOPs in exact proportion, int8 on
top as usual. Which neurons stay, and how FFN-out is re-solved for the ones that go, is ``structured.units``'.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from edgefold.exporter.structured.base import Block, StructuredMethod
from edgefold.exporter.nn.narrow import narrowed
from edgefold.exporter.source.architectures import ArchitectureSpec


class PruneFFN(StructuredMethod):
    name = "prune-ffn"
    block_kinds = ("ffn-in", "ffn-out")
    reader_kind = "ffn-out"
    unit_name = "neuron"

    def unit_columns(self, model: nn.Module, spec: ArchitectureSpec, block: Block) -> list[torch.Tensor]:
        width = _input_width(model.get_submodule(block.reader))
        return [torch.tensor([j]) for j in range(width)]

    def shrink(self, model: nn.Module, spec: ArchitectureSpec, block: Block, kept: list[int],
               reader_weight: torch.Tensor, reader_bias: torch.Tensor | None) -> None:
        index = torch.tensor(kept, dtype=torch.long)
        for name in block.writers:
            model.set_submodule(name, narrowed(model.get_submodule(name), index, outputs=True))
        reader = narrowed(model.get_submodule(block.reader), index, outputs=False)
        weight = reader_weight.t() if isinstance(reader, Conv1D) else reader_weight  # Conv1D stores (in x out)
        reader.weight = nn.Parameter(weight.to(reader.weight.dtype).contiguous())
        reader.bias = None if reader_bias is None else nn.Parameter(reader_bias.to(reader.weight.dtype).contiguous())
        model.set_submodule(block.reader, reader)


def _input_width(module: nn.Module) -> int:
    return module.weight.shape[0] if isinstance(module, Conv1D) else module.weight.shape[1]
