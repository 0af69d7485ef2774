"""``--quantize``: int8 dynamic and int4 MatMulNBits on the folded graph, checked against the fp32 graph."""

from collections import Counter

import onnx
import pytest
import transformers
from conftest import MINILM

from edgefold.exporter import CompressionConfig, GraphConfig, export
from edgefold.exporter.onnx.export import backend
from edgefold.cli import main
from edgefold.runtime.generate import greedy
from edgefold.runtime.manifest import read_manifest
from edgefold.runtime.session import make_feed, open_session, run


def _ops(folder):
    return Counter(n.op_type for n in onnx.load(str(folder / "model.onnx")).graph.node)


@pytest.mark.slow
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
    if backend() == "optimum":  # per layer: QAttention (q, k, v), then attention-output, ffn-in and ffn-out
        assert ops["QAttention"] == 6 and ops["MatMulInteger"] == 3 * 6 and ops["DynamicQuantizeLinear"] > 0
    else:  # onnxruntime's fuser finds no attention in a dynamo graph (README): all six Linears a layer, int8
        assert "QAttention" not in ops and ops["MatMulInteger"] == 6 * 6 and ops["DynamicQuantizeLinear"] > 0
    # quantisation moves the outputs, a little: measured against both the fp32 graph and the original
    assert 0.9 < q["fidelity_vs_original"]["mean_cosine"] < 1.0 and q["max_abs_diff_vs_fp32"] > 0
    assert int8["parity"]["max_abs_diff"] <= 1e-3  # the fp32 fold itself was checked first
    session = open_session(tmp_path / "int8" / "model.onnx")
    inputs = transformers.AutoTokenizer.from_pretrained(tmp_path / "int8")(["int8 on a phone"], return_tensors="np")
    hidden = run(session, None, make_feed(session, inputs["input_ids"], inputs["attention_mask"]))[0]
    assert hidden.shape == (1, inputs["input_ids"].shape[1], 384)


@pytest.mark.slow
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
    session = open_session(folder / "model.onnx")
    prompt = tokenizer(["Once upon a time"], return_tensors="np", return_token_type_ids=False)
    tokens = greedy(session, prompt["input_ids"], prompt["attention_mask"], 3)
    assert tokens.shape == (1, prompt["input_ids"].shape[1] + 3)


def test_unknown_scheme_is_one_line(capsys, tiny_model, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        main(["export", str(tiny_model("bert-fill-mask")), str(tmp_path / "out"), "--quantize", "int2"])
    assert exit_info.value.code == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "invalid choice: 'int2'" in line and not (tmp_path / "out").exists()
