"""An exported folder as the device sees it: graph, config, tokenizer, manifest. No torch, no transformers."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import EdgefoldError
from .jsonfile import read_json_object
from .manifest import MANIFEST_NAME, read_manifest, verify_folder

GRAPH = "model.onnx"
EXTERNAL_DATA = ("model.onnx_data", "model.onnx.data")
_TASK_SUFFIXES = (("ForSequenceClassification", "text-classification"), ("ForMaskedLM", "fill-mask"),
                  ("ForCausalLM", "text-generation"), ("LMHeadModel", "text-generation"))


def max_positions(config: dict) -> int | None:
    """How many tokens a model of this ``config.json`` takes (None: not stated)."""
    positions = config.get("max_position_embeddings") or config.get("n_positions")
    if positions and config.get("model_type") in ("roberta", "xlm-roberta"):
        positions -= 2  # positions start after the padding index
    return positions


@dataclass(frozen=True)
class ExportedFolder:
    path: Path
    config: dict
    manifest: dict | None

    @classmethod
    def open(cls, folder: str | Path, verify: bool = True) -> ExportedFolder:
        """The folder, checked against its manifest's files, sizes and hashes unless ``verify`` is False."""
        path = Path(folder)
        if not path.is_dir():
            raise EdgefoldError(f"no such folder: {folder}")
        if not (path / GRAPH).is_file():
            raise EdgefoldError(f"{folder} holds no {GRAPH}: not an exported model folder")
        config_file = path / "config.json"
        config = _check_config(read_json_object(config_file), config_file) if config_file.exists() else {}
        manifest = read_manifest(path) if (path / MANIFEST_NAME).exists() else None
        if manifest is not None and verify:
            verify_folder(path, manifest)
        return cls(path, config, manifest)

    @property
    def name(self) -> str:
        return self.path.resolve().name

    @property
    def graph(self) -> Path:
        return self.path / GRAPH

    @property
    def task(self) -> str:
        if self.manifest:
            return self.manifest["task"]
        architecture = (self.config.get("architectures") or [""])[0]
        return next((task for suffix, task in _TASK_SUFFIXES if architecture.endswith(suffix)),
                    "feature-extraction")

    @property
    def max_positions(self) -> int | None:
        return max_positions(self.config)

    def check_length(self, length: int) -> None:
        """Refuse inputs longer than the model can take."""
        if self.max_positions and length > self.max_positions:
            raise EdgefoldError(f"sequence length {length} is longer than the model's maximum of "
                                f"{self.max_positions} positions")

    def bytes_on_disk(self) -> dict[str, int]:
        files = [self.path / GRAPH, *(self.path / name for name in EXTERNAL_DATA)]
        return {f.name: f.stat().st_size for f in files if f.is_file()}

    def encoder(self) -> TextEncoder:
        return TextEncoder(self)


class TextEncoder:
    """The folder's own ``tokenizer.json``, right-padding and truncating like the exporter's checks."""

    def __init__(self, folder: ExportedFolder):
        from tokenizers import Tokenizer

        path = folder.path / "tokenizer.json"
        if not path.is_file():
            raise EdgefoldError(f"{folder.path} has no tokenizer.json")
        try:
            self.tokenizer = Tokenizer.from_file(str(path))
        except Exception as error:  # the tokenizers library raises a bare Exception for a bad file
            raise EdgefoldError(f"cannot read {path}: {' '.join(str(error).split())}") from error
        vocab = folder.config.get("vocab_size")
        if vocab and self.tokenizer.get_vocab_size() > vocab:
            raise EdgefoldError(f"the tokenizer in {folder.path} has {self.tokenizer.get_vocab_size()} tokens but "
                                f"the model embeds {vocab}: they do not belong together")
        self.folder = folder
        self.pad_id = _pad_id(folder, self.tokenizer)

    def encode(self, texts: list[str], max_length: int = 128) -> tuple[np.ndarray, np.ndarray]:
        """(input_ids, attention_mask), right-padded to the longest text, truncated to ``max_length``."""
        self.folder.check_length(max_length)
        self.tokenizer.enable_truncation(max_length)
        self.tokenizer.enable_padding(pad_id=self.pad_id, direction="right")
        encoded = self.tokenizer.encode_batch(texts)
        ids = np.array([e.ids for e in encoded], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encoded], dtype=np.int64)
        return ids, mask


def _pad_id(folder: ExportedFolder, tokenizer) -> int:
    for name in ("special_tokens_map.json", "tokenizer_config.json"):
        path = folder.path / name
        if path.exists():
            pad = read_json_object(path).get("pad_token")
            pad = pad.get("content") if isinstance(pad, dict) else pad
            if pad is not None and not isinstance(pad, str):
                raise EdgefoldError(f'{path}: pad_token must be a string or {{"content": "..."}}, not {pad!r}')
            if pad and tokenizer.token_to_id(pad) is not None:
                return tokenizer.token_to_id(pad)
    return folder.config.get("pad_token_id") or 0


# config.json keys the runtime reads, and what each must be when present (null is always allowed)
_POSITIVE = ("max_position_embeddings", "n_positions", "vocab_size")


def _check_config(config: dict, path: Path) -> dict:
    def bad(key: str, what: str) -> EdgefoldError:
        return EdgefoldError(f"{path}: {key} must be {what}, not {config[key]!r}")

    for key in _POSITIVE:
        value = config.get(key)
        if value is not None and not (isinstance(value, int) and not isinstance(value, bool) and value > 0):
            raise bad(key, "a positive integer")
    pad = config.get("pad_token_id")
    if pad is not None and not (isinstance(pad, int) and not isinstance(pad, bool) and pad >= 0):
        raise bad("pad_token_id", "a token id")
    if not isinstance(config.get("model_type", ""), (str, type(None))):
        raise bad("model_type", "a string")
    architectures = config.get("architectures")
    if architectures is not None and not (isinstance(architectures, list)
                                          and all(isinstance(a, str) for a in architectures)):
        raise bad("architectures", "a list of class names")
    labels = config.get("id2label")
    if labels is not None and not (isinstance(labels, dict) and all(isinstance(v, str) for v in labels.values())):
        raise bad("id2label", "an object of label names")
    return config
