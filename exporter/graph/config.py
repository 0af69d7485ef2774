"""``GraphConfig``: what happens to the folded graph once it matches torch (optimise, quantise, convert for
mobile), checked before any work; the checked steps themselves are in ``graph.steps``."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from edgefold.exporter.config import CompressionConfig
from edgefold.exporter.graph.mobile import check_formats
from edgefold.exporter.graph.optimize import check_mode
from edgefold.exporter.graph.quantize import INT4_BLOCK_SIZE, check_scheme
from edgefold.runtime import EdgefoldError


@dataclass(frozen=True)
class GraphConfig:
    """Post-processing of the exported graph.

    ``optimize``: auto (try the fusion passes, keep the fastest, measured), onnxruntime, onnxscript or none.
    ``quantize``: none, int8 (dynamic, ``per_channel`` optional, weights typed for ``target``) or int4 (weight-only
    MatMulNBits, blocks of 32). ``formats``: "onnx", plus "ort" for onnxruntime's mobile format.
    """

    optimize: str = "auto"
    quantize: str = "none"
    per_channel: bool = False
    target: str = "generic"
    formats: tuple[str, ...] = ("onnx",)

    def __post_init__(self) -> None:
        check_mode(self.optimize)
        check_scheme(self.quantize, self.target)
        check_formats(self.formats)
        if self.target != "generic" and self.quantize != "int8":
            raise EdgefoldError(f"--quantize-for {self.target} sets int8 weight types: use it with --quantize int8")
        if self.per_channel and self.quantize != "int8":
            raise EdgefoldError("--per-channel sets int8 weight scales: use it with --quantize int8")

    @property
    def steps(self) -> list[str]:
        chosen = [("optimize", self.optimize != "none"), ("quantize", self.quantize != "none"),
                  ("ort", "ort" in self.formats)]
        return [name for name, wanted in chosen if wanted]

    def adapt(self, compression: CompressionConfig) -> CompressionConfig:
        """int4 quantises blocks of 32 along a MatMul's inner dimension: ranks become multiples of 32."""
        if self.quantize != "int4" or compression.rank_multiple % INT4_BLOCK_SIZE == 0:
            return compression
        return replace(compression, rank_multiple=math.lcm(compression.rank_multiple, INT4_BLOCK_SIZE))
