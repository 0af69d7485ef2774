"""``GraphConfig``: what happens to the folded graph once it matches torch (optimise, quantise, convert for
mobile), checked before any work; the checked steps themselves are in ``graph.steps``."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from edgefold.exporter.config import CompressionConfig
from edgefold.exporter.graph.mobile import check_formats
from edgefold.exporter.graph.optimize import check_mode
from edgefold.exporter.graph.quantize import (
    INT4_BLOCK_SIZE,
    LOW_BITS,
    PRECISIONS,
    QUANTISED_PARAM_BYTES,
    check_algorithm,
    check_scheme,
)
from edgefold.runtime import EdgefoldError


@dataclass(frozen=True)
class GraphConfig:
    """Post-processing of the exported graph.

    ``optimize``: auto (try the fusion passes, keep the fastest, measured), onnxruntime, onnxscript or none.
    ``quantize``: none, int8 (dynamic, ``per_channel`` optional, weights typed for ``target``) or int4 (weight-only
    MatMulNBits, blocks of 32). ``precisions``: instead of one scheme, a precision per module name (fp32, int8,
    int4-32, int4-128: 4-bit blocks of 32 or 128 computed in int8, ``accuracy_level`` 4; int2-32: 2-bit blocks of
    32, written by edgefold), as a plan gives them;
    they name the unoptimised graph's nodes, so only with ``optimize="none"``. ``algorithm``: how 4-bit weights
    are chosen: "rtn" (onnxruntime's round to nearest) or "gptq" (error feedback fitted on calibration text,
    ``graph.gptq``). ``formats``: "onnx", plus "ort" for onnxruntime's mobile format.
    """

    optimize: str = "auto"
    quantize: str = "none"
    per_channel: bool = False
    target: str = "generic"
    formats: tuple[str, ...] = ("onnx",)
    precisions: Mapping[str, str] = field(default_factory=dict)
    algorithm: str = "rtn"

    def __post_init__(self) -> None:
        check_mode(self.optimize)
        self._check_precisions()
        check_scheme(self.quantize, self.target)
        check_algorithm(self.algorithm)
        if self.needs_calibration and self.quantize != "int4" \
                and not any(p in LOW_BITS for p in self.precisions.values()):
            raise EdgefoldError("--quant-algorithm gptq fits 4-bit (and 2-bit) weights: use it with --quantize int4, "
                                "or a plan with int4 or int2 modules")
        check_formats(self.formats)
        if self.target != "generic" and self.quantize != "int8":
            raise EdgefoldError(f"--quantize-for {self.target} sets int8 weight types: use it with --quantize int8")
        if self.per_channel and self.quantize != "int8":
            raise EdgefoldError("--per-channel sets int8 weight scales: use it with --quantize int8")

    def _check_precisions(self) -> None:
        if not isinstance(self.precisions, Mapping):
            raise EdgefoldError(f"precisions must map module names to precisions (got {self.precisions!r})")
        unknown = sorted({p for p in self.precisions.values() if p not in PRECISIONS}, key=str)
        if unknown:
            raise EdgefoldError(f"unknown precision(s) {unknown}; choose from: {', '.join(PRECISIONS)}")
        if self.precisions and (self.quantize != "none" or self.optimize != "none"):
            raise EdgefoldError("per-module precisions (a plan) replace --quantize, and name the nodes of the "
                                "unoptimised graph: not with --quantize or --optimize")

    @property
    def needs_calibration(self) -> bool:
        """GPTQ fits the weights on the activations of calibration text."""
        return self.algorithm == "gptq"

    @property
    def quantizes(self) -> bool:
        return self.quantize != "none" or any(p != "fp32" for p in self.precisions.values())

    @property
    def steps(self) -> list[str]:
        chosen = [("optimize", self.optimize != "none"), ("quantize", self.quantizes),
                  ("ort", "ort" in self.formats)]
        return [name for name, wanted in chosen if wanted]

    def adapt(self, compression: CompressionConfig | None) -> CompressionConfig | None:
        """The compression for this graph: int4 quantises blocks of 32 along a MatMul's inner dimension, so
        ranks become multiples of 32; a size budget counts the bytes a parameter will take once quantised."""
        if self.quantize == "none" or compression is None:
            return compression
        multiple = compression.rank_multiple
        if self.quantize == "int4":
            multiple = math.lcm(multiple, INT4_BLOCK_SIZE)
        changes = dict(rank_multiple=multiple, param_bytes=QUANTISED_PARAM_BYTES[self.quantize],
                       then=self.adapt(compression.then))
        if all(getattr(compression, name) == value for name, value in changes.items()):
            return compression
        return replace(compression, **changes)
