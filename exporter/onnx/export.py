"""Every call into optimum lives here, so a move to another exporter is this one file's work."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import transformers
from transformers import PretrainedConfig, PreTrainedModel, PreTrainedTokenizerBase

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


def infer_task(config: PretrainedConfig) -> str:
    """The task of a checkpoint, from the class named in its config (as ``optimum-cli export onnx`` does)."""
    from optimum.exporters.tasks import TasksManager

    architectures = config.architectures or []
    model_class = getattr(transformers, architectures[0], None) if architectures else None
    if model_class is None:
        raise EdgefoldError(
            f"cannot tell the task of this model (architectures: {architectures}); pass --task "
            f"({', '.join(TASK_AUTO_CLASSES)})"
        )
    task = TasksManager.infer_task_from_model(model_class)
    return check_task(task)


def task_of_model(model: PreTrainedModel) -> str:
    """The task of a loaded model, from its class (may be one edgefold does not export)."""
    from optimum.exporters.tasks import TasksManager

    return TasksManager.infer_task_from_model(type(model))


def check_task(task: str) -> str:
    if task not in TASK_AUTO_CLASSES:
        raise EdgefoldError(f"task {task!r} is not supported; edgefold exports: {', '.join(TASK_AUTO_CLASSES)}")
    return task


def export_onnx(model: PreTrainedModel, task: str, output_dir: Path, tokenizer: PreTrainedTokenizerBase) -> Path:
    """Write ``model.onnx``, ``config.json`` and the tokenizer files for ``task`` into ``output_dir``.

    Causal LMs get a KV cache (optimum's ``text-generation-with-past``), as ``ORTModelForCausalLM`` expects.
    """
    from optimum.exporters.onnx import onnx_export_from_model

    export_task = "text-generation-with-past" if task == "text-generation" else task
    with warnings.catch_warnings():
        # The TorchScript tracer warns about every Python branch on a shape; none of them is ours to act on.
        warnings.simplefilter("ignore")
        logging.getLogger("optimum").setLevel(logging.ERROR)
        onnx_export_from_model(
            model,
            output_dir,
            task=export_task,
            do_validation=False,  # edgefold checks parity itself, on real text, with its own tolerance
            preprocessors=[tokenizer],
        )
    onnx_path = output_dir / "model.onnx"
    if not onnx_path.is_file():
        raise EdgefoldError(f"optimum wrote no model.onnx into {output_dir}")
    return onnx_path


def ort_model_class(task: str):
    """The optimum ORTModel class that loads an exported folder of ``task``."""
    import optimum.onnxruntime

    return getattr(optimum.onnxruntime, ORT_MODEL_CLASSES[check_task(task)])
