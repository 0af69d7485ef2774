"""The search's data, split three ways: fit (statistics, token frequencies), selection (every choice the search
makes) and check (never seen by either: the last word on whether the chosen model passes its gates).

A check only says something of unseen text if no item of it is, in effect, also in the selection split. So the
items are deduplicated first (the same text twice, ignoring case, spacing and punctuation, is kept once), and
split in groups, not one by one: a run of :data:`RUN` consecutive items (a file written a topic or a
conversation at a time keeps its neighbours together) takes one role. A second domain, which the search selects
on as well as the user's text, is halved the same way (``halves``): one half to select on, one to check."""

from __future__ import annotations

import re
from dataclasses import dataclass

from edgefold.exporter.calibration.corpus import MAX_VALIDATION, Calibration
from edgefold.runtime import EdgefoldError
from edgefold.runtime.dataset import EvalData

#: Group g's role is _ROLES[g % 6]: interleaved, so a file sorted by topic splits evenly. Selection gets more
#: items than check, so that its gates see the larger sample.
_ROLES = ("fit", "fit", "selection", "selection", "selection", "check")
#: Consecutive (deduplicated) items that share a role.
RUN = 5
#: Items the per-module sensitivities are measured on (each module at each choice: hundreds of runs).
SENSITIVITY_ITEMS = 64
#: And of the second domain's selection half: half as many (it weighs in, it does not decide alone).
SENSITIVITY_DOMAIN_ITEMS = 32
#: Items a verified candidate and the final check run on: enough for stable gates, few enough to verify many.
SELECTION_ITEMS = 512
CHECK_ITEMS = 256
#: Fewest items per split for gates worth trusting.
MIN_ITEMS = 8


@dataclass(frozen=True)
class Splits:
    fit: EvalData
    selection: EvalData
    check: EvalData
    duplicates: int = 0  # items left out as repeats of an earlier one

    @classmethod
    def of(cls, data: EvalData) -> Splits:
        kept = _distinct(data)
        if len(kept) < len(_ROLES) * MIN_ITEMS:
            raise EdgefoldError(f"{data.source} has {len(kept)} distinct items; the search splits them into fit, "
                                f"selection and check and needs at least {len(_ROLES) * MIN_ITEMS}")
        indices: dict[str, list[int]] = {role: [] for role in _ROLES}
        for position, index in enumerate(kept):
            indices[_ROLES[position // RUN % len(_ROLES)]].append(index)
        return cls(_subset(data, indices["fit"], "fit split"),
                   _subset(data, indices["selection"][:SELECTION_ITEMS], "selection split"),
                   _subset(data, indices["check"][:CHECK_ITEMS], "check split"), len(data.texts) - len(kept))

    def calibration(self) -> Calibration:
        """Calibration text for the fits: the fit split, with the selection split to choose on."""
        return Calibration(self.fit.source, self.fit.texts, self.selection.texts[:MAX_VALIDATION])

    def describe(self) -> dict:
        return {"fit": len(self.fit.texts), "selection": len(self.selection.texts), "check": len(self.check.texts),
                "duplicates_left_out": self.duplicates,
                "rule": f"deduplicated; run r of {RUN} consecutive items takes role {list(_ROLES)}[r % {len(_ROLES)}]"}


def halves(data: EvalData) -> tuple[EvalData, EvalData]:
    """A second domain's selection and check halves: deduplicated, runs of :data:`RUN` items alternating."""
    kept = _distinct(data)
    if len(kept) < 2 * MIN_ITEMS:
        raise EdgefoldError(f"{data.source} has {len(kept)} distinct items; halves need at least {2 * MIN_ITEMS}")
    first = [index for position, index in enumerate(kept) if position // RUN % 2 == 0]
    second = [index for position, index in enumerate(kept) if position // RUN % 2 == 1]
    return _subset(data, first, "selection half"), _subset(data, second, "check half")


def normalized(text: str) -> str:
    """What two copies of one text share: its words, lower-cased."""
    return " ".join(re.findall(r"\w+", text.lower()))


def _distinct(data: EvalData) -> list[int]:
    """Indices of the first item of each normalised text (with its pair, where the data has pairs)."""
    seen: set[tuple[str, ...]] = set()
    kept = []
    for index, text in enumerate(data.texts):
        key = (normalized(text),) + (tuple(map(normalized, data.pairs[index])) if data.pairs else ())
        if key not in seen:
            seen.add(key)
            kept.append(index)
    return kept


def _subset(data: EvalData, indices: list[int], part: str) -> EvalData:
    return EvalData(f"{data.source} ({part})", [data.texts[i] for i in indices],
                    [data.labels[i] for i in indices] if data.labels is not None else None,
                    [data.pairs[i] for i in indices] if data.pairs else None, data.sha256)
