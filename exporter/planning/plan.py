"""A plan: what the export does to each module (kept or factorised, at which precision), as JSON that
``edgefold export --plan FILE`` replays exactly."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from torch import nn

from edgefold.exporter.graph.quantize import PRECISIONS
from edgefold.exporter.nn.swap import dense_weight, plannable_modules
from edgefold.exporter.source.architectures import EMBEDDINGS, OUTPUT_HEAD, spec_for
from edgefold.runtime import EdgefoldError
from edgefold.runtime.jsonfile import read_json_object

SCHEMA = "edgefold.plan"
SCHEMA_VERSION = 1
#: What factorises a Linear in a plan: the best data-aware method we have.
LINEAR_METHOD = "svd-whitened"
#: Ranks of a plan's factors (the embeddings' too, which the fit chooses): whole int4 blocks of 32, so that every
#: factor quantises without a padded block.
PLAN_RANK_MULTIPLE = 32


@dataclass(frozen=True)
class ModuleChoice:
    """One module's lot. A Linear is factorised at ``rank``; the word embeddings frequency-aware within
    1/``ratio`` of their parameters (exact rows for the most frequent tokens, then a low-rank rest); neither:
    kept dense. Every weight then stored at ``precision``."""

    rank: int | None = None
    ratio: float | None = None
    precision: str = "fp32"

    def __post_init__(self) -> None:
        if self.rank is not None and (not _is_int(self.rank) or self.rank < 1):
            raise EdgefoldError(f"a rank must be a whole number of at least 1 (got {self.rank!r})")
        if self.ratio is not None and not (_is_number(self.ratio) and math.isfinite(self.ratio) and self.ratio > 1):
            raise EdgefoldError(f"an embedding ratio must be a finite number above 1 (got {self.ratio!r})")
        if self.rank is not None and self.ratio is not None:
            raise EdgefoldError("a module is factorised at a rank (a Linear) or a ratio (embeddings), not both")
        if self.precision not in PRECISIONS:
            raise EdgefoldError(f"unknown precision {self.precision!r}; choose from: {', '.join(PRECISIONS)}")

    @property
    def factorised(self) -> bool:
        return self.rank is not None or self.ratio is not None

    @property
    def structure(self) -> str:
        return f"rank {self.rank}" if self.rank else f"{self.ratio:g}x" if self.ratio else "dense"

    def label(self) -> str:
        return f"{self.structure} {self.precision}"

    def as_dict(self) -> dict:
        return {"rank": self.rank, "ratio": self.ratio, "precision": self.precision}


@dataclass(frozen=True)
class Plan:
    """Per module name, its :class:`ModuleChoice`; modules not named stay dense fp32."""

    modules: dict[str, ModuleChoice] = field(default_factory=dict)

    @property
    def precisions(self) -> dict[str, str]:
        """The modules stored below fp32, as ``graph.quantize.quantize_modules`` takes them."""
        return {name: c.precision for name, c in self.modules.items() if c.precision != "fp32"}

    @property
    def factorised(self) -> dict[str, ModuleChoice]:
        return {name: c for name, c in self.modules.items() if c.factorised}

    def describe(self) -> str:
        """A short count, e.g. '30 int4-32, 6 int8, 1 2x int4-32'."""
        counts: dict[str, int] = {}
        for choice in self.modules.values():
            key = choice.precision if not choice.factorised else choice.label()
            counts[key] = counts.get(key, 0) + 1
        return ", ".join(f"{n} {key}" for key, n in sorted(counts.items(), key=lambda kv: -kv[1])) or "all fp32"

    def as_dict(self) -> dict:
        return {"schema": SCHEMA, "schema_version": SCHEMA_VERSION, "linear_method": LINEAR_METHOD,
                "modules": {name: choice.as_dict() for name, choice in self.modules.items()}}

    @classmethod
    def from_dict(cls, data: object, source: str = "the plan") -> Plan:
        if not isinstance(data, dict) or data.get("schema") != SCHEMA or data.get("schema_version") != SCHEMA_VERSION:
            raise EdgefoldError(f"{source} is not an edgefold plan ({SCHEMA} v{SCHEMA_VERSION}): write one with "
                                "edgefold export --objective, whose edgefold.json holds it under 'plan'")
        modules = data.get("modules")
        if not isinstance(modules, dict):
            raise EdgefoldError(f"{source}: 'modules' must map module names to choices")
        choices = {}
        for name, choice in modules.items():
            if not isinstance(choice, dict) or set(choice) - {"rank", "ratio", "precision"}:
                raise EdgefoldError(f"{source}: module {name!r} needs a choice like "
                                    '{"rank": null, "ratio": null, "precision": "int8"}')
            try:
                choices[name] = ModuleChoice(**choice)
            except EdgefoldError as error:
                raise EdgefoldError(f"{source}: module {name!r}: {error}") from None
        return cls(choices)

    @classmethod
    def read(cls, path: str | Path) -> Plan:
        """A plan file: the plan itself, or an export's ``edgefold.json`` that holds one."""
        data = read_json_object(Path(path))
        return cls.from_dict(data.get("plan", data), str(path))

    def check(self, model: nn.Module) -> None:
        """Refuse a plan made for another model: unknown modules, a choice of the wrong kind, a rank too large."""
        spec = spec_for(model.config.model_type)
        known = {name: (module, kinds) for name, module, kinds in plannable_modules(model, spec)}
        for name, choice in self.modules.items():
            if name not in known:
                raise EdgefoldError(f"the plan names module {name!r}, which this {spec.name} model does not have "
                                    f"(it has e.g. {', '.join(list(known)[:3])}): a plan for another model?")
            module, kinds = known[name]
            if kinds == (OUTPUT_HEAD,) and choice.factorised:
                raise EdgefoldError(f"the plan factorises {name} (the output head): it takes a precision only")
            if choice.ratio is not None and kinds != (EMBEDDINGS,):
                raise EdgefoldError(f"the plan gives {name} (a Linear) a ratio: Linears take a rank")
            if choice.rank is not None:
                if kinds == (EMBEDDINGS,):
                    raise EdgefoldError(f"the plan gives {name} (the embeddings) a rank: they take a ratio")
                rows, cols = dense_weight(module, spec, kinds).shape
                if choice.rank * (rows + cols) >= rows * cols:
                    raise EdgefoldError(f"the plan's rank {choice.rank} for {name} ({rows} x {cols}) would save "
                                        "nothing: a plan for another model?")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
