"""Quantisation after the fold: onnxruntime's int8 dynamic quantisation, or 4-bit weight-only (MatMulNBits and
GatherBlockQuantized for embedding tables).

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
#: int8 weight type per target CPU, as onnxruntime (and optimum's presets) advise: signed weights with unsigned
#: activations (U8S8) where the CPU has 8-bit dot products (arm64, AVX512-VNNI); unsigned weights (U8U8) on AVX2
#: without VNNI, whose U8S8 kernel can saturate.
INT8_TARGETS = {"generic": "QInt8", "arm64": "QInt8", "avx512-vnni": "QInt8", "avx2": "QUInt8"}
#: What int8 quantises: the MatMuls (the factors), Gather (the embedding table), and fused Attention.
INT8_OPS = ["MatMul", "Gather", "Attention"]


def check_scheme(scheme: str, target: str = "generic") -> str:
    if scheme not in SCHEMES:
        raise EdgefoldError(f"unknown --quantize {scheme!r}; choose from: {', '.join(SCHEMES)}")
    if target not in INT8_TARGETS:
        raise EdgefoldError(f"unknown --quantize-for {target!r}; choose from: {', '.join(INT8_TARGETS)}")
    return scheme


@contextmanager
def _quiet_loggers():
    # onnxruntime's quantisers log advice ("consider pre-processing") on the root logger and every node on their
    # own: not the user's concern.
    loggers = [logging.getLogger(), logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def quantize(source: Path, output: Path, scheme: str, per_channel: bool = False, target: str = "generic") -> dict:
    """Write ``source`` quantised with ``scheme`` for the ``target`` CPU to ``output``; returns what was done."""
    with _quiet_loggers():
        details = _quantize(source, output, scheme, per_channel, target)
    ops = Counter(node.op_type for node in onnx.load(str(output), load_external_data=False).graph.node)
    quantized_ops = {op: n for op, n in ops.items() if op in ("MatMulInteger", "DynamicQuantizeLinear",
                                                              "MatMulNBits", "GatherBlockQuantized", "DequantizeLinear",
                                                              "QAttention")}
    if not quantized_ops:
        raise EdgefoldError(f"--quantize {scheme} found nothing to quantise in this graph")
    return {"scheme": scheme, **details, "quantized_ops": quantized_ops}


def _quantize(source: Path, output: Path, scheme: str, per_channel: bool, target: str) -> dict:
    if scheme == "int8":
        from onnxruntime.quantization import QuantType, quantize_dynamic

        # Dynamic: weights 8-bit ahead of time, activations quantised (uint8) per call.
        weight_type = INT8_TARGETS[target]
        quantize_dynamic(source, output, op_types_to_quantize=INT8_OPS, per_channel=per_channel,
                         weight_type=getattr(QuantType, weight_type), reduce_range=False,
                         # Shape inference stops at fused contrib ops (Attention, SkipLayerNormalization).
                         extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
        weights = "int8 symmetric" if weight_type == "QInt8" else "uint8 asymmetric"
        return {"weights": weights, "activations": "uint8, dynamic", "per_channel": per_channel, "target": target}
    elif scheme == "int4":
        from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

        # MatMul weights in blocks along their inner dimension; embedding tables (GatherBlockQuantized) along
        # the hidden dimension, so each looked-up row dequantises on its own.
        quantizer = MatMulNBitsQuantizer(str(source), bits=4, block_size=INT4_BLOCK_SIZE, is_symmetric=True,
                                         op_types_to_quantize=("MatMul", "Gather"),
                                         quant_axes=(("MatMul", 0), ("Gather", 1)),
                                         nodes_to_exclude=_not_float_tables(source))
        quantizer.process()
        quantizer.model.save_model_to_file(str(output), use_external_data_format=False)
        return {"weights": f"int4 symmetric, blocks of {INT4_BLOCK_SIZE}", "activations": "fp32",
                "per_channel": False}
    raise EdgefoldError(f"nothing to do for --quantize {scheme}")


def _not_float_tables(path: Path) -> list[str]:
    """Gathers that do not read a 2-D float table (shape lookups, the exact-row slot table): left alone."""
    graph = onnx.load(str(path), load_external_data=False).graph
    tables = {i.name for i in graph.initializer if len(i.dims) == 2 and i.data_type == onnx.TensorProto.FLOAT}
    return [n.name for n in graph.node if n.op_type == "Gather" and n.input[0] not in tables]
