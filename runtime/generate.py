"""Greedy generation from an exported causal LM with its KV cache: what ``ORTModelForCausalLM.generate`` does,
with onnxruntime and numpy alone (optimum's ORTModel classes need optimum-onnx, which transformers 5 cannot
import)."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort

from .errors import EdgefoldError
from .session import make_feed, run


def greedy(session: ort.InferenceSession, input_ids: np.ndarray, attention_mask: np.ndarray,
           max_new_tokens: int) -> np.ndarray:
    """The prompts (batch x length, left-padded when their lengths differ, as transformers pads for generation)
    followed by ``max_new_tokens`` greedily chosen tokens: the prompt in one pass, then one token a pass, each
    pass reading the cache the previous one returned."""
    caches = [spec.name for spec in session.get_inputs() if spec.name.startswith("past_key_values.")]
    if not caches:
        raise EdgefoldError("this graph has no KV cache inputs (past_key_values.*): export it as text-generation")
    if max_new_tokens < 0:
        raise EdgefoldError(f"max_new_tokens must be at least 0, not {max_new_tokens}")
    outputs = [spec.name for spec in session.get_outputs()]
    positions = any(spec.name == "position_ids" for spec in session.get_inputs())
    tokens, mask = input_ids.astype(np.int64), attention_mask.astype(np.int64)
    feed = make_feed(session, tokens, mask)
    for _ in range(max_new_tokens):
        if positions:  # as transformers counts them: padding takes no position
            feed["position_ids"] = (np.cumsum(mask, axis=1) - 1).clip(min=0)[:, -feed["input_ids"].shape[1]:]
        results = dict(zip(outputs, run(session, outputs, feed)))
        chosen = results["logits"][:, -1].argmax(axis=-1)[:, None].astype(np.int64)
        tokens = np.concatenate([tokens, chosen], axis=1)
        mask = np.concatenate([mask, np.ones_like(chosen)], axis=1)
        feed = {name: results["present" + name[len("past_key_values"):]] for name in caches}
        feed.update(input_ids=chosen, attention_mask=mask)
    return tokens
