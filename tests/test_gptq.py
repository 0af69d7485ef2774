"""Data-aware low-bit weights: GPTQ's error feedback against rounding to nearest on held-out inputs, the
MatMulNBits packing through onnxruntime's own kernel, and GPTQ in a real exported graph and through the CLI."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from edgefold.cli import main
from edgefold.exporter import CompressionConfig, GraphConfig, export
from edgefold.exporter.calibration.batches import onnx_outputs, tokenize
from edgefold.exporter.calibration.corpus import SHIPPED_CALIBRATION
from edgefold.exporter.graph import gptq
from edgefold.exporter.graph.nbits import ensure_microsoft_opset, graph_moments, input_moments, replace_matmuls
from edgefold.exporter.graph.quantize import quantize_modules
from edgefold.runtime import EdgefoldError
from edgefold.runtime.texts import shipped_texts


def _layer(k=96, n=48, samples=3000, seed=0):
    """A weight and inputs with correlated, unequal directions (as activations have), in a fit and a held-out half."""
    g = np.random.default_rng(seed)
    mixing = np.eye(k) + 2 * g.standard_normal((k, k)) / np.sqrt(k)
    scale = 1 + 4 * (g.random(k) < 0.1)  # a few inputs of much more energy
    x = (g.standard_normal((2 * samples, k)) @ mixing) * scale
    return g.standard_normal((k, n)).astype(np.float32) * 0.1, x[:samples], x[samples:]


def _output_error(weight, codes, x) -> float:
    return float(np.mean((x @ weight - x @ codes.dequantized()) ** 2) / np.mean((x @ weight) ** 2))


@pytest.mark.parametrize("bits", gptq.BITS)
@pytest.mark.parametrize("act_order", [False, True])
def test_gptq_moves_held_out_outputs_less_than_rounding(bits, act_order):
    weight, fit, held_out = _layer()
    moments = fit.T @ fit / len(fit)
    rounded = gptq.quantize_weight(weight, bits, 32)
    fitted = gptq.quantize_weight(weight, bits, 32, moments, act_order=act_order)
    assert _output_error(weight, fitted, held_out) < 0.8 * _output_error(weight, rounded, held_out)


def test_inputs_that_are_never_active_cost_nothing_and_break_nothing():
    weight, fit, held_out = _layer(k=64)
    fit[:, :10] = held_out[:, :10] = 0  # dead inputs: H has zero rows
    fitted = gptq.quantize_weight(weight, 4, 32, fit.T @ fit / len(fit), act_order=True)
    assert np.isfinite(fitted.dequantized()).all()
    assert _output_error(weight, fitted, held_out) < _output_error(weight, gptq.quantize_weight(weight, 4, 32), held_out)


def test_a_fit_is_kept_for_the_same_weight_and_moments_only():
    """A search fits most modules again for each candidate: the same inputs give the kept codes, any other input
    (moments, bits, order) a fit of its own, and the kept codes cannot be changed by a caller."""
    weight, fit, _ = _layer(k=64)
    moments = fit.T @ fit / len(fit)
    first = gptq.quantize_weight(weight, 4, 32, moments)
    assert gptq.quantize_weight(weight.copy(), 4, 32, moments.copy()) is first
    others = [gptq.quantize_weight(weight, 4, 32, 2 * moments + np.eye(64)), gptq.quantize_weight(weight, 2, 32, moments),
              gptq.quantize_weight(weight, 4, 32, moments, act_order=True)]
    assert all(other is not first for other in others)
    assert not np.array_equal(others[0].codes, first.codes)
    with pytest.raises(ValueError):
        first.codes[0, 0] = 0


@settings(max_examples=25, deadline=None)
@given(k=st.integers(1, 80), n=st.integers(1, 12), bits=st.sampled_from(gptq.BITS), block=st.sampled_from([16, 32]),
       seed=st.integers(0, 2**16))
def test_each_block_rounds_no_worse_than_onnxruntimes_scale(k, n, bits, block, seed):
    """The clipping grid starts at onnxruntime's RTN scale (largest magnitude to the lowest level), so no block
    does worse than it; and every code is a level of the bit width."""
    weight = np.random.default_rng(seed).standard_normal((k, n)).astype(np.float32)
    codes = gptq.quantize_weight(weight, bits, block)
    assert codes.codes.max() < 2 ** bits and codes.codes.shape == (n, -(-k // block) * block)
    padded = np.zeros((-(-k // block) * block, n), np.float32)
    padded[:k] = weight
    blocks = padded.T.reshape(n, -1, block)
    largest = np.take_along_axis(blocks, np.abs(blocks).argmax(-1)[..., None], -1)
    scale = np.where(largest == 0, 1, largest / -(2 ** (bits - 1)))
    onnxruntime_error = ((np.clip(np.round(blocks / scale), -(2 ** (bits - 1)), 2 ** (bits - 1) - 1) * scale
                          - blocks) ** 2).sum(-1)
    levels = codes.codes.astype(np.float32).reshape(n, -1, block) - 2 ** (bits - 1)
    ours = ((levels * codes.scales[..., None] - blocks) ** 2).sum(-1)
    assert (ours <= onnxruntime_error * (1 + 1e-5) + 1e-9).all()


@settings(max_examples=12, deadline=None)
@given(k=st.integers(8, 200), n=st.integers(1, 40), bits=st.sampled_from(gptq.BITS),
       block=st.sampled_from([32, 64, 128]), seed=st.integers(0, 2**16))
def test_onnxruntimes_matmulnbits_computes_with_the_packed_codes(k, n, bits, block, seed):
    g = np.random.default_rng(seed)
    weight = g.standard_normal((k, n)).astype(np.float32)
    x = g.standard_normal((2, 3, k)).astype(np.float32)
    codes = gptq.quantize_weight(weight, bits, block, np.cov(g.standard_normal((4 * k, k)).T))
    node = helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, k])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(weight, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    replace_matmuls(model.graph, [model.graph.node[0]], codes, accuracy_level=0)
    del model.graph.initializer[0]
    ensure_microsoft_opset(model)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    y = session.run(None, {"x": x})[0]
    np.testing.assert_allclose(y, x @ codes.dequantized(), rtol=1e-4, atol=1e-4 * np.abs(y).max())


@pytest.fixture(scope="module")
def tiny_bert_graph(tmp_path_factory, tiny_model):
    folder = tmp_path_factory.mktemp("tiny-bert")
    export(tiny_model("bert-text-classification"), folder, CompressionConfig(method="none"),
           GraphConfig(optimize="none"), progress=False, overwrite=True)
    return folder


def _calibration(folder, count=128):
    import transformers

    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    return tokenize(tokenizer, shipped_texts(SHIPPED_CALIBRATION)[:count], 64)


@pytest.mark.slow
def test_a_gptq_graph_is_closer_to_fp32_than_rounding_on_text_it_did_not_fit(tiny_bert_graph, tmp_path):
    source = tiny_bert_graph / "model.onnx"
    modules = {f"bert.encoder.layer.{i}": "int4-32" for i in range(2)}
    rounded = quantize_modules(source, tmp_path / "rtn.onnx", modules)
    fitted = quantize_modules(source, tmp_path / "gptq.onnx", modules, algorithm="gptq",
                              calibration=_calibration(tiny_bert_graph))
    assert fitted["algorithm"] == "gptq" and fitted["gptq"]["matmuls"] == 12  # 6 Linears a layer
    assert rounded["quantized_ops"] == fitted["quantized_ops"] == {"MatMulNBits": 12}
    assert fitted["weight_bytes"]["after"] == rounded["weight_bytes"]["after"]  # the same storage, other codes
    import transformers

    held_out = tokenize(transformers.AutoTokenizer.from_pretrained(tiny_bert_graph),
                        shipped_texts("evaluation.txt")[:64], 64)
    reference = onnx_outputs(source, held_out)

    def error(path):
        return sum(float(((a - b) ** 2).sum()) for a, b in zip(onnx_outputs(path, held_out), reference))

    assert error(tmp_path / "gptq.onnx") < error(tmp_path / "rtn.onnx")
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert not leftovers, leftovers  # the staged graph the inputs were measured on is gone


def test_a_graphs_input_moments_are_measured_once_and_anew_for_another_graph(tiny_bert_graph, tmp_path):
    """A search's candidates quantise one fp32 graph many times: its moments are measured once per process; a graph
    with other weights is measured again."""
    model = onnx.load(str(tiny_bert_graph / "model.onnx"))
    batches = _calibration(tiny_bert_graph, 32)
    first = graph_moments(model, batches, tmp_path / "moments.onnx")
    assert graph_moments(model, batches, tmp_path / "moments.onnx") is first
    last = [node.input[0] for node in model.graph.node if node.op_type == "MatMul" and node.input[0] in first][-1]
    np.testing.assert_array_equal(input_moments(model, [last], batches, tmp_path / "moments.onnx")[last], first[last])
    weights = {i.name: i for i in model.graph.initializer}
    earliest = next(weights[n.input[1]] for n in model.graph.node if n.op_type == "MatMul" and n.input[1] in weights)
    earliest.CopyFrom(numpy_helper.from_array(2 * numpy_helper.to_array(earliest), earliest.name))
    other = graph_moments(model, batches, tmp_path / "moments.onnx")
    assert other is not first and not np.allclose(other[last], first[last])
    assert not list(tmp_path.iterdir())  # the staged graphs are gone


@pytest.mark.slow
def test_a_weight_several_matmuls_read_is_fitted_once_for_all_of_them(tiny_model, tmp_path):
    folder = tmp_path / "shared"
    export(tiny_model("roberta-feature-extraction"), folder,
           CompressionConfig(method="svd-shared", targets="ffn", ratio=2.0), GraphConfig(optimize="none"),
           progress=False)
    modules = {f"encoder.layer.{i}.{part}": "int4-32" for i in range(2) for part in ("intermediate", "output")}
    report = quantize_modules(folder / "model.onnx", tmp_path / "gptq.onnx", modules, algorithm="gptq",
                              calibration=_calibration(folder, 32))
    graph = onnx.load(str(tmp_path / "gptq.onnx")).graph
    quantized = [n for n in graph.node if n.op_type == "MatMulNBits"]
    assert report["gptq"]["matmuls"] == len(quantized) == 8  # each FFN Linear: two factors
    stored = {n.input[1] for n in quantized}
    assert len(stored) < len(quantized)  # the readers of a shared basis read one copy of its codes


@pytest.mark.slow
def test_the_cli_exports_gptq_int4_and_refuses_it_where_nothing_is_4_bit(tiny_model, tmp_path, capsys):
    source = tiny_model("bert-text-classification")
    out = tmp_path / "gptq"
    assert main(["export", str(source), str(out), "--method", "none", "--quantize", "int4",
                 "--quant-algorithm", "gptq", "--optimize", "none", "--quiet"]) == 0
    manifest = json.loads((out / "edgefold.json").read_text())
    assert manifest["quantization"]["algorithm"] == "gptq" and manifest["quantization"]["gptq"]["matmuls"] > 0
    capsys.readouterr()
    for flags in (["--quantize", "int8"], ["--method", "svd"]):
        assert main(["export", str(source), str(tmp_path / "refused"), *flags, "--quant-algorithm", "gptq"]) == 2
        error = capsys.readouterr().err.strip()
        assert "gptq fits 4-bit (and 2-bit) weights" in error and len(error.splitlines()) == 1
        assert not (tmp_path / "refused").exists()


def test_an_unknown_algorithm_or_no_calibration_text_is_refused():
    with pytest.raises(EdgefoldError, match="unknown --quant-algorithm 'awq'"):
        GraphConfig(quantize="int4", algorithm="awq")
    with pytest.raises(EdgefoldError, match="none was given"):
        quantize_modules(None, None, {}, algorithm="gptq", calibration=[])
