"""``edgefold report``: merge bench and validate JSON from any machines into Markdown and plots."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..outputs import check_folder_output, staged_folder

REPORT = "report.md"


def add_parser(commands) -> None:
    report = commands.add_parser("report", help="merge bench and validate JSON into Markdown and plots")
    report.add_argument("results", nargs="+", help="bench-*.json and validate-*.json, from any machines")
    report.add_argument("-o", "--output", type=Path, required=True, help="folder for report.md and the plots")
    report.add_argument("--overwrite", action="store_true", help="replace a report folder edgefold wrote")
    report.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..report import load_results, write_report

    check_folder_output(args.output, args.overwrite, _is_report_folder, REPORT)
    load_results(args.results)  # every input checked before anything is written
    with staged_folder(args.output) as staging:  # a replaced report keeps no stale plot
        write_report(args.results, staging)
    print(f"wrote {args.output / REPORT}")
    return 0


def _is_report_folder(folder: Path) -> bool:
    """Only what ``edgefold report`` writes: report.md (ours, by its first line) and PNG plots."""
    files = list(folder.iterdir())
    report = folder / REPORT
    return (report.is_file() and report.read_text(encoding="utf-8", errors="replace").startswith("# edgefold report")
            and all(f.is_file() and (f.name == REPORT or f.suffix == ".png") for f in files))
