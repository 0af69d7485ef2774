"""The global budget's greedy allocation: cheapest fidelity per parameter first, within budget, above floors."""

import pytest

from edgefold.exporter.planning.sensitivity import (
    Sensitivity,
    allocate,
    candidate_ranks,
)
from edgefold.runtime import EdgefoldError


def _module(name, loss_scale, rows=64, cols=64):
    ranks = candidate_ranks(rows, cols, 8)
    return Sensitivity(name, rows, cols, ranks, [loss_scale / r for r in ranks])  # less rank, more loss


def test_candidate_ranks_are_multiples_below_break_even():
    ranks = candidate_ranks(384, 1536, 8)
    assert ranks == sorted(set(ranks)) and all(r % 8 == 0 and r * (384 + 1536) < 384 * 1536 for r in ranks)
    assert candidate_ranks(384, 1536, 32) and all(r % 32 == 0 for r in candidate_ranks(384, 1536, 32))


def test_the_less_sensitive_module_gives_up_more():
    robust, fragile = _module("robust", 0.01), _module("fragile", 1.0)
    dense = 2 * 64 * 64
    ranks = allocate([robust, fragile], budget_params=0.6 * dense)
    params = sum(robust.params(robust.ranks.index(r)) if r else robust.dense_params for r in ranks.values())
    assert params <= 0.6 * dense
    assert ranks["robust"] is not None and (ranks["fragile"] is None or ranks["fragile"] > ranks["robust"])


def test_a_generous_budget_leaves_everything_dense():
    assert allocate([_module("a", 1.0), _module("b", 1.0)], budget_params=2 * 64 * 64) == {"a": None, "b": None}


def test_a_budget_below_the_floors_is_refused():
    with pytest.raises(EdgefoldError, match="below what the targeted modules need at their smallest ranks"):
        allocate([_module("a", 1.0), _module("b", 1.0)], budget_params=10)


@pytest.mark.slow
def test_a_global_budget_exports_with_parity_and_stays_within_it(tiny_model, tmp_path):
    from edgefold.exporter import CompressionConfig, GraphConfig, export

    config = CompressionConfig(targets="attention,ffn", ratio=2, allocation="sensitivity")
    manifest = export(str(tiny_model("bert-fill-mask")), tmp_path / "out", config, GraphConfig(optimize="none"),
                      progress=False)
    totals = manifest["totals"]
    assert manifest["allocation"] == "sensitivity" and manifest["parity"]["max_abs_diff"] <= 1e-3
    assert totals["targeted_params_after"] <= totals["targeted_params_before"] / 2
    for module in manifest["modules"]:
        sensitivity = module["fit"]["sensitivity"]
        assert len(sensitivity["ranks"]) == len(sensitivity["fidelity_lost"]) > 1
        assert module["rank"] is None or module["rank"] in sensitivity["ranks"]


@pytest.mark.slow
def test_a_size_budget_in_bytes_sets_the_whole_model_size(tiny_model, tmp_path):
    from edgefold.exporter import CompressionConfig, GraphConfig, export
    from edgefold.exporter.checks.manifest import format_summary

    folder = tiny_model("distilbert-text-classification")
    uniform = export(str(folder), tmp_path / "uniform", CompressionConfig(targets="attention,ffn"),
                     GraphConfig(optimize="none"), progress=False)["totals"]
    # the whole model's fp32 bytes with 40% of the targeted weights gone
    budget = int((uniform["model_params_before"] - 0.4 * uniform["targeted_params_before"]) * 4)
    manifest = export(str(folder), tmp_path / "out", CompressionConfig(targets="attention,ffn", size_budget=budget),
                      GraphConfig(optimize="none"), progress=False)
    assert manifest["allocation"] == "sensitivity" and manifest["totals"]["model_params_after"] * 4 <= budget
    summary = format_summary(manifest, tmp_path / "out")
    assert f"within a size budget of {budget:,} bytes" in summary and "at ratio" not in summary
    assert manifest["ratio"] is None  # the budget, not a ratio, is what was asked


@pytest.mark.parametrize("settings, message", [
    (dict(allocation="greedy"), "unknown allocation 'greedy'"),
    (dict(size_budget=0), "--size-budget must be a positive number of bytes"),
    (dict(allocation="sensitivity", frequency=True), "not with frequency-aware embeddings"),
    (dict(allocation="sensitivity", method="svd-shared"), "nor with a cross-layer method"),
])
def test_bad_allocation_settings_are_refused(settings, message):
    from edgefold.exporter import CompressionConfig

    with pytest.raises(EdgefoldError, match=message):
        CompressionConfig(**settings)
