"""Evaluation data for ``edgefold validate``: a text file, JSONL or CSV, or the shipped evaluation text."""

from __future__ import annotations

import csv
import hashlib
import io
import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from .errors import EdgefoldError
from .texts import shipped_texts


@dataclass
class EvalData:
    source: str
    texts: list[str]
    labels: list[str] | None = None
    pairs: list[tuple[str, str]] | None = None  # (query, positive) for retrieval metrics
    sha256: str = field(default="")

    def first(self, limit: int) -> EvalData:
        """The first ``limit`` items: a quick check where inference is slow (a small board, an emulator)."""
        return EvalData(f"{self.source}, first {limit}", self.texts[:limit],
                        self.labels[:limit] if self.labels else self.labels,
                        self.pairs[:limit] if self.pairs else self.pairs, self.sha256)

    def describe(self) -> dict:
        return {"source": self.source, "items": len(self.texts), "sha256": self.sha256,
                "labels": self.labels is not None, "pairs": len(self.pairs) if self.pairs else 0}


def load_data(path: str | Path | None, text_column: str = "text", label_column: str | None = None,
              query_column: str | None = None, positive_column: str | None = None) -> EvalData:
    """Items to validate on. ``.txt``: one per line; ``.jsonl`` / ``.csv``: named columns.

    Which columns suit the model's task is checked by :func:`check_data`, once the task is known.
    """
    columns = {"text": text_column, "label": label_column, "query": query_column, "positive": positive_column}
    for role, column in columns.items():
        if (column is not None or role == "text") and (not isinstance(column, str) or not column.strip()):
            raise EdgefoldError(f"the {role} column needs a name, not {column!r}")
    if (query_column is None) != (positive_column is None):
        raise EdgefoldError("retrieval metrics need both a query column and a positive column, not one of them")
    wanted = {role: column for role, column in columns.items() if column is not None}
    if path is None:
        if len(wanted) > 1:
            raise EdgefoldError("label, query and positive columns need a data file (.jsonl or .csv)")
        texts = shipped_texts("evaluation.txt")
        return EvalData("shipped evaluation.txt", texts, sha256=_digest("\n".join(texts).encode()))
    file = Path(path)
    if not file.is_file():
        raise EdgefoldError(f"data file not found: {path}")
    try:
        raw = file.read_bytes()
        text = raw.decode("utf-8-sig")  # a byte-order mark (spreadsheet exports) is not part of the first column
    except OSError as error:
        raise EdgefoldError(f"cannot read {path}: {error.strerror or error}") from None
    except UnicodeDecodeError as error:
        raise EdgefoldError(f"data file {path} is not UTF-8 text (byte {error.start} cannot be decoded)") from None
    suffix = file.suffix.lower()
    if suffix == ".jsonl":
        header, rows = None, _jsonl_rows(text, file)
    elif suffix == ".csv":
        header, rows = _csv_rows(text, file)
    else:
        if len(wanted) > 1:
            raise EdgefoldError(f"{path} is plain text, one item per line: label, query and positive columns "
                                "need a .jsonl or .csv file")
        header, rows = None, [(n, {text_column: line.strip()}) for n, line in enumerate(text.split("\n"), 1)
                              if line.strip()]
    if not rows:
        raise EdgefoldError(f"data file {path} is empty")
    present = header if header is not None else list(rows[0][1])
    missing = [c for c in wanted.values() if c not in present]
    if missing:
        where = "its header line has" if header is not None else "it has"
        raise EdgefoldError(f"data file {path} has no column(s) {', '.join(missing)} ({where}: "
                            f"{', '.join(map(str, present)) or 'nothing'})")
    values = {role: [_value(row, column, role, file, n) for n, row in rows] for role, column in wanted.items()}
    data = EvalData(str(path), values["text"], values.get("label"), sha256=_digest(raw))
    if "query" in values:
        data.pairs = list(zip(values["query"], values["positive"]))
    return data


#: Text of another kind, human-written by other people, that the project tuned nothing on: 267 docstrings of the
#: Python standard library (CPython's developers; PSF-2.0, ``data/PSF-LICENSE.txt``), each summary paired with its
#: body for retrieval. What a search checks its answer on besides the user's text (see ``runtime/data/README.md``).
SECOND_DOMAIN = "docstrings.jsonl"


def second_domain(task: str) -> EvalData:
    """The shipped second domain, with query / positive pairs where the task can use them (feature extraction)."""
    columns = ("query", "positive") if task == "feature-extraction" else (None, None)
    with resources.as_file(resources.files("edgefold.runtime").joinpath("data", SECOND_DOMAIN)) as path:
        data = load_data(path, "text", None, *columns)
    data.source = f"shipped {SECOND_DOMAIN}, Python standard-library docstrings"
    return data


def check_data(data: EvalData, task: str) -> None:
    """Refuse data a ``task`` cannot use whole: no items, or labels / pairs the task's metrics would ignore."""
    if not data.texts:
        raise EdgefoldError(f"{data.source} has no items to validate on")
    bad = next((t for t in data.texts if not isinstance(t, str) or not t.strip()), None)
    if bad is not None:
        raise EdgefoldError(f"{data.source}: every item must be a non-empty text, not {bad!r}")
    if data.labels is not None:
        if task != "text-classification":
            raise EdgefoldError(f"labels (a label column) apply to text-classification models; this is a {task} "
                                "model")
        if len(data.labels) != len(data.texts):
            raise EdgefoldError(f"{data.source}: {len(data.labels)} labels for {len(data.texts)} items")
    if data.pairs is not None and task != "feature-extraction":
        raise EdgefoldError(f"query and positive columns apply to feature-extraction models; this is a {task} "
                            "model")


def _jsonl_rows(text: str, file: Path) -> list[tuple[int, dict]]:
    rows = []
    for number, line in enumerate(text.split("\n"), 1):  # not splitlines: JSON strings may hold U+2028 etc.
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise EdgefoldError(f"{file} line {number} is not JSON: {error}") from None
        except RecursionError:
            raise EdgefoldError(f"{file} line {number} is nested too deeply") from None
        if not isinstance(row, dict):
            raise EdgefoldError(f"{file} line {number} is not a JSON object")
        rows.append((number, row))
    return rows


def _csv_rows(text: str, file: Path) -> tuple[list[str] | None, list[tuple[int, dict]]]:
    reader = csv.reader(io.StringIO(text, newline=""))
    header, rows = None, []
    try:
        for record in reader:
            if len(record) < 2 and not "".join(record).strip():  # a blank line
                continue
            if header is None:
                header = [name.strip() for name in record]
                duplicated = sorted({name for name in header if header.count(name) > 1})
                if duplicated:
                    raise EdgefoldError(f"{file}: column(s) {', '.join(duplicated)} appear twice in the header")
            elif len(record) != len(header):
                raise EdgefoldError(f"{file} line {reader.line_num} has {len(record)} fields but the header "
                                    f"has {len(header)} (a comma in an unquoted text?)")
            else:
                rows.append((reader.line_num, dict(zip(header, record))))
    except csv.Error as error:
        raise EdgefoldError(f"{file} line {reader.line_num} is not valid CSV: {error}") from None
    return header, rows


def _value(row: dict, column: str, role: str, file: Path, number: int) -> str:
    if column not in row:
        raise EdgefoldError(f"{file} line {number} has no column {column}")
    value = row[column]
    if role == "label" and isinstance(value, int) and not isinstance(value, bool):
        value = str(value)  # class ids as numbers: {"label": 1}
    if not isinstance(value, str):
        raise EdgefoldError(f"{file} line {number}: {column} must be a string, not {_json_type(value)}")
    if not value.strip():
        raise EdgefoldError(f"{file} line {number}: {column} is empty")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise EdgefoldError(f"{file} line {number}: {column} holds a lone surrogate escape, not text") from None
    return value


def _json_type(value: object) -> str:
    if value is None or isinstance(value, bool):
        return json.dumps(value)
    return {int: "a number", float: "a number", list: "a list", dict: "an object"}.get(type(value), repr(value))


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
