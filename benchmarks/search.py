"""The goal-driven export against what a user would otherwise do, on the real all-MiniLM-L6-v2.

Three searches (`edgefold export MODEL OUT --objective ...`, calibrated and selected on the shipped calibration
text only) against onnxruntime's int8 alone, int4 alone, and the best fixed recipe of the README (embeddings 2x
frequency-aware SVD, then int4), all measured in one run on text no step of any search saw:

- the shipped evaluation text (runtime/data/evaluation.txt, 1,225 lines; the project's own, general English);
- docstrings of the Python standard library (``stdlib_text.py``: 867 summary/body pairs, written by CPython's
  developers, PSF licence), a domain (API documentation) the project did not write: sentence-embedding fidelity
  and retrieval (each summary against all bodies, recall@1 of the original and of each model).

Latency: batch 1 x 128 tokens, one thread, every model taking turns in one worker (``edgefold bench``'s own).
Wall time and peak RSS of each search as a separate process (its worker processes included).

    python benchmarks/search.py     # about 30 minutes on 2 cores; writes results/search.{md,json,png}
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from stdlib_text import docstring_items  # noqa: E402

from edgefold.exporter import CompressionConfig, GraphConfig, export  # noqa: E402
from edgefold.exporter.search.latency import model_latencies  # noqa: E402
from edgefold.exporter.search.search import DEFAULT_GATES  # noqa: E402
from edgefold.runtime.dataset import EvalData  # noqa: E402
from edgefold.runtime.folder import ExportedFolder  # noqa: E402
from edgefold.runtime.texts import shipped_texts  # noqa: E402
from edgefold.runtime.validate import validate  # noqa: E402

RESULTS = Path(__file__).parent / "results"
MODEL = "sentence-transformers/all-MiniLM-L6-v2"
STRICT = ["mean_cosine>=0.98", "min_cosine>=0.90", "top10_agreement>=0.85"]
SEARCHES = {  # name: extra flags of `edgefold export`
    "search: size, default gates": ["--objective", "size"],
    "search: size, strict gates": ["--objective", "size", *[f for g in STRICT for f in ("--gate", g)]],
    "search: latency, default gates": ["--objective", "latency"],
    "search: latency, full search (Linears factorised too)": ["--objective", "latency", "--search", "full"],
}
FIXED = {  # name: (compression, graph) as a user would ask for them (fusions measured, as `export` does)
    "int8 alone": (dict(method="none"), dict(quantize="int8")),
    "int4 alone": (dict(method="none"), dict(quantize="int4")),
    "README recipe: emb 2x svd-freq + int4": (dict(targets="embeddings", ratio=2, frequency=True),
                                              dict(quantize="int4")),
}
_PEAK = ("import resource, sys; from edgefold.cli import main; code = main(sys.argv[1:]); "
         "print('PEAK_RSS_KB', max(resource.getrusage(w).ru_maxrss for w in "
         "(resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)), file=sys.stderr); sys.exit(code)")


def run_search(out: Path, flags: list[str]) -> dict:
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", _PEAK, "export", MODEL, str(out), "--quiet", *flags],
                          capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"search {flags} failed: {done.stderr.strip().splitlines()[-2:]}")
    peak = next(int(line.split()[1]) for line in done.stderr.splitlines() if line.startswith("PEAK_RSS_KB"))
    return {"seconds": round(seconds, 1), "peak_rss_mb": round(peak / 1024)}


def measure(folders: dict[str, Path], reference: Path) -> dict[str, dict]:
    evaluation = EvalData("shipped evaluation.txt", shipped_texts("evaluation.txt"))
    items = docstring_items()
    stdlib = EvalData("Python stdlib docstrings", [i["text"] for i in items],
                      pairs=[(i["query"], i["positive"]) for i in items])
    gates = list(DEFAULT_GATES["feature-extraction"])
    rows = {}
    for name, folder in folders.items():
        on_eval = validate(folder, reference, evaluation, gates)
        on_stdlib = validate(folder, reference, stdlib, [*gates, "recall_at_1_drop<=0.01"])
        rows[name] = {"bytes": sum(ExportedFolder.open(folder).bytes_on_disk().values()),
                      "evaluation": on_eval["metrics"], "evaluation_passes": on_eval["passed"],
                      "stdlib": on_stdlib["metrics"], "stdlib_passes": on_stdlib["passed"]}
        print(f"measured {name}", file=sys.stderr, flush=True)
    times = model_latencies([reference, *folders.values()], tokens=128, threads=1, rounds=60)
    for row, ms in zip(rows.values(), times[1:]):
        row["latency_ms"] = ms
    return {"reference_ms": times[0], "rows": rows}


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="edgefold-bench-search-") as tmp:
        root = Path(tmp)
        reference = root / "fp32"
        export(MODEL, reference, CompressionConfig(method="none"), GraphConfig(optimize="none"), progress=False)
        folders, runs, plans = {}, {}, {}
        for name, (compression, graph) in FIXED.items():
            folders[name] = root / f"fixed-{len(folders)}"
            export(MODEL, folders[name], CompressionConfig(**compression), GraphConfig(**graph), progress=False)
        for name, flags in SEARCHES.items():
            folders[name] = root / f"search-{len(runs)}"
            runs[name] = run_search(folders[name], flags)
            search = json.loads((folders[name] / "edgefold.json").read_text())["search"]
            plans[name] = {"chosen": search["chosen"], "plan": search["chosen_plan"],
                           "predicted_ms": search["latency"]["predicted_ms"], "check": search["check"]["gates"]}
            print(f"{name}: {runs[name]} -> {plans[name]['plan']}", file=sys.stderr, flush=True)
        measured = measure(folders, reference)
        reference_bytes = sum(ExportedFolder.open(reference).bytes_on_disk().values())
    result = {"model": MODEL, "reference_bytes": reference_bytes, **measured, "searches": runs, "plans": plans,
              "gates": DEFAULT_GATES["feature-extraction"], "strict_gates": STRICT}
    write(result)


def write(result: dict) -> None:
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "search.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / "search.md").write_text(table(result))
    plot(result, RESULTS / "search.png")
    print(table(result))


def table(result: dict) -> str:
    rows, fp32_ms = result["rows"], result["reference_ms"]
    fp32_bytes = result["reference_bytes"]
    lines = [
        "# Goal-driven export against quantisation alone, all-MiniLM-L6-v2",
        "",
        "One run on this machine (2 cores). Every search calibrated and selected on the shipped calibration text "
        "only; metrics against the original on text none of them saw: the shipped evaluation text (1,225 lines) "
        f"and {len(docstring_items())} Python standard-library docstrings (another domain, not written by the "
        "project; retrieval: each summary against all bodies). Default gates: "
        f"{', '.join(result['gates'])} (+ recall_at_1_drop<=0.01 where there are pairs); strict: "
        f"{', '.join(result['strict_gates'])}. Latency: p50, batch 1 x 128 tokens, 1 thread, all models taking "
        f"turns in one process (fp32: {fp32_ms:.2f} ms, {fp32_bytes:,} bytes).",
        "",
        "| model | bytes vs fp32 | ms vs fp32 | eval mean cos | eval min cos | eval top-10 | eval gates | "
        "stdlib mean cos | stdlib min cos | stdlib R@1 drop | stdlib gates |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, row in rows.items():
        e, s = row["evaluation"], row["stdlib"]
        lines.append(f"| {name} | {row['bytes'] / fp32_bytes:.3f} | {row['latency_ms'] / fp32_ms:.2f} | "
                     f"{e['mean_cosine']:.4f} | {e['min_cosine']:.3f} | {e['top10_agreement']:.3f} | "
                     f"{'pass' if row['evaluation_passes'] else 'FAIL'} | {s['mean_cosine']:.4f} | "
                     f"{s['min_cosine']:.3f} | {s['recall_at_1_drop']:+.3f} | "
                     f"{'pass' if row['stdlib_passes'] else 'FAIL'} |")
    lines += ["", "| search | chosen plan | wall s | peak RSS MB | predicted ms |", "|---|---|---|---|---|"]
    for name, run in result["searches"].items():
        plan = result["plans"][name]
        predicted = "-" if plan["predicted_ms"] is None else f"{plan['predicted_ms']:.2f}"
        lines.append(f"| {name} | {plan['plan']} | {run['seconds']} | {run['peak_rss_mb']} | {predicted} |")
    lines += ["", "Reproduce: `python benchmarks/search.py`"]
    return "\n".join(lines) + "\n"


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for axis, key, label in ((axes[0], "bytes", "bytes vs fp32"), (axes[1], "latency_ms", "latency vs fp32")):
        scale = result["reference_bytes"] if key == "bytes" else result["reference_ms"]
        for name, row in result["rows"].items():
            for domain, marker in (("evaluation", "o"), ("stdlib", "s")):
                axis.scatter(row[key] / scale, row[domain]["mean_cosine"], marker=marker,
                             color="tab:green" if name.startswith("search") else "tab:orange")
            axis.annotate(name, (row[key] / scale, row["evaluation"]["mean_cosine"]), fontsize=7,
                          xytext=(4, 4), textcoords="offset points")
        axis.axhline(0.95, color="grey", linestyle="--", linewidth=0.8)
        axis.set_xlabel(label)
        axis.set_ylabel("mean cosine to the original")
        axis.grid(alpha=0.3)
    figure.suptitle("all-MiniLM-L6-v2: goal-driven export (green) against fixed recipes (orange); circles: shipped "
                    "evaluation text, squares: stdlib docstrings", fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


if __name__ == "__main__":
    if sys.argv[1:] == ["--render"]:  # the table and plot again from results/search.json
        write(json.loads((RESULTS / "search.json").read_text()))
    else:
        main()
