"""A search's candidates that differ only in their precisions share one ONNX export (ExportedGraphs): the copy
is the graph a fresh export writes, quantised afterwards as planned, and another network is exported anew. A
folder named by EDGEFOLD_GRAPH_CACHE keeps them for every process."""

import os
import subprocess
import sys

import pytest

from edgefold.exporter import CompressionConfig, GraphConfig, export, pipeline
from edgefold.exporter.onnx.export import export_onnx
from edgefold.exporter.onnx.reuse import CACHE_VARIABLE, ExportedGraphs

UNOPTIMISED = GraphConfig(optimize="none")
QUERY = "bert.encoder.layer.0.attention.self.query"


@pytest.mark.slow
def test_one_export_serves_every_precision_of_the_same_network(tiny_model, tmp_path, monkeypatch):
    model, plain = str(tiny_model("bert-fill-mask")), CompressionConfig(method="none")
    monkeypatch.delenv(CACHE_VARIABLE, raising=False)  # the suite's shared folder would serve the fresh export
    exported = _count_exports(monkeypatch)
    graphs = ExportedGraphs()
    fresh = export(model, tmp_path / "fresh", plain, UNOPTIMISED, progress=False)
    fp32 = export(model, tmp_path / "fp32", plain, UNOPTIMISED, progress=False, reuse=graphs)
    int8 = export(model, tmp_path / "int8", plain, GraphConfig(optimize="none", precisions={QUERY: "int8"}),
                  progress=False, reuse=graphs)
    assert len(exported) == 2  # the fresh export, then one for both that reuse
    assert (tmp_path / "fp32" / "model.onnx").read_bytes() == (tmp_path / "fresh" / "model.onnx").read_bytes()
    assert int8["quantization"]["modules"] == {"int8": 1}
    assert int8["parity"] == fp32["parity"] == fresh["parity"]
    assert int8["totals"]["bytes_after"] < fresh["totals"]["bytes_after"]

    export(model, tmp_path / "svd", CompressionConfig(method="svd", targets="ffn", ratio=2.0), UNOPTIMISED,
           progress=False, reuse=graphs)
    assert len(exported) == 3  # another network: exported anew


@pytest.mark.slow
def test_a_cache_folder_serves_every_process_and_keeps_whole_entries_only(tiny_model, tmp_path, monkeypatch):
    model, plain = tiny_model("distilbert-text-classification"), CompressionConfig(method="none")
    cache = tmp_path / "cache"
    monkeypatch.setenv(CACHE_VARIABLE, str(cache))
    exported = _count_exports(monkeypatch)
    export(str(model), tmp_path / "first", plain, UNOPTIMISED, progress=False)
    export(str(model), tmp_path / "second", plain, GraphConfig(optimize="none", precisions={
        "distilbert.transformer.layer.0.ffn.lin1": "int8"}), progress=False)
    assert len(exported) == 1
    (entry,) = cache.iterdir()  # one entry, whole: nothing written aside is left
    assert sorted(p.name for p in entry.iterdir()) == ["files", "shared"]

    command = [sys.executable, "-m", "edgefold.cli", "export", str(model), str(tmp_path / "third"), "--method",
               "none", "--optimize", "none", "--quiet"]
    run = subprocess.run(command, capture_output=True, text=True, env={**os.environ, CACHE_VARIABLE: str(cache)},
                         timeout=300, check=False)
    assert run.returncode == 0, run.stderr
    assert [p.name for p in cache.iterdir()] == [entry.name]  # another process found it
    assert (tmp_path / "third" / "model.onnx").read_bytes() == (tmp_path / "first" / "model.onnx").read_bytes()

    export(str(model), tmp_path / "svd", CompressionConfig(method="svd", targets="ffn", ratio=2.0), UNOPTIMISED,
           progress=False)
    assert len(exported) == 2 and len(list(cache.iterdir())) == 2


def test_a_cache_that_is_not_a_folder_is_refused_in_one_line_before_any_work(tiny_model, tmp_path, monkeypatch,
                                                                             capsys):
    from edgefold.cli import main

    not_a_folder = tmp_path / "cache"
    not_a_folder.write_text("mine")
    monkeypatch.setenv(CACHE_VARIABLE, str(not_a_folder))
    code = main(["export", str(tiny_model("bert-fill-mask")), str(tmp_path / "out"), "--method", "none"])
    assert code == 2 and "EDGEFOLD_GRAPH_CACHE names" in capsys.readouterr().err
    assert not (tmp_path / "out").exists() and not_a_folder.read_text() == "mine"


def _count_exports(monkeypatch) -> list:
    exported = []
    monkeypatch.setattr(pipeline, "export_onnx", lambda *args: exported.append(args[2]) or export_onnx(*args))
    return exported
