"""Compression methods, each one module behind the :class:`Method` interface."""

from __future__ import annotations

from edgefold.runtime import EdgefoldError

from .ae_shared import CrossLayerAutoencoder, CrossLayerOptions, SeparatedAutoencoder
from .autoencoder import AutoencoderOptions, DirectionAwareAutoencoder
from .base import DecodedRows, FitContext, GroupFit, GroupMethod, LowRankFactors, Method, RowDecoder
from .fisher import FisherWeightedSVD
from .svd import TruncatedSVD
from .svd_shared import SharedBasisOptions, SharedBasisSVD
from .whitened import WhitenedSVD

METHODS: dict[str, type[Method]] = {cls.name: cls for cls in (
    TruncatedSVD, WhitenedSVD, FisherWeightedSVD, DirectionAwareAutoencoder, SharedBasisSVD, CrossLayerAutoencoder,
    SeparatedAutoencoder)}
#: ``--method none`` exports the model unchanged: the reference for ``validate``, the baseline for ``bench``.
NO_COMPRESSION = "none"
#: Frequency-aware embeddings by default: the autoencoder as edgefold recommends it; SVD as the plain baseline.
FREQUENCY_DEFAULT = {"svd": False, "ae": True, NO_COMPRESSION: False,
                     "svd-whitened": False, "svd-fisher": False, "svd-shared": False, "ae-shared": False,
                     "ae-separated": False}


def get_method(name: str, options: dict[str, str] | None = None) -> Method | None:
    """A method configured from NAME=VALUE options (None for ``none``); an unknown name or option is refused."""
    if name == NO_COMPRESSION and not options:
        return None
    if name not in METHODS:
        raise EdgefoldError(f"unknown method {name!r}; choose from: {', '.join([*METHODS, NO_COMPRESSION])}")
    if name == "ae":
        return DirectionAwareAutoencoder(AutoencoderOptions.parse(options or {}))
    if issubclass(METHODS[name], CrossLayerAutoencoder):
        return METHODS[name](CrossLayerOptions.parse(options or {}, name))
    if name == SharedBasisSVD.name:
        return SharedBasisSVD(SharedBasisOptions.parse(options or {}, name))
    if options:
        raise EdgefoldError(f"method {name} takes no options (got {', '.join(options)})")
    return METHODS[name]()


__all__ = ["FREQUENCY_DEFAULT", "METHODS", "NO_COMPRESSION", "AutoencoderOptions", "CrossLayerOptions",
           "DecodedRows", "FitContext", "GroupFit", "GroupMethod", "LowRankFactors", "Method", "RowDecoder",
           "TruncatedSVD", "get_method"]
