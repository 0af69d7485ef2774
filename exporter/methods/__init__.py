"""Compression methods, each one module behind the :class:`Method` interface."""

from __future__ import annotations

from edgefold.runtime import EdgefoldError

from .autoencoder import AutoencoderOptions, DirectionAwareAutoencoder
from .base import FitContext, LowRankFactors, Method
from .svd import TruncatedSVD

METHODS: dict[str, type[Method]] = {cls.name: cls for cls in (TruncatedSVD, DirectionAwareAutoencoder)}
#: Frequency-aware embeddings by default: the autoencoder as edgefold recommends it; SVD as the plain baseline.
FREQUENCY_DEFAULT = {"svd": False, "ae": True}


def get_method(name: str, options: dict[str, str] | None = None) -> Method:
    """A method configured from NAME=VALUE options; an unknown name or option is refused in one line."""
    if name not in METHODS:
        raise EdgefoldError(f"unknown method {name!r}; choose from: {', '.join(METHODS)}")
    if name == "ae":
        return DirectionAwareAutoencoder(AutoencoderOptions.parse(options or {}))
    if options:
        raise EdgefoldError(f"method {name} takes no options (got {', '.join(options)})")
    return METHODS[name]()


__all__ = ["FREQUENCY_DEFAULT", "METHODS", "AutoencoderOptions", "FitContext", "LowRankFactors", "Method",
           "get_method"]
