"""The device side on real exported folders: bench, validate (the release gate), report."""

import json
import shutil
import subprocess
import sys

import pytest

from edgefold.exporter import CompressionConfig, export
from edgefold.runtime import EdgefoldError
from edgefold.runtime.bench import BenchSettings, bench, format_table, model_labels
from edgefold.cli import main
from edgefold.runtime.dataset import EvalData
from edgefold.runtime.texts import shipped_texts
from edgefold.runtime.report import load_results
from edgefold.runtime.validate import validate

QUICK = ["--threads", "1", "--warmup", "1", "--iterations", "3", "--min-seconds", "0", "--seq", "32"]


def _error_line(capsys) -> str:
    (line,) = [l for l in capsys.readouterr().err.splitlines() if l.startswith("edgefold: error:")]
    return line


def test_method_none_exports_the_model_unchanged(minilm_variants):
    manifest = json.loads((minilm_variants["reference"] / "edgefold.json").read_text())
    assert manifest["compression"] == "none" and manifest["modules"] == []
    assert manifest["fidelity"]["mean_cosine"] == pytest.approx(1.0, abs=1e-6)


@pytest.mark.slow
def test_bench_measures_every_figure_and_compares_alternately(minilm_variants, tmp_path, capsys):
    out = tmp_path / "bench.json"
    code = main(["bench", str(minilm_variants["mild"]), "--compare", str(minilm_variants["reference"]),
                 *QUICK, "--batch", "1,2", "-o", str(out)])
    assert code == 0
    document = json.loads(out.read_text())
    assert document["schema"] == "edgefold.bench" and document["schema_version"] == 1
    machine = document["machine"]
    assert machine["cores"] >= 1 and machine["architecture"] and machine["onnxruntime"] and not machine["emulated"]
    assert document["settings"]["optimization"] == "all" and document["settings"]["spinning"] is True
    assert [(r["batch"], r["seq_length"]) for r in document["results"]] == [(1, 32), (2, 32)]
    for row in document["results"]:
        for name in ("mild", "reference"):
            m = row["models"][name]
            lat = m["latency_ms"]
            assert lat["iterations"] >= 3 and 0 < lat["p50"] <= lat["p90"] <= lat["p95"] <= lat["p99"]
            assert m["session_create_s"] > 0 and m["first_inference_ms"] > 0 and m["peak_rss_bytes"] > 50 * 2**20
            assert lat["sequences_per_s"] == pytest.approx(row["batch"] * 1000 / lat["mean"])
        assert row["p50_ratio"] > 0 and row["peak_rss_ratio"] > 0
    assert document["models"]["mild"]["bytes"]["model.onnx"] < document["models"]["reference"]["bytes"]["model.onnx"]
    table = capsys.readouterr().out
    assert "reference / mild: p50" in table and "p50 ms" in table


def test_bench_tells_two_models_of_the_same_name_apart(minilm_variants, tmp_path):
    """Keyed by folder name, `bench a/m --compare b/m` compared a model with itself: a ratio of 1.000."""
    first, second = tmp_path / "a" / "model", tmp_path / "b" / "model"
    shutil.copytree(minilm_variants["mild"], first)
    shutil.copytree(minilm_variants["reference"], second)
    settings = BenchSettings(threads=(1,), seq_lengths=(16,), warmup=1, iterations=3, min_seconds=0)
    document = bench(first, settings, compare=second, progress=False)
    assert document["compare"] == ["a/model", "b/model"]
    assert {k: m["name"] for k, m in document["models"].items()} == {"a/model": "model", "b/model": "model"}
    assert document["models"]["a/model"]["bytes"] != document["models"]["b/model"]["bytes"]
    (row,) = document["results"]
    assert set(row["models"]) == {"a/model", "b/model"}
    assert row["models"]["a/model"]["alternating"] != row["models"]["b/model"]["alternating"]
    assert row["p50_ratio"] == pytest.approx(row["models"]["b/model"]["alternating"]["p50"]
                                             / row["models"]["a/model"]["alternating"]["p50"])
    json.dumps(document, allow_nan=False)
    assert "b/model / a/model: p50" in format_table(document)
    result = tmp_path / "bench.json"
    result.write_text(json.dumps(document))
    assert len(load_results([result])[0]) == 1


def test_bench_refuses_the_same_folder_twice(minilm_variants):
    with pytest.raises(EdgefoldError, match="compare two different folders"):
        bench(minilm_variants["mild"], compare=minilm_variants["mild"] / ".." / "mild")


def test_model_labels_add_parents_only_where_names_collide(tmp_path):
    assert model_labels([tmp_path / "x" / "m", tmp_path / "y" / "n"]) == ["m", "n"]
    assert model_labels([tmp_path / "x" / "m", tmp_path / "y" / "m"]) == ["x/m", "y/m"]
    assert model_labels([tmp_path / "x" / "m", tmp_path / "y" / "x" / "m"]) == [
        f"{tmp_path.name}/x/m", "y/x/m"]


def test_validate_writes_no_nan_where_a_metric_is_undefined(minilm_variants):
    """Identical texts: every pair equally similar, so the rank correlation is undefined (None, not NaN)."""
    data = EvalData("same", ["The same sentence."] * 4)
    report = validate(minilm_variants["mild"], minilm_variants["reference"], data, ["spearman>=0.5"])
    assert report["metrics"]["spearman"] is None and report["metrics"]["mean_cosine"] > 0.9
    assert report["gates"][0]["value"] is None and not report["passed"]
    json.dumps(report, allow_nan=False)


@pytest.mark.parametrize("problem", ["no-model", "corrupt", "too-long"])
def test_bench_bad_input(problem, minilm_variants, tmp_path, capsys):
    folder = tmp_path / "folder"
    shutil.copytree(minilm_variants["mild"], folder)
    args = QUICK
    if problem == "no-model":
        (folder / "model.onnx").unlink()
        match = "holds no model.onnx"
    elif problem == "corrupt":
        (folder / "model.onnx").write_bytes(b"not a graph" * 100)
        match = f"onnxruntime cannot load {folder / 'model.onnx'}"
        args = [*QUICK, "--no-verify"]  # past the checksum check, which refuses it first (test_verify)
    else:
        args = [*QUICK[:-2], "--seq", "1000"]
        match = "longer than the model's maximum of 512"
    assert main(["bench", str(folder), *args, "-o", str(tmp_path / "b.json")]) == 2
    assert match in _error_line(capsys)


@pytest.mark.slow
@pytest.mark.slow
def test_the_reference_embeddings_kept_between_validations_follow_the_reference_graph(minilm_variants, tmp_path):
    """A search validates many candidates against one reference, whose embeddings are kept per process: the same
    call gives the same report, and a reference whose graph was replaced is run again, not read from memory."""
    reference = tmp_path / "reference"
    shutil.copytree(minilm_variants["reference"], reference)
    data = EvalData("texts", shipped_texts("evaluation.txt")[:40])
    first = validate(minilm_variants["mild"], reference, data, ["mean_cosine>=0.5"])
    assert validate(minilm_variants["mild"], reference, data, ["mean_cosine>=0.5"])["metrics"] == first["metrics"]
    assert first["metrics"]["mean_cosine"] < 0.9999
    (reference / "model.onnx").write_bytes((minilm_variants["mild"] / "model.onnx").read_bytes())
    itself = validate(minilm_variants["mild"], reference, data, ["mean_cosine>=0.5"], verify=False)
    assert itself["metrics"]["mean_cosine"] > 0.99999


def test_validate_passes_a_mild_and_fails_an_harsh_compression(minilm_variants, tmp_path, capsys):
    reference = str(minilm_variants["reference"])
    mild = tmp_path / "mild.json"
    assert main(["validate", str(minilm_variants["mild"]), "--reference", reference, "-o", str(mild)]) == 0
    assert "PASS" in capsys.readouterr().out
    report = json.loads(mild.read_text())
    assert report["passed"] and report["data"]["items"] == 1225 and len(report["data"]["sha256"]) == 64
    assert {g["metric"] for g in report["gates"]} == {"mean_cosine", "p01_cosine", "top10_agreement"}
    assert report["metrics"]["mean_cosine"] > 0.98 and 0 < report["metrics"]["spearman"] <= 1

    harsh = tmp_path / "harsh.json"
    assert main(["validate", str(minilm_variants["harsh"]), "--reference", reference, "-o", str(harsh)]) == 1
    errors = capsys.readouterr().err
    for metric in ("mean_cosine", "p01_cosine", "top10_agreement"):
        assert f"FAIL: {metric} = " in errors
    assert not json.loads(harsh.read_text())["passed"]


def test_a_gate_that_holds_on_the_text_but_not_at_the_confidence_asked_fails(minilm_variants, tmp_path, capsys):
    from edgefold.runtime.texts import shipped_texts

    reference, mild = str(minilm_variants["reference"]), str(minilm_variants["mild"])
    data = EvalData("first 96 evaluation lines", shipped_texts("evaluation.txt")[:96])
    probe = validate(mild, reference, data, ["mean_cosine>=0", "p01_cosine>=0"])
    metrics, (mean_gate, _) = probe["metrics"], probe["gates"]
    assert metrics["min_cosine"] <= metrics["p01_cosine"] <= metrics["mean_cosine"]
    assert mean_gate["bound"] < metrics["mean_cosine"] and mean_gate["confidence"] == 1.0
    # a threshold between the 95% bound and the value: the value clears it, the bound does not
    threshold = round((mean_gate["bound"] + metrics["mean_cosine"]) / 2, 6)
    gate = f"mean_cosine>={threshold}"
    lenient = validate(mild, reference, data, [gate])
    assert lenient["passed"] and 0.05 < lenient["gates"][0]["confidence"] < 1
    strict = tmp_path / "strict.json"
    data_file = tmp_path / "first96.txt"
    data_file.write_text("\n".join(data.texts))
    assert main(["validate", mild, "--reference", reference, "--data", str(data_file), "--gate", gate,
                 "--confidence", "0.95", "-o", str(strict)]) == 1
    assert "but its 95% bound" in capsys.readouterr().err
    report = json.loads(strict.read_text())
    assert not report["passed"] and report["confidence"] == 0.95
    assert report["gates"][0]["bound"] == pytest.approx(mean_gate["bound"])  # the same resamples, seeded


@pytest.mark.slow
def test_validate_against_the_original_hugging_face_model(minilm_variants, tmp_path, capsys):
    from conftest import MINILM

    out = tmp_path / "v.json"
    assert main(["validate", str(minilm_variants["mild"]), "--reference", str(MINILM), "-o", str(out)]) == 0
    assert "exporting the reference" in capsys.readouterr().err
    assert json.loads(out.read_text())["metrics"]["mean_cosine"] > 0.98


def test_validate_reads_jsonl_pairs_csv_and_gate_files(minilm_variants, tmp_path, capsys):
    pairs = [("how do I fix a flat bicycle tyre", "Patch the inner tube after finding the puncture."),
             ("what raises mortgage costs", "The central bank lifted interest rates again."),
             ("symptoms of flu", "Fever, aches and a cough are common with influenza."),
             ("best way to bake bread", "Knead the dough, let it rise, then bake it hot.")]
    data = tmp_path / "pairs.jsonl"
    data.write_text("\n".join(json.dumps({"text": q, "query": q, "positive": p}) for q, p in pairs))
    gates = tmp_path / "gates.json"
    gates.write_text(json.dumps({"gates": ["recall_at_1_drop<=0.5", "mean_cosine>=0.9"]}))
    out = tmp_path / "v.json"
    assert main(["validate", str(minilm_variants["mild"]), "--reference", str(minilm_variants["reference"]),
                 "--data", str(data), "--query-column", "query", "--positive-column", "positive",
                 "--gates", str(gates), "-o", str(out)]) == 0
    metrics = json.loads(out.read_text())["metrics"]
    assert metrics["recall_at_1_reference"] == 1.0 and "mrr_candidate" in metrics

    csv_file = tmp_path / "data.csv"
    csv_file.write_text("sentence,other\nA cat sat on the mat.,x\nThe stock market fell.,y\n")
    assert main(["validate", str(minilm_variants["mild"]), "--reference", str(minilm_variants["reference"]),
                 "--data", str(csv_file), "--text-column", "sentence", "--gate", "mean_cosine>=0.5",
                 "-o", str(tmp_path / "v-csv.json")]) == 0
    capsys.readouterr()


@pytest.mark.parametrize("content,name,match", [("", "empty.txt", "is empty"),
                                                ('{"body": "x"}\n', "rows.jsonl", "has no column(s) text"),
                                                (None, "missing.txt", "data file not found")])
def test_validate_bad_data(minilm_variants, tmp_path, capsys, content, name, match):
    path = tmp_path / name
    if content is not None:
        path.write_text(content)
    assert main(["validate", str(minilm_variants["mild"]), "--reference", str(minilm_variants["reference"]),
                 "--data", str(path)]) == 2
    assert match in _error_line(capsys)


def test_validate_refuses_a_tokenizer_that_does_not_match(minilm_variants, tmp_path, capsys):
    folder = tmp_path / "mismatch"
    shutil.copytree(minilm_variants["mild"], folder)
    config = json.loads((folder / "config.json").read_text())
    config["vocab_size"] = 1000
    (folder / "config.json").write_text(json.dumps(config))
    reference = str(minilm_variants["reference"])
    assert main(["validate", str(folder), "--reference", reference, "--no-verify"]) == 2
    assert "do not belong together" in _error_line(capsys)


@pytest.mark.parametrize("kind,metric", [("distilbert-text-classification", "label_agreement"),
                                         ("gpt2-text-generation", "perplexity_ratio"),
                                         ("bert-fill-mask", "perplexity_ratio")])
@pytest.mark.slow
def test_validate_is_task_aware(kind, metric, tiny_model, tmp_path):
    source = str(tiny_model(kind))
    export(source, tmp_path / "ref", CompressionConfig(method="none"), progress=False)
    export(source, tmp_path / "cand", CompressionConfig(targets="ffn", ratio=4), progress=False)
    out = tmp_path / "v.json"
    main(["validate", str(tmp_path / "cand"), "--reference", str(tmp_path / "ref"), "-o", str(out)])
    metrics = json.loads(out.read_text())["metrics"]
    assert metric in metrics
    if metric == "perplexity_ratio":  # a random tiny model is near-uniform over 30k tokens
        assert 1000 < metrics["perplexity_reference"] < 100000 and metrics["perplexity_ratio"] > 0


@pytest.mark.slow
def test_report_merges_machines_and_keeps_emulated_timings_apart(minilm_variants, tmp_path):
    bench = tmp_path / "bench.json"
    main(["bench", str(minilm_variants["mild"]), *QUICK, "-o", str(bench)])
    emulated = json.loads(bench.read_text())
    emulated["machine"].update(emulated=True, architecture="aarch64")
    (tmp_path / "bench-arm.json").write_text(json.dumps(emulated))
    validation = tmp_path / "validate.json"
    main(["validate", str(minilm_variants["mild"]), "--reference", str(minilm_variants["reference"]),
          "-o", str(validation)])
    assert main(["report", str(bench), str(tmp_path / "bench-arm.json"), str(validation),
                 "-o", str(tmp_path / "report")]) == 0
    names = {p.name for p in (tmp_path / "report").iterdir()}
    assert names == {"report.md", "quality.png", "latency.png", "latency-emulated.png"}
    text = (tmp_path / "report" / "report.md").read_text()
    assert "(EMULATED)" in text and "mean_cosine" in text


@pytest.mark.slow
def test_runtime_alone_in_a_fresh_venv(minilm_variants, tmp_path):
    """pip install edgefold (no extras) gives bench and validate, with no torch or transformers anywhere."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    repo = str(__import__("pathlib").Path(__file__).resolve().parents[1])
    subprocess.run([python, "-m", "pip", "install", "-q", repo], check=True, timeout=600)
    installed = subprocess.run([python, "-m", "pip", "list", "--format=freeze"], capture_output=True, text=True,
                               check=True).stdout.lower()
    for heavy in ("torch", "transformers", "optimum"):
        assert f"\n{heavy}==" not in "\n" + installed
    edgefold = str(venv / "bin" / "edgefold")
    run = subprocess.run([edgefold, "bench", str(minilm_variants["mild"]), *QUICK, "-o", str(tmp_path / "b.json")],
                         capture_output=True, text=True, timeout=300, check=False)
    assert run.returncode == 0, run.stderr
    run = subprocess.run([edgefold, "validate", str(minilm_variants["mild"]), "--reference",
                          str(minilm_variants["reference"]), "-o", str(tmp_path / "v.json")],
                         capture_output=True, text=True, timeout=300, check=False)
    assert run.returncode == 0 and "PASS" in run.stdout, run.stderr
    run = subprocess.run([edgefold, "export", "x", "y"], capture_output=True, text=True, check=False)
    assert run.returncode == 2 and 'pip install "edgefold[export]"' in run.stderr


def test_a_worker_reports_its_own_peak_memory_not_its_parents():
    """Linux keeps ru_maxrss across exec: a worker of a large parent must not report the parent's peak."""
    import numpy as np

    ballast = np.ones(300 * 2**20 // 8)  # 300 MB held by this (parent) process
    code = "from edgefold.runtime.bench import peak_rss_bytes as p; print(p())"
    child = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert int(child.stdout) < 200 * 2**20 and ballast.sum() > 0


def test_validate_limit_takes_the_first_items(minilm_variants, tmp_path, capsys):
    out = tmp_path / "v.json"
    assert main(["validate", str(minilm_variants["mild"]), "--reference", str(minilm_variants["reference"]),
                 "--limit", "5", "-o", str(out)]) == 0
    data = json.loads(out.read_text())["data"]
    assert data["items"] == 5 and data["source"] == "shipped evaluation.txt, first 5"
    with pytest.raises(SystemExit) as exit_:
        main(["validate", "x", "--reference", "y", "--limit", "0"])
    assert exit_.value.code == 2
    assert "at least 1" in capsys.readouterr().err
