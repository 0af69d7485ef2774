"""``CompressionConfig``: what to compress and how hard, checked in full before any work."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

from torch import nn

from edgefold.exporter.methods import (
    NO_COMPRESSION,
    GroupMethod,
    Method,
    MethodOptions,
    get_method,
)
from edgefold.exporter.planning.plan import LINEAR_METHOD, PLAN_RANK_MULTIPLE, Plan
from edgefold.exporter.planning.ranks import RANK_MULTIPLE
from edgefold.exporter.source.architectures import ALL_KINDS, EMBEDDINGS, parse_targets
from edgefold.exporter.structured import StructuredMethod
from edgefold.runtime import EdgefoldError

ALLOCATIONS = ("uniform", "sensitivity", "plan")
FP32_BYTES = 4.0


@dataclass(frozen=True)
class CompressionConfig:
    """What to compress and how hard. ``ratio`` R: the targeted weights keep at most 1/R of their parameters.

    ``frequency``: weight embedding rows by calibration token counts and keep the most frequent exact (None:
    the method's default, on for ``ae``). ``calibration``: a text file, or None for the shipped corpus.
    ``options``: the method's settings, an instance of its options class (``AutoencoderOptions`` for ``ae``,
    ``CrossLayerOptions`` for ``ae-shared``/``ae-separated``, ``SharedBasisOptions`` for ``svd-shared``; the
    others take none), or None for the defaults; ``parse_method_options`` makes one from NAME=VALUE strings.
    ``rank_multiple``: ranks are multiples of it (8 suits SIMD kernels; int4 quantisation needs its block size,
    32).

    ``allocation``: "uniform" gives every module the ratio; "sensitivity" makes the ratio (or ``size_budget``,
    the fp32 bytes of the whole model's weights) a budget for all targeted weights together, with ranks
    allocated per module by measured fidelity loss (see ``planning.sensitivity``).

    ``bias_correction``: after a Linear is compressed, set its bias to ``b + W E[x] - W' E[x^]`` (x^ the input
    the compressed model gives it: the original input unless the fit is sequential), which removes the mean
    error of its output on calibration text.

    ``param_bytes``: the bytes one stored parameter takes in the file, which a ``size_budget`` counts: 4 (fp32),
    or what quantisation leaves (``GraphConfig.adapt`` sets it: 1 for int8, 0.625 for int4).

    ``then``: another config for other targets, applied afterwards to the model compressed so far (a mix, such
    as FFN neurons pruned and the attention factorised; its statistics are of the partly compressed model).
    Calibration text and seed are this config's.

    ``plan``: exactly this per-module :class:`Plan` (what a search chose, or ``--plan FILE``): Linears factorised
    at its ranks with whitened SVD, the word embeddings frequency-aware at its ratio; method, targets, ratio and
    allocation follow from it.
    """

    method: str = "svd"
    targets: frozenset[str] = frozenset(ALL_KINDS)
    ratio: float = 2.0
    seed: int = 0
    frequency: bool | None = None
    calibration: str | None = None
    options: MethodOptions | None = None
    rank_multiple: int = RANK_MULTIPLE
    allocation: str = "uniform"
    size_budget: int | None = None
    plan: Plan | None = None
    bias_correction: bool = False
    then: CompressionConfig | None = None
    param_bytes: float = FP32_BYTES

    def __post_init__(self) -> None:
        if self.plan is not None:
            self._follow_plan()
        if self.size_budget is not None:
            object.__setattr__(self, "allocation", "sensitivity")
        self._check_targets()
        if not _is_number(self.ratio) or not (math.isfinite(self.ratio) and self.ratio > 1):
            raise EdgefoldError(f"--ratio must be greater than 1 and finite (got {self.ratio!r})")
        if not _is_int(self.rank_multiple) or self.rank_multiple < 1:
            raise EdgefoldError(f"rank_multiple must be a positive integer (got {self.rank_multiple!r})")
        if not _is_number(self.param_bytes) or not 0 < self.param_bytes <= FP32_BYTES:
            raise EdgefoldError(f"param_bytes must be above 0 and at most 4 bytes (got {self.param_bytes!r})")
        if not _is_int(self.seed) or not 0 <= self.seed < 2 ** 63:
            raise EdgefoldError(f"--seed must be an integer from 0 to 2**63 - 1 (got {self.seed!r})")
        if self.frequency is not None and not isinstance(self.frequency, bool):
            raise EdgefoldError(f"frequency must be True, False or None (got {self.frequency!r})")
        if self.calibration is not None:
            if not isinstance(self.calibration, (str, os.PathLike)):
                raise EdgefoldError(f"calibration must be a file path (got {self.calibration!r})")
            object.__setattr__(self, "calibration", os.fspath(self.calibration))
        if not isinstance(self.bias_correction, bool):
            raise EdgefoldError(f"bias_correction must be True or False (got {self.bias_correction!r})")
        if self.bias_correction and (self.method == NO_COMPRESSION or self.plan is not None):
            raise EdgefoldError("--bias-correction corrects the Linears a method compresses: give a method other "
                                "than none, and no plan")
        self._check_structured(self.build_method())  # refuses an unknown method or option now, before any work
        self._check_frequency(self.build_method())
        self._check_allocation()
        self._check_then()

    def _check_structured(self, method: Method | None) -> None:
        """A structured method prunes its own blocks: other targets would be silently left as they are."""
        if isinstance(method, StructuredMethod) and not self.targets <= set(method.block_kinds):
            other = sorted(self.targets - set(method.block_kinds))
            raise EdgefoldError(f"method {method.name} prunes {', '.join(method.block_kinds)} and nothing else: "
                                f"target exactly those (--targets {method.targets_hint()}), not {', '.join(other)}")

    def _check_frequency(self, method: Method | None) -> None:
        """Frequency-aware fits are of the word embeddings by a per-module method: asked for anywhere else it would
        be recorded and do nothing."""
        if self.frequency is not True or self.plan is not None:
            return
        if method is None or isinstance(method, (GroupMethod, StructuredMethod)):
            raise EdgefoldError(f"--frequency weights the word embeddings' fit by token counts; method "
                                f"{self.method} fits no embedding rows on its own: drop --frequency")
        if EMBEDDINGS not in self.targets:
            raise EdgefoldError("--frequency weights the word embeddings' fit by token counts: target embeddings "
                                "too, or drop --frequency")

    def _check_then(self) -> None:
        if self.then is None:
            return
        if not isinstance(self.then, CompressionConfig):
            raise EdgefoldError(f"then must be a CompressionConfig (got {type(self.then).__name__})")
        if self.plan is not None or self.then.plan is not None:
            raise EdgefoldError("a plan names every module's compression: not with a second config")
        overlap = self.targets & self.stages_targets(self.then)
        if overlap:
            raise EdgefoldError(f"the configs of a mix must target different modules; both target "
                                f"{', '.join(sorted(overlap))}")

    @staticmethod
    def stages_targets(config: CompressionConfig | None) -> frozenset[str]:
        """Every kind targeted by ``config`` and the configs after it."""
        kinds: frozenset[str] = frozenset()
        while config is not None:
            kinds, config = kinds | config.targets, config.then
        return kinds

    def _follow_plan(self) -> None:
        if not isinstance(self.plan, Plan):
            raise EdgefoldError(f"plan must be a Plan (got {type(self.plan).__name__})")
        if self.size_budget is not None or self.allocation not in ("uniform", "plan"):
            raise EdgefoldError("a plan gives every module its rank: not with a size budget or an allocation")
        for name, value in (("method", LINEAR_METHOD), ("allocation", "plan"), ("frequency", True),
                            ("targets", frozenset(ALL_KINDS)), ("rank_multiple", PLAN_RANK_MULTIPLE)):
            object.__setattr__(self, name, value)

    def _check_targets(self) -> None:
        targets = self.targets
        if isinstance(targets, str):
            targets = parse_targets(targets)
        if not isinstance(targets, (set, frozenset, list, tuple)) or not all(isinstance(t, str) for t in targets):
            raise EdgefoldError(f"targets must be a comma-separated string or a set of kinds (got {targets!r})")
        unknown = set(targets) - set(ALL_KINDS)
        if unknown:
            raise EdgefoldError(f"unknown target(s) {sorted(unknown)}; choose from: {', '.join(ALL_KINDS)}")
        if not targets:
            raise EdgefoldError("no targets given")
        object.__setattr__(self, "targets", frozenset(targets))

    def _check_allocation(self) -> None:
        if not isinstance(self.allocation, str) or self.allocation not in ALLOCATIONS:
            raise EdgefoldError(f"unknown allocation {self.allocation!r}; choose from: {', '.join(ALLOCATIONS)}")
        if self.size_budget is not None and (not _is_int(self.size_budget) or self.size_budget <= 0):
            raise EdgefoldError(f"--size-budget must be a positive number of bytes (got {self.size_budget!r})")
        if self.allocation == "plan" and self.plan is None:
            raise EdgefoldError("allocation 'plan' needs a plan")
        if self.allocation == "sensitivity" and (self.uses_frequency or isinstance(self.build_method(), GroupMethod)):
            raise EdgefoldError("ranks allocated by sensitivity work per module: not with frequency-aware "
                                "embeddings (pass --no-frequency) nor with a cross-layer method")

    def budget_params(self, model: nn.Module, targeted: int) -> float:
        """The parameters the targeted weights (``targeted`` of them, matrices) may keep: 1/ratio of them, or what
        ``size_budget`` leaves after the rest of the model (its matrices at ``param_bytes``, its vectors, biases
        and norms, at fp32: quantisation leaves those alone)."""
        if self.size_budget is None:
            return targeted / self.ratio
        rest = sum(p.numel() * (FP32_BYTES if p.dim() < 2 else self.param_bytes) for p in model.parameters())
        return (self.size_budget - rest) / self.param_bytes + targeted

    def build_method(self) -> Method | None:
        return get_method(self.method, self.options)

    @property
    def method_options(self) -> dict[str, str]:
        """The options that differ from the method's defaults, as the NAME=VALUE strings ``--method-option``
        takes (what the manifest records)."""
        return {} if self.options is None else self.options.changed()

    @property
    def uses_frequency(self) -> bool:
        if self.frequency is not None:
            return self.frequency
        method = self.build_method()
        return bool(method and method.frequency_default)

    @property
    def scores_candidates(self) -> bool:
        """Whether fits choose among candidates by the whole model's fidelity on validation text: frequency-aware
        embeddings (their share of exact rows) and the autoencoder (its checkpoint)."""
        return self.uses_frequency or self.method == "ae"

    @property
    def needs_calibration(self) -> bool:
        """Frequency weighting needs token counts; the autoencoder selects its checkpoint on validation text;
        data-aware methods need statistics of the model's activations on calibration text."""
        if self.plan is not None:
            return bool(self.plan.factorised)
        method = self.build_method()
        return (self.uses_frequency or self.method == "ae" or bool(method and method.needs)
                or self.allocation == "sensitivity" or self.bias_correction
                or bool(self.then and self.then.needs_calibration))


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
