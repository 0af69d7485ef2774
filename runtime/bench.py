"""``edgefold bench``: latency, memory and start-up of an exported folder, each configuration in its own process."""

from __future__ import annotations

import itertools
import json
import numbers
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from .errors import EdgefoldError
from .folder import ExportedFolder
from .session import create_session, make_feed
from .system import machine_context
from .texts import shipped_texts

SCHEMA = "edgefold.bench"
SCHEMA_VERSION = 1
_LEVELS = {"disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL, "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
           "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED, "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}


_MAX_THREADS = max(16, 4 * (os.cpu_count() or 1))
_MAX_SECONDS = 3600.0


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
        # Limits catch typos (a stray zero, inf), not real experiments: an hour per configuration at most.
        for name, top in (("threads", _MAX_THREADS), ("batch_sizes", 4096), ("seq_lengths", 2**20)):
            values = getattr(self, name)
            if not (isinstance(values, (tuple, list)) and values and all(_whole(v, 1, top) for v in values)):
                raise EdgefoldError(f"{name.replace('_', ' ')} must be whole numbers from 1 to {top}, not {values!r}")
            object.__setattr__(self, name, tuple(int(v) for v in values))
        for name, low, top in (("warmup", 0, 10_000), ("iterations", 1, 100_000)):
            if not _whole(getattr(self, name), low, top):
                raise EdgefoldError(f"{name} must be a whole number from {low} to {top}, not {getattr(self, name)!r}")
            object.__setattr__(self, name, int(getattr(self, name)))
        seconds = self.min_seconds
        if not (isinstance(seconds, numbers.Real) and not isinstance(seconds, bool) and 0 <= seconds <= _MAX_SECONDS):
            raise EdgefoldError(f"min_seconds must be from 0 to {_MAX_SECONDS:g}, not {seconds!r}")
        object.__setattr__(self, "min_seconds", float(seconds))
        if self.inputs not in ("text", "synthetic"):
            raise EdgefoldError(f"inputs must be text or synthetic, not {self.inputs!r}")
        if self.optimization not in tuple(_LEVELS):
            raise EdgefoldError(f"optimization must be one of {', '.join(_LEVELS)}, not {self.optimization!r}")
        if not (isinstance(self.arena, bool) and isinstance(self.spinning, bool)):
            raise EdgefoldError("arena and spinning must be true or false")

    def grid(self) -> list[tuple[int, int, int]]:
        return list(itertools.product(*(dict.fromkeys(v) for v in (self.threads, self.batch_sizes, self.seq_lengths))))


def _whole(value: object, low: int, top: int) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and low <= value <= top


def model_labels(folders: list[Path]) -> list[str]:
    """Distinct names for folders: their own names, with as many parent folders as it takes to tell them apart."""
    parts = [Path(f).resolve().parts for f in folders]
    for depth in range(1, max(map(len, parts)) + 1):
        labels = ["/".join(p[-depth:]).lstrip("/") or "/" for p in parts]
        if len(set(labels)) == len(labels):
            return labels
    raise EdgefoldError(f"the same folder twice: {', '.join(map(str, folders))}")


def bench(folder: str | Path, settings: BenchSettings = BenchSettings(), compare: str | Path | None = None,
          emulated: bool = False, progress: bool = True, verify: bool = True) -> dict:
    """Measure ``folder`` (and ``compare``, alternately) over the settings' grid; returns the JSON document.
    ``verify``: each folder checked against its manifest first (files, sizes, SHA-256).

    Models are keyed by :func:`model_labels` (the folder name unless two names collide) everywhere in it.
    """
    models = [ExportedFolder.open(f, verify) for f in (folder, compare) if f is not None]
    if compare is not None and models[0].path.resolve() == models[1].path.resolve():
        raise EdgefoldError(f"{compare} is the folder being measured: compare two different folders")
    labels = model_labels([m.path for m in models])
    for model in models:
        if settings.inputs == "text":
            model.encoder()  # refuses a missing or mismatched tokenizer before any worker starts
        for length in settings.seq_lengths:
            model.check_length(length)
        _check_loads(model)
    results = []
    for threads, batch, length in settings.grid():
        row = {"threads": threads, "batch": batch, "seq_length": length, "models": {}}
        for label, model in zip(labels, models):
            row["models"][label] = _run_worker([model], settings, threads, batch, length)[0]
        if compare is not None:
            alternating = _run_worker(models, settings, threads, batch, length)
            for label, measured in zip(labels, alternating):
                row["models"][label]["alternating"] = measured["latency_ms"]
            row["p50_ratio"] = _ratio(alternating[1]["latency_ms"]["p50"], alternating[0]["latency_ms"]["p50"])
            row["peak_rss_ratio"] = _ratio(*(row["models"][label]["peak_rss_bytes"] for label in labels[::-1]))
        results.append(row)
        if progress:
            print(f"edgefold bench: threads={threads} batch={batch} seq={length} done", file=sys.stderr, flush=True)
    return {
        "schema": SCHEMA, "schema_version": SCHEMA_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine_context(emulated),
        "settings": asdict(settings),
        "models": {label: {"name": m.name, "path": str(m.path), "task": m.task, "bytes": m.bytes_on_disk(),
                           "manifest": _manifest_summary(m)} for label, m in zip(labels, models)},
        "compare": labels if compare is not None else None,
        "results": results,
    }


def latencies(folders: list[str | Path], settings: BenchSettings) -> list[float]:
    """Median latency (ms) of each folder at the settings' first configuration, all measured in one worker with
    the folders taking turns, so that a noisy spell of the machine slows them alike: for ranking many models."""
    models = [ExportedFolder.open(folder) for folder in folders]
    threads, batch, length = settings.grid()[0]
    return [measured["latency_ms"]["p50"] for measured in _run_worker(models, settings, threads, batch, length)]


def _ratio(numerator: float, denominator: float) -> float | None:
    return numerator / denominator if denominator > 0 else None


def _check_loads(model: ExportedFolder) -> None:
    """A quick session (no graph optimisation): a graph onnxruntime cannot load, or cannot be fed, fails here."""
    options = ort.SessionOptions()
    options.graph_optimization_level = _LEVELS["disable"]
    session = create_session(model.graph, options)
    make_feed(session, np.zeros((1, 1), np.int64), np.ones((1, 1), np.int64))


def _manifest_summary(model: ExportedFolder) -> dict | None:
    m = model.manifest
    return None if m is None else {"method": m["method"], "ratio": m.get("ratio"), "targets": m["targets"],
                                   "compression": m.get("compression")}


def _run_worker(models: list[ExportedFolder], settings: BenchSettings, threads: int, batch: int,
                length: int) -> list[dict]:
    """One configuration in a fresh process, so its peak RSS is its own and nothing is warm from before."""
    job = {"folders": [str(m.path) for m in models], "settings": asdict(settings), "threads": threads,
           "batch": batch, "seq_length": length}
    process = subprocess.Popen([sys.executable, "-m", "edgefold.runtime.bench", json.dumps(job)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        stdout, stderr = process.communicate()
    except BaseException:  # Ctrl-C or SIGTERM in the parent: the worker stops too, not orphaned
        process.kill()
        process.wait()
        raise
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
    session = create_session(path, options)
    return session, time.perf_counter() - start


def _inputs(model: ExportedFolder, settings: BenchSettings, batch: int, length: int) -> tuple[np.ndarray, np.ndarray]:
    if settings.inputs == "synthetic":
        vocab = model.config.get("vocab_size") or 1000
        ids = np.random.default_rng(0).integers(min(1000, vocab // 2), vocab, size=(batch, length))
        return ids.astype(np.int64), np.ones((batch, length), dtype=np.int64)
    # real token ids of exactly `length`: shipped sentences joined until long enough
    text = " ".join(shipped_texts("evaluation.txt"))
    ids, mask = model.encoder().encode([text] * batch, max_length=length)
    return ids, mask


def _summary(latencies_ms: list[float], batch: int) -> dict:
    values = np.array(latencies_ms)
    mean = float(values.mean())
    return {"iterations": len(values), "p50": float(np.percentile(values, 50)),
            "p90": float(np.percentile(values, 90)), "p95": float(np.percentile(values, 95)),
            "p99": float(np.percentile(values, 99)), "mean": mean,
            "stdev": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
            "sequences_per_s": batch * 1000 / mean if mean > 0 else None}


def _worker(job: dict) -> list[dict]:
    """Inside the worker: load, first inference, warm-up, then the timed runs, models taking turns."""
    settings = BenchSettings(**job["settings"])
    models = [ExportedFolder.open(f, verify=False) for f in job["folders"]]  # checked by the parent
    runs, out = [], []
    for model in models:
        session, created = _session(model.graph, settings, job["threads"])
        feed = make_feed(session, *_inputs(model, settings, job["batch"], job["seq_length"]))
        start = time.perf_counter()
        session.run(None, feed)
        out.append({"session_create_s": created, "first_inference_ms": (time.perf_counter() - start) * 1000})
        runs.append((session, feed, []))
    for _ in range(settings.warmup):
        for session, feed, _times in runs:
            session.run(None, feed)
    started = time.perf_counter()
    while len(runs[0][2]) < settings.iterations or time.perf_counter() - started < settings.min_seconds:
        for session, feed, times in runs:
            start = time.perf_counter()
            session.run(None, feed)
            times.append((time.perf_counter() - start) * 1000)
    for measured, (_, _, times) in zip(out, runs):
        measured["latency_ms"] = _summary(times, job["batch"])
        measured["peak_rss_bytes"] = peak_rss_bytes()
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
    width = max([5, *map(len, document["models"])])
    lines = [(f"{machine['cpu']} ({machine['architecture']}, {machine['cores']} cores){emulated}, "
              f"onnxruntime {machine['onnxruntime']}"),
             (f"{'model':{width}} {'thr':>3} {'batch':>5} {'seq':>4} {'create s':>8} {'first ms':>8} "
              f"{'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'seq/s':>8} {'RSS MB':>7}")]
    for row in document["results"]:
        for name, m in row["models"].items():
            lat = m["latency_ms"]
            lines.append(f"{name:{width}} {row['threads']:>3} {row['batch']:>5} {row['seq_length']:>4} "
                         f"{m['session_create_s']:>8.2f} {m['first_inference_ms']:>8.1f} {lat['p50']:>8.2f} "
                         f"{lat['p90']:>8.2f} {lat['p99']:>8.2f} {_number(lat['sequences_per_s'], '8.1f')} "
                         f"{m['peak_rss_bytes'] / 2**20:>7.0f}")
        if "p50_ratio" in row:
            first, second = document["compare"]
            lines.append(f"  {second} / {first}: p50 {_number(row['p50_ratio'], '.3f')} (measured alternately), "
                         f"peak RSS {_number(row['peak_rss_ratio'], '.3f')}")
    return "\n".join(lines)


def _number(value: float | None, spec: str) -> str:
    return format(value, spec) if value is not None else format("n/a", ">" + spec.split(".")[0])


if __name__ == "__main__":  # the worker process
    try:
        print(json.dumps(_worker(json.loads(sys.argv[1]))))
    except EdgefoldError as error:
        sys.exit(str(error))  # the parent shows the last line of stderr
