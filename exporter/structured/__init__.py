"""Structured pruning: whole units (FFN neurons, attention heads) removed, every matrix narrower and dense.

    compress_(model, CompressionConfig(method="prune-ffn", targets="ffn", ratio=1.5), tokenizer)   # in place

``base``: what a block and a structured method are; ``ffn`` and ``heads``: the two methods (``--method
prune-ffn``, ``prune-heads``); ``units``: one block's units scored, kept and the reader re-solved; ``blocks``:
the walk over a model's blocks (``prune_``). Not the sub-networks of ``edgefold prune`` (``exporter.subnetworks``:
unstructured masks, dense shapes).
"""

from importlib import import_module

from edgefold.exporter.structured.base import Block, StructuredMethod
from edgefold.exporter.structured.ffn import PruneFFN
from edgefold.exporter.structured.heads import PruneHeads

# The method registry (``exporter.methods``) imports the methods above while it is itself being imported; the walk
# and the arithmetic need that registry (through the config and the swap), so they load on first use.
_LATER = {"prune_": "blocks", "find_blocks": "blocks", "unit_scores": "units", "top_units": "units",
          "repair": "units", "output_error": "units"}


def __getattr__(name: str):
    if name in _LATER:
        return getattr(import_module(f"{__name__}.{_LATER[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["Block", "PruneFFN", "PruneHeads", "StructuredMethod", "find_blocks", "output_error", "prune_", "repair",
           "top_units", "unit_scores"]
