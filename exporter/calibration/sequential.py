"""Calibration activations carried through the model one layer at a time, for a sequential (anchored) fit.

A sequential fit compresses the Linears in the order the model runs them, each against the input x^ it receives
in the model compressed so far while its target stays the original model's output. So the calibration text's
hidden states are kept at a layer's input for both models, the original and the compressed one (as SVD-LLM and
SparseGPT carry them): a stage of Linears (those reading one input: q, k and v; a gated FFN's gate and up) is
measured by running that one layer, and once the layer is fitted both models' hidden states move through it to
the next. The cost is about one forward pass of each model per layer, not one per stage.

Per Linear of a stage: ``input_moments`` E[x^ x^T] and ``input_mean`` E[x^] of its input in the compressed model,
``anchor_moments`` E[x x^T] and ``anchor_mean`` E[x] tying it to the original model's input (float64, real
tokens only). A layer is a numbered child of the model's list of layers (``encoder.layer.3``, ``model.layers.0``,
``transformer.h.5``); it is called again with the positional and keyword arguments the model first gave it.
"""

from __future__ import annotations

import inspect
import re

import torch
from torch import nn
from transformers import PreTrainedModel

from edgefold.exporter.calibration.batches import TextBatch
from edgefold.exporter.calibration.statistics import hooks
from edgefold.exporter.methods.base import ANCHOR_MEAN, ANCHOR_MOMENTS, INPUT_MEAN, INPUT_MOMENTS

Call = tuple[tuple, dict]  # a layer's positional and keyword arguments for one batch


class _Captured(Exception):
    """Raised by a hook once it has what it needs: the rest of the forward pass is not run."""


def forward_stages(model: PreTrainedModel, modules: dict[str, tuple[nn.Module, bool]],
                   batch: TextBatch) -> list[list[str]]:
    """``modules`` in the order a forward pass runs them, those that read one input tensor (q, k and v; a gated
    FFN's gate and up) in one stage: a sequential fit measures a stage, then fits it, then goes on."""
    stages: list[list[str]] = []
    last: list[torch.Tensor | None] = [None]

    def hook(name: str):
        def record(_module, inputs) -> None:
            if inputs[0] is last[0]:
                stages[-1].append(name)
            else:
                stages.append([name])
                last[0] = inputs[0]
        return record

    with torch.no_grad(), hooks(modules, hook):
        _run(model, batch)
    return stages


def layer_of(name: str) -> str:
    """The layer a module belongs to: its name up to the first index (``encoder.layer.3``, ``model.layers.0``)."""
    found = re.match(r"(.*?\.\d+)\.", name)
    if found is None:
        raise ValueError(f"{name} is not inside a numbered layer")
    return found.group(1)


class LayerwiseActivations:
    """The calibration batches' hidden states at one layer's input, in the original and the compressed model."""

    def __init__(self, original: PreTrainedModel, model: PreTrainedModel, first_module: str,
                 batches: list[TextBatch]):
        self.original, self.model, self.batches = original, model, batches
        first = layer_of(first_module)
        self.prefix, index = first.rsplit(".", 1)
        self.index = int(index)
        self.masks = [torch.from_numpy(b.attention_mask).bool() for b in batches]
        self.calls = {id(m): [first_call(m, first, b) for b in batches] for m in (original, model)}

    @torch.no_grad()
    def measure(self, stage: list[str]) -> dict[str, dict[str, torch.Tensor]]:
        """The statistics of a stage's Linears; the stage's layer must not come before the last one measured."""
        self._advance_to(int(layer_of(stage[0]).rsplit(".", 1)[1]))
        layer = f"{self.prefix}.{self.index}"
        sums: dict[str, dict[str, torch.Tensor]] = {name: {} for name in stage}
        for i, mask in enumerate(self.masks):
            x_all = self._stage_inputs(self.original, layer, stage, self.calls[id(self.original)][i])
            x_hat_all = self._stage_inputs(self.model, layer, stage, self.calls[id(self.model)][i])
            for name in stage:
                x, x_hat = x_all[name][mask], x_hat_all[name][mask]
                batch_sums = {INPUT_MOMENTS: x_hat.T @ x_hat, ANCHOR_MOMENTS: x.T @ x_hat,
                              INPUT_MEAN: x_hat.sum(dim=0), ANCHOR_MEAN: x.sum(dim=0)}
                for key, value in batch_sums.items():  # a batch in float32 (fast), the running sums in float64
                    sums[name][key] = value.double() + sums[name].get(key, 0)
        tokens = sum(int(mask.sum()) for mask in self.masks)
        return {name: {key: total / tokens for key, total in values.items()} for name, values in sums.items()}

    def _advance_to(self, index: int) -> None:
        """Carry both models' hidden states through the layers before ``index`` (fitted by now)."""
        if index < self.index:
            raise ValueError(f"layer {index} comes before layer {self.index}, already passed")
        while self.index < index:
            layer = f"{self.prefix}.{self.index}"
            for model in (self.original, self.model):
                module = model.get_submodule(layer)
                self.calls[id(model)] = [next_call(module, call, module(*call[0], **call[1]))
                                         for call in self.calls[id(model)]]
            self.index += 1

    @staticmethod
    def _stage_inputs(model: PreTrainedModel, layer: str, stage: list[str], call: Call) -> dict[str, torch.Tensor]:
        """The inputs of the stage's modules in one run of ``layer``, stopped once all are seen (float32)."""
        inputs: dict[str, torch.Tensor] = {}

        def hook(name: str):
            def capture(_module, args) -> None:
                inputs[name] = args[0].float()
                if len(inputs) == len(stage):
                    raise _Captured
            return capture

        with hooks({name: (model.get_submodule(name), False) for name in stage}, hook):
            try:
                model.get_submodule(layer)(*call[0], **call[1])
            except _Captured:
                pass
        return inputs


def first_call(model: PreTrainedModel, layer: str, batch: TextBatch) -> Call:
    """The arguments the model gives ``layer`` on ``batch`` (the forward pass stops there: the layers from
    ``layer`` on are not run, so their weights need not be there)."""
    captured: list[Call] = []

    def capture(_module, args, kwargs):
        captured.append((args, kwargs))
        raise _Captured

    handle = model.get_submodule(layer).register_forward_pre_hook(capture, with_kwargs=True)
    try:
        _run(model, batch)
    except _Captured:
        pass
    finally:
        handle.remove()
    return captured[0]


def next_call(layer: nn.Module, call: Call, output) -> Call:
    """The call of the layer after ``layer``: the same arguments, the hidden states replaced by ``layer``'s
    ``output`` on ``call``."""
    return _with_hidden(layer, call, _hidden(output))


def _run(model: PreTrainedModel, batch: TextBatch) -> None:
    """One forward pass; without a KV cache where the model keeps one (a layer is run again on its inputs)."""
    extra = {"use_cache": False} if "use_cache" in inspect.signature(model.forward).parameters else {}
    with torch.no_grad():
        model(input_ids=torch.from_numpy(batch.input_ids), attention_mask=torch.from_numpy(batch.attention_mask),
              **extra)


def _hidden(output) -> torch.Tensor:
    """A layer's hidden states: the output itself, or the first of a tuple (attention weights may follow)."""
    return output[0] if isinstance(output, tuple) else output


def _with_hidden(module: nn.Module, call: Call, hidden: torch.Tensor) -> Call:
    """The same call with new hidden states: the first argument of the layer's forward, however passed."""
    args, kwargs = call
    if args:
        return (hidden, *args[1:]), kwargs
    first = next(iter(inspect.signature(module.forward).parameters))
    return args, {**kwargs, first: hidden}
