"""``--method ae`` end to end: the fold in the graph, frequency-aware embeddings, calibration, determinism."""

import json
from collections import Counter

import numpy as np
import onnx
import pytest
import torch
import transformers
from conftest import MINILM

from edgefold.exporter import CompressionConfig, GraphConfig, export
from edgefold.exporter.calibration.corpus import Calibration, row_weights
from edgefold.exporter.methods import AutoencoderOptions, FitContext, get_method
from edgefold.exporter.methods.frequency import fit_frequency_aware
from edgefold.cli import main
from edgefold.runtime.session import make_feed, open_session, run

FAST = AutoencoderOptions(epochs=2, validate_every=1)


def _graph(folder):
    model = onnx.load(str(folder / "model.onnx"))
    return model.graph, {i.name: tuple(i.dims) for i in model.graph.initializer}


@pytest.mark.slow
def test_linear_autoencoder_folds_into_gather_matmul_add(tiny_model, tmp_path):
    manifest = export(str(tiny_model("roberta-feature-extraction")), tmp_path / "out",
                      CompressionConfig(method="ae", targets="embeddings", ratio=2, frequency=False,
                                        options=FAST), progress=False)
    (module,) = manifest["modules"]
    vocab, hidden = module["shape"]
    rank = module["rank"]
    graph, inits = _graph(tmp_path / "out")
    (table,) = [n for n, s in inits.items() if s == (vocab, rank)]
    (gather,) = [n for n in graph.node if n.op_type == "Gather" and n.input[0] == table]
    (matmul,) = [n for n in graph.node if gather.output[0] in n.input]
    (add,) = [n for n in graph.node if matmul.output[0] in n.input]
    assert matmul.op_type == "MatMul" and inits[matmul.input[1]] == (rank, hidden)
    assert add.op_type == "Add" and (hidden,) in [inits.get(i) for i in add.input]  # the decoder bias
    assert module["params_after"] == rank * (vocab + hidden) + hidden <= module["fit"]["budget_params"]
    assert module["fit"]["svd_params_at_same_ratio"] <= module["fit"]["budget_params"]
    assert (vocab,) not in inits.values()  # no slot lookup: no exact rows without frequency


@pytest.mark.slow
def test_default_ae_keeps_frequent_rows_exact_and_ties_them_to_the_head(tiny_model, tmp_path):
    folder = tmp_path / "out"
    manifest = export(str(tiny_model("bert-fill-mask")), folder,
                      CompressionConfig(method="ae", targets="embeddings", ratio=2, options=FAST),
                      progress=False)
    (module,) = manifest["modules"]
    frequency = module["fit"]["frequency"]
    assert manifest["frequency_aware"] and manifest["calibration"]["source"] == "shipped"
    chosen = max(frequency["trials"], key=lambda t: t["validation_fidelity"])
    assert frequency["exact_rows"] == chosen["exact_rows"] > 0 and module["rank"] == chosen["rank"]
    graph, inits = _graph(folder)
    shapes = Counter(tuple(sorted(s)) for s in inits.values())
    assert shapes[tuple(sorted((frequency["exact_rows"], 64)))] == 1  # exact rows stored once, head included
    assert shapes[tuple(sorted((module["shape"][0], module["rank"])))] == 1
    assert manifest["parity"]["max_abs_diff"] <= 1e-3
    session = open_session(folder / "model.onnx")
    inputs = transformers.AutoTokenizer.from_pretrained(folder)(["a short test"], return_tensors="np")
    logits = run(session, None, make_feed(session, inputs["input_ids"], inputs["attention_mask"]))[0]
    assert logits.shape[:2] == inputs["input_ids"].shape


def test_frequency_aware_fit_keeps_the_most_frequent_rows_exact():
    torch.manual_seed(0)
    weight = torch.randn(500, 32)
    counts = torch.zeros(500, dtype=torch.float64)
    counts[:40] = torch.arange(40, 0, -1, dtype=torch.float64)  # tokens 0..39 seen, most frequent first
    # a validation score that rewards exact frequent rows: the fit must pick a share that keeps some
    context = FitContext(score=lambda f: -float((f.dense()[:40] - weight[:40]).norm()))
    factors = fit_frequency_aware(weight, 2, get_method("svd"), counts, context)
    kept = context.details["frequency"]["exact_rows"]
    assert kept > 0 and torch.equal(factors.exact_index, torch.arange(kept))
    torch.testing.assert_close(factors.dense()[:kept], weight[:kept])
    assert factors.num_params <= 500 * 32 / 2


def test_row_weights_follow_counts_and_drop_exact_rows():
    counts = torch.tensor([8.0, 2.0, 0.0, 0.0], dtype=torch.float64)
    weights = row_weights(counts)
    assert weights.sum().item() == pytest.approx(1.0) and weights[0] > weights[1] > weights[2] == weights[3] > 0
    assert row_weights(counts, torch.tensor([0]))[0] == 0


def test_calibration_split_never_overlaps(tmp_path):
    shipped = Calibration.load()
    assert len(shipped.fit_texts) > 1000 and 0 < len(shipped.validation_texts) <= 128
    assert not set(shipped.fit_texts) & set(shipped.validation_texts)
    custom = tmp_path / "cal.txt"
    custom.write_text("\n".join(f"line number {i} about something" for i in range(20)) + "\n\n")
    loaded = Calibration.load(custom)
    assert (len(loaded.fit_texts), len(loaded.validation_texts)) == (16, 4)


@pytest.mark.parametrize("content,match", [(None, "calibration file not found"), ("one\ntwo\n", "at least 10")])
def test_bad_calibration_file(capsys, tiny_model, tmp_path, content, match):
    path = tmp_path / "cal.txt"
    if content is not None:
        path.write_text(content)
    code = main(["export", str(tiny_model("bert-fill-mask")), str(tmp_path / "out"), "--method", "ae",
                 "--calibration", str(path)])
    assert code == 2 and match in capsys.readouterr().err and not (tmp_path / "out").exists()


def test_bad_method_option_is_one_line(capsys, tiny_model, tmp_path):
    code = main(["export", str(tiny_model("bert-fill-mask")), str(tmp_path / "out"), "--method", "ae",
                 "--method-option", "epochs=lots"])
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and "option epochs takes a int" in line


@pytest.mark.slow
def test_same_seed_same_export(tiny_model, tmp_path):
    config = CompressionConfig(method="ae", ratio=2, options=FAST, seed=3)
    source = str(tiny_model("roberta-feature-extraction"))  # every kind of module, cheap to validate
    # The fusions `auto` keeps are chosen by timing, which a busy machine can tip: the seed decides the rest.
    unoptimised = GraphConfig(optimize="none")
    export(source, tmp_path / "a", config, unoptimised, progress=False)
    export(source, tmp_path / "b", config, unoptimised, progress=False)
    a, b = (onnx.load(str(tmp_path / f / "model.onnx")).graph.initializer for f in "ab")
    for x, y in zip(a, b):
        assert x.name == y.name and np.array_equal(onnx.numpy_helper.to_array(x), onnx.numpy_helper.to_array(y))


@pytest.mark.slow
def test_minilm_with_ae_on_every_target_kind(small_calibration, tmp_path):
    """The real model, every target kind, norms kept: parity, a forward pass in onnxruntime, and a manifest that
    shows both budgets (on 100 calibration lines, unfused: neither is what it checks)."""
    folder = tmp_path / "minilm-ae"
    code = main(["export", str(MINILM), str(folder), "--method", "ae", "--ratio", "2", "--quiet",
                 "--method-option", "epochs=1", "--method-option", "preserve_norms=true",
                 "--calibration", str(small_calibration), "--optimize", "none"])
    assert code == 0
    manifest = json.loads((folder / "edgefold.json").read_text())
    assert manifest["method"] == "ae" and manifest["method_options"] == {"epochs": "1", "preserve_norms": "true"}
    assert manifest["parity"]["max_abs_diff"] <= 1e-3
    assert {k for m in manifest["modules"] for k in m["kinds"]} == {
        "embeddings", "q", "k", "v", "attention-output", "ffn-in", "ffn-out"}
    for module in manifest["modules"]:
        assert module["status"] == "factorised"
        assert module["params_after"] <= module["fit"]["budget_params"]
        assert module["fit"]["selected_epoch"] in (0, 1)
    session = open_session(folder / "model.onnx")
    inputs = transformers.AutoTokenizer.from_pretrained(folder)(["a short test"], return_tensors="np")
    assert run(session, None, make_feed(session, inputs["input_ids"], inputs["attention_mask"]))[0].shape[-1] == 384
