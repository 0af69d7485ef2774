"""``--quantize``: int8 dynamic and int4 MatMulNBits on the folded graph, checked against the fp32 graph."""

from collections import Counter

import onnx
import pytest
import transformers
from conftest import MINILM

from edgefold.exporter import CompressionConfig, GraphConfig, export
from edgefold.exporter.onnx.export import ort_model_class
from edgefold.runtime.cli import main
from edgefold.runtime.manifest import read_manifest


def _ops(folder):
    return Counter(n.op_type for n in onnx.load(str(folder / "model.onnx")).graph.node)


def test_int8_on_the_real_minilm(tmp_path, minilm_variants):
    fp32 = read_manifest(minilm_variants["reference"])
    int8 = export(str(MINILM), tmp_path / "int8", CompressionConfig(method="none"),
                  GraphConfig(optimize="onnxruntime", quantize="int8", per_channel=True), progress=False)
    # fused, then quantised: the Attention fusion is quantised too, and the embedding table is not left in fp32
    # inside an EmbedLayerNormalization
    assert int8["totals"]["bytes_after"] < 0.3 * fp32["totals"]["bytes_after"]
    q = int8["quantization"]
    assert q["scheme"] == "int8" and q["per_channel"]
    ops = _ops(tmp_path / "int8")
    # per layer: QAttention (q, k, v), then attention-output, ffn-in and ffn-out
    assert ops["QAttention"] == 6 and ops["MatMulInteger"] == 3 * 6 and ops["DynamicQuantizeLinear"] > 0
    # quantisation moves the outputs, a little: measured against both the fp32 graph and the original
    assert 0.9 < q["fidelity_vs_original"]["mean_cosine"] < 1.0 and q["max_abs_diff_vs_fp32"] > 0
    assert int8["parity"]["max_abs_diff"] <= 1e-3  # the fp32 fold itself was checked first
    model = ort_model_class("feature-extraction").from_pretrained(tmp_path / "int8")
    inputs = transformers.AutoTokenizer.from_pretrained(tmp_path / "int8")(["int8 on a phone"], return_tensors="pt")
    assert model(**inputs).last_hidden_state.shape == (1, inputs["input_ids"].shape[1], 384)


def test_int4_on_a_factorised_causal_lm(tiny_model, tmp_path):
    folder = tmp_path / "gpt2-int4"
    manifest = export(str(tiny_model("gpt2-text-generation")), folder, CompressionConfig(targets="ffn", ratio=1.5),
                      GraphConfig(quantize="int4"), progress=False)
    assert manifest["quantization"]["quantized_ops"]["MatMulNBits"] > 0 and _ops(folder)["MatMulNBits"] > 0
    assert _ops(folder)["GatherBlockQuantized"] >= 1  # the token table (and positions) in int4 too
    # every factor's inner dimension (its rank) is a whole number of int4 blocks, so every factor is quantised
    ranks = [m["rank"] for m in manifest["modules"] if m["status"] == "factorised"]
    assert manifest["rank_multiple"] == 32 and ranks and all(r % 32 == 0 for r in ranks)
    graph = onnx.load(str(folder / "model.onnx")).graph
    weights = {i.name for i in graph.initializer}
    assert not [n.name for n in graph.node if n.op_type == "MatMul" and n.input[1] in weights], "a weight left fp32"
    assert manifest["quantization"]["fidelity_vs_fp32"]["mean_cosine"] > 0.9
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    model = ort_model_class("text-generation").from_pretrained(folder)
    prompt = tokenizer(["Once upon a time"], return_tensors="pt", return_token_type_ids=False)
    assert model.generate(**prompt, max_new_tokens=3, do_sample=False, pad_token_id=0).shape[1] > 3


def test_unknown_scheme_is_one_line(capsys, tiny_model, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        main(["export", str(tiny_model("bert-fill-mask")), str(tmp_path / "out"), "--quantize", "int2"])
    assert exit_info.value.code == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "invalid choice: 'int2'" in line and not (tmp_path / "out").exists()
