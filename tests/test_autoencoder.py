"""The direction-aware autoencoder: its loss, schedule, start, selection, options and budget."""

import pytest
import torch

from edgefold.exporter.methods import FitContext, get_method, parse_method_options
from edgefold.exporter.methods.autoencoder import (
    AutoencoderOptions,
    DirectionAwareAutoencoder,
    alpha_at,
    direction_loss,
)
from edgefold.exporter.planning.ranks import plan_rank
from edgefold.runtime import EdgefoldError

DEFAULTS = AutoencoderOptions()


def _structured(rows=400, cols=48, seed=0):
    """Rows of different lengths around a low-dimensional structure, plus noise."""
    g = torch.Generator().manual_seed(seed)
    low = torch.randn(rows, 6, generator=g) @ torch.randn(6, cols, generator=g)
    return (low + 0.3 * torch.randn(rows, cols, generator=g)) * torch.rand(rows, 1, generator=g).add(0.2)


def test_the_loss_is_the_weighted_sum_of_its_cosine_power_l1_and_rmse_terms():
    # weights that are not the defaults: the formula is checked, not the constants restated
    options = AutoencoderOptions(cosine_weight=0.3, power_l1_weight=0.7, rmse_weight=0.5)
    target = torch.tensor([[1.0, 0.0, 2.0], [0.5, -1.0, 0.0]])
    decoded = torch.tensor([[0.5, 0.5, 2.0], [0.5, -1.0, 1.0]])
    cosine = torch.nn.functional.cosine_similarity(decoded, target, dim=-1)
    power_l1 = ((decoded - target).abs() + 1e-10).pow(0.4).mean()
    rmse = (decoded - target).pow(2).mean().sqrt()
    expected = 0.3 * (1 - cosine).mean() + 0.7 * power_l1 + 0.5 * rmse
    assert direction_loss(decoded, target, 0.4, options) == pytest.approx(expected.item(), rel=1e-6)
    assert direction_loss(target, target, 0.4, options) == pytest.approx(0.7 * 1e-10 ** 0.4, abs=1e-6)


def test_cosine_term_sees_direction_only():
    target = torch.randn(5, 8)
    only_direction = AutoencoderOptions(power_l1_weight=0.0)
    assert direction_loss(3 * target, target, 1.0, only_direction) == pytest.approx(0.0, abs=1e-6)
    assert direction_loss(-target, target, 1.0, only_direction) == pytest.approx(2 * 0.1995, rel=1e-5)


def test_alpha_anneals_linearly_over_20_epochs_then_holds():
    assert alpha_at(0, DEFAULTS) == 1.0
    assert alpha_at(10, DEFAULTS) == pytest.approx(0.55)
    assert alpha_at(20, DEFAULTS) == pytest.approx(0.1) == alpha_at(29, DEFAULTS)


def test_the_start_is_truncated_svd():
    weight = _structured()
    method = DirectionAwareAutoencoder(AutoencoderOptions(epochs=0))
    factors = method.fit(weight, 8, FitContext())
    vh = torch.linalg.svd(weight.double(), full_matrices=False)[2][:8]
    projection = (weight.double() @ vh.T @ vh).float()
    assert factors.left.shape == (400, 8) and factors.right.shape == (8, 48) and factors.bias.shape == (48,)
    torch.testing.assert_close(factors.dense(), projection, atol=1e-4, rtol=1e-4)


def test_training_lowers_the_papers_loss():
    weight = _structured()
    fitted = DirectionAwareAutoencoder(AutoencoderOptions(epochs=12)).fit(weight, 4, FitContext())
    start = DirectionAwareAutoencoder(AutoencoderOptions(epochs=0)).fit(weight, 4, FitContext())
    alpha = alpha_at(11, DEFAULTS)
    assert direction_loss(fitted.dense(), weight, alpha, DEFAULTS) < 0.99 * direction_loss(start.dense(), weight, alpha,
                                                                                          DEFAULTS)


def test_deterministic_for_a_seed():
    weight = _structured()
    options = AutoencoderOptions(epochs=3, svd_init=False)
    a, b, c = (DirectionAwareAutoencoder(options).fit(weight, 8, FitContext(seed=s)) for s in (7, 7, 8))
    assert torch.equal(a.left, b.left) and torch.equal(a.right, b.right) and torch.equal(a.bias, b.bias)
    assert not torch.equal(a.left, c.left)


def test_the_checkpoint_is_selected_on_the_validation_score():
    weight = _structured()
    start = DirectionAwareAutoencoder(AutoencoderOptions(epochs=0)).fit(weight, 8, FitContext()).dense()
    # a validation score that prefers the start: the fit must hand back the start, and say so
    stay = FitContext(score=lambda f: -float((f.dense() - start).norm()))
    kept = DirectionAwareAutoencoder(AutoencoderOptions(epochs=6, validate_every=2)).fit(weight, 8, stay)
    assert stay.details["selected_epoch"] == 0
    torch.testing.assert_close(kept.dense(), start)
    # one that prefers moving away: a later epoch wins
    move = FitContext(score=lambda f: float((f.dense() - start).norm()))
    DirectionAwareAutoencoder(AutoencoderOptions(epochs=6, validate_every=2)).fit(weight, 8, move)
    assert move.details["selected_epoch"] in (2, 4, 6)
    assert move.details["validation_fidelity_selected"] > move.details["validation_fidelity_start"]


def test_row_norms_are_preserved():
    weight = _structured()
    factors = DirectionAwareAutoencoder(AutoencoderOptions(epochs=2, preserve_norms=True)).fit(weight, 8, FitContext())
    torch.testing.assert_close(factors.dense().norm(dim=-1), weight.norm(dim=-1), rtol=1e-4, atol=1e-5)


def test_elu_variant_decodes_through_elu():
    weight = _structured()
    factors = DirectionAwareAutoencoder(AutoencoderOptions(epochs=1, activation="elu")).fit(weight, 8, FitContext())
    assert factors.activation == "elu" and bool((factors.dense() >= -1).all())
    method = get_method("ae", AutoencoderOptions(activation="elu"))
    method.check_module("embeddings")
    for kind, tied in (("ffn-in", False), ("embeddings", True)):
        with pytest.raises(EdgefoldError, match="ELU"):
            method.check_module(kind, tied=tied)


def test_budget_counts_the_decoder_bias_and_norms():
    rows, cols, ratio = 30522, 384, 5
    for options, extra in ((AutoencoderOptions(), cols), (AutoencoderOptions(preserve_norms=True), cols + rows)):
        method = DirectionAwareAutoencoder(options)
        assert method.extra_params(rows, cols, "embeddings") == extra
        rank = plan_rank(rows, cols, ratio, method.extra_params(rows, cols, "embeddings"))
        stored = rank * (rows + cols) + extra
        assert stored <= rows * cols / ratio
        weight = torch.randn(rows, cols) if extra > cols else None
        if weight is not None:  # the factors' own count agrees with the plan
            factors = DirectionAwareAutoencoder(AutoencoderOptions(epochs=0, preserve_norms=True)).fit(
                weight, rank, FitContext())
            assert factors.num_params == stored


@pytest.mark.parametrize("options,match", [({"epoch": "3"}, "unknown option 'epoch'"),
                                           ({"epochs": "many"}, "takes a int"),
                                           ({"svd_init": "maybe"}, "true or false"),
                                           ({"activation": "relu"}, "linear or elu"),
                                           ({"lr": "nan"}, "lr must be a finite number"),
                                           ({"lr": "-1"}, "lr must be > 0"),
                                           ({"batch_size": "0"}, "batch_size must be >= 1"),
                                           ({"cosine_weight": "-0.5"}, "cosine_weight must be >= 0"),
                                           ({"cosine_weight": "0", "power_l1_weight": "0"}, "needs a weight > 0")])
def test_bad_options_are_refused(options, match):
    with pytest.raises(EdgefoldError, match=match):
        parse_method_options("ae", options)


def test_options_parse_from_strings():
    options = parse_method_options("ae", {"epochs": "5", "lr": "0.01", "preserve_norms": "yes", "activation": "elu"})
    assert options == AutoencoderOptions(epochs=5, lr=0.01, preserve_norms=True, activation="elu")
    assert get_method("ae", options).options is options
    with pytest.raises(EdgefoldError, match="takes no options"):
        parse_method_options("svd", {"epochs": "5"})


@pytest.mark.parametrize("values,match", [(dict(epochs=2.5), "epochs takes a int"), (dict(lr=float("inf")), "finite"),
                                          (dict(svd_init=1), "svd_init takes a bool"),
                                          (dict(alpha_end=0), "alpha_end must be > 0")])
def test_options_made_in_python_are_checked_too(values, match):
    with pytest.raises(EdgefoldError, match=match):
        AutoencoderOptions(**values)
    assert AutoencoderOptions(lr=1).lr == 1.0 and isinstance(AutoencoderOptions(lr=1).lr, float)


@pytest.mark.parametrize("preserve_norms", [False, True])
def test_a_linear_gets_exactly_svds_rank_and_size(preserve_norms):
    """Bias and norms fold into one rank of the factors: the graph is two MatMuls, as large as SVD's."""
    weight = _structured(rows=96, cols=48)
    rank = plan_rank(96, 48, 2)
    method = DirectionAwareAutoencoder(AutoencoderOptions(epochs=2, preserve_norms=preserve_norms))
    assert method.extra_params(96, 48, "ffn-in") == 0
    factors = method.fit(weight, rank, FitContext(kind="ffn-in"))
    assert factors.rank == rank - 1 and factors.bias is not None
    folded = factors.folded()
    assert folded.rank == rank and folded.bias is None and folded.row_scale is None
    assert folded.num_params == rank * (96 + 48) == get_method("svd").fit(weight, rank, FitContext()).num_params
    torch.testing.assert_close(folded.dense(), factors.dense(), atol=1e-5, rtol=1e-5)
