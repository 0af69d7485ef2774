"""The global budget's greedy allocation: cheapest fidelity per parameter first, within budget, above floors."""

import pytest

from edgefold.exporter.allocate import Sensitivity, allocate, candidate_ranks
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
