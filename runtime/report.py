"""``edgefold report``: merge bench and validate JSON (from any machines) into Markdown and PNG plots."""

from __future__ import annotations

from pathlib import Path

from .bench import SCHEMA as BENCH
from .bench import SCHEMA_VERSION as BENCH_VERSION
from .errors import EdgefoldError
from .jsonfile import read_json
from .validate import SCHEMA as VALIDATE
from .validate import SCHEMA_VERSION as VALIDATE_VERSION

_HEADLINE = ("mean_cosine", "label_agreement", "perplexity_ratio")  # the quality axis, by task
_VERSIONS = {BENCH: BENCH_VERSION, VALIDATE: VALIDATE_VERSION}

# What the report reads of each document: {key: shape} an object ("key?" optional, "*" any key), [shape] a
# list, (description, test) a value.
_TEXT = ("a string", lambda v: isinstance(v, str))
_FLAG = ("true or false", lambda v: isinstance(v, bool))
_COUNT = ("a whole number >= 0", lambda v: isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2**63)
_NUMBER = ("a number", lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and abs(v) < 1e300)
_NUMBER_OR_NULL = ("a number or null", lambda v: v is None or _NUMBER[1](v))
_MACHINE = {"cpu": _TEXT, "architecture": _TEXT, "emulated?": _FLAG}
_SHAPES = {
    BENCH: {"machine": _MACHINE, "models": {"*": {"bytes": {"*": _COUNT}}},
            "results": [{"threads": _COUNT, "batch": _COUNT, "seq_length": _COUNT,
                         "models": {"*": {"latency_ms": {"p50": _NUMBER}, "peak_rss_bytes": _NUMBER}}}]},
    VALIDATE: {"machine": _MACHINE, "candidate": {"name": _TEXT, "bytes": {"*": _COUNT}},
               "reference": {"name": _TEXT}, "metrics": {"*": _NUMBER_OR_NULL}, "passed": _FLAG},
}


def load_results(paths: list[str | Path]) -> tuple[list[dict], list[dict]]:
    """Bench and validate documents, each checked to hold what the report reads: one line naming any that fails."""
    benches, validations = [], []
    for path in paths:
        document = read_json(Path(path), strict=True)
        kind = document.get("schema") if isinstance(document, dict) else None
        if not isinstance(kind, str) or kind not in _SHAPES:
            raise EdgefoldError(f"{path} is neither an edgefold bench nor a validate result")
        version = document.get("schema_version")
        if not (_COUNT[1](version) and 1 <= version <= _VERSIONS[kind]):
            raise EdgefoldError(f"{path} is {kind} version {version!r}; this edgefold reads up to version "
                                f"{_VERSIONS[kind]}")
        problem = _problem(document, _SHAPES[kind], "")
        if problem is None and kind == BENCH:
            problem = next((f"results[{i}].models.{name} is not one of its models" for i, row in
                            enumerate(document["results"]) for name in row["models"] if name not in document["models"]),
                           None)
        if problem:
            raise EdgefoldError(f"{path} is not a well-formed {kind} result: {problem}")
        (benches if kind == BENCH else validations).append(document)
    return benches, validations


def _problem(value: object, shape: object, where: str) -> str | None:
    """What is wrong with ``value`` against ``shape`` (None: nothing), naming where."""
    if isinstance(shape, tuple):
        return None if shape[1](value) else f"{where or 'the document'} must be {shape[0]}, not {value!r:.40}"
    if isinstance(shape, list):
        if not isinstance(value, list):
            return f"{where} must be a list"
        return next((p for i, item in enumerate(value) if (p := _problem(item, shape[0], f"{where}[{i}]"))), None)
    if not isinstance(value, dict):
        return f"{where or 'the document'} must be an object"
    if "*" in shape:
        return next((p for key, item in value.items() if (p := _problem(item, shape["*"], f"{where}.{key}"))), None)
    for key, item_shape in shape.items():
        name = key.rstrip("?")
        if name not in value:
            if key.endswith("?"):
                continue
            return f"{where}.{name} is missing".lstrip(".")
        problem = _problem(value[name], item_shape, f"{where}.{name}".lstrip("."))
        if problem:
            return problem
    return None


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
        metric = next((k for k in _HEADLINE if k in report["metrics"]), None)
        points.append({"model": report["candidate"]["name"], "reference": report["reference"]["name"],
                       "bytes": sum(report["candidate"]["bytes"].values()), "metric": metric or "-",
                       "value": report["metrics"].get(metric), "passed": report["passed"]})
    return points


def write_report(paths: list[str | Path], output: str | Path) -> Path:
    """Write ``report.md`` with ``quality.png`` and latency plots into ``output``; returns the Markdown file."""
    benches, validations = load_results(paths)
    _pyplot()  # before anything is written
    latency, quality = _latency_points(benches), _quality_points(validations)
    folder = Path(output)
    folder.mkdir(parents=True, exist_ok=True)
    lines = ["# edgefold report", ""]
    if quality:
        lines += ["## Accuracy", "", "| model | reference | bytes | metric | value | gates |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {_cell(q['model'])} | {_cell(q['reference'])} | {q['bytes']:,} | {q['metric']} | "
                  f"{'n/a' if q['value'] is None else format(q['value'], '.4f')} | "
                  f"{'pass' if q['passed'] else 'FAIL'} |" for q in quality]
        lines += ["", "![accuracy against bytes](quality.png)", ""]
    if latency:
        lines += ["## Latency and memory", "", "Emulated timings (qemu) are kept off the device-speed plot.", "",
                  "| machine | model | bytes | threads | batch | seq | p50 ms | peak RSS MB |",
                  "|---|---|---|---|---|---|---|---|"]
        lines += [f"| {_cell(p['machine'])} | {_cell(p['model'])} | {p['bytes']:,} | {p['threads']} | {p['batch']} | "
                  f"{p['seq']} | {p['p50_ms']:.2f} | {p['rss_mb']:.0f} |" for p in latency]
        lines += [""]
    plots = _plot(quality, latency, folder)
    lines += [f"![{name}]({name})" for name in plots if name != "quality.png"]
    path = folder / "report.md"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _cell(text: str) -> str:
    """Text for a Markdown table cell: a | or a line break in a name would break the table."""
    return " ".join(text.split()).replace("|", "\\|")


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise EdgefoldError('edgefold report draws with matplotlib: pip install "edgefold[report]"') from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _plot(quality: list[dict], latency: list[dict], folder: Path) -> list[str]:
    plt = _pyplot()
    written = []
    quality = [q for q in quality if q["value"] is not None]
    if quality:
        figure, axis = plt.subplots(figsize=(6.5, 4.2))
        for q in quality:
            axis.scatter(q["bytes"] / 2**20, q["value"], color="tab:green" if q["passed"] else "tab:red")
            axis.annotate(q["model"], (q["bytes"] / 2**20, q["value"]), fontsize=7, parse_math=False)
        axis.set(xlabel="MB on disk", ylabel=quality[0]["metric"], title="accuracy against bytes")
        axis.grid(alpha=0.3)
        figure.tight_layout()
        figure.savefig(folder / "quality.png", dpi=110)
        plt.close(figure)
        written.append("quality.png")
    # never one axis for emulated and real timings
    for emulated, name in ((False, "latency.png"), (True, "latency-emulated.png")):
        points = [p for p in latency if bool(p["emulated"]) == emulated]
        if not points:
            continue
        figure, axis = plt.subplots(figsize=(6.5, 4.2))
        for machine in dict.fromkeys(p["machine"] for p in points):
            mine = [p for p in points if p["machine"] == machine]
            label = machine.replace("$", r"\$")  # names are text, not mathtext
            axis.scatter([p["bytes"] / 2**20 for p in mine], [p["p50_ms"] for p in mine], label=label)
            for p in mine:
                axis.annotate(f"{p['model']} t{p['threads']}", (p["bytes"] / 2**20, p["p50_ms"]), fontsize=7,
                              parse_math=False)
        axis.set(xlabel="MB on disk", ylabel="p50 latency, ms",
                 title="latency against bytes" + (" (EMULATED, not device speed)" if emulated else ""))
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
        figure.tight_layout()
        figure.savefig(folder / name, dpi=110)
        plt.close(figure)
        written.append(name)
    return written
