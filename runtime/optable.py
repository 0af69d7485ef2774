"""A per-operator latency table: small probe graphs (one MatMul or Gather each) timed on this CPU.

A search predicts a candidate's latency as the sum of its operators' entries plus a fixed cost, so the table
must be measured where the model will run (the host, or an ARM board with only the runtime installed).
"""

from __future__ import annotations

import math
import numbers
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from .errors import EdgefoldError
from .jsonfile import read_json_object
from .session import create_session, run
from .system import machine_context

PROBES_SCHEMA = "edgefold.op-probes"
TABLE_SCHEMA = "edgefold.latency-table"
SCHEMA_VERSION = 1
INDEX = "probes.json"
OPS = ("MatMul", "Gather")
PRECISIONS = ("fp32", "int8", "int4-32", "int4-128", "int2-32")
#: Rounds by default: every probe is timed once a round, and the table keeps each probe's median.
ROUNDS = 25

Key = tuple[str, int, int, str]


def _whole(value: object, low: int = 1) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= low


def _check_entry(entry: object, where: str) -> Key:
    """(op, k, n, precision) of a probe or table entry; anything else is one line naming ``where``."""
    if not isinstance(entry, dict):
        raise EdgefoldError(f"{where} must be a JSON object, not {type(entry).__name__}")
    op, k, n, precision = (entry.get(name) for name in ("op", "k", "n", "precision"))
    if op not in OPS:
        raise EdgefoldError(f"{where}: unknown op {op!r}; known: {', '.join(OPS)}")
    if not (_whole(k) and _whole(n)):
        raise EdgefoldError(f"{where}: k and n must be whole numbers of at least 1, not {k!r} and {n!r}")
    if precision not in PRECISIONS:
        raise EdgefoldError(f"{where}: unknown precision {precision!r}; known: {', '.join(PRECISIONS)}")
    return op, int(k), int(n), precision


def _check_header(document: dict, path: Path, schema: str) -> None:
    if document.get("schema") != schema:
        raise EdgefoldError(f"{path} is not an {schema} file (schema {document.get('schema')!r})")
    if document.get("schema_version") != SCHEMA_VERSION:
        raise EdgefoldError(f"{path} has {schema} version {document.get('schema_version')!r}; "
                            f"this edgefold reads version {SCHEMA_VERSION}")
    if not _whole(document.get("tokens")):
        raise EdgefoldError(f"{path}: tokens must be a whole number of at least 1, not {document.get('tokens')!r}")


def _describe(key: Key) -> str:
    op, k, n, precision = key
    return f"{op} {k}x{n} at {precision}"


# ---------------------------------------------------------------------------------------------------- probes


def read_probes(folder: str | Path) -> tuple[int, list[tuple[Key, Path]]]:
    """(tokens, [(key, graph file)]) of a probe folder, every file checked to exist inside it."""
    folder = Path(folder)
    if not folder.is_dir():
        raise EdgefoldError(f"no such probe folder: {folder}")
    index = folder / INDEX
    if not index.is_file():
        raise EdgefoldError(f"{folder} holds no {INDEX}: not a probe folder")
    document = read_json_object(index, strict=True)
    _check_header(document, index, PROBES_SCHEMA)
    probes = _keyed(document, "probes", index)
    return int(document["tokens"]), [(key, _probe_file(folder, probe.get("file"), f"{index}: {_describe(key)}"))
                                     for key, probe in probes.items()]


def _keyed(document: dict, field: str, where: object) -> dict[Key, dict]:
    """The document's non-empty list ``field`` of entries, each checked and keyed, no key twice."""
    entries = document.get(field)
    if not isinstance(entries, list) or not entries:
        raise EdgefoldError(f"{where}: {field} must be a non-empty list")
    keyed: dict[Key, dict] = {}
    for number, entry in enumerate(entries):
        key = _check_entry(entry, f"{where}: {field[:-1]} {number}")
        if key in keyed:
            raise EdgefoldError(f"{where}: {_describe(key)} appears twice")
        keyed[key] = entry
    return keyed


def _probe_file(folder: Path, name: object, where: str) -> Path:
    """The probe's graph, which must lie inside the folder: an index is data, and may come from elsewhere."""
    if not isinstance(name, str) or not name:
        raise EdgefoldError(f"{where}: file must be a file name, not {name!r}")
    relative = Path(name)
    if relative.is_absolute() or ".." in relative.parts:
        raise EdgefoldError(f"{where}: file {name!r} must be a path inside {folder}")
    path = folder / relative
    if not path.resolve().is_relative_to(folder.resolve()):  # a symbolic link out of the folder
        raise EdgefoldError(f"{where}: file {name!r} leads outside {folder}")
    if not path.is_file():
        raise EdgefoldError(f"{where}: no such file {path}")
    return path


def _session(path: Path, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    # Probes take turns: a pool left spinning after its run would steal the cores the next probe needs.
    if threads > 1:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return create_session(path, options)


def _feed(session: ort.InferenceSession, key: Key, tokens: int, path: Path) -> dict[str, np.ndarray]:
    op, k, _, _ = key
    inputs = session.get_inputs()
    if len(inputs) != 1:
        raise EdgefoldError(f"{path} takes {len(inputs)} inputs; a probe takes one")
    rng = np.random.default_rng(0)
    if op == "MatMul":
        value = rng.standard_normal((1, tokens, k), dtype=np.float32)
    else:  # ids spread over the whole table, as real text touches rows far apart
        value = rng.integers(0, k, size=(1, tokens), dtype=np.int64)
    return {inputs[0].name: value}


def time_probes(folder: str | Path, threads: int = 1, rounds: int = ROUNDS, emulated: bool = False,
                progress: bool = True) -> dict:
    """Time every probe of ``folder`` with onnxruntime on the CPU; returns the latency-table document.

    Each round runs every probe once, in turn, so a slow spell of a noisy machine hits all probes alike; an
    entry is its probe's median over the rounds.
    """
    if not (_whole(threads) and _whole(rounds)):
        raise EdgefoldError(f"threads and rounds must be whole numbers of at least 1, not {threads!r}, {rounds!r}")
    tokens, probes = read_probes(folder)
    runs = []
    for key, path in probes:
        session = _session(path, threads)
        feed = _feed(session, key, tokens, path)
        run(session, None, feed)  # warm-up, and a probe that cannot run on its inputs fails here, in one line
        runs.append((session, feed))
    if progress:
        print(f"edgefold bench: {len(runs)} probes loaded, {rounds} rounds", file=sys.stderr, flush=True)
    times = np.empty((rounds, len(runs)))
    for number in range(rounds):
        for column, (session, feed) in enumerate(runs):
            start = time.perf_counter()
            session.run(None, feed)
            times[number, column] = (time.perf_counter() - start) * 1000
        if progress and (number + 1) % 10 == 0 and number + 1 < rounds:
            print(f"edgefold bench: round {number + 1}/{rounds}", file=sys.stderr, flush=True)
    medians = np.median(times, axis=0)
    entries = [{"op": op, "k": k, "n": n, "precision": precision, "ms": float(ms)}
               for ((op, k, n, precision), _), ms in zip(probes, medians)]
    return {"schema": TABLE_SCHEMA, "schema_version": SCHEMA_VERSION,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "machine": machine_context(emulated), "tokens": tokens, "threads": threads, "rounds": rounds,
            "entries": entries}


# ---------------------------------------------------------------------------------------------------- table


class LatencyTable:
    """Measured milliseconds per (op, k, n, precision) at ``tokens`` tokens and ``threads`` threads."""

    def __init__(self, entries: dict[Key, float], tokens: int, threads: int, machine: dict, source: str):
        self._entries = dict(entries)
        self._tokens = tokens
        self._threads = threads
        self.machine = machine
        self.source = source

    @classmethod
    def read(cls, path: str | Path) -> LatencyTable:
        path = Path(path)
        return cls.from_document(read_json_object(path, strict=True), path)

    @classmethod
    def from_document(cls, document: dict, path: str | Path = "(measured in memory)") -> LatencyTable:
        """The table a document holds, checked strictly: a table steers a search, so a bad one must not load."""
        if not isinstance(document, dict):
            raise EdgefoldError(f"{path} must hold a JSON object, not {type(document).__name__}")
        _check_header(document, path, TABLE_SCHEMA)
        if not _whole(document.get("threads")):
            raise EdgefoldError(f"{path}: threads must be a whole number of at least 1, "
                                f"not {document.get('threads')!r}")
        if not isinstance(document.get("machine"), dict):
            raise EdgefoldError(f"{path}: machine must be a JSON object saying where the table was measured")
        table: dict[Key, float] = {}
        for key, entry in _keyed(document, "entries", path).items():
            ms = entry.get("ms")
            if not (isinstance(ms, numbers.Real) and not isinstance(ms, bool) and math.isfinite(ms) and ms > 0):
                raise EdgefoldError(f"{path}: {_describe(key)}: ms must be a finite number above 0, not {ms!r}")
            table[key] = float(ms)
        return cls(table, int(document["tokens"]), int(document["threads"]), document["machine"], str(path))

    @property
    def tokens(self) -> int:
        return self._tokens

    @property
    def threads(self) -> int:
        return self._threads

    @property
    def entries(self) -> dict[Key, float]:
        return dict(self._entries)

    def __contains__(self, key: Key) -> bool:
        return key in self._entries

    def ms(self, op: str, k: int, n: int, precision: str) -> float:
        try:
            return self._entries[(op, k, n, precision)]
        except KeyError:
            raise EdgefoldError(f"the latency table {self.source} has no entry for {_describe((op, k, n, precision))}"
                                ": was it measured for another model?") from None


def format_entries(table: LatencyTable) -> str:
    """A readable listing of a table."""
    lines = [f"{'op':8} {'k':>6} {'n':>6} {'precision':>9} {'ms':>9}   ({table.tokens} tokens, "
             f"{table.threads} thread{'s' if table.threads > 1 else ''})"]
    for (op, k, n, precision), ms in table.entries.items():
        lines.append(f"{op:8} {k:>6} {n:>6} {precision:>9} {ms:>9.3f}")
    return "\n".join(lines)
