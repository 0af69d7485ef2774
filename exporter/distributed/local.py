"""Local work: inline for one worker, else a pool of spawned processes kept for the executor's life."""

from __future__ import annotations

import concurrent.futures
import functools
import multiprocessing
import os
from collections.abc import Callable, Sequence
from typing import Any

from edgefold.runtime import EdgefoldError


class LocalExecutor:
    """Inline for one worker, else spawned processes (torch does not fork safely once its thread pools exist, and
    each spawn pays torch's import once). ``shared`` is pickled with every item, as any process pool does."""

    shares_files = True

    def __init__(self, workers: int):
        self.workers = workers
        self.pool: concurrent.futures.ProcessPoolExecutor | None = None

    def __enter__(self) -> LocalExecutor:
        if self.workers > 1:
            context = multiprocessing.get_context("spawn")
            self.pool = concurrent.futures.ProcessPoolExecutor(
                self.workers, mp_context=context, initializer=_share_cores,
                initargs=(threads_per_worker(self.workers),))
        return self

    def __exit__(self, kind: Any, error: Any, traceback: Any) -> None:
        if self.pool is None:
            return
        if error is not None:  # Ctrl-C, SIGTERM, a dead worker: stop the work now, not when it finishes
            for process in list(getattr(self.pool, "_processes", {}).values()):
                process.terminate()
        self.pool.shutdown(wait=error is None, cancel_futures=True)
        self.pool = None

    def map(self, fn: Callable, items: Sequence, shared: Any, *, labels: Sequence[str], cpus: int = 1) -> list:
        call = functools.partial(fn, shared)
        if self.pool is None:
            return [call(item) for item in items]
        futures = [self.pool.submit(call, item) for item in items]
        try:
            return [future.result() for future in futures]
        except concurrent.futures.process.BrokenProcessPool:
            raise EdgefoldError(f"a worker process died while running {_span(labels)} (out of memory?); try fewer "
                                "--workers") from None


def threads_per_worker(workers: int) -> int:
    """Each of ``workers`` processes' share of this machine's cores (at least one)."""
    return max(1, (os.cpu_count() or 1) // max(workers, 1))


def _share_cores(threads: int) -> None:
    """A worker's share of the cores, for what reads ``OMP_NUM_THREADS`` (onnxruntime's sessions through
    ``runtime.session``: left alone, each worker's sessions would take every core and spin on it)."""
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))


def _span(labels: Sequence[str]) -> str:
    return labels[0] if len(labels) == 1 else f"{labels[0]} .. {labels[-1]}"
