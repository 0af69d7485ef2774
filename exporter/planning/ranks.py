"""Budget arithmetic: which rank a (rows x cols) matrix gets at compression factor R."""

from __future__ import annotations

RANK_MULTIPLE = 8


def plan_rank(rows: int, cols: int, ratio: float, extra_params: int = 0, multiple: int = RANK_MULTIPLE) -> int | None:
    """The largest multiple of ``multiple`` whose factors keep at most 1/ratio of ``rows * cols`` parameters.

    ``extra_params`` are stored beside the factors (a decoder bias, say) and count against the budget.
    None where not even one ``multiple`` fits the budget, or where it would save nothing: the matrix stays dense.
    """
    rank = int((rows * cols / ratio - extra_params) // (rows + cols)) // multiple * multiple
    if rank < multiple or rank * (rows + cols) + extra_params >= rows * cols:
        return None
    return rank
