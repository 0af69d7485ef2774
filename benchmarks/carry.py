"""Does the default export's promise carry to text of other kinds? The default search against onnxruntime's
quantiser alone, on the real all-MiniLM-L6-v2, all measured in one run on three texts:

- the shipped evaluation text (``runtime/data/evaluation.txt``, 1,225 lines, general English written for
  edgefold; no search step saw it);
- the check half of the shipped second domain (132 Python standard-library docstrings, PSF-2.0): the search
  checks its chosen model on it, but selects on the other half only; retrieval: each summary among all bodies;
- English user-interface messages and chat lines (``data/languages/en.test.txt``, 311 lines from Debian's
  gettext catalogues and the chatterbot corpus: human-written, a third kind, used by no part of the search).

Rows: fp32; int8 and int4 (blocks of 32) alone, as ``edgefold export --method none --quantize ...`` writes them
(onnxruntime's quantisers; fusions measured); the default search (``edgefold export MODEL OUT``: GPTQ, the second
domain) and the same search with ``--quant-algorithm rtn`` (what data-aware weights add) and with
``--no-second-domain`` (what selecting on a second domain buys). Each search's wall time is its own process's.

    python benchmarks/carry.py     # about 25 minutes on 2 cores; writes results/carry.{md,json,png}
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

from edgefold.exporter import CompressionConfig, GraphConfig, export  # noqa: E402
from edgefold.exporter.search.search import DEFAULT_GATES  # noqa: E402
from edgefold.exporter.search.splits import halves  # noqa: E402
from edgefold.runtime.dataset import EvalData, second_domain  # noqa: E402
from edgefold.runtime.folder import ExportedFolder  # noqa: E402
from edgefold.runtime.texts import shipped_texts  # noqa: E402
from edgefold.runtime.validate import validate  # noqa: E402

HERE = Path(__file__).parent
RESULTS = HERE / "results"
MODEL = "sentence-transformers/all-MiniLM-L6-v2"
FIXED = {"int8 alone": "int8", "int4 alone (blocks of 32)": "int4"}
SEARCHES = {
    "default export (GPTQ, second domain)": [],
    "default export, --quant-algorithm rtn": ["--quant-algorithm", "rtn"],
    "default export, --no-second-domain": ["--no-second-domain"],
}


def texts() -> dict[str, EvalData]:
    messages = [line for line in (HERE / "data/languages/en.test.txt").read_text().splitlines() if line.strip()]
    return {"evaluation text": EvalData("shipped evaluation.txt", shipped_texts("evaluation.txt")),
            "docstrings (check half)": halves(second_domain("feature-extraction"))[1],
            "UI messages": EvalData("en.test.txt", messages)}


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="edgefold-bench-carry-") as tmp:
        root = Path(tmp)
        reference = root / "fp32"
        export(MODEL, reference, CompressionConfig(method="none"), GraphConfig(optimize="none"), progress=False)
        folders, seconds, plans = {}, {}, {}
        for name, scheme in FIXED.items():
            folders[name] = root / scheme
            start = time.perf_counter()
            export(MODEL, folders[name], CompressionConfig(method="none"), GraphConfig(quantize=scheme),
                   progress=False)
            seconds[name] = round(time.perf_counter() - start, 1)
        for name, flags in SEARCHES.items():
            folders[name] = root / f"search-{len(plans)}"
            start = time.perf_counter()
            subprocess.run([sys.executable, "-m", "edgefold.cli", "export", MODEL, str(folders[name]), "--quiet",
                            *flags], check=True)
            seconds[name] = round(time.perf_counter() - start, 1)
            plans[name] = json.loads((folders[name] / "edgefold.json").read_text())["search"]["chosen_plan"]
            print(f"{name}: {seconds[name]} s, {plans[name]}", file=sys.stderr, flush=True)
        gates = list(DEFAULT_GATES["feature-extraction"])
        reference_bytes = sum(ExportedFolder.open(reference).bytes_on_disk().values())
        rows, measured_on = {}, texts()
        for name, folder in folders.items():
            reports = {domain: validate(folder, reference, data, gates, confidence=0.95)
                       for domain, data in measured_on.items()}
            rows[name] = {"bytes": sum(ExportedFolder.open(folder).bytes_on_disk().values()) / reference_bytes,
                          "seconds": seconds[name], "plan": plans.get(name, FIXED.get(name)),
                          **{domain: {"metrics": r["metrics"], "passed": r["passed"]} for domain, r in reports.items()}}
            print(f"measured {name}", file=sys.stderr, flush=True)
    write({"model": MODEL, "gates": gates, "reference_bytes": reference_bytes, "domains": list(texts()), "rows": rows})


def write(result: dict) -> None:
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "carry.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / "carry.md").write_text(table(result))
    plot(result, RESULTS / "carry.png")
    print(table(result))


def table(result: dict) -> str:
    domains = result["domains"]
    lines = ["# Does the promise carry? all-MiniLM-L6-v2 on three texts", "",
             "One run on this machine (2 cores); see the docstring of `benchmarks/carry.py` for what each text and row "
             f"is. Gates: {', '.join(result['gates'])}, each at 95% confidence (its one-sided bootstrap bound must "
             "clear it). Cosine: mean-pooled sentence embeddings against the fp32 graph's (mean / 1st percentile). "
             "R@1: the docstrings' retrieval, drop against fp32.", "",
             "| model | bytes vs fp32 | " + " | ".join(f"{d}: mean / p01, gates" for d in domains)
             + " | docstrings R@1 drop | export s | plan |",
             "|---|---|" + "---|" * len(domains) + "---|---|---|"]
    for name, row in result["rows"].items():
        cells = [f"{row[d]['metrics']['mean_cosine']:.4f} / {row[d]['metrics']['p01_cosine']:.4f}, "
                 f"{'pass' if row[d]['passed'] else 'FAIL'}" for d in domains]
        drop = row["docstrings (check half)"]["metrics"]["recall_at_1_drop"]
        lines.append(f"| {name} | {row['bytes']:.3f} | " + " | ".join(cells) + f" | {drop:+.3f} | {row['seconds']} | "
                     f"{row['plan']} |")
    lines += ["", "Reproduce: `python benchmarks/carry.py` (`--render`: the table and plot again from carry.json)"]
    return "\n".join(lines) + "\n"


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    markers = {"evaluation text": "o", "docstrings (check half)": "s", "UI messages": "^"}
    for axis, metric in zip(axes, ("mean_cosine", "p01_cosine")):
        for name, row in result["rows"].items():
            colour = "tab:green" if name.startswith("default") else "tab:orange"
            for domain, marker in markers.items():
                axis.scatter(row["bytes"], row[domain]["metrics"][metric], marker=marker, color=colour)
            axis.annotate(name, (row["bytes"], row["evaluation text"]["metrics"][metric]), fontsize=7,
                          xytext=(4, 4), textcoords="offset points")
        axis.axhline({"mean_cosine": 0.95, "p01_cosine": 0.85}[metric], color="grey", linestyle="--", linewidth=0.8)
        axis.set_xlabel("bytes vs fp32")
        axis.set_ylabel(metric.replace("_", " "))
        axis.grid(alpha=0.3)
    figure.suptitle("all-MiniLM-L6-v2: the default export (green) against onnxruntime's quantiser alone (orange); "
                    "circles: evaluation text, squares: docstrings, triangles: UI messages", fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


if __name__ == "__main__":
    if sys.argv[1:] == ["--render"]:
        write(json.loads((RESULTS / "carry.json").read_text()))
    else:
        main()
