"""Layer-streamed compression: the weights read from safetensors one layer at a time give exactly what the whole
model in memory gives, never hold more than one layer's original weights, and refuse what needs the whole model."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import transformers

from edgefold.exporter import CompressionConfig, GraphConfig, export
from edgefold.exporter.calibration.batches import onnx_outputs, tokenize, torch_outputs
from edgefold.exporter.calibration.corpus import Calibration
from edgefold.exporter.calibration.streaming import layers_name, streamed_outputs
from edgefold.exporter.compress import compress_
from edgefold.exporter.methods import WhitenedOptions
from edgefold.exporter.nn.layers import LowRankLinear
from edgefold.exporter.source.lazy import LazyWeights
from edgefold.exporter.source.loading import inspect_model, load_model, load_tokenizer
from edgefold.exporter.streaming import compress_streamed_
from edgefold.runtime import EdgefoldError
from edgefold.runtime.texts import shipped_texts

LLAMA, BERT = "llama-text-generation", "bert-fill-mask"
#: A fifth of the shipped calibration text: the same arithmetic, faster.
CALIBRATION = Calibration.load()
CALIBRATION = Calibration("shipped, a fifth", CALIBRATION.fit_texts[:256], CALIBRATION.validation_texts[:32])


def _both(folder, config: CompressionConfig):
    """(whole model, records, reference outputs) compressed in memory, and the same streamed, with the loader."""
    source = inspect_model(str(folder))
    tokenizer = load_tokenizer(source)
    batches = tokenize(tokenizer, shipped_texts()[:16], max_length=128)
    whole = load_model(source)
    reference = torch_outputs(whole, batches)
    records = compress_(whole, config, tokenizer=tokenizer, calibration=CALIBRATION, progress=False)
    weights = LazyWeights(source)
    streamed = weights.skeleton()
    streamed_reference = streamed_outputs(streamed, weights, batches)
    streamed_records = compress_streamed_(streamed, weights, config, tokenizer, CALIBRATION, progress=False)
    return (whole, records, reference), (streamed, streamed_records, streamed_reference), batches, weights


@pytest.mark.parametrize("kind,method", [(LLAMA, "svd-whitened"), (LLAMA, "svd"), (BERT, "svd-whitened"),
                                         ("gpt2-text-generation", "svd-whitened")])
def test_streamed_compression_is_bitwise_the_whole_models(tiny_model, kind, method):
    config = CompressionConfig(method=method, ratio=2.0, bias_correction=kind == BERT)
    (whole, records, reference), (streamed, streamed_records, streamed_reference), batches, _ = _both(
        tiny_model(kind), config)
    assert all(np.array_equal(a, b) for a, b in zip(reference, streamed_reference))
    assert [r.as_dict() for r in records] == [r.as_dict() for r in streamed_records]
    assert sum(r.status == "factorised" for r in records) == len(records) > 0
    expected, got = whole.state_dict(), streamed.state_dict()
    assert expected.keys() == got.keys()
    assert all(torch.equal(expected[name], got[name]) for name in expected)  # factors and the rest, bitwise
    assert not any(p.is_meta for p in streamed.parameters())  # the compressed model is whole afterwards
    assert all(np.array_equal(a, b) for a, b in zip(torch_outputs(whole, batches), torch_outputs(streamed, batches)))


def test_one_layer_of_original_weights_is_resident_at_a_time(tiny_model):
    source = inspect_model(str(tiny_model(LLAMA)))
    weights = LazyWeights(source)
    model = weights.skeleton()
    prefix = layers_name(model)
    layers = list(model.get_submodule(prefix))
    layer_bytes = sum(p.numel() * 4 for p in layers[0].parameters())
    rest_bytes = sum(p.numel() * 4 for name, p in model.named_parameters() if not name.startswith(prefix))
    seen = []

    def only_this_layer(index):
        def check(_module, _args, _kwargs):
            others = [p for i, layer in enumerate(layers) if i != index for module in layer.modules()
                      if not isinstance(module, LowRankLinear) for p in module.parameters(recurse=False)]
            seen.append((index, all(p.is_meta for p in others), weights.resident_bytes))
        return check

    for index, layer in enumerate(layers):
        layer.register_forward_pre_hook(only_this_layer(index), with_kwargs=True)
    compress_streamed_(model, weights, CompressionConfig(method="svd-whitened", targets="attention,ffn"),
                       load_tokenizer(source), CALIBRATION, progress=False)
    assert sorted({index for index, _, _ in seen}) == list(range(len(layers)))
    assert all(others_meta for _, others_meta, _ in seen)
    assert all(resident <= rest_bytes + layer_bytes for _, _, resident in seen)
    assert weights.peak_bytes <= rest_bytes + layer_bytes  # the loader's own accounting, over the whole run


@pytest.mark.slow
def test_streamed_export_gives_the_same_graph_outputs(tiny_model, tmp_path):
    folder = tiny_model(LLAMA)
    config, graph = CompressionConfig(method="svd-whitened", ratio=2.0), GraphConfig(optimize="none")
    whole = export(folder, tmp_path / "whole", config, graph, progress=False, calibration=CALIBRATION)
    streamed = export(folder, tmp_path / "streamed", config, graph, progress=False, calibration=CALIBRATION,
                      streamed=True)
    assert (whole["streamed"], streamed["streamed"]) == (False, True)
    assert whole["modules"] == streamed["modules"] and whole["fidelity"] == streamed["fidelity"]
    assert whole["parity"]["max_abs_diff"] == streamed["parity"]["max_abs_diff"]
    batches = tokenize(transformers.AutoTokenizer.from_pretrained(folder), shipped_texts()[:16], max_length=128)
    for a, b in zip(onnx_outputs(tmp_path / "whole" / "model.onnx", batches),
                    onnx_outputs(tmp_path / "streamed" / "model.onnx", batches)):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("config,words", [
    (CompressionConfig(method="svd-fisher"), "gradients"),
    (CompressionConfig(method="ae"), "score candidates"),
    (CompressionConfig(method="svd", frequency=True), "score candidates"),
    (CompressionConfig(method="svd-whitened", options=WhitenedOptions(sequential=True)), "sequential"),
    (CompressionConfig(method="svd-shared", targets="ffn"), "all layers together"),
    (CompressionConfig(method="prune-ffn", targets="ffn"), "prune"),
    (CompressionConfig(method="svd", targets="ffn", allocation="sensitivity"), "allocation sensitivity"),
    (CompressionConfig(method="svd", targets="ffn", then=CompressionConfig(method="svd", targets="attention")),
     "a mix"),
])
def test_what_needs_the_whole_model_is_refused_in_one_line(tiny_model, tmp_path, config, words):
    with pytest.raises(EdgefoldError) as error:
        export(tiny_model(LLAMA), tmp_path / "out", config, progress=False, streamed=True)
    assert words in str(error.value) and "without streaming" in str(error.value)
    assert "\n" not in str(error.value)
    assert not (tmp_path / "out").exists()


def test_bin_weights_are_refused_in_one_line(tiny_model, tmp_path):
    folder = tmp_path / "bin-only"
    model = transformers.AutoModelForCausalLM.from_pretrained(tiny_model(LLAMA))
    model.config.save_pretrained(folder)  # transformers 5 saves safetensors only: the .bin is written here
    torch.save(model.state_dict(), folder / "pytorch_model.bin")
    transformers.AutoTokenizer.from_pretrained(tiny_model(LLAMA)).save_pretrained(folder)
    with pytest.raises(EdgefoldError, match=r"\.bin weights only") as error:
        export(folder, tmp_path / "out", CompressionConfig(method="svd"), progress=False, streamed=True)
    assert "\n" not in str(error.value) and not (tmp_path / "out").exists()


@pytest.mark.slow
def test_the_stream_flag_exports_through_the_cli_and_refuses_in_one_line(tiny_model, tmp_path, capsys):
    from edgefold.cli import main

    model, out = tiny_model("llama-text-generation"), tmp_path / "streamed"
    assert main(["export", str(model), str(out), "--method", "svd-whitened", "--targets", "ffn-in,ffn-out",
                 "--ratio", "2", "--stream", "--quantize", "int8", "--optimize", "none", "--quiet"]) == 0
    manifest = json.loads((out / "edgefold.json").read_text())
    assert manifest["streamed"] is True and manifest["quantization"]["scheme"] == "int8"
    assert sum(m["status"] == "factorised" for m in manifest["modules"]) == 2 * 3  # 2 layers: gate, up, down
    capsys.readouterr()

    refused = tmp_path / "refused"
    assert main(["export", str(model), str(refused), "--method", "svd-fisher", "--stream", "--quiet"]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(errors) == 1 and "stream" in errors[0] and not refused.exists()
