"""The search on a real Ray cluster (a head started on this machine, no mock): the same result as local processes,
per-module measurements bitwise equal, Ray's retries for a dead worker, one line for a task that fails for good
or an address that does not answer, and nothing written either way."""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path

import pytest
import torch

from edgefold.exporter.distributed import RAY_EXTRA_HINT, RayExecutor, executor_for, local_head
from edgefold.exporter.search import candidates
from edgefold.exporter.search.search import _shipped_data
from edgefold.exporter.search.sensitivity import measure_space
from edgefold.exporter.search.splits import Splits
from edgefold.exporter.source.loading import inspect_model, load_model, load_tokenizer
from edgefold.runtime import EdgefoldError
from edgefold.cli import main
from edgefold.runtime.manifest import read_manifest


def _free_port() -> int:
    """An ephemeral port (above Ray's worker ports, 10002-19999, which a head's port must not fall in)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="session")
def ray_cluster() -> str:
    """A Ray head on 127.0.0.1 with 2 CPUs for the session (only its own processes stopped after); its address."""
    pytest.importorskip("ray", reason='Ray is not installed (pip install "edgefold[distributed]")')
    with local_head(cpus=2) as address:
        yield address


def _frontier(out: Path) -> list[dict]:
    """Every verified candidate as the search saw it, less what depends on the machine (folders, timings)."""
    rows = json.loads((out / "frontier.json").read_text())["candidates"]
    return [{key: value for key, value in row.items() if key != "latency_ms"} for row in rows]


@pytest.mark.slow
def test_the_search_on_the_cluster_writes_the_model_local_processes_write(ray_cluster, tiny_model, tmp_path):
    """End to end through the CLI: the same chosen plan, the same candidates with the same metrics, the same
    bytes, with two workers here and two tasks at once there."""
    model = str(tiny_model("roberta-feature-extraction"))
    common = ["--quiet", "--search", "full", "--workers", "2", "--max-candidates", "5"]
    assert main(["export", model, str(tmp_path / "local"), *common]) == 0
    assert main(["export", model, str(tmp_path / "ray"), *common, "--ray", ray_cluster]) == 0
    local, ray = read_manifest(tmp_path / "local"), read_manifest(tmp_path / "ray")
    assert ray["plan"] == local["plan"] and ray["source"] == local["source"]
    assert ray["search"]["chosen"] == local["search"]["chosen"]
    assert ray["search"]["selection"] == local["search"]["selection"]
    assert ray["search"]["check"] == local["search"]["check"]
    assert _frontier(tmp_path / "ray") == _frontier(tmp_path / "local")
    assert (tmp_path / "ray" / "model.onnx").read_bytes() == (tmp_path / "local" / "model.onnx").read_bytes()


@pytest.mark.slow
def test_each_modules_measurement_and_fit_on_the_cluster_equals_the_local_one(ray_cluster, tiny_model):
    """Every option's loss equal, every fitted factor bitwise equal: the tasks run with the driver's threads."""
    source = inspect_model(str(tiny_model("roberta-feature-extraction")))
    model, tokenizer, splits = load_model(source), load_tokenizer(source), Splits.of(_shipped_data())
    local = measure_space(model, tokenizer, splits, factorise_linears=True, seed=3, progress=False)
    with RayExecutor(ray_cluster, workers=2) as executor:
        ray = measure_space(model, tokenizer, splits, factorise_linears=True, seed=3, progress=False,
                            executor=executor)
    assert ray.options == local.options
    assert any(option.loss > 0 for options in local.options.values() for option in options)
    assert ray.fitted.keys() == local.fitted.keys() and len(local.fitted) >= 5  # the embeddings and Linears
    for key, factors in local.fitted.items():
        for name, value in vars(factors).items():
            other = getattr(ray.fitted[key], name)
            assert torch.equal(value, other) if isinstance(value, torch.Tensor) else value == other, (key, name)


@pytest.mark.slow
def test_a_worker_that_dies_is_retried_and_a_task_that_fails_is_named_in_one_line(ray_cluster, tmp_path):
    marker = tmp_path / "died-once"

    def die_once(shared: int, item: int) -> int:
        if item == 1 and not marker.exists():
            marker.touch()
            os._exit(1)  # the worker process dies; Ray retries the task on another
        return shared + item

    def fail_on_two(shared: int, item: int) -> int:
        if item == 2:
            raise ValueError("no good\nsecond line")
        return item

    with RayExecutor(ray_cluster, workers=2) as executor:
        assert executor.map(die_once, [0, 1, 2, 3], 10, labels=list("abcd")) == [10, 11, 12, 13]
        assert marker.exists()
        with pytest.raises(EdgefoldError) as failure:
            executor.map(fail_on_two, [0, 1, 2, 3], None, labels=[f"item {i}" for i in range(4)])
    assert str(failure.value) == "item 2 failed on the Ray cluster: ValueError: no good"


@pytest.mark.slow
def test_a_candidate_that_fails_on_the_cluster_fails_the_export_and_writes_nothing(ray_cluster, tiny_model,
                                                                                   tmp_path, monkeypatch, capsys):
    def broken(shipped, job):  # runs on the cluster's workers (cloudpickle sends it by value)
        raise RuntimeError(f"{job.label} cannot be exported here")

    monkeypatch.setattr(candidates, "verify_shipped", broken)
    out = tmp_path / "out"
    code = main(["export", str(tiny_model("roberta-feature-extraction")), str(out), "--quiet", "--workers", "2",
                 "--max-candidates", "4", "--ray", ray_cluster])
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and line.startswith("edgefold: error: candidate ")
    assert "failed on the Ray cluster: RuntimeError: " in line and "cannot be exported here" in line
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_an_address_that_does_not_answer_fails_at_once_in_one_line(tiny_model, tmp_path, capsys):
    out, started = tmp_path / "out", time.monotonic()
    code = main(["export", str(tiny_model("roberta-feature-extraction")), str(out), "--quiet",
                 "--ray", f"127.0.0.1:{_free_port()}"])
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and "cannot reach the Ray cluster at 127.0.0.1:" in line and "refused" in line
    assert time.monotonic() - started < 30 and not out.exists()
    with pytest.raises(EdgefoldError, match="--ray takes HOST:PORT"):
        with executor_for("nowhere", None):
            pass


def test_without_ray_installed_the_error_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # what an import of a missing package does
    with pytest.raises(EdgefoldError) as missing:
        with RayExecutor("auto"):
            pass
    assert str(missing.value) == RAY_EXTRA_HINT == 'Ray is not installed: pip install "edgefold[distributed]"'

