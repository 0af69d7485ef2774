"""Verifying a candidate: one plan in, an exported folder and its metrics out.

``verify`` is a plain function of picklable inputs, so the same unit of work runs inline, in local worker
processes, or on a cluster (see ``edgefold.exporter.distributed``). Each candidate goes through the whole export
(fold, parity against torch, quantisation) and then ``edgefold validate``'s metrics and gates against the original
on the selection split.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path

import torch

from edgefold.exporter.calibration.corpus import Calibration
from edgefold.exporter.checks.manifest import write_manifest
from edgefold.exporter.config import CompressionConfig
from edgefold.exporter.distributed import Executor, Folder
from edgefold.exporter.graph.config import GraphConfig
from edgefold.exporter.methods import LowRankFactors
from edgefold.exporter.onnx.reuse import ExportedGraphs
from edgefold.exporter.pipeline import export
from edgefold.exporter.planning.plan import Plan
from edgefold.runtime.dataset import EvalData
from edgefold.runtime.manifest import read_manifest
from edgefold.runtime.validate import validate


@dataclass(frozen=True)
class Inputs:
    """What every candidate of a search shares (sent to each worker once): the model, the calibration text, the
    reference graph, the selection split with its gates, and the second domain's selection half with its own."""

    model: str
    task: str
    calibration: Calibration
    reference: Path
    data: EvalData
    gates: tuple[str, ...]
    trust_remote_code: bool = False
    domain: EvalData | None = None
    domain_gates: tuple[str, ...] = ()


@dataclass(frozen=True)
class Job:
    """One candidate: its plan with its factors, how its 4-bit weights are chosen (rtn, gptq), and where its
    folder goes (no open handles: it crosses process boundaries)."""

    label: str
    plan: Plan
    fitted: dict[str, LowRankFactors]
    folder: Path
    threads: int = 1
    algorithm: str = "rtn"


#: This process's exported graphs: candidates that differ only in their precisions share one export.
_EXPORTED = ExportedGraphs()


def verify(inputs: Inputs, job: Job) -> dict:
    """Export ``job.plan`` into ``job.folder`` and validate it; an export that fails its own checks is a result
    (``passed`` False, with the reason), not an exception."""
    torch.set_num_threads(job.threads)
    result = {"label": job.label, "folder": str(job.folder)}
    try:
        manifest = export(inputs.model, job.folder, CompressionConfig(plan=job.plan),
                          GraphConfig(optimize="none", precisions=job.plan.precisions, algorithm=job.algorithm),
                          task=inputs.task,
                          trust_remote_code=inputs.trust_remote_code, progress=False,
                          calibration=inputs.calibration, fitted=job.fitted, reuse=_EXPORTED)
        report = validate(job.folder, inputs.reference, inputs.data, list(inputs.gates))
        domain = None if inputs.domain is None else \
            validate(job.folder, inputs.reference, inputs.domain, list(inputs.domain_gates), verify=False)
    except Exception as error:  # noqa: BLE001  one candidate's failure (a kernel, a quantiser) is a result
        return {**result, "passed": False, "error": f"{type(error).__name__}: {error}", "bytes": None,
                "metrics": {}, "gates": [], "domain": None}
    return {**result, "passed": report["passed"] and (domain is None or domain["passed"]),
            "bytes": manifest["totals"]["bytes_after"], "metrics": report["metrics"], "gates": report["gates"],
            "domain": None if domain is None else {key: domain[key] for key in ("metrics", "gates", "passed")}}


@dataclass(frozen=True)
class Shipped:
    """``Inputs`` for workers that may not see this machine's files: the model and reference folders as bytes,
    written once per worker process into a folder of its own."""

    inputs: Inputs
    model: Folder
    reference: Folder

    @classmethod
    def of(cls, inputs: Inputs, model_path: Path) -> Shipped:
        return cls(inputs, Folder.read(model_path), Folder.read(inputs.reference))

    @cached_property
    def local(self) -> Inputs:
        root = Path(tempfile.mkdtemp(prefix="edgefold-worker-"))
        atexit.register(shutil.rmtree, root, True)
        return replace(self.inputs, model=str(self.model.write(root / "model")),
                       reference=self.reference.write(root / "reference"))


def verify_shipped(shipped: Shipped, job: Job) -> dict:
    """``verify`` on a worker elsewhere: the candidate's folder is written in scratch space and comes back as bytes
    (``files``), for :func:`verify_all` to write where the search expects it."""
    with tempfile.TemporaryDirectory(prefix="edgefold-candidate-") as scratch:
        folder = Path(scratch) / "candidate"
        result = verify(shipped.local, replace(job, folder=folder))
        files = Folder.read(folder) if folder.is_dir() else None
    return {**result, "folder": str(job.folder), "files": files}


def shared_inputs(executor: Executor, inputs: Inputs, model_path: Path) -> Inputs | Shipped:
    """What ``executor``'s workers get once: the inputs, with their folders as bytes where paths do not reach."""
    return inputs if executor.shares_files else Shipped.of(inputs, model_path)


def verify_all(executor: Executor, shared: Inputs | Shipped, jobs: list[Job]) -> list[dict]:
    """Every job's result, in the order of ``jobs``; a candidate verified elsewhere is written back here, its
    manifest naming the model as the user gave it (not the worker's copy)."""
    labels = [f"candidate {job.label}" for job in jobs]
    if isinstance(shared, Inputs):
        return executor.map(verify, jobs, shared, labels=labels)
    results = executor.map(verify_shipped, jobs, shared, labels=labels)
    for result in results:
        files = result.pop("files")
        if files is not None:
            folder = files.write(Path(result["folder"]))
            manifest = read_manifest(folder)
            manifest["source"]["model"] = shared.inputs.model
            write_manifest(folder, manifest)
    return results
