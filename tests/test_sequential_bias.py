"""The sequential, anchored whitened SVD and bias correction: each closed form against an independent
computation on random matrices, then exports of every architecture family through onnxruntime."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import transformers

from edgefold.exporter import CompressionConfig, export
from edgefold.exporter.bias import corrected_bias
from edgefold.exporter.calibration.batches import max_text_length, tokenize, torch_outputs
from edgefold.exporter.calibration.corpus import SHIPPED_CALIBRATION
from edgefold.exporter.calibration.sequential import LayerwiseActivations, forward_stages
from edgefold.exporter.calibration.statistics import collect_statistics
from edgefold.exporter.checks.verify import fidelity
from edgefold.exporter.compress import compress_
from edgefold.exporter.methods import FitContext, WhitenedOptions, get_method
from edgefold.exporter.methods.base import ANCHOR_MEAN, INPUT_MEAN, INPUT_MOMENTS
from edgefold.exporter.nn.swap import select_modules
from edgefold.exporter.source.architectures import spec_for
from edgefold.exporter.source.loading import inspect_model, load_model, load_tokenizer
from edgefold.runtime import EdgefoldError
from edgefold.runtime.generate import greedy
from edgefold.runtime.session import make_feed, open_session, run
from edgefold.runtime.texts import shipped_texts

SEQUENTIAL = WhitenedOptions(sequential=True)


def _samples(n=4000, d=24, m=16, seed=0):
    """Inputs x of an original layer, x^ = a distorted copy (what earlier compressed layers pass on), weights."""
    g = torch.Generator().manual_seed(seed)
    mixing = torch.eye(d, dtype=torch.float64) + 0.3 * torch.randn(d, d, generator=g, dtype=torch.float64)
    x = torch.randn(n, d, generator=g, dtype=torch.float64) @ mixing + 0.5  # correlated, with a mean
    x_hat = x @ (torch.eye(d, dtype=torch.float64) + 0.2 * torch.randn(d, d, generator=g, dtype=torch.float64))
    x_hat = x_hat + 0.05 * torch.randn(n, d, generator=g, dtype=torch.float64)
    weight = torch.randn(m, d, generator=g, dtype=torch.float64)
    return x, x_hat, weight


def _anchored_fit(weight, x, x_hat, rank):
    n = len(x)
    context = FitContext(kind="ffn-in", input_moments=x_hat.T @ x_hat / n, anchor_moments=x.T @ x_hat / n)
    factors = get_method("svd-whitened", SEQUENTIAL).fit(weight.float(), rank, context)
    return (factors.left.double() @ factors.right.double())


def _reduced_rank_regression(weight, x, x_hat, rank):
    """The rank-r least-squares W' for W x ~ W' x^, computed another way: ordinary least squares, then the
    fitted values projected on their top r principal directions (reduced-rank regression)."""
    target = x @ weight.T
    solution = torch.linalg.lstsq(x_hat, target).solution  # d x m
    fitted = x_hat @ solution
    directions = torch.linalg.svd(fitted, full_matrices=False)[2][:rank]  # r x m
    return (solution @ directions.T @ directions).T


def _error(weight, replacement, x, x_hat):
    return float(((x @ weight.T - x_hat @ replacement.T) ** 2).mean())


@pytest.mark.parametrize("rank", [4, 8, 12])
def test_anchored_fit_reaches_the_least_squares_optimum(rank):
    x, x_hat, weight = _samples()
    ours = _anchored_fit(weight, x, x_hat, rank)
    optimum = _reduced_rank_regression(weight, x, x_hat, rank)
    assert _error(weight, ours, x, x_hat) == pytest.approx(_error(weight, optimum, x, x_hat), rel=1e-3)
    # the same outputs, up to the damping and the float32 factors
    outputs = x_hat @ optimum.T
    assert float((x_hat @ ours.T - outputs).norm() / outputs.norm()) < 5e-3


def test_anchoring_beats_whitening_on_the_drifted_input():
    """Plain whitened SVD fits W x^ ~ W' x^ (the original input assumed); anchoring fits the original output."""
    x, x_hat, weight = _samples(seed=1)
    n = len(x)
    plain = get_method("svd-whitened").fit(weight.float(), 8, FitContext(kind="q", input_moments=x_hat.T @ x_hat / n))
    plain = plain.left.double() @ plain.right.double()
    assert _error(weight, _anchored_fit(weight, x, x_hat, 8), x, x_hat) < 0.8 * _error(weight, plain, x, x_hat)


def test_bias_correction_zeroes_the_mean_output_error():
    x, x_hat, weight = _samples(seed=2)
    replacement = _anchored_fit(weight, x, x_hat, 4)
    bias = torch.randn(len(weight), dtype=torch.float64)
    corrected = corrected_bias(weight, replacement, bias, x_hat.mean(0), anchor_mean=x.mean(0))
    error = (x @ weight.T + bias) - (x_hat @ replacement.T + corrected)
    assert error.mean(0).abs().max() < 1e-9
    uncorrected = (x @ weight.T + bias) - (x_hat @ replacement.T + bias)
    assert uncorrected.mean(0).abs().max() > 1e-2  # there was something to remove
    # and without a sequential fit (x^ = x) the same formula centres W x - W' x
    centred = corrected_bias(weight, replacement, None, x.mean(0))
    assert ((x @ weight.T) - (x @ replacement.T + centred)).mean(0).abs().max() < 1e-9


@pytest.mark.parametrize("kind,expected", [
    ("bert-fill-mask", [["query", "key", "value"], ["attention.output.dense"], ["intermediate.dense"],
                        ["output.dense"]]),
    ("llama-text-generation", [["q_proj", "k_proj", "v_proj"], ["o_proj"], ["gate_proj", "up_proj"], ["down_proj"]]),
])
def test_forward_stages_group_the_linears_that_read_one_input(tiny_model, kind, expected):
    folder = tiny_model(kind)
    model = transformers.AutoModelForMaskedLM.from_pretrained(folder) if "bert" in kind else \
        transformers.AutoModelForCausalLM.from_pretrained(folder)
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    names = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and ".layers." in f".{n}"
             or ".layer." in n and isinstance(m, torch.nn.Linear)]
    stages = forward_stages(model.eval(), {n: (model.get_submodule(n), False) for n in names},
                            tokenize(tokenizer, ["One short text."], 16)[0])
    assert len(stages) == 4 * model.config.num_hidden_layers
    for i, stage in enumerate(stages):
        ends = expected[i % 4]
        assert len(stage) == len(ends) and all(name.endswith(end) for name, end in zip(stage, ends)), stage


@pytest.mark.parametrize("kind", ["distilbert-text-classification", "gpt2-text-generation",
                                  "llama-text-generation"])
def test_layer_by_layer_activations_match_a_full_forward_pass(tiny_model, kind):
    """Carried one layer at a time, the hidden states give a later layer's Linears the statistics that hooks on
    whole forward passes give; with a module of an earlier layer changed, x^ follows the change and x does not."""
    folder = tiny_model(kind)
    auto = transformers.AutoModelForCausalLM if "generation" in kind else transformers.AutoModelForSequenceClassification
    original, model = (auto.from_pretrained(folder).eval() for _ in range(2))
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    texts = shipped_texts(SHIPPED_CALIBRATION)[:12]
    batches = tokenize(tokenizer, texts, 32, batch_size=4)
    spec = spec_for(model.config.model_type)
    linears = [(name, kinds) for name, _, kinds in select_modules(model, spec, frozenset({"q", "k", "v", "ffn-out"}))]
    first, last = linears[0][0], linears[-1][0]  # a module of layer 0, the FFN output of the last layer
    with torch.no_grad():
        model.get_submodule(first).weight.mul_(0.5)  # "compressed": its layer's output changes
    carried = LayerwiseActivations(original, model, first, batches).measure([last])[last]
    whole = {name: collect_statistics(m, {last: (m.get_submodule(last), spec.transposed)},
                                      frozenset({INPUT_MOMENTS}), texts, tokenizer, progress=False)[last]
             for name, m in (("original", original), ("model", model))}
    torch.testing.assert_close(carried[INPUT_MOMENTS], whole["model"][INPUT_MOMENTS], rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(carried[ANCHOR_MEAN], whole["original"][INPUT_MEAN], rtol=1e-4, atol=1e-6)
    assert not torch.allclose(carried[INPUT_MEAN], carried[ANCHOR_MEAN], rtol=1e-3)


@pytest.mark.parametrize("kind", ["bert-fill-mask", "distilbert-text-classification", "gpt2-text-generation",
                                  "llama-text-generation"])
@pytest.mark.slow
def test_sequential_with_bias_correction_exports_every_family(tiny_model, small_calibration, tmp_path, kind):
    folder = tiny_model(kind)
    config = CompressionConfig(method="svd-whitened", targets="attention,ffn", ratio=2.0, options=SEQUENTIAL,
                               bias_correction=True, calibration=str(small_calibration))
    manifest = export(folder, tmp_path / "out", config, progress=False)
    assert manifest["bias_correction"] is True and manifest["method_options"] == {"sequential": "true"}
    linears = [m for m in manifest["modules"] if m["status"] == "factorised"]
    assert linears and all("bias_shift" in m["fit"] for m in linears)
    assert manifest["parity"]["max_abs_diff"] <= manifest["parity"]["atol"]
    session = open_session(tmp_path / "out" / "model.onnx")
    ids = np.array([[101, 2023, 2003]])
    if manifest["task"] == "text-generation":  # Llama's Linears had no bias: they have one now, cache and all
        assert greedy(session, ids, np.ones_like(ids), 3).shape == (1, 6)
    else:
        assert run(session, None, make_feed(session, ids, np.ones_like(ids)))[0].shape[0] == 1


@pytest.mark.slow
def test_sequential_and_bias_correction_improve_the_real_minilm(tmp_path):
    """On the real MiniLM at half the Linears' parameters: each step improves the fidelity an export measures
    (in torch, on the held-out verification text, not the calibration text; the graph's parity with torch is
    the family exports' above). On 800 calibration lines, unfused; on 300 the corrections fit the text too
    closely and lose to plain whitening (0.754 against 0.759)."""
    from conftest import MINILM

    source = inspect_model(str(MINILM))
    original, tokenizer = load_model(source), load_tokenizer(source)
    batches = tokenize(tokenizer, shipped_texts(), max_text_length(original))
    reference = torch_outputs(original, batches)
    calibration = tmp_path / "calibration.txt"
    calibration.write_text("\n".join(shipped_texts(SHIPPED_CALIBRATION)[:800]))
    cosine = {}
    for name, options, bias in (("plain", None, False), ("anchored+bias", SEQUENTIAL, True)):
        config = CompressionConfig(method="svd-whitened", targets="attention,ffn", ratio=2.0, options=options,
                                   bias_correction=bias, calibration=str(calibration))
        network = copy.deepcopy(original)
        compress_(network, config, tokenizer=tokenizer, progress=False)
        cosine[name] = fidelity(source.task, reference, torch_outputs(network, batches), batches)["mean_cosine"]
    assert cosine["anchored+bias"] > cosine["plain"] + 0.02, cosine


def test_bias_correction_needs_a_method():
    with pytest.raises(EdgefoldError, match="--bias-correction"):
        CompressionConfig(method="none", bias_correction=True)
    with pytest.raises(EdgefoldError, match="sequential"):
        CompressionConfig(method="svd-whitened", options=WhitenedOptions(sequential="yes"))


@pytest.mark.parametrize("method", ["svd", "svd-shared"])
@pytest.mark.slow
def test_bias_correction_serves_per_module_and_group_methods(tiny_model, small_calibration, tmp_path, method):
    """Every Linear method: the output mean error on calibration text is removed, and the export stays exact."""
    folder = tiny_model("roberta-feature-extraction")
    plain = export(folder, tmp_path / "plain", CompressionConfig(method=method, targets="ffn", ratio=2.0),
                   progress=False)
    corrected = export(folder, tmp_path / "corrected", CompressionConfig(
        method=method, targets="ffn", ratio=2.0, bias_correction=True, calibration=str(small_calibration)),
        progress=False)
    shifted = [m["fit"]["bias_shift"] for m in corrected["modules"] if m["status"] != "dense"]
    assert len(shifted) == 4 and all(shift > 0 for shift in shifted)
    assert "bias_shift" not in plain["modules"][0]["fit"]
    assert corrected["parity"]["max_abs_diff"] <= corrected["parity"]["atol"]


@pytest.mark.slow
def test_a_mix_compresses_other_targets_after_the_first_config(tiny_model, small_calibration, tmp_path):
    """Heads pruned, then the FFN factorised on the pruned model (statistics of the model compressed so far)."""
    folder = tiny_model("bert-fill-mask")
    calibration = str(small_calibration)
    config = CompressionConfig(method="prune-heads", targets="attention", ratio=2.0, calibration=calibration,
                               then=CompressionConfig(method="svd-whitened", targets="ffn", ratio=2.0,
                                                      options=SEQUENTIAL, bias_correction=True,
                                                      calibration=calibration))
    manifest = export(folder, tmp_path / "out", config, progress=False)
    statuses = {m["name"].rsplit(".", 2)[-2] + "." + m["name"].rsplit(".", 1)[-1]: m["status"]
                for m in manifest["modules"]}
    assert set(statuses.values()) == {"pruned", "factorised"}
    assert manifest["then"]["method"] == "svd-whitened" and manifest["then"]["targets"] == ["ffn-in", "ffn-out"]
    assert manifest["parity"]["max_abs_diff"] <= manifest["parity"]["atol"]
    with pytest.raises(EdgefoldError, match="different modules"):
        CompressionConfig(method="prune-ffn", targets="ffn", then=CompressionConfig(method="svd", targets="ffn-out"))
