"""Text shipped with edgefold, so that verification never needs a network."""

from __future__ import annotations

from importlib import resources

VERIFY_TEXT = "verify.txt"


def shipped_texts(name: str = VERIFY_TEXT) -> list[str]:
    """Non-empty lines of a text file shipped in ``edgefold.runtime/data``."""
    text = resources.files("edgefold.runtime").joinpath("data", name).read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip()]
