import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from edgefold.exporter.onnx.passes import (
    check_no_dense_copies,
    store_shared_weights_once,
)
from edgefold.runtime import EdgefoldError


def _graph_with_repeats() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    a = rng.standard_normal((4, 6)).astype(np.float32)
    inits = [numpy_helper.from_array(a, "a"), numpy_helper.from_array(a.copy(), "a_copy"),
             numpy_helper.from_array(np.ascontiguousarray(a.T), "a_t")]
    nodes = [helper.make_node("MatMul", ["x", "a"], ["y1"]), helper.make_node("MatMul", ["x", "a_copy"], ["y2"]),
             helper.make_node("MatMul", ["y1", "a_t"], ["y3"]), helper.make_node("Add", ["y2", "y2"], ["y4"]),
             helper.make_node("MatMul", ["y4", "a_t"], ["y5"]), helper.make_node("Add", ["y3", "y5"], ["out"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, [2, 4])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def test_exact_and_transposed_repeats_are_stored_once_and_compute_the_same():
    model = _graph_with_repeats()
    x = np.random.default_rng(1).standard_normal((2, 4)).astype(np.float32)
    before = _run(model, x)
    assert store_shared_weights_once(model) == 2
    assert [i.name for i in model.graph.initializer] == ["a"]
    onnx.checker.check_model(model)
    np.testing.assert_allclose(_run(model, x), before, rtol=1e-6)


def test_a_dense_copy_of_a_compressed_shape_is_caught():
    model = _graph_with_repeats()
    # the compressed torch model holds one (4 x 6) matrix; the graph holds three of that shape
    try:
        check_no_dense_copies(model, {(4, 6)}, [(4, 6)])
    except EdgefoldError as error:
        assert "dense copy" in str(error)
    else:
        raise AssertionError("a dense copy went unnoticed")
    check_no_dense_copies(model, {(4, 6)}, [(4, 6), (6, 4), (4, 6)])  # all three accounted for
