"""Open an exported graph in onnxruntime and feed it tokenised text, whatever inputs it declares."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnxruntime as ort

from .errors import EdgefoldError

_ORT_TO_NUMPY = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(int64)": np.int64,
                 "tensor(int32)": np.int32}


def open_session(model_path: str | Path, threads: int | None = None, spinning: bool = True) -> ort.InferenceSession:
    """A CPU session on ``model_path``; ``threads`` sets intra-op threads (None: :func:`default_threads`).

    Turn ``spinning`` off when several sessions take turns: a pool that spins after its run steals the cores
    the next session needs.
    """
    options = ort.SessionOptions()
    threads = threads or default_threads()
    if threads:
        options.intra_op_num_threads = threads
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return create_session(model_path, options)


def default_threads() -> int | None:
    """``OMP_NUM_THREADS`` where it is a positive whole number, as torch and numpy read it (a process that shares
    the cores with others is told so: onnxruntime alone ignores it and takes every core, spinning); else None,
    onnxruntime's own default of one thread per core."""
    value = os.environ.get("OMP_NUM_THREADS", "")
    return int(value) if value.isdigit() and int(value) > 0 else None


def create_session(model_path: str | Path, options: ort.SessionOptions) -> ort.InferenceSession:
    """``ort.InferenceSession`` on the CPU; a file onnxruntime cannot load is one line naming it."""
    try:
        return ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
    except Exception as error:  # onnxruntime raises several unrelated types for a bad file
        raise EdgefoldError(f"onnxruntime cannot load {model_path}: {' '.join(str(error).split())}") from error


def run(session: ort.InferenceSession, outputs: list[str] | None, feed: dict) -> list[np.ndarray]:
    """``session.run``; a graph that fails on these inputs (a wrong shape or type inside) is one line."""
    try:
        return session.run(outputs, feed)
    except Exception as error:  # onnxruntime's errors have no common base class
        raise EdgefoldError(f"onnxruntime failed to run the graph: {' '.join(str(error).split())[:300]}") from error


def make_feed(session: ort.InferenceSession, input_ids: np.ndarray, attention_mask: np.ndarray) -> dict:
    """Inputs for one forward pass over a right-padded batch.

    Decoder graphs exported with a KV cache get an empty cache (past length 0) and positions 0..n-1,
    which is what a first generation step sees.
    """
    batch, length = input_ids.shape
    outputs = {spec.name: spec.shape for spec in session.get_outputs()}
    feed = {}
    for spec in session.get_inputs():
        name = spec.name
        dtype = _ORT_TO_NUMPY.get(spec.type, np.int64)
        if name == "input_ids":
            feed[name] = input_ids.astype(dtype)
        elif name == "attention_mask":
            feed[name] = attention_mask.astype(dtype)
        elif name == "token_type_ids":
            feed[name] = np.zeros_like(input_ids, dtype=dtype)
        elif name == "position_ids":
            feed[name] = np.broadcast_to(np.arange(length, dtype=dtype), (batch, length)).copy()
        elif name.startswith("past_key_values"):
            present = outputs.get("present" + name[len("past_key_values"):])
            feed[name] = np.zeros(_empty_cache_shape(spec.shape, batch, present), dtype=dtype)
        else:
            raise EdgefoldError(f"the graph asks for an input edgefold does not know how to fill: {name!r}")
    return feed


def _empty_cache_shape(shape: list, batch: int, present: list | None = None) -> tuple[int, ...]:
    """(batch, heads, past_length, head_dim): the symbolic batch gets the batch size, the past length 0.

    A symbolic heads axis (a causal LM whose layers kept different numbers of heads) takes the head count of the
    layer's ``present`` output, where the graph states it, else 0: the cache holds no values either way.
    """
    dims = [d if isinstance(d, int) else -1 for d in shape]
    if len(dims) != 4:
        raise EdgefoldError(f"cannot size the cache input with shape {shape}: expected 4 dimensions")
    dims[0] = batch
    dims[2] = 0
    if dims[1] < 0:
        dims[1] = present[1] if present and len(present) == 4 and isinstance(present[1], int) else 0
    if any(d < 0 for d in dims):
        raise EdgefoldError(f"cannot size the cache input with shape {shape}")
    return tuple(dims)
