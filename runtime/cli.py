"""The ``edgefold`` command. It parses arguments and delegates; the work lives in the packages."""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
from pathlib import Path

from .errors import EdgefoldError

EXPORT_EXTRA_HINT = 'the exporter is not installed: pip install "edgefold[export]"'


def _ratio(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 1:  # also refuses nan
        raise argparse.ArgumentTypeError(f"must be greater than 1 (R = 5 keeps a fifth), got {text}")
    return value


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line like every other edgefold error."""

    def error(self, message: str):
        self.exit(2, f"edgefold: error: {message} (see: {self.prog} --help)\n")


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {text!r}")
    return int(text)


def _option(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    return name.strip().replace("-", "_"), value.strip()


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="edgefold", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    export = commands.add_parser("export", help="compress a Hugging Face model and fold it into ONNX",
                                 description="Compress a Hugging Face model offline and write a verified ONNX "
                                             "folder (model.onnx, config.json, tokenizer, edgefold.json).")
    export.add_argument("model", help="local model folder, Hugging Face Hub id, or a bundled model name")
    export.add_argument("output_dir", type=Path)
    export.add_argument("--task", default="auto",
                        help="auto, feature-extraction, text-classification, fill-mask or text-generation")
    export.add_argument("--method", default="svd",
                        help="svd, svd-whitened, svd-fisher (data-aware: calibration statistics), ae, "
                             "svd-shared, ae-shared, ae-separated (cross-layer; see README), or none "
                             "(export unchanged: a reference for validate)  (default: svd)")
    export.add_argument("--targets", default="embeddings,attention,ffn",
                        help="comma-separated: embeddings, attention, ffn, or finer: q, k, v, "
                             "attention-output, ffn-in, ffn-out (default: all)")
    export.add_argument("--ratio", type=_ratio, default=2.0,
                        help="compression factor R of the targeted weights: they keep 1/R of their parameters")
    export.add_argument("--allocation", default="uniform",
                        help="uniform (every module keeps 1/R) or sensitivity (1/R of all targeted weights "
                             "together, ranks per module from measured fidelity loss on calibration text)")
    export.add_argument("--size-budget", metavar="BYTES", type=int, default=None,
                        help="instead of --ratio: the whole model's weights in at most BYTES (fp32), ranks "
                             "allocated by sensitivity")
    export.add_argument("--calibration", metavar="FILE",
                        help="text (one item per line) for token frequencies and validation; default: the "
                             "general-English corpus shipped with edgefold")
    export.add_argument("--frequency", action=argparse.BooleanOptionalAction, default=None,
                        help="weight embedding rows by token frequency and keep the most frequent exact "
                             "(default: on for ae, off for svd)")
    export.add_argument("--method-option", metavar="NAME=VALUE", action="append", default=[], type=_option,
                        help="a method setting, repeatable (ae: epochs, batch_size, lr, cosine_weight, "
                             "power_l1_weight, rmse_weight, alpha_start, alpha_end, anneal_epochs, activation, "
                             "svd_init, preserve_norms, whitened, ...; see README)")
    export.add_argument("--quantize", choices=("none", "int8", "int4"), default="none",
                        help="after the fold: onnxruntime int8 dynamic quantisation, or 4-bit weight-only "
                             "MatMulNBits (default: none)")
    export.add_argument("--per-channel", action="store_true", help="int8 weights with one scale per channel")
    export.add_argument("--target", default="generic",
                        help="CPU the int8 weights are typed for: generic, arm64, avx512-vnni (signed weights, "
                             "unsigned activations) or avx2 (unsigned weights: no VNNI saturation)")
    export.add_argument("--optimize", default="auto",
                        help="graph fusions: auto (try onnxruntime's and onnxscript's, keep the fastest, "
                             "measured), onnxruntime, onnxscript or none (default: auto)")
    export.add_argument("--format", dest="formats", default="onnx",
                        help="onnx, or onnx,ort to also write onnxruntime's mobile format (.ort) and the "
                             "operator list for a reduced-size build")
    export.add_argument("--seed", type=int, default=0)
    export.add_argument("--parity-atol", type=float, default=None,
                        help="largest ONNX-vs-torch difference accepted (default 1e-3)")
    export.add_argument("--overwrite", action="store_true", help="replace OUTPUT_DIR if it exists")
    export.add_argument("--trust-remote-code", action="store_true",
                        help="allow a model's own Python code to run (only for models you trust)")
    export.add_argument("--quiet", action="store_true", help="no progress output")
    export.set_defaults(run=_run_export)

    bench = commands.add_parser("bench", help="measure latency, memory and start-up of an exported folder",
                                description="Measure an exported folder with onnxruntime; each configuration "
                                            "runs in its own process. Writes JSON and prints a table.")
    bench.add_argument("folder")
    bench.add_argument("--compare", metavar="OTHER_DIR", help="a second folder, measured alternately")
    bench.add_argument("--threads", type=_ints, default=None, help="comma-separated (default: 1 and all cores)")
    bench.add_argument("--batch", type=_ints, default=(1,), help="comma-separated batch sizes (default 1)")
    bench.add_argument("--seq", type=_ints, default=(128,), help="comma-separated sequence lengths (default 128)")
    bench.add_argument("--inputs", choices=("text", "synthetic"), default="text",
                       help="token ids from the folder's tokenizer on shipped text, or random ids")
    bench.add_argument("--warmup", type=int, default=10)
    bench.add_argument("--iterations", type=int, default=10, help="at least this many timed runs ...")
    bench.add_argument("--min-seconds", type=float, default=10.0, help="... and at least this long")
    bench.add_argument("--optimization", choices=("disable", "basic", "extended", "all"), default="all")
    bench.add_argument("--no-arena", action="store_true", help="disable onnxruntime's CPU memory arena")
    bench.add_argument("--no-spinning", action="store_true", help="intra-op threads sleep instead of spinning")
    bench.add_argument("--emulated", action="store_true", help="label the timings as emulated (qemu)")
    bench.add_argument("-o", "--output", type=Path, help="JSON file (default: bench-<folder>.json)")
    bench.set_defaults(run=_run_bench)

    validate = commands.add_parser("validate", help="gate a candidate on accuracy against a reference",
                                   description="Compare a candidate folder with a reference folder on data; "
                                               "exit 1 if any gate fails.")
    validate.add_argument("candidate")
    validate.add_argument("--reference", required=True,
                          help="an exported folder, or (with edgefold[export]) the original Hugging Face model")
    validate.add_argument("--data", help="a .txt (one item per line), .jsonl or .csv file; default: the "
                                         "shipped evaluation text")
    validate.add_argument("--limit", type=_positive, metavar="N", help="only the first N items (a quick check)")
    validate.add_argument("--text-column", default="text")
    validate.add_argument("--label-column", help="gold labels (classification): adds accuracy and F1")
    validate.add_argument("--query-column", help="with --positive-column: retrieval recall@1 and MRR")
    validate.add_argument("--positive-column")
    validate.add_argument("--gate", action="append", default=[], metavar="METRIC>=VALUE",
                          help="repeatable, e.g. mean_cosine>=0.98 or accuracy_drop<=0.01 (default: a gate "
                               "file, else per-task defaults)")
    validate.add_argument("--gates", metavar="FILE", help='JSON {"gates": [...]} (default: edgefold-gates.json '
                                                          "in the candidate folder, if present)")
    validate.add_argument("-o", "--output", type=Path, help="JSON report (default: validate-<candidate>.json)")
    validate.set_defaults(run=_run_validate)

    pack = commands.add_parser("pack", help="one archive for a device: the folder, pinned requirements, edgefold",
                               description="Write a .tar.gz holding the exported folder, a requirements.txt pinned "
                                           "to this machine's onnxruntime, numpy and tokenizers, and a "
                                           "runtime-only edgefold wheel.")
    pack.add_argument("folder")
    pack.add_argument("archive", type=Path)
    pack.add_argument("--overwrite", action="store_true", help="replace ARCHIVE if it exists")
    pack.set_defaults(run=_run_pack)

    unpack = commands.add_parser("unpack", help="write an archive's model folder to a new folder, checked",
                                 description="Check every member of an edgefold archive (no absolute paths, no "
                                             "'..', no links or devices), then write its model folder to DEST.")
    unpack.add_argument("archive", type=Path)
    unpack.add_argument("destination", type=Path)
    unpack.set_defaults(run=_run_unpack)

    report = commands.add_parser("report", help="merge bench and validate JSON into Markdown and plots")
    report.add_argument("results", nargs="+", help="bench-*.json and validate-*.json, from any machines")
    report.add_argument("-o", "--output", type=Path, required=True, help="folder for report.md and the plots")
    report.set_defaults(run=_run_report)
    return parser


def _run_export(args: argparse.Namespace) -> int:
    try:
        from edgefold import exporter
        from edgefold.exporter.manifest import format_summary
    except ImportError as error:
        raise EdgefoldError(f"{EXPORT_EXTRA_HINT} ({error})") from None
    config = exporter.CompressionConfig(method=args.method, targets=args.targets, ratio=args.ratio, seed=args.seed,
                                        frequency=args.frequency, calibration=args.calibration,
                                        method_options=dict(args.method_option), allocation=args.allocation,
                                        size_budget=args.size_budget)
    graph = exporter.GraphConfig(optimize=args.optimize, quantize=args.quantize, per_channel=args.per_channel,
                                 target=args.target, formats=tuple(f.strip() for f in args.formats.split(",")))
    atol = exporter.DEFAULT_PARITY_ATOL if args.parity_atol is None else args.parity_atol
    manifest = exporter.export(args.model, args.output_dir, config, graph, task=args.task, overwrite=args.overwrite,
                               trust_remote_code=args.trust_remote_code, parity_atol=atol, progress=not args.quiet)
    print(format_summary(manifest, args.output_dir))
    return 0


def _run_bench(args: argparse.Namespace) -> int:
    from .bench import BenchSettings, bench, format_table

    settings = BenchSettings(
        **({"threads": args.threads} if args.threads else {}), batch_sizes=args.batch, seq_lengths=args.seq,
        warmup=args.warmup, iterations=args.iterations, min_seconds=args.min_seconds, inputs=args.inputs,
        optimization=args.optimization, arena=not args.no_arena, spinning=not args.no_spinning)
    document = bench(args.folder, settings, compare=args.compare, emulated=args.emulated)
    output = args.output or Path(f"bench-{Path(args.folder).resolve().name}.json")
    _write_json(output, document)
    print(format_table(document))
    print(f"wrote {output}")
    return 0


def _run_validate(args: argparse.Namespace) -> int:
    from .dataset import load_data
    from .validate import failures, validate

    data = load_data(args.data, args.text_column, args.label_column, args.query_column, args.positive_column)
    data = data.first(args.limit) if args.limit else data
    with _reference_folder(args.reference) as reference:
        report = validate(args.candidate, reference, data, args.gate, args.gates)
    output = args.output or Path(f"validate-{Path(args.candidate).resolve().name}.json")
    _write_json(output, report)
    print(f"{report['candidate']['name']} against {report['reference']['name']} ({report['task']}) on "
          f"{data.source}, {len(data.texts)} items")
    for name, value in report["metrics"].items():
        print(f"  {name:24} {value:.4f}")
    print(f"wrote {output}")
    if report["passed"]:
        print(f"PASS: {report['candidate']['name']} may ship ({len(report['gates'])} gate(s) met)")
        return 0
    for line in failures(report):
        print(f"FAIL: {line}", file=sys.stderr)
    return 1


def _run_report(args: argparse.Namespace) -> int:
    from .report import write_report

    print(f"wrote {write_report(args.results, args.output)}")
    return 0


def _run_pack(args: argparse.Namespace) -> int:
    from .package import pack

    packed = pack(args.folder, args.archive, overwrite=args.overwrite)
    print(f"wrote {packed['archive']} ({packed['bytes'] / 1e6:.1f} MB): {packed['model']}/ ({packed['files']} files), "
          f"requirements.txt, wheels/{packed['wheel']}")
    for line in packed["requirements"][1:]:
        print(f"  {line}")
    return 0


def _run_unpack(args: argparse.Namespace) -> int:
    from .package import unpack

    print(f"wrote {unpack(args.archive, args.destination)}")
    return 0


@contextlib.contextmanager
def _reference_folder(reference: str):
    """An exported folder as it is; a Hugging Face model (folder or hub id) exported unchanged, for the run."""
    if (Path(reference) / "model.onnx").is_file():
        yield reference
        return
    try:
        from edgefold import exporter
    except ImportError:
        raise EdgefoldError(f"{reference} is not an exported folder; to use a Hugging Face model as the "
                            f"reference, {EXPORT_EXTRA_HINT}") from None
    with tempfile.TemporaryDirectory(prefix="edgefold-reference-") as tmp:
        print(f"exporting the reference {reference} unchanged", file=sys.stderr)
        exporter.export(reference, Path(tmp) / "reference", exporter.CompressionConfig(method="none"),
                        progress=False)
        yield str(Path(tmp) / "reference")


def _write_json(path: Path, document: dict) -> None:
    import json

    path.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except EdgefoldError as error:
        print(f"edgefold: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("edgefold: interrupted; nothing was written", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
