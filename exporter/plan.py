"""Budget arithmetic: which rank a (rows x cols) matrix gets at compression factor R."""

from __future__ import annotations

RANK_MULTIPLE = 8


def plan_rank(rows: int, cols: int, ratio: float, extra_params: int = 0, multiple: int = RANK_MULTIPLE) -> int | None:
    """The largest multiple of ``multiple`` whose factors keep at most 1/ratio of ``rows * cols`` parameters.

    ``extra_params`` are stored beside the factors (a decoder bias, say) and count against the budget.
    At least one ``multiple`` is kept; None means even that saves nothing, so the matrix should stay dense.
    """
    budget = rows * cols / ratio - extra_params
    rank = max(multiple, int(budget // (rows + cols)) // multiple * multiple)
    if rank * (rows + cols) + extra_params >= rows * cols:
        return None
    return rank
