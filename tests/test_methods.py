import pytest
import torch

from edgefold.exporter.methods import METHODS, get_method
from edgefold.runtime import EdgefoldError


def test_svd_error_is_the_tail_of_the_spectrum():
    torch.manual_seed(0)
    weight = torch.randn(96, 40)
    factors = get_method("svd").fit(weight, 16)
    assert factors.left.shape == (96, 16) and factors.right.shape == (16, 40)
    singular = torch.linalg.svdvals(weight.double())
    error = torch.linalg.norm((weight - factors.dense()).double())
    assert error == pytest.approx(singular[16:].pow(2).sum().sqrt().item(), rel=1e-5)


def test_svd_at_full_rank_is_exact():
    weight = torch.randn(24, 16)
    assert torch.allclose(get_method("svd").fit(weight, 16).dense(), weight, atol=1e-5)


def test_unknown_method_names_the_known_ones():
    with pytest.raises(EdgefoldError, match="unknown method 'pca'.*svd"):
        get_method("pca")
    assert "svd" in METHODS
