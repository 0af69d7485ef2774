"""The predicted Pareto curve: from every module at its original (fp32, dense) to every module at its cheapest,
one module stepping down at a time, the step that loses the least predicted fidelity per unit of cost saved
first (the greedy pass of HAWQ and of AIMET's automatic mixed precision).

Each module's options are first reduced to their lower convex hull in the (cost, loss) plane: a choice that
costs more than another and loses no less is never worth taking, nor one that sits above the line between its
neighbours. Losses of modules changed together are predicted to add up; the search verifies that claim on real
graphs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from edgefold.exporter.search.space import Option


@dataclass(frozen=True)
class Point:
    """One plan on the curve: each module's option, and the plan's predicted cost and loss."""

    options: dict[str, Option]
    cost: float
    loss: float


def hull(options: list[Option], cost: Callable[[Option], float]) -> list[Option]:
    """From the first option (the original, loss 0) down in cost, the lower convex hull of (cost, loss)."""
    current, steps = options[0], [options[0]]
    while True:
        cheaper = [o for o in options if cost(o) < cost(current)]
        if not cheaper:
            return steps
        # the least loss added per unit saved; a measured dip below the current loss counts as no loss
        current = min(cheaper, key=lambda o: (max(o.loss - current.loss, 0.0) / (cost(current) - cost(o)), cost(o)))
        steps.append(current)


def curve(options: dict[str, list[Option]], cost: Callable[[Option], float], fixed: float) -> list[Point]:
    """Plans from the original (first) to the cheapest (last), in order of predicted cost."""
    steps = []
    for name, module_options in options.items():
        chain = hull(module_options, cost)
        for before, after in zip(chain, chain[1:]):
            saved = cost(before) - cost(after)
            steps.append((max(after.loss - before.loss, 0.0) / saved, name, after))
    steps.sort(key=lambda step: step[0])
    chosen = {name: module_options[0] for name, module_options in options.items()}
    points = [_point(chosen, cost, fixed)]
    for _, name, option in steps:
        chosen[name] = option
        points.append(_point(chosen, cost, fixed))
    return points


def _point(chosen: dict[str, Option], cost: Callable[[Option], float], fixed: float) -> Point:
    return Point(dict(chosen), fixed + sum(cost(o) for o in chosen.values()), sum(o.loss for o in chosen.values()))
