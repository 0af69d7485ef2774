"""Evaluation data for ``edgefold validate``: a text file, JSONL or CSV, or the shipped evaluation text."""

from __future__ import annotations

import csv
import hashlib
import json
from dataclasses import dataclass, field
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


def load_data(path: str | None, text_column: str = "text", label_column: str | None = None,
              query_column: str | None = None, positive_column: str | None = None) -> EvalData:
    """Items to validate on. ``.txt``: one per line; ``.jsonl`` / ``.csv``: named columns."""
    if path is None:
        texts = shipped_texts("evaluation.txt")
        return EvalData("shipped evaluation.txt", texts, sha256=_digest("\n".join(texts).encode()))
    file = Path(path)
    if not file.is_file():
        raise EdgefoldError(f"data file not found: {path}")
    raw = file.read_bytes()
    if file.suffix == ".jsonl":
        rows = [_json_line(line, file, n) for n, line in enumerate(raw.decode("utf-8").splitlines(), 1) if line.strip()]
    elif file.suffix == ".csv":
        rows = list(csv.DictReader(raw.decode("utf-8").splitlines()))
    else:
        rows = [{text_column: line.strip()} for line in raw.decode("utf-8").splitlines() if line.strip()]
    if not rows:
        raise EdgefoldError(f"data file {path} is empty")
    wanted = [c for c in (text_column, label_column, query_column, positive_column) if c]
    missing = [c for c in wanted if c not in rows[0]]
    if missing:
        raise EdgefoldError(f"data file {path} has no column(s) {', '.join(missing)} "
                            f"(it has: {', '.join(rows[0])})")
    data = EvalData(str(path), [str(r[text_column]) for r in rows], sha256=_digest(raw))
    if label_column:
        data.labels = [str(r[label_column]) for r in rows]
    if query_column and positive_column:
        data.pairs = [(str(r[query_column]), str(r[positive_column])) for r in rows]
    return data


def _json_line(line: str, file: Path, number: int) -> dict:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as error:
        raise EdgefoldError(f"{file} line {number} is not JSON: {error}") from None
    if not isinstance(row, dict):
        raise EdgefoldError(f"{file} line {number} is not a JSON object")
    return row


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
