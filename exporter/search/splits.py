"""The search's data, split three ways: fit (statistics, token frequencies), selection (every choice the search
makes) and check (never seen by either: the last word on whether the chosen model passes its gates)."""

from __future__ import annotations

from dataclasses import dataclass

from edgefold.exporter.calibration.corpus import MAX_VALIDATION, Calibration
from edgefold.runtime import EdgefoldError
from edgefold.runtime.dataset import EvalData

#: Item i's role is _ROLES[i % 6]: interleaved, so a file sorted by topic splits evenly. Selection gets more
#: items than check, so that its worst case (min_cosine) is the harsher test of the two.
_ROLES = ("fit", "fit", "selection", "selection", "selection", "check")
#: Items the per-module sensitivities are measured on (each module at each choice: hundreds of runs).
SENSITIVITY_ITEMS = 64
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

    @classmethod
    def of(cls, data: EvalData) -> Splits:
        if len(data.texts) < len(_ROLES) * MIN_ITEMS:
            raise EdgefoldError(f"{data.source} has {len(data.texts)} items; the search splits them into fit, "
                                f"selection and check and needs at least {len(_ROLES) * MIN_ITEMS}")
        indices = {role: [i for i in range(len(data.texts)) if _ROLES[i % len(_ROLES)] == role] for role in _ROLES}
        return cls(_subset(data, indices["fit"], "fit"),
                   _subset(data, indices["selection"][:SELECTION_ITEMS], "selection"),
                   _subset(data, indices["check"][:CHECK_ITEMS], "check"))

    def calibration(self) -> Calibration:
        """Calibration text for the fits: the fit split, with the selection split to choose on."""
        return Calibration(self.fit.source, self.fit.texts, self.selection.texts[:MAX_VALIDATION])

    def describe(self) -> dict:
        return {"fit": len(self.fit.texts), "selection": len(self.selection.texts), "check": len(self.check.texts),
                "rule": f"item i takes role {list(_ROLES)}[i % {len(_ROLES)}]"}


def _subset(data: EvalData, indices: list[int], role: str) -> EvalData:
    return EvalData(f"{data.source} ({role} split)", [data.texts[i] for i in indices],
                    [data.labels[i] for i in indices] if data.labels is not None else None,
                    [data.pairs[i] for i in indices] if data.pairs else None, data.sha256)
