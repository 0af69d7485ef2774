"""Which modules a config compresses: those its targets name (or its plan lists), each checked against the
method before any work."""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import nn

from edgefold.exporter.methods.base import Method
from edgefold.exporter.nn.swap import select_modules, tied_head
from edgefold.exporter.source.architectures import ArchitectureSpec
from edgefold.runtime import EdgefoldError

if TYPE_CHECKING:
    from edgefold.exporter.config import CompressionConfig

#: (name, module, kinds) of each module a config compresses, in model order.
Selected = list[tuple[str, nn.Module, tuple]]


def select(model: nn.Module, spec: ArchitectureSpec, config: CompressionConfig, method: Method) -> Selected:
    """The modules the config (or its plan) compresses, each checked against the method; none matching the
    targets is refused, a plan may leave nothing to do."""
    selected = select_modules(model, spec, config.targets)
    if config.plan is not None:
        config.plan.check(model)
        selected = [entry for entry in selected if entry[0] in config.plan.modules]
        if not selected:
            return []
    if not selected:
        raise EdgefoldError(f"no module of this {spec.name} model matches the targets {sorted(config.targets)}")
    for _, module, kinds in selected:
        method.check_module(kinds[0], tied=tied_head(model, module) is not None)
    return selected
