"""Quantisation after the fold: onnxruntime's int8 dynamic quantisation, or 4-bit weight-only (MatMulNBits and
GatherBlockQuantized for embedding tables), for the whole graph (``quantize``) or at a precision per torch module
(``quantize_modules``, for the search's plans).

What users reach for first. Applied to the folded graph, it quantises the factors themselves: the small
MatMul weights and the V x r embedding table.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Mapping
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from edgefold.exporter.calibration.batches import TextBatch
from edgefold.exporter.graph import gptq, nbits
from edgefold.exporter.onnx import passes
from edgefold.runtime import EdgefoldError
from edgefold.runtime.optable import PRECISIONS

SCHEMES = ("none", "int8", "int4")
INT4_BLOCK_SIZE = 32
#: Bytes a weight takes once quantised: int8 one (its tensor's scale is negligible), int4 half a byte plus one
#: fp32 scale per block of 32. What a size budget counts per parameter when the export quantises.
QUANTISED_PARAM_BYTES = {"int8": 1.0, "int4": 0.5 + 4 / INT4_BLOCK_SIZE}
#: Per-module precisions: int4-B is 4-bit weight-only in blocks of B, computed in int8 (accuracy level 4).
INT4_BLOCKS = {"int4-32": 32, "int4-128": 128}
#: Every weight-only precision as (bits, block). int2-32: 2-bit MatMulNBits / GatherBlockQuantized, which
#: onnxruntime's quantiser does not write: edgefold writes it (``graph.gptq``, ``graph.nbits``), RTN with a clipped
#: scale, or GPTQ with ``algorithm`` "gptq".
LOW_BITS = {"int4-32": (4, 32), "int4-128": (4, 128), "int2-32": (2, 32)}
OWN_PRECISIONS = ("int2-32",)
#: MatMulNBits computes in int8 on CPU at level 4 only (0-3 dequantise to fp32 first): the faster kernel.
MIXED_ACCURACY_LEVEL = 4
#: The weight input of each op that carries a module's weights.
WEIGHT_INPUT = {"MatMul": 1, "Gemm": 1, "Gather": 0}
#: Nodes through which the exporter hands a weight on: Identity (shared by modules), Transpose (a tied head).
_VIEWS = ("Identity", "Transpose")
_QUANTIZED_OPS = ("MatMulInteger", "DynamicQuantizeLinear", "MatMulNBits", "GatherBlockQuantized", "DequantizeLinear",
                  "QAttention")
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
    _import_without_logging_config()
    loggers = [logging.getLogger(), logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def _import_without_logging_config() -> None:
    # Importing the 4-bit quantiser calls logging.basicConfig(level=INFO): the root logger would gain a handler
    # and print every INFO line of every library from then on (and undo the quieting, when imported inside it).
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    import onnxruntime.quantization.matmul_nbits_quantizer  # noqa: F401

    root.setLevel(level)
    for handler in root.handlers[len(handlers):]:
        root.removeHandler(handler)


def quantize(source: Path, output: Path, scheme: str, per_channel: bool = False, target: str = "generic",
             algorithm: str = "rtn", calibration: list[TextBatch] | None = None) -> dict:
    """Write ``source`` quantised with ``scheme`` for the ``target`` CPU to ``output``; returns what was done.
    ``algorithm`` "gptq" fits int4's MatMul weights on ``calibration`` (see :func:`quantize_modules`)."""
    check_algorithm(algorithm, calibration)
    with _quiet_loggers():
        details = _quantize(source, output, scheme, per_channel, target, algorithm, calibration)
    quantized_ops = _quantized_ops(onnx.load(str(output), load_external_data=False).graph)
    if not quantized_ops:
        raise EdgefoldError(f"--quantize {scheme} found nothing to quantise in this graph")
    return {"scheme": scheme, **details, "quantized_ops": quantized_ops}


def _quantize(source: Path, output: Path, scheme: str, per_channel: bool, target: str, algorithm: str,
              calibration: list[TextBatch] | None) -> dict:
    if scheme == "int8":
        _int8(source, output, INT8_OPS, per_channel, target)
        return {"weights": _int8_weights(target), "activations": "uint8, dynamic", "per_channel": per_channel,
                "target": target}
    elif scheme == "int4":
        model, fitted = str(source), {}  # a path: onnxruntime's quantiser reads external data itself
        if algorithm == "gptq":
            model = onnx.load(model)
            weights = {name for name, (source, _) in _float_matrices(model.graph).items() if source == name}
            chosen = {node.name: "int4-32" for node in model.graph.node
                      if node.op_type == "MatMul" and node.input[1] in weights}  # views stay with RTN
            fitted = _own_pass(model, chosen, calibration, output, accuracy_level=0)
        with np.errstate(divide="ignore", invalid="ignore"):
            model = _int4(model, INT4_BLOCK_SIZE, ("MatMul", "Gather"), exclude=_not_float_tables(source))
        model.save_model_to_file(str(output), use_external_data_format=passes.uses_external_data(source))
        return {"weights": f"int4 symmetric, blocks of {INT4_BLOCK_SIZE}", "activations": "fp32",
                "per_channel": False, "algorithm": algorithm, **_gptq_record(fitted, calibration)}
    raise EdgefoldError(f"nothing to do for --quantize {scheme}")


def _int8(source: Path, output: Path, op_types: list[str], per_channel: bool, target: str,
          nodes: list[str] | None = None) -> None:
    """onnxruntime's dynamic int8: weights 8-bit ahead of time, activations quantised (uint8) per call."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(source, output, op_types_to_quantize=op_types, per_channel=per_channel, nodes_to_quantize=nodes,
                     use_external_data_format=passes.uses_external_data(source),
                     weight_type=getattr(QuantType, INT8_TARGETS[target]), reduce_range=False,
                     # Shape inference stops at contrib ops (Attention, SkipLayerNormalization, MatMulNBits).
                     extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})


def _int8_weights(target: str) -> str:
    return "int8 symmetric" if INT8_TARGETS[target] == "QInt8" else "uint8 asymmetric"


def _int4(model: str | onnx.ModelProto, block_size: int, op_types: tuple[str, ...], exclude: Iterable[str] = (),
          accuracy_level: int | None = None):
    """4-bit weight-only; returns onnxruntime's ``ONNXModel``. MatMul weights go in blocks along their inner
    dimension; embedding tables (GatherBlockQuantized) along the hidden dimension, so each looked-up row
    dequantises on its own."""
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    quantizer = MatMulNBitsQuantizer(model, bits=4, block_size=block_size, is_symmetric=True,
                                     accuracy_level=accuracy_level, op_types_to_quantize=op_types,
                                     quant_axes=(("MatMul", 0), ("Gather", 1)), nodes_to_exclude=list(exclude))
    quantizer.process()
    return quantizer.model


def _quantized_ops(graph: onnx.GraphProto) -> dict[str, int]:
    ops = Counter(node.op_type for node in graph.node)
    return {op: n for op, n in ops.items() if op in _QUANTIZED_OPS}


def _not_float_tables(path: Path) -> list[str]:
    """Gathers that do not read a 2-D float table (shape lookups, the exact-row slot table): left alone."""
    graph = onnx.load(str(path), load_external_data=False).graph
    tables = {i.name for i in graph.initializer if len(i.dims) == 2 and i.data_type == onnx.TensorProto.FLOAT}
    return [n.name for n in graph.node if n.op_type == "Gather" and n.input[0] not in tables]


def weight_nodes(graph: onnx.GraphProto, modules: Iterable[str]) -> dict[str, list[str]]:
    """For each torch module name, the names of the graph's nodes that carry its weights: MatMul, Gemm and Gather
    nodes in the module's scope whose weight is a 2-D float initializer, or the exporter's view of one (an Identity:
    shared by modules; a Transpose: a head tied to the embedding)."""
    weights = _float_matrices(graph)
    carriers = [node.name for node in graph.node if _weight_input(node, weights) is not None]
    return {module: [name for name in carriers if _in_scope(name, module)] for module in modules}


def check_algorithm(algorithm: str, calibration: list[TextBatch] | None = None) -> str:
    if algorithm not in gptq.ALGORITHMS:
        raise EdgefoldError(f"unknown --quant-algorithm {algorithm!r}; choose from: {', '.join(gptq.ALGORITHMS)}")
    if algorithm == "gptq" and calibration is not None and not calibration:
        raise EdgefoldError("--quant-algorithm gptq fits on calibration text, and none was given")
    return algorithm


def quantize_modules(source: Path, output: Path, precisions: Mapping[str, str], target: str = "generic",
                     algorithm: str = "rtn", calibration: list[TextBatch] | None = None) -> dict:
    """Write ``source`` to ``output`` with each module's weight nodes at its precision (modules not named stay fp32;
    where named modules nest, the innermost decides); returns what was done, JSON-ready.

    ``algorithm`` "gptq" fits the 4-bit MatMul weights by error feedback on ``calibration`` (tokenised text, not
    the text the export is checked on) instead of rounding them (see ``graph.gptq``); embedding tables round."""
    check_scheme("int8", target)
    check_algorithm(algorithm, calibration)
    unknown = [f"{module!r}: {precision!r}" for module, precision in precisions.items() if precision not in PRECISIONS]
    if unknown:
        raise EdgefoldError(f"unknown precision for module {unknown[0]}; choose from: {', '.join(PRECISIONS)}")
    model = onnx.load(str(source))
    chosen = _node_precisions(model.graph, precisions)
    before, split = _weight_bytes(model.graph), _split_weights(model.graph, chosen)
    _read_initializers(model.graph, chosen)
    _unshare(model.graph, chosen)
    fitted = _own_pass(model, chosen, calibration if algorithm == "gptq" else None, output)
    # np.errstate: the 4-bit quantiser divides all-zero blocks (a padding row) by their zero scale, then discards it
    with _quiet_loggers(), np.errstate(divide="ignore", invalid="ignore"):
        model = _int4_passes(model, {node: p for node, p in chosen.items() if node not in fitted})
        _int8_pass(model, output, chosen, target)
    used = [p for p in PRECISIONS if p in precisions.values()]
    result = onnx.load(str(output)).graph
    return {"scheme": "mixed", "modules": {p: sum(v == p for v in precisions.values()) for p in used},
            "nodes": {p: sum(v == p for v in chosen.values()) for p in used if p != "fp32"},
            "quantized_ops": _quantized_ops(result), "weights": {p: _describe(p, target) for p in used},
            "target": target, "split_weights": split, "algorithm": algorithm,
            **_gptq_record(fitted if algorithm == "gptq" else {}, calibration),
            "weight_bytes": {"before": before, "after": _weight_bytes(result)}}


def _in_scope(node_name: str, module: str) -> bool:
    # '/encoder/layer.0/attention/self/query/MatMul' is in 'encoder.layer.0.attention.self.query' (not in
    # 'encoder.layer.0.attention.self.q', nor 'encoder.layer.1' in 'encoder.layer.10')
    return node_name.replace("/", ".").startswith(f".{module}.")


def _float_matrices(graph: onnx.GraphProto) -> dict[str, tuple[str, bool]]:
    """Tensor name -> (the 2-D float initializer it holds, whether transposed): the initializer itself, or a view
    the exporter made of it: an Identity (a parameter shared by modules) or a Transpose (a head tied to the
    embedding, stored once)."""
    matrices = {i.name: (i.name, False) for i in graph.initializer
                if len(i.dims) == 2 and i.data_type == onnx.TensorProto.FLOAT}
    for node in graph.node:  # in topological order: views of views resolve
        if not node.input or node.input[0] not in matrices:
            continue
        source, transposed = matrices[node.input[0]]
        if node.op_type == "Identity":
            matrices[node.output[0]] = source, transposed
        elif node.op_type == "Transpose" and list(_attribute(node, "perm", [1, 0])) == [1, 0]:
            matrices[node.output[0]] = source, not transposed
    return matrices


def _weight_input(node: onnx.NodeProto, weights: Mapping[str, tuple[str, bool]]) -> int | None:
    """The index of the node's weight input, or None when the node carries no weight the quantisers can take."""
    index = WEIGHT_INPUT.get(node.op_type)
    if index is None or len(node.input) <= index or node.input[index] not in weights:
        return None
    if node.op_type == "Gather" and _attribute(node, "axis", 0) != 0:
        return None  # not a row lookup
    # What torch writes for a Linear; the rewrite to MatMul (+ Add) relies on it.
    if node.op_type == "Gemm" and (_attribute(node, "transA", 0), _attribute(node, "alpha", 1.0),
                                   _attribute(node, "beta", 1.0)) != (0, 1.0, 1.0):
        return None
    return index


def _attribute(node: onnx.NodeProto, name: str, default):
    return next((helper.get_attribute_value(a) for a in node.attribute if a.name == name), default)


def _node_precisions(graph: onnx.GraphProto, precisions: Mapping[str, str]) -> dict[str, str]:
    """Weight node name -> its precision, for the quantised ones."""
    found = weight_nodes(graph, precisions)
    missing = [module for module, nodes in found.items() if not nodes]
    if missing:
        names = ", ".join(repr(module) for module in missing)
        raise EdgefoldError(f"module{'s' if len(missing) > 1 else ''} {names} match{'' if len(missing) > 1 else 'es'} "
                            "no weight node (MatMul, Gemm or Gather on a 2-D float initializer) in this graph")
    chosen: dict[str, str] = {}
    for module in sorted(found, key=len):  # the innermost module last: its precision wins
        chosen.update(dict.fromkeys(found[module], precisions[module]))
    return {node: precision for node, precision in chosen.items() if precision != "fp32"}


def _weight_bytes(graph: onnx.GraphProto) -> int:
    return sum(numpy_helper.to_array(i).nbytes if not i.raw_data else len(i.raw_data) for i in graph.initializer)


def _split_weights(graph: onnx.GraphProto, chosen: Mapping[str, str]) -> dict[str, list[str]]:
    """Weights read at more than one precision (a tied head at another precision than its embedding, say): each
    precision stores its own copy."""
    weights = _float_matrices(graph)
    read_at: dict[str, set[str]] = {}
    for node in graph.node:
        if node.op_type in _VIEWS and node.output[0] in weights:
            continue  # what its readers read counts
        for name in node.input:
            if name in weights:
                read_at.setdefault(weights[name][0], set()).add(chosen.get(node.name, "fp32"))
    return {name: [p for p in PRECISIONS if p in seen] for name, seen in read_at.items() if len(seen) > 1}


def _read_initializers(graph: onnx.GraphProto, chosen: dict[str, str]) -> None:
    """Each quantised node reads its weight straight from an initializer, in the orientation its op uses: the
    quantisers take nothing else, and no Gemm (those become MatMul + Add, ``chosen`` following). Views nothing
    reads any more go, so that a weight nothing else reads in fp32 goes too."""
    matrices = _float_matrices(graph)
    initializers = {i.name: i for i in graph.initializer}
    nodes = []
    for node in graph.node:
        if node.name in chosen:
            index = WEIGHT_INPUT[node.op_type]
            source, transposed = matrices[node.input[index]]
            if node.op_type == "Gemm" and _attribute(node, "transB", 0):
                transposed = not transposed
            node.input[index] = _oriented(graph, initializers, source, transposed)
            if node.op_type == "Gemm":
                matmul, *bias = _as_matmul(node)
                nodes += [matmul, *bias]
                chosen[matmul.name] = chosen.pop(node.name)
                continue
        nodes.append(node)
    graph.ClearField("node")
    graph.node.extend(nodes)
    _drop_unread_views(graph, matrices)


def _oriented(graph: onnx.GraphProto, initializers: dict[str, onnx.TensorProto], source: str, transposed: bool) -> str:
    if not transposed:
        return source
    name = f"{source}_transposed"  # one copy for all its readers
    if name not in initializers:
        initializers[name] = numpy_helper.from_array(numpy_helper.to_array(initializers[source]).T.copy(), name)
        graph.initializer.append(initializers[name])
    return name


def _as_matmul(gemm: onnx.NodeProto) -> list[onnx.NodeProto]:
    """Gemm(A, B[, C]) with B already in [K, N] and transA = 0, alpha = beta = 1: MatMul(A, B) (+ C), named as
    ``quantize_dynamic`` names those it rewrites (it rewrites every such Gemm, quantised or not)."""
    bias = gemm.input[2] if len(gemm.input) > 2 and gemm.input[2] else None
    product = f"{gemm.output[0]}_MatMul" if bias else gemm.output[0]
    nodes = [helper.make_node("MatMul", list(gemm.input[:2]), [product], name=f"{gemm.name}_MatMul")]
    if bias:
        nodes.append(helper.make_node("Add", [product, bias], [gemm.output[0]], name=f"{gemm.name}_Add"))
    return nodes


def _drop_unread_views(graph: onnx.GraphProto, matrices: Mapping[str, tuple[str, bool]]) -> None:
    while True:  # a view of a view is read until its reader goes
        read = _read_names(graph)
        dead = [node for node in graph.node
                if node.op_type in _VIEWS and node.input[0] in matrices and node.output[0] not in read]
        if not dead:
            return
        for node in dead:
            graph.node.remove(node)


def _read_names(graph: onnx.GraphProto) -> set[str]:
    """Every tensor a node reads (in subgraphs too: they read the outer graph's tensors) or the graph returns."""
    names = {output.name for output in graph.output}
    for node in graph.node:
        names.update(node.input)
        for attribute in node.attribute:
            for subgraph in [attribute.g] if attribute.type == onnx.AttributeProto.GRAPH else attribute.graphs:
                names |= _read_names(subgraph)
    return names


def _unshare(graph: onnx.GraphProto, chosen: Mapping[str, str]) -> None:
    """One copy of a shared weight per (precision, op) that quantises it: each quantiser names its tensors after
    the weight, so two blockings (or a MatMul's and a Gather's layout) of one weight would collide."""
    initializers = {i.name: i for i in graph.initializer}
    first: dict[str, tuple[str, str]] = {}
    for node in graph.node:
        if node.name not in chosen:
            continue
        index = WEIGHT_INPUT[node.op_type]
        weight, key = node.input[index], (chosen[node.name], node.op_type)
        if first.setdefault(weight, key) == key:
            continue
        copy = f"{weight}_{key[0]}_{key[1]}"
        if copy not in initializers:
            initializers[copy] = onnx.TensorProto()
            initializers[copy].CopyFrom(initializers[weight])
            initializers[copy].name = copy
            graph.initializer.append(initializers[copy])
        node.input[index] = copy


def _gptq_record(fitted: Mapping[str, str], calibration: list[TextBatch] | None) -> dict:
    matmuls = sum(op == "MatMul" for op in fitted.values())
    if not matmuls:
        return {}
    return {"gptq": {"matmuls": matmuls, "act_order": gptq.ACT_ORDER, "damping": gptq.DAMPING,
                     "calibration_tokens": sum(int(b.attention_mask.sum()) for b in calibration)}}


def _own_pass(model: onnx.ModelProto, chosen: Mapping[str, str], calibration: list[TextBatch] | None,
              output: Path, accuracy_level: int = MIXED_ACCURACY_LEVEL) -> dict[str, str]:
    """The weights edgefold quantises itself become MatMulNBits / GatherBlockQuantized; returns their nodes'
    names and op types.
    Those are the 2-bit ones, and with ``calibration`` (GPTQ) the 4-bit MatMuls too, whose inputs are measured on
    the graph as it is, staged next to ``output``; without it, rounding with a clipped scale."""
    mine = [node for node in model.graph.node if node.op_type in ("MatMul", "Gather")
            and (chosen.get(node.name) in OWN_PRECISIONS
                 or (calibration is not None and node.op_type == "MatMul" and chosen.get(node.name) in INT4_BLOCKS))]
    if not mine:
        return {}
    matmuls = [node for node in mine if node.op_type == "MatMul"]
    moments = {} if calibration is None or not matmuls else nbits.graph_moments(
        model, calibration, output.with_name(f".{output.stem}.moments.onnx"))
    initializers = {i.name: i for i in model.graph.initializer}
    readers: dict[tuple[str, str], list[onnx.NodeProto]] = {}
    for node in mine:
        readers.setdefault((node.op_type, node.input[WEIGHT_INPUT[node.op_type]]), []).append(node)
    for (op, weight), group in readers.items():  # a weight several nodes read is quantised once, for all of them
        bits, block = LOW_BITS[chosen[group[0].name]]
        values = numpy_helper.to_array(initializers[weight])
        if op == "Gather":  # rows looked up one at a time: blocks along the hidden dimension, no input to weigh
            nbits.replace_gathers(model.graph, group, gptq.quantize_weight(values.T, bits, block))
            continue
        hessian = sum(moments[node.input[0]] for node in group) / len(group) if moments else None
        codes = gptq.quantize_weight(values, bits, block, hessian, act_order=gptq.ACT_ORDER)
        nbits.replace_matmuls(model.graph, group, codes, accuracy_level)
    read = _read_names(model.graph)
    for initializer in [i for i in model.graph.initializer if i.name not in read]:
        model.graph.initializer.remove(initializer)
    nbits.ensure_microsoft_opset(model)
    return {node.name: node.op_type for node in mine}


def _int4_passes(model: onnx.ModelProto, chosen: Mapping[str, str]) -> onnx.ModelProto:
    """One MatMulNBits pass per block size, over that block size's nodes only."""
    for precision, block_size in INT4_BLOCKS.items():
        nodes = {name for name, p in chosen.items() if p == precision}
        if not nodes:
            continue
        ops = tuple(sorted({n.op_type for n in model.graph.node if n.name in nodes}))  # Gather: opset 21 (int4)
        # nodes_to_include adds to op_types_to_quantize rather than narrowing it: exclude every other node ("" too:
        # unnamed nodes cannot be listed).
        others = {n.name for n in model.graph.node if n.name not in nodes} | {""}
        model = _int4(model, block_size, ops, exclude=others, accuracy_level=MIXED_ACCURACY_LEVEL).model
        _drop_repeated_initializers(model.graph)
    return model


def _drop_repeated_initializers(graph: onnx.GraphProto) -> None:
    # Two nodes that read one weight each add its quantised form (same name, same values): keep one.
    seen: set[str] = set()
    for initializer in list(graph.initializer):
        if initializer.name in seen:
            graph.initializer.remove(initializer)
        seen.add(initializer.name)


def _int8_pass(model: onnx.ModelProto, output: Path, chosen: Mapping[str, str], target: str) -> None:
    """The int8 nodes through ``quantize_dynamic``, which reads a file: staged next to ``output``, then removed."""
    nodes = [name for name, precision in chosen.items() if precision == "int8"]
    if not nodes:  # an empty list means every node to quantize_dynamic
        passes.save(model, output)
        return
    staged = output.with_name(f".{output.stem}.int4.onnx")
    try:
        passes.save(model, staged)
        _int8(staged, output, ["MatMul", "Gather"], False, target, nodes=nodes)
    finally:
        passes.remove(staged)
        staged.with_name(f"{staged.stem}-inferred.onnx").unlink(missing_ok=True)  # quantize_dynamic's, if it failed


def _describe(precision: str, target: str) -> str:
    if precision == "int8":
        return f"{_int8_weights(target)}, activations uint8 dynamic"
    if precision in OWN_PRECISIONS:
        bits, block = LOW_BITS[precision]
        return f"int{bits} symmetric weight-only, blocks of {block}, int8 compute (accuracy_level {MIXED_ACCURACY_LEVEL})"
    if precision in INT4_BLOCKS:
        return (f"int4 symmetric weight-only, blocks of {INT4_BLOCKS[precision]}, "
                f"int8 compute (accuracy_level {MIXED_ACCURACY_LEVEL})")
    return "fp32"
