"""``edgefold bench``: measure an exported folder (and another, alternately) and write the JSON result."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..outputs import check_json_output, write_json
from . import args as flags


def add_parser(commands) -> None:
    bench = commands.add_parser("bench", help="measure latency, memory and start-up of an exported folder",
                                description="Measure an exported folder with onnxruntime; each configuration "
                                            "runs in its own process. Writes JSON and prints a table.")
    bench.add_argument("folder")
    bench.add_argument("--compare", metavar="OTHER_DIR", help="a second folder, measured alternately")
    bench.add_argument("--threads", type=flags.positive_list, default=None,
                       help="comma-separated (default: 1 and all cores)")
    bench.add_argument("--batch", type=flags.positive_list, default=(1,), help="comma-separated batch sizes (default 1)")
    bench.add_argument("--seq", type=flags.positive_list, default=(128,),
                       help="comma-separated sequence lengths (default 128)")
    bench.add_argument("--inputs", choices=("text", "synthetic"), default="text",
                       help="token ids from the folder's tokenizer on shipped text, or random ids")
    bench.add_argument("--warmup", type=flags.whole(0), default=10)
    bench.add_argument("--iterations", type=flags.positive, default=10, help="at least this many timed runs ...")
    bench.add_argument("--min-seconds", type=flags.non_negative, default=10.0, help="... and at least this long")
    bench.add_argument("--ort-optimization-level", choices=("disable", "basic", "extended", "all"), default="all",
                       help="onnxruntime's graph optimisation level for the session (default: all)")
    bench.add_argument("--no-arena", action="store_true", help="disable onnxruntime's CPU memory arena")
    bench.add_argument("--no-spinning", action="store_true", help="intra-op threads sleep instead of spinning")
    bench.add_argument("--emulated", action="store_true", help="label the timings as emulated (qemu)")
    bench.add_argument("-o", "--output", type=Path, help="JSON file (default: bench-<folder>.json)")
    bench.add_argument("--overwrite", action="store_true", help="replace the JSON file if edgefold wrote it")
    bench.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..bench import SCHEMA, BenchSettings, bench, format_table

    settings = BenchSettings(
        **({"threads": args.threads} if args.threads else {}), batch_sizes=args.batch, seq_lengths=args.seq,
        warmup=args.warmup, iterations=args.iterations, min_seconds=args.min_seconds, inputs=args.inputs,
        optimization=args.ort_optimization_level, arena=not args.no_arena, spinning=not args.no_spinning)
    output = args.output or Path(f"bench-{Path(args.folder).resolve().name}.json")
    check_json_output(output, SCHEMA, args.overwrite)
    document = bench(args.folder, settings, compare=args.compare, emulated=args.emulated)
    write_json(output, document)
    print(format_table(document))
    print(f"wrote {output}")
    return 0
