"""Calibration text: token frequencies to fit on, and a validation split to select on.

The text is ``--calibration FILE`` (one item per line) or the general-English corpus shipped with edgefold
(``runtime/data/calibration.txt``, see ``runtime/data/README.md``). It is never the evaluation text.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import PreTrainedTokenizerBase

from edgefold.runtime import EdgefoldError
from edgefold.runtime.texts import shipped_texts

SHIPPED_CALIBRATION = "calibration.txt"
VALIDATION_EVERY = 5  # every 5th line is held out for validation
MAX_VALIDATION = 128  # enough to rank candidates, few enough to score them often
UNIFORM_SHARE = 0.1  # share of row weight spread over the whole vocabulary, so unseen tokens still count


@dataclass(frozen=True)
class Calibration:
    source: str
    fit_texts: list[str]
    validation_texts: list[str]

    @classmethod
    def load(cls, path: str | Path | None = None) -> Calibration:
        texts, source = (_read(Path(path)), str(path)) if path else (shipped_texts(SHIPPED_CALIBRATION), "shipped")
        if len(texts) < 2 * VALIDATION_EVERY:
            raise EdgefoldError(f"calibration text {source} has {len(texts)} non-empty lines; at least "
                                f"{2 * VALIDATION_EVERY} are needed")
        validation = texts[VALIDATION_EVERY - 1::VALIDATION_EVERY][:MAX_VALIDATION]
        fit = [t for i, t in enumerate(texts) if (i + 1) % VALIDATION_EVERY]
        return cls(source, fit, validation)

    def token_counts(self, tokenizer: PreTrainedTokenizerBase, vocab_size: int) -> torch.Tensor:
        """How often each token id occurs in the fit split, special tokens included (the model sees them)."""
        counts = torch.zeros(vocab_size, dtype=torch.float64)
        for start in range(0, len(self.fit_texts), 256):
            for ids in tokenizer(self.fit_texts[start:start + 256], truncation=True, max_length=512)["input_ids"]:
                ids = torch.tensor([i for i in ids if i < vocab_size], dtype=torch.long)
                counts.index_add_(0, ids, torch.ones(len(ids), dtype=torch.float64))
        return counts

    def as_dict(self) -> dict:
        text = "\n".join(self.fit_texts + self.validation_texts).encode()
        return {"source": self.source, "sha256": hashlib.sha256(text).hexdigest(),
                "fit_lines": len(self.fit_texts), "validation_lines": len(self.validation_texts)}


def row_weights(counts: torch.Tensor, excluded: torch.Tensor | None = None) -> torch.Tensor:
    """Per-row weights summing to 1: token frequency, with UNIFORM_SHARE spread evenly; excluded rows get 0."""
    weights = (1 - UNIFORM_SHARE) * counts / counts.sum().clamp_min(1) + UNIFORM_SHARE / len(counts)
    if excluded is not None and excluded.numel():
        weights[excluded] = 0
    return (weights / weights.sum()).float()


def _read(path: Path) -> list[str]:
    if not path.is_file():
        raise EdgefoldError(f"calibration file not found: {path}")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise EdgefoldError(f"calibration file {path} is not UTF-8 text") from None
    return [line.strip() for line in lines if line.strip()]
