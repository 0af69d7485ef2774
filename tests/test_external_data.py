"""Graphs whose weights live in external data (models of 2 GB and more) through every step: export, optimisation,
quantisation, the .ort format, the manifest's bytes and pack. A tiny model is exported with the external-data
threshold at 0, so every step takes the path a 2 GB model takes; its outputs must equal those of the same export
kept in one file, and the folder must hold exactly the graph and ``model.onnx_data``."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgefold.exporter import GraphConfig, export
from edgefold.exporter.config import CompressionConfig
from edgefold.exporter.onnx import passes
from edgefold.runtime.folder import ExportedFolder
from edgefold.runtime.package import pack, unpack

GRAPH_CASES = {
    "int8, optimised, .ort": GraphConfig(optimize="auto", quantize="int8", formats=("onnx", "ort")),
    "onnxruntime fusions, int4": GraphConfig(optimize="onnxruntime", quantize="int4"),
    "onnxscript fusions": GraphConfig(optimize="onnxscript"),
}


def _export(model: Path, folder: Path, graph: GraphConfig) -> dict:
    return export(model, folder, CompressionConfig(method="svd", ratio=2.0, targets="ffn-in,ffn-out"), graph,
                  progress=False)


def _outputs(folder: Path, name: str = "model.onnx") -> list[np.ndarray]:
    session = ort.InferenceSession(str(folder / name), providers=["CPUExecutionProvider"])
    ids = np.array([[101, 7592, 2088, 102, 0], [101, 2023, 2003, 1037, 102]], dtype=np.int64)
    feed = {"input_ids": ids, "attention_mask": (ids != 0).astype(np.int64)}
    feed.update({i.name: np.zeros_like(ids) for i in session.get_inputs() if i.name not in feed})
    return session.run(None, feed)


@pytest.fixture
def external_everywhere(monkeypatch):
    monkeypatch.setattr(passes, "EXTERNAL_DATA_THRESHOLD", 0)


@pytest.mark.parametrize("case", GRAPH_CASES)
@pytest.mark.slow
def test_every_step_keeps_the_weights_in_model_onnx_data_and_the_manifest_counts_them(
        case, tiny_model, tmp_path, monkeypatch):
    model, graph = tiny_model("bert-text-classification"), GRAPH_CASES[case]
    in_one_file = _export(model, tmp_path / "one-file", graph)
    monkeypatch.setattr(passes, "EXTERNAL_DATA_THRESHOLD", 0)
    manifest = _export(model, tmp_path / "external", graph)

    folder = tmp_path / "external"
    graph_files = {"model.onnx", "model.onnx_data"}
    assert manifest["files"] == {name: (folder / name).stat().st_size for name in graph_files}
    assert manifest["totals"]["bytes_after"] == sum(manifest["files"].values())
    assert [p.name for p in passes.graph_files(folder / "model.onnx")] == ["model.onnx", "model.onnx_data"]
    assert (folder / "model.onnx").stat().st_size < (folder / "model.onnx_data").stat().st_size
    leftovers = {p.name for p in folder.iterdir()} - graph_files - set(in_one_file["files"]) - {
        "config.json", "edgefold.json", "model.ort", "required_operators.config", "tokenizer.json",
        "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"}
    assert not leftovers  # no other sidecar (model.onnx.data), no staged graph
    for step in ("optimization", "quantization", "ort_format"):
        assert (manifest[step] is None) == (in_one_file[step] is None), step
    # where the weights are stored changes nothing the graph computes
    for stored_apart, stored_inside in zip(_outputs(folder), _outputs(tmp_path / "one-file")):
        np.testing.assert_array_equal(stored_apart, stored_inside)
    if "ort" in graph.formats:
        np.testing.assert_allclose(_outputs(folder, "model.ort")[0], _outputs(folder)[0], atol=1e-4)


@pytest.mark.slow
def test_per_module_precisions_keep_external_data(tiny_model, tmp_path, external_everywhere):
    model = tiny_model("bert-text-classification")
    precisions = {"bert.encoder.layer.0.intermediate.dense": "int4-32", "bert.encoder.layer.1.output.dense": "int8"}
    manifest = export(model, tmp_path / "mixed", CompressionConfig(method="none"),
                      GraphConfig(optimize="none", precisions=precisions), progress=False)
    assert set(manifest["files"]) == {"model.onnx", "model.onnx_data"}
    assert manifest["quantization"]["nodes"] == {"int8": 1, "int4-32": 1}
    assert {p.name for p in (tmp_path / "mixed").iterdir()} >= {"model.onnx", "model.onnx_data"}
    assert not [p for p in (tmp_path / "mixed").iterdir() if p.name.startswith(".")]


@pytest.mark.slow
def test_pack_carries_the_external_data_and_the_unpacked_folder_runs(tiny_model, tmp_path, external_everywhere):
    folder = tmp_path / "model"
    _export(tiny_model("bert-text-classification"), folder, GraphConfig(optimize="none", quantize="int8"))
    assert ExportedFolder.open(folder).bytes_on_disk().keys() == {"model.onnx", "model.onnx_data"}
    archive = tmp_path / "model.tar.gz"
    pack(folder, archive)
    with tarfile.open(archive) as tar:
        assert {"model/model.onnx", "model/model.onnx_data"} <= set(tar.getnames())
    unpacked = tmp_path / "unpacked"
    unpack(archive, unpacked)
    np.testing.assert_array_equal(_outputs(unpacked)[0], _outputs(folder)[0])
    assert json.loads((unpacked / "edgefold.json").read_text())["files"]["model.onnx_data"] == \
        (unpacked / "model.onnx_data").stat().st_size

    from edgefold.cli import main
    assert main(["bench", str(unpacked), "--threads", "1", "--seq", "16", "--warmup", "1", "--iterations", "2",
                 "--min-seconds", "0", "-o", str(tmp_path / "bench.json")]) == 0
    bench = json.loads((tmp_path / "bench.json").read_text())
    assert bench["models"]["unpacked"]["bytes"] == {"model.onnx": (unpacked / "model.onnx").stat().st_size,
                                                     "model.onnx_data": (unpacked / "model.onnx_data").stat().st_size}
    assert main(["validate", str(unpacked), "--reference", str(folder), "--gate", "label_agreement>=1",
                 "-o", str(tmp_path / "validate.json")]) == 0


WEIGHT = np.arange(32 * 64, dtype=np.float32).reshape(32, 64)  # past onnx's 1 KiB: stored outside when external


def _tiny_graph() -> onnx.ModelProto:
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 32])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64])],
                              [numpy_helper.from_array(WEIGHT, "w")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_settle_moves_a_tools_external_data_to_the_usual_name_and_remove_takes_it_away(tmp_path):
    # what onnxruntime's tools write: "<graph>.data"
    written = tmp_path / ".optimised.onnx"
    onnx.save_model(_tiny_graph(), str(written), save_as_external_data=True, location=".optimised.onnx.data")
    assert [p.name for p in passes.graph_files(written)] == [".optimised.onnx", ".optimised.onnx.data"]
    target = tmp_path / "model.onnx"
    target.with_name("model.onnx_data").write_bytes(b"stale bytes that must not be appended to")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(passes, "EXTERNAL_DATA_THRESHOLD", 0)
        files = passes.settle(written, target)
    assert [p.name for p in files] == ["model.onnx", "model.onnx_data"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx", "model.onnx_data"]
    x = np.ones((1, 32), dtype=np.float32)
    y = ort.InferenceSession(str(target), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(y, x @ WEIGHT, rtol=1e-6)

    passes.remove(target)
    assert not list(tmp_path.iterdir())


def test_a_graph_small_enough_is_saved_whole_again(tmp_path):
    written = tmp_path / "tool.onnx"
    onnx.save_model(_tiny_graph(), str(written), save_as_external_data=True, location="tool.onnx.data")
    assert passes.settle(written, tmp_path / "model.onnx") == [tmp_path / "model.onnx"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]


@pytest.mark.slow
def test_a_graph_too_large_for_the_ort_format_fails_in_one_line_and_writes_nothing(tiny_model, tmp_path, monkeypatch):
    from edgefold.exporter.graph import mobile
    from edgefold.runtime import EdgefoldError

    monkeypatch.setattr(mobile, "ORT_FORMAT_MAX_BYTES", 1000)  # as a graph past 2 GiB is to the real limit
    with pytest.raises(EdgefoldError, match=r"the \.ort format holds at most 2 GiB and this graph is [\d,]+ bytes"):
        _export(tiny_model("bert-text-classification"), tmp_path / "out", GraphConfig(formats=("onnx", "ort")))
    assert not (tmp_path / "out").exists()
