"""``edgefold report``: merge bench and validate JSON from any machines into Markdown and plots."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from edgefold.runtime.outputs import check_folder_output, holds_only, staged_folder

REPORT = "report.md"


def add_parser(commands) -> None:
    report = commands.add_parser("report", help="merge bench and validate JSON into Markdown and plots")
    report.add_argument("results", nargs="+", help="bench-*.json and validate-*.json, from any machines")
    report.add_argument("-o", "--output", type=Path, required=True, help="folder for report.md and the plots")
    report.add_argument("--overwrite", action="store_true", help="replace a report folder edgefold wrote")
    report.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from edgefold.runtime.report import load_results

    check_output(args.output, args.overwrite)
    load_results(args.results)  # every input checked before anything is written
    write(args.results, args.output)
    return 0


def check_output(folder: Path, overwrite: bool) -> None:
    """The report may go to ``folder``, and matplotlib is there to draw it: checked before any work."""
    from edgefold.runtime.report import check_plotting

    check_folder_output(folder, overwrite, _is_report_folder, REPORT)
    check_plotting()


def write(results: list[str | Path], folder: Path) -> None:
    from edgefold.runtime.report import write_report

    with staged_folder(folder) as staging:  # a replaced report keeps no stale plot
        write_report(results, staging, progress=True)
    print(f"wrote {folder / REPORT}")


def _is_report_folder(folder: Path) -> bool:
    """Only what ``edgefold report`` writes: report.md (ours, by its first line) and the plots it shows."""
    report = folder / REPORT
    if not report.is_file() or report.is_symlink():
        return False
    text = report.read_text(encoding="utf-8", errors="replace")
    plots = re.findall(r"^!\[[^\]]*\]\(([\w.-]+\.png)\)$", text, flags=re.M)
    return text.startswith("# edgefold report") and holds_only(folder, [REPORT, *plots])
