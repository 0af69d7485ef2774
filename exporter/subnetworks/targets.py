"""The weights a sub-network search prunes: Q, K, V, attention output, FFN in and out of every layer, and the
pooler (as the lottery-ticket paper did). Embeddings, biases, norms and task heads are never pruned."""

from __future__ import annotations

import re
from dataclasses import dataclass

from torch import nn

from edgefold.exporter.nn.swap import select_modules, transposed
from edgefold.exporter.source.architectures import LINEAR_KINDS, spec_for

POOLER = "pooler"


@dataclass(frozen=True)
class Prunable:
    """One prunable weight. ``key`` names it relative to the base model (``encoder.layer.0...weight``), so a mask
    found on a feature-extraction model applies to the same model with a classification head, and back."""

    key: str
    module: nn.Module
    kind: str  # q, k, v, attention-output, ffn-in, ffn-out, qkv (GPT-2's fused matrix) or pooler
    layer: int | None
    transposed: bool  # stored (in x out), as GPT-2's Conv1D: a row of the stored matrix is an INPUT unit

    @property
    def weight(self) -> nn.Parameter:
        return self.module.weight


def prunable_weights(model: nn.Module) -> list[Prunable]:
    """Every prunable weight of ``model``, in the model's order."""
    spec = spec_for(model.config.model_type)
    found = [Prunable(weight_key(model, name), module, "qkv" if len(kinds) > 1 else kinds[0], _layer(name),
                      transposed(spec, kinds))
             for name, module, kinds in select_modules(model, spec, frozenset(LINEAR_KINDS))]
    for name, module in model.named_modules():
        if re.search(r"(^|\.)pooler\.dense$", name) and isinstance(module, nn.Linear):
            found.append(Prunable(weight_key(model, name), module, POOLER, None, False))
    return found


def weight_key(model: nn.Module, module_name: str) -> str:
    prefix = f"{getattr(model, 'base_model_prefix', '')}."
    name = module_name[len(prefix):] if prefix != "." and module_name.startswith(prefix) else module_name
    return f"{name}.weight"


def base_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """The base model's parameters (what rewinding restores); a task head's are left out (it keeps its training)."""
    base = getattr(model, "base_model", model)
    return dict(base.named_parameters())


def _layer(name: str) -> int | None:
    found = re.search(r"\.(\d+)\.", name)
    return int(found.group(1)) if found else None
