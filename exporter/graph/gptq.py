"""Low-bit weights, symmetric in blocks along a MatMul's inner dimension, as ``MatMulNBits`` stores them: by
rounding to nearest (RTN) or by GPTQ's error feedback (Frantar et al., 2022).

GPTQ quantises one input dimension at a time and spreads each column's rounding error over the columns not yet
quantised, weighted by the inverse of the layer's input second moments ``H = E[x x^T]``, so the layer's output
``x W`` moves as little as the calibration inputs can tell. With ``act_order`` the columns go in order of falling
``H`` diagonal (the inputs with most energy first, while the most columns are left to absorb their error); the
block scales are then fixed from the unquantised weights, since a block's columns are no longer quantised together.

Both choose each block's scale as onnxruntime's RTN does (the value of largest magnitude maps to the lowest level),
shrunk by the clipping ratio, of a small grid, that rounds the block with the least squared error: below 4 bits a
slightly clipped range loses less than an outlier-sized step.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import torch

ALGORITHMS = ("rtn", "gptq")
BITS = (2, 4, 8)
#: Clipping ratios tried per block: 1.0 is onnxruntime's RTN scale.
CLIP_RATIOS = (1.0, 0.95, 0.9, 0.85, 0.8, 0.75, 0.7)
#: GPTQ's damping: this share of the mean diagonal of H is added to it. The paper's 0.01 fits the calibration
#: text's own directions too closely for text of another kind: on all-MiniLM-L6-v2 with 512 shipped sentences,
#: Python docstrings (a development split) kept a 1st-percentile cosine of 0.936 at 0.01, 0.955 at 0.1 and 0.963
#: at 0.3 (RTN: 0.941); see benchmarks/lowbit.py.
DAMPING = 0.3
#: What the graph passes use. Act-order lost less on synthetic layers; on MiniLM's docstrings at damping 0.1 the
#: natural order kept a higher 1st-percentile cosine (0.961 against 0.955); not yet compared at 0.3.
ACT_ORDER = True
#: Columns updated together before the rest of the matrix gets their error (GPTQ's lazy batch updates).
_LAZY_COLUMNS = 128
#: Bytes of GPTQ codes kept per process: a search's candidates share most of their modules' precisions, so a module
#: fitted for one candidate is fitted again, on the same weight and moments, for the next.
_KEPT_BYTES = 256 << 20


@dataclass(frozen=True)
class BlockCodes:
    """A MatMul weight (K x N) quantised: per output column, ``codes`` (N x padded K, 0 .. 2^bits - 1, the zero
    point 2^(bits - 1)) and one ``scales`` entry (N x blocks) per block of ``block`` inner values."""

    codes: np.ndarray
    scales: np.ndarray
    bits: int
    block: int
    k: int

    def dequantized(self) -> np.ndarray:
        """The K x N weight the kernel computes with."""
        n = self.codes.shape[0]
        levels = self.codes.astype(np.float32) - 2 ** (self.bits - 1)
        values = levels.reshape(n, -1, self.block) * self.scales[:, :, None]
        return values.reshape(n, -1)[:, :self.k].T


def quantize_weight(weight: np.ndarray, bits: int, block: int, hessian: np.ndarray | None = None,
                    act_order: bool = False) -> BlockCodes:
    """``weight`` (K x N, a MatMul's) at ``bits`` in blocks of ``block``: GPTQ where ``hessian`` (K x K, the
    input's second moments) is given, RTN where it is None."""
    k, n = weight.shape
    padded = -(-k // block) * block
    columns = torch.zeros(n, padded, dtype=torch.float64)  # GPTQ's layout: a row per output, a column per input
    columns[:, :k] = torch.from_numpy(np.asarray(weight, dtype=np.float64)).T
    if hessian is None:
        scales = _block_scales(columns, bits, block)
        codes = _round(columns, scales.repeat_interleave(block, 1), bits)
        return BlockCodes(codes.to(torch.uint8).numpy(), scales.float().numpy(), bits, block, k)
    key = _key(weight, hessian, bits, block, act_order)
    if key not in _FITTED:
        moments = torch.zeros(padded, padded, dtype=torch.float64)
        moments[:k, :k] = torch.from_numpy(np.asarray(hessian, dtype=np.float64))
        codes, scales = _gptq(columns, moments, bits, block, act_order)
        _keep(key, BlockCodes(codes.to(torch.uint8).numpy(), scales.float().numpy(), bits, block, k))
    _FITTED.move_to_end(key)
    return _FITTED[key]


_FITTED: OrderedDict[str, BlockCodes] = OrderedDict()


def _key(weight: np.ndarray, hessian: np.ndarray, bits: int, block: int, act_order: bool) -> str:
    digest = hashlib.sha256(repr((weight.shape, bits, block, act_order)).encode())
    for array in (weight, hessian):
        digest.update(np.ascontiguousarray(array, dtype=np.float64).tobytes())
    return digest.hexdigest()


def _keep(key: str, codes: BlockCodes) -> None:
    for array in (codes.codes, codes.scales):
        array.setflags(write=False)  # shared by every later caller
    _FITTED[key] = codes
    while sum(c.codes.nbytes + c.scales.nbytes for c in _FITTED.values()) > _KEPT_BYTES and len(_FITTED) > 1:
        _FITTED.popitem(last=False)


def _block_scales(columns: torch.Tensor, bits: int, block: int) -> torch.Tensor:
    """Per row and block, the scale of the clipping ratio that rounds the block with the least squared error."""
    blocks = columns.reshape(columns.shape[0], -1, block)
    index = blocks.abs().argmax(-1, keepdim=True)
    largest = blocks.gather(-1, index).squeeze(-1)  # signed: it maps to the lowest level, -2^(bits-1)
    half = 2 ** (bits - 1)
    best_scale, best_error = None, None
    for ratio in CLIP_RATIOS:
        scale = largest * ratio / -half
        scale = torch.where(scale == 0, torch.ones_like(scale), scale)
        levels = torch.clamp(torch.round(blocks / scale[..., None]), -half, half - 1)
        error = ((levels * scale[..., None] - blocks) ** 2).sum(-1)
        if best_error is None:
            best_scale, best_error = scale, error
        else:
            better = error < best_error
            best_scale, best_error = torch.where(better, scale, best_scale), torch.minimum(error, best_error)
    return best_scale


def _round(columns: torch.Tensor, scales: torch.Tensor, bits: int) -> torch.Tensor:
    """Codes of ``columns`` (same shape as ``scales``), offset by the zero point 2^(bits - 1)."""
    half = 2 ** (bits - 1)
    return torch.clamp(torch.round(columns / scales), -half, half - 1) + half


def _gptq(columns: torch.Tensor, moments: torch.Tensor, bits: int, block: int,
          act_order: bool) -> tuple[torch.Tensor, torch.Tensor]:
    columns, moments = columns.clone(), moments.clone()
    dead = torch.diag(moments) == 0  # inputs that are always 0 (padding, a dead unit): nothing to preserve
    moments[dead, dead] = 1
    columns[:, dead] = 0
    rows, width = columns.shape
    static = _block_scales(columns, bits, block) if act_order else None
    order = torch.argsort(torch.diag(moments), descending=True) if act_order else torch.arange(width)
    columns, moments = columns[:, order], moments[order][:, order]
    moments += DAMPING * torch.mean(torch.diag(moments)) * torch.eye(width, dtype=moments.dtype)
    inverse = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(moments)), upper=True)
    half = 2 ** (bits - 1)
    codes = torch.zeros_like(columns)
    scales = torch.zeros(rows, width // block, dtype=columns.dtype) if static is None else static
    lazy = -(-_LAZY_COLUMNS // block) * block  # whole blocks: a block's scale sees all the error sent to it
    original = order.tolist()  # indexing a tensor per column costs more than the column's arithmetic
    for start in range(0, width, lazy):
        end = min(start + lazy, width)
        errors = torch.empty(rows, end - start, dtype=columns.dtype)
        for i in range(start, end):
            index = original[i]
            if static is None and index % block == 0:  # a block starts: its scale from the weights now
                scales[:, index // block] = _block_scales(columns[:, i:i + block], bits, block)[:, 0]
            scale, column, error = scales[:, index // block], columns[:, i], errors[:, i - start]
            level = torch.clamp(torch.round(column / scale), -half, half - 1)
            codes[:, i] = level + half
            torch.sub(column, level * scale, out=error)
            error /= inverse[i, i]
            columns[:, i + 1:end].addr_(error, inverse[i, i + 1:end], alpha=-1)
        columns[:, end:].addmm_(errors, inverse[start:end, end:], alpha=-1)
    restored = torch.empty_like(codes)
    restored[:, order] = codes
    return restored, scales
