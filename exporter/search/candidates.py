"""Verifying a candidate: one plan in, an exported folder and its metrics out.

``verify`` is a plain function of a picklable job, so the same unit of work runs inline, in local worker
processes, or on a cluster. Each candidate goes through the whole export (fold, parity against torch,
quantisation) and then ``edgefold validate``'s metrics and gates against the original on the selection split.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from edgefold.exporter.calibration.corpus import Calibration
from edgefold.exporter.config import CompressionConfig
from edgefold.exporter.graph.config import GraphConfig
from edgefold.exporter.methods import LowRankFactors
from edgefold.exporter.pipeline import export
from edgefold.exporter.planning.plan import Plan
from edgefold.runtime import EdgefoldError
from edgefold.runtime.dataset import EvalData
from edgefold.runtime.validate import validate


@dataclass(frozen=True)
class Job:
    """Everything a worker needs to verify one plan (no open handles: it crosses process boundaries)."""

    label: str
    model: str
    task: str
    plan: Plan
    fitted: dict[str, LowRankFactors]
    calibration: Calibration
    folder: Path
    reference: Path
    data: EvalData
    gates: tuple[str, ...]
    trust_remote_code: bool = False
    threads: int = 1


def verify(job: Job) -> dict:
    """Export ``job.plan`` into ``job.folder`` and validate it; an export that fails its own checks is a result
    (``passed`` False, with the reason), not an exception."""
    torch.set_num_threads(job.threads)
    result = {"label": job.label, "folder": str(job.folder)}
    try:
        manifest = export(job.model, job.folder, CompressionConfig(plan=job.plan),
                          GraphConfig(optimize="none", precisions=job.plan.precisions), task=job.task,
                          trust_remote_code=job.trust_remote_code, progress=False, calibration=job.calibration,
                          fitted=job.fitted)
        report = validate(job.folder, job.reference, job.data, list(job.gates))
    except Exception as error:  # noqa: BLE001  one candidate's failure (a kernel, a quantiser) is a result
        return {**result, "passed": False, "error": f"{type(error).__name__}: {error}", "bytes": None,
                "metrics": {}, "gates": []}
    return {**result, "passed": report["passed"], "bytes": manifest["totals"]["bytes_after"],
            "metrics": report["metrics"], "gates": report["gates"]}


class Workers:
    """Where jobs run: inline for one worker, else in a pool of spawned processes kept for the whole search
    (torch does not fork safely once its thread pools exist, and each spawn pays torch's import once)."""

    def __init__(self, workers: int):
        self.pool = None
        if workers > 1:
            context = multiprocessing.get_context("spawn")
            self.pool = concurrent.futures.ProcessPoolExecutor(workers, mp_context=context)

    def __enter__(self) -> Workers:
        return self

    def __exit__(self, kind, error, traceback) -> None:
        if self.pool is None:
            return
        if error is not None:  # Ctrl-C, SIGTERM, a dead worker: stop the exports now, not when they finish
            for process in list(getattr(self.pool, "_processes", {}).values()):
                process.terminate()
        self.pool.shutdown(wait=error is None, cancel_futures=True)

    def run(self, jobs: list[Job]) -> list[dict]:
        """Every job's result, in the order of ``jobs`` (whichever finishes first)."""
        if self.pool is None:
            return [verify(job) for job in jobs]
        try:
            return [future.result() for future in [self.pool.submit(verify, job) for job in jobs]]
        except concurrent.futures.process.BrokenProcessPool:
            raise EdgefoldError("a worker process died while verifying candidates (out of memory?); try fewer "
                                "--workers") from None


def threads_per_worker(workers: int) -> int:
    return max(1, (os.cpu_count() or 1) // max(workers, 1))
