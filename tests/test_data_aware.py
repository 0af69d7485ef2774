"""Data-aware factorisations: calibration statistics, whitened SVD, Fisher-weighted SVD, the whitened autoencoder."""

import json

import pytest
import torch
import transformers
from conftest import MINILM

from edgefold.exporter import CompressionConfig, compress_, export
from edgefold.exporter.calibration.batches import tokenize, torch_outputs
from edgefold.exporter.calibration.corpus import SHIPPED_CALIBRATION, Calibration
from edgefold.exporter.calibration.statistics import collect_statistics, input_moments
from edgefold.exporter.checks.verify import fidelity
from edgefold.exporter.methods import AutoencoderOptions, FitContext, get_method
from edgefold.cli import main
from edgefold.runtime.generate import greedy
from edgefold.runtime.session import make_feed, open_session, run
from edgefold.runtime.texts import shipped_texts

NEW_LAYER_METHODS = [("svd-whitened", None), ("svd-fisher", None), ("ae", AutoencoderOptions(whitened=True, epochs=1))]


def _output_error(weight, approximation, inputs):
    """Mean squared error of the layer's output over the rows of ``inputs`` (float64)."""
    return ((inputs.double() @ (weight.double() - approximation.double()).T) ** 2).sum().item() / len(inputs)


def _anisotropic_inputs(count=2000, cols=32):
    torch.manual_seed(0)
    mixing = torch.randn(cols, cols) * torch.logspace(0, -2, cols)  # a few input directions dominate
    return torch.randn(count, cols) @ mixing


def test_whitened_svd_reaches_the_optimum_of_the_output_error():
    weight, inputs = torch.randn(48, 32), _anisotropic_inputs()
    moments = inputs.double().T @ inputs.double() / len(inputs)
    context = FitContext(kind="ffn-in", input_moments=moments)
    whitened = get_method("svd-whitened").fit(weight, 8, context).dense()
    plain = get_method("svd").fit(weight, 8).dense()
    # the optimum, computed independently: the tail of the spectrum of W M^(1/2)
    values, vectors = torch.linalg.eigh(moments)
    root = vectors @ torch.diag(values.clamp_min(0).sqrt()) @ vectors.T
    optimum = torch.linalg.svdvals(weight.double() @ root)[8:].pow(2).sum().item()
    assert _output_error(weight, whitened, inputs) == pytest.approx(optimum, rel=1e-3)
    assert _output_error(weight, whitened, inputs) < 0.8 * _output_error(weight, plain, inputs)


def test_unwhitening_is_exact_at_full_rank():
    weight, inputs = torch.randn(24, 32), _anisotropic_inputs()
    context = FitContext(kind="q", input_moments=inputs.double().T @ inputs.double() / len(inputs))
    factors = get_method("svd-whitened").fit(weight, 24, context)
    torch.testing.assert_close(factors.dense(), weight, atol=1e-4, rtol=1e-4)


def test_whitened_autoencoder_without_training_is_whitened_svd_at_one_rank_less():
    """Its start (the whitened SVD solution, decoder bias 0) un-whitens to exactly what svd-whitened gives."""
    weight, inputs = torch.randn(40, 32), _anisotropic_inputs()
    moments = inputs.double().T @ inputs.double() / len(inputs)
    ae = get_method("ae", AutoencoderOptions(whitened=True, epochs=0))
    factors = ae.fit(weight, 9, FitContext(kind="v", input_moments=moments))
    expected = get_method("svd-whitened").fit(weight, 8, FitContext(kind="v", input_moments=moments))
    assert factors.folded().rank == 9
    torch.testing.assert_close(factors.dense(), expected.dense(), atol=1e-4, rtol=1e-3)


def test_fisher_weighted_svd_minimises_the_weighted_error():
    torch.manual_seed(1)
    weight = torch.randn(64, 40)
    importance = torch.rand(64, dtype=torch.float64) ** 4  # a few rows matter much more
    fisher = get_method("svd-fisher").fit(weight, 8, FitContext(kind="ffn-out", row_importance=importance))
    plain = get_method("svd").fit(weight, 8)

    def weighted(factors):
        return ((weight - factors.dense()).double().pow(2).sum(1) * importance).sum().item()

    optimum = torch.linalg.svdvals(weight.double() * importance.sqrt()[:, None])[8:].pow(2).sum().item()
    assert weighted(fisher) == pytest.approx(optimum, rel=1e-3) and weighted(fisher) < weighted(plain)
    uniform = get_method("svd-fisher").fit(weight, 8, FitContext(kind="q", row_importance=torch.ones(64)))
    torch.testing.assert_close(uniform.dense(), plain.dense(), atol=1e-4, rtol=1e-4)


def test_a_data_aware_method_without_statistics_says_what_it_needs():
    with pytest.raises(ValueError, match="input moments"):
        get_method("svd-whitened").fit(torch.randn(8, 8), 2, FitContext(kind="q"))
    # embeddings have no input activations: as svd
    table = torch.randn(50, 16)
    torch.testing.assert_close(get_method("svd-fisher").fit(table, 4, FitContext()).dense(),
                               get_method("svd").fit(table, 4).dense())


@pytest.mark.parametrize("method,options,needs", [("svd", None, False), ("svd-whitened", None, True),
                                                  ("svd-fisher", None, True),
                                                  ("ae", AutoencoderOptions(whitened=True), True)])
def test_calibration_follows_the_methods_needs(method, options, needs):
    config = CompressionConfig(method=method, targets="attention", options=options)
    assert config.needs_calibration == (needs or method == "ae")
    assert bool(config.build_method().needs) == needs


def test_moments_count_real_tokens_only(tiny_model):
    """Padding excluded and token-weighted: one padded batch gives what texts fed one at a time give."""
    folder = tiny_model("roberta-feature-extraction")
    model = transformers.AutoModel.from_pretrained(folder).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    texts = ["Short.", "A much longer sentence, with many more tokens than the first one has."]
    modules = {"ffn": (model.encoder.layer[0].intermediate.dense, False)}
    together = input_moments(model, modules, tokenize(tokenizer, texts, 64, batch_size=2), False)["ffn"]
    alone = input_moments(model, modules, tokenize(tokenizer, texts, 64, batch_size=1), False)["ffn"]
    torch.testing.assert_close(together, alone, rtol=1e-5, atol=1e-8)


def test_gpt2_fused_and_transposed_statistics_are_per_output_unit(tiny_model):
    folder = tiny_model("gpt2-text-generation")
    model = transformers.GPT2LMHeadModel.from_pretrained(folder).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    block = model.transformer.h[0]
    modules = {"c_attn": (block.attn.c_attn, True), "c_fc": (block.mlp.c_fc, True)}
    stats = collect_statistics(model, modules, frozenset({"input_moments", "row_importance"}),
                               shipped_texts(SHIPPED_CALIBRATION)[:20], tokenizer, progress=False)
    assert stats["c_attn"]["row_importance"].shape == (192,)  # q, k, v output units together
    assert stats["c_fc"]["row_importance"].shape == (256,) and bool((stats["c_fc"]["row_importance"] > 0).all())
    assert stats["c_fc"]["input_moments"].shape == (64, 64)
    assert all(p.requires_grad for p in model.parameters())  # flags restored


def test_statistics_use_the_fit_split_only(monkeypatch, tiny_model, tmp_path):
    seen = []

    def spy(model, modules, needs, texts, *args, **kwargs):
        seen.extend(texts)
        return collect_statistics(model, modules, needs, texts, *args, **kwargs)

    monkeypatch.setattr("edgefold.exporter.calibration.gathering.collect_statistics", spy)
    folder = tiny_model("bert-fill-mask")
    calibration_file = tmp_path / "cal.txt"
    calibration_file.write_text("\n".join(shipped_texts(SHIPPED_CALIBRATION)[:40]))
    calibration = Calibration.load(calibration_file)
    model = transformers.BertForMaskedLM.from_pretrained(folder).eval()
    compress_(model, CompressionConfig(method="svd-whitened", targets="ffn", ratio=2),
              tokenizer=transformers.AutoTokenizer.from_pretrained(folder), calibration=calibration, progress=False)
    assert seen == calibration.fit_texts and not set(seen) & set(calibration.validation_texts)


def test_empty_calibration_file_is_one_clear_error(capsys, tiny_model, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    code = main(["export", str(tiny_model("bert-fill-mask")), str(tmp_path / "out"), "--method", "svd-whitened",
                 "--targets", "ffn", "--calibration", str(empty)])
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and "has 0 non-empty lines" in line and not (tmp_path / "out").exists()


def test_fisher_statistics_of_a_classifier_use_its_sequence_logits(tiny_model, small_calibration):
    """A classifier's head gives one vector a text, not one a token: the probe must not be masked per token."""
    folder = tiny_model("distilbert-text-classification")
    model = transformers.DistilBertForSequenceClassification.from_pretrained(folder).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    records = compress_(model, CompressionConfig(method="svd-fisher", targets="ffn", ratio=2), tokenizer=tokenizer,
                        calibration=Calibration.load(small_calibration), progress=False)
    assert len(records) == 4 and all(r.status == "factorised" for r in records)
    fresh = transformers.DistilBertForSequenceClassification.from_pretrained(folder).eval()
    lin1 = fresh.distilbert.transformer.layer[0].ffn.lin1
    stats = collect_statistics(fresh, {"lin1": (lin1, False)}, frozenset({"row_importance"}),
                               shipped_texts(SHIPPED_CALIBRATION)[:20], tokenizer, progress=False)
    assert stats["lin1"]["row_importance"].shape == (128,) and bool((stats["lin1"]["row_importance"] > 0).all())


@pytest.mark.parametrize("method,options", NEW_LAYER_METHODS)
@pytest.mark.slow
def test_gpt2_exports_with_every_data_aware_method(method, options, tiny_model, small_calibration, tmp_path):
    config = CompressionConfig(method=method, targets="attention,ffn", ratio=2, options=options,
                               calibration=str(small_calibration))
    manifest = export(str(tiny_model("gpt2-text-generation")), tmp_path / "out", config, progress=False)
    assert manifest["parity"]["max_abs_diff"] <= 1e-3
    assert all(m["status"] == "factorised" for m in manifest["modules"])
    session = open_session(tmp_path / "out" / "model.onnx")
    prompt = transformers.AutoTokenizer.from_pretrained(tmp_path / "out")(["a short test"], return_tensors="np")
    tokens = greedy(session, prompt["input_ids"], prompt["attention_mask"], 2)
    assert tokens.shape == (1, prompt["input_ids"].shape[1] + 2)


@pytest.fixture(scope="module")
def small_calibration(tmp_path_factory):
    """100 shipped calibration lines (80 to fit, 20 to validate): real text, few enough for fast statistics."""
    path = tmp_path_factory.mktemp("calibration") / "cal.txt"
    path.write_text("\n".join(shipped_texts(SHIPPED_CALIBRATION)[:100]))
    return path


@pytest.fixture(scope="module")
def minilm_svd_layers():
    """Plain SVD of MiniLM's Linears at R = 2, in torch: its ranks, and its fidelity on the export's own
    verification text (what an export's manifest reports)."""
    tokenizer = transformers.AutoTokenizer.from_pretrained(MINILM)
    model = transformers.AutoModel.from_pretrained(MINILM).eval()
    batches = tokenize(tokenizer, shipped_texts(), 128)
    reference = torch_outputs(model, batches)
    records = compress_(model, CompressionConfig(method="svd", targets="attention,ffn", ratio=2), progress=False)
    return {r.name: r.rank for r in records}, fidelity("feature-extraction", reference, torch_outputs(model, batches),
                                                       batches)["mean_cosine"]


# the autoencoder on the FFNs only, one epoch: the un-whitened decoder's fold is what is checked here
MINILM_CASES = [("svd-whitened", "attention,ffn", {}), ("svd-fisher", "attention,ffn", {}),
                ("ae", "ffn", {"whitened": "true", "epochs": "1"})]


@pytest.mark.parametrize("method,targets,options", MINILM_CASES)
@pytest.mark.slow
def test_minilm_exports_with_parity_and_runs_in_onnxruntime(method, targets, options, small_calibration,
                                                           minilm_svd_layers, tmp_path):
    folder = tmp_path / "out"
    argv = ["export", str(MINILM), str(folder), "--method", method, "--targets", targets, "--ratio", "2",
            "--calibration", str(small_calibration), "--quiet"]
    assert main(argv + [a for k, v in options.items() for a in ("--method-option", f"{k}={v}")]) == 0
    manifest = json.loads((folder / "edgefold.json").read_text())
    assert manifest["parity"]["max_abs_diff"] <= 1e-3 and manifest["method"] == method
    svd_ranks, svd_fidelity = minilm_svd_layers
    assert {m["name"]: m["rank"] for m in manifest["modules"]}.items() <= svd_ranks.items()  # the same budget
    if method == "svd-whitened":  # on the export's own verification text, never calibrated on
        assert manifest["fidelity"]["mean_cosine"] > svd_fidelity + 0.1
    session = open_session(folder / "model.onnx")
    inputs = transformers.AutoTokenizer.from_pretrained(folder)(["a short test"], return_tensors="np")
    hidden = run(session, None, make_feed(session, inputs["input_ids"], inputs["attention_mask"]))[0]
    assert hidden.shape == (1, inputs["input_ids"].shape[1], 384)
