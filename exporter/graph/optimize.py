"""``--optimize``: offline graph fusions that survive the fold, chosen per graph by measurement.

Two optimisers are tried on the checked fp32 graph. onnxruntime's transformer optimizer matches the dense
graph's patterns (Attention, EmbedLayerNormalization) and loses a fusion wherever a weight was factorised;
onnxscript's ORT fusion rewriter matches smaller patterns and keeps more of them on factorised graphs. Neither is
sure to be faster on a CPU (onnxruntime fuses LayerNorm and GELU itself when a session starts), so each result is
checked against the unoptimised graph and timed against it, alternately, and the fastest is kept.
"""

from __future__ import annotations

import statistics
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx

from edgefold.exporter.calibration.batches import TextBatch, onnx_outputs
from edgefold.exporter.checks.verify import max_abs_difference
from edgefold.exporter.onnx import passes
from edgefold.runtime import EdgefoldError
from edgefold.runtime.session import make_feed, open_session

MODES = ("auto", "onnxruntime", "onnxscript", "none")
#: Contrib kernels that replace several plain ops; their count says how much of the fusion survived.
FUSED_OPS = frozenset({"Attention", "MultiHeadAttention", "GroupQueryAttention", "EmbedLayerNormalization",
                       "SkipLayerNormalization", "SkipSimplifiedLayerNormalization", "SimplifiedLayerNormalization",
                       "LayerNormalization", "BiasGelu", "FastGelu", "Gelu", "BiasAdd", "RotaryEmbedding"})
#: ``auto`` keeps an optimised graph only when it is at least this much faster: smaller gains are noise here.
MIN_SPEEDUP = 0.03
TIMING_ROUNDS = 15
#: A fusion may add a little (new node attributes); more means weights were folded into dense copies.
MAX_GROWTH = 1.05
TIMING_TOKENS = 128


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise EdgefoldError(f"unknown --optimize {mode!r}; choose from: {', '.join(MODES)}")
    return mode


def fused_ops(graph: onnx.ModelProto) -> dict[str, int]:
    return dict(sorted(Counter(n.op_type for n in graph.graph.node if n.op_type in FUSED_OPS).items()))


def optimize(onnx_path: Path, mode: str, config, ort_model_type: str | None, inputs,
             quantize: str = "none") -> dict:
    """Replace ``onnx_path`` by its best optimised form (``mode`` auto) or by the one asked for.

    ``config``: the transformers config (heads, hidden size); ``inputs``: the verification batches and the
    unoptimised graph's outputs on them; a candidate farther than the parity tolerance is rejected.
    ``quantize``: the scheme that follows; fusions that hide weights from it are left out (EmbedLayerNormalization's
    table is never quantised, and int4 cannot quantise the weights inside a fused Attention).
    Returns what was tried, measured and chosen, for the manifest.
    """
    batches = inputs.batches
    if mode == "none":
        return {"mode": "none", "chosen": "none"}
    candidates = {"none": onnx_path}
    report: dict[str, dict] = {"none": {"fused_ops": fused_ops(onnx.load(str(onnx_path), load_external_data=False))}}
    for name, run in _optimisers(config, ort_model_type, quantize).items():
        if mode not in ("auto", name):
            continue
        target = onnx_path.with_name(f".{name}.onnx")
        report[name] = _try(run, onnx_path, target, batches, inputs.fp32_outputs, inputs.parity_atol)
        if "error" not in report[name]:
            candidates[name] = target
        else:
            passes.remove(target)
    if mode != "auto" and mode not in candidates:
        _remove(candidates, keep=onnx_path)
        raise EdgefoldError(f"--optimize {mode} failed on this graph: {report.get(mode, {}).get('error', 'n/a')}")
    latency = _time_alternately(candidates, batches)
    for name, p50 in latency.items():
        report[name]["p50_ms"] = round(p50 * 1e3, 3)
    chosen = mode if mode != "auto" else _fastest(latency)
    if chosen != "none":
        passes.settle(candidates[chosen], onnx_path)
    _remove(candidates, keep=onnx_path)
    return {"mode": mode, "chosen": chosen, "candidates": report,
            "timing": f"median of {TIMING_ROUNDS} alternating runs, 1 thread, batch 1 x {TIMING_TOKENS} tokens"}


def _optimisers(config, ort_model_type: str | None, quantize: str) -> dict[str, Callable[[Path, Path], None]]:
    found = {"onnxscript": _onnxscript}
    if ort_model_type:
        found["onnxruntime"] = lambda source, target: _onnxruntime(source, target, ort_model_type, config, quantize)
    return found


def _onnxruntime(source: Path, target: Path, model_type: str, config, quantize: str) -> None:
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    options = FusionOptions(model_type)
    options.enable_embed_layer_norm = quantize == "none"
    options.enable_attention = quantize != "int4"
    # Pruned heads leave each layer its own count: 0 lets the fusion read every layer's from the graph.
    pruned = bool(getattr(config, "pruned_heads", None))
    heads, hidden = (0, 0) if pruned else (config.num_attention_heads, config.hidden_size)
    # opt_level 0: only the transformer fusions; the session applies onnxruntime's own passes at load anyway.
    optimized = optimize_model(str(source), model_type=model_type, num_heads=heads, hidden_size=hidden,
                               optimization_options=options, opt_level=0)
    optimized.save_model_to_file(str(target), use_external_data_format=passes.uses_external_data(source))


def _onnxscript(source: Path, target: Path) -> None:
    import onnx_ir
    from onnxscript.rewriter.ort_fusions import optimize_for_ort

    optimized, _ = optimize_for_ort(onnx_ir.load(str(source)))
    external = f"{target.name}.data" if passes.uses_external_data(source) else None
    onnx_ir.save(optimized, str(target), external_data=external)


def _try(run, source: Path, target: Path, batches: list[TextBatch], reference: list[np.ndarray],
         atol: float) -> dict:
    """Run one optimiser; its graph must load and match the unoptimised outputs within ``atol``."""
    try:
        run(source, target)
        difference = max_abs_difference(onnx_outputs(target, batches), reference, batches)
    except Exception as error:  # an optimiser that cannot handle a graph is skipped, and the manifest says why
        return {"error": f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"[:300]}
    result = {"fused_ops": fused_ops(onnx.load(str(target), load_external_data=False)), "max_abs_diff": difference}
    before, after = _graph_bytes(source), _graph_bytes(target)
    if not difference <= atol:
        result["error"] = f"differs from the unoptimised graph by {difference:.3g} (tolerance {atol:g})"
    elif after > before * MAX_GROWTH:
        # Constant folding decoded storage-compressed weights into dense ones: the file must stay small.
        result["error"] = f"grew the file from {before:,} to {after:,} bytes"
    return result


def _graph_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in passes.graph_files(path))


def _time_alternately(candidates: dict[str, Path], batches: list[TextBatch]) -> dict[str, float]:
    sessions = {name: open_session(path, threads=1, spinning=False) for name, path in candidates.items()}
    tokens = _timing_tokens(batches)
    feeds = {name: make_feed(s, tokens, np.ones_like(tokens)) for name, s in sessions.items()}
    times: dict[str, list[float]] = {name: [] for name in sessions}
    for _ in range(TIMING_ROUNDS + 1):  # the first round warms up and is dropped
        for name, session in sessions.items():
            start = time.perf_counter()
            session.run(None, feeds[name])
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t[1:]) for name, t in times.items()}


def _timing_tokens(batches: list[TextBatch]) -> np.ndarray:
    """One sequence of real tokens, as long as the verification batches allow up to ``TIMING_TOKENS``."""
    real = np.concatenate([b.input_ids[b.attention_mask.astype(bool)] for b in batches])
    length = min(TIMING_TOKENS, max(b.input_ids.shape[1] for b in batches))
    return real[:length][None]


def _fastest(latency: dict[str, float]) -> str:
    best = min(latency, key=latency.get)
    return best if latency[best] < latency["none"] * (1 - MIN_SPEEDUP) else "none"


def _remove(candidates: dict[str, Path], keep: Path) -> None:
    for path in candidates.values():
        if path != keep:
            passes.remove(path)
