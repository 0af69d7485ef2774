"""The real all-MiniLM-L6-v2, exported with SVD at R = 2 on every target, checked as a user would."""

import hashlib
import json
from collections import Counter

import numpy as np
import onnx
import pytest
import torch
import transformers
from conftest import MINILM, requires_optimum

from edgefold.exporter import CompressionConfig, GraphConfig, export
from edgefold.exporter.onnx.export import backend, ort_model_class
from edgefold.runtime.metrics import mean_pool, row_cosines
from edgefold.runtime.session import make_feed, open_session

V, D, FFN = 30522, 384, 1536
# text the export's own checks never saw
FRESH = ["A lighthouse keeper logs every passing ship.", "Quarterly revenue beat the analysts' forecasts.",
         "Bring a warm coat; the mountain hut has no heating."]


def _initializers(folder):
    return {i.name: tuple(i.dims) for i in onnx.load(str(folder / "model.onnx")).graph.initializer}


def test_folder_holds_graph_config_tokenizer_and_manifest(minilm_r2):
    folder, _ = minilm_r2
    names = {p.name for p in folder.iterdir()}
    assert {"model.onnx", "config.json", "tokenizer.json", "tokenizer_config.json", "edgefold.json"} <= names
    assert not any(name.endswith(".partial") for name in (p.name for p in folder.parent.iterdir()))


def test_no_dense_copy_of_any_compressed_weight_survives(minilm_r2):
    shapes = Counter(tuple(sorted(s)) for s in _initializers(minilm_r2[0]).values() if len(s) == 2)
    for dense in [(D, V), (D, D), (D, FFN)]:
        assert shapes[dense] == 0, f"a dense {dense} weight is still in the graph"


def test_embedding_is_a_gather_on_the_table_then_a_matmul(minilm_r2):
    folder, manifest = minilm_r2
    rank = next(m["rank"] for m in manifest["modules"] if m["kinds"] == ["embeddings"])
    assert rank == 184
    graph = onnx.load(str(folder / "model.onnx")).graph
    inits = {i.name: tuple(i.dims) for i in graph.initializer}
    (table,) = [name for name, shape in inits.items() if shape == (V, rank)]
    (gather,) = [n for n in graph.node if n.op_type == "Gather" and n.input[0] == table]
    consumers = [n for n in graph.node if gather.output[0] in n.input]
    assert [n.op_type for n in consumers] == ["MatMul"]
    assert inits[consumers[0].input[1]] == (rank, D)


def test_each_linear_is_two_matmuls_through_its_rank(minilm_r2):
    folder, manifest = minilm_r2
    graph = onnx.load(str(folder / "model.onnx")).graph
    inits = {i.name: tuple(i.dims) for i in graph.initializer}
    weight_matmuls = [inits[n.input[1]] for n in graph.node if n.op_type == "MatMul" and n.input[1] in inits]
    linears = [m for m in manifest["modules"] if m["kinds"] != ["embeddings"]]
    assert len(linears) == 36 and all(m["status"] == "factorised" for m in linears)
    expected = Counter()
    for m in linears:  # rows = out, cols = in: x (.. x in) @ (in x r) @ (r x out)
        out, inp = m["shape"]
        expected[(inp, m["rank"])] += 1
        expected[(m["rank"], out)] += 1
    expected[(184, D)] += 1  # the embedding's projection
    assert Counter(weight_matmuls) == expected


def test_manifest_records_source_budget_and_checks(minilm_r2):
    folder, manifest = minilm_r2
    on_disk = json.loads((folder / "edgefold.json").read_text())
    assert on_disk == manifest
    assert manifest["schema"] == "edgefold.manifest" and manifest["schema_version"] == 1
    assert manifest["source"]["weights_sha256"] == hashlib.sha256(
        b"model.safetensors" + (MINILM / "model.safetensors").read_bytes()).hexdigest()
    assert manifest["method"] == "svd" and manifest["ratio"] == 2.0 and manifest["seed"] == 0
    assert manifest["compression"] == "factorised"
    for module in manifest["modules"]:
        rows, cols = module["shape"]
        assert module["rank"] % 8 == 0
        assert module["params_before"] == rows * cols
        assert module["params_after"] == module["rank"] * (rows + cols) <= rows * cols / 2
    totals = manifest["totals"]
    assert totals["targeted_params_before"] == sum(m["params_before"] for m in manifest["modules"])
    assert totals["model_params_before"] - totals["model_params_after"] == (
        totals["targeted_params_before"] - totals["targeted_params_after"])
    assert totals["bytes_after"] == (folder / "model.onnx").stat().st_size
    assert totals["bytes_before"] == (MINILM / "model.safetensors").stat().st_size
    assert manifest["parity"]["max_abs_diff"] <= manifest["parity"]["atol"] == 1e-3
    assert 0 < manifest["fidelity"]["min_cosine"] <= manifest["fidelity"]["mean_cosine"] < 1
    assert manifest["exporter"] == backend()
    for package in ("torch", "transformers", "onnx", "onnxruntime", *(("optimum",) if backend() == "optimum" else ())):
        assert manifest["versions"][package]


def _original_sentence_embeddings(texts):
    tokenizer = transformers.AutoTokenizer.from_pretrained(MINILM)
    model = transformers.AutoModel.from_pretrained(MINILM).eval()
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.inference_mode():
        hidden = model(**batch).last_hidden_state.numpy()
    return mean_pool(hidden, batch["attention_mask"].numpy()), batch


def _bare_embeddings(folder):
    session = open_session(folder / "model.onnx")
    original, batch = _original_sentence_embeddings(FRESH)
    ids, mask = batch["input_ids"].numpy(), batch["attention_mask"].numpy()
    return session.run(["last_hidden_state"], make_feed(session, ids, mask))[0], original, batch


def test_bare_onnxruntime_gives_the_embeddings_the_manifest_promised(minilm_r2):
    folder, manifest = minilm_r2
    bare, original, batch = _bare_embeddings(folder)
    # compressed, so not equal to the original, but the same kind of vector as the manifest promised
    cosines = row_cosines(mean_pool(bare, batch["attention_mask"].numpy()), original)
    assert cosines.min() > 0.5 * manifest["fidelity"]["min_cosine"] and cosines.max() < 0.9999


@requires_optimum
def test_optimum_gives_the_bare_sessions_embeddings(minilm_r2):
    folder, _ = minilm_r2
    bare, _, batch = _bare_embeddings(folder)
    ort_model = ort_model_class("feature-extraction").from_pretrained(folder)
    np.testing.assert_allclose(bare, ort_model(**batch).last_hidden_state.numpy(), atol=1e-5)


@pytest.mark.slow
def test_fidelity_falls_as_the_ratio_grows(tmp_path, minilm_r2):
    gentle = export(str(MINILM), tmp_path / "r1.33", CompressionConfig(targets="embeddings", ratio=1.33),
                    GraphConfig(optimize="none"), progress=False)
    harsh = export(str(MINILM), tmp_path / "r10", CompressionConfig(targets="embeddings", ratio=10),
                   GraphConfig(optimize="none"), progress=False)
    assert gentle["fidelity"]["mean_cosine"] > harsh["fidelity"]["mean_cosine"]
    assert gentle["totals"]["bytes_after"] > harsh["totals"]["bytes_after"]
    assert [m["status"] for m in gentle["modules"]] == ["factorised"]  # embeddings only


def test_export_leaves_the_source_untouched(minilm_r2_run):
    assert minilm_r2_run["source_after"] == minilm_r2_run["source_before"]


@pytest.mark.parametrize("name", ["sentence-transformers/all-MiniLM-L6-v2"])
def test_the_bundled_name_resolves_offline(name):
    from edgefold.exporter.source.loading import resolve_model_path

    assert resolve_model_path(name) == MINILM
