"""``compress_(model, config, tokenizer)``: the modules a config targets, swapped in place for compressed ones.

The walk, per config: select the modules (``planning.selection``), gather what their fits read of calibration
text (``calibration.gathering``), fit them one by one (``methods.fit_modules``), by groups across layers
(``methods.fit_groups``) or by blocks of units (``structured``), and swap each in. The same walk one layer
resident at a time: ``streaming``.
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import nn
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from edgefold.exporter.calibration.corpus import Calibration
from edgefold.exporter.calibration.gathering import input_means
from edgefold.exporter.config import CompressionConfig
from edgefold.exporter.methods import GroupMethod, LowRankFactors, Method
from edgefold.exporter.methods.fit_groups import fit_groups
from edgefold.exporter.methods.fit_modules import ModuleFitter
from edgefold.exporter.planning.selection import Selected, select
from edgefold.exporter.records import ModuleRecord
from edgefold.exporter.source.architectures import ArchitectureSpec, spec_for
from edgefold.exporter.structured import StructuredMethod, prune_


def compress_(model: nn.Module, config: CompressionConfig, tokenizer: PreTrainedTokenizerBase | None = None,
              calibration: Calibration | None = None, progress: bool = True,
              fitted: Mapping[str, LowRankFactors] | None = None) -> list[ModuleRecord]:
    """Replace, in place, every module of ``model`` that ``config`` targets by its low-rank form.

    ``tokenizer`` is needed when the config uses calibration text (``config.needs_calibration``), which is
    ``calibration`` or, when None, loaded from ``config.calibration``. ``fitted``: factors already fitted for
    some modules of a plan (a search fits each once, then exports many plans), used as they are. Returns one
    record per targeted module, including those left dense because a factorisation would save nothing.
    ``config.then`` compresses other targets afterwards, on the model compressed so far.
    """
    records = []
    while config is not None:
        records += _compress_stage(model, config, tokenizer, calibration, progress, fitted)
        config = config.then
    return records


def _compress_stage(model: nn.Module, config: CompressionConfig, tokenizer: PreTrainedTokenizerBase | None,
                    calibration: Calibration | None, progress: bool,
                    fitted: Mapping[str, LowRankFactors] | None) -> list[ModuleRecord]:
    spec = spec_for(model.config.model_type)
    method = config.build_method()
    selected = [] if method is None else select(model, spec, config, method)  # None: --method none
    if not selected:
        return []
    if isinstance(method, GroupMethod):
        means = input_means(model, spec, config, selected, tokenizer, calibration, progress)
        return fit_groups(model, spec, config, method, selected, means, progress)
    if isinstance(method, StructuredMethod):
        return prune_(model, spec, config, method, selected, tokenizer, calibration, progress)
    return _fit_modules(model, spec, config, method, selected, tokenizer, calibration, progress, fitted or {})


def _fit_modules(model: nn.Module, spec: ArchitectureSpec, config: CompressionConfig, method: Method,
                 selected: Selected, tokenizer: PreTrainedTokenizerBase | None, calibration: Calibration | None,
                 progress: bool, fitted: Mapping[str, LowRankFactors]) -> list[ModuleRecord]:
    """The per-module branch: statistics of the original model, ranks (allocated where the budget is global),
    then each stage of modules measured (a sequential fit), fitted and swapped in."""
    fitter = ModuleFitter(model, spec, config, method, tokenizer, calibration, progress, fitted)
    fitter.gather(selected)
    if config.allocation == "sensitivity":
        fitter.allocate(selected)
    records = {}
    with tqdm(total=len(selected), desc=f"{method.name} fit", unit="module", disable=not progress) as bar:
        for stage in fitter.data.stages(selected):
            fitter.data.measure_stage(stage)
            for name, module, kinds in stage:
                records[name] = fitter.fit(name, module, kinds)
                bar.update()
    return [records[name] for name, _, _ in selected]
