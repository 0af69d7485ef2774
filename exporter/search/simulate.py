"""What a precision does to a module, simulated in torch: fast enough to score every module at every precision.

The search ranks choices by the fidelity each loses alone; onnxruntime's kernels are then run for real on every
candidate it verifies, so these simulations only need to order choices well, not to match bit for bit:

- int8 (onnxruntime's dynamic quantisation): weights symmetric int8, one scale per tensor; the MatMul's input
  quantised per call to uint8 with one scale and zero point per tensor.
- int4-B (MatMulNBits, ``accuracy_level`` 4): weights symmetric 4-bit in blocks of B along the inner dimension;
  the input quantised to int8 per block of B at compute time. Embedding tables (GatherBlockQuantized): blocks of B
  along the hidden dimension, no input to quantise.
- int2-32: the same at 2 bits, blocks of 32, rounded with the clipped scale edgefold's own writer chooses.
- Given the layer's input second moments, a dense MatMul's low-bit weights are GPTQ's (``graph.gptq``, what the
  graph pass writes) instead of rounded.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn import functional as F

from edgefold.exporter.graph import gptq
from edgefold.exporter.graph.quantize import LOW_BITS, OWN_PRECISIONS
from edgefold.exporter.nn.layers import LowRankEmbedding, LowRankLinear


def fake_quantized(module: nn.Module, precision: str, transposed: bool = False,
                   input_moments: torch.Tensor | None = None) -> nn.Module:
    """A copy of ``module`` (an embedding, a Linear or GPT-2's Conv1D, dense or low-rank) that computes as
    ``precision`` would; fp32 returns ``module`` itself. ``input_moments`` (E[x x^T] of a dense module's input):
    its 4-bit weights are fitted by GPTQ on them."""
    if precision == "fp32":
        return module
    if isinstance(module, LowRankEmbedding):
        copied = copy.deepcopy(module)
        with torch.no_grad():
            copied.table.copy_(quantized_table(module.table, precision))
            copied.proj.copy_(quantized_weight(module.proj, precision))
            if module.exact_rows is not None:
                copied.exact_rows.copy_(quantized_table(module.exact_rows, precision))
        return copied
    if isinstance(module, nn.Embedding):
        copied = copy.deepcopy(module)
        with torch.no_grad():
            copied.weight.copy_(quantized_table(module.weight, precision))
        return copied
    if isinstance(module, LowRankLinear):
        weights = [module.down.t(), module.up.t()]
    else:  # nn.Linear stores (out x in); Conv1D (in x out), the MatMul's own layout
        weight = (module.weight if transposed else module.weight.t()).detach()
        if input_moments is not None and precision in LOW_BITS:
            return _SimulatedMatMuls([gptq_weight(weight, precision, input_moments)], module.bias, precision)
        weights = [weight]
    return _SimulatedMatMuls([quantized_weight(w.detach(), precision) for w in weights], module.bias, precision)


class _SimulatedMatMuls(nn.Module):
    """``x @ W1 @ W2 ... + bias`` with quantised weights, each input quantised as the kernel would."""

    def __init__(self, weights: list[torch.Tensor], bias: torch.Tensor | None, precision: str):
        super().__init__()
        self.weights, self.precision = weights, precision
        self.bias = None if bias is None else bias.detach()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for weight in self.weights:
            x = quantized_input(x, self.precision) @ weight
        return x if self.bias is None else x + self.bias


def block_size(precision: str) -> int | None:
    return LOW_BITS[precision][1] if precision in LOW_BITS else None


def quantized_weight(weight: torch.Tensor, precision: str) -> torch.Tensor:
    """A MatMul weight (inner x outer) as ``precision`` stores it."""
    if precision == "int8":
        return _symmetric(weight, weight.abs().max(), 127)
    if precision in OWN_PRECISIONS:  # edgefold's own rounding (a clipped scale), as the graph pass writes it
        return _own_rounding(weight, precision)
    blocks = _blocks(weight.t(), block_size(precision))  # rows of the transposed weight: blocks along inner
    return _unblock(_four_bits(blocks), weight.shape[0]).t()


def gptq_weight(weight: torch.Tensor, precision: str, input_moments: torch.Tensor) -> torch.Tensor:
    """A MatMul weight (inner x outer) as the GPTQ graph pass stores it at a low-bit ``precision``."""
    bits, block = LOW_BITS[precision]
    codes = gptq.quantize_weight(weight.double().numpy(), bits, block, input_moments.double().numpy(),
                                 act_order=gptq.ACT_ORDER)
    return torch.from_numpy(codes.dequantized()).to(weight.dtype)


def _own_rounding(weight: torch.Tensor, precision: str) -> torch.Tensor:
    bits, block = LOW_BITS[precision]
    codes = gptq.quantize_weight(weight.detach().double().numpy(), bits, block)
    return torch.from_numpy(codes.dequantized()).to(weight.dtype)


def quantized_table(table: torch.Tensor, precision: str) -> torch.Tensor:
    """An embedding table (rows x hidden), looked up row by row: per tensor (int8) or blocks along hidden."""
    if precision == "int8":
        return _symmetric(table, table.abs().max(), 127)
    if precision in OWN_PRECISIONS:
        return _own_rounding(table.t(), precision).t()
    blocks = _blocks(table, block_size(precision))
    return _unblock(_four_bits(blocks), table.shape[1])


def quantized_input(x: torch.Tensor, precision: str) -> torch.Tensor:
    if precision == "int8":  # uint8, asymmetric, one scale per call
        low, high = x.min().clamp(max=0), x.max().clamp(min=0)
        scale = ((high - low) / 255).clamp_min(1e-12)
        zero = torch.round(-low / scale)
        return (torch.clamp(torch.round(x / scale) + zero, 0, 255) - zero) * scale
    blocks = _blocks(x, block_size(precision))
    return _unblock(_symmetric(blocks, blocks.abs().amax(-1, keepdim=True), 127), x.shape[-1])


def _symmetric(x: torch.Tensor, absmax: torch.Tensor, levels: int) -> torch.Tensor:
    scale = (absmax / levels).clamp_min(1e-12)
    return torch.clamp(torch.round(x / scale), -levels - 1, levels) * scale


def _four_bits(blocks: torch.Tensor) -> torch.Tensor:
    """onnxruntime's symmetric 4-bit blocks: the value of largest magnitude maps to -8 exactly, so the scale is
    its magnitude / 8 with its sign flipped, and the levels -8..7 cover the block."""
    index = blocks.abs().argmax(-1, keepdim=True)
    scale = blocks.gather(-1, index) / -8
    scale = torch.where(scale == 0, torch.ones_like(scale), scale)
    return torch.clamp(torch.round(blocks / scale), -8, 7) * scale


def _blocks(x: torch.Tensor, size: int) -> torch.Tensor:
    """(..., n) -> (..., ceil(n / size), size), zero-padded as the quantisers pad a last partial block."""
    pad = -x.shape[-1] % size
    return F.pad(x, (0, pad)).reshape(*x.shape[:-1], -1, size)


def _unblock(blocks: torch.Tensor, n: int) -> torch.Tensor:
    return blocks.reshape(*blocks.shape[:-2], -1)[..., :n]
