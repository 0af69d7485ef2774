import copy

import pytest
import torch
import transformers

from edgefold.exporter import CompressionConfig, compress_
from edgefold.exporter.calibration.batches import torch_outputs
from edgefold.exporter.checks.verify import ValidationScorer, fidelity
from edgefold.exporter.methods import AutoencoderOptions, SharedBasisOptions, get_method
from edgefold.exporter.nn.layers import LowRankEmbedding, LowRankLinear, TiedLowRankHead
from edgefold.exporter.nn.swap import retie_head, swap
from edgefold.runtime import EdgefoldError
from edgefold.runtime.texts import shipped_texts


def _load(folder, name):
    return getattr(transformers, name).from_pretrained(folder).eval()


def test_targets_pick_exactly_the_named_kinds(tiny_model):
    model = _load(tiny_model("bert-fill-mask"), "BertForMaskedLM")
    records = compress_(model, CompressionConfig(targets="q,ffn-out", ratio=2), progress=False)
    assert sorted(r.name for r in records) == [
        "bert.encoder.layer.0.attention.self.query", "bert.encoder.layer.0.output.dense",
        "bert.encoder.layer.1.attention.self.query", "bert.encoder.layer.1.output.dense",
    ]
    layer = model.bert.encoder.layer[0]
    assert isinstance(layer.attention.self.query, LowRankLinear)
    assert isinstance(layer.output.dense, LowRankLinear)
    assert isinstance(layer.attention.self.key, torch.nn.Linear)  # not targeted
    assert isinstance(layer.attention.output.dense, torch.nn.Linear)  # "output.dense" of attention is not ffn-out


def test_swapped_linear_computes_the_factorised_weight(tiny_model):
    model = _load(tiny_model("bert-fill-mask"), "BertForMaskedLM")
    original = model.bert.encoder.layer[0].intermediate.dense
    weight, bias = original.weight.detach().clone(), original.bias.detach().clone()
    (record,) = [r for r in compress_(model, CompressionConfig(targets="ffn-in", ratio=2), progress=False)
                 if r.name.endswith("layer.0.intermediate.dense")]
    swapped = model.bert.encoder.layer[0].intermediate.dense
    x = torch.randn(3, 64)
    expected = x @ (swapped.up @ swapped.down).T + bias
    assert torch.allclose(swapped(x), expected, atol=1e-5)
    assert record.rank == swapped.rank == 16 and record.params_after == 16 * (64 + 128)
    assert torch.linalg.matrix_rank(swapped.up @ swapped.down) == 16 < torch.linalg.matrix_rank(weight)


def test_tied_head_shares_the_embedding_factors(tiny_model):
    model = _load(tiny_model("gpt2-text-generation"), "GPT2LMHeadModel")
    compress_(model, CompressionConfig(targets="embeddings", ratio=2), progress=False)
    embedding, head = model.transformer.wte, model.lm_head
    assert isinstance(embedding, LowRankEmbedding) and isinstance(head, TiedLowRankHead)
    assert head.embedding is embedding
    hidden = torch.randn(2, 5, 64)
    dense = embedding.table @ embedding.proj
    assert torch.allclose(head(hidden), hidden @ dense.T, atol=1e-4)
    ids = torch.tensor([[1, 7, 30000]])
    assert torch.allclose(embedding(ids), dense[ids], atol=1e-5)


def test_fused_qkv_must_be_targeted_together(tiny_model):
    model = _load(tiny_model("gpt2-text-generation"), "GPT2LMHeadModel")
    with pytest.raises(EdgefoldError, match=r"gpt2 stores q, k, v in one matrix .*c_attn"):
        compress_(model, CompressionConfig(targets="q", ratio=2), progress=False)


def test_gpt2_conv1d_is_replaced_with_the_same_function(tiny_model):
    model = _load(tiny_model("gpt2-text-generation"), "GPT2LMHeadModel")
    conv = model.transformer.h[0].mlp.c_fc
    x = torch.randn(2, 64, generator=torch.Generator().manual_seed(0))
    compress_(model, CompressionConfig(targets="ffn-in", ratio=1.05), progress=False)
    low_rank = model.transformer.h[0].mlp.c_fc
    # Conv1D computes x @ W + b (W stored in x out, transposed to a Linear's): the factors must be the truncated
    # SVD of that W, not of its transpose read as a Linear's, at the rank ratio 1.05 allows
    u, s, vh = torch.linalg.svd(conv.weight.detach(), full_matrices=False)
    r = low_rank.rank
    truncated = x @ (u[:, :r] * s[:r] @ vh[:r]) + conv.bias.detach()
    assert isinstance(low_rank, LowRankLinear) and r < 64
    assert torch.allclose(low_rank(x), truncated, atol=1e-5)


@pytest.mark.parametrize("bad", [dict(ratio=0.5), dict(ratio=1), dict(ratio=float("nan")), dict(targets="mlp"),
                                 dict(method="magic"), dict(targets=""), dict(ratio=float("inf")), dict(ratio=True),
                                 dict(rank_multiple=True), dict(seed=-1), dict(size_budget=True),
                                 dict(method="svd", options=AutoencoderOptions()),
                                 dict(method="ae", options=SharedBasisOptions()),
                                 dict(method="ae", options={"epochs": "3"}), dict(method="none", options=AutoencoderOptions())])
def test_config_refuses_bad_values(bad):
    with pytest.raises(EdgefoldError):
        CompressionConfig(**bad)


def test_config_takes_typed_options_and_records_what_differs():
    config = CompressionConfig(method="ae", options=AutoencoderOptions(epochs=5, preserve_norms=True))
    assert config.build_method().options.epochs == 5
    assert config.method_options == {"epochs": "5", "preserve_norms": "true"}
    assert CompressionConfig(method="ae").method_options == {} == CompressionConfig().method_options


@pytest.mark.parametrize("model_class,embedding,head", [
    ("GPT2LMHeadModel", "transformer.wte", "lm_head"),
    ("BertForMaskedLM", "bert.embeddings.word_embeddings", "cls.predictions.decoder")])
def test_an_embedding_candidate_is_scored_with_its_tied_head(model_class, embedding, head, tiny_model):
    kind = "gpt2-text-generation" if model_class.startswith("GPT2") else "bert-fill-mask"
    folder = tiny_model(kind)
    model = _load(folder, model_class)
    scorer = ValidationScorer(model, shipped_texts()[:8], transformers.AutoTokenizer.from_pretrained(folder))
    original = model.get_submodule(embedding)
    factors = get_method("svd").fit(original.weight.detach(), 8)
    score = scorer.for_module(embedding, "embeddings", original)(factors)
    assert model.get_submodule(embedding) is original and model.get_submodule(head).weight is original.weight
    # what the model computes after the swap, where the head shares the candidate
    retie_head(model, original, swap(model, embedding, "embeddings", factors))
    assert isinstance(model.get_submodule(head), TiedLowRankHead)
    swapped = torch_outputs(model, scorer.batches)
    assert score == pytest.approx(fidelity(scorer.task, scorer.reference, swapped, scorer.batches)["mean_cosine"],
                                  abs=1e-6)


@pytest.mark.parametrize("kind,model_class", [
    ("bert-fill-mask", "BertForMaskedLM"), ("distilbert-text-classification", "DistilBertForSequenceClassification"),
    ("gpt2-text-generation", "GPT2LMHeadModel"), ("llama-text-generation", "LlamaForCausalLM"),
    ("mistral-text-generation", "MistralForCausalLM")])
def test_replayed_layers_score_exactly_what_the_whole_model_scores(tiny_model, kind, model_class):
    """The scorer's earlier layers replay their recorded outputs: every module's score, the output head's too,
    is the one a whole forward pass gives, to the last bit."""
    folder = tiny_model(kind)
    model = _load(folder, model_class)
    scorer = ValidationScorer(model, shipped_texts()[:12], transformers.AutoTokenizer.from_pretrained(folder))
    assert scorer.recorded is not None and len(scorer.recorded) == model.config.num_hidden_layers
    prefix, _ = scorer.stack
    names = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) or type(m).__name__ == "Conv1D"]
    assert any(n.startswith(f"{prefix}.1.") for n in names)
    for name in [n for n in names if n.startswith(f"{prefix}.")] + [names[-1]]:
        original = model.get_submodule(name)
        kind_of = "output-head" if not name.startswith(f"{prefix}.") else "ffn-out"
        candidate = copy.deepcopy(original)
        with torch.no_grad():  # not a scaling: a head's cosine would not see it
            candidate.weight.add_(torch.randn(candidate.weight.shape, generator=torch.Generator().manual_seed(0)))
        replayed = scorer.with_module(name, kind_of, original, candidate)
        recorded, scorer.recorded = scorer.recorded, None
        try:
            whole = scorer.with_module(name, kind_of, original, candidate)
        finally:
            scorer.recorded = recorded
        assert replayed == whole and replayed < 1.0, name
    assert not any("forward" in vars(layer) for layer in scorer.stack[1])  # the layers' own forward again
