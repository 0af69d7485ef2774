"""Cross-layer methods: svd-shared (one basis per kind, stored once) and ae-shared / ae-separated (storage)."""

from collections import Counter

import numpy as np
import onnx
import pytest
import torch
import transformers
from conftest import MINILM

from edgefold.exporter import CompressionConfig, GraphConfig, compress_, export
from edgefold.exporter.methods import (
    CrossLayerOptions,
    FitContext,
    SharedBasisOptions,
    get_method,
    parse_method_options,
)
from edgefold.exporter.methods.ae_shared import latent_size, stored_params
from edgefold.exporter.methods.base import shared_charges
from edgefold.runtime import EdgefoldError
from edgefold.runtime.session import make_feed, open_session

TEXT = ["The quick brown fox jumps over the lazy dog.", "Short one."]
#: A short schedule: these tests check the plumbing, benchmarks/ measure quality.
QUICK = CrossLayerOptions(epochs=1, batch_size=512)


def _group(layers=4, rows=48, cols=32):
    torch.manual_seed(0)
    return [torch.randn(rows, cols) for _ in range(layers)]


@pytest.mark.parametrize("rows,cols,ratio", [(2304, 384, 2.0), (2304, 1536, 1.333), (48, 32, 3.0)])
def test_latent_size_is_the_largest_that_fits_the_budget(rows, cols, ratio):
    budget = rows * cols / ratio
    x = latent_size(rows, cols, budget)
    assert stored_params(rows, cols, x) <= budget < stored_params(rows, cols, x + 1)
    assert latent_size(rows, cols, rows + cols) is None  # not even x = 1 fits


def test_shared_charges_split_the_shared_tensor_over_members():
    assert shared_charges([10, 10, 10], 7) == [13, 12, 12]
    assert sum(shared_charges([5] * 6, 1001)) == 30 + 1001


def test_svd_shared_keeps_one_basis_within_the_group_budget():
    weights, ratio = _group(), 2.0
    fitted = get_method("svd-shared").fit_group(weights, ratio, FitContext(kind="q"))
    basis = fitted.forms[0].right
    assert all(f.right is basis for f in fitted.forms)
    assert sum(fitted.params) == basis.numel() + sum(f.left.numel() for f in fitted.forms)
    assert sum(fitted.params) <= sum(w.numel() for w in weights) / ratio
    stacked = torch.cat(weights)
    best = torch.linalg.svd(stacked)[1][basis.shape[0]:].square().sum()  # Eckart-Young: the stacked optimum
    error = sum((w - f.dense()).square().sum() for w, f in zip(weights, fitted.forms))
    assert error == pytest.approx(best.item(), rel=1e-4)


def test_svd_shared_in_groups_of_consecutive_layers():
    weights = _group(layers=6)
    fitted = get_method("svd-shared", SharedBasisOptions(layers=2)).fit_group(weights, 2.0, FitContext(kind="q"))
    bases = [f.right for f in fitted.forms]
    assert [len({id(b) for b in bases[i:i + 2]}) for i in range(0, 6, 2)] == [1, 1, 1]
    assert len({id(b) for b in bases}) == 3
    assert sum(fitted.params) <= sum(w.numel() for w in weights) / 2.0


@pytest.mark.parametrize("multiple", [8, 32])
def test_svd_shared_honours_the_rank_multiple(multiple):
    weights = _group(rows=128, cols=128)  # stacked 512 x 128 at R = 2: rank 51 fits, so 48 or 32
    context = FitContext(kind="q", rank_multiple=multiple)
    fitted = get_method("svd-shared").fit_group(weights, 2.0, context)
    assert context.details["shared_rank"] == {8: 48, 32: 32}[multiple]
    assert all(f.rank == context.details["shared_rank"] for f in fitted.forms)
    assert sum(fitted.params) <= sum(w.numel() for w in weights) / 2.0


def test_svd_shared_ranks_follow_the_configs_multiple(tiny_model):
    model = transformers.GPT2LMHeadModel.from_pretrained(tiny_model("gpt2-text-generation")).eval()
    # c_fc of both layers stacked: 512 x 64 at R = 1.2 fits rank 47, so 40 with multiples of 8, 32 with 32
    records = compress_(model, CompressionConfig(method="svd-shared", targets="ffn-in", ratio=1.2, rank_multiple=32),
                        progress=False)
    assert [r.rank for r in records] == [32, 32]


@pytest.mark.slow
def test_shared_and_separated_autoencoders_fit_the_same_budget():
    weights, ratio = _group(layers=6, rows=96, cols=32), 2.0
    budget = sum(w.numel() for w in weights) / ratio
    sizes = {}
    for name in ("ae-shared", "ae-separated"):
        context = FitContext(kind="q")
        fitted = get_method(name, CrossLayerOptions(epochs=2)).fit_group(weights, ratio, context)
        assert sum(fitted.params) <= budget
        decoders = {id(f.decoder) for f in fitted.forms}
        assert len(decoders) == context.details["decoders"] == (1 if name == "ae-shared" else len(weights))
        stored = sum(f.latent.numel() + f.norms.numel() for f in fitted.forms)
        stored += sum(p.numel() for d in {id(f.decoder): f.decoder for f in fitted.forms}.values()
                      for p in d.parameters())
        assert sum(fitted.params) == stored
        for form, weight in zip(fitted.forms, weights):  # decoded rows keep the original norms
            torch.testing.assert_close(form.dense().norm(dim=-1), weight.norm(dim=-1))
        sizes[name] = context.details["latent_size"]
    # sharing the decoder leaves more of the budget to every row's code
    assert sizes["ae-shared"] > max(sizes["ae-separated"])


def test_autoencoder_fit_is_deterministic_for_a_seed():
    weights = _group()
    dense = [get_method("ae-shared", CrossLayerOptions(epochs=2)).fit_group(weights, 2.0, FitContext(kind="q", seed=3))
             .forms[0].dense() for _ in range(2)]
    torch.testing.assert_close(dense[0], dense[1], rtol=0, atol=0)


def test_autoencoders_refuse_embeddings_and_bad_options(tiny_model, tmp_path):
    with pytest.raises(EdgefoldError, match="attention"):
        export(str(tiny_model("bert-fill-mask")), tmp_path / "out", CompressionConfig(method="ae-shared"),
               progress=False)
    assert not (tmp_path / "out").exists()
    with pytest.raises(EdgefoldError, match="unknown option 'rank' of method ae-separated"):
        parse_method_options("ae-separated", {"rank": "3"})
    with pytest.raises(EdgefoldError, match="unknown option 'epochs' of method svd-shared"):
        parse_method_options("svd-shared", {"epochs": "3"})
    with pytest.raises(EdgefoldError, match="method svd-shared takes SharedBasisOptions, not CrossLayerOptions"):
        CompressionConfig(method="svd-shared", options=QUICK)


def _decoded_shape_census(path, shapes) -> int:
    """Float matrices of a decoded weight's shape (either way round) outside edgefold's stored form."""
    graph = onnx.load(str(path)).graph
    wanted = {tuple(sorted(s)) for s in shapes}
    return sum(1 for i in graph.initializer if not i.name.startswith("edgefold_stored")
               and len(i.dims) == 2 and tuple(sorted(i.dims)) in wanted)


def _padded_batch_matches_each_text_alone(folder):
    """The exported folder runs in a bare session: a right-padded batch gives, on its real tokens, what each text
    gives alone."""
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    session = open_session(folder / "model.onnx")
    batch = tokenizer(TEXT, padding=True, return_tensors="np")
    batched = session.run(None, make_feed(session, batch["input_ids"], batch["attention_mask"]))[0]
    assert batched.shape[:2] == batch["input_ids"].shape
    for row, text in enumerate(TEXT):
        alone = tokenizer([text], return_tensors="np")
        single = session.run(None, make_feed(session, alone["input_ids"], alone["attention_mask"]))[0]
        np.testing.assert_allclose(batched[row, :single.shape[1]], single[0], atol=1e-5)


@pytest.mark.parametrize("method", ["ae-shared", "svd-shared"])  # ae-separated: the same graph path
@pytest.mark.slow
def test_tiny_gpt2_fused_and_transposed_weights_export(method, tiny_model, tmp_path):
    out = tmp_path / method
    manifest = export(str(tiny_model("gpt2-text-generation")), out,
                      CompressionConfig(method=method, targets="attention,ffn", ratio=2,
                                        options=None if method == "svd-shared" else QUICK), progress=False)
    groups = {m["fit"]["group"] for m in manifest["modules"]}
    assert groups == {"q+k+v", "attention-output", "ffn-in", "ffn-out"}  # c_attn is its own kind
    assert manifest["compression"] == ("factorised" if method == "svd-shared" else "storage")
    assert all(m["status"] == manifest["compression"] for m in manifest["modules"])
    assert manifest["parity"]["max_abs_diff"] <= 1e-3
    _padded_batch_matches_each_text_alone(out)


@pytest.fixture(scope="module")
def minilm_ae_shared(tmp_path_factory):
    """The real MiniLM with ae-shared, unfused (what its tests read is the storage and the parity)."""
    out = tmp_path_factory.mktemp("shared") / "minilm-ae-shared"
    config = CompressionConfig(method="ae-shared", targets="attention,ffn", ratio=2, options=QUICK)
    return out, export(str(MINILM), out, config, GraphConfig(optimize="none"), progress=False)


@pytest.mark.slow
def test_ae_shared_minilm_stores_codes_not_dense_weights(minilm_ae_shared):
    folder, manifest = minilm_ae_shared
    totals = manifest["totals"]
    assert manifest["compression"] == "storage" and totals["modules_storage_compressed"] == 36
    assert all(m["status"] == "storage" and m["fit"]["decoders"] == 1 for m in manifest["modules"])
    for group in {m["fit"]["group"] for m in manifest["modules"]}:
        members = [m for m in manifest["modules"] if m["fit"]["group"] == group]
        assert sum(m["params_after"] for m in members) == members[0]["fit"]["group_params_after"]
        assert members[0]["fit"]["group_params_after"] <= members[0]["fit"]["group_params_before"] / 2
    assert _decoded_shape_census(folder / "model.onnx", {(384, 384), (1536, 384)}) == 0
    # the file holds the stored form (4 bytes a parameter), not the dense weights, and is smaller than the source
    assert totals["bytes_after"] < 4 * totals["model_params_after"] * 1.01 < totals["bytes_before"]
    assert manifest["parity"]["max_abs_diff"] <= 1e-3


@pytest.mark.slow
def test_ae_shared_minilm_runs_in_onnxruntime(minilm_ae_shared):
    _padded_batch_matches_each_text_alone(minilm_ae_shared[0])


@pytest.mark.slow
def test_svd_shared_minilm_stores_each_basis_once(tmp_path):
    out = tmp_path / "svd-shared"
    manifest = export(str(MINILM), out, CompressionConfig(method="svd-shared", targets="attention,ffn", ratio=2),
                      GraphConfig(optimize="none"), progress=False)
    assert manifest["parity"]["max_abs_diff"] <= 1e-3 and manifest["compression"] == "factorised"
    graph = onnx.load(str(out / "model.onnx")).graph
    initializers = {i.name for i in graph.initializer}
    alias = {n.output[0]: n.input[0] for n in graph.node if n.op_type == "Identity" and n.input[0] in initializers}
    uses = Counter(alias.get(name, name) for node in graph.node if node.op_type == "MatMul" for name in node.input
                   if alias.get(name, name) in initializers)
    # one right basis per kind, stored once and read by the MatMuls of all six layers
    assert sorted(uses.values()).count(6) == 6 and max(uses.values()) == 6
    assert manifest["totals"]["bytes_after"] < 4 * manifest["totals"]["model_params_after"] * 1.01
    _padded_batch_matches_each_text_alone(out)
