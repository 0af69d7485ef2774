"""The one module that exports a transformers model to ONNX: every call into an exporter goes through here.

Two backends, chosen by what is installed (``backend()``):

- ``"transformers"``: transformers 5's own exporter (``transformers.exporters``, torch.export and the dynamo ONNX
  exporter), what ``pip install "edgefold[export]"`` installs;
- ``"optimum"``: optimum-onnx on transformers 4.57 (TorchScript), ``pip install "edgefold[export-legacy]"``.

Both write the same folder: ``model.onnx`` with optimum's input and output names (``input_ids``,
``attention_mask``, ``token_type_ids``, ``position_ids``, ``past_key_values.N.key/value``; ``last_hidden_state``,
``logits``, ``present.N.key/value``) and nodes named after their module (``/encoder/layer.0/.../MatMul``, which
per-module quantisation reads), ``config.json`` and the tokenizer files.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import transformers
from transformers import PretrainedConfig, PreTrainedModel, PreTrainedTokenizerBase
from transformers.models.auto import modeling_auto

from edgefold.runtime import EdgefoldError

#: Tasks edgefold exports, with the transformers auto class that loads a model for each.
TASK_AUTO_CLASSES = {
    "feature-extraction": "AutoModel",
    "text-classification": "AutoModelForSequenceClassification",
    "fill-mask": "AutoModelForMaskedLM",
    "text-generation": "AutoModelForCausalLM",
}
#: optimum's ORTModel class that loads an exported folder of each task.
ORT_MODEL_CLASSES = {
    "feature-extraction": "ORTModelForFeatureExtraction",
    "text-classification": "ORTModelForSequenceClassification",
    "fill-mask": "ORTModelForMaskedLM",
    "text-generation": "ORTModelForCausalLM",
}
#: Per task, transformers' own table of the model classes that do it (model_type -> class name), as optimum's
#: TasksManager reads them; checked in this order, so a causal LM head is not taken for a bare encoder.
_TASK_CLASS_TABLES = (
    ("text-generation", "MODEL_FOR_CAUSAL_LM_MAPPING_NAMES"),
    ("fill-mask", "MODEL_FOR_MASKED_LM_MAPPING_NAMES"),
    ("text-classification", "MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES"),
    ("token-classification", "MODEL_FOR_TOKEN_CLASSIFICATION_MAPPING_NAMES"),
    ("question-answering", "MODEL_FOR_QUESTION_ANSWERING_MAPPING_NAMES"),
    ("feature-extraction", "MODEL_MAPPING_NAMES"),
)


def backend() -> str:
    """``"optimum"`` where optimum-onnx is installed (transformers 4), else ``"transformers"`` (transformers 5's
    own exporter); one line naming the extras where neither can export."""
    if importlib.util.find_spec("optimum") and importlib.util.find_spec("optimum.exporters.onnx"):
        return "optimum"
    if importlib.util.find_spec("transformers.exporters"):
        return "transformers"
    raise EdgefoldError(f"transformers {transformers.__version__} has no ONNX exporter and optimum-onnx is not "
                        "installed: pip install \"edgefold[export]\" (transformers 5) or \"edgefold[export-legacy]\"")


def infer_task(config: PretrainedConfig) -> str:
    """The task of a checkpoint, from the class named in its config (as ``optimum-cli export onnx`` does)."""
    architectures = config.architectures or []
    model_class = getattr(transformers, architectures[0], None) if architectures else None
    task = _task_of_class(model_class.__name__) if model_class is not None else None
    if task is None:
        raise EdgefoldError(
            f"cannot tell the task of this model (architectures: {architectures}); pass --task "
            f"({', '.join(TASK_AUTO_CLASSES)})"
        )
    return check_task(task)


def task_of_model(model: PreTrainedModel) -> str:
    """The task of a loaded model, from its class (may be one edgefold does not export, or ``"unknown"``)."""
    return _task_of_class(type(model).__name__) or "unknown"


def _task_of_class(class_name: str) -> str | None:
    for task, table in _TASK_CLASS_TABLES:
        if class_name in set(getattr(modeling_auto, table, {}).values()):
            return task
    return None


def check_task(task: str) -> str:
    if task not in TASK_AUTO_CLASSES:
        raise EdgefoldError(f"task {task!r} is not supported; edgefold exports: {', '.join(TASK_AUTO_CLASSES)}")
    return task


def export_onnx(model: PreTrainedModel, task: str, output_dir: Path, tokenizer: PreTrainedTokenizerBase) -> Path:
    """Write ``model.onnx``, ``config.json`` and the tokenizer files for ``task`` into ``output_dir``; causal LMs
    get a KV cache, as ``ORTModelForCausalLM`` expects."""
    if backend() == "optimum":
        from edgefold.exporter.onnx import optimum_backend as chosen
    else:
        from edgefold.exporter.onnx import dynamo_backend as chosen
    chosen.export(model, check_task(task), output_dir, tokenizer)
    onnx_path = output_dir / "model.onnx"
    if not onnx_path.is_file():
        raise EdgefoldError(f"the {backend()} exporter wrote no model.onnx into {output_dir}")
    return onnx_path


def ort_model_class(task: str):
    """The optimum ORTModel class that loads an exported folder of ``task``: only with optimum-onnx installed,
    which transformers 5 cannot import (run the folder with onnxruntime, as ``edgefold.runtime`` does, instead)."""
    if backend() != "optimum":
        raise EdgefoldError("optimum's ORTModel classes need optimum-onnx, which needs transformers<4.58: "
                            "pip install \"edgefold[export-legacy]\", or run the folder with onnxruntime")
    import optimum.onnxruntime

    return getattr(optimum.onnxruntime, ORT_MODEL_CLASSES[check_task(task)])
