"""``edgefold bench``: measure an exported folder (and another, alternately) and write the JSON result; or, with
``--op-table``, time a folder of operator probes into a latency table."""

from __future__ import annotations

import argparse
from pathlib import Path

from edgefold.runtime.errors import EdgefoldError
from edgefold.runtime.outputs import check_json_output, write_json
from . import args as flags
from . import devices


def add_parser(commands) -> None:
    bench = commands.add_parser("bench", help="measure latency, memory and start-up of an exported folder",
                                description="Measure an exported folder with onnxruntime; each configuration "
                                            "runs in its own process. Writes JSON and prints a table.")
    bench.add_argument("folder", nargs="?", help="the exported folder (not with --op-table)")
    bench.add_argument("--op-table", metavar="PROBES_DIR", type=Path,
                       help="time the probe graphs of PROBES_DIR (probes.json) and write a per-operator latency "
                            "table (default file: latency-table.json); takes one --threads value (default 1)")
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
    bench.add_argument("-o", "--output", type=Path, help="JSON file (default: bench-<folder>.json); with --on, the "
                                                         "folder for bench-<folder>@<device>.json (default: .)")
    bench.add_argument("--overwrite", action="store_true", help="replace the JSON file if edgefold wrote it")
    flags.add_no_verify(bench)
    devices.add_flags(bench)
    # What only a model bench uses, with its default: --op-table refuses any of them set otherwise.
    model_only = {action.dest: (action.option_strings[0], action.default) for action in bench._actions
                  if action.dest in _MODEL_ONLY}
    bench.set_defaults(run=run, model_only=model_only, actions=bench._actions)


_MODEL_ONLY = ("compare", "no_verify", "batch", "seq", "inputs", "warmup", "iterations", "min_seconds", "ort_optimization_level",
               "no_arena", "no_spinning")


def run(args: argparse.Namespace) -> int:
    devices.check(args)
    if args.op_table is not None:
        return _op_table(args)
    if args.folder is None:
        raise EdgefoldError("give the exported folder to measure (or --op-table PROBES_DIR for a latency table)")
    if args.on:
        return _on_devices(args)
    from edgefold.runtime.bench import SCHEMA, BenchSettings, bench, format_table

    settings = BenchSettings(
        **({"threads": args.threads} if args.threads else {}), batch_sizes=args.batch, seq_lengths=args.seq,
        warmup=args.warmup, iterations=args.iterations, min_seconds=args.min_seconds, inputs=args.inputs,
        optimization=args.ort_optimization_level, arena=not args.no_arena, spinning=not args.no_spinning)
    output = args.output or Path(f"bench-{Path(args.folder).resolve().name}.json")
    check_json_output(output, SCHEMA, args.overwrite)
    document = bench(args.folder, settings, compare=args.compare, emulated=args.emulated, verify=not args.no_verify)
    write_json(output, document)
    print(format_table(document))
    print(f"wrote {output}")
    return 0


def _on_devices(args: argparse.Namespace) -> int:
    from edgefold.runtime.folder import ExportedFolder
    from edgefold.runtime.remote import RemoteJob

    folders = [args.folder] + ([args.compare] if args.compare else [])
    for folder in folders:
        ExportedFolder.open(folder)  # a folder that is no export is refused before any device is reached
    outputs = devices.check_outputs(args, f"bench-{Path(args.folder).resolve().name}")
    names = devices.device_names(folders)
    arguments = [names[0], *(["--compare", names[1]] if args.compare else []),
                 *devices.forwarded(args, args.actions, _FORWARDED)]
    job = RemoteJob("bench", arguments, bundles=dict(zip(names, map(Path, folders))), wheelhouse=args.wheelhouse)
    return devices.exit_code(devices.run(args, job, outputs))


_FORWARDED = ("threads", "batch", "seq", "inputs", "warmup", "iterations", "min_seconds", "ort_optimization_level",
              "no_arena", "no_spinning", "emulated")


def _op_table(args: argparse.Namespace) -> int:
    from edgefold.runtime.optable import TABLE_SCHEMA, LatencyTable, format_entries, read_probes, time_probes

    if args.folder is not None:
        raise EdgefoldError(f"--op-table times probes, not a model: give the folder {args.folder!r} or --op-table, "
                            "not both")
    given = [flag for dest, (flag, default) in args.model_only.items() if getattr(args, dest) != default]
    if args.on:
        given.append("--on")
    if given:
        raise EdgefoldError(f"{', '.join(given)} measure a model folder, not --op-table probes")
    threads = args.threads or (1,)
    if len(threads) != 1:
        raise EdgefoldError(f"--op-table measures at one thread count, not {len(threads)}: run it once per count")
    read_probes(args.op_table)  # a bad probe folder is refused before the output is checked
    output = args.output or Path("latency-table.json")
    check_json_output(output, TABLE_SCHEMA, args.overwrite)
    document = time_probes(args.op_table, threads=threads[0], emulated=args.emulated)
    write_json(output, document)
    print(format_entries(LatencyTable.from_document(document, output)))
    print(f"wrote {output}")
    return 0
