"""What every compression method is: a function from a weight matrix and a rank to a low-rank form."""

from __future__ import annotations

import math
import numbers
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any, ClassVar, Self

import torch
from torch import nn
from torch.nn import functional as F

from edgefold.exporter.planning.ranks import RANK_MULTIPLE
from edgefold.runtime import EdgefoldError

#: Calibration statistics a method may need (collected by ``calibration.statistics``, passed in ``FitContext``).
INPUT_MOMENTS = "input_moments"
INPUT_MEAN = "input_mean"
ROW_IMPORTANCE = "row_importance"
#: Statistics of the original model's input against the compressed model's (the sequential, anchored fit).
ANCHOR_MOMENTS = "anchor_moments"
ANCHOR_MEAN = "anchor_mean"


@dataclass
class LowRankFactors:
    """A (rows x cols) weight in low-rank form: ``row_scale * act(left @ right + bias)``, exact rows overriding.

    Rows are tokens for an embedding table (``left`` is the V x r table looked up per token, ``right`` the
    r x d projection) and output units for a Linear (``left`` is out x r, ``right`` r x in). Everything but
    ``left`` and ``right`` is optional:

    - ``bias`` (cols): a decoder bias added to every row (the autoencoder's);
    - ``row_scale`` (rows): rescales each decoded row to the original row's norm;
    - ``activation``: "elu" applies ELU to the decoded rows (the paper's non-linear variant; embeddings only);
    - ``exact_index`` / ``exact_rows``: rows stored exactly (the most frequent tokens); a lookup of all rows to
      their slot costs one entry per row.
    """

    left: torch.Tensor
    right: torch.Tensor
    bias: torch.Tensor | None = None
    row_scale: torch.Tensor | None = None
    activation: str | None = None
    exact_index: torch.Tensor | None = None
    exact_rows: torch.Tensor | None = None

    @property
    def rank(self) -> int:
        return self.right.shape[0]

    @property
    def num_params(self) -> int:
        """Stored numbers, the slot lookup of exact rows included (one per row)."""
        count = self.left.numel() + self.right.numel()
        for extra in (self.bias, self.row_scale, self.exact_rows):
            count += 0 if extra is None else extra.numel()
        return count + (0 if self.exact_index is None else self.left.shape[0])

    def dense(self) -> torch.Tensor:
        product = self.left @ self.right
        if self.bias is not None:
            product = product + self.bias
        if self.activation == "elu":
            product = F.elu(product)
        if self.row_scale is not None:
            product = product * self.row_scale[:, None]
        if self.exact_index is not None:
            product = product.index_copy(0, self.exact_index, self.exact_rows)
        return product

    def folded(self) -> LowRankFactors:
        """The same matrix as plain factors: ``[s*T | s] @ [P ; o]``, one rank more when there is a bias.

        Exact for the linear form; a Linear then runs as two MatMuls with nothing in between.
        """
        if self.activation is not None or self.exact_index is not None:
            raise ValueError("only linear factors without exact rows fold into plain factors")
        left, right = self.left, self.right
        if self.bias is not None:
            left = torch.cat([left, torch.ones(left.shape[0], 1, dtype=left.dtype)], dim=1)
            right = torch.cat([right, self.bias[None]], dim=0)
        if self.row_scale is not None:
            left = left * self.row_scale[:, None]
        return LowRankFactors(left.contiguous(), right.contiguous())

    def with_exact_rows(self, weight: torch.Tensor, index: torch.Tensor) -> LowRankFactors:
        """These factors with ``weight``'s rows at ``index`` stored exactly."""
        if not index.numel():
            return self
        return replace(self, exact_index=index, exact_rows=weight[index].clone())


@dataclass
class FitContext:
    """What a method may use beyond the weight.

    ``kind``: the module kind (see architectures). ``row_weights``: how much each row matters (token
    frequencies), summing to 1, or None for uniform. ``input_moments`` (cols x cols) and ``row_importance``
    (rows), float64: calibration statistics of a Linear, given where the method ``needs`` them (see
    ``calibration.statistics``).
    ``score``: validation fidelity of candidate factors (higher is better), for methods that select a
    checkpoint; computed on text the method does not fit on. ``rank_multiple``: ranks a group method chooses
    itself are multiples of it. ``details`` collects what the method reports.
    """

    row_weights: torch.Tensor | None = None
    input_moments: torch.Tensor | None = None
    input_mean: torch.Tensor | None = None
    row_importance: torch.Tensor | None = None
    anchor_moments: torch.Tensor | None = None
    anchor_mean: torch.Tensor | None = None
    score: Callable[[LowRankFactors], float] | None = None
    kind: str = "embeddings"
    seed: int = 0
    rank_multiple: int = RANK_MULTIPLE
    progress: bool = False
    details: dict = field(default_factory=dict)


class RowDecoder(nn.Module):
    """An MLP from latent codes to row directions: Linear layers, LeakyReLU between them, Tanh after the last
    (the cross-layer autoencoder's decoder). One may be shared by the weights of every layer of a kind."""

    def __init__(self, sizes: list[int], negative_slope: float = 0.01):
        super().__init__()
        self.linears = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes, sizes[1:]))
        self.negative_slope = negative_slope

    @property
    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        hidden = latent
        for i, linear in enumerate(self.linears):
            hidden = linear(hidden)
            last = i == len(self.linears) - 1
            hidden = torch.tanh(hidden) if last else F.leaky_relu(hidden, self.negative_slope)
        return hidden


@dataclass
class DecodedRows:
    """A (rows x cols) weight stored as one latent code per row, a decoder and each row's L2 norm.

    ``dense()`` decodes each row's direction and rescales it to the kept norm. This is storage compression:
    the stored form is small, but the model computes with the decoded dense weight (no FLOP saving).
    """

    latent: torch.Tensor  # rows x latent size
    decoder: RowDecoder
    norms: torch.Tensor  # rows

    @torch.no_grad()
    def dense(self) -> torch.Tensor:
        directions = self.decoder(self.latent)
        return directions / directions.norm(dim=-1, keepdim=True).clamp_min(1e-12) * self.norms[:, None]


@dataclass
class GroupFit:
    """A fitted group of same-kind matrices: one form per matrix, in order, and the stored parameters charged
    to each (tensors the group shares, stored once, split evenly over its members)."""

    forms: list[LowRankFactors | DecodedRows]
    params: list[int]


@dataclass(frozen=True)
class MethodOptions:
    """A method's settings: a frozen dataclass, every field with a default, checked in full when made.

    This base checks every value against its default's type (an integer is accepted for a float) and that floats
    are finite; each subclass adds its ranges in ``__post_init__``. ``--method-option NAME=VALUE`` strings go
    through :meth:`parse`; :meth:`changed` gives them back.
    """

    def __post_init__(self) -> None:
        for f in fields(self):
            value, kind = getattr(self, f.name), type(f.default)
            if kind is float and isinstance(value, numbers.Real) and not isinstance(value, bool):
                try:
                    value = float(value)
                except OverflowError:  # an int past float's range
                    value = math.inf
            elif kind is int and isinstance(value, numbers.Integral) and not isinstance(value, bool):
                value = int(value)
            if type(value) is not kind:
                raise EdgefoldError(f"option {f.name} takes a {kind.__name__}, not {value!r}")
            if kind is float and not math.isfinite(value):
                raise EdgefoldError(f"option {f.name} must be a finite number, not {value!r}")
            object.__setattr__(self, f.name, value)

    @classmethod
    def parse(cls, options: Mapping[str, str], method: str) -> Self:
        """From NAME=VALUE strings; an unknown name or a bad value is refused in one line."""
        known = {f.name: type(f.default) for f in fields(cls)}
        values = {}
        for name, text in options.items():
            if name not in known:
                raise EdgefoldError(f"unknown option {name!r} of method {method}; known: {', '.join(known)}")
            values[name] = _convert(name, str(text), known[name])
        return cls(**values)

    def changed(self) -> dict[str, str]:
        """The settings that differ from the defaults, as NAME=VALUE strings that :meth:`parse` reads back."""
        return {f.name: str(value).lower() if isinstance(value, bool) else str(value)
                for f in fields(self) if (value := getattr(self, f.name)) != f.default}


def _convert(name: str, text: str, kind: type):
    if kind is bool:
        if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
            raise EdgefoldError(f"option {name} takes true or false, not {text!r}")
        return text.lower() in ("true", "1", "yes")
    try:
        return kind(text)
    except ValueError:
        raise EdgefoldError(f"option {name} takes a {kind.__name__}, not {text!r}") from None


def require(options: MethodOptions, rule: str, test: Callable[[Any], bool], *names: str) -> None:
    """Refuse, in one line, the first of ``names`` whose value fails ``test`` (``rule`` says what it must be)."""
    for name in names:
        value = getattr(options, name)
        if not test(value):
            raise EdgefoldError(f"option {name} must be {rule} (got {value!r})")


def shared_charges(own: list[int], shared: int) -> list[int]:
    """Each member's own stored parameters plus an even share of ``shared`` (the remainder on the first)."""
    share, remainder = divmod(shared, len(own))
    return [count + share + (remainder if i == 0 else 0) for i, count in enumerate(own)]


class Method(ABC):
    """A training-free compressor of one weight matrix at a given rank."""

    name: ClassVar[str]
    #: "factorised": the graph computes with the compressed form (fewer bytes and FLOPs); "storage": the file
    #: holds a compressed form that is decoded to the dense weight when the session is created (bytes only).
    compression: ClassVar[str] = "factorised"
    #: Calibration statistics the method uses for Linears ("input_moments", "row_importance"); they are
    #: collected on the original model and passed through ``FitContext``.
    needs: frozenset[str] = frozenset()
    #: Frequency-aware embeddings unless the user says otherwise (the autoencoder as edgefold recommends it;
    #: SVD stays the plain baseline).
    frequency_default: ClassVar[bool] = False
    #: Trained by gradient steps (slow to fit at many ranks); the global allocation measures with SVD instead.
    iterative: ClassVar[bool] = False
    #: The class of the method's settings; None: it has none.
    options_type: ClassVar[type[MethodOptions] | None] = None

    def __init__(self, options: MethodOptions | None = None):
        kind = self.options_type
        if kind is None and options is not None:
            raise EdgefoldError(f"method {self.name} takes no options (got {type(options).__name__})")
        if kind is not None and options is not None and not isinstance(options, kind):
            raise EdgefoldError(f"method {self.name} takes {kind.__name__}, not {type(options).__name__}")
        self.options = kind() if kind is not None and options is None else options

    @property
    def sequential(self) -> bool:
        """Whether each Linear is fitted to its input in the model compressed so far (``anchor_*`` statistics
        in its context), the Linears compressed in the order the model runs them."""
        return False

    def extra_params(self, rows: int, cols: int, kind: str) -> int:
        """Stored parameters beyond rank * (rows + cols) for a module of ``kind``; the budget planner subtracts
        them, so every method is compared at the same number of stored parameters."""
        return 0

    def check_module(self, kind: str, tied: bool = False) -> None:
        """Refuse a module the method's output cannot be folded into (raises EdgefoldError); ``tied``: the
        module's weight is shared with an output head."""

    @abstractmethod
    def fit(self, weight: torch.Tensor, rank: int, context: FitContext) -> LowRankFactors:
        """Factor ``weight`` (rows x cols, float32) at ``rank``."""


class GroupMethod(Method):
    """Fits the same-kind matrices of all layers together: ``compress_`` groups the targeted modules by kind
    (a fused projection such as GPT-2's c_attn is its own kind) and shape, and calls :meth:`fit_group` once per
    group instead of :meth:`fit` per module."""

    def fit(self, weight: torch.Tensor, rank: int, context: FitContext) -> LowRankFactors:
        raise TypeError(f"method {self.name} fits groups of matrices: call fit_group")

    @abstractmethod
    def fit_group(self, weights: list[torch.Tensor], ratio: float, context: FitContext) -> GroupFit | None:
        """Compress ``weights`` (same shape, rows x cols, float32) so that together they keep at most 1/ratio of
        their parameters, everything stored counted; None when no form within that budget exists."""
