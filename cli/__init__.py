"""edgefold: compress a Hugging Face transformer offline, fold it into ONNX, and measure it on the device."""

from __future__ import annotations

import argparse
import signal
import sys
from importlib import metadata

from edgefold.runtime.errors import EdgefoldError, GateFailure, one_line
from edgefold.runtime.outputs import STOP_SIGNALS
from . import bench, export, package, probes, prune, report, validate
from .args import Parser

EPILOG = ("The flow: export (needs edgefold[export]), then bench and validate on any machine, pack for a device, "
          "report to merge results; bench and validate --on ssh://... run on devices. Bad input: one line on stderr, "
          "exit 2; a failed accuracy gate: exit 1; a device that could not run (--on): exit 3. Ctrl-C, SIGTERM or SIGHUP: "
          "nothing half-written is left behind (exit 130, 143, 129).")


class Terminated(BaseException):
    """SIGTERM (what ``kill`` and ``timeout`` send) or SIGHUP (a closed terminal or SSH session), raised where the
    program is so that cleanup runs."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="edgefold", description=__doc__, epilog=EPILOG)
    parser.add_argument("--version", action=_Version, nargs=0, help="show the version and exit")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=Parser, metavar="COMMAND")
    export.add_parser(commands)
    probes.add_parser(commands)
    bench.add_parser(commands)
    validate.add_parser(commands)
    package.add_parsers(commands)
    report.add_parser(commands)
    prune.add_parsers(commands)
    return parser


class _Version(argparse.Action):
    """``--version``: edgefold's, and the onnxruntime and Python it runs on (imported only when asked)."""

    def __call__(self, parser, namespace, values, option_string=None):
        import onnxruntime

        try:
            version = metadata.version("edgefold")
        except metadata.PackageNotFoundError:
            version = "unknown"
        parser.exit(message=f"edgefold {version} (onnxruntime {onnxruntime.__version__}, "
                            f"Python {sys.version.split()[0]})\n")


def _stop(signum, frame) -> None:
    """The first stop signal stops the command where it is; later ones are ignored, so the cleanup it starts
    (staging folders removed) runs to the end."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    raise KeyboardInterrupt() if signum == signal.SIGINT else Terminated(signum)


_ALL_OR_NOTHING = "no output was left half-written"


def _error(message: str) -> int:
    """One line on stderr, whatever the message holds (a file name may carry a newline), and exit code 2."""
    print(f"edgefold: error: {one_line(message)}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # A signal ignored when we started (a background job's Ctrl-C) stays ignored.
    previous = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
    for sig, handler in previous.items():
        if handler is not signal.SIG_IGN:
            signal.signal(sig, _stop)
    try:
        return args.run(args)
    except GateFailure as error:
        print(f"edgefold: FAIL: {one_line(str(error))}", file=sys.stderr)
        return 1
    except EdgefoldError as error:
        return _error(str(error))
    except OSError as error:  # the file system said no (permissions, space, names): the user's to fix
        return _error(f"{error.strerror or error}: {error.filename}" if error.filename else str(error))
    except KeyboardInterrupt:
        print(f"edgefold: interrupted; {_ALL_OR_NOTHING}", file=sys.stderr)
        return 130
    except Terminated as stop:
        print(f"edgefold: terminated ({stop}); {_ALL_OR_NOTHING}", file=sys.stderr)
        return 128 + stop.signum
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)

