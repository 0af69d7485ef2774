"""Layer-streamed passes over a model whose weights stay in the file (:class:`LazyWeights`), as SparseGPT and
SVD-LLM run models larger than memory.

The modules outside the numbered layers (embeddings, final norm, head: small) are read first; the calibration
batches' hidden states at the first layer are captured from the model's own forward pass
(``sequential.first_call``), then each layer is read from the file, run on every batch (its Linears' statistics
hooked meanwhile), and released, the hidden states carried to the next. Only one layer's original weights are
resident at a time. A layer computes exactly what it computes inside the whole model's forward pass, so the
statistics and outputs are bitwise those of the unstreamed run.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
from torch import nn
from transformers import PreTrainedModel

from edgefold.exporter.calibration.batches import TextBatch, torch_outputs
from edgefold.exporter.calibration.sequential import Call, first_call, next_call
from edgefold.exporter.source.lazy import LazyWeights


def layers_name(model: PreTrainedModel) -> str:
    """The model's list of layers (``model.layers``, ``bert.encoder.layer``): its largest ModuleList."""
    lists = [(sum(p.numel() for p in module.parameters()), name) for name, module in model.named_modules()
             if isinstance(module, nn.ModuleList) and len(module)]
    return max(lists)[1]


class LayerStream:
    """``batches``' hidden states carried through the layers of ``model`` one at a time.

    Reads the modules outside the layers from ``weights`` (they stay resident) and captures the first layer's
    calls. ``layers()`` then yields each layer read from the file; inside the loop, ``carry(layer)`` runs it on
    every batch (``mask`` is the running batch's attention mask, for statistics hooks), and the layer's original
    weights are released when the loop moves on.
    """

    def __init__(self, model: PreTrainedModel, weights: LazyWeights, batches: list[TextBatch]):
        self.model, self.weights = model, weights
        self.prefix = layers_name(model)
        weights.materialise(model, skip=self.prefix)
        self.masks = [torch.from_numpy(b.attention_mask).bool() for b in batches]
        self.calls: list[Call] = [first_call(model, f"{self.prefix}.0", b) for b in batches]
        self.outputs: list = []
        self.mask: torch.Tensor | None = None

    def layers(self) -> Iterator[tuple[str, nn.Module]]:
        for index in range(len(self.model.get_submodule(self.prefix))):
            name = f"{self.prefix}.{index}"
            self.weights.materialise(self.model, name)
            yield name, self.model.get_submodule(name)
            self.weights.release(name)

    @torch.no_grad()
    def carry(self, layer: nn.Module) -> None:
        """Run ``layer`` (its original weights) on every batch; its outputs become the next layer's inputs."""
        self.outputs = []
        for mask, (args, kwargs) in zip(self.masks, self.calls):
            self.mask = mask
            self.outputs.append(layer(*args, **kwargs))
        self.calls = [next_call(layer, call, output) for call, output in zip(self.calls, self.outputs)]


def streamed_outputs(model: PreTrainedModel, weights: LazyWeights, batches: list[TextBatch]) -> list[np.ndarray]:
    """``torch_outputs`` of the original model on ``batches``, its layers read one at a time; everything read is
    released afterwards."""
    stream = LayerStream(model, weights, batches)
    for _, layer in stream.layers():
        stream.carry(layer)
    with _replaying(model, stream.prefix, stream.outputs):
        outputs = torch_outputs(model, batches)
    weights.release()
    return outputs


@contextmanager
def _replaying(model: PreTrainedModel, prefix: str, outputs: list) -> Iterator[None]:
    """Every layer replaced by one that gives the last layer's recorded output for the running batch, so the
    model's own forward pass runs what comes after the layers (final norm, head) on the carried hidden states."""
    layers = model.get_submodule(prefix)
    originals = list(layers)
    replay = _Replay(outputs, len(originals))
    try:
        for index in range(len(layers)):
            layers[index] = replay
        yield
    finally:
        for index, layer in enumerate(originals):
            layers[index] = layer


class _Replay(nn.Module):
    def __init__(self, outputs: list, layers: int):
        super().__init__()
        self.outputs, self.layers, self.calls = outputs, layers, 0

    def forward(self, *args, **kwargs):
        output = self.outputs[self.calls // self.layers]  # each batch calls it once per layer
        self.calls += 1
        return output
