"""Work on a Ray cluster: one task per item, the shared inputs put in Ray's object store once.

Ray is optional (``pip install "edgefold[distributed]"``) and imported only here, when an executor connects. A
worker that dies is retried by Ray (``max_retries``); a task that fails for good fails the whole map with one
line naming it, and the tasks still running are cancelled.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from edgefold.runtime import EdgefoldError

RAY_EXTRA_HINT = 'Ray is not installed: pip install "edgefold[distributed]"'
#: Attempts after the first when a task's worker process (or its node) dies. A Python exception is not retried:
#: the same inputs would raise it again.
TASK_RETRIES = 3
#: Seconds to wait for the cluster's address to answer before calling it unreachable (Ray itself waits a minute).
CONNECT_TIMEOUT_S = 5.0


class RayExecutor:
    """Tasks on the Ray cluster at ``address`` (host:port, ray://host:port, or "auto": the one started on this
    machine). Connects on enter and disconnects on exit, unless Ray was already connected (then it is left as it
    was). ``workers``: tasks running at once (None: the cluster's CPUs)."""

    shares_files = False

    def __init__(self, address: str, workers: int | None = None):
        self.address, self.requested = address, workers
        self.workers = workers or 1
        self._connected = False
        self._shared: dict[int, tuple[Any, Any]] = {}  # id(shared) -> (shared, its object ref): put once

    def __enter__(self) -> RayExecutor:
        ray = _import_ray()
        if not ray.is_initialized():
            _check_reachable(self.address)
            try:
                ray.init(address=self.address, logging_level=logging.WARNING, log_to_driver=False)
            except (ConnectionError, RuntimeError, ValueError) as error:
                raise EdgefoldError(f"cannot connect to the Ray cluster at {self.address}: {_first_line(error)}") \
                    from None
            self._connected = True
        self.workers = self.requested or max(1, int(ray.cluster_resources().get("CPU", 1)))
        return self

    def __exit__(self, kind: Any, error: Any, traceback: Any) -> None:
        self._shared.clear()
        if self._connected:
            _import_ray().shutdown()
            self._connected = False

    def map(self, fn: Callable, items: Sequence, shared: Any, *, labels: Sequence[str], cpus: int = 1) -> list:
        ray = _import_ray()
        reserved = min(cpus, _largest_node(ray))  # a task no node can hold would wait forever; it runs, more slowly
        reference = self._put(shared)
        task = ray.remote(_call).options(num_cpus=reserved, max_retries=TASK_RETRIES, retry_exceptions=False)
        # the reference travels inside a list, so that Ray does not fetch the inputs for every task: each worker
        # process fetches them once (see _call)
        pending: dict[Any, int] = {}
        results: list = [None] * len(items)
        for index, item in enumerate(items):
            if len(pending) >= self.workers:
                self._collect(ray, pending, results, labels)
            pending[task.remote(fn, reference.hex(), [reference], item)] = index
        while pending:
            self._collect(ray, pending, results, labels)
        return results

    def _put(self, shared: Any) -> Any:
        if id(shared) not in self._shared:
            self._shared[id(shared)] = (shared, _import_ray().put(shared))
        return self._shared[id(shared)][1]

    def _collect(self, ray: Any, pending: dict, results: list, labels: Sequence[str]) -> None:
        """Wait for one task; a failure cancels the others and names the task."""
        (done,), _ = ray.wait(list(pending), num_returns=1)
        index = pending.pop(done)
        try:
            results[index] = ray.get(done)
        except ray.exceptions.RayError as error:
            for other in pending:
                ray.cancel(other, force=True)
            cause = getattr(error, "cause", None) or error
            raise EdgefoldError(f"{labels[index]} failed on the Ray cluster: {type(cause).__name__}: "
                                f"{_first_line(cause)}") from None


#: In each Ray worker process: the shared inputs of the map it is serving, fetched once (key: their ref).
_SHARED: dict[str, Any] = {}


def _call(fn: Callable, key: str, boxed: list, item: Any) -> Any:
    if key not in _SHARED:
        _SHARED.clear()  # one map's inputs at a time: a finished search's model is let go
        _SHARED[key] = _import_ray().get(boxed[0])
    return fn(_SHARED[key], item)


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise EdgefoldError(RAY_EXTRA_HINT) from None
    return ray


def _check_reachable(address: str) -> None:
    """A host:port that does not answer fails here in seconds, before any work (Ray would retry for a minute)."""
    if address == "auto":
        return  # Ray finds the cluster started on this machine, or says at once that there is none
    host, _, port = address.split("://")[-1].rpartition(":")
    if not host or not port.isdigit():
        raise EdgefoldError(f"--ray takes HOST:PORT, ray://HOST:PORT or auto (got {address!r})")
    try:
        socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as error:
        raise EdgefoldError(f"cannot reach the Ray cluster at {address}: {error.strerror or error}") from None


def _largest_node(ray: Any) -> float:
    return max((node["Resources"].get("CPU", 0.0) for node in ray.nodes() if node["Alive"]), default=1.0)


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


@contextmanager
def local_head(cpus: int, object_store_bytes: int = 200 * 2**20, timeout_s: float = 120.0) -> Iterator[str]:
    """A Ray head on this machine for the length of the block; its address (127.0.0.1:PORT).

    It runs in the foreground (``ray start --block``) in a process group of its own, and only that group is
    stopped afterwards: ``ray stop`` would stop every Ray process on the machine, a cluster of the user's too.
    """
    with socket.socket() as probe:  # an ephemeral port: above Ray's worker ports (10002-19999), as a head's must be
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    head = subprocess.Popen([str(Path(sys.executable).with_name("ray")), "start", "--head", f"--port={port}",
                             "--node-ip-address=127.0.0.1", f"--num-cpus={cpus}",
                             f"--object-store-memory={object_store_bytes}", "--disable-usage-stats",
                             "--include-dashboard=false", "--block"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        _wait_for(head, port, timeout_s)
        yield f"127.0.0.1:{port}"
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait()


def _wait_for(head: subprocess.Popen, port: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if head.poll() is not None:
            said = head.stderr.read().decode().strip().splitlines() or ["no output"]
            raise EdgefoldError(f"the Ray head did not start: {said[-1]}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.2)
    raise EdgefoldError(f"the Ray head did not answer on port {port} within {timeout_s:g} s")
