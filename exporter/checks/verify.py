"""Parity (ONNX against the compressed torch model) and fidelity (compressed against original), on real text."""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from edgefold.exporter.methods import LowRankFactors
from edgefold.exporter.nn.layers import low_rank_module
from edgefold.exporter.nn.swap import retie_head, tied_head
from edgefold.exporter.onnx.export import task_of_model
from edgefold.exporter.source.architectures import EMBEDDINGS
from edgefold.runtime.folder import max_positions
from edgefold.runtime.metrics import mean_pool, row_cosines
from edgefold.runtime.session import make_feed, open_session

#: Tasks whose output is one vector per sequence; the others are compared token by token.
_SEQUENCE_TASKS = {"feature-extraction": "mean-pooled last_hidden_state", "text-classification": "logits"}


@dataclass
class TextBatch:
    input_ids: np.ndarray
    attention_mask: np.ndarray


def tokenize(tokenizer: PreTrainedTokenizerBase, texts: list[str], max_length: int,
             batch_size: int = 16) -> list[TextBatch]:
    """Right-padded batches (a copy of the tokenizer gets a pad token if it has none, as GPT-2's)."""
    tokenizer = copy.deepcopy(tokenizer)
    tokenizer.padding_side = "right"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    batches = []
    for start in range(0, len(texts), batch_size):
        encoded = tokenizer(texts[start:start + batch_size], padding=True, truncation=True,
                            max_length=max_length, return_tensors="np")
        batches.append(TextBatch(encoded["input_ids"].astype(np.int64), encoded["attention_mask"].astype(np.int64)))
    return batches


@torch.inference_mode()
def torch_outputs(model: PreTrainedModel, batches: list[TextBatch]) -> list[np.ndarray]:
    """The model's first output (last_hidden_state or logits) per batch."""
    outputs = []
    for batch in batches:
        result = model(input_ids=torch.from_numpy(batch.input_ids),
                       attention_mask=torch.from_numpy(batch.attention_mask))
        outputs.append(result[0].float().numpy())
    return outputs


def onnx_outputs(onnx_path: Path, batches: list[TextBatch]) -> list[np.ndarray]:
    """The graph's first output per batch, from a bare onnxruntime session."""
    session = open_session(onnx_path)
    first = session.get_outputs()[0].name
    return [session.run([first], make_feed(session, b.input_ids, b.attention_mask))[0] for b in batches]


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


def max_text_length(model: PreTrainedModel) -> int:
    """Tokens per text for the checks: 128, or fewer where the model has fewer positions."""
    return min(128, max_positions(model.config.to_dict()) or 128)


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
        # A head tied to the embedding will share the candidate after the swap: score it sharing it too.
        head = tied_head(self.model, original) if kind == EMBEDDINGS else None

        def score(factors: LowRankFactors) -> float:
            candidate = low_rank_module(kind, factors, original)
            self.model.set_submodule(name, candidate)
            if head:
                retie_head(self.model, original, candidate)
            try:
                outputs = torch_outputs(self.model, self.batches)
            finally:
                self.model.set_submodule(name, original)
                if head:
                    self.model.set_submodule(*head)
            return fidelity(self.task, self.reference, outputs, self.batches)["mean_cosine"]

        return score
