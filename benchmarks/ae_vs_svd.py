"""The direction-aware autoencoder against SVD at the same budget, on the real all-MiniLM-L6-v2.

Every variant is exported with ``edgefold.exporter.export`` and measured through its ONNX graph in onnxruntime,
on the shipped evaluation text (runtime/data/evaluation.txt, 1,225 lines) that no method fits or selects on:
sentence-embedding cosine to the original, top-10 neighbour agreement, Spearman of pairwise similarities.
Latencies (batch 1, 128 tokens, 1 thread) are taken alternately across all variants in one loop.

    python benchmarks/ae_vs_svd.py      # about 25 minutes on 2 cores; writes results/ae_vs_svd.{md,json,png}
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import transformers  # noqa: E402

from edgefold.exporter import CompressionConfig, export  # noqa: E402
from edgefold.exporter.methods import AutoencoderOptions  # noqa: E402
from edgefold.exporter.onnx.export import export_onnx  # noqa: E402
from edgefold.exporter.source.loading import resolve_model_path  # noqa: E402
from edgefold.runtime.folder import ExportedFolder  # noqa: E402
from edgefold.runtime.metrics import (  # noqa: E402
    neighbour_agreement,
    row_cosines,
    spearman_of_similarities,
)
from edgefold.runtime.session import make_feed, open_session  # noqa: E402
from edgefold.runtime.texts import shipped_texts  # noqa: E402
from edgefold.runtime.validate import sentence_embeddings  # noqa: E402

RESULTS = Path(__file__).parent / "results"
MODEL = "sentence-transformers/all-MiniLM-L6-v2"
VARIANTS = {  # frequency-awareness touches embeddings only, so the layer cases run the first, third and fourth
    "svd": dict(method="svd"),
    "svd, frequency-aware": dict(method="svd", frequency=True),
    "ae (paper: unweighted)": dict(method="ae", frequency=False),
    "ae + row norms": dict(method="ae", frequency=False, options=AutoencoderOptions(preserve_norms=True)),
    "ae, frequency-aware (default)": dict(method="ae"),
}
LAYER_VARIANTS = ("svd", "ae (paper: unweighted)", "ae + row norms")
CASES = [("embeddings", 2.5), ("embeddings", 5), ("embeddings", 10), ("attention,ffn", 1.33), ("attention,ffn", 2)]


def quality(reference: np.ndarray, candidate: np.ndarray) -> dict:
    cosines = row_cosines(reference, candidate)
    return {"mean_cosine": float(cosines.mean()), "min_cosine": float(cosines.min()),
            "top10_agreement": neighbour_agreement(reference, candidate, 10),
            "spearman": spearman_of_similarities(reference, candidate)}


def latencies(paths: dict[str, Path], rounds: int, threads: int = 1) -> dict[str, float]:
    """Median ms of one batch-1, 128-token run per variant, the variants taking turns in every round."""
    sessions = {name: open_session(path, threads=threads, spinning=False) for name, path in paths.items()}
    ids = np.random.default_rng(0).integers(1000, 20000, size=(1, 128))
    feeds = {name: make_feed(s, ids, np.ones_like(ids)) for name, s in sessions.items()}
    times: dict[str, list[float]] = {name: [] for name in sessions}
    for name, session in sessions.items():  # warm-up
        for _ in range(5):
            session.run(None, feeds[name])
    for _ in range(rounds):
        for name, session in sessions.items():
            start = time.perf_counter()
            session.run(None, feeds[name])
            times[name].append((time.perf_counter() - start) * 1000)
    return {name: statistics.median(values) for name, values in times.items()}


def run(rounds: int) -> dict:
    model_path = resolve_model_path(MODEL)
    tokenizer = transformers.AutoTokenizer.from_pretrained(model_path)
    texts = shipped_texts("evaluation.txt")
    rows, paths = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        original = Path(tmp) / "original"
        original.mkdir()
        export_onnx(transformers.AutoModel.from_pretrained(model_path).eval(), "feature-extraction", original,
                    tokenizer)
        reference = sentence_embeddings(ExportedFolder.open(original), texts)
        paths["original"] = original / "model.onnx"
        rows.append({"targets": "-", "ratio": 1, "variant": "original fp32", "fit_s": 0.0,
                     "bytes": (original / "model.onnx").stat().st_size, **quality(reference, reference)})
        for targets, ratio in CASES:
            for variant, settings in VARIANTS.items():
                if targets != "embeddings" and variant not in LAYER_VARIANTS:
                    continue
                out = Path(tmp) / f"{targets}-{ratio}-{len(rows)}"
                manifest = export(str(model_path), out, CompressionConfig(targets=targets, ratio=ratio, **settings),
                                  progress=False)
                key = f"{targets} R={ratio:g} {variant}"
                paths[key] = out / "model.onnx"
                rows.append({"targets": targets, "ratio": ratio, "variant": variant,
                             "fit_s": manifest["seconds"]["compress"], "bytes": manifest["totals"]["bytes_after"],
                             "params_after": manifest["totals"]["targeted_params_after"],
                             **quality(reference, sentence_embeddings(ExportedFolder.open(out), texts))})
                print(f"{key:60} cos {rows[-1]['mean_cosine']:.4f}  top10 {rows[-1]['top10_agreement']:.3f}  "
                      f"fit {rows[-1]['fit_s']:.0f}s", flush=True)
        times = latencies(paths, rounds)
    for row, key in zip(rows, paths):
        row["latency_ms"] = times[key]
        row["latency_ratio"] = times[key] / times["original"]
        row["bytes_ratio"] = row["bytes"] / rows[0]["bytes"]
    return {"evaluation_texts": len(texts), "latency_rounds": rounds, "rows": rows}


def write_table(result: dict, path: Path) -> None:
    lines = [
        "# Direction-aware autoencoder vs SVD on all-MiniLM-L6-v2",
        "",
        f"Evaluation: {result['evaluation_texts']} lines of `runtime/data/evaluation.txt`, never used to fit or "
        "select. Quality compares mean-pooled sentence embeddings of each exported ONNX graph with the original "
        "model's. Every variant of a row group has the same parameter budget (R); all are factorised (fewer bytes "
        "and FLOPs). Frequency-aware variants and every ae select on the validation split of the shipped "
        "calibration text. Latency: batch 1 x 128 tokens, 1 thread, median of "
        f"{result['latency_rounds']} alternating rounds; ratios are to the original in the same run.",
        "",
        "| targets | R | variant | bytes vs fp32 | mean cos | min cos | top-10 agreement | Spearman | fit s "
        "| latency ms | latency vs fp32 |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        lines.append(f"| {r['targets']} | {r['ratio']:g} | {r['variant']} | {r['bytes_ratio']:.3f} | "
                     f"{r['mean_cosine']:.4f} | {r['min_cosine']:.3f} | {r['top10_agreement']:.3f} | "
                     f"{r['spearman']:.3f} | {r['fit_s']:.1f} | {r['latency_ms']:.1f} | {r['latency_ratio']:.2f} |")
    lines += ["", "Reproduce: `python benchmarks/ae_vs_svd.py`", ""]
    path.write_text("\n".join(lines))


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(12, 4.6))
    for axis, targets in zip(axes, ("embeddings", "attention,ffn")):
        rows = [r for r in result["rows"] if r["targets"] == targets]
        for variant in dict.fromkeys(r["variant"] for r in rows):
            points = sorted((r["bytes_ratio"], r["mean_cosine"]) for r in rows if r["variant"] == variant)
            axis.plot(*zip(*points), marker="o", label=variant)
        axis.set_title(f"all-MiniLM-L6-v2, {targets} compressed")
        axis.set_xlabel("bytes on disk / original fp32")
        axis.set_ylabel("mean cosine to original (evaluation text)")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=50, help="latency rounds")
    args = parser.parse_args()
    result = run(args.rounds)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "ae_vs_svd.json").write_text(json.dumps(result, indent=2) + "\n")
    write_table(result, RESULTS / "ae_vs_svd.md")
    plot(result, RESULTS / "ae_vs_svd.png")
    print(f"wrote {RESULTS}/ae_vs_svd.{{md,json,png}}")


if __name__ == "__main__":
    main()
