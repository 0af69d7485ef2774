"""The walk of structured pruning: the selected modules grouped into blocks, their readers' input statistics
gathered on the original model, a width chosen per block (uniform, or shared by sensitivity), each block shrunk
(``structured.units``)."""

from __future__ import annotations

from torch import nn
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from edgefold.exporter.calibration.corpus import Calibration
from edgefold.exporter.calibration.gathering import calibration_text
from edgefold.exporter.calibration.sequential import layer_of
from edgefold.exporter.calibration.statistics import collect_statistics
from edgefold.exporter.config import CompressionConfig
from edgefold.exporter.planning.selection import Selected
from edgefold.exporter.planning.sensitivity import Sensitivity, share_budget
from edgefold.exporter.records import ModuleRecord
from edgefold.exporter.source.architectures import ArchitectureSpec
from edgefold.exporter.structured.base import Block, StructuredMethod
from edgefold.exporter.structured.units import BlockUnits
from edgefold.runtime import EdgefoldError


def prune_(model: nn.Module, spec: ArchitectureSpec, config: CompressionConfig, method: StructuredMethod,
           selected: Selected, tokenizer: PreTrainedTokenizerBase | None,
           calibration: Calibration | None, progress: bool = True) -> list[ModuleRecord]:
    """Prune, in place, the blocks ``selected`` spans; one record per selected module, in its order."""
    _check(model, spec, config, method)
    calibration = calibration_text(config, tokenizer, calibration, f"method {method.name}")
    blocks = find_blocks(method, selected)
    readers = {block.reader: (model.get_submodule(block.reader), spec.transposed) for block in blocks}
    statistics = collect_statistics(model, readers, method.needs, calibration.fit_texts, tokenizer, config.seed,
                                    progress)
    units = [BlockUnits.of(model, spec, method, block, statistics[block.reader], config) for block in blocks]
    sensitivities: dict[str, Sensitivity] = {}
    if config.allocation == "sensitivity":
        sensitivities, widths = share_budget(model, config, calibration, tokenizer, units,
                                             lambda b, scorer: b.sensitivity(model, method, scorer), "block", progress)
    else:
        widths = {b.block.layer: b.uniform_width(config.ratio) for b in units}
    kinds_of = {name: kinds for name, _, kinds in selected}
    records: dict[str, ModuleRecord] = {}
    for block_units in tqdm(units, desc=f"{method.name} prune", unit="block", disable=not progress):
        layer = block_units.block.layer
        for record in block_units.prune(model, spec, method, kinds_of, widths[layer], config):
            records[record.name] = record
        if layer in sensitivities:  # on the reader's record: one per block
            records[block_units.block.reader].fit["sensitivity"] = {"widths": sensitivities[layer].ranks,
                                                                    "fidelity_lost": sensitivities[layer].losses}
    return [records[name] for name, _, _ in selected]


def _check(model: nn.Module, spec: ArchitectureSpec, config: CompressionConfig, method: StructuredMethod) -> None:
    """Refuse, in one line and before any statistics, what this method cannot do with this config and model."""
    if config.frequency:
        raise EdgefoldError(f"method {method.name} prunes units of Linears and uses no token counts")
    method.check_model(model)
    if config.allocation == "sensitivity" and method.same_units_every_layer(model):
        raise EdgefoldError(f"method {method.name} keeps the same number of {method.unit_name}s in every layer of "
                            f"a {spec.name} model: widths cannot be allocated per layer (give --ratio, allocation "
                            "uniform)")


def find_blocks(method: StructuredMethod, selected: Selected) -> list[Block]:
    """The selected modules grouped per layer into blocks; a layer without all of the method's kinds targeted is
    refused in one line."""
    layers: dict[str, list[tuple[str, tuple]]] = {}
    for name, _, kinds in selected:
        layers.setdefault(layer_of(name), []).append((name, kinds))
    blocks = []
    for layer, members in layers.items():
        missing = set(method.block_kinds) - {kind for _, kinds in members for kind in kinds}
        if missing:
            raise EdgefoldError(f"method {method.name} removes {method.unit_name}s from "
                                f"{', '.join(method.block_kinds)} together, but {layer} has no "
                                f"{', '.join(sorted(missing))} targeted: pass --targets {method.targets_hint()}")
        reader = next(name for name, kinds in members if kinds == (method.reader_kind,))
        blocks.append(Block(layer, tuple(name for name, _ in members if name != reader), reader))
    return blocks
