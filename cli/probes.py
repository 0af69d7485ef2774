"""``edgefold probes``: the operator graphs a latency table for one model needs, to be timed on the device."""

from __future__ import annotations

import argparse
from pathlib import Path

from edgefold.runtime.errors import EdgefoldError
from edgefold.runtime.jsonfile import read_json_object
from edgefold.runtime.optable import INDEX, PROBES_SCHEMA
from edgefold.runtime.outputs import check_folder_output, holds_only, staged_folder
from .export import EXPORT_EXTRA_HINT


def add_parser(commands) -> None:
    probes = commands.add_parser(
        "probes", help="write the operator probes a latency table for a model needs (time them on the device)",
        description="Write one small ONNX graph per operator shape and precision that a goal-driven export of "
                    "MODEL may use. On the device: edgefold bench --op-table DIR -o table.json; then here: "
                    "edgefold export MODEL OUT --objective latency --latency-table table.json.")
    probes.add_argument("model", help="local model folder, Hugging Face Hub id, or a bundled model name")
    probes.add_argument("output_dir", type=Path)
    probes.add_argument("--task", default="auto")
    probes.add_argument("--search", choices=("quick", "full"), default="quick",
                        help="full: also the factors of Linears at the full search's ranks")
    probes.add_argument("--overwrite", action="store_true", help="replace OUTPUT_DIR if edgefold wrote probes there")
    probes.add_argument("--trust-remote-code", action="store_true")
    probes.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    try:
        from edgefold.exporter.graph.quantize import PRECISIONS
        from edgefold.exporter.search.latency import write_probes
        from edgefold.exporter.search.search import LATENCY_TOKENS
        from edgefold.exporter.search.sensitivity import probe_shapes
        from edgefold.exporter.source.loading import inspect_model, load_model
    except ImportError as error:
        raise EdgefoldError(f"{EXPORT_EXTRA_HINT} ({error})") from None
    check_folder_output(args.output_dir, args.overwrite, _only_probes, INDEX)
    source = inspect_model(args.model, args.task, args.trust_remote_code)
    shapes = probe_shapes(load_model(source, args.trust_remote_code), args.search == "full")
    with staged_folder(args.output_dir) as staging:
        write_probes(staging, shapes, PRECISIONS, tokens=LATENCY_TOKENS)
    print(f"wrote {len(shapes) * len(PRECISIONS)} probes ({len(shapes)} operator shapes x {', '.join(PRECISIONS)}) "
          f"to {args.output_dir}; on the device: edgefold bench --op-table {args.output_dir} -o table.json")
    return 0


def _only_probes(folder: Path) -> bool:
    """A probe folder holding nothing but its index and the graphs the index lists."""
    try:
        document = read_json_object(folder / INDEX, strict=True)
    except EdgefoldError:
        return False
    probes = document.get("probes") if document.get("schema") == PROBES_SCHEMA else None
    if not isinstance(probes, list) or not all(isinstance(p, dict) and isinstance(p.get("file"), str) for p in probes):
        return False
    return holds_only(folder, [INDEX, *(probe["file"] for probe in probes)])
