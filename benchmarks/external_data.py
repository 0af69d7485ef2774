"""A model past ONNX's 2 GB protobuf limit through every graph step: export, optimisation, quantisation, .ort.

A Llama-shaped causal LM with random weights (about 0.55B parameters, 2.2 GB in fp32; random weights measure
files, time and memory, not accuracy) is written once into ``benchmarks/.cache`` with MiniLM's tokenizer, then
exported by the ``edgefold export`` command, each configuration in its own process (peak RSS is that process's).
Each folder must hold the graph and ``model.onnx_data`` exactly as its manifest lists them, and run in
onnxruntime; the export's own checks (parity, quantisation fidelity, the .ort file against the .onnx) run as
always.

    python benchmarks/external_data.py            # about 15 minutes on 2 cores, 14 GB of RAM at the peak
    python benchmarks/external_data.py --render   # table and plot again from the saved JSON
    python benchmarks/external_data.py --only int4  # one configuration again, its saved row replaced
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
#: The export command, which then reports its own peak resident size (ru_maxrss, KiB on Linux) on stderr.
_REPORTING_PEAK_RSS = ("import resource, sys\nfrom edgefold.cli import main\ncode = main(sys.argv[1:])\n"
                       "print('PEAK_RSS_KB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)\n"
                       "sys.exit(code)")
CACHE = HERE / ".cache" / "llama-0.55b"
RESULTS = HERE / "results"
#: hidden 1536, 18 layers, FFN 4096, 4 KV heads, untied head: 0.55B parameters, 2.19 GB in fp32 (past 2 GiB).
SHAPE = dict(hidden_size=1536, num_hidden_layers=18, num_attention_heads=12, num_key_value_heads=4,
             intermediate_size=4096, max_position_embeddings=512, tie_word_embeddings=False)
CONFIGURATIONS = {
    "fp32, fusions (auto)": ["--method", "none", "--optimize", "auto"],
    "fp32, fusions (auto), .ort": ["--method", "none", "--optimize", "auto", "--format", "onnx,ort"],
    "int8, fusions (auto), .ort": ["--method", "none", "--optimize", "auto", "--quantize", "int8",
                                   "--format", "onnx,ort"],
    "int4": ["--method", "none", "--optimize", "none", "--quantize", "int4"],
}


def build_model() -> tuple[Path, int]:
    import torch
    import transformers

    from edgefold.exporter.source.loading import resolve_model_path

    if not (CACHE / "model.safetensors").is_file():
        tokenizer = transformers.AutoTokenizer.from_pretrained(resolve_model_path(
            "sentence-transformers/all-MiniLM-L6-v2"))
        config = transformers.LlamaConfig(vocab_size=tokenizer.vocab_size, **SHAPE)
        torch.manual_seed(0)
        model = transformers.LlamaForCausalLM(config).eval()
        model.save_pretrained(CACHE, safe_serialization=True)
        tokenizer.save_pretrained(CACHE)
    config = transformers.AutoConfig.from_pretrained(CACHE)
    with torch.device("meta"):
        params = sum(p.numel() for p in transformers.LlamaForCausalLM(config).parameters())
    return CACHE, params


def run(model: Path, name: str, flags: list[str], work: Path) -> dict:
    folder = work / name.replace(" ", "-").replace(",", "").replace("(", "").replace(")", "")
    command = [sys.executable, "-c", _REPORTING_PEAK_RSS, "export", str(model), str(folder), *flags]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        lines = [line for line in done.stderr.splitlines() if line.strip() and not line.startswith("PEAK_RSS_KB")]
        error = next((line for line in lines if line.startswith("edgefold: error:")), lines[-1])
        return {"name": name, "error": error, "wall_s": round(wall, 1)}
    manifest = json.loads((folder / "edgefold.json").read_text())
    on_disk = {p.name: p.stat().st_size for p in folder.iterdir() if p.name.startswith("model.")}
    assert {k: on_disk[k] for k in manifest["files"]} == manifest["files"], (manifest["files"], on_disk)
    peak_kb = int(done.stderr.rsplit("PEAK_RSS_KB ", 1)[1].split()[0])
    return {"name": name, "wall_s": round(wall, 1), "peak_rss_gb": round(peak_kb / 2**20, 2),
            "seconds": manifest["seconds"], "files": manifest["files"], "on_disk": on_disk,
            "bytes_after": manifest["totals"]["bytes_after"], "parity": manifest["parity"]["max_abs_diff"],
            "optimization": (manifest.get("optimization") or {}).get("chosen"),
            "quantization_max_abs_diff": (manifest.get("quantization") or {}).get("max_abs_diff_vs_fp32"),
            "ort_bytes": (manifest.get("ort_format") or {}).get("bytes"), "runs": _runs(folder)}


def _runs(folder: Path) -> bool:
    import numpy as np
    import onnxruntime as ort

    session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    ids = np.array([[101, 7592, 2088, 102]], dtype=np.int64)
    feed = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
    for item in session.get_inputs():
        if item.name.startswith("past_key_values"):
            feed[item.name] = np.zeros((1, SHAPE["num_key_value_heads"], 0, SHAPE["hidden_size"] //
                                        SHAPE["num_attention_heads"]), dtype=np.float32)
        elif item.name == "position_ids":
            feed[item.name] = np.arange(ids.shape[1])[None]
    logits = session.run(None, feed)[0]
    return bool(np.isfinite(logits).all())


def render(results: dict) -> None:
    rows = ["| configuration | files (bytes) | export | optimise | quantise | .ort | wall | peak RSS | parity | runs |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results["runs"]:
        if "error" in r:
            rows.append(f"| {r['name']} | failed: {r['error']} | | | | | {r['wall_s']} s | | | |")
            continue
        s = r["seconds"]
        files = ", ".join(f"{k} {v:,}" for k, v in r["files"].items())
        rows.append(f"| {r['name']} | {files} | {s.get('export', 0):.0f} s | {s.get('optimize', 0):.0f} s | "
                    f"{s.get('quantize', 0):.0f} s | {s.get('ort', 0):.0f} s | {r['wall_s']:.0f} s | "
                    f"{r['peak_rss_gb']:.1f} GB | {r['parity']:.1e} | {r['runs']} |")
    text = (f"# A {results['params'] / 1e9:.2f}B-parameter model ({results['fp32_bytes'] / 1e9:.2f} GB fp32) "
            "through every graph step\n\n"
            "Random weights (Llama-shaped): files, time and memory, not accuracy. Each configuration is one "
            "`edgefold export` process; peak RSS is that process's own (`ru_maxrss`). The rows ran at different "
            "times on 2 cores shared with other benchmarks (`--only` replaces one row): compare files and memory, "
            "not wall times. `optimise` timed both optimisers' graphs against the plain one and kept the plain "
            "one unless a fusion was measured faster. Files are as the manifest lists them, checked against the folder.\n\n"
            + "\n".join(rows) + f"\n\nReproduce: `python benchmarks/external_data.py` ({results['date']}, "
            f"{results['machine']}).\n")
    (RESULTS / "external_data.md").write_text(text)
    _plot(results)


def _plot(results: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [r for r in results["runs"] if "error" not in r]
    steps = ["load", "compress", "export", "parity", "optimize", "quantize", "ort", "manifest"]
    figure, axis = plt.subplots(figsize=(8, 3.2))
    for i, r in enumerate(runs):
        left = 0.0
        for step in steps:
            width = r["seconds"].get(step, 0.0)
            axis.barh(i, width, left=left, color=f"C{steps.index(step)}", label=step if i == 0 else None)
            left += width
    axis.set_yticks(range(len(runs)), [r["name"] for r in runs])
    axis.set_xlabel("seconds (edgefold export, one process each)")
    axis.set_title(f"{results['params'] / 1e9:.2f}B parameters, {results['fp32_bytes'] / 1e9:.1f} GB fp32: "
                   "external data in every step")
    axis.legend(ncol=4, fontsize=7, loc="lower right")
    figure.tight_layout()
    figure.savefig(RESULTS / "external_data.png", dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--render", action="store_true", help="table and plot again from the saved JSON")
    parser.add_argument("--only", choices=CONFIGURATIONS, help="run one configuration, replacing its saved row")
    args = parser.parse_args()
    saved = RESULTS / "external_data.json"
    if args.render:
        render(json.loads(saved.read_text()))
        return
    model, params = build_model()
    results = {"params": params, "fp32_bytes": (model / "model.safetensors").stat().st_size,
               "date": time.strftime("%Y-%m-%d"), "machine": "2 cores, 24 GB", "runs": []}
    if args.only:
        results["runs"] = [r for r in json.loads(saved.read_text())["runs"] if r["name"] in CONFIGURATIONS]
    with tempfile.TemporaryDirectory(prefix="edgefold-external-") as work:
        for name, flags in CONFIGURATIONS.items():
            if args.only not in (None, name):
                continue
            print(f"{name} ...", file=sys.stderr, flush=True)
            row = run(model, name, flags, Path(work))
            results["runs"] = [r for r in results["runs"] if r["name"] != name] + [row]
            print(json.dumps(row), file=sys.stderr, flush=True)
    results["runs"].sort(key=lambda r: list(CONFIGURATIONS).index(r["name"]))
    saved.write_text(json.dumps(results, indent=2))
    render(results)


if __name__ == "__main__":
    main()
