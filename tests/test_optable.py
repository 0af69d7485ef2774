"""The per-operator latency table: probes written (and quantised) on the host, timed by the runtime, read back
strictly; the ``edgefold bench --op-table`` command; the search's cached measurement and whole-graph latency."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

import edgefold.exporter.search.latency as latency
import edgefold.runtime.optable as optable
from edgefold.exporter.search.latency import OpShape, measure_table, model_latency, write_probes
from edgefold.runtime import EdgefoldError
from edgefold.cli import main
from edgefold.runtime.optable import PRECISIONS, LatencyTable, read_probes, time_probes
from edgefold.runtime.outputs import write_json

SHAPES = [OpShape("MatMul", 384, 1536), OpShape("MatMul", 1536, 384), OpShape("Gather", 1000, 384)]


@pytest.fixture(scope="module")
def probes(tmp_path_factory) -> Path:
    return write_probes(tmp_path_factory.mktemp("probes") / "p", SHAPES, PRECISIONS, tokens=128)


@pytest.fixture(scope="module")
def table_document(probes) -> dict:
    return time_probes(probes, threads=1, rounds=3, progress=False)


@pytest.fixture
def small_probes(tmp_path) -> Path:
    return write_probes(tmp_path / "small", [OpShape("MatMul", 64, 32)], ["fp32", "int8"], tokens=8)


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


# ------------------------------------------------------------------------------------------------ probes


def test_probes_cover_every_shape_and_precision(probes):
    tokens, listed = read_probes(probes)
    assert tokens == 128
    assert {key for key, _ in listed} == {(s.op, s.k, s.n, p) for s in SHAPES for p in PRECISIONS}
    assert (probes / "matmul_384x1536_int8.onnx").is_file()


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s.op}-{s.k}x{s.n}")
def test_quantised_probes_hold_no_float_weight(probes, shape):
    # fp32 keeps its k x n float weight; every other precision replaced it with the quantiser's own tensors
    for precision in PRECISIONS:
        graph = onnx.load(str(probes / f"{shape.op.lower()}_{shape.k}x{shape.n}_{precision}.onnx")).graph
        floats = [i for i in graph.initializer if list(i.dims) == [shape.k, shape.n]
                  and i.data_type == TensorProto.FLOAT]
        assert bool(floats) == (precision == "fp32"), precision


def test_int4_probes_use_their_block_size(probes):
    for block in (32, 128):
        graph = onnx.load(str(probes / f"matmul_384x1536_int4-{block}.onnx")).graph
        sizes = [a.i for n in graph.node for a in n.attribute if a.name == "block_size"]
        assert sizes == [block]


def test_write_probes_refuses_bad_requests(tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("mine")
    with pytest.raises(EdgefoldError, match="not an empty folder"):
        write_probes(tmp_path / "full", [OpShape("MatMul", 8, 8)], ["fp32"])
    with pytest.raises(EdgefoldError, match="unknown precision 'int3'"):
        write_probes(tmp_path / "a", [OpShape("MatMul", 8, 8)], ["fp32", "int3"])
    with pytest.raises(EdgefoldError, match="unknown op 'Conv'"):
        OpShape("Conv", 8, 8)
    with pytest.raises(EdgefoldError, match="k must be a whole number"):
        OpShape("MatMul", 0, 8)
    assert not (tmp_path / "a").exists()


# ------------------------------------------------------------------------------------------------ timing


def test_table_round_trips_through_read(table_document, tmp_path):
    doc = table_document
    assert doc["machine"]["cpu"] and doc["tokens"] == 128 and doc["threads"] == 1
    assert len(doc["entries"]) == len(SHAPES) * len(PRECISIONS)
    assert all(math.isfinite(e["ms"]) and e["ms"] > 0 for e in doc["entries"])
    write_json(tmp_path / "t.json", doc)
    table = LatencyTable.read(tmp_path / "t.json")
    assert (table.tokens, table.threads) == (128, 1)
    for entry in doc["entries"]:
        assert table.ms(entry["op"], entry["k"], entry["n"], entry["precision"]) == entry["ms"]
    assert table.ms("MatMul", 1536, 384, "int8") > 0


def test_a_missing_entry_names_the_table_and_the_operator(table_document, tmp_path):
    write_json(tmp_path / "t.json", table_document)
    table = LatencyTable.read(tmp_path / "t.json")
    with pytest.raises(EdgefoldError) as error:
        table.ms("MatMul", 384, 1024, "int4-128")
    assert str(error.value) == (f"the latency table {tmp_path / 't.json'} has no entry for MatMul 384x1024 at "
                                "int4-128: was it measured for another model?")


def _index(folder: Path, probes: list[dict], **top) -> None:
    document = {"schema": "edgefold.op-probes", "schema_version": 1, "tokens": 8, "probes": probes, **top}
    (folder / "probes.json").write_text(json.dumps(document))


def _probe(file: str, **fields) -> dict:
    return {"file": file, "op": "MatMul", "k": 64, "n": 32, "precision": "fp32", **fields}


@pytest.mark.parametrize("problem, match", [
    ("dotdot", "must be a path inside"), ("absolute", "must be a path inside"), ("symlink", "leads outside"),
    ("missing", "no such file"), ("bad-json", "is not valid JSON"), ("op", "unknown op 'Conv'"),
    ("precision", "unknown precision 'int2'"), ("twice", "appears twice"), ("schema", "not an edgefold.op-probes"),
    ("tokens", "tokens must be a whole number"), ("empty", "probes must be a non-empty list"),
    ("no-index", "holds no probes.json"),
])
def test_bad_probe_folders_are_refused_before_any_timing(problem, match, small_probes, tmp_path, monkeypatch):
    monkeypatch.setattr(optable, "_session", lambda *a: pytest.fail("timed a probe of a bad folder"))
    name = "matmul_64x32_fp32.onnx"
    outside = tmp_path / "outside.onnx"
    outside.write_bytes((small_probes / name).read_bytes())
    cases = {
        "dotdot": lambda: _index(small_probes, [_probe("../outside.onnx")]),
        "absolute": lambda: _index(small_probes, [_probe(str(outside))]),
        "symlink": lambda: ((small_probes / "link.onnx").symlink_to(outside), _index(small_probes,
                                                                                      [_probe("link.onnx")])),
        "missing": lambda: _index(small_probes, [_probe("gone.onnx")]),
        "bad-json": lambda: (small_probes / "probes.json").write_text("{"),
        "op": lambda: _index(small_probes, [_probe(name, op="Conv")]),
        "precision": lambda: _index(small_probes, [_probe(name, precision="int2")]),
        "twice": lambda: _index(small_probes, [_probe(name), _probe(name)]),
        "schema": lambda: _index(small_probes, [_probe(name)], schema="edgefold.bench"),
        "tokens": lambda: _index(small_probes, [_probe(name)], tokens=0),
        "empty": lambda: _index(small_probes, []),
        "no-index": lambda: (small_probes / "probes.json").unlink(),
    }
    cases[problem]()
    with pytest.raises(EdgefoldError, match=match) as error:
        time_probes(small_probes, progress=False)
    assert "\n" not in str(error.value)


# ------------------------------------------------------------------------------------------------ reading


def _table(**top) -> dict:
    entry = {"op": "MatMul", "k": 64, "n": 32, "precision": "int8", "ms": 0.5}
    return {"schema": "edgefold.latency-table", "schema_version": 1, "machine": {"cpu": "x"}, "tokens": 8,
            "threads": 1, "entries": [entry], **top}


def _entry(**fields) -> list[dict]:
    return [{"op": "MatMul", "k": 64, "n": 32, "precision": "int8", "ms": 0.5, **fields}]


@pytest.mark.parametrize("document, match", [
    (_table(schema="edgefold.bench"), "not an edgefold.latency-table"),
    (_table(schema_version=2), "version 2"),
    (_table(threads=0), "threads must be"), (_table(tokens=True), "tokens must be"),
    (_table(machine=None), "machine must be"), (_table(entries=[]), "non-empty list"),
    (_table(entries=_entry(ms=0)), "ms must be a finite number above 0"),
    (_table(entries=_entry(ms=-1.0)), "ms must be"), (_table(entries=_entry(ms="1")), "ms must be"),
    (_table(entries=_entry(ms=True)), "ms must be"), (_table(entries=_entry(ms=1e400)), "holds Infinity"),
    (_table(entries=_entry(k=1.5)), "k and n must be"), (_table(entries=_entry(n=False)), "k and n must be"),
    (_table(entries=_entry(precision="int4")), "unknown precision 'int4'"),
    (_table(entries=_entry(op="Conv")), "unknown op"), (_table(entries=_entry() * 2), "appears twice"),
    (_table(entries=["x"]), "must be a JSON object"), ([1], "must hold a JSON object"),
])
def test_malformed_tables_are_one_line(document, match, tmp_path):
    path = tmp_path / "t.json"
    path.write_text(json.dumps(document))  # 1e400 is written as Infinity
    with pytest.raises(EdgefoldError, match=match) as error:
        LatencyTable.read(path)
    assert "\n" not in str(error.value)


def test_nan_in_a_table_is_refused(tmp_path):
    (tmp_path / "t.json").write_text(json.dumps(_table()).replace("0.5", "NaN"))
    with pytest.raises(EdgefoldError, match="NaN"):
        LatencyTable.read(tmp_path / "t.json")


_JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
                     lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                                 max_size=3), max_leaves=8)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(field=st.sampled_from(["op", "k", "n", "precision", "ms"]), value=_JSON)
def test_any_entry_value_reads_or_is_refused_in_one_line(field, value):
    try:
        table = LatencyTable.from_document(_table(entries=_entry(**{field: value})), "t.json")
    except EdgefoldError as error:
        assert "\n" not in str(error)
        return
    (ms,) = table.entries.values()
    assert math.isfinite(ms) and ms > 0


# ------------------------------------------------------------------------------------------------ the CLI


def test_cli_writes_a_table_and_replaces_only_with_overwrite(small_probes, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["bench", "--op-table", str(small_probes)]) == 0
    table = LatencyTable.read(tmp_path / "latency-table.json")
    assert table.ms("MatMul", 64, 32, "int8") > 0 and table.threads == 1
    assert "wrote latency-table.json" in capsys.readouterr().out
    assert main(["bench", "--op-table", str(small_probes)]) == 2
    assert "exists; pass --overwrite" in _error_line(capsys)
    out = tmp_path / "two.json"
    assert main(["bench", "--op-table", str(small_probes), "--threads", "2", "-o", str(out), "--emulated"]) == 0
    document = json.loads(out.read_text())
    assert document["threads"] == 2 and document["machine"]["emulated"] is True
    assert main(["bench", "--op-table", str(small_probes), "-o", str(out), "--overwrite"]) == 0


@pytest.mark.parametrize("argv, match", [
    (["bench"], "give the exported folder to measure (or --op-table PROBES_DIR"),
    (["bench", "somefolder", "--op-table", "P"], "give the folder 'somefolder' or --op-table, not both"),
    (["bench", "--op-table", "P", "--compare", "x"], "--compare measure a model folder"),
    (["bench", "--op-table", "P", "--seq", "64", "--batch", "2"], "--batch, --seq measure a model folder"),
    (["bench", "--op-table", "P", "--threads", "1,2"], "one thread count, not 2"),
    (["bench", "--op-table", "missing"], "no such probe folder: missing"),
])
def test_cli_argument_combinations_are_one_line(argv, match, small_probes, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    argv = [str(small_probes) if a == "P" else a for a in argv]
    assert main(argv) == 2
    assert match in _error_line(capsys)
    assert not (tmp_path / "latency-table.json").exists()


def test_cli_refuses_to_overwrite_a_file_it_did_not_write(small_probes, tmp_path, capsys):
    (tmp_path / "notes.json").write_text('{"mine": 1}')
    assert main(["bench", "--op-table", str(small_probes), "-o", str(tmp_path / "notes.json"), "--overwrite"]) == 2
    assert "edgefold replaces only files it wrote" in _error_line(capsys)
    assert (tmp_path / "notes.json").read_text() == '{"mine": 1}'


# ------------------------------------------------------------------------------------------------ the search side


def test_measure_table_caches_per_request(tmp_path, monkeypatch):
    shapes, cache = [OpShape("MatMul", 64, 32), OpShape("Gather", 1000, 16)], tmp_path / "cache"
    calls = []
    real = latency.time_probes
    monkeypatch.setattr(latency, "time_probes", lambda *a, **k: calls.append(1) or real(*a, **k))
    first = measure_table(shapes, ["fp32"], tokens=8, cache=cache, rounds=2, progress=False)
    (cached,) = cache.iterdir()
    second = measure_table(shapes[::-1], ["fp32"], tokens=8, cache=cache, rounds=2, progress=False)
    assert len(calls) == 1 and second.entries == first.entries and second.source == str(cached)
    measure_table(shapes, ["fp32"], tokens=8, threads=2, cache=cache, rounds=2, progress=False)
    assert len(calls) == 2 and len(list(cache.iterdir())) == 2  # another thread count is another table
    cached.write_text("{broken")  # a damaged cache is measured again, not fatal
    again = measure_table(shapes, ["fp32"], tokens=8, cache=cache, rounds=2, progress=False)
    assert len(calls) == 3 and LatencyTable.read(cached).entries == again.entries
    table = measure_table(shapes, ["fp32"], tokens=8, cache=None, rounds=2, progress=False)
    assert table.ms("Gather", 1000, 16, "fp32") > 0 and len(calls) == 4


def test_model_latency_of_a_whole_graph(tmp_path):
    rng = np.random.default_rng(0)
    weights = [numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)
               for name, shape in (("embeddings", (1000, 64)), ("dense", (64, 64)))]
    nodes = [helper.make_node("Gather", ["embeddings", "input_ids"], ["hidden"]),
             helper.make_node("MatMul", ["hidden", "dense"], ["last_hidden_state"])]
    graph = helper.make_graph(nodes, "m", [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["b", "s"])],
                              [helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, ["b", "s", 64])],
                              weights)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "cand.onnx"))
    ms = model_latency(tmp_path / "cand.onnx", tokens=16, rounds=5)
    assert math.isfinite(ms) and ms > 0
    with pytest.raises(EdgefoldError, match="no such graph or folder"):
        model_latency(tmp_path / "gone.onnx")


def test_the_runtime_table_imports_neither_onnx_nor_torch():
    code = ("import sys, edgefold.runtime.optable, edgefold.cli.bench\n"
            "print(sorted(m for m in ('onnx', 'torch', 'transformers', 'edgefold.exporter') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
