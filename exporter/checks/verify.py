"""Parity (ONNX against the compressed torch model) and fidelity (compressed against original), on real text."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from edgefold.exporter.calibration.batches import TextBatch, max_text_length, tokenize, torch_outputs
from edgefold.exporter.methods import LowRankFactors
from edgefold.exporter.nn.layers import LowRankEmbedding, low_rank_module
from edgefold.exporter.nn.swap import retie_head, tied_head
from edgefold.exporter.onnx.export import task_of_model
from edgefold.exporter.source.architectures import EMBEDDINGS
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


class ValidationScorer:
    """Fidelity of the model with one module replaced by candidate factors, on validation text.

    The reference is the model as it is when the scorer is made (the original, before any swap).
    """

    def __init__(self, model: PreTrainedModel, texts: list[str], tokenizer: PreTrainedTokenizerBase):
        self.model = model
        self.task = task_of_model(model)
        self.batches = tokenize(tokenizer, texts, max_text_length(model), batch_size=64)
        self.reference = torch_outputs(model, self.batches)

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
            outputs = torch_outputs(self.model, self.batches)
        finally:
            self.model.set_submodule(name, original)
            if head:
                self.model.set_submodule(*head)
        return fidelity(self.task, self.reference, outputs, self.batches)["mean_cosine"]
