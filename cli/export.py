"""``edgefold export``: parse the flags and hand them to the exporter (imported only here, lazily)."""

from __future__ import annotations

import argparse
from pathlib import Path

from edgefold.runtime.dataset import EvalData, load_data
from edgefold.runtime.errors import EdgefoldError
from edgefold.runtime.jsonfile import read_json_object

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
    goal = export.add_argument_group(
        "goal-driven export (the default when no recipe flag is given)",
        "Search per module over precisions (fp32, int8, int4) and factorisations for the smallest or fastest model "
        "that passes the gates on your text; see README.")
    goal.add_argument("--objective", choices=("size", "latency"), default=None,
                      help="what to minimise: bytes on disk, or latency at batch 1 x 128 tokens (default: size)")
    goal.add_argument("--gate", action="append", default=[], metavar="METRIC>=VALUE",
                      help="an edgefold validate gate, repeatable (default: per task, see README); with a recipe, "
                           "the recipe must pass them or nothing is written")
    goal.add_argument("--data", metavar="FILE", help="your text: .txt (one item per line), .jsonl or .csv; split into "
                                                     "fit, selection and check (default: the shipped calibration text)")
    goal.add_argument("--text-column", default="text")
    goal.add_argument("--label-column", help="gold labels (classification): accuracy gates")
    goal.add_argument("--query-column", help="with --positive-column: retrieval recall@1 gates")
    goal.add_argument("--positive-column")
    goal.add_argument("--search", choices=("quick", "full"), default=None,
                      help="quick: precisions and the embeddings' factorisation; full: also factorise Linears "
                           "(whitened SVD at several ranks; slower)")
    goal.add_argument("--workers", type=flags.positive, default=None,
                      help="candidates verified in parallel processes (default: the cores); with --ray, tasks "
                           "at once on the cluster (default: its CPUs). The same --workers and --seed give the "
                           "same model locally and on a cluster")
    goal.add_argument("--ray", metavar="ADDRESS", default=None,
                      help="verify candidates and measure each module's choices as tasks on the Ray cluster at "
                           "ADDRESS (host:port, ray://host:port, or auto: the one started on this machine); "
                           'needs pip install "edgefold[distributed]"')
    goal.add_argument("--max-candidates", type=flags.whole(4), default=None,
                      help="graphs exported and validated at most (default 9)")
    goal.add_argument("--no-second-domain", dest="second_domain", action="store_false", default=None,
                      help="do not also check the chosen model on the shipped second domain (Python docstrings): "
                           "where only your own --data matters")
    goal.add_argument("--latency-table", metavar="FILE",
                      help="with --objective latency: a table measured on the device (edgefold bench --op-table); "
                           "default: measured on this CPU")
    goal.add_argument("--plan", metavar="FILE", help="export exactly this per-module plan (a plan file, or the "
                                                     "edgefold.json of a goal-driven export): no search")
    recipe = export.add_argument_group("a recipe of your own (any of these turns the search off)")
    recipe.add_argument("--method", default=None,
                        help="svd, svd-whitened, svd-fisher (data-aware: calibration statistics), ae, "
                             "svd-shared, ae-shared, ae-separated (cross-layer; see README), prune-ffn, "
                             "prune-heads (structured: FFN neurons or attention heads removed), or none (export unchanged: a reference for "
                             "validate)  (default: svd)")
    recipe.add_argument("--targets", default=None,
                        help="comma-separated: embeddings, attention, ffn, or finer: q, k, v, "
                             "attention-output, ffn-in, ffn-out (default: all; a structured method: its own)")
    recipe.add_argument("--ratio", type=flags.ratio, default=None,
                        help="compression factor R of the targeted weights: they keep 1/R of their parameters "
                             "(default: 2)")
    recipe.add_argument("--allocation", default=None,
                        help="uniform (every module keeps 1/R) or sensitivity (1/R of all targeted weights "
                             "together, ranks per module from measured fidelity loss on calibration text)")
    recipe.add_argument("--size-budget", metavar="BYTES", type=flags.positive, default=None,
                        help="instead of --ratio: the whole model's weights in at most BYTES (fp32), ranks "
                             "allocated by sensitivity")
    recipe.add_argument("--calibration", metavar="FILE",
                        help="text (one item per line) for token frequencies, statistics and validation, for "
                             "the methods that use it; default: the general-English corpus shipped with edgefold")
    recipe.add_argument("--frequency", action=argparse.BooleanOptionalAction, default=None,
                        help="weight embedding rows by token frequency and keep the most frequent exact "
                             "(default: on for ae, off for svd)")
    recipe.add_argument("--method-option", metavar="NAME=VALUE", action="append", default=None, type=flags.option,
                        help="a method setting, repeatable (ae: epochs, batch_size, lr, cosine_weight, "
                             "power_l1_weight, rmse_weight, alpha_start, alpha_end, anneal_epochs, activation, "
                             "svd_init, preserve_norms, whitened, ...; see README)")
    recipe.add_argument("--bias-correction", action="store_true", default=None,
                        help="after compressing each Linear, correct its bias so that the mean of its output on "
                             "calibration text is unchanged")
    recipe.add_argument("--quantize", choices=("none", "int8", "int4"), default=None,
                        help="after the fold: onnxruntime int8 dynamic quantisation, or 4-bit weight-only "
                             "MatMulNBits (default: none)")
    recipe.add_argument("--quant-algorithm", choices=("rtn", "gptq"), default=None,
                        help="how 4-bit weights are chosen: rtn (onnxruntime's round to nearest) or gptq (error "
                             "feedback fitted on calibration text, act-order). The search's candidates: default "
                             "gptq, on its fit split; a recipe (--quantize int4) or a --plan: default rtn, gptq "
                             "on --calibration text")
    recipe.add_argument("--per-channel", action="store_true", default=None, help="int8 weights with one scale per channel")
    recipe.add_argument("--quantize-for", metavar="CPU", default=None,
                        help="CPU the int8 weights are typed for: generic, arm64, avx512-vnni (signed weights, "
                             "unsigned activations) or avx2 (unsigned weights: no VNNI saturation)")
    recipe.add_argument("--stream", action="store_true", default=None,
                        help="models larger than memory: read each layer's weights from the safetensors files only "
                             "while it is measured and fitted (svd, svd-whitened, --method none); the result is "
                             "the unstreamed one, bit for bit")
    export.add_argument("--optimize", default=None,
                        help="graph fusions: auto (try onnxruntime's and onnxscript's, keep the fastest, "
                             "measured), onnxruntime, onnxscript or none (default: auto with a recipe, none for a plan: precisions "
                             "name the unoptimised graph's nodes)")
    export.add_argument("--format", dest="formats", default="onnx",
                        help="onnx, or onnx,ort to also write onnxruntime's mobile format (.ort) and the "
                             "operator list for a reduced-size build")
    flags.add_export_flags(export)
    export.set_defaults(run=run)


#: Flags that spell out a recipe: any of them and edgefold exports that recipe instead of searching for one.
RECIPE_FLAGS = ("method", "targets", "ratio", "size_budget", "allocation", "frequency", "calibration",
                "method_option", "bias_correction", "quantize", "per_channel", "quantize_for", "stream")
SEARCH_FLAGS = ("objective", "search", "latency_table", "workers", "max_candidates", "ray", "second_domain")
FLAG_NAMES = {"second_domain": "no_second_domain"}  # where the flag is not the attribute's name


def run(args: argparse.Namespace) -> int:
    try:
        from edgefold import exporter
        from edgefold.exporter.checks.manifest import format_summary
    except ImportError as error:
        raise EdgefoldError(f"{EXPORT_EXTRA_HINT} ({error})") from None
    recipe = [f"--{name.replace('_', '-')}" for name in RECIPE_FLAGS if getattr(args, name) is not None]
    searching = [f"--{FLAG_NAMES.get(name, name).replace('_', '-')}" for name in SEARCH_FLAGS
                 if getattr(args, name) is not None]
    if args.plan:  # its factors may be fitted again: on --calibration text, as the search fitted on --data
        recipe = [flag for flag in recipe if flag != "--calibration"]
        if recipe or searching:
            raise EdgefoldError(f"--plan exports a plan as it is: not with {', '.join(recipe + searching)}")
    if recipe and searching:
        raise EdgefoldError(f"{', '.join(searching)} search for a recipe, {', '.join(recipe)} give one: "
                            "use one or the other")
    if (recipe or args.plan) and args.data is not None and not args.gate:
        raise EdgefoldError("--data serves the search, or --gate with a recipe or a plan: give --gate too")
    data = _data(args)
    common = dict(task=args.task, overwrite=args.overwrite, trust_remote_code=args.trust_remote_code,
                  progress=not args.quiet)
    if recipe or args.plan:
        config, graph = _recipe(args, exporter) if recipe else _plan(args, exporter)
        atol = exporter.DEFAULT_PARITY_ATOL if args.parity_atol is None else args.parity_atol
        common["streamed"] = bool(args.stream)
        if args.gate:
            manifest = exporter.export_gated(args.model, args.output_dir, config, graph, args.gate, data,
                                             parity_atol=atol, **common)
        else:
            manifest = exporter.export(args.model, args.output_dir, config, graph, parity_atol=atol, **common)
    else:
        _refuse_for_search(args, exporter)
        chosen = {name: value for name, value in (("objective", args.objective), ("workers", args.workers),
                                                  ("max_candidates", args.max_candidates),
                                                  ("algorithm", args.quant_algorithm),
                                                  ("second_domain", args.second_domain)) if value is not None}
        search = exporter.SearchConfig(gates=tuple(args.gate), data=data, full=args.search == "full",
                                       latency_table=args.latency_table, seed=args.seed, ray=args.ray, **chosen)
        manifest = exporter.search_export(args.model, args.output_dir, search, **common)
    print(format_summary(manifest, args.output_dir))
    return 0


def _data(args: argparse.Namespace) -> EvalData | None:
    columns = (args.label_column, args.query_column, args.positive_column)
    if args.data is None and (args.text_column != "text" or any(columns)):
        raise EdgefoldError("--text-column, --label-column, --query-column and --positive-column name columns of "
                            "--data: give the file")
    return None if args.data is None else load_data(args.data, args.text_column, *columns)


def _recipe(args: argparse.Namespace, exporter) -> tuple:
    """(CompressionConfig, GraphConfig) of the flags given, today's defaults for the rest."""
    if args.ratio is not None and args.size_budget is not None:
        raise EdgefoldError("--ratio and --size-budget are two ways to say how small: give one")

    def given(name: str, default):
        value = getattr(args, name)
        return default if value is None else value

    method = given("method", "svd")
    # A structured method removes units of its own blocks (prune-ffn: FFN neurons): by default, exactly those.
    structured = getattr(exporter.METHODS.get(method), "block_kinds", None)
    config = exporter.CompressionConfig(
        method=method, targets=given("targets", ",".join(structured) if structured else "embeddings,attention,ffn"),
        ratio=given("ratio", 2.0),
        seed=args.seed, frequency=args.frequency, calibration=args.calibration,
        options=exporter.parse_method_options(method, dict(given("method_option", []))),
        allocation=given("allocation", "uniform"), size_budget=args.size_budget,
        bias_correction=bool(args.bias_correction))
    graph = exporter.GraphConfig(optimize=given("optimize", "auto"), quantize=given("quantize", "none"),
                                 per_channel=bool(args.per_channel), target=given("quantize_for", "generic"),
                                 algorithm=given("quant_algorithm", "rtn"), formats=_formats(args))
    return config, graph


def _plan(args: argparse.Namespace, exporter) -> tuple:
    from edgefold.exporter.planning.plan import Plan

    plan = Plan.read(args.plan)
    # a search's edgefold.json replays with the algorithm it chose its low-bit weights by (fitted again)
    recorded = read_json_object(Path(args.plan)).get("quantization", {}).get("algorithm")
    graph = exporter.GraphConfig(optimize=args.optimize if args.optimize is not None else "none",
                                 precisions=plan.precisions, algorithm=args.quant_algorithm or recorded or "rtn",
                                 formats=_formats(args))
    return exporter.CompressionConfig(plan=plan, seed=args.seed, calibration=args.calibration), graph


def _refuse_for_search(args: argparse.Namespace, exporter) -> None:
    """The search exports unoptimised graphs in onnx format (per-module precisions name their nodes)."""
    exporter.GraphConfig(optimize=args.optimize or "none", formats=_formats(args))  # an unknown value, named first
    if args.optimize not in (None, "none"):
        raise EdgefoldError("--optimize works on a recipe; the search's per-module precisions name the nodes of "
                            "the unoptimised graph (onnxruntime still fuses at load time)")
    if args.parity_atol is not None:
        raise EdgefoldError("--parity-atol works on a recipe; the search checks every candidate at the default")
    if _formats(args) != ("onnx",):
        raise EdgefoldError("--format onnx,ort works on a recipe or --plan; the search writes model.onnx")


def _formats(args: argparse.Namespace) -> tuple[str, ...]:
    return tuple(f.strip() for f in args.formats.split(","))
