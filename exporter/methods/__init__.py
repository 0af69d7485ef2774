"""Compression methods, each one module behind the :class:`Method` interface; the registry names them all,
structured pruning's (``exporter.structured``) too."""

from __future__ import annotations

from collections.abc import Mapping

from edgefold.exporter.methods.ae_shared import (
    CrossLayerAutoencoder,
    CrossLayerOptions,
    SeparatedAutoencoder,
)
from edgefold.exporter.methods.autoencoder import (
    AutoencoderOptions,
    DirectionAwareAutoencoder,
)
from edgefold.exporter.methods.base import (
    DecodedRows,
    FitContext,
    GroupFit,
    GroupMethod,
    LowRankFactors,
    Method,
    MethodOptions,
    RowDecoder,
)
from edgefold.exporter.methods.fisher import FisherWeightedSVD
from edgefold.exporter.methods.svd import TruncatedSVD
from edgefold.exporter.methods.svd_shared import SharedBasisOptions, SharedBasisSVD
from edgefold.exporter.methods.whitened import WhitenedOptions, WhitenedSVD
from edgefold.exporter.structured import PruneFFN, PruneHeads
from edgefold.runtime import EdgefoldError

METHODS: dict[str, type[Method]] = {cls.name: cls for cls in (
    TruncatedSVD, WhitenedSVD, FisherWeightedSVD, DirectionAwareAutoencoder, SharedBasisSVD, CrossLayerAutoencoder,
    SeparatedAutoencoder, PruneFFN, PruneHeads)}
#: ``--method none`` exports the model unchanged: the reference for ``validate``, the baseline for ``bench``.
NO_COMPRESSION = "none"


def get_method(name: str, options: MethodOptions | None = None) -> Method | None:
    """The method ``name`` with ``options`` (its own options class; None: the defaults), or None for ``none``.

    An unknown method, or options of another method's class, is refused in one line."""
    if name == NO_COMPRESSION:
        if options is not None:
            raise EdgefoldError(f"method {NO_COMPRESSION} takes no options (got {type(options).__name__})")
        return None
    return _method_class(name)(options)


def parse_method_options(method: str, options: Mapping[str, str]) -> MethodOptions | None:
    """``method``'s options from ``--method-option NAME=VALUE`` strings: its options class (defaults where not
    given), or None for a method without settings. An unknown method or name, or a bad value, is refused in one
    line."""
    kind = None if method == NO_COMPRESSION else _method_class(method).options_type
    if kind is None:
        if options:
            raise EdgefoldError(f"method {method} takes no options (got {', '.join(map(repr, options))})")
        return None
    return kind.parse(options, method)


def _method_class(name: str) -> type[Method]:
    if not isinstance(name, str) or name not in METHODS:
        raise EdgefoldError(f"unknown method {name!r}; choose from: {', '.join([*METHODS, NO_COMPRESSION])}")
    return METHODS[name]


__all__ = ["METHODS", "NO_COMPRESSION", "AutoencoderOptions", "CrossLayerOptions",
           "DecodedRows", "FitContext", "GroupFit", "GroupMethod", "LowRankFactors", "Method", "MethodOptions",
           "PruneFFN", "PruneHeads", "RowDecoder", "SharedBasisOptions", "TruncatedSVD", "WhitenedOptions",
           "get_method", "parse_method_options"]
