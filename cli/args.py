"""What every subcommand shares: the parser class and the argument types that check a flag's syntax and range."""

from __future__ import annotations

import argparse
import math


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line like every other edgefold error, and no flag is abbreviated
    (``--target`` must not silently mean ``--targets``)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        self.exit(2, f"edgefold: error: {message} (see: {self.prog} --help)\n")


def _number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def ratio(text: str) -> float:
    value = _number(text)
    if not value > 1:
        raise argparse.ArgumentTypeError(f"must be greater than 1 (R = 5 keeps a fifth), got {text}")
    return value


def non_negative(text: str) -> float:
    value = _number(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


def confidence(text: str) -> float:
    value = _number(text)
    if not 0.5 <= value < 1:
        raise argparse.ArgumentTypeError(f"a confidence is a level from 0.5 up to (not including) 1, got {text}")
    return value


def whole(minimum: int):
    """A whole number of at least ``minimum``."""

    def parse(text: str) -> int:
        if not text.strip().lstrip("+-").isdigit() or int(text) < minimum:
            raise argparse.ArgumentTypeError(f"expected a whole number of at least {minimum}, got {text!r}")
        return int(text)

    parse.__name__ = "whole number"
    return parse


positive = whole(1)


def positive_list(text: str) -> tuple[int, ...]:
    """Comma-separated whole numbers of at least 1, each once."""
    parts = [part.strip() for part in text.split(",")]
    if not all(part.isdigit() and int(part) >= 1 for part in parts):
        raise argparse.ArgumentTypeError(f"expected comma-separated whole numbers of at least 1, got {text!r}")
    return tuple(dict.fromkeys(int(part) for part in parts))


def option(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    return name.strip().replace("-", "_"), value.strip()


def add_no_verify(parser: argparse.ArgumentParser) -> None:
    """``--no-verify``: use a folder whose files no longer match its edgefold.json (edited on purpose)."""
    parser.add_argument("--no-verify", action="store_true",
                        help="skip checking the folder's files, sizes and SHA-256 against its edgefold.json")


def add_export_flags(parser: argparse.ArgumentParser) -> None:
    """What every command that writes an exported folder takes: seed, parity, overwrite, remote code, quiet."""
    parser.add_argument("--seed", type=whole(0), default=0)
    parser.add_argument("--parity-atol", type=non_negative, default=None,
                        help="largest ONNX-vs-torch difference accepted (default 1e-3)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace OUTPUT_DIR if edgefold wrote it (it holds an edgefold.json) or it is empty")
    parser.add_argument("--trust-remote-code", action="store_true",
                        help="allow a model's own Python code to run (only for models you trust)")
    parser.add_argument("--quiet", action="store_true", help="no progress output")
