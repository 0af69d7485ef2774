"""The transformers 4 backend: optimum-onnx's exporter (TorchScript), as ``optimum-cli export onnx`` runs it.

Only ``exporter.onnx.export`` imports this module, and only where optimum-onnx is installed (transformers<4.58).
"""

from __future__ import annotations

import functools
import logging
import warnings
from pathlib import Path

from transformers import PreTrainedModel, PreTrainedTokenizerBase


def export(model: PreTrainedModel, task: str, output_dir: Path, tokenizer: PreTrainedTokenizerBase) -> None:
    """Write ``model.onnx``, ``config.json`` and the tokenizer files for ``task`` into ``output_dir``.

    Causal LMs get a KV cache (optimum's ``text-generation-with-past``), as ``ORTModelForCausalLM`` expects.
    A causal LM whose config sizes its cache as ``n_head`` heads per layer while its layers lost heads (a GPT-2
    after ``prune-heads``) is exported with a cache of each layer's kept heads, the heads axis
    of its cache inputs symbolic (see ``_per_layer_cache_config``).
    """
    from optimum.exporters.onnx import onnx_export_from_model

    export_task = "text-generation-with-past" if task == "text-generation" else task
    per_layer = _per_layer_cache_config(model, export_task)
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
            custom_onnx_configs=None if per_layer is None else {"model": per_layer},
        )


def _per_layer_cache_config(model: PreTrainedModel, export_task: str):
    """optimum's export config for ``model`` with a KV cache of each layer's kept heads, or None where optimum's
    own config fits: no KV cache, no heads pruned, or a cache optimum sizes from other fields (a Llama's
    ``num_key_value_heads``, which the config keeps true).

    optimum sizes a GPT-2-like cache as ``n_head`` heads of ``n_embd // n_head`` values in every layer, and the
    config (original ``n_head``, removed heads in ``pruned_heads``, as transformers 4 writes it) cannot say fewer.
    The export dummies here have each layer's own head count, and the heads axis of the ``past_key_values.*``
    inputs is symbolic: ``ORTModelForCausalLM``'s first, empty cache still has ``n_head`` heads, and with no past
    tokens onnxruntime's Concat skips it. The ``present.*`` outputs keep their exact, static head counts.
    """
    pruned = getattr(model.config, "pruned_heads", None)
    if not pruned or not export_task.endswith("-with-past"):
        return None
    from optimum.exporters.tasks import TasksManager

    constructor = TasksManager.get_exporter_config_constructor(model=model, exporter="onnx", task=export_task,
                                                               library_name="transformers")
    per_layer_class = _per_layer_cache_class(constructor.func)
    if per_layer_class is None:
        return None
    dtype = next(model.parameters()).dtype
    float_dtype = {"torch.float16": "fp16", "torch.bfloat16": "bf16"}.get(str(dtype), "fp32")
    return per_layer_class(model.config, **{**constructor.keywords, "use_past_in_inputs": True},
                           float_dtype=float_dtype)


@functools.cache
def _per_layer_cache_class(config_class: type):
    """A subclass of optimum's export config ``config_class`` whose cache has each layer's kept heads, or None
    where ``config_class`` does not size its cache as ``num_attention_heads`` heads in every layer."""
    from optimum.utils import DummyPastKeyValuesGenerator

    if config_class.DUMMY_PKV_GENERATOR_CLASS is not DummyPastKeyValuesGenerator:
        return None

    class PerLayerPastKeyValuesGenerator(DummyPastKeyValuesGenerator):
        def __init__(self, task, normalized_config, **kwargs):
            super().__init__(task, normalized_config, **kwargs)
            self.layer_heads = _layer_heads(normalized_config)

        def generate(self, input_name: str, framework: str = "pt", int_dtype: str = "int64",
                     float_dtype: str = "fp32"):
            width = self.hidden_size // self.num_attention_heads  # head width does not change when heads go
            return [tuple(self.random_float_tensor((self.batch_size, heads, self.sequence_length, width),
                                                   framework=framework, dtype=float_dtype) for _ in range(2))
                    for heads in self.layer_heads]

    class PerLayerCacheConfig(config_class):
        DUMMY_INPUT_GENERATOR_CLASSES = tuple(
            PerLayerPastKeyValuesGenerator if generator is DummyPastKeyValuesGenerator else generator
            for generator in config_class.DUMMY_INPUT_GENERATOR_CLASSES)
        DUMMY_PKV_GENERATOR_CLASS = PerLayerPastKeyValuesGenerator

        def add_past_key_values(self, inputs_or_outputs: dict[str, dict[int, str]], direction: str):
            super().add_past_key_values(inputs_or_outputs, direction)
            if direction == "inputs":
                for name, axes in inputs_or_outputs.items():
                    if name.startswith("past_key_values."):
                        layer = name.split(".")[1]
                        inputs_or_outputs[name] = dict(sorted({**axes, 1: f"past_heads.{layer}"}.items()))

    PerLayerCacheConfig.__name__ = PerLayerCacheConfig.__qualname__ = f"PerLayerCache{config_class.__name__}"
    return PerLayerCacheConfig


def _layer_heads(normalized_config) -> list[int]:
    """Per layer, the heads left: ``num_attention_heads`` less those ``pruned_heads`` lists for it."""
    pruned = normalized_config.config.pruned_heads
    return [normalized_config.num_attention_heads - len(pruned.get(layer, ()))
            for layer in range(normalized_config.num_layers)]
