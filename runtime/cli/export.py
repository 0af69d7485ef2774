"""``edgefold export``: parse the flags and hand them to the exporter (imported only here, lazily)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import EdgefoldError
from . import args as flags

EXPORT_EXTRA_HINT = 'the exporter is not installed: pip install "edgefold[export]"'


def add_parser(commands) -> None:
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
    export.add_argument("--ratio", type=flags.ratio, default=None,
                        help="compression factor R of the targeted weights: they keep 1/R of their parameters "
                             "(default: 2)")
    export.add_argument("--allocation", default="uniform",
                        help="uniform (every module keeps 1/R) or sensitivity (1/R of all targeted weights "
                             "together, ranks per module from measured fidelity loss on calibration text)")
    export.add_argument("--size-budget", metavar="BYTES", type=flags.positive, default=None,
                        help="instead of --ratio: the whole model's weights in at most BYTES (fp32), ranks "
                             "allocated by sensitivity")
    export.add_argument("--calibration", metavar="FILE",
                        help="text (one item per line) for token frequencies, statistics and validation, for "
                             "the methods that use it; default: the general-English corpus shipped with edgefold")
    export.add_argument("--frequency", action=argparse.BooleanOptionalAction, default=None,
                        help="weight embedding rows by token frequency and keep the most frequent exact "
                             "(default: on for ae, off for svd)")
    export.add_argument("--method-option", metavar="NAME=VALUE", action="append", default=[], type=flags.option,
                        help="a method setting, repeatable (ae: epochs, batch_size, lr, cosine_weight, "
                             "power_l1_weight, rmse_weight, alpha_start, alpha_end, anneal_epochs, activation, "
                             "svd_init, preserve_norms, whitened, ...; see README)")
    export.add_argument("--quantize", choices=("none", "int8", "int4"), default="none",
                        help="after the fold: onnxruntime int8 dynamic quantisation, or 4-bit weight-only "
                             "MatMulNBits (default: none)")
    export.add_argument("--per-channel", action="store_true", help="int8 weights with one scale per channel")
    export.add_argument("--quantize-for", metavar="CPU", default="generic",
                        help="CPU the int8 weights are typed for: generic, arm64, avx512-vnni (signed weights, "
                             "unsigned activations) or avx2 (unsigned weights: no VNNI saturation)")
    export.add_argument("--optimize", default="auto",
                        help="graph fusions: auto (try onnxruntime's and onnxscript's, keep the fastest, "
                             "measured), onnxruntime, onnxscript or none (default: auto)")
    export.add_argument("--format", dest="formats", default="onnx",
                        help="onnx, or onnx,ort to also write onnxruntime's mobile format (.ort) and the "
                             "operator list for a reduced-size build")
    export.add_argument("--seed", type=flags.whole(0), default=0)
    export.add_argument("--parity-atol", type=flags.non_negative, default=None,
                        help="largest ONNX-vs-torch difference accepted (default 1e-3)")
    export.add_argument("--overwrite", action="store_true",
                        help="replace OUTPUT_DIR if edgefold wrote it (it holds an edgefold.json) or it is empty")
    export.add_argument("--trust-remote-code", action="store_true",
                        help="allow a model's own Python code to run (only for models you trust)")
    export.add_argument("--quiet", action="store_true", help="no progress output")
    export.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    try:
        from edgefold import exporter
        from edgefold.exporter.checks.manifest import format_summary
    except ImportError as error:
        raise EdgefoldError(f"{EXPORT_EXTRA_HINT} ({error})") from None
    if args.ratio is not None and args.size_budget is not None:
        raise EdgefoldError("--ratio and --size-budget are two ways to say how small: give one")
    ratio = 2.0 if args.ratio is None else args.ratio
    config = exporter.CompressionConfig(method=args.method, targets=args.targets, ratio=ratio, seed=args.seed,
                                        frequency=args.frequency, calibration=args.calibration,
                                        options=exporter.parse_method_options(args.method, dict(args.method_option)),
                                        allocation=args.allocation, size_budget=args.size_budget)
    graph = exporter.GraphConfig(optimize=args.optimize, quantize=args.quantize, per_channel=args.per_channel,
                                 target=args.quantize_for, formats=tuple(f.strip() for f in args.formats.split(",")))
    atol = exporter.DEFAULT_PARITY_ATOL if args.parity_atol is None else args.parity_atol
    manifest = exporter.export(args.model, args.output_dir, config, graph, task=args.task, overwrite=args.overwrite,
                               trust_remote_code=args.trust_remote_code, parity_atol=atol, progress=not args.quiet)
    print(format_summary(manifest, args.output_dir))
    return 0
