"""``edgefold report``: merge bench and validate JSON (from any machines) into Markdown and PNG plots."""

from __future__ import annotations

import sys
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
_NAME = ("a string with a visible character", lambda v: isinstance(v, str) and bool(v.strip()))
_COUNT_OR_NULL = ("a whole number >= 0 or null", lambda v: v is None or _COUNT[1](v))
# Fields machine_context added over time are optional: older documents lack them and still read.
_MACHINE = {"cpu": _TEXT, "architecture": _TEXT, "emulated?": _FLAG, "hostname?": _TEXT, "cores?": _COUNT_OR_NULL,
            "os?": _TEXT, "python?": _TEXT, "onnxruntime?": _TEXT, "features?": [_TEXT]}
# Added on the host to a result fetched from a device (``--on NAME=ssh://...``); local runs have none.
_DEVICE = {"name": _NAME, "address": _TEXT}
_SHAPES = {
    BENCH: {"machine": _MACHINE, "device?": _DEVICE, "models": {"*": {"bytes": {"*": _COUNT}}},
            "results": [{"threads": _COUNT, "batch": _COUNT, "seq_length": _COUNT,
                         "models": {"*": {"latency_ms": {"p50": _NUMBER}, "peak_rss_bytes": _NUMBER}}}]},
    VALIDATE: {"machine": _MACHINE, "device?": _DEVICE, "candidate": {"name": _TEXT, "bytes": {"*": _COUNT}},
               "reference": {"name": _TEXT}, "metrics": {"*": _NUMBER_OR_NULL}, "passed": _FLAG},
}
# The Devices table: (column, machine key).
_DEVICE_COLUMNS = (("CPU", "cpu"), ("architecture", "architecture"), ("cores", "cores"), ("OS", "os"),
                   ("Python", "python"), ("onnxruntime", "onnxruntime"))


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


def device_label(document: dict) -> str:
    """Which device a document came from: the name given to ``--on``, else the machine's hostname, else (older
    documents) its architecture and CPU."""
    if "device" in document:
        return document["device"]["name"]
    machine = document["machine"]
    return machine.get("hostname", "").strip() or f"{machine['architecture']} {machine['cpu']}"


def _shown(point: dict) -> str:
    """A device as tables and legends show it: emulated timings are never mistaken for the device's."""
    return f"{point['device']} (EMULATED)" if point["emulated"] else point["device"]


def _latency_points(benches: list[dict]) -> list[dict]:
    points = []
    for document in benches:
        for row in document["results"]:
            for name, m in row["models"].items():
                points.append({"device": device_label(document), "emulated": bool(document["machine"].get("emulated")),
                               "model": name, "bytes": sum(document["models"][name]["bytes"].values()),
                               "threads": row["threads"], "batch": row["batch"], "seq": row["seq_length"],
                               "p50_ms": m["latency_ms"]["p50"], "rss_mb": m["peak_rss_bytes"] / 2**20})
    return points


def _quality_points(validations: list[dict]) -> list[dict]:
    points = []
    for report in validations:
        metric = next((k for k in _HEADLINE if k in report["metrics"]), None)
        points.append({"device": device_label(report), "emulated": bool(report["machine"].get("emulated")),
                       "model": report["candidate"]["name"], "reference": report["reference"]["name"],
                       "bytes": sum(report["candidate"]["bytes"].values()), "metric": metric or "-",
                       "value": report["metrics"].get(metric), "passed": report["passed"]})
    return points


#: Points named on a scatter plot, bars drawn side by side: past these a plot is unreadable (and takes minutes to
#: draw: 20,000 labels did), so the tables carry the names.
_LABELLED_POINTS = 40
_MAX_BAR_GROUPS = 60


def write_report(paths: list[str | Path], output: str | Path, progress: bool = False) -> Path:
    """Write ``report.md`` and its PNG plots into ``output``; returns the Markdown file. ``progress``: each step
    on stderr.

    Always ``quality.png`` and ``latency.png`` / ``latency-emulated.png`` (scatter against bytes) for what the
    documents hold; with two devices or more also the side-by-side bar charts of :func:`_bar_charts`.
    """
    benches, validations = load_results(paths)
    _pyplot()  # before anything is written
    latency, quality = _latency_points(benches), _quality_points(validations)
    say = (lambda message: print(f"edgefold report: {message}", file=sys.stderr, flush=True)) if progress else (
        lambda message: None)
    say(f"{len(paths)} files read: {len(latency)} timed configurations, {len(quality)} validations; drawing")
    folder = Path(output)
    folder.mkdir(parents=True, exist_ok=True)
    plots = _plot(quality, latency, folder)
    if len({device_label(d) for d in benches + validations}) >= 2:  # one device: nothing to set side by side
        charts = {name: chart for name, chart in _bar_charts(latency, quality).items()
                  if max(len(groups) for _, groups in chart[1]) <= _MAX_BAR_GROUPS}
        plots += _draw_bar_charts(charts, folder)
    say(f"drew {', '.join(plots) or 'no plots'}; writing the tables")
    lines = ["# edgefold report", "", *_devices_section(benches + validations)]
    if quality:
        lines += [*_accuracy_section(quality), *_images(plots, _QUALITY_PLOTS)]
    if latency:
        lines += [*_latency_section(latency), *_images(plots, _LATENCY_PLOTS)]
    path = folder / "report.md"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


_QUALITY_PLOTS = ("quality.png", "accuracy.png")
_LATENCY_PLOTS = ("latency.png", "latency-emulated.png", "latency-p50.png", "latency-p50-emulated.png", "peak-rss.png")


def _images(written: list[str], names: tuple[str, ...]) -> list[str]:
    alt = {"quality.png": "accuracy against bytes"}
    return [f"![{alt.get(name, name.removesuffix('.png'))}]({name})" for name in names if name in written] + [""]


def _devices_section(documents: list[dict]) -> list[str]:
    """One row per device: what makes its numbers comparable (or not) with another's."""
    machines: dict[str, list[dict]] = {}
    for document in documents:
        machines.setdefault(device_label(document), []).append(document["machine"])
    lines = ["## Devices", "", "| device | " + " | ".join(c for c, _ in _DEVICE_COLUMNS) + " | emulated |",
             "|---" * (len(_DEVICE_COLUMNS) + 2) + "|"]
    for label, mine in machines.items():
        cells = [_distinct(m.get(key) for m in mine) for _, key in _DEVICE_COLUMNS]
        cells.append(_distinct("yes" if m.get("emulated") else "no" for m in mine))
        lines.append("| " + " | ".join(_cell(c) for c in (label, *cells)) + " |")
    return lines + [""]


def _distinct(values) -> str:
    """The values a device's documents give, each once (documents of one device may disagree); "-": none."""
    return ", ".join(dict.fromkeys(str(v) for v in values if v is not None and str(v).strip())) or "-"


def _accuracy_section(quality: list[dict]) -> list[str]:
    lines = ["## Accuracy", "", "| device | model | reference | bytes | metric | value | gates |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {_cell(_shown(q))} | {_cell(q['model'])} | {_cell(q['reference'])} | {q['bytes']:,} | "
              f"{q['metric']} | {'n/a' if q['value'] is None else format(q['value'], '.4f')} | "
              f"{'pass' if q['passed'] else 'FAIL'} |" for q in quality]
    return lines + [""]


def _latency_section(latency: list[dict]) -> list[str]:
    lines = ["## Latency and memory", "", "Emulated timings (qemu) are kept off the device-speed plots.", "",
             "| device | model | bytes | threads | batch | seq | p50 ms | peak RSS MB |",
             "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {_cell(_shown(p))} | {_cell(p['model'])} | {p['bytes']:,} | {p['threads']} | {p['batch']} | "
              f"{p['seq']} | {p['p50_ms']:.2f} | {p['rss_mb']:.0f} |" for p in latency]
    return lines + [""]


def _cell(text: str) -> str:
    """Text for a Markdown table cell: a | or a line break in a name would break the table."""
    return " ".join(text.split()).replace("|", "\\|")


def check_plotting() -> None:
    """matplotlib is installed: a report is refused before any work, not after it."""
    _pyplot()


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
        axis.scatter([q["bytes"] / 2**20 for q in quality], [q["value"] for q in quality],
                     color=["tab:green" if q["passed"] else "tab:red" for q in quality])
        for q in quality if len(quality) <= _LABELLED_POINTS else ():
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
        for device in dict.fromkeys(_shown(p) for p in points):
            mine = [p for p in points if _shown(p) == device]
            label = device.replace("$", r"\$")  # names are text, not mathtext
            axis.scatter([p["bytes"] / 2**20 for p in mine], [p["p50_ms"] for p in mine], label=label)
            for p in mine if len(points) <= _LABELLED_POINTS else ():
                axis.annotate(f"{p['model']} t{p['threads']}", (p["bytes"] / 2**20, p["p50_ms"]), fontsize=7,
                              parse_math=False)
        axis.set(xlabel="MB on disk", ylabel="p50 latency, ms",
                 title="latency against bytes" + (" (EMULATED, not device speed)" if emulated else ""))
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))  # "best" searches every point
        figure.tight_layout()
        figure.savefig(folder / name, dpi=110)
        plt.close(figure)
        written.append(name)
    return written


# A bar chart: a title and its panels, each a y label and {x group: {device: value}}.
Panels = list[tuple[str, dict[str, dict[str, float]]]]


def _bar_charts(latency: list[dict], quality: list[dict]) -> dict[str, tuple[str, Panels]]:
    """One chart per metric, devices side by side: {file name: (title, panels)}."""
    charts = {}
    # never one axis for emulated and real timings; memory and accuracy do not depend on the emulator's speed
    for emulated, name in ((False, "latency-p50.png"), (True, "latency-p50-emulated.png")):
        points = [p for p in latency if p["emulated"] == emulated]
        if points:
            title = "p50 latency by device" + (" (EMULATED, not device speed)" if emulated else "")
            charts[name] = (title, [("p50 latency, ms", _groups(points, _configuration, "p50_ms"))])
    if latency:
        charts["peak-rss.png"] = ("peak RSS by device", [("peak RSS, MB", _groups(latency, _configuration, "rss_mb"))])
    rated = [q for q in quality if q["value"] is not None]
    if rated:
        references = len({q["reference"] for q in rated}) > 1  # then a candidate is named with its reference
        group = (lambda q: f"{q['model']} vs {q['reference']}") if references else (lambda q: q["model"])
        charts["accuracy.png"] = ("accuracy by device", [(metric, _groups([q for q in rated if q["metric"] == metric],
                                                                          group, "value"))
                                                         for metric in dict.fromkeys(q["metric"] for q in rated)])
    return charts


def _configuration(point: dict) -> str:
    return f"{point['model']} t{point['threads']} b{point['batch']} s{point['seq']}"


def _groups(points: list[dict], group, key: str) -> dict[str, dict[str, float]]:
    groups: dict[str, dict[str, float]] = {}
    for point in points:
        # a configuration measured twice on one device: the bar shows the last document given, the tables all
        groups.setdefault(group(point), {})[_shown(point)] = point[key]
    return groups


def _draw_bar_charts(charts: dict[str, tuple[str, Panels]], folder: Path) -> list[str]:
    for name, (title, panels) in charts.items():
        _draw_bars(panels, title, folder / name)
    return list(charts)


def _draw_bars(panels: Panels, title: str, path: Path) -> None:
    """Grouped bars, one panel above another; every name drawn as plain text (no mathtext, no hidden "_" label)."""
    plt = _pyplot()
    widest = max(len(groups) * len({d for bars in groups.values() for d in bars}) for _, groups in panels)
    figure, axes = plt.subplots(len(panels), 1, figsize=(min(30.0, max(6.5, 2 + 0.45 * widest)), 4.2 * len(panels)),
                                squeeze=False)
    for axis, (ylabel, groups) in zip(axes[:, 0], panels):
        devices = list(dict.fromkeys(d for bars in groups.values() for d in bars))
        width = 0.8 / len(devices)
        handles = []
        for i, device in enumerate(devices):
            xs = [x - 0.4 + width * (i + 0.5) for x, bars in enumerate(groups.values()) if device in bars]
            handles.append(axis.bar(xs, [bars[device] for bars in groups.values() if device in bars], width))
        axis.set_xticks(range(len(groups)), list(groups), rotation=30, ha="right", fontsize=7, parse_math=False)
        axis.set_ylabel(ylabel, parse_math=False)
        axis.grid(axis="y", alpha=0.3)
        # explicit labels (matplotlib hides ones starting "_"), beside the axis so that no bar is covered
        legend = axis.legend(handles, devices, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
        for text in legend.get_texts():
            text.set_parse_math(False)
    axes[0, 0].set_title(title)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
