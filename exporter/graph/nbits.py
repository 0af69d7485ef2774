"""Weights edgefold quantises itself, written as onnxruntime's ``MatMulNBits`` (and embedding tables as
``GatherBlockQuantized``), and the input statistics that data-aware quantisation fits on, measured on the graph
itself.

``MatMulNBits(A, B, scales)``: ``B`` is uint8 (N x blocks x block * bits / 8), each byte holding 8 / bits codes
low bits first; ``scales`` is fp32 (N * blocks); with no ``zero_points`` input the zero point is 2^(bits - 1).
Measuring on the fp32 graph rather than in torch gives every MatMul its own input: a factorised module's second
factor reads the first factor's output, a tied head reads the last hidden state.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from edgefold.exporter.calibration.batches import TextBatch
from edgefold.exporter.graph.gptq import BlockCodes
from edgefold.exporter.onnx import passes
from edgefold.runtime import EdgefoldError
from edgefold.runtime.session import make_feed, open_session

_MICROSOFT = "com.microsoft"


def packed(codes: BlockCodes) -> np.ndarray:
    """``codes`` as ``MatMulNBits``' ``B``: N x blocks x (block * bits / 8) bytes, low bits first."""
    per_byte = 8 // codes.bits
    values = codes.codes.reshape(codes.codes.shape[0], -1, codes.block // per_byte, per_byte).astype(np.uint8)
    shifts = (np.arange(per_byte, dtype=np.uint8) * codes.bits).astype(np.uint8)
    return np.bitwise_or.reduce(values << shifts, axis=-1).astype(np.uint8)


def replace_matmuls(graph: onnx.GraphProto, nodes: list[onnx.NodeProto], codes: BlockCodes,
                    accuracy_level: int) -> None:
    """Put a ``MatMulNBits`` computing ``codes`` in the place of each of ``nodes`` (MatMuls reading one weight
    initializer), all reading one copy of the codes."""
    weight = nodes[0].input[1]
    quantized = numpy_helper.from_array(packed(codes), f"{weight}_Q{codes.bits}")
    scales = numpy_helper.from_array(codes.scales.reshape(-1).astype(np.float32), f"{weight}_scales")
    graph.initializer.extend([quantized, scales])
    for node in nodes:
        replacement = helper.make_node(
            "MatMulNBits", [node.input[0], quantized.name, scales.name], list(node.output),
            name=f"{node.name}_Q{codes.bits}", domain=_MICROSOFT, K=codes.k, N=codes.codes.shape[0],
            bits=codes.bits, block_size=codes.block, accuracy_level=accuracy_level)
        index = list(graph.node).index(node)
        graph.node.remove(node)
        graph.node.insert(index, replacement)


def replace_gathers(graph: onnx.GraphProto, nodes: list[onnx.NodeProto], codes: BlockCodes) -> None:
    """Put a ``GatherBlockQuantized`` in the place of each of ``nodes`` (row lookups in one table), reading one copy
    of ``codes``: the table's rows (the codes' N) in blocks along its hidden dimension (their K)."""
    table = nodes[0].input[0]
    if codes.k % codes.block:
        raise EdgefoldError(f"a {codes.bits}-bit table in blocks of {codes.block} needs a width that is a multiple of "
                            f"{codes.block}; {table} is {codes.k} wide")
    rows = codes.codes.shape[0]
    quantized = numpy_helper.from_array(packed(codes).reshape(rows, -1), f"{table}_Q{codes.bits}")
    scales = numpy_helper.from_array(codes.scales.astype(np.float32), f"{table}_scales")
    graph.initializer.extend([quantized, scales])
    for node in nodes:
        replacement = helper.make_node(
            "GatherBlockQuantized", [quantized.name, node.input[1], scales.name], list(node.output),
            name=f"{node.name}_Q{codes.bits}", domain=_MICROSOFT, gather_axis=0, quantize_axis=1,
            block_size=codes.block, bits=codes.bits)
        index = list(graph.node).index(node)
        graph.node.remove(node)
        graph.node.insert(index, replacement)


def ensure_microsoft_opset(model: onnx.ModelProto) -> None:
    if not any(opset.domain == _MICROSOFT for opset in model.opset_import):
        model.opset_import.append(helper.make_opsetid(_MICROSOFT, 1))


#: Moments of whole graphs kept per process: a search's candidates that differ only in their precisions quantise one
#: fp32 graph, on one calibration text. Each entry holds every MatMul input's moments (about 150 MB for MiniLM).
_GRAPH_MOMENTS: OrderedDict[str, dict[str, np.ndarray]] = OrderedDict()
_KEPT_GRAPHS = 2


def graph_moments(model: onnx.ModelProto, batches: list[TextBatch], staging: Path) -> dict[str, np.ndarray]:
    """:func:`input_moments` of the input of every MatMul on a weight, measured once per graph and text in this
    process."""
    digest = hashlib.sha256(model.SerializeToString(deterministic=True))
    for batch in batches:
        digest.update(batch.input_ids.tobytes())
        digest.update(batch.attention_mask.tobytes())
    key = digest.hexdigest()
    if key not in _GRAPH_MOMENTS:
        weights = {i.name for i in model.graph.initializer if len(i.dims) == 2}
        inputs = [node.input[0] for node in model.graph.node if node.op_type == "MatMul" and node.input[1] in weights]
        _GRAPH_MOMENTS[key] = input_moments(model, inputs, batches, staging)
        while len(_GRAPH_MOMENTS) > _KEPT_GRAPHS:
            _GRAPH_MOMENTS.popitem(last=False)
    _GRAPH_MOMENTS.move_to_end(key)
    return _GRAPH_MOMENTS[key]


def input_moments(model: onnx.ModelProto, tensors: Iterable[str], batches: list[TextBatch],
                  staging: Path) -> dict[str, np.ndarray]:
    """Per tensor (a MatMul's input), the second moments E[x x^T] of its last axis over the real tokens of
    ``batches`` (padding left out), from onnxruntime running ``model`` with the tensors as extra outputs. The
    graph is staged at ``staging`` while it runs, then removed."""
    names = list(dict.fromkeys(tensors))
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    present = {output.name for output in probe.graph.output}
    probe.graph.output.extend(helper.make_empty_tensor_value_info(name) for name in names if name not in present)
    try:
        passes.save(probe, staging)
        session = open_session(staging)
        sums: dict[str, np.ndarray] = {}
        counts: dict[str, int] = {}
        for batch in batches:
            values = session.run(names, make_feed(session, batch.input_ids, batch.attention_mask))
            for name, value in zip(names, values):
                rows = _token_rows(value, batch.attention_mask.astype(bool))
                sums[name] = sums.get(name, 0) + rows.T @ rows
                counts[name] = counts.get(name, 0) + len(rows)
    finally:
        passes.remove(staging)
    return {name: total / max(counts[name], 1) for name, total in sums.items()}


def _token_rows(value: np.ndarray, real: np.ndarray) -> np.ndarray:
    """One float64 row per real token: (batch, length, width) inputs keep the real tokens' rows."""
    if value.ndim == 3 and value.shape[:2] == real.shape:
        value = value[real]
    return value.reshape(-1, value.shape[-1]).astype(np.float64)

