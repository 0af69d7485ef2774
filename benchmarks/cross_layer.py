"""Compressing layers together across layers, against plain SVD at the same budget, on the real all-MiniLM-L6-v2.

Variants (every encoder Linear: attention and FFN of all 6 layers, at R = 1.333 and 2):
- ``svd``: truncated SVD per matrix (factorised);
- ``svd-shared``: one right basis per kind shared by all layers (Basis Sharing, plain; factorised);
- ``ae-shared``: the cross-layer autoencoder, one decoder per kind (STORAGE: decoded when the session starts);
- ``ae-separated``: the same autoencoder, one per matrix (storage);
- ``svd-shared:layers=2``: one basis per pair of consecutive layers (Basis Sharing's small groups).
Quality: mean-pooled sentence embeddings of each exported ONNX graph against the original's on the shipped
evaluation text (runtime/data/evaluation.txt), never used to fit. Bytes: the model.onnx file. Peak RSS and
session-creation time: ``edgefold bench`` (a fresh worker process per folder, 1 thread, batch 1 x 128 tokens).

    OMP_NUM_THREADS=1 python benchmarks/cross_layer.py   # about 20 minutes on 2 cores; writes results/cross_layer.*
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import transformers  # noqa: E402

from edgefold.exporter import CompressionConfig, export  # noqa: E402
from edgefold.exporter.methods import parse_method_options  # noqa: E402
from edgefold.exporter.onnx.export import export_onnx  # noqa: E402
from edgefold.exporter.source.loading import resolve_model_path  # noqa: E402
from edgefold.runtime.bench import BenchSettings, bench  # noqa: E402
from edgefold.runtime.folder import ExportedFolder  # noqa: E402
from edgefold.runtime.metrics import row_cosines  # noqa: E402
from edgefold.runtime.texts import shipped_texts  # noqa: E402
from edgefold.runtime.validate import sentence_embeddings  # noqa: E402

RESULTS = Path(__file__).parent / "results"
MODEL = "sentence-transformers/all-MiniLM-L6-v2"
METHODS = ("svd", "svd-shared", "ae-shared", "ae-separated", "svd-shared:layers=2")  # name[:NAME=VALUE,...]
RATIOS = (1.333, 2.0)
BENCH = BenchSettings(threads=(1,), warmup=3, iterations=10, min_seconds=2.0)


def measure(folder: Path, reference, texts: list[str]) -> dict:
    cosines = row_cosines(reference, sentence_embeddings(ExportedFolder.open(folder), texts))
    run = bench(folder, BENCH, progress=False)["results"][0]["models"]
    model = next(iter(run.values()))
    return {"mean_cosine": float(cosines.mean()), "min_cosine": float(cosines.min()),
            "bytes": (folder / "model.onnx").stat().st_size, "peak_rss_bytes": model["peak_rss_bytes"],
            "session_create_s": model["session_create_s"], "latency_p50_ms": model["latency_ms"]["p50"]}


def _config(variant: str, ratio: float) -> CompressionConfig:
    method, _, options = variant.partition(":")
    settings = dict(o.split("=", 1) for o in options.split(",") if o)
    return CompressionConfig(method=method, targets="attention,ffn", ratio=ratio,
                             options=parse_method_options(method, settings))


def run(methods: tuple[str, ...], ratios: tuple[float, ...], append: bool) -> dict:
    model_path = resolve_model_path(MODEL)
    texts = shipped_texts("evaluation.txt")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        original = Path(tmp) / "original"
        original.mkdir()
        export_onnx(transformers.AutoModel.from_pretrained(model_path).eval(), "feature-extraction", original,
                    transformers.AutoTokenizer.from_pretrained(model_path))
        reference = sentence_embeddings(ExportedFolder.open(original), texts)
        if append:  # more variants for an earlier run's table, its original row kept
            rows = json.loads((RESULTS / "cross_layer.json").read_text())["rows"]
        else:
            rows.append({"ratio": 1, "method": "original fp32", "compression": "none", "fit_s": 0.0,
                         **measure(original, reference, texts)})
        for ratio in ratios:
            for method in methods:
                out = Path(tmp) / f"{len(rows)}"
                manifest = export(str(model_path), out, _config(method, ratio), progress=False)
                rows.append({"ratio": ratio, "method": method, "compression": manifest["compression"],
                             "fit_s": manifest["seconds"]["compress"],
                             "params_after": manifest["totals"]["targeted_params_after"],
                             "params_before": manifest["totals"]["targeted_params_before"],
                             **measure(out, reference, texts)})
                print(json.dumps(rows[-1]), flush=True)
    return {"evaluation_texts": len(texts), "torch_threads": os.environ.get("OMP_NUM_THREADS"), "rows": rows}


def write_table(result: dict, path: Path) -> None:
    base = result["rows"][0]
    lines = [
        "# Compressing layers together: svd-shared and the cross-layer autoencoder vs SVD (all-MiniLM-L6-v2)",
        "",
        f"Targets: every encoder Linear (attention, FFN; 36 matrices). Quality: mean cosine of mean-pooled sentence "
        f"embeddings to the original's, {result['evaluation_texts']} lines of `runtime/data/evaluation.txt` (never "
        "fitted on). `factorised`: the graph computes with the compressed form (fewer bytes and FLOPs). `storage`: "
        "the file holds latent codes + decoder + norms, decoded by onnxruntime into the dense weights when the "
        "session is created: fewer bytes on disk only, dense weights in memory, the original FLOPs. Peak RSS and "
        "session creation from `edgefold bench` (fresh process, 1 thread, batch 1 x 128 tokens). Fit times with "
        f"torch threads = {result['torch_threads'] or 'default'} on a shared, loaded 2-core machine (noisy). "
        "Latency: each folder alone in its own process while other jobs ran: too noisy to compare rows (the "
        "storage rows run the same dense graph as the original once the session has folded the decoders).",
        "",
        "| R | method | compression | targeted params kept | file MB | file vs fp32 | mean cos | min cos "
        "| fit s | session create s | peak RSS MB | RSS vs fp32 | latency p50 ms |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        kept = f"{r['params_after'] / r['params_before']:.3f}" if "params_after" in r else "1"
        lines.append(f"| {r['ratio']:g} | {r['method']} | {r['compression']} | {kept} | {r['bytes'] / 1e6:.1f} | "
                     f"{r['bytes'] / base['bytes']:.3f} | {r['mean_cosine']:.4f} | {r['min_cosine']:.3f} | "
                     f"{r['fit_s']:.0f} | {r['session_create_s']:.2f} | {r['peak_rss_bytes'] / 2**20:.0f} | "
                     f"{r['peak_rss_bytes'] / base['peak_rss_bytes']:.3f} | {r['latency_p50_ms']:.1f} |")
    lines += ["", "Reproduce: `OMP_NUM_THREADS=1 python benchmarks/cross_layer.py`", ""]
    path.write_text("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default=";".join(METHODS), help="variants separated by ;")
    parser.add_argument("--ratios", default=",".join(map(str, RATIOS)))
    parser.add_argument("--append", action="store_true", help="add the rows to results/cross_layer.json")
    args = parser.parse_args()
    result = run(tuple(args.methods.split(";")), tuple(float(r) for r in args.ratios.split(",")), args.append)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "cross_layer.json").write_text(json.dumps(result, indent=2) + "\n")
    write_table(result, RESULTS / "cross_layer.md")
    print(f"wrote {RESULTS}/cross_layer.{{md,json}}")


if __name__ == "__main__":
    main()
