"""The frontier report an objective-driven export leaves in its folder: every verified candidate (bytes, measured
latency, metrics on the selection split, gates), as JSON, a Markdown table and a plot of metric against bytes
and against latency with int8 alone, int4 alone and the chosen model marked."""

from __future__ import annotations

import io
import json
from pathlib import Path

FRONTIER_JSON, FRONTIER_MD, FRONTIER_PNG = "frontier.json", "frontier.md", "frontier.png"


def write_report(folder: Path, summary: dict) -> list[str]:
    """Write the three files into ``folder``; returns their names."""
    (folder / FRONTIER_JSON).write_text(json.dumps(summary, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    (folder / FRONTIER_MD).write_text(markdown(summary), encoding="utf-8")
    (folder / FRONTIER_PNG).write_bytes(plot(summary))
    return [FRONTIER_JSON, FRONTIER_MD, FRONTIER_PNG]


def markdown(summary: dict) -> str:
    metrics = [gate["metric"] for gate in summary["gates"]]
    domain_metrics = next(([g["metric"] for g in row["domain"]["gates"]] for row in summary["candidates"]
                           if row.get("domain")), [])
    headers = metrics + [f"{metric}, 2nd domain" for metric in domain_metrics]
    reference = summary["reference"]
    lines = [
        f"# Search: objective {summary['objective']}, {summary['mode']} search",
        "",
        f"Gates: {', '.join(g['text'] for g in summary['gates'])}, on the selection split "
        f"({summary['splits']['selection']} items of {summary['data']}). Bytes: on disk; latency: measured median, "
        f"batch 1 x {summary['latency']['tokens']} tokens, {summary['latency']['threads']} thread(s); predicted: "
        "from the sensitivities and the cost model. The search accepts a candidate only if every gate's one-sided "
        f"{summary['confidence']:.0%} bootstrap bound clears it too (a gate without one: by "
        f"{summary['selection_margin']:g}). The original (fp32): "
        f"{reference['bytes']:,} bytes, {reference['latency_ms']:.2f} ms.",
        "",
        "| candidate | plan | low-bit weights | bytes | vs fp32 | ms | vs fp32 | predicted loss | " + " | ".join(headers)
        + " | passes |",
        "|---|---|---|---|---|---|---|---|" + "---|" * len(headers) + "---|",
    ]
    for row in summary["candidates"]:
        on_domain = row["domain"]["metrics"] if row.get("domain") else {}
        values = [_number(row["metrics"].get(m), ".4f") for m in metrics] + \
            [_number(on_domain.get(m), ".4f") for m in domain_metrics]
        mark = " **(chosen)**" if row["label"] == summary["chosen"] else ""
        lines.append(f"| {row['label']}{mark} | {row['plan']} | {row.get('algorithm', 'rtn')} | "
                     f"{_number(row['bytes'], ',')} | "
                     f"{_number(_ratio(row['bytes'], reference['bytes']), '.3f')} | {_number(row['latency_ms'], '.2f')} "
                     f"| {_number(_ratio(row['latency_ms'], reference['latency_ms']), '.2f')} | "
                     f"{_number(row['predicted_loss'], '.4f')} | " + " | ".join(values) + f" | {_passes(row)} |")
    check, domain = summary.get("check"), summary.get("second_domain")
    if check:
        lines += ["", f"Check split ({summary['splits']['check']} items, never used by the search): "
                  + _verdicts(check["gates"])]
    if domain:
        lines += ["", f"Second domain, {domain['check']['data']['source']} ({domain['check']['data']['items']} items, "
                      "never used by the search): " + _verdicts(domain["check"]["gates"])]
    return "\n".join(lines) + "\n"


def _verdicts(gates: list[dict]) -> str:
    return ", ".join(f"{g['metric']} {_number(g['value'], '.4f')} ({'pass' if g['passed'] else 'FAIL'})" for g in gates)


def plot(summary: dict) -> bytes:
    """PNG: the first gate's metric against bytes and against measured latency."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    gate = summary["gates"][0]
    rows = [r for r in summary["candidates"] if r["metrics"].get(gate["metric"]) is not None]
    figure, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for axis, key, unit in ((axes[0], "bytes", "MB on disk"), (axes[1], "latency_ms", "ms, batch 1 x 128")):
        for row in rows:
            if row.get(key) is None:
                continue
            x = row[key] / 1e6 if key == "bytes" else row[key]
            style = _style(row, summary["chosen"])
            axis.scatter([x], [row["metrics"][gate["metric"]]], **style)
            if row["kind"] != "path" or row["label"] == summary["chosen"]:
                axis.annotate(row["label"], (x, row["metrics"][gate["metric"]]), fontsize=7,
                              xytext=(4, 4), textcoords="offset points")
        axis.axhline(gate["threshold"], color="grey", linestyle="--", linewidth=0.8)
        axis.set_xlabel(unit)
        axis.set_ylabel(f"{gate['metric']} (selection split)")
        axis.grid(alpha=0.3)
    figure.suptitle(f"edgefold search, objective {summary['objective']}: verified candidates "
                    "(filled: passes every gate)", fontsize=10)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    plt.close(figure)
    return buffer.getvalue()


def _style(row: dict, chosen: str) -> dict:
    color = {"path": "tab:blue", "baseline": "tab:orange"}[row["kind"]]
    if row["label"] == chosen:
        return {"marker": "*", "s": 160, "color": "tab:green", "zorder": 3}
    return {"marker": "o", "s": 36, "color": color, "facecolors": color if row["passed"] else "none",
            "edgecolors": color}


def _passes(row: dict) -> str:
    if row.get("error"):
        return f"no: {row['error'][:60]}"
    if not row["passed"]:
        domain = row["domain"]["gates"] if row.get("domain") else []
        return "no: " + ", ".join([g["metric"] for g in row["gates"] if not g["passed"]]
                                  + [f"{g['metric']} (2nd domain)" for g in domain if not g["passed"]])
    return "yes" if row["accepted"] else "yes, but not at the confidence asked"


def _ratio(value: float | None, reference: float) -> float | None:
    return None if value is None or not reference else value / reference


def _number(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)
