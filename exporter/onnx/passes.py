"""Passes over an exported ONNX graph: store shared weights once, and check that no dense copy survived."""

from __future__ import annotations

import hashlib
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
from google.protobuf.message import EncodeError
from onnx import helper, numpy_helper

from edgefold.runtime import EdgefoldError

#: onnx.save refuses protobufs over 2 GB: past this the weights go to one external data file, in every step.
EXTERNAL_DATA_THRESHOLD = 1_800_000_000


def _digest(array: np.ndarray) -> tuple:
    return array.dtype.str, array.shape, hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


def store_shared_weights_once(model: onnx.ModelProto) -> int:
    """Replace initializers that repeat another one, exactly or transposed, by a reference to it.

    The TorchScript exporter folds ``weight.t()`` into a fresh initializer, so a head tied to the embedding
    (GPT-2's lm_head, BERT's MLM decoder) is written twice. A transposed repeat becomes a Transpose node on
    the kept initializer (onnxruntime folds it when the session is created). Returns how many were removed.
    """
    graph = model.graph
    kept: dict[tuple, str] = {}
    renamed: dict[str, str] = {}
    transposes = []
    for init in list(graph.initializer):
        array = numpy_helper.to_array(init)
        key = _digest(array)
        if key in kept:
            renamed[init.name] = kept[key]
        elif array.ndim == 2 and array.size > 1 and (t_key := _digest(array.T)) in kept:
            transposes.append(helper.make_node("Transpose", [kept[t_key]], [init.name], perm=[1, 0],
                                               name=f"edgefold_shared_{init.name}"))
        else:
            kept[key] = init.name
            continue
        graph.initializer.remove(init)
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name in renamed:
                node.input[i] = renamed[name]
    for position, node in enumerate(transposes):
        graph.node.insert(position, node)
    return len(renamed) + len(transposes)


def _shape_census(shapes) -> Counter:
    # Orientation-free: the exporter stores Linear weights transposed.
    return Counter(tuple(sorted(shape)) for shape in shapes if len(shape) == 2)


def check_no_dense_copies(model: onnx.ModelProto, dense_shapes: set[tuple[int, int]],
                          torch_shapes: list[tuple[int, ...]]) -> None:
    """Fail when the graph holds more matrices of a compressed weight's shape than the compressed model does.

    ``dense_shapes`` are the shapes of the weights that were factorised; ``torch_shapes`` the shapes of every
    parameter and buffer of the compressed model. A product of two factors folded back into one constant
    (a dense copy) would show up as one extra matrix of its weight's shape.
    """
    floats = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16, onnx.TensorProto.DOUBLE}
    in_graph = _shape_census(tuple(i.dims) for i in model.graph.initializer if i.data_type in floats)
    in_model = _shape_census(torch_shapes)
    for shape in _shape_census(dense_shapes):
        if in_graph[shape] > in_model[shape]:
            raise EdgefoldError(
                f"the ONNX graph holds {in_graph[shape]} weight(s) of shape {shape} where the compressed model "
                f"has {in_model[shape]}: a dense copy of a compressed weight survived the export"
            )


def external_data_path(path: Path) -> Path:
    """Where a graph's weights go when they do not fit in it: ``model.onnx_data``, as optimum names it."""
    return path.with_name(f"{path.name}_data")


def graph_files(path: Path) -> list[Path]:
    """The graph and every external data file its tensors point to: what must travel with it."""
    graph = onnx.load(str(path), load_external_data=False).graph
    locations = {entry.value for tensor in _tensors(graph) if tensor.data_location == onnx.TensorProto.EXTERNAL
                 for entry in tensor.external_data if entry.key == "location"}
    return [path, *(path.parent / location for location in sorted(locations))]


def uses_external_data(path: Path) -> bool:
    return len(graph_files(path)) > 1


def save(model: onnx.ModelProto, path: Path) -> list[Path]:
    """Write the graph, with external data only when it would not fit in one protobuf; returns the files."""
    _remove_sidecars(path)
    path.unlink(missing_ok=True)
    external = _too_large(model)
    onnx.save_model(model, str(path), save_as_external_data=external, all_tensors_to_one_file=True,
                    location=external_data_path(path).name)
    return graph_files(path)


def _too_large(model: onnx.ModelProto) -> bool:
    try:
        return model.ByteSize() > EXTERNAL_DATA_THRESHOLD
    except EncodeError:  # protobuf cannot even size a message past 2 GiB
        return True


def settle(source: Path, target: Path) -> list[Path]:
    """Move a graph that a tool wrote (its external data named as that tool names it) to ``target``, saved as
    :func:`save` saves; returns the files. A graph without external data is only renamed."""
    if not uses_external_data(source):
        _remove_sidecars(target)
        source.replace(target)
        return [target]
    model = onnx.load(str(source))  # the weights are in memory now: their files can go
    remove(source)
    return save(model, target)


def remove(path: Path) -> None:
    """Delete a graph and its external data (a half-written graph's, by their usual names)."""
    try:
        data = graph_files(path)[1:] if path.is_file() else []
    except Exception:  # noqa: BLE001  protobuf's DecodeError, onnx's errors: unreadable either way
        data = []
    for file in data:
        file.unlink(missing_ok=True)
    path.unlink(missing_ok=True)
    _remove_sidecars(path)


def _remove_sidecars(path: Path) -> None:
    # onnxruntime's tools write "<graph>.data", the dynamo exporter too; optimum and edgefold "<graph>_data"
    for name in (f"{path.name}.data", f"{path.name}_data"):
        path.with_name(name).unlink(missing_ok=True)


def _tensors(graph: onnx.GraphProto):
    """Every tensor stored in ``graph``: initializers, and constants held by nodes (subgraphs included)."""
    yield from graph.initializer
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.TENSOR:
                yield attribute.t
            for subgraph in (*attribute.graphs, *([attribute.g] if attribute.HasField("g") else [])):
                yield from _tensors(subgraph)
