"""What happens to the folded graph: fusions kept where measured faster, int8 for a target CPU, .ort format."""

from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import transformers
from conftest import MINILM

from edgefold.exporter import CompressionConfig, GraphConfig, export
from edgefold.exporter.onnx.export import backend
from edgefold.cli import main
from edgefold.runtime.generate import greedy
from edgefold.runtime.session import make_feed, open_session

EMBEDDINGS_FREQ = CompressionConfig(targets="embeddings", ratio=2.5, frequency=True)


def _ops(path):
    return Counter(n.op_type for n in onnx.load(str(path)).graph.node)


def _run(path, texts, tokenizer):
    session = open_session(path)
    encoded = tokenizer(texts, padding=True, return_tensors="np")
    return session.run(None, make_feed(session, encoded["input_ids"], encoded["attention_mask"]))[0]


def test_auto_measures_every_candidate_and_keeps_the_fastest(minilm_r2):
    """The shared R = 2 export ran with the default, --optimize auto."""
    optimization = minilm_r2[1]["optimization"]
    candidates = optimization["candidates"]
    assert optimization["mode"] == "auto" and {"none", "onnxruntime", "onnxscript"} <= set(candidates)
    timed = {name: c["p50_ms"] for name, c in candidates.items() if "error" not in c}
    assert optimization["chosen"] == "none" or timed[optimization["chosen"]] == min(timed.values())
    for name, candidate in candidates.items():
        assert name == "none" or candidate["max_abs_diff"] <= 1e-3
    # factorised Q/K/V: onnxscript still fuses the layer norms and the GELU, onnxruntime loses its Attention
    assert candidates["onnxscript"]["fused_ops"]["SkipLayerNormalization"] == 12
    assert "Attention" not in candidates["onnxruntime"]["fused_ops"]
    kept = _ops(minilm_r2[0] / "model.onnx")
    assert all(kept[op] == n for op, n in candidates[optimization["chosen"]]["fused_ops"].items())


@pytest.mark.slow
def test_forced_fusion_int8_arm64_and_ort_format_on_the_real_minilm(tmp_path):
    folder = tmp_path / "minilm"
    manifest = export(str(MINILM), folder, EMBEDDINGS_FREQ,
                      GraphConfig(optimize="onnxruntime", quantize="int8", target="arm64", formats=("onnx", "ort")),
                      progress=False)
    # factorised embeddings: EmbedLayerNormalization is lost, the Attention fusion survives (and is quantised);
    # onnxruntime's fuser finds no attention in a dynamo graph (README), only its norms
    attention = 6 if backend() == "optimum" else 0
    assert manifest["optimization"]["chosen"] == "onnxruntime"
    fused = manifest["optimization"]["candidates"]["onnxruntime"]["fused_ops"]
    assert fused.get("Attention", 0) == attention and fused["SkipLayerNormalization"] == 2 * 6
    assert "EmbedLayerNormalization" not in fused
    ops = _ops(folder / "model.onnx")
    assert ops.get("QAttention", 0) == attention and ops["MatMulInteger"] > 0
    quantization = manifest["quantization"]
    assert quantization["target"] == "arm64" and quantization["weights"] == "int8 symmetric"
    assert quantization["fidelity_vs_original"]["mean_cosine"] > 0.9
    # the .ort file gives the .onnx file's outputs, and the operator list names what it runs
    ort_format = manifest["ort_format"]
    assert ort_format["max_abs_diff_vs_onnx"] <= 1e-4 and (folder / "model.ort").stat().st_size > 0
    config = (folder / "required_operators.config").read_text()
    assert "com.microsoft;1;" in config and "MatMulInteger" in config and str(tmp_path) not in config
    assert ("QAttention" in config) == bool(attention)
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    texts = ["a phone runs this", "the board is small"]
    np.testing.assert_allclose(_run(folder / "model.ort", texts, tokenizer),
                               _run(folder / "model.onnx", texts, tokenizer), atol=1e-4)
    assert _run(folder / "model.onnx", texts, tokenizer).shape[-1] == 384


@pytest.mark.slow
def test_onnxscript_fusions_int8_and_ort_format_on_a_factorised_causal_lm(tiny_model, tmp_path):
    folder = tmp_path / "gpt2"
    manifest = export(str(tiny_model("gpt2-text-generation")), folder, CompressionConfig(ratio=2),
                      GraphConfig(optimize="onnxscript", quantize="int8", formats=("onnx", "ort")), progress=False)
    assert manifest["optimization"]["chosen"] == "onnxscript"
    assert manifest["optimization"]["candidates"]["onnxscript"]["max_abs_diff"] <= 1e-3
    assert manifest["quantization"]["fidelity_vs_fp32"]["mean_cosine"] > 0.9
    assert manifest["ort_format"]["max_abs_diff_vs_onnx"] <= 1e-4
    session = ort.InferenceSession(str(folder / "model.ort"), providers=["CPUExecutionProvider"])
    assert {i.name for i in session.get_inputs()} >= {"input_ids", "attention_mask"}
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    session = open_session(folder / "model.onnx")
    prompt = tokenizer(["Once upon a time"], return_tensors="np", return_token_type_ids=False)
    tokens = greedy(session, prompt["input_ids"], prompt["attention_mask"], 3)
    assert tokens.shape == (1, prompt["input_ids"].shape[1] + 3)


@pytest.mark.parametrize("flags, message", [
    (["--optimize", "fast"], "unknown --optimize 'fast'"),
    (["--quantize-for", "arm64"], "--quantize-for arm64 sets int8 weight types: use it with --quantize int8"),
    (["--quantize", "int8", "--quantize-for", "riscv"], "unknown --quantize-for 'riscv'"),
    (["--format", "onnx,tflite"], "unknown --format 'tflite'"),
])
def test_bad_graph_options_are_one_line(capsys, tiny_model, tmp_path, flags, message):
    assert main(["export", str(tiny_model("bert-fill-mask")), str(tmp_path / "out"), *flags]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert message in line and not (tmp_path / "out").exists()
