"""Verifying a candidate: one plan in, an exported folder and its metrics out.

``verify`` is a plain function of a picklable job, so the same unit of work runs inline, in local worker
processes, or on a cluster. Each candidate goes through the whole export (fold, parity against torch,
quantisation) and then ``edgefold validate``'s metrics and gates against the original on the selection split.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from edgefold.exporter.calibration.corpus import Calibration
from edgefold.exporter.methods import LowRankFactors
from edgefold.exporter.planning.plan import Plan
from edgefold.runtime import EdgefoldError
from edgefold.runtime.dataset import EvalData


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
    import torch

    from edgefold.exporter.config import CompressionConfig
    from edgefold.exporter.graph.config import GraphConfig
    from edgefold.exporter.pipeline import export
    from edgefold.runtime.validate import validate

    torch.set_num_threads(job.threads)
    result = {"label": job.label, "folder": str(job.folder)}
    try:
        manifest = export(job.model, job.folder, CompressionConfig(plan=job.plan),
                          GraphConfig(optimize="none", precisions=job.plan.precisions), task=job.task,
                          trust_remote_code=job.trust_remote_code, progress=False, calibration=job.calibration,
                          fitted=job.fitted)
    except EdgefoldError as error:
        return {**result, "passed": False, "error": str(error), "bytes": None, "metrics": {}, "gates": []}
    report = validate(job.folder, job.reference, job.data, list(job.gates))
    return {**result, "passed": report["passed"], "bytes": manifest["totals"]["bytes_after"],
            "metrics": report["metrics"], "gates": report["gates"]}


def run_jobs(jobs: list[Job], workers: int) -> Iterator[dict]:
    """Results as they finish: inline for one worker, else in as many spawned processes (torch does not fork
    safely once its thread pools exist)."""
    if workers <= 1 or len(jobs) <= 1:
        yield from map(verify, jobs)
        return
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(min(workers, len(jobs)), mp_context=context) as pool:
        futures = [pool.submit(verify, job) for job in jobs]
        try:
            for future in concurrent.futures.as_completed(futures):
                yield future.result()
        except BaseException:
            for future in futures:
                future.cancel()
            raise


def threads_per_worker(workers: int) -> int:
    return max(1, (os.cpu_count() or 1) // max(workers, 1))
