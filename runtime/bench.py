"""``edgefold bench``: latency, memory and start-up of an exported folder, each configuration in its own process."""

from __future__ import annotations

import itertools
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from .errors import EdgefoldError
from .folder import ExportedFolder
from .session import make_feed
from .system import machine_context
from .texts import shipped_texts

SCHEMA = "edgefold.bench"
SCHEMA_VERSION = 1
_LEVELS = {"disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL, "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
           "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED, "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}


@dataclass(frozen=True)
class BenchSettings:
    """The grid and the care taken: warm-up runs, then at least ``iterations`` runs and ``min_seconds``."""

    threads: tuple[int, ...] = (1, os.cpu_count() or 1)
    batch_sizes: tuple[int, ...] = (1,)
    seq_lengths: tuple[int, ...] = (128,)
    warmup: int = 10
    iterations: int = 10
    min_seconds: float = 10.0
    inputs: str = "text"  # "text": the folder's tokenizer on shipped text; "synthetic": random ids
    optimization: str = "all"
    arena: bool = True
    spinning: bool = True

    def __post_init__(self) -> None:
        if self.inputs not in ("text", "synthetic"):
            raise EdgefoldError(f"inputs must be text or synthetic, not {self.inputs!r}")
        if self.optimization not in _LEVELS:
            raise EdgefoldError(f"optimization must be one of {', '.join(_LEVELS)}")
        if min(self.threads + self.batch_sizes + self.seq_lengths) < 1 or self.warmup < 0 or self.iterations < 1:
            raise EdgefoldError("threads, batch sizes, sequence lengths and iterations must be at least 1")

    def grid(self) -> list[tuple[int, int, int]]:
        return list(itertools.product(dict.fromkeys(self.threads), self.batch_sizes, self.seq_lengths))


def bench(folder: str | Path, settings: BenchSettings = BenchSettings(), compare: str | Path | None = None,
          emulated: bool = False, progress: bool = True) -> dict:
    """Measure ``folder`` (and ``compare``, alternately) over the settings' grid; returns the JSON document."""
    models = [ExportedFolder.open(folder)] + ([ExportedFolder.open(compare)] if compare else [])
    for model in models:
        if settings.inputs == "text":
            model.encoder()  # refuses a missing or mismatched tokenizer before any worker starts
        for length in settings.seq_lengths:
            model.check_length(length)
    results = []
    for threads, batch, length in settings.grid():
        row = {"threads": threads, "batch": batch, "seq_length": length, "models": {}}
        for model in models:
            row["models"][model.name] = _run_worker([model], settings, threads, batch, length)[model.name]
        if compare:
            alternating = _run_worker(models, settings, threads, batch, length)
            for model in models:
                row["models"][model.name]["alternating"] = alternating[model.name]["latency_ms"]
            a, b = (alternating[m.name]["latency_ms"]["p50"] for m in models)
            row["p50_ratio"] = b / a
            row["peak_rss_ratio"] = (row["models"][models[1].name]["peak_rss_bytes"]
                                     / row["models"][models[0].name]["peak_rss_bytes"])
        results.append(row)
        if progress:
            print(f"edgefold bench: threads={threads} batch={batch} seq={length} done", file=sys.stderr, flush=True)
    return {
        "schema": SCHEMA, "schema_version": SCHEMA_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine_context(emulated),
        "settings": asdict(settings),
        "models": {m.name: {"path": str(m.path), "task": m.task, "bytes": m.bytes_on_disk(),
                            "manifest": _manifest_summary(m)} for m in models},
        "compare": [m.name for m in models] if compare else None,
        "results": results,
    }


def _manifest_summary(model: ExportedFolder) -> dict | None:
    m = model.manifest
    return None if m is None else {"method": m["method"], "ratio": m["ratio"], "targets": m["targets"],
                                   "compression": m.get("compression")}


def _run_worker(models: list[ExportedFolder], settings: BenchSettings, threads: int, batch: int,
                length: int) -> dict:
    """One configuration in a fresh process, so its peak RSS is its own and nothing is warm from before."""
    job = {"folders": [str(m.path) for m in models], "settings": asdict(settings), "threads": threads,
           "batch": batch, "seq_length": length}
    process = subprocess.Popen([sys.executable, "-m", "edgefold.runtime.bench", json.dumps(job)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stdout, stderr = process.communicate()
    if process.returncode != 0:
        raise EdgefoldError(f"benchmark worker failed: {stderr.strip().splitlines()[-1] if stderr.strip() else ''}")
    return json.loads(stdout)


def _session(path: Path, settings: BenchSettings, threads: int) -> tuple[ort.InferenceSession, float]:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.graph_optimization_level = _LEVELS[settings.optimization]
    options.enable_cpu_mem_arena = settings.arena
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if settings.spinning else "0")
    start = time.perf_counter()
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return session, time.perf_counter() - start


def _inputs(model: ExportedFolder, settings: BenchSettings, batch: int, length: int) -> tuple[np.ndarray, np.ndarray]:
    if settings.inputs == "synthetic":
        vocab = model.config.get("vocab_size", 1000)
        ids = np.random.default_rng(0).integers(min(1000, vocab // 2), vocab, size=(batch, length))
        return ids.astype(np.int64), np.ones((batch, length), dtype=np.int64)
    # real token ids of exactly `length`: shipped sentences joined until long enough
    text = " ".join(shipped_texts("evaluation.txt"))
    ids, mask = model.encoder().encode([text] * batch, max_length=length)
    return ids, mask


def _summary(latencies_ms: list[float], batch: int) -> dict:
    values = np.array(latencies_ms)
    return {"iterations": len(values), "p50": float(np.percentile(values, 50)),
            "p90": float(np.percentile(values, 90)), "p95": float(np.percentile(values, 95)),
            "p99": float(np.percentile(values, 99)), "mean": float(values.mean()),
            "stdev": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
            "sequences_per_s": float(batch * 1000 / values.mean())}


def _worker(job: dict) -> dict:
    """Inside the worker: load, first inference, warm-up, then the timed runs, models taking turns."""
    settings = BenchSettings(**{k: tuple(v) if isinstance(v, list) else v for k, v in job["settings"].items()})
    models = [ExportedFolder.open(f) for f in job["folders"]]
    runs, out = [], {}
    for model in models:
        session, created = _session(model.graph, settings, job["threads"])
        feed = make_feed(session, *_inputs(model, settings, job["batch"], job["seq_length"]))
        start = time.perf_counter()
        session.run(None, feed)
        out[model.name] = {"session_create_s": created, "first_inference_ms": (time.perf_counter() - start) * 1000}
        runs.append((model.name, session, feed, []))
    for _ in range(settings.warmup):
        for _, session, feed, _times in runs:
            session.run(None, feed)
    started = time.perf_counter()
    while len(runs[0][3]) < settings.iterations or time.perf_counter() - started < settings.min_seconds:
        for _, session, feed, times in runs:
            start = time.perf_counter()
            session.run(None, feed)
            times.append((time.perf_counter() - start) * 1000)
    for name, _, _, times in runs:
        out[name]["latency_ms"] = _summary(times, job["batch"])
        out[name]["peak_rss_bytes"] = peak_rss_bytes()
    return out


def peak_rss_bytes() -> int:
    """This process's peak resident memory since it started its program.

    Linux keeps ``ru_maxrss`` across exec, so a worker started by a large parent would report the parent's
    peak; ``VmHWM`` belongs to the address space exec replaced, so it is the worker's own.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, KiB elsewhere


def format_table(document: dict) -> str:
    """A readable table of a bench document."""
    machine = document["machine"]
    emulated = " [EMULATED: timings are not device speed]" if machine["emulated"] else ""
    lines = [f"{machine['cpu']} ({machine['architecture']}, {machine['cores']} cores){emulated}, "
             f"onnxruntime {machine['onnxruntime']}",
             f"{'model':24} {'thr':>3} {'batch':>5} {'seq':>4} {'create s':>8} {'first ms':>8} {'p50 ms':>8} "
             f"{'p90 ms':>8} {'p99 ms':>8} {'seq/s':>8} {'RSS MB':>7}"]
    for row in document["results"]:
        for name, m in row["models"].items():
            lat = m["latency_ms"]
            lines.append(f"{name[:24]:24} {row['threads']:>3} {row['batch']:>5} {row['seq_length']:>4} "
                         f"{m['session_create_s']:>8.2f} {m['first_inference_ms']:>8.1f} {lat['p50']:>8.2f} "
                         f"{lat['p90']:>8.2f} {lat['p99']:>8.2f} {lat['sequences_per_s']:>8.1f} "
                         f"{m['peak_rss_bytes'] / 2**20:>7.0f}")
        if "p50_ratio" in row:
            first, second = document["compare"]
            lines.append(f"  {second} / {first}: p50 {row['p50_ratio']:.3f} (measured alternately), "
                         f"peak RSS {row['peak_rss_ratio']:.3f}")
    return "\n".join(lines)


if __name__ == "__main__":  # the worker process
    print(json.dumps(_worker(json.loads(sys.argv[1]))))
