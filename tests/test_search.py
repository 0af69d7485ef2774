"""The goal-driven export: per-module choices, the predicted curve, candidates verified as real ONNX graphs,
the check split, and the folder it writes (or refuses to write)."""

from __future__ import annotations

import csv
import dataclasses
import json
import random
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from conftest import MINILM, built_once
from hypothesis import given
from hypothesis import strategies as st

from edgefold.exporter import CompressionConfig, GraphConfig, ModuleChoice, Plan, export
from edgefold.exporter.graph.quantize import quantize_modules
from edgefold.exporter.search.frontier import curve, hull
from edgefold.exporter.search.latency import OpShape, write_probes
from edgefold.exporter.search.search import _bounds
from edgefold.exporter.search.simulate import quantized_input, quantized_table, quantized_weight
from edgefold.exporter.search.space import Cost, Option, weight_bytes
from edgefold.exporter.search.splits import RUN, Splits, normalized
from edgefold.exporter.source.loading import inspect_model, load_model
from edgefold.runtime import EdgefoldError
from edgefold.cli import main
from edgefold.runtime.dataset import EvalData
from edgefold.runtime.manifest import read_manifest
from edgefold.runtime.texts import shipped_texts
from edgefold.runtime.validate import validate

SIZE = Cost("size", 0.0)


def _option(cost: int, loss: float, precision: str = "int8") -> Option:
    """An option whose whole cost is ``cost`` bytes (no operators), for the curve's arithmetic."""
    return Option(ModuleChoice(precision=precision), (), extra_bytes=cost, loss=loss)


@st.composite
def _modules(draw) -> dict[str, list[Option]]:
    modules = {}
    for m in range(draw(st.integers(1, 5))):
        top = draw(st.integers(100, 1000))
        others = draw(st.lists(st.tuples(st.integers(1, top - 1), st.floats(0, 1)), max_size=6))
        modules[f"m{m}"] = [_option(top, 0.0, "fp32")] + [_option(c, loss) for c, loss in others]
    return modules


@given(_modules())
def test_the_curve_goes_from_the_original_to_the_cheapest_one_module_step_at_a_time(modules):
    points = curve(modules, SIZE.of, fixed=10.0)
    assert points[0].options == {name: options[0] for name, options in modules.items()} and points[0].loss == 0
    for before, after in zip(points, points[1:]):
        assert after.cost < before.cost and after.loss >= before.loss - 1e-12
        assert sum(before.options[n] != after.options[n] for n in modules) == 1
    assert points[-1].cost == 10.0 + sum(min(o.extra_bytes for o in options) for options in modules.values())


def test_the_bisection_keeps_looking_past_a_costlier_failure():
    """A curve need not be monotone: a failure before the cheapest pass does not end the search there."""
    rows = [{"kind": "path", "index": 2, "accepted": False}, {"kind": "path", "index": 6, "accepted": True},
            {"kind": "baseline", "index": None, "accepted": True}]
    assert _bounds(rows, 10) == (6, 10)
    assert _bounds(rows + [{"kind": "path", "index": 8, "accepted": False}], 10) == (6, 8)
    assert _bounds([], 10) == (-1, 10)


def test_a_choice_that_costs_more_and_loses_no_less_is_never_on_the_hull():
    original, good, dominated, cheapest = _option(100, 0.0), _option(50, 0.01), _option(60, 0.02), _option(10, 0.5)
    assert hull([original, dominated, good, cheapest], SIZE.of) == [original, good, cheapest]


@pytest.mark.parametrize("precision", ["int8", "int4-32", "int4-128", "int2-32"])
def test_the_simulated_precision_predicts_onnxruntime_kernels(tmp_path, precision):
    """The torch simulation the sensitivities use against the real quantised kernel, on one MatMul."""
    folder = write_probes(tmp_path / "probes", [OpShape("MatMul", 384, 256)], ["fp32", precision], tokens=16)
    graph = onnx.load(str(folder / "matmul_384x256_fp32.onnx"))
    weight = torch.from_numpy(onnx.numpy_helper.to_array(graph.graph.initializer[0]).copy())
    x = torch.from_numpy(np.random.default_rng(0).standard_normal((1, 16, 384)).astype(np.float32))
    session = ort.InferenceSession(str(folder / f"matmul_384x256_{precision}.onnx"))
    real = torch.from_numpy(session.run(None, {"hidden_states": x.numpy()})[0])
    simulated = quantized_input(x, precision) @ quantized_weight(weight, precision)
    exact = x @ weight
    quantisation_error = (real - exact).norm()
    assert quantisation_error > 0
    assert (simulated - real).norm() < 0.5 * quantisation_error  # the simulation explains most of the error


@pytest.mark.parametrize("precision", ["int4-32", "int2-32"])
def test_the_simulated_table_is_what_gather_block_quantized_looks_up(tmp_path, precision):
    """An embedding table's rows as onnxruntime's GatherBlockQuantized dequantises them (4 bits: onnxruntime's
    quantiser; 2 bits: edgefold's own writer), against the torch simulation, row for row."""
    folder = write_probes(tmp_path / "probes", [OpShape("Gather", 500, 64)], ["fp32", precision], tokens=16)
    graph = onnx.load(str(folder / "gather_500x64_fp32.onnx"))
    table = torch.from_numpy(onnx.numpy_helper.to_array(graph.graph.initializer[0]).copy())
    ids = np.random.default_rng(0).integers(0, 500, (1, 16))
    session = ort.InferenceSession(str(folder / f"gather_500x64_{precision}.onnx"))
    (real,) = session.run(None, {"input_ids": ids})
    simulated = quantized_table(table, precision)[torch.from_numpy(ids)]
    assert np.abs(real - table[torch.from_numpy(ids)].numpy()).max() > 1e-3  # it is quantised
    np.testing.assert_allclose(real, simulated.numpy(), atol=1e-6)


@pytest.mark.parametrize("precision, per_value", [("fp32", 4), ("int8", 1), ("int4-32", 0.625), ("int4-128", 0.53125),
                                                  ("int2-32", 0.375)])
def test_weight_bytes_per_precision(precision, per_value):
    assert weight_bytes(OpShape("MatMul", 384, 1536), precision) == 384 * 1536 * per_value


@pytest.mark.slow
def test_the_predicted_bytes_of_a_mixed_plan_are_the_bytes_onnxruntime_stores(tmp_path, tiny_model):
    folder = tiny_model("roberta-feature-extraction")
    export(str(folder), tmp_path / "fp32", CompressionConfig(method="none"), GraphConfig(optimize="none"),
           progress=False)
    plan = {"encoder.layer.0.intermediate.dense": "int4-32", "encoder.layer.1.output.dense": "int4-128",
            "encoder.layer.0.attention.self.query": "int8", "encoder.layer.1.intermediate.dense": "int2-32",
            "embeddings.word_embeddings": "int2-32"}
    done = quantize_modules(tmp_path / "fp32" / "model.onnx", tmp_path / "mixed.onnx", plan)
    table = load_model(inspect_model(str(folder))).get_input_embeddings().weight.shape
    shapes = {"encoder.layer.0.intermediate.dense": ("MatMul", 64, 128), "encoder.layer.1.output.dense": ("MatMul", 128, 64),
              "encoder.layer.0.attention.self.query": ("MatMul", 64, 64),
              "encoder.layer.1.intermediate.dense": ("MatMul", 64, 128), "embeddings.word_embeddings": ("Gather", *table)}
    saved = sum(weight_bytes(OpShape(*shapes[m]), "fp32") - weight_bytes(OpShape(*shapes[m]), p) for m, p in plan.items())
    measured = _initializer_bytes(tmp_path / "fp32" / "model.onnx") - _initializer_bytes(tmp_path / "mixed.onnx")
    assert done["modules"] == {"int4-32": 1, "int4-128": 1, "int8": 1, "int2-32": 2}
    assert abs(measured - saved) < 64  # the int8 scales and zero points
    ops = {n.op_type for n in onnx.load(str(tmp_path / "mixed.onnx")).graph.node}
    assert {"GatherBlockQuantized", "MatMulNBits", "MatMulInteger"} <= ops


def _initializer_bytes(path: Path) -> int:
    """Bytes of the stored tensors (the file adds names, nodes and the shapes onnxruntime's quantiser infers)."""
    return sum(onnx.numpy_helper.to_array(t).nbytes for t in onnx.load(str(path)).graph.initializer)


def test_splits_are_disjoint_interleaved_and_keep_pairs_with_their_texts():
    texts = [f"text {i}" for i in range(120)]
    data = EvalData("mine.jsonl", texts, pairs=[(t, t.upper()) for t in texts])
    splits = Splits.of(data)
    parts = [splits.fit.texts, splits.selection.texts, splits.check.texts]
    assert [len(p) for p in parts] == [40, 60, 20]
    assert not set(parts[0]) & set(parts[1]) and not set(parts[1]) & set(parts[2]) and not set(parts[0]) & set(parts[2])
    assert all(query == text for text, (query, _) in zip(splits.check.texts, splits.check.pairs))
    with pytest.raises(EdgefoldError, match="20 distinct items.*needs at least 48"):
        Splits.of(EvalData("tiny.txt", texts[:20] * 3))


@given(st.lists(st.sampled_from([f"line {i}" for i in range(40)] + ["Line 3!", "line  3", "LINE 7."]),
                min_size=48, max_size=400))
def test_no_text_is_on_two_sides_of_a_split_nor_counted_twice(texts):
    """Repeats (ignoring case, spacing, punctuation) are left out, so a check item never reappears in selection;
    consecutive items share a role."""
    distinct = len({normalized(t) for t in texts})
    data = EvalData("mine.txt", texts)
    if distinct < 48:
        with pytest.raises(EdgefoldError, match=f"{distinct} distinct items"):
            Splits.of(data)
        return
    splits = Splits.of(data)
    keys = [{normalized(t) for t in part.texts} for part in (splits.fit, splits.selection, splits.check)]
    assert sum(map(len, keys)) == distinct == len(texts) - splits.duplicates
    assert not keys[0] & keys[1] and not keys[1] & keys[2] and not keys[0] & keys[2]
    assert splits.fit.texts[:RUN] == [t for i, t in enumerate(texts) if normalized(t) not in
                                      {normalized(u) for u in texts[:i]}][:RUN]


def test_a_plan_round_trips_and_is_checked_against_the_model(tiny_model):
    plan = Plan({"embeddings.word_embeddings": ModuleChoice(ratio=2.0, precision="int4-32"),
                 "encoder.layer.0.attention.self.query": ModuleChoice(rank=16, precision="int8")})
    assert Plan.from_dict(json.loads(json.dumps(plan.as_dict()))) == plan
    network = load_model(inspect_model(str(tiny_model("roberta-feature-extraction"))))
    plan.check(network)
    bad = {"transformer.h.0.attn.c_attn": ModuleChoice(precision="int8")}
    with pytest.raises(EdgefoldError, match="a plan for another model"):
        Plan(bad).check(network)
    with pytest.raises(EdgefoldError, match="would save nothing"):
        Plan({"encoder.layer.0.attention.self.query": ModuleChoice(rank=32)}).check(network)  # 64 x 64
    with pytest.raises(EdgefoldError, match="Linears take a rank"):
        Plan({"encoder.layer.0.attention.self.query": ModuleChoice(ratio=2.0)}).check(network)
    with pytest.raises(EdgefoldError, match="unknown precision"):
        Plan.from_dict({**plan.as_dict(), "modules": {"x": {"rank": None, "ratio": None, "precision": "int3"}}})


# --- end to end: real graphs ---------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def minilm_search(tmp_path_factory) -> tuple[Path, dict, int]:
    """The README's default command on the real MiniLM: objective size, default gates, quick search (once per
    run, whichever worker asks first: a module fixture is torn down whenever a worker turns to another file)."""
    def build(root: Path) -> None:
        code = main(["export", str(MINILM), str(root / "minilm-small"), "--quiet", "--workers", "2",
                     "--max-candidates", "7"])
        (root / "exit-code").write_text(str(code))

    root = built_once(tmp_path_factory, "minilm-search", build)
    out, code = root / "minilm-small", int((root / "exit-code").read_text())
    return out, read_manifest(out) if code == 0 else {}, code


@pytest.mark.slow
def test_the_default_export_searches_and_writes_the_smallest_model_that_passes(minilm_search):
    out, manifest, code = minilm_search
    assert code == 0
    search, frontier = manifest["search"], json.loads((out / "frontier.json").read_text())
    rows = {row["label"]: row for row in frontier["candidates"]}
    chosen = rows[search["chosen"]]
    assert chosen["accepted"] and all(g["passed"] for g in search["check"]["gates"])
    assert chosen["bytes"] == manifest["totals"]["bytes_after"] == (out / "model.onnx").stat().st_size
    # never worse than what onnxruntime's quantiser alone gives, where that passes the same gates
    alone = [row for row in rows.values() if row["kind"] == "baseline" and row["accepted"]]
    assert alone and chosen["bytes"] <= min(row["bytes"] for row in alone)
    assert chosen["bytes"] < 0.25 * search["reference"]["bytes"]  # int8 alone keeps a quarter
    assert {"frontier.md", "frontier.png", "frontier.json"} <= set(manifest["contents"])
    assert (out / "frontier.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert manifest["plan"]["modules"] and manifest["quantization"]["scheme"] == "mixed"
    # GPTQ for the curve's low-bit weights, onnxruntime's rounding for the baselines
    assert {row["algorithm"] for row in rows.values() if row["kind"] == "baseline" and "int4" in row["label"]} == {"rtn"}
    assert chosen["algorithm"] == manifest["quantization"]["algorithm"] == "gptq" and manifest["quantization"]["gptq"]
    # every candidate held to the gates on the second domain too, and the chosen one passes its check half
    assert all(row["domain"]["gates"] for row in rows.values() if row["bytes"])
    assert search["second_domain"]["check"]["data"]["items"] > 100
    assert all(gate["passed"] for gate in search["second_domain"]["check"]["gates"])
    # the predictions the curve is built on: bytes within 0.5% of the written files, losses in the measured order
    path = [row for row in rows.values() if row["kind"] == "path" and row["bytes"]]
    assert all(abs(row["predicted_cost"] / row["bytes"] - 1) < 0.005 for row in path)
    predicted, measured = zip(*((row["predicted_loss"], 1 - row["metrics"]["mean_cosine"]) for row in path))
    assert _spearman(predicted, measured) > 0.5, (predicted, measured)


def _spearman(a, b) -> float:
    ranks = [np.argsort(np.argsort(values)) for values in (a, b)]
    return float(np.corrcoef(*ranks)[0, 1])


@pytest.mark.slow
def test_the_written_model_passes_validate_on_text_the_search_never_saw(minilm_search, minilm_variants):
    out, manifest, code = minilm_search
    assert code == 0
    unseen = EvalData("shipped evaluation.txt", shipped_texts("evaluation.txt")[:300])
    report = validate(out, minilm_variants["reference"], unseen, [g["text"] for g in manifest["search"]["gates"]])
    assert report["passed"], report["metrics"]


@pytest.mark.slow
def test_a_plan_replays_as_the_same_graph(minilm_search, tmp_path):
    out, manifest, code = minilm_search
    assert code == 0
    assert main(["export", str(MINILM), str(tmp_path / "again"), "--plan", str(out / "edgefold.json"),
                 "--quiet"]) == 0
    again = read_manifest(tmp_path / "again")
    assert again["plan"] == manifest["plan"]
    # GPTQ's weights (and any factors) are fitted again, on --calibration text rather than the search's fit split:
    # the same storage, codes of the same quality
    assert again["quantization"]["algorithm"] == manifest["quantization"]["algorithm"] == "gptq"
    assert again["quantization"]["weight_bytes"] == manifest["quantization"]["weight_bytes"]
    replayed, searched = (m["quantization"]["fidelity_vs_fp32"]["mean_cosine"] for m in (again, manifest))
    assert abs(replayed - searched) < 0.01, (replayed, searched)


@pytest.mark.slow
def test_a_gate_no_candidate_can_pass_writes_nothing_and_names_the_closest(tiny_model, tmp_path, capsys):
    out = tmp_path / "out"  # no cosine exceeds 1
    code = main(["export", str(tiny_model("roberta-feature-extraction")), str(out), "--quiet", "--workers", "1",
                 "--max-candidates", "4", "--gate", "mean_cosine>=1.001", "--gate", "min_cosine>=0.9999"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and "no candidate clears the gates" in err[0] and "the closest" in err[0]
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == []


@pytest.mark.slow
def test_a_recipe_that_fails_its_gate_is_refused_and_one_that_passes_is_written(tiny_model, tmp_path, capsys):
    model = str(tiny_model("roberta-feature-extraction"))
    code = main(["export", model, str(tmp_path / "harsh"), "--quiet", "--method", "svd", "--ratio", "3",
                 "--targets", "attention,ffn", "--gate", "mean_cosine>=0.99999"])
    assert code == 1 and "the recipe fails its gates" in capsys.readouterr().err
    assert not (tmp_path / "harsh").exists()
    assert main(["export", model, str(tmp_path / "kept"), "--quiet", "--method", "none",
                 "--gate", "mean_cosine>=0.99"]) == 0
    gates = read_manifest(tmp_path / "kept")["gates"]
    assert gates["gates"][0]["passed"] and gates["metrics"]["mean_cosine"] > 0.999


@pytest.mark.slow
def test_a_labelled_classifier_is_searched_on_its_labels(tiny_model, tmp_path):
    texts = shipped_texts("evaluation.txt")[:240]
    data = tmp_path / "labelled.csv"
    with data.open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["text", "label"])
        writer.writerows([text, "LABEL_1" if len(text) % 2 else "LABEL_0"] for text in texts)
    out = tmp_path / "out"
    assert main(["export", str(tiny_model("bert-text-classification")), str(out), "--quiet", "--workers", "1",
                 "--max-candidates", "5", "--data", str(data), "--label-column", "label"]) == 0
    search = read_manifest(out)["search"]
    assert [g["text"] for g in search["gates"]] == ["label_agreement>=0.98", "accuracy_drop<=0.01"]
    assert all(g["passed"] for g in search["check"]["gates"]) and search["splits"]["check"] == 40


@pytest.mark.slow
def test_a_causal_lm_is_searched_on_perplexity(tiny_model, tmp_path):
    out = tmp_path / "out"
    # the perplexity search itself: the second domain is the MiniLM search's to check (and doubles this one's time)
    assert main(["export", str(tiny_model("gpt2-text-generation")), str(out), "--quiet", "--workers", "1",
                 "--max-candidates", "4", "--no-second-domain"]) == 0
    manifest = read_manifest(out)
    assert manifest["search"]["second_domain"] is None
    assert manifest["search"]["gates"][0]["metric"] == "perplexity_ratio"
    assert manifest["totals"]["bytes_after"] < manifest["search"]["reference"]["bytes"]


@pytest.mark.slow
def test_the_latency_objective_uses_a_measured_table_and_reports_measured_latency(tiny_model, tmp_path,
                                                                                    monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    out = tmp_path / "out"
    assert main(["export", str(tiny_model("roberta-feature-extraction")), str(out), "--quiet", "--workers", "1",
                 "--max-candidates", "4", "--objective", "latency"]) == 0
    search = read_manifest(out)["search"]
    frontier = json.loads((out / "frontier.json").read_text())
    chosen = next(row for row in frontier["candidates"] if row["label"] == search["chosen"])
    assert search["latency"]["predicted_ms"] > 0 and chosen["latency_ms"] > 0
    assert chosen["latency_ms"] == min(row["latency_ms"] for row in frontier["candidates"] if row["accepted"])


def test_a_latency_table_for_another_model_is_refused_before_the_search(tiny_model, tmp_path, capsys):
    table = {"schema": "edgefold.latency-table", "schema_version": 1, "machine": {}, "tokens": 128, "threads": 1,
             "entries": [{"op": "MatMul", "k": 384, "n": 1536, "precision": "int8", "ms": 0.4}]}
    path = tmp_path / "table.json"
    path.write_text(json.dumps(table))
    code = main(["export", str(tiny_model("roberta-feature-extraction")), str(tmp_path / "out"), "--quiet",
                 "--workers", "1", "--objective", "latency", "--latency-table", str(path)])
    err = capsys.readouterr().err
    assert code == 2 and "has no entry for" in err and "another model" in err
    assert not (tmp_path / "out").exists()


def test_a_plan_for_another_model_is_refused(tiny_model, tmp_path, capsys):
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps(Plan({"embeddings.word_embeddings": ModuleChoice(precision="int8")}).as_dict()))
    code = main(["export", str(tiny_model("gpt2-text-generation")), str(tmp_path / "out"), "--quiet",
                 "--plan", str(plan)])
    assert code == 2 and "a plan for another model" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_a_latency_table_measured_on_the_device_steers_the_search(tiny_model, tmp_path):
    """The board's flow: probes written here, timed there (torch-free), the table passed back to the export. A
    board whose int8 kernels are slow (the table says 100x) gets a model without int8."""
    model = str(tiny_model("roberta-feature-extraction"))
    assert main(["probes", model, str(tmp_path / "probes")]) == 0
    assert main(["bench", "--op-table", str(tmp_path / "probes"), "-o", str(tmp_path / "table.json")]) == 0
    table = json.loads((tmp_path / "table.json").read_text())
    for entry in table["entries"]:
        entry["ms"] *= 100 if entry["precision"] == "int8" else 1
    (tmp_path / "table.json").write_text(json.dumps(table))
    out = tmp_path / "out"
    assert main(["export", model, str(out), "--quiet", "--workers", "1", "--max-candidates", "4", "--objective",
                 "latency", "--latency-table", str(tmp_path / "table.json")]) == 0
    search = read_manifest(out)["search"]
    assert search["latency"]["table"] == str(tmp_path / "table.json") and search["latency"]["predicted_ms"] > 0
    assert "int8" not in search["chosen_plan"], search["chosen_plan"]


@pytest.mark.slow
@pytest.mark.parametrize("where", ["check split", "second domain"])
def test_a_model_that_fails_on_the_check_split_or_the_second_domain_is_not_written(tiny_model, tmp_path, monkeypatch,
                                                                                  capsys, where):
    """The check split and the second domain are the last word: here one of them holds text unlike the selection
    split (symbols, not prose), on which the chosen model's worst case falls below a gate that it cleared on
    selection."""
    from edgefold.exporter.search import search

    symbols = random.Random(0)
    unlike = EvalData("symbols", ["".join(symbols.choice("ǂʘǁ☃⚙𝔘ŧɮ#@%&") for _ in range(40)) for _ in range(60)])
    if where == "check split":
        real_split = Splits.of
        monkeypatch.setattr(Splits, "of", staticmethod(lambda data: dataclasses.replace(real_split(data), check=unlike)))
    else:
        prose = EvalData("prose", shipped_texts("evaluation.txt")[:60])
        monkeypatch.setattr(search, "_second_domain", lambda task, gates: search._Domain(prose, unlike, tuple(gates)))
    monkeypatch.setattr(search, "SELECTION_MARGIN", 0.0)  # a gate between the two splits' worst cases
    data = tmp_path / "texts.txt"
    data.write_text("\n".join(shipped_texts("calibration.txt")[:300]))
    out = tmp_path / "out"
    code = main(["export", str(tiny_model("roberta-feature-extraction")), str(out), "--quiet", "--workers", "1",
                 "--max-candidates", "4", "--data", str(data), "--gate", "min_cosine>=0.9994"])
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and "nothing was written" in line and not out.exists()
    assert ("but not on the check split" if where == "check split" else "but not on symbols") in line, line


@pytest.mark.slow
def test_an_untied_output_head_is_planned_for_its_precision_only(tiny_model, tmp_path):
    """Llama's lm_head has its own weight (a third of this tiny model): a plan stores it at a lower precision;
    GPT-2's head, tied to the embeddings, follows them and is not planned on its own."""
    from edgefold.exporter.nn.swap import plannable_modules
    from edgefold.exporter.source.architectures import OUTPUT_HEAD, spec_for

    llama = load_model(inspect_model(str(tiny_model("llama-text-generation"))))
    gpt2 = load_model(inspect_model(str(tiny_model("gpt2-text-generation"))))
    heads = [(name, kinds) for name, _, kinds in plannable_modules(llama, spec_for("llama")) if kinds == (OUTPUT_HEAD,)]
    assert heads == [("lm_head", (OUTPUT_HEAD,))]
    assert not [kinds for _, _, kinds in plannable_modules(gpt2, spec_for("gpt2")) if kinds == (OUTPUT_HEAD,)]
    with pytest.raises(EdgefoldError, match="takes a precision only"):
        Plan({"lm_head": ModuleChoice(rank=32)}).check(llama)
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps(Plan({"lm_head": ModuleChoice(precision="int8")}).as_dict()))
    assert main(["export", str(tiny_model("llama-text-generation")), str(tmp_path / "out"), "--quiet",
                 "--plan", str(plan)]) == 0
    manifest = read_manifest(tmp_path / "out")
    assert manifest["quantization"]["modules"] == {"int8": 1}
    graph = onnx.load(str(tmp_path / "out" / "model.onnx"), load_external_data=False).graph
    assert any(n.op_type == "MatMulInteger" and n.name.startswith("/lm_head/") for n in graph.node)
