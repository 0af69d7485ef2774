"""A search's candidates that differ only in their precisions share one ONNX export (ExportedGraphs): the copy
is the graph a fresh export writes, quantised afterwards as planned, and another network is exported anew."""

import pytest

from edgefold.exporter import CompressionConfig, GraphConfig, export, pipeline
from edgefold.exporter.onnx.export import export_onnx
from edgefold.exporter.onnx.reuse import ExportedGraphs

UNOPTIMISED = GraphConfig(optimize="none")
QUERY = "bert.encoder.layer.0.attention.self.query"


@pytest.mark.slow
def test_one_export_serves_every_precision_of_the_same_network(tiny_model, tmp_path, monkeypatch):
    model, plain = str(tiny_model("bert-fill-mask")), CompressionConfig(method="none")
    exported = []
    monkeypatch.setattr(pipeline, "export_onnx", lambda *args: exported.append(args[2]) or export_onnx(*args))
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
