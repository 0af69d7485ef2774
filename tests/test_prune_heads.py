"""Attention-head pruning: units and shrinking against independent computations, the repair on real head
columns against least squares, and real exports of every family (GPT-2 causal LMs with a cache of each layer's
kept heads)."""

import json

import numpy as np
import onnx
import pytest
import torch
import transformers
from conftest import MINILM

from edgefold.exporter import CompressionConfig, GraphConfig, compress_, export
from edgefold.exporter.nn.heads import remove_heads
from edgefold.exporter.nn.swap import dense_weight
from edgefold.exporter.onnx.export import backend, export_onnx
from edgefold.exporter.source.architectures import spec_for
from edgefold.exporter.structured import Block, PruneHeads, repair
from edgefold.cli import main
from edgefold.runtime.generate import greedy
from edgefold.runtime.session import make_feed, open_session, run

# The attention output projection of layer i, and the auto class that loads each tiny model.
READERS = {
    "bert-fill-mask": ("bert.encoder.layer.{}.attention.output.dense", transformers.AutoModelForMaskedLM),
    "distilbert-text-classification": ("distilbert.transformer.layer.{}.attention.out_lin",
                                       transformers.AutoModelForSequenceClassification),
    "gpt2-text-generation": ("h.{}.attn.c_proj", transformers.AutoModel),  # the causal LM: tests of their own
    "llama-text-generation": ("model.layers.{}.self_attn.o_proj", transformers.AutoModelForCausalLM),
}
#: Units kept per layer by the shrink tests: per-layer counts where the config can record them, the same where
#: it cannot (Llama's two units are its two key/value heads).
KEPT = {"bert-fill-mask": [[1, 3], [0]], "distilbert-text-classification": [[0, 2, 3], [2]],
        "gpt2-text-generation": [[0, 3], [1, 2]], "llama-text-generation": [[1], [0]]}


def _load(kind, tiny_model):
    folder = tiny_model(kind)
    model = READERS[kind][1].from_pretrained(folder).eval()
    return model, spec_for(model.config.model_type)


def _block(kind, layer):
    return Block(f"layer {layer}", (), READERS[kind][0].format(layer))


def _tokens(seed=0, batch=4, length=24):
    return torch.randint(1000, 2000, (batch, length), generator=torch.Generator().manual_seed(seed))


def _output(model, tokens):
    with torch.no_grad():
        output = model(input_ids=tokens)
    return output.logits if hasattr(output, "logits") else output.last_hidden_state


@pytest.mark.parametrize("kind", ["bert-fill-mask", "distilbert-text-classification", "gpt2-text-generation"])
def test_a_unit_is_one_head_and_owns_its_columns(kind, tiny_model):
    model, spec = _load(kind, tiny_model)
    units = PruneHeads().unit_columns(model, spec, _block(kind, 1))
    assert [u.tolist() for u in units] == [list(range(16 * h, 16 * h + 16)) for h in range(4)]


def test_with_grouped_query_attention_a_unit_is_a_key_value_head_and_its_query_heads(tiny_model):
    model, spec = _load("llama-text-generation", tiny_model)
    assert (model.config.num_attention_heads, model.config.num_key_value_heads) == (4, 2)
    units = PruneHeads().unit_columns(model, spec, _block("llama-text-generation", 0))
    assert [u.tolist() for u in units] == [list(range(0, 32)), list(range(32, 64))]  # query heads 0-1, 2-3


@pytest.mark.parametrize("kind", list(READERS))
def test_shrinking_computes_what_zeroing_the_removed_heads_computes(kind, tiny_model):
    """With the reader's own kept columns (nothing repaired) the narrower model equals the whole one whose
    output projection ignores the removed heads."""
    model, spec = _load(kind, tiny_model)
    method, zeroed = PruneHeads(), _load(kind, tiny_model)[0]
    for layer, kept in enumerate(KEPT[kind]):
        block = _block(kind, layer)
        units = method.unit_columns(model, spec, block)
        reader = model.get_submodule(block.reader)
        weight = dense_weight(reader, spec, ("attention-output",))
        columns = torch.cat([units[u] for u in kept])
        removed = torch.cat([units[u] for u in range(len(units)) if u not in kept])
        with torch.no_grad():  # GPT-2's Conv1D stores (in x out): an input column is a row there
            target = zeroed.get_submodule(block.reader).weight
            if spec.transposed:
                target[removed] = 0
            else:
                target[:, removed] = 0
        method.shrink(model, spec, block, kept, weight[:, columns], reader.bias)
        assert model.get_submodule(block.reader).weight.numel() == weight.shape[0] * len(columns)
    tokens = _tokens()
    torch.testing.assert_close(_output(model, tokens), _output(zeroed, tokens), rtol=1e-5, atol=1e-5)
    assert model.config.pruned_heads == {0: _removed(kind, 0), 1: _removed(kind, 1)}


def _removed(kind, layer):
    group = 2 if kind == "llama-text-generation" else 1
    return [h for h in range(4) if h // group not in KEPT[kind][layer]]


@pytest.mark.skipif(int(transformers.__version__.split(".")[0]) >= 5,
                    reason="transformers 5 dropped config.pruned_heads: it cannot rebuild a head-pruned model from its "
                           "config (the exported graph has the pruned shapes; README, 'Two exporter stacks')")
@pytest.mark.parametrize("kind", ["bert-fill-mask", "distilbert-text-classification", "gpt2-text-generation"])
def test_a_model_with_heads_removed_per_layer_reloads_from_its_saved_config(kind, tiny_model, tmp_path):
    model, spec = _load(kind, tiny_model)
    method = PruneHeads()
    for layer, kept in enumerate(KEPT[kind]):
        block = _block(kind, layer)
        reader = model.get_submodule(block.reader)
        columns = torch.cat([method.unit_columns(model, spec, block)[u] for u in kept])
        weight = dense_weight(reader, spec, ("attention-output",))[:, columns] * 1.5  # any new weight
        method.shrink(model, spec, block, kept, weight, torch.full_like(reader.bias, 0.25))
    model.save_pretrained(tmp_path)
    reloaded = READERS[kind][1].from_pretrained(tmp_path).eval()
    tokens = _tokens(seed=1)
    torch.testing.assert_close(_output(reloaded, tokens), _output(model, tokens))


def test_a_llama_keeps_one_key_value_head_count_for_every_layer(tiny_model):
    """A runtime may shape the cache from config.json: num_key_value_heads takes the kept count, the head width stays
    hidden_size // num_attention_heads, and no layer may keep a different count."""
    model, spec = _load("llama-text-generation", tiny_model)
    method, kind = PruneHeads(), "llama-text-generation"
    assert method.same_units_every_layer(model)
    block = _block(kind, 0)
    weight = model.get_submodule(block.reader).weight
    method.shrink(model, spec, block, [1], weight[:, 32:].detach(), None)
    config = model.config
    assert (config.num_key_value_heads, config.num_attention_heads, config.head_dim) == (1, 4, 16)
    assert config.hidden_size // config.num_attention_heads == config.head_dim
    attention = model.model.layers[0].self_attn
    widths = (attention.q_proj.out_features, attention.k_proj.out_features, attention.o_proj.in_features)
    assert widths == (32, 16, 32) and attention.num_key_value_groups == 2
    with pytest.raises(ValueError, match="every layer must keep the same number"):
        method.shrink(model, spec, _block(kind, 1), [0, 1], model.model.layers[1].self_attn.o_proj.weight, None)


@pytest.mark.parametrize("centred", [False, True])
def test_the_repair_on_kept_heads_is_least_squares_on_the_projections_inputs(centred, tiny_model):
    """W_o C[:, S] C[S, S]^-1 from the statistics of the output projection's input z equals lstsq on z itself,
    S the columns of the kept key/value head and its query heads."""
    model, spec = _load("llama-text-generation", tiny_model)
    block = _block("llama-text-generation", 1)
    reader = model.get_submodule(block.reader)
    inputs = []
    hook = reader.register_forward_hook(lambda module, args, output: inputs.append(args[0].reshape(-1, 64)))
    _output(model, _tokens(seed=2, batch=16))
    hook.remove()
    z = torch.cat(inputs).double()
    weight = reader.weight.detach().double()
    kept = PruneHeads().unit_columns(model, spec, block)[1]
    new_weight, new_bias = repair(weight, z.T @ z / len(z), z.mean(dim=0), kept, None, centred, damping=0.0)
    design = torch.cat([z[:, kept], torch.ones(len(z), 1, dtype=z.dtype)], dim=1) if centred else z[:, kept]
    solution = torch.linalg.lstsq(design, z @ weight.T).solution
    torch.testing.assert_close(new_weight, solution[:len(kept)].T, rtol=1e-7, atol=1e-9)
    if centred:
        torch.testing.assert_close(new_bias, solution[-1], rtol=1e-7, atol=1e-9)


def _config(calibration, ratio=2.0):
    return CompressionConfig(method="prune-heads", targets="attention", ratio=ratio, calibration=str(calibration))


# (tiny model, task, attention matrices per layer, how many of them the kept half of the query heads (32 wide)
# narrows: all four, or GPT-2's c_proj alone (its c_attn is 3 x 32), or Llama's q and o (k and v are 16 wide))
EXPORTS = [("bert-fill-mask", "auto", 4, 4), ("distilbert-text-classification", "auto", 4, 4),
           ("gpt2-text-generation", "feature-extraction", 2, 1), ("llama-text-generation", "auto", 4, 2)]


@pytest.mark.parametrize("kind,task,matrices,narrowed", EXPORTS)
@pytest.mark.slow
def test_tiny_models_export_fewer_heads_with_parity_and_run_in_onnxruntime(kind, task, matrices, narrowed, tiny_model,
                                                                          small_calibration, tmp_path):
    folder = tmp_path / "out"
    manifest = export(str(tiny_model(kind)), folder, _config(small_calibration), GraphConfig(optimize="none"),
                      task=task, progress=False)
    assert manifest["compression"] == "structured" and manifest["parity"]["max_abs_diff"] <= 1e-3
    totals = manifest["totals"]
    assert totals["modules_pruned"] == 2 * matrices and totals["modules_left_dense"] == 0
    assert totals["targeted_params_after"] == totals["targeted_params_before"] // 2
    assert totals["model_params_after"] < totals["model_params_before"]
    for module in manifest["modules"]:
        assert module["fit"]["unit"] == "head" and module["fit"]["units_kept"] * 2 == module["fit"]["units"]
    graph = onnx.load(str(folder / "model.onnx")).graph
    assert sum(32 in i.dims for i in graph.initializer if len(i.dims) == 2) == 2 * narrowed
    session = open_session(folder / "model.onnx")
    inputs = transformers.AutoTokenizer.from_pretrained(folder)(["a short test"], return_tensors="np")
    if manifest["task"] == "text-generation":
        assert greedy(session, inputs["input_ids"], inputs["attention_mask"], 2).shape == (
            1, inputs["input_ids"].shape[1] + 2)
    else:
        assert run(session, None, make_feed(session, inputs["input_ids"], inputs["attention_mask"]))[0].shape[0] == 1


@pytest.mark.slow
def test_a_pruned_llama_generates_in_onnxruntime_as_in_torch(tiny_model, small_calibration, tmp_path):
    """config.json records the kept key/value heads, and greedy tokens from the narrower graph, its first, empty
    cache and every later one, equal torch's."""
    source = tiny_model("llama-text-generation")
    export(str(source), tmp_path / "out", _config(small_calibration), GraphConfig(optimize="none"), progress=False)
    tokenizer = transformers.AutoTokenizer.from_pretrained(source)
    model = transformers.AutoModelForCausalLM.from_pretrained(source).eval()
    compress_(model, _config(small_calibration), tokenizer=tokenizer, progress=False)
    assert json.loads((tmp_path / "out" / "config.json").read_text())["num_key_value_heads"] == 1
    _generates_as_in_torch(tmp_path / "out", model, tokenizer)


def _cache_heads(folder):
    """Per cache input and output of the saved graph, its heads axis (a count, or the name of a symbolic one)."""
    graph = onnx.load(str(folder / "model.onnx")).graph
    return {value.name: value.type.tensor_type.shape.dim[1].dim_param or value.type.tensor_type.shape.dim[1].dim_value
            for value in [*graph.input, *graph.output] if value.name.startswith(("past_key_values.", "present."))}


def _generates_as_in_torch(folder, model, tokenizer):
    """Greedy tokens from ``folder``'s graph in onnxruntime (its first, empty cache sized from the graph, every
    later one the graph's own) equal ``model``'s, on a left-padded batch of two lengths."""
    session = open_session(folder / "model.onnx")
    tokenizer.padding_side = "left"
    inputs = tokenizer(["the cat sat on", "a short"], return_tensors="pt", padding=True, return_token_type_ids=False)
    with torch.no_grad():
        expected = model.generate(**inputs, max_new_tokens=6, do_sample=False, pad_token_id=0)
    tokens = greedy(session, inputs["input_ids"].numpy(), inputs["attention_mask"].numpy(), 6)
    np.testing.assert_array_equal(tokens, expected.numpy())


@pytest.mark.slow
def test_a_gpt2_causal_lm_exports_a_cache_of_each_layers_kept_heads_and_generates_as_in_torch(
        tiny_model, small_calibration, tmp_path):
    """GPT-2's config (n_head and pruned_heads, as transformers writes it) cannot size a cache of fewer heads: the
    graph's cache inputs take any head count and its outputs have each layer's kept heads; edgefold's runtime runs
    it, greedy and benchmarked."""
    source, folder = tiny_model("gpt2-text-generation"), tmp_path / "out"
    manifest = export(str(source), folder, _config(small_calibration), GraphConfig(optimize="none"), progress=False)
    assert manifest["task"] == "text-generation" and manifest["parity"]["max_abs_diff"] <= 1e-3
    assert all(m["fit"]["units_kept"] * 2 == m["fit"]["units"] for m in manifest["modules"])
    config = json.loads((folder / "config.json").read_text())
    assert config["n_head"] == 4 and sorted(len(heads) for heads in config["pruned_heads"].values()) == [2, 2]
    assert _cache_heads(folder) == {f"{name}.{layer}.{kind}": heads for layer in range(2) for kind in ("key", "value")
                                    for name, heads in (("past_key_values", _past_heads(layer, 2)), ("present", 2))}
    tokenizer = transformers.AutoTokenizer.from_pretrained(source)
    model = transformers.AutoModelForCausalLM.from_pretrained(source).eval()
    compress_(model, _config(small_calibration), tokenizer=tokenizer, progress=False)
    _generates_as_in_torch(folder, model, tokenizer)
    assert main(["bench", str(folder), "--threads", "1", "--warmup", "1", "--iterations", "2", "--min-seconds", "0",
                 "--seq", "16", "-o", str(tmp_path / "bench.json")]) == 0
    assert json.loads((tmp_path / "bench.json").read_text())["schema"] == "edgefold.bench"


def _past_heads(layer: int, kept: int):
    """The heads axis of a pruned GPT-2's cache input: optimum's export sizes it from config.json, which cannot say
    fewer heads, so edgefold makes it symbolic; transformers 5's exporter traces each layer's kept count."""
    return f"past_heads.{layer}" if backend() == "optimum" else kept


@pytest.mark.slow
def test_gpt2_layers_keeping_different_head_counts_export_with_a_cache_each(tiny_model, tmp_path):
    """Layer 0 keeps two heads, layer 1 one: each layer's cache has its own count; the exported config is the
    original n_head with transformers' pruned_heads."""
    source = tiny_model("gpt2-text-generation")
    tokenizer = transformers.AutoTokenizer.from_pretrained(source)
    model = transformers.AutoModelForCausalLM.from_pretrained(source).eval()
    spec = spec_for("gpt2")
    for layer, kept in enumerate([[0, 3], [1]]):
        remove_heads(model, spec, f"transformer.h.{layer}.attn.c_proj", kept)
    export_onnx(model, "text-generation", tmp_path, tokenizer)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["n_head"] == 4 and config["pruned_heads"] == {"0": [1, 2], "1": [0, 2, 3]}
    heads = _cache_heads(tmp_path)
    assert [heads[f"present.{layer}.{kind}"] for layer in range(2) for kind in ("key", "value")] == [2, 2, 1, 1]
    assert [heads[f"past_key_values.{layer}.value"] for layer in range(2)] == [_past_heads(0, 2), _past_heads(1, 1)]
    _generates_as_in_torch(tmp_path, model, tokenizer)


@pytest.mark.slow
def test_minilm_keeps_three_quarters_of_its_heads_with_parity_and_runs_in_onnxruntime(small_calibration, tmp_path):
    folder = tmp_path / "out"
    manifest = export(str(MINILM), folder, _config(small_calibration, ratio=1.333), GraphConfig(optimize="none"),
                      progress=False)
    assert manifest["parity"]["max_abs_diff"] <= 1e-3 and manifest["totals"]["modules_pruned"] == 24
    assert all(m["fit"]["units_kept"] == 9 and m["fit"]["units"] == 12 for m in manifest["modules"])
    assert manifest["fidelity"]["mean_cosine"] > 0.9
    session = open_session(folder / "model.onnx")
    inputs = transformers.AutoTokenizer.from_pretrained(folder)(["a short test"], return_tensors="np")
    hidden = run(session, None, make_feed(session, inputs["input_ids"], inputs["attention_mask"]))[0]
    assert hidden.shape == (1, inputs["input_ids"].shape[1], 384)
