"""Narrower copies of a Linear or GPT-2 Conv1D: the rows or columns structured pruning keeps.

transformers 5 dropped the ``prune_*_layer`` helpers for Conv1D (and ``prune_heads`` altogether), so edgefold
narrows its modules itself, the same way on every transformers version.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D


def narrowed(module: nn.Module, index: torch.Tensor, outputs: bool) -> nn.Module:
    """A copy of ``module`` (Linear or Conv1D) keeping its outputs (or, with ``outputs=False``, its inputs) at
    ``index``. The bias follows the outputs."""
    if not isinstance(module, (nn.Linear, Conv1D)):
        raise TypeError(f"only Linear and Conv1D modules can be narrowed, not {type(module).__name__}")
    index = index.to(module.weight.device, torch.long)
    # nn.Linear stores (out x in); Conv1D (in x out)
    axis = (0 if outputs else 1) if isinstance(module, nn.Linear) else (1 if outputs else 0)
    weight = module.weight.detach().index_select(axis, index).clone()
    bias = None if module.bias is None else module.bias.detach().clone()
    if bias is not None and outputs:
        bias = bias[index]
    if isinstance(module, nn.Linear):
        copy = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device="meta")
    else:
        copy = Conv1D(weight.shape[1], weight.shape[0])
    copy.weight = nn.Parameter(weight.contiguous())
    if bias is not None:
        copy.bias = nn.Parameter(bias.contiguous())
    return copy
