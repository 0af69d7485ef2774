"""The exporter on either stack (transformers 5's own exporter, or optimum-onnx on transformers 4.57): every
architecture writes the same folder contract, with parity, and generates through onnxruntime where optimum's
ORTModel classes cannot load it. CI runs this file on both stacks."""

import numpy as np
import onnx
import pytest
import torch
import transformers

from edgefold.exporter import CompressionConfig, export
from edgefold.exporter.onnx.export import TASK_AUTO_CLASSES, backend, export_onnx, ort_model_class
from edgefold.exporter.source.architectures import LINEAR_KINDS, spec_for
from edgefold.runtime import EdgefoldError
from edgefold.runtime.generate import greedy
from edgefold.runtime.session import make_feed, open_session, run

TRANSFORMERS_5 = int(transformers.__version__.split(".")[0]) >= 5
ENCODERS = ["bert-fill-mask", "bert-text-classification", "distilbert-text-classification",
            "roberta-feature-extraction", "xlm-roberta-fill-mask"]
DECODERS = ["gpt2-text-generation", "llama-text-generation", "mistral-text-generation", "qwen2-text-generation",
            "ministral3-text-generation"]
TEXT = ["The quick brown fox jumps over the lazy dog.", "Short one."]


def _load(folder, kind):
    task = next(task for task in TASK_AUTO_CLASSES if kind.endswith(task))
    model = getattr(transformers, TASK_AUTO_CLASSES[task]).from_pretrained(folder).eval()
    return model, transformers.AutoTokenizer.from_pretrained(folder), task


def _dims(value):
    return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]


def test_the_backend_is_the_one_the_installed_transformers_can_run():
    assert backend() == ("transformers" if TRANSFORMERS_5 else "optimum")


@pytest.mark.parametrize("kind", ENCODERS + DECODERS)
@pytest.mark.slow
def test_every_architecture_writes_optimums_folder_contract_with_parity(kind, tiny_model, tmp_path):
    model, tokenizer, task = _load(tiny_model(kind), kind)
    folder = tmp_path / "out"
    graph = onnx.load(str(export_onnx(model, task, folder, tokenizer))).graph
    assert {"config.json", "tokenizer.json", "model.onnx"} <= {f.name for f in folder.iterdir()}

    inputs = {value.name: _dims(value) for value in graph.input}
    outputs = {value.name: _dims(value) for value in graph.output}
    if task == "text-generation":
        layers = model.config.num_hidden_layers
        caches = {f"{prefix}.{layer}.{part}" for prefix in ("past_key_values", "present")
                  for layer in range(layers) for part in ("key", "value")}
        assert set(inputs) | set(outputs) == {"input_ids", "attention_mask", "position_ids", "logits"} | caches
        heads = model.config.num_key_value_heads if hasattr(model.config, "num_key_value_heads") \
            else model.config.num_attention_heads
        width = model.config.hidden_size // model.config.num_attention_heads
        assert inputs["past_key_values.0.key"] == ["batch_size", heads, "past_sequence_length", width]
        assert outputs["present.1.value"][:2] == ["batch_size", heads] and outputs["present.1.value"][3] == width
    else:
        token_types = ["token_type_ids"] if model.config.model_type == "bert" else []
        assert list(inputs) == ["input_ids", "attention_mask", *token_types]
        assert list(outputs) == ["last_hidden_state" if task == "feature-extraction" else "logits"]
    assert inputs["input_ids"] == ["batch_size", "sequence_length"]

    # per-module quantisation finds a module's weight by node names in its scope, as TorchScript names them
    spec = spec_for(model.config.model_type)
    scoped = {node.name.replace("/", ".") for node in graph.node}
    for name, _ in model.named_modules():
        if set(spec.kinds_of(name)) & set(LINEAR_KINDS):
            assert any(node.startswith(f".{name}.") for node in scoped), name

    tokenizer.padding_side = "right"
    batch = tokenizer(TEXT, padding=True, return_tensors="np")
    session = open_session(folder / "model.onnx")
    feed = make_feed(session, batch["input_ids"], batch["attention_mask"])
    got = run(session, [graph.output[0].name], feed)[0]
    with torch.no_grad():
        kept = {k: torch.tensor(v) for k, v in batch.items() if k in feed}
        result = model(**kept)
    expected = (result.last_hidden_state if task == "feature-extraction" else result.logits).numpy()
    if got.ndim == 3:  # per-token outputs: the real tokens
        mask = batch["attention_mask"].astype(bool)
        got, expected = got[mask], expected[mask]
    np.testing.assert_allclose(got, expected, atol=1e-4)


@pytest.mark.parametrize("kind", DECODERS)
@pytest.mark.slow
def test_greedy_generation_through_onnxruntime_matches_transformers(kind, tiny_model, tmp_path):
    """The alternative to ``ORTModelForCausalLM.generate`` on transformers 5: the KV cache fed back each step."""
    model, tokenizer, task = _load(tiny_model(kind), kind)
    export_onnx(model, task, tmp_path, tokenizer)
    tokenizer.padding_side = "left"
    batch = tokenizer(["Once upon a time there was", "Hello"], padding=True, return_tensors="np",
                      return_token_type_ids=False)
    generated = greedy(open_session(tmp_path / "model.onnx"), batch["input_ids"], batch["attention_mask"], 6)
    with torch.no_grad():
        expected = model.generate(**{k: torch.tensor(v) for k, v in batch.items()}, max_new_tokens=6,
                                  do_sample=False, pad_token_id=0)
    np.testing.assert_array_equal(generated, expected.numpy())


@pytest.mark.slow
def test_greedy_refuses_a_graph_without_a_cache(tiny_model, tmp_path):
    model, tokenizer, task = _load(tiny_model("bert-fill-mask"), "bert-fill-mask")
    export_onnx(model, task, tmp_path, tokenizer)
    with pytest.raises(EdgefoldError, match="no KV cache"):
        greedy(open_session(tmp_path / "model.onnx"), np.ones((1, 3), np.int64), np.ones((1, 3), np.int64), 2)


@pytest.mark.slow
def test_a_transformers_5_only_architecture_compresses_and_exports(tiny_model, tmp_path):
    folder = tiny_model("ministral3-text-generation")  # skips below transformers 5, naming the class
    manifest = export(str(folder), tmp_path / "out", CompressionConfig(ratio=2), progress=False)
    assert manifest["task"] == "text-generation"
    assert manifest["parity"]["max_abs_diff"] <= 1e-3
    assert {k for m in manifest["modules"] for k in m["kinds"]} == {"embeddings", *LINEAR_KINDS}


@pytest.mark.skipif(not TRANSFORMERS_5, reason="on transformers 4.57 optimum's ORTModel classes load the folder "
                                                 "(tests/test_architectures.py)")
def test_optimum_loading_on_transformers_5_says_what_to_install_instead():
    with pytest.raises(EdgefoldError, match=r"edgefold\[export-legacy\].*onnxruntime"):
        ort_model_class("text-generation")
