"""Parity (ONNX against the compressed torch model) and fidelity (compressed against original), on real text."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator

import numpy as np
import torch
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from edgefold.exporter.calibration.batches import TextBatch, max_text_length, tokenize, torch_outputs
from edgefold.exporter.methods import LowRankFactors
from edgefold.exporter.nn.layers import LowRankEmbedding, low_rank_module
from edgefold.exporter.nn.swap import retie_head, tied_head
from edgefold.exporter.onnx.export import task_of_model
from edgefold.exporter.source.architectures import EMBEDDINGS, OUTPUT_HEAD
from edgefold.runtime.metrics import mean_pool, row_cosines

#: Tasks whose output is one vector per sequence; the others are compared token by token.
_SEQUENCE_TASKS = {"feature-extraction": "mean-pooled last_hidden_state", "text-classification": "logits"}


def max_abs_difference(a: list[np.ndarray], b: list[np.ndarray], batches: list[TextBatch]) -> float:
    """Largest absolute difference, over the real tokens where the output has one vector per token."""
    worst = 0.0
    for x, y, batch in zip(a, b, batches):
        if x.ndim == 3:  # (batch, tokens, features): padded positions are never read
            mask = batch.attention_mask.astype(bool)
            x, y = x[mask], y[mask]
        worst = max(worst, float(np.abs(x - y).max()))
    return worst


def fidelity(task: str, reference: list[np.ndarray], candidate: list[np.ndarray],
             batches: list[TextBatch]) -> dict:
    """Cosine of the candidate's outputs to the reference's: per sequence, or per real token for LM heads."""
    cosines = np.concatenate([
        row_cosines(*_comparable(task, ref, cand, batch)) for ref, cand, batch in zip(reference, candidate, batches)
    ])
    return {
        "compared": _SEQUENCE_TASKS.get(task, "logits per token"),
        "mean_cosine": float(cosines.mean()),
        "min_cosine": float(cosines.min()),
        "items": int(cosines.size),
    }


def _comparable(task, ref, cand, batch) -> tuple[np.ndarray, np.ndarray]:
    if task == "feature-extraction":
        return mean_pool(ref, batch.attention_mask), mean_pool(cand, batch.attention_mask)
    if task in _SEQUENCE_TASKS:
        return ref, cand
    mask = batch.attention_mask.astype(bool)
    return ref[mask], cand[mask]


#: Bytes of layer outputs a scorer keeps to replay (see :class:`ValidationScorer`); past it, every score runs the
#: whole model.
REPLAY_BYTES = 1 << 29


class ValidationScorer:
    """Fidelity of the model with one module replaced by candidate factors, on validation text.

    The reference is the model as it is when the scorer is made (the original, before any swap). Layers before
    the one a candidate sits in compute what they computed for the reference: they replay its recorded outputs
    instead (bit for bit the same numbers, without their cost), within ``REPLAY_BYTES``.
    """

    def __init__(self, model: PreTrainedModel, texts: list[str], tokenizer: PreTrainedTokenizerBase):
        self.model = model
        self.task = task_of_model(model)
        self.batches = tokenize(tokenizer, texts, max_text_length(model), batch_size=64)
        self.stack = layer_stack(model)
        self.reference, self.recorded = self._reference()

    def _reference(self) -> tuple[list[np.ndarray], list[list] | None]:
        if self.stack is None:
            return torch_outputs(self.model, self.batches), None
        recorded: list[list] | None = [[] for _ in self.stack[1]]
        size = 0

        def record(index: int, output) -> None:
            nonlocal recorded, size
            if recorded is not None:
                recorded[index].append(output)
                size += sum(t.nbytes for t in _tensors(output))
                if size > REPLAY_BYTES:
                    recorded = None

        handles = [layer.register_forward_hook(lambda _, __, output, i=i: record(i, output))
                   for i, layer in enumerate(self.stack[1])]
        try:
            return torch_outputs(self.model, self.batches), recorded
        finally:
            for handle in handles:
                handle.remove()

    @contextlib.contextmanager
    def _replaying(self, name: str, kind: str) -> Iterator[None]:
        """Layers before ``name``'s (all of them for an output head) return their recorded outputs."""
        if self.recorded is None or kind == EMBEDDINGS:
            yield
            return
        prefix, layers = self.stack
        index = len(layers) if kind == OUTPUT_HEAD else _layer_index(name, prefix)
        replayed = list(layers)[:index or 0]
        for layer, outputs in zip(replayed, self.recorded):
            layer.forward = functools.partial(_next_output, iter(outputs))
        try:
            yield
        finally:
            for layer in replayed:
                del layer.forward  # the class's own again

    def for_module(self, name: str, kind: str, original: nn.Module) -> Callable[[LowRankFactors], float]:
        """Mean cosine to the reference with the module at ``name`` computing with the given factors."""
        return lambda factors: self.with_module(name, kind, original, low_rank_module(kind, factors, original))

    def with_module(self, name: str, kind: str, original: nn.Module, candidate: nn.Module) -> float:
        """Mean cosine to the reference with ``candidate`` in place of ``original`` (put back after)."""
        # A head tied to the embedding will share the candidate after the swap: score it sharing it too.
        head = tied_head(self.model, original) if kind == EMBEDDINGS else None
        self.model.set_submodule(name, candidate)
        if head and isinstance(candidate, LowRankEmbedding):  # a dense candidate: the head keeps its own
            retie_head(self.model, original, candidate)
        try:
            with self._replaying(name, kind):
                outputs = torch_outputs(self.model, self.batches)
        finally:
            self.model.set_submodule(name, original)
            if head:
                self.model.set_submodule(*head)
        return fidelity(self.task, self.reference, outputs, self.batches)["mean_cosine"]


def layer_stack(model: nn.Module) -> tuple[str, nn.ModuleList] | None:
    """(name, list) of the model's repeated blocks: its longest list of modules of one class (``encoder.layer``,
    ``transformer.h``, ``model.layers``), or None."""
    stacks = [(name, module) for name, module in model.named_modules()
              if isinstance(module, nn.ModuleList) and len(module) > 1 and len({type(m) for m in module}) == 1]
    return max(stacks, key=lambda stack: len(stack[1]), default=None)


def _layer_index(name: str, prefix: str) -> int | None:
    head, _, rest = name.partition(f"{prefix}.") if prefix else ("", "", name)
    index = rest.split(".", 1)[0]
    return int(index) if head == "" and rest and index.isdigit() else None


def _next_output(outputs: Iterator, *args, **kwargs):
    return next(outputs)


def _tensors(output) -> list[torch.Tensor]:
    if isinstance(output, torch.Tensor):
        return [output]
    if isinstance(output, (tuple, list)):
        return [t for item in output for t in _tensors(item)]
    return []
