"""``--on ssh://...`` for ``bench`` and ``validate``: the flags, and the run from parsed flags to result files."""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Iterable
from pathlib import Path

from edgefold.runtime.errors import EdgefoldError
from edgefold.runtime.outputs import check_json_output, check_writable_parent, write_json
from edgefold.runtime.remote import Device, DeviceOutcome, RemoteJob, SshSettings, parse_device, run_on_devices
from . import report

#: Exit status when a device could not run the command (unreachable, refused, crashed); 1 stays a failed gate.
DEVICE_FAILED = 3
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,99}")
# flag -> default of the device-only flags: refused without --on
_DEVICE_ONLY = {"ssh_config": None, "accept_new_host_key": False, "remote_dir": ".edgefold",
                "remote_python": "python3", "wheelhouse": None, "keep_remote": False, "report": None}


def add_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "on devices over SSH", "Run the command on each device at once, with the user's ssh configuration and keys; "
        "results come back as <command>-<model>@<device>.json. Exit 3 if any device failed.")
    group.add_argument("--on", action="append", type=_device, metavar="[NAME=]ssh://[USER@]HOST[:PORT]",
                       help="a device (repeatable); HOST may be an alias of ~/.ssh/config")
    group.add_argument("--ssh-config", type=Path, metavar="FILE", help="ssh's -F: this file instead of ~/.ssh/config")
    group.add_argument("--accept-new-host-key", action="store_true",
                       help="add an unknown device's host key to known_hosts (a CHANGED key is refused always)")
    group.add_argument("--remote-dir", default=_DEVICE_ONLY["remote_dir"], metavar="DIR",
                       help="edgefold's folder on the device, relative to its home (default .edgefold); nothing "
                            "outside it is written")
    group.add_argument("--remote-python", default=_DEVICE_ONLY["remote_python"], metavar="PYTHON",
                       help="the device's Python 3.10+ (default python3)")
    group.add_argument("--wheelhouse", type=Path, metavar="DIR",
                       help="wheels for a device without package-index access (pip download --platform ...)")
    group.add_argument("--keep-remote", action="store_true", help="keep each device's run folder (to debug)")
    group.add_argument("--report", type=Path, metavar="DIR",
                       help="also merge the devices' results into one report (report.md and plots, as edgefold "
                            "report writes)")


def _device(text: str) -> Device:
    try:
        return parse_device(text)
    except EdgefoldError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def check(args: argparse.Namespace) -> None:
    """Before any work: device-only flags without --on are a mistake, not a no-op; with --on, the SSH settings."""
    given = [f"--{dest.replace('_', '-')}" for dest, default in _DEVICE_ONLY.items() if getattr(args, dest) != default]
    if given and not args.on:
        raise EdgefoldError(f"{', '.join(given)} only apply with --on ssh://...")
    if args.on and getattr(args, "no_verify", False):
        raise EdgefoldError("--no-verify applies to a folder used here; with --on the device checks what it is "
                            "sent: run it locally, or re-export the folder")
    if args.on:
        settings(args)


def settings(args: argparse.Namespace) -> SshSettings:
    if args.wheelhouse is not None and not args.wheelhouse.is_dir():
        raise EdgefoldError(f"--wheelhouse {args.wheelhouse}: no such folder")
    return SshSettings(config=args.ssh_config, accept_new_host_key=args.accept_new_host_key,
                       remote_dir=args.remote_dir, python=args.remote_python)


def device_names(folders: Iterable[str | Path]) -> list[str]:
    """Names the folders get on the device: their own where safe and distinct (bench labels models by them)."""
    names = [Path(folder).resolve().name for folder in folders]
    if len(set(names)) == len(names) and all(_SAFE_NAME.fullmatch(name) for name in names):
        return names
    return [f"model{i}" for i in range(1, len(names) + 1)]


def forwarded(args: argparse.Namespace, parser_actions: list[argparse.Action], dests: Iterable[str]) -> list[str]:
    """The flags among ``dests`` that the user set, written back as arguments for the device's edgefold."""
    argv: list[str] = []
    for action in parser_actions:
        if action.dest not in dests:
            continue
        value = getattr(args, action.dest)
        if value == action.default or value is None:
            continue
        flag = action.option_strings[-1]
        if isinstance(value, bool):  # a store_true flag, set
            argv.append(flag)
        elif isinstance(value, list):  # repeatable (append)
            argv += [part for item in value for part in (flag, str(item))]
        elif isinstance(value, tuple):
            argv += [flag, ",".join(map(str, value))]
        else:
            argv += [flag, str(value)]
    return argv


def run(args: argparse.Namespace, job: RemoteJob, outputs: dict[str, Path]) -> list[DeviceOutcome]:
    """Run ``job`` on ``args.on``; write each device's result to its file of ``outputs`` (from
    :func:`check_outputs`) and say how each device did."""
    outcomes = run_on_devices(args.on, job, settings(args), keep=args.keep_remote)
    written = _write_results(outcomes, outputs)
    print()
    for outcome in outcomes:
        status = f"wrote {outputs[outcome.device.name]}" if outcome.ok else f"FAILED: {outcome.error}"
        print(f"{outcome.device.name:16} {outcome.device.address:32} {outcome.seconds:6.0f} s  {status}")
    if args.report and written:
        report.write(written, args.report)
    return outcomes


def check_outputs(args: argparse.Namespace, result_name: str) -> dict[str, Path]:
    """Each device's result file (``<result_name>@<device>.json`` in the -o folder) and the report folder: where
    they may be written, checked before any work."""
    folder = args.output or Path(".")
    if folder.exists() and not folder.is_dir():
        raise EdgefoldError(f"-o {folder}: with --on, -o names a folder for the devices' results")
    outputs = {device.name: folder / f"{result_name}@{device.name}.json" for device in args.on}
    from edgefold.runtime.bench import SCHEMA as BENCH
    from edgefold.runtime.validate import SCHEMA as VALIDATE

    schema = {"bench": BENCH, "validate": VALIDATE}[args.command]
    if folder.exists():
        for path in outputs.values():
            check_json_output(path, schema, args.overwrite)
    else:
        check_writable_parent(folder)  # made once the devices are done
    if args.report:
        report.check_output(args.report, args.overwrite)
    return outputs


def _write_results(outcomes: list[DeviceOutcome], outputs: dict[str, Path]) -> list[Path]:
    """What each device brought back, labelled with the device it came from."""
    written = []
    for outcome in outcomes:
        if outcome.ok:
            path = outputs[outcome.device.name]
            path.parent.mkdir(exist_ok=True)
            write_json(path, dict(outcome.result, device={"name": outcome.device.name,
                                                          "address": outcome.device.address}))
            written.append(path)
    return written


def exit_code(outcomes: list[DeviceOutcome]) -> int:
    failed = [o.device.name for o in outcomes if not o.ok]
    if failed:
        print(f"edgefold: {len(failed)} of {len(outcomes)} device(s) failed: {', '.join(failed)}", file=sys.stderr)
        return DEVICE_FAILED
    return 0
