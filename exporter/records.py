"""What compression did to each targeted module: the record the manifest lists and a plan is read back from."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class ModuleRecord:
    """One targeted module: its weight shape (rows x cols, rows = tokens or output units) and what it became.

    Parameter counts are of the weight matrix and what replaces it (factors, decoder bias, kept norms, exact
    rows and their lookup); the Linear biases are kept as they are and not counted.
    """

    name: str
    kinds: tuple[str, ...]
    shape: tuple[int, int]
    rank: int | None
    params_before: int
    params_after: int
    # "factorised", "storage" (decoded at load: bytes only), "pruned" (narrower and dense: units removed, rank
    # None, the units kept in fit), or "dense" with the reason in note
    status: str
    note: str = ""
    fit: dict = field(default_factory=dict)

    @classmethod
    def dense(cls, name: str, kinds: tuple[str, ...], shape: tuple[int, int], **fields) -> ModuleRecord:
        """A module as it was (rows x cols parameters before and after), before compression changes it."""
        return cls(name, kinds, shape, None, shape[0] * shape[1], shape[0] * shape[1], "dense", **fields)

    def as_dict(self) -> dict:
        """JSON-ready: the same values the manifest file holds (lists, not tuples)."""
        record = asdict(self)
        record.update(kinds=list(self.kinds), shape=list(self.shape))
        return record
