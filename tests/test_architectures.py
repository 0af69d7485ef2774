"""Every supported family, as a tiny random-weight model: export, parity, run (and, on the legacy stack, load
through optimum)."""

import numpy as np
import onnx
import pytest
import torch
import transformers
from conftest import requires_optimum

from edgefold.exporter import CompressionConfig, export
from edgefold.exporter.onnx.export import ort_model_class
from edgefold.runtime.generate import greedy
from edgefold.runtime.session import make_feed, open_session

KINDS = ["bert-fill-mask", "distilbert-text-classification", "roberta-feature-extraction",
         "xlm-roberta-fill-mask", "gpt2-text-generation", "llama-text-generation", "mistral-text-generation",
         "qwen2-text-generation", "ministral3-text-generation"]
TEXT = ["The quick brown fox jumps over the lazy dog.", "Short one."]


@pytest.fixture(scope="module")
def exported(tiny_model, tmp_path_factory):
    cache = {}

    def get(kind):
        if kind not in cache:
            out = tmp_path_factory.mktemp("arch") / kind
            cache[kind] = out, export(str(tiny_model(kind)), out, CompressionConfig(ratio=2), progress=False)
        return cache[kind]

    return get


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.slow
def test_exports_with_parity_and_every_target_factorised(kind, exported):
    folder, manifest = exported(kind)
    assert kind.endswith(manifest["task"])
    assert manifest["parity"]["max_abs_diff"] <= 1e-3
    kinds = {k for m in manifest["modules"] for k in m["kinds"]}
    assert kinds == {"embeddings", "q", "k", "v", "attention-output", "ffn-in", "ffn-out"}
    assert all(m["status"] == "factorised" for m in manifest["modules"])


@requires_optimum
@pytest.mark.parametrize("kind", KINDS)
def test_loads_through_optimum_and_matches_a_bare_session(kind, exported):
    folder, manifest = exported(kind)
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    batch = tokenizer(TEXT, padding=True, return_tensors="pt")
    model = ort_model_class(manifest["task"]).from_pretrained(folder)
    through_optimum = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])[0]
    session = open_session(folder / "model.onnx")
    bare = session.run([session.get_outputs()[0].name],
                       make_feed(session, batch["input_ids"].numpy(), batch["attention_mask"].numpy()))[0]
    mask = batch["attention_mask"].numpy().astype(bool)
    if bare.ndim == 3:  # per-token outputs: compare the real tokens
        bare, through_optimum = bare[mask], np.asarray(through_optimum)[mask]
    np.testing.assert_allclose(bare, np.asarray(through_optimum), atol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["gpt2-text-generation", "bert-fill-mask", "xlm-roberta-fill-mask"])
def test_tied_head_and_embedding_share_one_stored_table(kind, exported):
    folder, manifest = exported(kind)
    rank = next(m["rank"] for m in manifest["modules"] if m["kinds"] == ["embeddings"])
    vocab = next(m["shape"][0] for m in manifest["modules"] if m["kinds"] == ["embeddings"])
    shapes = [tuple(sorted(i.dims)) for i in onnx.load(str(folder / "model.onnx")).graph.initializer]
    assert shapes.count(tuple(sorted((vocab, rank)))) == 1
    assert manifest["totals"]["shared_weights_stored_once"] >= 1


@requires_optimum
@pytest.mark.parametrize("kind", ["gpt2-text-generation", "llama-text-generation"])
def test_optimum_generates_what_the_runtime_generates(kind, exported):
    folder, _ = exported(kind)
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    tokenizer.padding_side = "left"
    prompt = tokenizer(["Once upon a time", "Hi"], return_tensors="pt", padding=True, return_token_type_ids=False)
    model = ort_model_class("text-generation").from_pretrained(folder)
    generated = model.generate(**prompt, max_new_tokens=4, do_sample=False, pad_token_id=0)
    runtime = greedy(open_session(folder / "model.onnx"), prompt["input_ids"].numpy(),
                     prompt["attention_mask"].numpy(), 4)
    np.testing.assert_array_equal(runtime, generated.numpy())


@pytest.mark.slow
def test_onnx_matches_the_compressed_torch_model_on_new_input(tiny_model, tmp_path):
    """Independently of the export's own parity check: rebuild the compression in torch and compare."""
    from edgefold.exporter import compress_

    folder = tiny_model("bert-fill-mask")
    config = CompressionConfig(targets="embeddings,ffn", ratio=3)
    export(str(folder), tmp_path / "out", config, progress=False)
    model = transformers.BertForMaskedLM.from_pretrained(folder).eval()
    compress_(model, config, progress=False)
    ids = torch.randint(1000, 20000, (2, 9))
    mask = torch.ones_like(ids)
    with torch.inference_mode():
        expected = model(input_ids=ids, attention_mask=mask).logits.numpy()
    session = open_session(tmp_path / "out" / "model.onnx")
    got = session.run(["logits"], make_feed(session, ids.numpy(), mask.numpy()))[0]
    np.testing.assert_allclose(got, expected, atol=1e-4)
