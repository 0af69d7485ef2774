"""``edgefold validate``: gate a candidate folder on accuracy against a reference; exit 1 when a gate fails."""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from edgefold.runtime.errors import EdgefoldError
from edgefold.runtime.outputs import check_json_output, write_json
from . import args as flags
from . import devices
from .export import EXPORT_EXTRA_HINT


def add_parser(commands) -> None:
    validate = commands.add_parser("validate", help="gate a candidate on accuracy against a reference",
                                   description="Compare a candidate folder with a reference folder on data; "
                                               "exit 1 if any gate fails.")
    validate.add_argument("candidate")
    validate.add_argument("--reference", required=True,
                          help="an exported folder, or (with edgefold[export]) the original Hugging Face model")
    validate.add_argument("--data", help="a .txt (one item per line), .jsonl or .csv file; default: the "
                                         "shipped evaluation text")
    validate.add_argument("--limit", type=flags.positive, metavar="N", help="only the first N items (a quick check)")
    validate.add_argument("--text-column", default="text")
    validate.add_argument("--label-column", help="gold labels (classification): adds accuracy and F1")
    validate.add_argument("--query-column", help="with --positive-column: retrieval recall@1 and MRR")
    validate.add_argument("--positive-column")
    validate.add_argument("--gate", action="append", default=[], metavar="METRIC>=VALUE",
                          help="repeatable, e.g. mean_cosine>=0.98 or accuracy_drop<=0.01 (default: a gate "
                               "file, else per-task defaults)")
    validate.add_argument("--gates", metavar="FILE", help='JSON {"gates": [...]} (default: edgefold-gates.json '
                                                          "in the candidate folder, if present)")
    validate.add_argument("--confidence", type=flags.confidence, metavar="LEVEL",
                          help="a gate passes only where its one-sided bootstrap bound at LEVEL (e.g. 0.95) clears "
                               "it too, not only its value on this text (default: the value decides; every gate's "
                               "95%% bound is reported either way)")
    validate.add_argument("-o", "--output", type=Path, help="JSON report (default: validate-<candidate>.json); with "
                                                            "--on, the folder for validate-<candidate>@<device>.json")
    validate.add_argument("--overwrite", action="store_true", help="replace the JSON report if edgefold wrote it")
    flags.add_no_verify(validate)
    devices.add_flags(validate)
    validate.set_defaults(run=run, actions=validate._actions)


def run(args: argparse.Namespace) -> int:
    from edgefold.runtime.validate import SCHEMA, failures, gate_line, validate

    devices.check(args)
    if args.on:
        return _on_devices(args)
    output = args.output or Path(f"validate-{Path(args.candidate).resolve().name}.json")
    check_json_output(output, SCHEMA, args.overwrite)
    data = _checked_data(args)
    with _reference_folder(args.reference) as reference:
        report = validate(args.candidate, reference, data, args.gate, args.gates, verify=not args.no_verify,
                          confidence=args.confidence)
    write_json(output, report)
    print(f"{report['candidate']['name']} against {report['reference']['name']} ({report['task']}) on "
          f"{data.source}, {len(data.texts)} items")
    for name, value in report["metrics"].items():
        print(f"  {name:24} {value:.4f}" if isinstance(value, float) else f"  {name:24} {value}")
    for gate in report["gates"]:
        print(f"  gate {gate_line(gate)}")
    print(f"wrote {output}")
    if report["passed"]:
        print(f"PASS: {report['candidate']['name']} may ship ({len(report['gates'])} gate(s) met)")
        return 0
    for line in failures(report):
        print(f"FAIL: {line}", file=sys.stderr)
    return 1


def _on_devices(args: argparse.Namespace) -> int:
    """The same check on each device: the candidate and reference go over packed, with the data and gate files."""
    from edgefold.runtime.remote import RemoteJob

    outputs = devices.check_outputs(args, f"validate-{Path(args.candidate).resolve().name}")
    _checked_data(args)
    files = {f"data{Path(args.data).suffix.lower()}": Path(args.data)} if args.data else {}
    files.update({"gates.json": Path(args.gates)} if args.gates else {})
    with _reference_folder(args.reference) as reference:
        names = devices.device_names([args.candidate, reference])
        arguments = [names[0], "--reference", names[1],
                     *devices.forwarded(args, args.actions, _FORWARDED),
                     *(["--data", next(iter(files))] if args.data else []),
                     *(["--gates", "gates.json"] if args.gates else [])]
        job = RemoteJob("validate", arguments, bundles=dict(zip(names, (Path(args.candidate), Path(reference)))),
                        files=files, wheelhouse=args.wheelhouse, accept=(0, 1))
        outcomes = devices.run(args, job, outputs)
    failed_gates = [o.device.name for o in outcomes if o.ok and not o.result.get("passed")]
    if failed_gates:
        print(f"FAIL: a gate failed on {', '.join(failed_gates)}", file=sys.stderr)
    return devices.exit_code(outcomes) or (1 if failed_gates else 0)


def _checked_data(args: argparse.Namespace):
    """The items to validate on, with the candidate, gates and columns checked against them: before a reference
    is exported for it, and before any device is reached."""
    from edgefold.runtime.dataset import load_data
    from edgefold.runtime.validate import check_inputs

    data = load_data(args.data, args.text_column, args.label_column, args.query_column, args.positive_column)
    data = data.first(args.limit) if args.limit else data
    check_inputs(args.candidate, data, args.gate, args.gates, verify=not args.no_verify)
    return data


_FORWARDED = ("limit", "text_column", "label_column", "query_column", "positive_column", "gate", "confidence")


@contextlib.contextmanager
def _reference_folder(reference: str) -> Iterator[str]:
    """An exported folder as it is; a Hugging Face model (folder or hub id) exported unchanged, for the run."""
    if (Path(reference) / "model.onnx").is_file():
        yield reference
        return
    try:
        from edgefold import exporter
        from edgefold.exporter.source.loading import inspect_model
    except ImportError:
        raise EdgefoldError(f"{reference} is not an exported folder; to use a Hugging Face model as the "
                            f"reference, {EXPORT_EXTRA_HINT}") from None
    inspect_model(reference)  # a reference that is no model is refused before the progress line
    with tempfile.TemporaryDirectory(prefix="edgefold-reference-") as tmp:
        print(f"exporting the reference {reference} unchanged", file=sys.stderr)
        exporter.export(reference, Path(tmp) / "reference", exporter.CompressionConfig(method="none"),
                        progress=False)
        yield str(Path(tmp) / "reference")
