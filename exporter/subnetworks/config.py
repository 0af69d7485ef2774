"""``SparsityConfig``: how ``edgefold prune`` finds a sub-network, checked before any model is loaded."""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

from edgefold.runtime import EdgefoldError

#: magnitude: global L1, one shot; wanda: |W| x input norm per output row, one shot; imp: the lottery-ticket
#: procedure (rounds of global magnitude pruning, training, rewinding); random: the control (with ``mask``: that
#: mask's per-weight sparsity); mask: apply ``mask`` as it is (a sub-network found elsewhere).
METHODS = ("magnitude", "wanda", "imp", "random", "mask")
#: Training steps after each pruning by default: IMP trains between rounds; the one-shot methods are training-free.
DEFAULT_IMP_STEPS = 50


#: IMP's rounds at most: each trains the model, so a share of 1e-6 would mean half a million runs.
MAX_ROUNDS = 100


@dataclass(frozen=True)
class SparsityConfig:
    """``sparsity``: the share of the targeted weights pruned (None only for ``method="mask"``: the file's).
    ``steps``: training steps after each pruning (IMP: each round, and once more at the end), None for the
    method's default. ``round_share``: IMP prunes this share of the ORIGINAL weights each round (the paper's 10%),
    saving a mask at every level. ``texts``/``labels``: the training and calibration text (None: the shipped
    calibration text); with labels the model's head must know them, and training uses the task's loss; without,
    it distils the dense model's outputs."""

    method: str = "magnitude"
    sparsity: float | None = 0.5
    mask: str | None = None
    steps: int | None = None
    round_share: float = 0.1
    batch_size: int = 16
    learning_rate: float = 5e-5
    seed: int = 0
    texts: tuple[str, ...] | None = None
    labels: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise EdgefoldError(f"unknown pruning method {self.method!r}; choose one of {', '.join(METHODS)}")
        if self.method == "mask":
            if self.mask is None:
                raise EdgefoldError("method 'mask' applies a mask file: give --mask FILE")
            if self.sparsity is not None:
                raise EdgefoldError("--mask FILE applies that mask at its own sparsity: drop --sparsity (or use "
                                    "--method random --mask FILE for a random mask like it)")
        elif self.mask is not None and self.method != "random":
            raise EdgefoldError(f"--mask FILE is applied as it is, or with --method random, not with {self.method}")
        elif self.mask is None and not _share(self.sparsity):
            raise EdgefoldError(f"--sparsity must be a share between 0 and 1, exclusive (got {self.sparsity!r})")
        elif self.mask is not None and self.sparsity is not None:
            raise EdgefoldError("--method random --mask FILE copies that mask's sparsity: drop --sparsity")
        if not _share(self.round_share):
            raise EdgefoldError(f"the share pruned each round must be between 0 and 1 (got {self.round_share!r})")
        rounds = math.ceil(self.sparsity / self.round_share - 1e-6) if self.method == "imp" else 1
        if rounds > MAX_ROUNDS:
            raise EdgefoldError(f"--round-share {self.round_share:g} to sparsity {self.sparsity:g} is "
                                f"{rounds} rounds of training, more than "
                                f"{MAX_ROUNDS}: prune a larger share each round (the paper's 0.1 is 9 rounds to 0.9)")
        for name in ("steps", "batch_size"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                      or value < (0 if name == "steps" else 1)):
                raise EdgefoldError(f"{name.replace('_', '-')} must be a whole number of at least "
                                    f"{0 if name == 'steps' else 1} (got {value!r})")
        if not (isinstance(self.learning_rate, (int, float)) and 0 < self.learning_rate < math.inf):
            raise EdgefoldError(f"the learning rate must be a positive number (got {self.learning_rate!r})")
        if self.labels is not None and (self.texts is None or len(self.labels) != len(self.texts)):
            raise EdgefoldError("labels need the texts they label, one each")
        if self.texts is not None and not self.texts:
            raise EdgefoldError("the training text is empty")

    @property
    def training_steps(self) -> int:
        if self.steps is not None:
            return self.steps
        return DEFAULT_IMP_STEPS if self.method == "imp" else 0

    def schedule(self) -> list[float]:
        """IMP's levels: ``round_share``, twice it, ... up to ``sparsity`` (the last level exactly it)."""
        if self.method != "imp":
            return [self.sparsity] if self.sparsity is not None else []
        below = itertools.takewhile(lambda level: level < self.sparsity - 1e-9,
                                    (round(k * self.round_share, 9) for k in itertools.count(1)))
        return [*below, self.sparsity]

    def describe(self) -> dict:
        return {"method": self.method, "sparsity": self.sparsity, "mask": self.mask, "steps": self.training_steps,
                "round_share": self.round_share if self.method == "imp" else None, "batch_size": self.batch_size,
                "learning_rate": self.learning_rate, "seed": self.seed,
                "objective": None if not self.training_steps else
                ("task loss" if self.labels else "distillation to the dense model")}


def _share(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value < 1
