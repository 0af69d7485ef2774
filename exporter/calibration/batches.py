"""Text as a model sees it: tokenised batches, and what a torch model or an ONNX graph outputs on them. The
calibration statistics, the parity and fidelity checks and the graph passes all run on these."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from edgefold.runtime.folder import max_positions
from edgefold.runtime.session import make_feed, open_session


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


def max_text_length(model: PreTrainedModel) -> int:
    """Tokens per text for the checks: 128, or fewer where the model has fewer positions."""
    return min(128, max_positions(model.config.to_dict()) or 128)
