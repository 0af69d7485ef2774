"""The transformers 5 backend: transformers' own ONNX exporter (torch.export, then the dynamo ONNX exporter).

transformers' exporter names the graph after the model's Python structures (``past_key_values.layers.0.keys``,
``cache.layers.0.keys``, dims ``s43``, nodes ``node_MatMul_68``) and returns every output the model has
(``pooler_output``). This module gives its graph the folder contract optimum's exporter set
(``exporter.onnx.export``): optimum's input, output and dim names, only the task's outputs, and each node named
after the module it computes, from the name scopes the dynamo exporter records in every node's metadata.

Only ``exporter.onnx.export`` imports this module, and only with transformers 5 installed.
"""

from __future__ import annotations

import ast
import contextlib
import io
import logging
import re
import warnings
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import onnx_ir as ir
import torch
from onnx_ir.passes.common import RemoveUnusedNodesPass
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from edgefold.exporter.onnx import passes

#: Shapes of the sample inputs: lengths above 1, so torch.export keeps them symbolic.
_BATCH, _LENGTH, _PAST = 2, 3, 2
_CACHE_NAME = re.compile(r"^(?:past_key_values|cache)\.layers\.(\d+)\.(keys|values)$")


def export(model: PreTrainedModel, task: str, output_dir: Path, tokenizer: PreTrainedTokenizerBase) -> None:
    from transformers.exporters.exporter_onnx import OnnxConfig, OnnxExporter

    with _quiet():
        inputs = _sample_inputs(model, task)
        graph_model = OnnxExporter().export(model, inputs, OnnxConfig(dynamic=True)).program
    conform(graph_model, task)
    output_dir.mkdir(parents=True, exist_ok=True)
    passes.save(ir.serde.serialize_model(graph_model), output_dir / "model.onnx")
    model.config.save_pretrained(output_dir)
    if task == "text-generation" and model.generation_config is not None:
        model.generation_config.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The exporter warns that it is experimental, logs every patch it applies and prints its progress; none of
    it is the user's to act on (a failure still raises)."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        logging.disable(logging.WARNING)
        try:
            yield
        finally:
            logging.disable(logging.NOTSET)


def _sample_inputs(model: PreTrainedModel, task: str) -> dict:
    """What optimum's export config for ``task`` feeds: ``token_type_ids`` for BERT, and for a causal LM the
    positions and a cache of ``_PAST`` tokens as the model computes it (each layer's own head count)."""
    tokens = torch.Generator().manual_seed(0)  # the same graph every time, and the caller's RNG left alone
    ids = torch.randint(0, model.config.vocab_size, (_BATCH, _LENGTH), generator=tokens)
    if task != "text-generation":
        inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
        if model.config.model_type == "bert":  # optimum's RoBERTa-likes and DistilBERT take no token types
            inputs["token_type_ids"] = torch.zeros_like(ids)
        return inputs
    from transformers import DynamicCache

    past_ids = torch.randint(0, model.config.vocab_size, (_BATCH, _PAST), generator=tokens)
    with torch.no_grad():
        computed = model(input_ids=past_ids, attention_mask=torch.ones_like(past_ids), use_cache=True).past_key_values
    # Plain layers, keys and values only: a sliding-window layer (Mistral) would add its window as a graph input;
    # the window still applies, through the attention mask the model builds from its config.
    cache = DynamicCache()
    for index, layer in enumerate(computed.layers):
        cache.update(layer.keys, layer.values, index)
    return {"input_ids": ids, "attention_mask": torch.ones(_BATCH, _PAST + _LENGTH, dtype=torch.int64),
            "position_ids": torch.arange(_PAST, _PAST + _LENGTH).expand(_BATCH, _LENGTH),
            "past_key_values": cache}


def conform(model: ir.Model, task: str) -> None:
    """Give transformers' graph optimum's names and outputs, and name each node after its module."""
    graph = model.graph
    keep = "last_hidden_state" if task == "feature-extraction" else "logits"
    kept = [value for value in graph.outputs if value.name == keep or _CACHE_NAME.match(value.name or "")]
    graph.outputs.clear()
    graph.outputs.extend(kept)
    _fold_weight_transposes(graph)
    RemoveUnusedNodesPass()(model)
    for value in [*graph.inputs, *graph.outputs]:
        match = _CACHE_NAME.match(value.name)
        if match:
            prefix = "past_key_values" if value.is_graph_input() else "present"
            value.name = f"{prefix}.{match[1]}.{match[2][:-1]}"
    _name_dims(graph, task)
    _name_nodes(graph)


def _fold_weight_transposes(graph: ir.Graph) -> None:
    """``Transpose(weight)`` becomes a transposed initializer, one per weight and order however many nodes read it.

    The exporter's optimiser folds the transpose of a weight one Linear reads, but not of one several Linears
    share (``svd-shared``'s bases, read by every layer): left so, onnxruntime would fold each at load, one copy
    per reader in memory, and a MatMul would no longer read its weight where per-module quantisation looks.
    """
    folded: dict[tuple[str, tuple[int, ...]], ir.Value] = {}
    for node in list(graph):
        source = node.inputs[0] if node.op_type == "Transpose" and node.inputs else None
        if source is None or not source.is_initializer() or source.const_value is None:
            continue
        perm = tuple(node.attributes.get_ints("perm", list(reversed(range(len(source.shape))))))
        if (source.name, perm) not in folded:
            array = source.const_value.numpy().transpose(perm)
            value = ir.Value(name=f"{source.name}.transposed", const_value=ir.tensor(array))
            value.dtype, value.shape = source.dtype, ir.Shape(array.shape)
            graph.register_initializer(value)
            folded[source.name, perm] = value
        node.outputs[0].replace_all_uses_with(folded[source.name, perm], replace_graph_outputs=True)
        graph.remove(node, safe=True)


def _name_dims(graph: ir.Graph, task: str) -> None:
    """Rename torch.export's symbols (``s43``) as optimum names the axes, in every shape of the graph.

    torch.export gives each input axis a symbol of its own (the batch of ``attention_mask`` is not known to be
    ``input_ids``'); all of them get the one name the axis has, as optimum's export does. A head count or
    width written as a symbol (``"4"``) becomes the number.
    """
    names: dict[str, str] = {}
    total = "past_sequence_length + sequence_length" if task == "text-generation" else "sequence_length"
    axes = {"input_ids": ("batch_size", "sequence_length"), "position_ids": ("batch_size", "sequence_length"),
            "token_type_ids": ("batch_size", "sequence_length"), "attention_mask": ("batch_size", total)}
    for value in graph.inputs:
        wanted = axes.get(value.name) or ("batch_size", None, "past_sequence_length", None)
        for dim, name in zip(value.shape or (), wanted):
            if name and isinstance(dim, ir.SymbolicDim) and dim.value and not dim.value.isdigit():
                names.setdefault(dim.value, name)
    symbol = re.compile(r"\b(" + "|".join(map(re.escape, sorted(names, key=len, reverse=True))) + r")\b") \
        if names else None
    for value in _values(graph):
        if value.shape is None:
            continue
        value.shape = ir.Shape([_renamed(dim, names, symbol) for dim in value.shape])


def _renamed(dim, names: dict[str, str], symbol: re.Pattern | None):
    if not isinstance(dim, ir.SymbolicDim) or dim.value is None:
        return dim
    if dim.value.isdigit():
        return int(dim.value)
    return symbol.sub(lambda match: names[match[1]], dim.value) if symbol else dim.value


def _values(graph: ir.Graph):
    yield from graph.inputs
    for node in graph:
        yield from node.outputs


def _name_nodes(graph: ir.Graph) -> None:
    """``node_MatMul_68`` becomes ``/bert/encoder/layer.0/attention/self/query/MatMul``, as the TorchScript
    exporter names it: the innermost module of the node's recorded name scopes, ``_N`` on a repeat. The records
    are dropped after."""
    seen: Counter = Counter()
    for node in graph:
        scopes = node.metadata_props.get("pkg.torch.onnx.name_scopes")
        module = ast.literal_eval(scopes)[-2] if scopes else ""
        base = "/" + "".join(_scope_parts(module)) + node.op_type
        node.name = base if not seen[base] else f"{base}_{seen[base]}"
        seen[base] += 1
        # the exporter's per-node records (stack traces with this machine's paths, FX names): half a megabyte
        # for MiniLM, of no use to a runtime
        node.metadata_props.clear()


def _scope_parts(module: str) -> list[str]:
    """``bert.encoder.layer.0.attention`` -> ``bert/``, ``encoder/``, ``layer.0/``, ``attention/``: a ModuleList
    index stays on its list's name, as TorchScript scopes have it."""
    parts: list[str] = []
    for part in module.split(".") if module else []:
        if part.isdigit() and parts:
            parts[-1] = parts[-1][:-1] + f".{part}/"
        else:
            parts.append(f"{part}/")
    return parts
