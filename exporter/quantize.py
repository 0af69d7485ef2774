"""Quantisation after the fold: onnxruntime's int8 dynamic quantisation, or 4-bit weight-only MatMulNBits.

What users reach for first. Applied to the folded graph, it quantises the factors themselves: the small
MatMul weights and the V x r embedding table.
"""

from __future__ import annotations

import logging
from collections import Counter
from contextlib import contextmanager
from pathlib import Path

import onnx

from edgefold.runtime import EdgefoldError

SCHEMES = ("none", "int8", "int4")
INT4_BLOCK_SIZE = 32


def check_scheme(scheme: str) -> str:
    if scheme not in SCHEMES:
        raise EdgefoldError(f"unknown --quantize {scheme!r}; choose from: {', '.join(SCHEMES)}")
    return scheme


@contextmanager
def _quiet_root_logger():
    # onnxruntime's quantiser logs advice ("consider pre-processing") on the root logger; not the user's concern.
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def quantize(source: Path, target: Path, scheme: str, per_channel: bool = False) -> dict:
    """Write ``source`` quantised with ``scheme`` to ``target``; returns what was done, for the manifest."""
    with _quiet_root_logger():
        details = _quantize(source, target, scheme, per_channel)
    ops = Counter(node.op_type for node in onnx.load(str(target), load_external_data=False).graph.node)
    quantized_ops = {op: n for op, n in ops.items()
                     if op in ("MatMulInteger", "DynamicQuantizeLinear", "MatMulNBits", "DequantizeLinear")}
    if not quantized_ops:
        raise EdgefoldError(f"--quantize {scheme} found nothing to quantise in this graph")
    return {"scheme": scheme, **details, "quantized_ops": quantized_ops}


def _quantize(source: Path, target: Path, scheme: str, per_channel: bool) -> dict:
    if scheme == "int8":
        from onnxruntime.quantization import QuantType, quantize_dynamic

        # Dynamic: weights int8 ahead of time, activations quantised per call. Gather: the embedding table.
        quantize_dynamic(source, target, op_types_to_quantize=["MatMul", "Gather"], per_channel=per_channel,
                         weight_type=QuantType.QInt8)
        return {"weights": "int8 symmetric", "activations": "uint8, dynamic", "per_channel": per_channel}
    elif scheme == "int4":
        from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

        quantizer = MatMulNBitsQuantizer(str(source), bits=4, block_size=INT4_BLOCK_SIZE, is_symmetric=True,
                                         op_types_to_quantize=("MatMul",))
        quantizer.process()
        quantizer.model.save_model_to_file(str(target), use_external_data_format=False)
        return {"weights": f"int4 symmetric, blocks of {INT4_BLOCK_SIZE}", "activations": "fp32",
                "per_channel": False}
    raise EdgefoldError(f"nothing to do for --quantize {scheme}")
