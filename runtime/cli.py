"""The ``edgefold`` command. It parses arguments and delegates; the work lives in the packages."""

from __future__ import annotations

import argparse
import sys
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
    export.add_argument("--method", default="svd", help="compression method (default: svd)")
    export.add_argument("--targets", default="embeddings,attention,ffn",
                        help="comma-separated: embeddings, attention, ffn, or finer: q, k, v, "
                             "attention-output, ffn-in, ffn-out (default: all)")
    export.add_argument("--ratio", type=_ratio, default=2.0,
                        help="compression factor R of the targeted weights: they keep 1/R of their parameters")
    export.add_argument("--calibration", metavar="FILE",
                        help="text (one item per line) for token frequencies and validation; default: the "
                             "general-English corpus shipped with edgefold")
    export.add_argument("--frequency", action=argparse.BooleanOptionalAction, default=None,
                        help="weight embedding rows by token frequency and keep the most frequent exact "
                             "(default: on for ae, off for svd)")
    export.add_argument("--method-option", metavar="NAME=VALUE", action="append", default=[], type=_option,
                        help="a method setting, repeatable (ae: epochs, batch_size, lr, cosine_weight, "
                             "power_l1_weight, rmse_weight, alpha_start, alpha_end, anneal_epochs, activation, "
                             "svd_init, preserve_norms, ...; see README)")
    export.add_argument("--seed", type=int, default=0)
    export.add_argument("--parity-atol", type=float, default=None,
                        help="largest ONNX-vs-torch difference accepted (default 1e-3)")
    export.add_argument("--overwrite", action="store_true", help="replace OUTPUT_DIR if it exists")
    export.add_argument("--trust-remote-code", action="store_true",
                        help="allow a model's own Python code to run (only for models you trust)")
    export.add_argument("--quiet", action="store_true", help="no progress output")
    export.set_defaults(run=_run_export)
    return parser


def _run_export(args: argparse.Namespace) -> int:
    try:
        from edgefold import exporter
        from edgefold.exporter.manifest import format_summary
    except ImportError as error:
        raise EdgefoldError(f"{EXPORT_EXTRA_HINT} ({error})") from None
    config = exporter.CompressionConfig(method=args.method, targets=args.targets, ratio=args.ratio, seed=args.seed,
                                        frequency=args.frequency, calibration=args.calibration,
                                        method_options=dict(args.method_option))
    atol = exporter.DEFAULT_PARITY_ATOL if args.parity_atol is None else args.parity_atol
    manifest = exporter.export(args.model, args.output_dir, config, task=args.task, overwrite=args.overwrite,
                               trust_remote_code=args.trust_remote_code, parity_atol=atol,
                               progress=not args.quiet)
    print(format_summary(manifest, args.output_dir))
    return 0


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
