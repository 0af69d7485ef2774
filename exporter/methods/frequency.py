"""Frequency-aware embedding compression: text is made of frequent tokens, so spend the budget on them.

Rows are weighted by how often their token occurs in calibration text, and part of the budget keeps the most
frequent tokens' rows exact. How large a part is chosen on the validation split, with weighted SVD as a fast
proxy; the method then fits the remaining rows at the rank the rest of the budget allows.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from edgefold.exporter.calibration.corpus import row_weights
from edgefold.exporter.methods import FitContext, LowRankFactors, Method
from edgefold.exporter.methods.svd import TruncatedSVD
from edgefold.exporter.planning.ranks import RANK_MULTIPLE, plan_rank

#: Shares of the module's budget tried for exact rows.
EXACT_SHARES = (0.0, 0.05, 0.1, 0.15, 0.2, 0.3)


def exact_row_cost(rows: int, cols: int, count: int) -> int:
    """Stored numbers for ``count`` exact rows: the rows, plus one slot entry per vocabulary row."""
    return count * cols + rows if count else 0


def fit_frequency_aware(weight: torch.Tensor, ratio: float, method: Method, counts: torch.Tensor,
                        context: FitContext, rank_multiple: int = RANK_MULTIPLE) -> LowRankFactors | None:
    """Fit ``weight`` (V x d) within 1/ratio of its parameters, everything stored counted (exact rows, their
    slot lookup, factors and the method's extras); None if no split fits and saves anything."""
    rows, cols = weight.shape
    order = torch.argsort(counts, descending=True, stable=True)
    seen = int((counts > 0).sum())
    proxy = TruncatedSVD()
    trials = []
    for share in EXACT_SHARES:
        count = min(int(share * rows * cols / ratio) // cols, seen)
        extra = exact_row_cost(rows, cols, count) + method.extra_params(rows, cols, "embeddings")
        rank = plan_rank(rows, cols, ratio, extra, rank_multiple)  # None where the exact rows leave no room
        if rank is None or count in [t["exact_rows"] for t in trials]:
            continue
        exact = order[:count]
        factors = proxy.fit(weight, rank, FitContext(row_weights=row_weights(counts, exact)))
        factors = factors.with_exact_rows(weight, exact)
        trials.append({"exact_share": share, "exact_rows": count, "rank": rank,
                       "validation_fidelity": context.score(factors), "factors": factors})
    if not trials:
        return None
    best = max(trials, key=lambda t: t["validation_fidelity"])
    context.details["frequency"] = {
        "exact_rows": best["exact_rows"], "exact_share_of_budget": best["exact_share"],
        "trials": [{k: v for k, v in t.items() if k != "factors"} for t in trials],
    }
    if isinstance(method, TruncatedSVD):
        return best["factors"]
    exact = order[:best["exact_rows"]]
    fit_context = replace(context, row_weights=row_weights(counts, exact),
                          score=lambda f: context.score(f.with_exact_rows(weight, exact)))
    return method.fit(weight, best["rank"], fit_context).with_exact_rows(weight, exact)
