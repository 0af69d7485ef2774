"""Latency for the search: probe graphs per operator shape and precision, their measured table (cached per
machine), and the median latency of a whole exported graph to fit the fixed cost against.

The probes are written with onnx and quantised by the project's own quantiser, so a probe runs the kernels the
exported model will; timing is the runtime's (``edgefold.runtime.optable``, ``edgefold.runtime.bench``).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgefold.runtime import EdgefoldError
from edgefold.runtime.optable import (
    INDEX,
    OPS,
    PRECISIONS,
    PROBES_SCHEMA,
    ROUNDS,
    SCHEMA_VERSION,
    LatencyTable,
    time_probes,
)
from edgefold.runtime.outputs import write_json
from edgefold.runtime.system import machine_context

#: Bumped when probe graphs change, so tables cached from the old ones are measured again.
PROBE_FORMAT = 1
OPSET = 17
#: The torch module name the quantiser is told about; its node is ``/probe/<op>``, as the exporter names nodes.
MODULE = "probe"
CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "edgefold" / "latency-tables"


@dataclass(frozen=True, order=True)
class OpShape:
    """An operator of the model: MatMul of a [.., k] input by a k x n weight, or Gather from a k x n table."""

    op: str
    k: int
    n: int

    def __post_init__(self) -> None:
        if self.op not in OPS:
            raise EdgefoldError(f"unknown op {self.op!r}; known: {', '.join(OPS)}")
        for name in ("k", "n"):
            value = getattr(self, name)
            if not (isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value >= 1):
                raise EdgefoldError(f"{self.op} {name} must be a whole number of at least 1, not {value!r}")
            object.__setattr__(self, name, int(value))


def _checked(shapes: Iterable[OpShape], precisions: Iterable[str], tokens: int) -> tuple[list, list]:
    shapes, precisions = list(dict.fromkeys(shapes)), list(dict.fromkeys(precisions))
    if not shapes or not all(isinstance(s, OpShape) for s in shapes):
        raise EdgefoldError("give at least one OpShape to probe")
    unknown = [p for p in precisions if p not in PRECISIONS]
    if not precisions or unknown:
        raise EdgefoldError(f"unknown precision {unknown[0] if unknown else None!r}; known: {', '.join(PRECISIONS)}")
    if not (isinstance(tokens, int) and not isinstance(tokens, bool) and tokens >= 1):
        raise EdgefoldError(f"tokens must be a whole number of at least 1, not {tokens!r}")
    return shapes, precisions


def _probe_graph(shape: OpShape, rng: np.random.Generator) -> onnx.ModelProto:
    """One node named as the exporter names a module's node, its weight a 2-D float initializer."""
    weight = numpy_helper.from_array((rng.standard_normal((shape.k, shape.n)) * 0.05).astype(np.float32),
                                     f"{MODULE}.weight")
    dims = ["batch_size", "sequence_length"]
    if shape.op == "MatMul":
        source = helper.make_tensor_value_info("hidden_states", TensorProto.FLOAT, [*dims, shape.k])
        inputs = ["hidden_states", weight.name]
    else:
        source = helper.make_tensor_value_info("input_ids", TensorProto.INT64, dims)
        inputs = [weight.name, "input_ids"]
    node = helper.make_node(shape.op, inputs, ["output"], name=f"/{MODULE}/{shape.op}")
    result = helper.make_tensor_value_info("output", TensorProto.FLOAT, [*dims, shape.n])
    graph = helper.make_graph([node], f"probe_{shape.op}_{shape.k}x{shape.n}", [source], [result], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="edgefold")
    onnx.checker.check_model(model)
    return model


def write_probes(folder: Path, shapes: Iterable[OpShape], precisions: Iterable[str], tokens: int = 128) -> Path:
    """Write one probe graph per (shape, precision) and their ``probes.json`` into ``folder`` (new or empty);
    returns ``folder``, ready for :func:`edgefold.runtime.optable.time_probes` (here or on a board)."""
    shapes, precisions = _checked(shapes, precisions, tokens)
    folder = Path(folder)
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise EdgefoldError(f"{folder} exists and is not an empty folder: probes go into a folder of their own")
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    probes = []
    with tempfile.TemporaryDirectory(prefix="edgefold-probe-") as scratch:
        for shape in shapes:
            model = _probe_graph(shape, rng)
            source = Path(scratch) / f"{shape.op}_{shape.k}x{shape.n}.onnx"
            onnx.save(model, str(source))
            for precision in precisions:
                name = f"{shape.op.lower()}_{shape.k}x{shape.n}_{precision}.onnx"
                _write_probe(source, folder / name, precision)
                probes.append({"file": name, "op": shape.op, "k": shape.k, "n": shape.n, "precision": precision})
    write_json(folder / INDEX, {"schema": PROBES_SCHEMA, "schema_version": SCHEMA_VERSION, "tokens": tokens,
                                "probes": probes})
    return folder


def _write_probe(source: Path, output: Path, precision: str) -> None:
    if precision == "fp32":  # the unquantised graph is the fp32 probe
        output.write_bytes(source.read_bytes())
        return
    # Imported here: the quantiser pulls onnxruntime's quantisation tools, which fp32-only callers never need.
    from edgefold.exporter.graph.quantize import quantize_modules

    quantize_modules(source, output, {MODULE: precision})


def _cache_key(shapes: list[OpShape], precisions: list[str], tokens: int, threads: int) -> str:
    machine = machine_context()
    what = {"format": PROBE_FORMAT, "shapes": [[s.op, s.k, s.n] for s in sorted(shapes)],
            "precisions": sorted(precisions), "tokens": tokens, "threads": threads,
            # the CPU and the kernels that run on it; not the host name: the same CPU gives the same table
            **{name: machine[name] for name in ("cpu", "architecture", "features", "onnxruntime", "emulated")}}
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:24]


def _cached(path: Path, shapes: list[OpShape], precisions: list[str], tokens: int, threads: int
            ) -> LatencyTable | None:
    """The cached table if it reads and covers every request; a damaged or partial cache is measured again."""
    if not path.is_file():
        return None
    try:
        table = LatencyTable.read(path)
    except EdgefoldError:
        return None
    wanted = [(s.op, s.k, s.n, p) for s in shapes for p in precisions]
    if table.tokens != tokens or table.threads != threads or not all(key in table for key in wanted):
        return None
    return table


def measure_table(shapes: Iterable[OpShape], precisions: Iterable[str], tokens: int = 128, threads: int = 1,
                  cache: Path | None = CACHE, rounds: int = ROUNDS, progress: bool = True) -> LatencyTable:
    """The latency table of ``shapes`` x ``precisions`` on this machine: probes written and timed, or the table
    a previous call cached in ``cache`` (None: no cache) for the same request on the same CPU."""
    shapes, precisions = _checked(shapes, precisions, tokens)
    path = Path(cache) / f"latency-{_cache_key(shapes, precisions, tokens, threads)}.json" if cache else None
    if path is not None and (table := _cached(path, shapes, precisions, tokens, threads)) is not None:
        return table
    with tempfile.TemporaryDirectory(prefix="edgefold-probes-") as scratch:
        folder = write_probes(Path(scratch) / "probes", shapes, precisions, tokens)
        document = time_probes(folder, threads=threads, rounds=rounds, progress=progress)
    if path is None:
        return LatencyTable.from_document(document)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json(path, document)
    except OSError as error:  # the cache saves time only: a read-only home must not stop the search
        print(f"edgefold: not caching the latency table in {path.parent}: {error.strerror or error}",
              file=sys.stderr)
        return LatencyTable.from_document(document)
    return LatencyTable.from_document(document, path)


def model_latency(path: Path, tokens: int = 128, threads: int = 1, rounds: int = 20) -> float:
    """Median milliseconds of a whole graph (an exported folder, or an .onnx file) at batch 1 x ``tokens``,
    measured by ``edgefold bench``'s own worker process on synthetic token ids."""
    with _as_folder(Path(path)) as folder:
        return model_latencies([folder], tokens, threads, rounds)[0]


def model_latencies(folders: list[Path], tokens: int = 128, threads: int = 1, rounds: int = 20) -> list[float]:
    """Median milliseconds of each exported folder, measured together (taking turns) at batch 1 x ``tokens``."""
    from edgefold.runtime.bench import BenchSettings, latencies

    settings = BenchSettings(threads=(threads,), batch_sizes=(1,), seq_lengths=(tokens,), warmup=3,
                             iterations=rounds, min_seconds=0.0, inputs="synthetic")
    return latencies(folders, settings)


@contextmanager
def _as_folder(path: Path) -> Iterator[Path]:
    """The folder ``edgefold bench`` measures: ``path`` itself, the folder of a ``model.onnx``, or a scratch folder
    linking another graph file (and its external data) as ``model.onnx``."""
    if path.is_dir() or path.name == "model.onnx":
        yield path if path.is_dir() else path.parent
        return
    if not path.is_file():
        raise EdgefoldError(f"no such graph or folder: {path}")
    with tempfile.TemporaryDirectory(prefix="edgefold-graph-") as scratch:
        (Path(scratch) / "model.onnx").symlink_to(path.resolve())
        for data in path.parent.glob(f"{path.name}*"):  # name.onnx.data, name.onnx_data: found beside the link
            if data != path:
                (Path(scratch) / data.name).symlink_to(data.resolve())
        yield Path(scratch)
