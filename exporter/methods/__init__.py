"""Compression methods, each one module behind the :class:`Method` interface."""

from __future__ import annotations

from edgefold.runtime import EdgefoldError

from .base import LowRankFactors, Method
from .svd import TruncatedSVD

METHODS: dict[str, type[Method]] = {cls.name: cls for cls in (TruncatedSVD,)}


def get_method(name: str) -> Method:
    """A fresh instance of the method called ``name``; an unknown name is refused with the list of known ones."""
    try:
        return METHODS[name]()
    except KeyError:
        raise EdgefoldError(f"unknown method {name!r}; choose from: {', '.join(METHODS)}") from None


__all__ = ["METHODS", "LowRankFactors", "Method", "get_method"]
