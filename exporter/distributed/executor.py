"""The interface both executors implement, and the choice between them."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol, TypeVar

from edgefold.exporter.distributed.cluster import RayExecutor
from edgefold.exporter.distributed.local import LocalExecutor

Shared, Item, Result = TypeVar("Shared"), TypeVar("Item"), TypeVar("Result")


class Executor(Protocol):
    """Runs ``fn(shared, item)`` for every item, ``workers`` at a time, and returns the results in item order.

    ``shares_files``: whether every task sees this machine's files (local processes do; a cluster's nodes may
    not, so paths must travel as bytes, see :class:`~edgefold.exporter.distributed.folders.Folder`)."""

    workers: int
    shares_files: bool

    def __enter__(self) -> Executor: ...

    def __exit__(self, kind: Any, error: Any, traceback: Any) -> None: ...

    def map(self, fn: Callable[[Shared, Item], Result], items: Sequence[Item], shared: Shared, *,
            labels: Sequence[str], cpus: int = 1) -> list[Result]:
        """``labels`` name the items in errors; ``cpus``: the threads each call uses (a cluster reserves that many
        CPUs per task, at most a node's)."""
        ...


def executor_for(ray: str | None, workers: int | None) -> Executor:
    """A Ray cluster's executor for an ADDRESS (or "auto"); else local processes (``workers``: default 1)."""
    return LocalExecutor(workers or 1) if ray is None else RayExecutor(ray, workers)
