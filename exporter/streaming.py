"""``compress_streamed_``: :func:`compress_` one layer resident at a time, for models larger than memory."""

from __future__ import annotations

from collections.abc import Mapping

from torch import nn
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from edgefold.exporter.calibration.corpus import Calibration
from edgefold.exporter.calibration.gathering import linear_inputs
from edgefold.exporter.calibration.sequential import layer_of
from edgefold.exporter.calibration.statistics import MomentSums, hooks
from edgefold.exporter.calibration.streaming import LayerStream
from edgefold.exporter.config import CompressionConfig
from edgefold.exporter.methods import GroupMethod, LowRankFactors
from edgefold.exporter.methods.base import ROW_IMPORTANCE
from edgefold.exporter.methods.fit_modules import ModuleFitter
from edgefold.exporter.planning.selection import Selected, select
from edgefold.exporter.records import ModuleRecord
from edgefold.exporter.source.architectures import EMBEDDINGS, spec_for
from edgefold.exporter.source.lazy import LazyWeights
from edgefold.exporter.structured import StructuredMethod
from edgefold.runtime import EdgefoldError


def check_streamable(config: CompressionConfig, fitted: Mapping[str, LowRankFactors] | None = None) -> None:
    """Refuse, in one line and before any work, what a layer-streamed run cannot do: anything that needs the
    whole model at once. Per-module fits on input moments and means (``svd``, ``svd-whitened``, bias correction)
    are what it runs."""
    method = config.build_method()
    reasons = [
        (isinstance(method, GroupMethod), f"method {config.method} fits the matrices of all layers together"),
        (isinstance(method, StructuredMethod), f"method {config.method} measures what to prune on the whole model"),
        (method is not None and method.sequential, "a sequential fit runs the original and the compressed model "
         "side by side"),
        (method is not None and ROW_IMPORTANCE in method.needs, f"method {config.method} takes gradients through "
         "the whole model"),
        (config.scores_candidates, "frequency-aware embeddings and the autoencoder score candidates on the whole "
         "model (pass --no-frequency, or another method)"),
        (config.allocation != "uniform", f"allocation {config.allocation} measures every module on the whole model"),
        (config.then is not None, "a mix compresses each config on the model the one before left"),
        (bool(fitted), "factors fitted beforehand (a search) come from the whole model"),
    ]
    for refused, reason in reasons:
        if refused:
            raise EdgefoldError(f"a streamed run cannot do this: {reason}; run it without streaming")


def compress_streamed_(model: nn.Module, weights: LazyWeights, config: CompressionConfig,
                       tokenizer: PreTrainedTokenizerBase | None = None, calibration: Calibration | None = None,
                       progress: bool = True) -> list[ModuleRecord]:
    """:func:`compress_` on a skeleton from ``weights`` (:meth:`LazyWeights.skeleton`), one layer resident at a
    time (see ``calibration.streaming``): each layer is read from the file, the calibration batches' hidden states
    carried through its original weights while its Linears' statistics are collected, then its modules are fitted
    and swapped and its original weights released. The factors are bitwise those of :func:`compress_`. Afterwards
    the model is the compressed one, whole: what it still reads of the original (untargeted modules) is read."""
    check_streamable(config)
    method = config.build_method()
    records = []
    if method is not None:
        spec = spec_for(model.config.model_type)
        selected = select(model, spec, config, method)
        fitter = ModuleFitter(model, spec, config, method, tokenizer, calibration, progress, {})
        records = _fit_streamed(fitter, selected, weights)
    weights.materialise(model)
    return records


def _fit_streamed(fitter: ModuleFitter, selected: Selected, weights: LazyWeights) -> list[ModuleRecord]:
    needs = fitter.data.needs
    # the first layer's inputs come from the original embeddings: captured before the embeddings are fitted
    stream = LayerStream(fitter.model, weights, fitter.data.fit_batches() if needs else [])
    records = {}
    bar = tqdm(total=len(selected), desc=f"{fitter.method.name} fit (streamed)", unit="module",
               disable=not fitter.progress)
    by_layer: dict[str, Selected] = {}
    for name, module, kinds in selected:
        if kinds == (EMBEDDINGS,):  # resident with the other modules outside the layers
            records[name] = fitter.fit(name, module, kinds)
            if records[name].status == "factorised":
                weights.release(name)  # the original table is not read again
            bar.update()
        else:
            by_layer.setdefault(layer_of(name), []).append((name, module, kinds))
    for layer_name, layer in stream.layers():
        stage = by_layer.pop(layer_name, [])
        sums = MomentSums()
        linears = linear_inputs(stage, fitter.spec) if needs else {}
        with hooks(linears, lambda name: lambda _module, inputs: sums.add(name, inputs[0], stream.mask)):
            stream.carry(layer)
        fitter.data.add_moments(sums)
        for name, module, kinds in stage:
            records[name] = fitter.fit(name, module, kinds)
            bar.update()
    bar.close()
    return [records[name] for name, _, _ in selected]
