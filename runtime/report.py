"""``edgefold report``: merge bench and validate JSON (from any machines) into Markdown and PNG plots."""

from __future__ import annotations

import json
from pathlib import Path

from .bench import SCHEMA as BENCH
from .errors import EdgefoldError
from .validate import SCHEMA as VALIDATE

_HEADLINE = ("mean_cosine", "label_agreement", "perplexity_ratio")  # the quality axis, by task


def load_results(paths: list[str | Path]) -> tuple[list[dict], list[dict]]:
    benches, validations = [], []
    for path in paths:
        try:
            document = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as error:
            raise EdgefoldError(f"cannot read {path}: {error}") from None
        kind = document.get("schema") if isinstance(document, dict) else None
        if kind == BENCH:
            benches.append(document)
        elif kind == VALIDATE:
            validations.append(document)
        else:
            raise EdgefoldError(f"{path} is neither an edgefold bench nor a validate result")
    return benches, validations


def _machine(document: dict) -> str:
    m = document["machine"]
    label = f"{m['architecture']} {m['cpu']}"
    return f"{label} (EMULATED)" if m.get("emulated") else label


def _latency_points(benches: list[dict]) -> list[dict]:
    points = []
    for document in benches:
        for row in document["results"]:
            for name, m in row["models"].items():
                points.append({"machine": _machine(document), "emulated": document["machine"].get("emulated"),
                               "model": name, "bytes": sum(document["models"][name]["bytes"].values()),
                               "threads": row["threads"], "batch": row["batch"], "seq": row["seq_length"],
                               "p50_ms": m["latency_ms"]["p50"], "rss_mb": m["peak_rss_bytes"] / 2**20})
    return points


def _quality_points(validations: list[dict]) -> list[dict]:
    points = []
    for report in validations:
        metric = next(k for k in _HEADLINE if k in report["metrics"])
        points.append({"model": report["candidate"]["name"], "reference": report["reference"]["name"],
                       "bytes": sum(report["candidate"]["bytes"].values()), "metric": metric,
                       "value": report["metrics"][metric], "passed": report["passed"]})
    return points


def write_report(paths: list[str | Path], output: str | Path) -> Path:
    """Write ``report.md`` with ``quality.png`` and latency plots into ``output``; returns the Markdown file."""
    benches, validations = load_results(paths)
    latency, quality = _latency_points(benches), _quality_points(validations)
    folder = Path(output)
    folder.mkdir(parents=True, exist_ok=True)
    lines = ["# edgefold report", ""]
    if quality:
        lines += ["## Accuracy", "", "| model | reference | bytes | metric | value | gates |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {q['model']} | {q['reference']} | {q['bytes']:,} | {q['metric']} | {q['value']:.4f} | "
                  f"{'pass' if q['passed'] else 'FAIL'} |" for q in quality]
        lines += ["", "![accuracy against bytes](quality.png)", ""]
    if latency:
        lines += ["## Latency and memory", "", "Emulated timings (qemu) are kept off the device-speed plot.", "",
                  "| machine | model | bytes | threads | batch | seq | p50 ms | peak RSS MB |",
                  "|---|---|---|---|---|---|---|---|"]
        lines += [f"| {p['machine']} | {p['model']} | {p['bytes']:,} | {p['threads']} | {p['batch']} | {p['seq']} | "
                  f"{p['p50_ms']:.2f} | {p['rss_mb']:.0f} |" for p in latency]
        lines += [""]
    plots = _plot(quality, latency, folder)
    lines += [f"![{name}]({name})" for name in plots if name != "quality.png"]
    path = folder / "report.md"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _plot(quality: list[dict], latency: list[dict], folder: Path) -> list[str]:
    try:
        import matplotlib
    except ImportError:
        raise EdgefoldError('edgefold report draws with matplotlib: pip install "edgefold[report]"') from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    if quality:
        figure, axis = plt.subplots(figsize=(6.5, 4.2))
        for q in quality:
            axis.scatter(q["bytes"] / 2**20, q["value"], color="tab:green" if q["passed"] else "tab:red")
            axis.annotate(q["model"], (q["bytes"] / 2**20, q["value"]), fontsize=7)
        axis.set(xlabel="MB on disk", ylabel=quality[0]["metric"], title="accuracy against bytes")
        axis.grid(alpha=0.3)
        figure.tight_layout()
        figure.savefig(folder / "quality.png", dpi=110)
        written.append("quality.png")
    # never one axis for emulated and real timings
    for emulated, name in ((False, "latency.png"), (True, "latency-emulated.png")):
        points = [p for p in latency if bool(p["emulated"]) == emulated]
        if not points:
            continue
        figure, axis = plt.subplots(figsize=(6.5, 4.2))
        for machine in dict.fromkeys(p["machine"] for p in points):
            mine = [p for p in points if p["machine"] == machine]
            axis.scatter([p["bytes"] / 2**20 for p in mine], [p["p50_ms"] for p in mine], label=machine)
            for p in mine:
                axis.annotate(f"{p['model']} t{p['threads']}", (p["bytes"] / 2**20, p["p50_ms"]), fontsize=7)
        axis.set(xlabel="MB on disk", ylabel="p50 latency, ms",
                 title="latency against bytes" + (" (EMULATED, not device speed)" if emulated else ""))
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
        figure.tight_layout()
        figure.savefig(folder / name, dpi=110)
        written.append(name)
    return written
