"""``edgefold prune`` (a sparse sub-network, exported like ``export``) and ``edgefold masks overlap``; both
delegate to the exporter, imported only here, lazily."""

from __future__ import annotations

import argparse
from pathlib import Path

from edgefold.runtime.dataset import load_data
from edgefold.runtime.errors import EdgefoldError
from edgefold.runtime.outputs import check_file_output, check_json_output, staged_file, write_json
from . import args as flags
from .export import EXPORT_EXTRA_HINT


def add_parsers(commands) -> None:
    prune = commands.add_parser(
        "prune", help="find a sparse sub-network (magnitude, Wanda, lottery ticket) and export it",
        description="Prune the Q, K, V, attention-output, FFN and pooler weights of a model (embeddings, biases, "
                    "norms and task heads are kept) and write a verified ONNX folder with the masks "
                    "(mask.safetensors; IMP: masks/level-NN.safetensors). onnxruntime's CPU kernels are dense: "
                    "the zeros shrink the compressed download, not memory or latency.")
    prune.add_argument("model", help="local model folder, Hugging Face Hub id, or a bundled model name")
    prune.add_argument("output_dir", type=Path)
    prune.add_argument("--sparsity", type=flags.non_negative, default=None,
                       help="share of the targeted weights pruned, between 0 and 1 (e.g. 0.5)")
    prune.add_argument("--method", default=None,
                       help="magnitude (global L1, one shot; the default), wanda (|W| x input norm per output row, "
                            "one shot, calibration text), imp (lottery ticket: rounds of pruning, training, "
                            "rewinding; a mask per level) or random (the control)")
    prune.add_argument("--mask", metavar="FILE",
                       help="a mask file found elsewhere (another language or task): applied to the pre-trained "
                            "weights; with --method random, a random mask of the same per-weight sparsity")
    prune.add_argument("--data", metavar="FILE",
                       help="text to calibrate (wanda) and train on (imp, --steps): .txt, .jsonl or .csv "
                            "(default: the shipped calibration text)")
    prune.add_argument("--text-column", default="text")
    prune.add_argument("--label-column",
                       help="gold labels: train with the task's loss (the model's head must know them); without, "
                            "training distils the dense model's outputs")
    prune.add_argument("--task", default="auto",
                       help="auto, feature-extraction, text-classification, fill-mask or text-generation")
    prune.add_argument("--steps", type=flags.whole(0), default=None,
                       help="training steps after each pruning (imp: per round, and once more at the end; "
                            "default: 50 for imp, 0 for the others)")
    prune.add_argument("--round-share", type=flags.non_negative, default=None,
                       help="imp: share of the ORIGINAL weights each round prunes (default 0.1; at most 100 rounds)")
    prune.add_argument("--batch-size", type=flags.positive, default=16)
    prune.add_argument("--learning-rate", type=flags.non_negative, default=5e-5)
    prune.add_argument("--quantize", choices=("none", "int8", "int4"), default="none",
                       help="after the fold: int8 dynamic or 4-bit weights (zeros stay zeros: they still zip)")
    prune.add_argument("--optimize", default="auto", help="graph fusions: auto, onnxruntime, onnxscript or none")
    prune.add_argument("--format", dest="formats", default="onnx", help="onnx, or onnx,ort")
    flags.add_export_flags(prune)
    prune.set_defaults(run=run_prune)

    masks = commands.add_parser("masks", help="compare sub-network masks")
    actions = masks.add_subparsers(dest="action", required=True, metavar="ACTION", parser_class=type(masks))
    overlap = actions.add_parser(
        "overlap", help="Jaccard and agreement of two or more masks",
        description="Jaccard |A and B| / |A or B| of the kept weights, in total, per layer and per module kind, "
                    "and the share of positions where the masks agree, for every pair.")
    overlap.add_argument("masks", nargs="+", type=Path, metavar="MASK", help="mask files (mask.safetensors)")
    overlap.add_argument("--json", type=Path, metavar="FILE", help="write every figure as JSON")
    overlap.add_argument("--plot", type=Path, metavar="FILE.png", help="a heatmap of the pairs (three masks or more)")
    overlap.add_argument("--overwrite", action="store_true",
                         help="replace a --json or --plot file edgefold wrote (never one of the masks)")
    overlap.set_defaults(run=run_overlap)


def run_prune(args: argparse.Namespace) -> int:
    try:
        from edgefold import exporter
        from edgefold.exporter.checks.manifest import format_summary
        from edgefold.exporter.subnetworks import SparsityConfig
    except ImportError as error:
        raise EdgefoldError(f"{EXPORT_EXTRA_HINT} ({error})") from None
    method = args.method or ("mask" if args.mask else "magnitude")
    if args.round_share is not None and method != "imp":
        raise EdgefoldError(f"--round-share sets the rounds of --method imp; method {method} prunes in one shot")
    if args.label_column and not args.data:
        raise EdgefoldError("--label-column names a column of --data: give the file")
    data = load_data(args.data, args.text_column, args.label_column) if args.data else None
    sparsity = SparsityConfig(method=method, sparsity=args.sparsity, mask=args.mask, steps=args.steps,
                              round_share=0.1 if args.round_share is None else args.round_share,
                              batch_size=args.batch_size,
                              learning_rate=args.learning_rate, seed=args.seed,
                              texts=tuple(data.texts) if data else None,
                              labels=tuple(data.labels) if data and data.labels else None)
    graph = exporter.GraphConfig(optimize=args.optimize, quantize=args.quantize,
                                 formats=tuple(f.strip() for f in args.formats.split(",")))
    manifest = exporter.export(args.model, args.output_dir, None, graph, task=args.task, overwrite=args.overwrite,
                               trust_remote_code=args.trust_remote_code, progress=not args.quiet,
                               parity_atol=exporter.DEFAULT_PARITY_ATOL if args.parity_atol is None
                               else args.parity_atol, sparsity=sparsity)
    print(format_summary(manifest, args.output_dir))
    return 0


def run_overlap(args: argparse.Namespace) -> int:
    try:
        from edgefold.exporter.subnetworks import overlap
    except ImportError as error:
        raise EdgefoldError(f"{EXPORT_EXTRA_HINT} ({error})") from None
    if args.plot is not None and len(args.masks) < 3:
        raise EdgefoldError("--plot draws a heatmap of three masks or more; two are one number (printed)")
    if args.json is not None:
        check_json_output(args.json, overlap.SCHEMA, args.overwrite, inputs=args.masks)
    if args.plot is not None:
        check_file_output(args.plot, args.overwrite, args.masks, _is_png, "plot (PNG)")
    if args.json is not None and args.plot is not None and args.json.absolute() == args.plot.absolute():
        raise EdgefoldError("--json and --plot name the same file")
    result = overlap.overlap(args.masks)
    print(overlap.table(result))
    if args.json is not None:
        write_json(args.json, result)
    if args.plot is not None:
        with staged_file(args.plot) as staging:
            overlap.heatmap(result, staging)
    return 0


def _is_png(path: Path) -> bool:
    with path.open("rb") as file:
        return file.read(8) == b"\x89PNG\r\n\x1a\n"
