import pytest

from edgefold.exporter.planning.ranks import plan_rank


@pytest.mark.parametrize("rows,cols", [(30522, 384), (384, 384), (1536, 384), (384, 1536), (64, 4096)])
@pytest.mark.parametrize("ratio", [1.33, 2, 2.5, 5, 10])
def test_rank_is_a_multiple_of_8_within_the_budget(rows, cols, ratio):
    rank = plan_rank(rows, cols, ratio)
    if rank is None:  # not even the smallest rank fits the budget
        assert 8 * (rows + cols) > rows * cols / ratio
        return
    assert rank % 8 == 0 and rank >= 8
    assert rank * (rows + cols) < rows * cols  # it saves something
    assert rank * (rows + cols) <= rows * cols / ratio
    assert (rank + 8) * (rows + cols) > rows * cols / ratio  # and it is the largest that fits


def test_minilm_word_embeddings_at_ratio_2():
    # 30522 x 384 keeping half: floor(11,720,448 / 2 / 30,906) = 189 -> 184 after rounding down to 8
    assert plan_rank(30522, 384, 2) == 184


def test_extra_params_count_against_the_budget():
    plain = plan_rank(30522, 384, 5)
    assert plan_rank(30522, 384, 5, extra_params=30906 * 8) == plain - 8


def test_a_matrix_too_small_to_save_stays_dense():
    assert plan_rank(8, 8, 2) is None
    assert plan_rank(16, 16, 1.01) is None


def test_a_budget_below_the_smallest_rank_stays_dense():
    # 64 x 4096 at R = 10 keeps 26,214 parameters; rank 8 alone stores 33,280 (it would save, but overspend)
    assert plan_rank(64, 4096, 10) is None
    assert plan_rank(64, 4096, 5) == 8
