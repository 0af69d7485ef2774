"""Factorisation and quantisation together, against quantisation alone, on the real all-MiniLM-L6-v2.

For each variant, measured in one run: bytes on disk, p50 latency at batch 1 x 128 tokens with 1 and 2 threads
(all variants taking turns in every round), peak RSS of a process that only loads and runs it (edgefold bench),
fidelity to the original on the shipped evaluation text, and the FLOP ratio of its weight products next to its
latency ratio (the gap is kernel overhead). Every variant is exported as a user gets it: ``--optimize auto``
(fusions kept only where measured faster), then quantised; the table says which fusion each kept.

    python benchmarks/quantize_frontier.py     # about 20 minutes; writes results/quantize_frontier.{md,json,png}
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import onnx  # noqa: E402
from ae_vs_svd import MODEL, RESULTS, latencies, quality  # noqa: E402

from edgefold.exporter import CompressionConfig, GraphConfig, export  # noqa: E402
from edgefold.exporter.source.loading import resolve_model_path  # noqa: E402
from edgefold.runtime.bench import BenchSettings, bench  # noqa: E402
from edgefold.runtime.folder import ExportedFolder  # noqa: E402
from edgefold.runtime.texts import shipped_texts  # noqa: E402
from edgefold.runtime.validate import sentence_embeddings  # noqa: E402

TOKENS = 128
EMB = dict(targets="embeddings", frequency=True)
LAYERS = dict(targets="attention,ffn")
VARIANTS = {  # name: (compression settings, quantisation)
    "fp32": (dict(method="none"), "none"),
    "int8": (dict(method="none"), "int8"),
    "int4": (dict(method="none"), "int4"),
    "emb 2x svd-freq": (dict(EMB, ratio=2), "none"),
    "emb 2x svd-freq + int8": (dict(EMB, ratio=2), "int8"),
    "emb 2x svd-freq + int4": (dict(EMB, ratio=2), "int4"),
    "emb 2.5x svd-freq + int8": (dict(EMB, ratio=2.5), "int8"),
    "emb 2.5x svd-freq + int4": (dict(EMB, ratio=2.5), "int4"),
    "emb 5x svd-freq + int8": (dict(EMB, ratio=5), "int8"),
    "emb 5x svd-freq + int4": (dict(EMB, ratio=5), "int4"),
    "emb 5x ae + int8": (dict(EMB, method="ae", ratio=5), "int8"),
    "emb 5x ae + int4": (dict(EMB, method="ae", ratio=5), "int4"),
    "layers 1.33x svd": (dict(LAYERS, ratio=1.33), "none"),
    "layers 1.33x svd + int8": (dict(LAYERS, ratio=1.33), "int8"),
    "layers 1.33x svd + int4": (dict(LAYERS, ratio=1.33), "int4"),
    "layers 1.33x ae + int8": (dict(LAYERS, method="ae", ratio=1.33), "int8"),
}
#: Ops that multiply activations by a stored weight, and the input that holds it.
WEIGHT_PRODUCTS = {"MatMul": 1, "MatMulInteger": 1, "Attention": 1, "QAttention": 1}


def weight_flops(graph_path: Path) -> int:
    """FLOPs of the products against stored weights for one 128-token sequence (attention's own products are
    the same in every variant)."""
    graph = onnx.load(str(graph_path)).graph
    weights = {i.name: list(i.dims) for i in graph.initializer}
    flops = 0
    for node in graph.node:
        position = WEIGHT_PRODUCTS.get(node.op_type)
        if position is not None and node.input[position] in weights:
            k, n = weights[node.input[position]][-2:]
            flops += 2 * TOKENS * k * n
        elif node.op_type == "MatMulNBits":
            attributes = {a.name: a.i for a in node.attribute}
            flops += 2 * TOKENS * attributes["K"] * attributes["N"]
    return flops


def run() -> dict:
    model_path = resolve_model_path(MODEL)
    texts = shipped_texts("evaluation.txt")
    rows, paths = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, (settings, scheme) in VARIANTS.items():
            out = Path(tmp) / f"v{len(rows)}"
            manifest = export(str(model_path), out, CompressionConfig(**settings), GraphConfig(quantize=scheme),
                              progress=False)
            paths[name] = out / "model.onnx"
            if name == "fp32":
                reference = sentence_embeddings(ExportedFolder.open(out), texts)
            rss = bench(out, BenchSettings(threads=(1,), warmup=2, iterations=5, min_seconds=0.5),
                        progress=False)["results"][0]["models"][out.name]["peak_rss_bytes"]
            rows.append({"variant": name, "bytes": manifest["totals"]["bytes_after"], "peak_rss_mb": rss / 2**20,
                         "flops": weight_flops(paths[name]), "fusion": manifest["optimization"]["chosen"],
                         **quality(reference, sentence_embeddings(ExportedFolder.open(out), texts))})
            print(f"{name:28} {rows[-1]['bytes'] / 2**20:6.1f} MB  cos {rows[-1]['mean_cosine']:.4f}", flush=True)
        times = {threads: latencies(paths, rounds=40, threads=threads) for threads in (1, 2)}
    base = rows[0]
    for row in rows:
        row["bytes_ratio"] = row["bytes"] / base["bytes"]
        for threads in (1, 2):
            row[f"p50_ms_{threads}t"] = times[threads][row["variant"]]
            row[f"latency_ratio_{threads}t"] = times[threads][row["variant"]] / times[threads]["fp32"]
        row["flop_ratio"] = row["flops"] / base["flops"]  # quantised MatMuls keep their shapes
    return {"evaluation_texts": len(texts), "rows": rows}


def write(result: dict) -> None:
    lines = ["# Factorisation x quantisation on all-MiniLM-L6-v2", "",
             f"One run on this machine. Fidelity: mean-pooled sentence embeddings of each ONNX graph against the "
             f"original, on {result['evaluation_texts']} lines of the shipped evaluation text. Latency: batch 1 x "
             f"{TOKENS} tokens, median of 40 rounds in which every variant takes a turn; ratios to fp32 in the same "
             "run. FLOP ratio: products against stored weights only (attention's own products are the same everywhere). "
             "Fusion: what `--optimize auto` kept for that graph (none: onnxruntime's own load-time fusions were "
             "faster).",
             "", "| variant | MB | bytes vs fp32 | mean cos | min cos | top-10 | p50 ms 1t | vs fp32 | p50 ms 2t | "
             "vs fp32 | FLOP ratio | peak RSS MB | fusion |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        lines.append(f"| {r['variant']} | {r['bytes'] / 2**20:.1f} | {r['bytes_ratio']:.3f} | {r['mean_cosine']:.4f} | "
                     f"{r['min_cosine']:.3f} | {r['top10_agreement']:.3f} | {r['p50_ms_1t']:.2f} | "
                     f"{r['latency_ratio_1t']:.2f} | {r['p50_ms_2t']:.2f} | {r['latency_ratio_2t']:.2f} | "
                     f"{r['flop_ratio']:.2f} | {r['peak_rss_mb']:.0f} | {r['fusion']} |")
    lines += ["", "Reproduce: `python benchmarks/quantize_frontier.py`", ""]
    (RESULTS / "quantize_frontier.md").write_text("\n".join(lines))
    (RESULTS / "quantize_frontier.json").write_text(json.dumps(result, indent=2) + "\n")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(12, 4.6))
    for r in result["rows"]:
        axes[0].scatter(r["bytes_ratio"], r["mean_cosine"])
        axes[0].annotate(r["variant"], (r["bytes_ratio"], r["mean_cosine"]), fontsize=7)
        axes[1].scatter(r["bytes_ratio"], r["latency_ratio_1t"])
        axes[1].annotate(r["variant"], (r["bytes_ratio"], r["latency_ratio_1t"]), fontsize=7)
    axes[0].set(xlabel="bytes / fp32", ylabel="mean cosine to original", title="fidelity against bytes")
    axes[1].set(xlabel="bytes / fp32", ylabel="p50 latency / fp32 (1 thread)", title="latency against bytes")
    for axis in axes:
        axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(RESULTS / "quantize_frontier.png", dpi=110)


if __name__ == "__main__":
    write(run())
    print(f"wrote {RESULTS}/quantize_frontier.{{md,json,png}}")
