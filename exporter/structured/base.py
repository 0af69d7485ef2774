"""Structured methods: remove whole units (FFN neurons, attention heads) instead of factorising matrices.

A block is one layer's units: the modules that WRITE them (FFN in; q, k, v) and the one that READS them (FFN out;
attention output). Removing a unit removes rows of the writers and columns of the reader, so every matrix stays
dense and narrower: fewer bytes and FLOPs in exact proportion, no factor overhead, int8 on top as usual.
``structured.blocks`` walks the blocks and ``structured.units`` scores and keeps units and re-solves the reader
by least squares on calibration statistics of its input; a method says what a unit is and how its block shrinks.
"""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from edgefold.exporter.methods.base import INPUT_MEAN, INPUT_MOMENTS, FitContext, LowRankFactors, Method
from edgefold.exporter.source.architectures import TARGET_GROUPS, ArchitectureSpec


@dataclass(frozen=True)
class Block:
    """One layer's units: ``writers`` (module names, in model order) produce them, ``reader`` consumes them."""

    layer: str
    writers: tuple[str, ...]
    reader: str


class StructuredMethod(Method):
    """A method that removes units of blocks; ``compress_`` hands it to ``structured.prune_``, never to ``fit``."""

    compression = "structured"
    needs = frozenset({INPUT_MOMENTS, INPUT_MEAN})
    #: The kinds one block spans (all must be targeted together) and the kind of its reader.
    block_kinds: ClassVar[tuple[str, ...]]
    reader_kind: ClassVar[str]
    #: What one unit is called in records and summaries ("neuron", "head").
    unit_name: ClassVar[str] = "unit"

    def fit(self, weight: torch.Tensor, rank: int, context: FitContext) -> LowRankFactors:
        raise TypeError(f"method {self.name} removes units of whole blocks: it is applied by structured.prune_")

    def check_model(self, model: nn.Module) -> None:
        """Refuse, in one line and before any statistics are collected, a model whose pruned form cannot be
        exported (raises EdgefoldError)."""

    def same_units_every_layer(self, model: nn.Module) -> bool:
        """Whether every layer of ``model`` must keep the same number of units (a config that holds one count
        for all layers); then widths are uniform, never allocated per block."""
        return False

    @classmethod
    def targets_hint(cls) -> str:
        """The ``--targets`` value that names exactly the block's kinds (a group's name where one fits)."""
        group = next((name for name, kinds in TARGET_GROUPS.items() if set(kinds) == set(cls.block_kinds)), None)
        return group or ",".join(cls.block_kinds)

    @abstractmethod
    def unit_columns(self, model: nn.Module, spec: ArchitectureSpec, block: Block) -> list[torch.Tensor]:
        """Per unit, the indices of the reader's input columns it owns (one for a neuron, a head's for a head;
        with grouped-query attention, one key/value head and the query heads that share it)."""

    @abstractmethod
    def shrink(self, model: nn.Module, spec: ArchitectureSpec, block: Block, kept: list[int],
               reader_weight: torch.Tensor, reader_bias: torch.Tensor | None) -> None:
        """Keep only the units ``kept`` (ascending): the writers lose the others' rows, the reader their
        columns and takes ``reader_weight`` (out x kept columns, rows = output units) and ``reader_bias``."""
