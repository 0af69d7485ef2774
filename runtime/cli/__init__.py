"""edgefold: compress a Hugging Face transformer offline, fold it into ONNX, and measure it on the device."""

from __future__ import annotations

import argparse
import signal
import sys
from importlib import metadata

from ..errors import EdgefoldError
from . import bench, export, package, report, validate
from .args import Parser

EPILOG = ("The flow: export (needs edgefold[export]), then bench and validate on any machine, pack for a device, "
          "report to merge results. Bad input: one line on stderr, exit 2. Ctrl-C or SIGTERM: nothing "
          "half-written is left behind.")


class Terminated(BaseException):
    """SIGTERM (what ``kill`` and ``timeout`` send), raised where the program is so that cleanup runs."""


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="edgefold", description=__doc__, epilog=EPILOG)
    parser.add_argument("--version", action="version", version=_version())
    commands = parser.add_subparsers(dest="command", required=True, parser_class=Parser, metavar="COMMAND")
    export.add_parser(commands)
    bench.add_parser(commands)
    validate.add_parser(commands)
    package.add_parsers(commands)
    report.add_parser(commands)
    return parser


def _version() -> str:
    import onnxruntime

    try:
        version = metadata.version("edgefold")
    except metadata.PackageNotFoundError:
        version = "unknown"
    return f"edgefold {version} (onnxruntime {onnxruntime.__version__}, Python {sys.version.split()[0]})"


def _stop(signum, frame) -> None:
    """The first Ctrl-C or SIGTERM stops the command where it is; later ones are ignored, so the cleanup it
    starts (staging folders removed) runs to the end."""
    for sig in _STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    raise KeyboardInterrupt() if signum == signal.SIGINT else Terminated()


_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # A signal ignored when we started (a background job's Ctrl-C) stays ignored.
    previous = {sig: signal.getsignal(sig) for sig in _STOP_SIGNALS}
    for sig, handler in previous.items():
        if handler is not signal.SIG_IGN:
            signal.signal(sig, _stop)
    try:
        return args.run(args)
    except EdgefoldError as error:
        print(f"edgefold: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("edgefold: interrupted; nothing was written", file=sys.stderr)
        return 130
    except Terminated:
        print("edgefold: terminated; nothing was written", file=sys.stderr)
        return 143
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


if __name__ == "__main__":
    sys.exit(main())
