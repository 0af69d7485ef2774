"""Bias correction: after a Linear's weight W is replaced by W', keep the mean of its output unchanged.

The layer's output on calibration tokens was ``W x + b``; compressed, it is ``W' x^ + b'`` where x^ is the input
the compressed model gives it (x itself unless the fit is sequential). Its mean error is
``W E[x] - W' E[x^] + b - b'``, which ``b' = b + W E[x] - W' E[x^]`` makes zero. The error that remains is
centred; for free, since the bias is stored anyway (one is added where the Linear had none).
"""

from __future__ import annotations

import torch
from torch import nn

from edgefold.exporter.nn.layers import DecodedLinear, LowRankLinear


def corrected_bias(weight: torch.Tensor, replacement: torch.Tensor, bias: torch.Tensor | None,
                   mean: torch.Tensor, anchor_mean: torch.Tensor | None = None) -> torch.Tensor:
    """``b + W E[x] - W' E[x^]`` (weights rows = output units; ``mean`` = E[x^], ``anchor_mean`` = E[x], the
    same when None), in the weight's dtype."""
    anchor = mean if anchor_mean is None else anchor_mean
    corrected = weight.double() @ anchor.double() - replacement.double() @ mean.double()
    if bias is not None:
        corrected = corrected + bias.detach().double()
    return corrected.to(weight.dtype)


def correct_bias_(module: nn.Module, weight: torch.Tensor, mean: torch.Tensor,
                  anchor_mean: torch.Tensor | None = None) -> float:
    """Set the bias of a compressed Linear (factorised or decoded) that replaced ``weight``; returns the largest
    change of the mean output it removed."""
    replacement = _dense(module)
    old = module.bias
    new = corrected_bias(weight, replacement, old, mean, anchor_mean)
    shift = (new - (0 if old is None else old.detach())).abs().max()
    module.bias = nn.Parameter(new)
    return float(shift)


def _dense(module: nn.Module) -> torch.Tensor:
    if isinstance(module, LowRankLinear):
        return (module.up @ module.down).detach()
    if isinstance(module, DecodedLinear):
        return module.weight
    raise TypeError(f"bias correction applies to compressed Linears, not {type(module).__name__}")
