"""A size budget counts the bytes the file will hold: quantised bytes when the export quantises."""

from __future__ import annotations

import pytest

from edgefold.exporter import CompressionConfig, GraphConfig, export
from edgefold.exporter.graph.quantize import QUANTISED_PARAM_BYTES
from edgefold.runtime import EdgefoldError


@pytest.mark.parametrize("quantize", ["none", "int8", "int4"])
def test_graph_config_tells_the_budget_what_a_parameter_costs(quantize):
    config = GraphConfig(quantize=quantize).adapt(CompressionConfig(method="svd", size_budget=10_000_000,
                                                                    then=None))
    assert config.param_bytes == QUANTISED_PARAM_BYTES.get(quantize, 4.0)
    assert config.rank_multiple == (32 if quantize == "int4" else 8)


@pytest.mark.slow
def test_an_int8_budget_allocates_four_times_the_parameters(tiny_model, tmp_path):
    """The same byte budget buys four times the fp32 budget's parameters at int8, and the file fits it."""
    folder = tiny_model("roberta-feature-extraction")
    params = {}
    for quantize in ("none", "int8"):
        budget = 700_000 if quantize == "int8" else 2_800_000
        config = CompressionConfig(method="svd", targets="embeddings", size_budget=budget, frequency=False)
        manifest = export(folder, tmp_path / quantize, config, GraphConfig(quantize=quantize, optimize="none"),
                          progress=False)
        params[quantize] = manifest["totals"]["model_params_after"]
        assert manifest["totals"]["bytes_after"] <= budget * 1.05  # quantisation scales and the graph itself
    assert params["int8"] == params["none"]


def test_param_bytes_is_checked():
    with pytest.raises(EdgefoldError, match="param_bytes"):
        CompressionConfig(param_bytes=0)
