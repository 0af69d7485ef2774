"""Every layer method at the same budget on the real all-MiniLM-L6-v2: the encoder's Linears keep 75% / 50%.

Each variant is exported with ``edgefold.exporter.export`` (targets attention + ffn, uniform ranks: every Linear
keeps the same share) and measured through its ONNX graph in onnxruntime on the shipped evaluation text
(runtime/data/evaluation.txt, 1,225 lines that no method calibrates or selects on): cosine of sentence
embeddings to the original (mean, min), top-10 neighbour agreement, Spearman of pairwise similarities, and
recall@1 of the paraphrase retrieval the text holds (the first line of each 5-line cluster finds the second
among all second lines). Bytes on disk; peak RSS and p50 latency (batch 1 x 128 tokens, 1 thread) from
``edgefold bench``, each variant in a fresh process. Methods are every layer method in ``METHODS``, so one added
later appears here by itself; data-aware settings of a method are listed in ``METHOD_OPTIONS``.

    python benchmarks/layers_budget.py     # about 20 minutes on 2 quiet cores; writes results/layers_budget.*
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
from ae_vs_svd import MODEL, RESULTS, quality  # noqa: E402

from edgefold.exporter import CompressionConfig, export  # noqa: E402
from edgefold.exporter.methods import METHODS, parse_method_options  # noqa: E402
from edgefold.exporter.source.loading import resolve_model_path  # noqa: E402
from edgefold.runtime.bench import BenchSettings, bench  # noqa: E402
from edgefold.runtime.folder import ExportedFolder  # noqa: E402
from edgefold.runtime.texts import shipped_texts  # noqa: E402
from edgefold.runtime.validate import _retrieval_ranks, sentence_embeddings  # noqa: E402

TARGETS = "attention,ffn"
KEPT = (0.75, 0.5)  # share of the encoder Linears' parameters kept: ratio 1/kept
RATIOS = {0.75: 1.333, 0.5: 2.0}
#: Further settings of a method measured beside its default (its data-aware form).
METHOD_OPTIONS = {"ae": [{"whitened": "true"}]}
CLUSTER = 5  # evaluation.txt: clusters of 5 lines, the first two a paraphrase pair
BENCH = BenchSettings(threads=(1,), warmup=5, iterations=20, min_seconds=2)


@dataclass(frozen=True)
class Variant:
    """One row: a method at a budget. ``ranks``: "uniform" here; the global budget (ranks allocated per module
    by sensitivity) adds its rows to ``ALLOCATED`` with ranks="allocated" and the same ``kept``."""

    name: str
    ranks: str
    kept: float
    config: CompressionConfig


def uniform_variants() -> list[Variant]:
    """Every method at every budget; the ones that train (ae...) last, so a long run reports the others first."""
    variants = []
    for kept in KEPT:
        for method in METHODS:
            for options in [{}, *METHOD_OPTIONS.get(method, [])]:
                name = " ".join([method, *(f"{k}={v}" for k, v in options.items())])
                config = CompressionConfig(method=method, targets=TARGETS, ratio=RATIOS[kept],
                                           options=parse_method_options(method, options))
                variants.append(Variant(name, "uniform", kept, config))
    return sorted(variants, key=lambda v: v.config.method.startswith("ae"))  # stable: budgets stay in order


#: The global budget: the same share of all encoder Linears together, ranks allocated per module by measured
#: sensitivity, for the per-module SVD methods (the autoencoder is allocated with SVD's measurements).
ALLOCATED = [Variant(method, "allocated", kept, CompressionConfig(method=method, targets=TARGETS, ratio=RATIOS[kept],
                                                                   allocation="sensitivity"))
             for kept in KEPT for method in ("svd", "svd-whitened")]


def recall_at_1(embeddings: np.ndarray) -> float:
    """The first line of each cluster as the query, the second as its positive among all second lines."""
    ranks = _retrieval_ranks(embeddings[0::CLUSTER], embeddings[1::CLUSTER])
    return float((ranks == 0).mean())


def measure(folder: Path, reference: np.ndarray, texts: list[str]) -> dict:
    embeddings = sentence_embeddings(ExportedFolder.open(folder), texts)
    timing = bench(folder, BENCH, progress=False)["results"][0]["models"][folder.name]
    return {**quality(reference, embeddings), "recall_at_1": recall_at_1(embeddings),
            "bytes": sum(ExportedFolder.open(folder).bytes_on_disk().values()), "p50_ms": timing["latency_ms"]["p50"],
            "peak_rss_mb": timing["peak_rss_bytes"] / 2**20}


def run(variants: list[Variant], progress_path: Path | None = None) -> dict:
    model_path = str(resolve_model_path(MODEL))
    texts = shipped_texts("evaluation.txt")
    result = {"model": MODEL, "targets": TARGETS, "evaluation_texts": len(texts), "rows": []}
    with tempfile.TemporaryDirectory() as tmp:
        original = Path(tmp) / "original"
        export(model_path, original, CompressionConfig(method="none"), progress=False)
        reference = sentence_embeddings(ExportedFolder.open(original), texts)
        result["rows"].append({"name": "original fp32", "ranks": "-", "kept": 1.0, "fit_s": 0.0,
                               **measure(original, reference, texts)})
        for variant in variants:
            out = Path(tmp) / "variant"
            manifest = export(model_path, out, variant.config, progress=False)
            totals = manifest["totals"]
            result["rows"].append({
                "name": variant.name, "ranks": variant.ranks, "kept": variant.kept, "ratio": variant.config.ratio,
                "method": variant.config.method, "method_options": variant.config.method_options,
                "fit_s": manifest["seconds"]["compress"],
                "params_kept": totals["targeted_params_after"] / totals["targeted_params_before"],
                **measure(out, reference, texts)})
            shutil.rmtree(out)
            row = result["rows"][-1]
            print(f"kept {variant.kept:.2f} {variant.ranks:9} {variant.name:24} cos {row['mean_cosine']:.4f} "
                  f"top10 {row['top10_agreement']:.3f} r@1 {row['recall_at_1']:.3f} fit {row['fit_s']:.0f}s",
                  flush=True)
            if progress_path:  # a long run leaves what it has measured so far
                progress_path.write_text(json.dumps(result, indent=2) + "\n")
    return result


def write_table(result: dict, path: Path) -> None:
    base = result["rows"][0]
    lines = [
        "# Layer methods at the same budget on all-MiniLM-L6-v2",
        "",
        f"Targets: {result['targets']} (every encoder Linear), factorised (fewer bytes and FLOPs). Kept: the share "
        "of those Linears' parameters each variant keeps; uniform ranks give every Linear that share. Quality: "
        f"mean-pooled sentence embeddings of each exported ONNX graph against the original on "
        f"{result['evaluation_texts']} lines of `runtime/data/evaluation.txt`, which no method calibrates or "
        "selects on; recall@1: the first line of each 5-line cluster retrieves its paraphrase (the second) among "
        "all 245. Data-aware methods calibrate on the shipped calibration text (fit split) and the autoencoder "
        "selects on its validation split. Latency: p50 of batch 1 x 128 tokens, 1 thread, and peak RSS, from "
        "`edgefold bench` (a fresh process per variant); the machine was shared, so latencies are indicative.",
        "",
        "| kept | ranks | method | params kept | mean cos | min cos | top-10 | Spearman | recall@1 | MB "
        "| bytes vs fp32 | p50 ms | peak RSS MB | fit s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        lines.append(f"| {r['kept']:.2f} | {r['ranks']} | {r['name']} | {r.get('params_kept', 1.0):.3f} | "
                     f"{r['mean_cosine']:.4f} | {r['min_cosine']:.3f} | {r['top10_agreement']:.3f} | "
                     f"{r['spearman']:.3f} | {r['recall_at_1']:.3f} | {r['bytes'] / 2**20:.1f} | "
                     f"{r['bytes'] / base['bytes']:.3f} | {r['p50_ms']:.1f} | {r['peak_rss_mb']:.0f} | "
                     f"{r['fit_s']:.0f} |")
    lines += ["", "Reproduce: `python benchmarks/layers_budget.py`", ""]
    path.write_text("\n".join(lines))


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(12, 4.6))
    rows = [r for r in result["rows"] if r["ranks"] != "-"]
    for metric, axis in zip(("mean_cosine", "recall_at_1"), axes):
        for name, ranks in dict.fromkeys((r["name"], r["ranks"]) for r in rows):
            points = sorted((r["kept"], r[metric]) for r in rows if (r["name"], r["ranks"]) == (name, ranks))
            axis.plot(*zip(*points), marker="o", label=f"{name} ({ranks})")
        axis.axhline(result["rows"][0][metric], color="grey", linestyle=":", label="original")
        axis.set(xlabel="share of encoder Linear parameters kept", ylabel=metric.replace("_", " "),
                 title=f"all-MiniLM-L6-v2, {result['targets']}: {metric.replace('_', ' ')}")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def main() -> None:
    """``--allocated``: measure only the allocated rows and add them to the committed results."""
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / "layers_budget.json"
    if "--allocated" in sys.argv[1:]:
        previous = json.loads(path.read_text())
        result = run(ALLOCATED)
        previous["rows"] += [r for r in result["rows"][1:]]  # the original's row is already there
        result = previous
    else:
        result = run(uniform_variants() + ALLOCATED, path)
    path.write_text(json.dumps(result, indent=2) + "\n")
    write_table(result, RESULTS / "layers_budget.md")
    plot(result, RESULTS / "layers_budget.png")
    print(f"wrote {RESULTS}/layers_budget.{{md,json,png}}")


if __name__ == "__main__":
    main()
