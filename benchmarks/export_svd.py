"""Export the real all-MiniLM-L6-v2 with SVD at several ratios: wall time, peak RSS, bytes, fidelity.

Each export is a separate ``edgefold export`` process, so its wall time includes start-up and imports (what a
user waits for) and its peak RSS (from wait4) is its own. Repeats give a median.

    python benchmarks/export_svd.py            # writes benchmarks/results/export_svd.{md,json,png}
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
MODEL = "sentence-transformers/all-MiniLM-L6-v2"
CASES = [  # (targets, ratio)
    ("embeddings", 2.5), ("embeddings", 5), ("embeddings", 10),
    ("attention,ffn", 1.33), ("attention,ffn", 2),
    ("embeddings,attention,ffn", 2), ("embeddings,attention,ffn", 4),
]


def run_export(targets: str, ratio: float, out: Path) -> tuple[float, int, dict]:
    """(wall seconds, peak RSS bytes, manifest) of one ``edgefold export`` process."""
    command = [sys.executable, "-m", "edgefold.cli", "export", MODEL, str(out), "--targets", targets,
               "--ratio", str(ratio), "--overwrite", "--quiet"]
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"export failed: {' '.join(command)}\n{process.stderr.read().decode()}")
    manifest = json.loads((out / "edgefold.json").read_text())
    return wall, usage.ru_maxrss * 1024, manifest  # ru_maxrss is in KiB on Linux


def measure(repeats: int) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for targets, ratio in CASES:
            walls, peaks = [], []
            for _ in range(repeats):
                wall, peak, manifest = run_export(targets, ratio, Path(tmp) / "out")
                walls.append(wall)
                peaks.append(peak)
            totals, fidelity = manifest["totals"], manifest["fidelity"]
            rows.append({
                "targets": targets, "ratio": ratio,
                "wall_s_median": statistics.median(walls), "wall_s_all": walls,
                "peak_rss_mb_max": max(peaks) / 2**20,
                "bytes_before": totals["bytes_before"], "bytes_after": totals["bytes_after"],
                "targeted_params_kept": totals["targeted_params_after"] / totals["targeted_params_before"],
                "mean_cosine": fidelity["mean_cosine"], "min_cosine": fidelity["min_cosine"],
                "parity_max_abs_diff": manifest["parity"]["max_abs_diff"],
            })
            print(f"{targets:>26} R={ratio:<5} {rows[-1]['wall_s_median']:6.1f} s  "
                  f"{rows[-1]['peak_rss_mb_max']:6.0f} MB  cos {fidelity['mean_cosine']:.3f}", flush=True)
    return rows


def write_table(rows: list[dict], context: dict, path: Path) -> None:
    lines = [
        "# SVD export of all-MiniLM-L6-v2",
        "",
        f"Machine: {context['cpu']}, {context['cores']} cores, Python {context['python']}. "
        f"{context['repeats']} runs per row; wall time is the median of whole `edgefold export` processes "
        "(start-up, load, SVD, ONNX export, parity check, manifest); peak RSS is the largest of those runs. "
        "Fidelity: cosine of mean-pooled sentence embeddings to the original model's, on the 64 sentences "
        "shipped for verification (truncated SVD fits no data). Compression kind: factorised (fewer bytes and "
        "FLOPs). Goal: under 20 s wall and under 2 GB peak RSS.",
        "",
        "| targets | R | targeted params kept | wall s (median) | peak RSS MB | bytes fp32 -> ONNX | bytes ratio "
        "| mean cos | min cos | parity max abs diff |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['targets']} | {r['ratio']:g} | {r['targeted_params_kept']:.3f} | {r['wall_s_median']:.1f} | "
            f"{r['peak_rss_mb_max']:.0f} | {r['bytes_before']:,} -> {r['bytes_after']:,} | "
            f"{r['bytes_after'] / r['bytes_before']:.2f} | {r['mean_cosine']:.3f} | {r['min_cosine']:.3f} | "
            f"{r['parity_max_abs_diff']:.1e} |")
    lines += ["", "Reproduce: `python benchmarks/export_svd.py`", ""]
    path.write_text("\n".join(lines))


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6.5, 4.2))
    for targets in dict.fromkeys(r["targets"] for r in rows):
        points = sorted((r["bytes_after"] / r["bytes_before"], r["mean_cosine"]) for r in rows
                        if r["targets"] == targets)
        axis.plot(*zip(*points), marker="o", label=targets)
    axis.set_xlabel("bytes on disk / original fp32")
    axis.set_ylabel("mean cosine to original (sentence embeddings)")
    axis.set_title("all-MiniLM-L6-v2, truncated SVD (edgefold export)")
    axis.grid(alpha=0.3)
    axis.legend(title="targets")
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    context = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
               "python": platform.python_version(), "repeats": args.repeats}
    try:
        context["cpu"] = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                              if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    rows = measure(args.repeats)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "export_svd.json").write_text(json.dumps({"context": context, "rows": rows}, indent=2) + "\n")
    write_table(rows, context, RESULTS / "export_svd.md")
    plot(rows, RESULTS / "export_svd.png")
    print(f"wrote {RESULTS}/export_svd.{{md,json,png}}")


if __name__ == "__main__":
    main()
