"""Sub-networks: global magnitude, Wanda and the lottery ticket against independent computations, the bit-packed
mask files, their overlap, and real pruned exports run by onnxruntime."""

import json
import re

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
import transformers
from conftest import MINILM, TINY_MODELS
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from onnx import numpy_helper
from safetensors import safe_open
from safetensors.numpy import save_file

from edgefold.exporter.subnetworks import MaskSet, SparsityConfig, read_masks, sparsify_
from edgefold.exporter.subnetworks.config import MAX_ROUNDS
from edgefold.exporter.subnetworks.imp import Checkpoints, lottery_ticket
from edgefold.exporter.subnetworks.overlap import pair_overlap
from edgefold.exporter.subnetworks.select import global_magnitude
from edgefold.exporter.subnetworks.targets import prunable_weights
from edgefold.exporter.subnetworks.training import MaskedTrainer, apply_masks
from edgefold.runtime import EdgefoldError
from edgefold.cli import main

WORDS = "the a cat dog river mountain quick slow blue red runs sleeps under over seven twelve happy old".split()
TEXTS = tuple(" ".join(WORDS[(i * 7 + j * 3) % len(WORDS)] for j in range(3 + i % 6)) for i in range(24))
LABELS = tuple(f"LABEL_{i % 2}" for i in range(len(TEXTS)))
# Q, K, V, attention output, FFN in and out of every BERT layer, and the pooler: named here, not by the library
BERT_TARGET = re.compile(r"(^|\.)(encoder\.layer\.\d+\.(attention\.self\.(query|key|value)|attention\.output\.dense"
                         r"|intermediate\.dense|output\.dense)|pooler\.dense)\.weight$")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models train fastest on one thread; on a busy machine, more threads wait on each other for seconds."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _load(tiny_model, kind):
    folder = tiny_model(kind)
    model = getattr(transformers, TINY_MODELS[kind][0]).from_pretrained(folder).eval()
    return model, transformers.AutoTokenizer.from_pretrained(folder)


def _targets(model):
    """name -> parameter of every BERT-family target, found by name."""
    return {name: p for name, p in model.named_parameters() if BERT_TARGET.search(name)}


def _one_error_line(capsys):
    return [line for line in capsys.readouterr().err.splitlines() if line.startswith("edgefold: error:")]


def _refused(capsys, argv, message, *absent):
    code = main(argv)
    errors = _one_error_line(capsys)
    assert code == 2 and len(errors) == 1 and message in errors[0], (code, errors)
    for path in absent:
        assert not path.exists(), path


# --- 1. global magnitude ----------------------------------------------------------------------------------------

def test_bert_targets_are_q_k_v_attention_output_ffn_of_every_layer_and_the_pooler(tiny_model):
    model, _ = _load(tiny_model, "bert-text-classification")
    found = prunable_weights(model)
    assert [p.key for p in found] == [name.removeprefix("bert.") for name in _targets(model)]
    assert len(found) == 6 * model.config.num_hidden_layers + 1
    assert all(p.weight is dict(model.named_parameters())[f"bert.{p.key}"] for p in found)
    assert [p.kind for p in found[:6]] == ["q", "k", "v", "attention-output", "ffn-in", "ffn-out"]
    assert found[-1].kind == "pooler" and not any(p.transposed for p in found)


def test_gpt2_fused_attention_is_one_transposed_qkv_weight(tiny_model):
    model, _ = _load(tiny_model, "gpt2-text-generation")
    found = {p.key: p for p in prunable_weights(model)}
    assert len(found) == 4 * model.config.n_layer
    qkv = found["h.0.attn.c_attn.weight"]
    assert qkv.kind == "qkv" and qkv.transposed and tuple(qkv.weight.shape) == (64, 3 * 64)
    assert all(p.transposed for p in found.values())


@pytest.mark.parametrize("sparsity", [0.1, 0.5, 0.83])
def test_magnitude_prunes_the_exact_share_below_one_global_threshold_and_nothing_else(tiny_model, sparsity):
    model, tokenizer = _load(tiny_model, "bert-text-classification")
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    targets = list(_targets(model))
    found = sparsify_(model, SparsityConfig(sparsity=sparsity, texts=TEXTS), tokenizer, progress=False)
    original = np.concatenate([before[name].numpy().ravel() for name in targets])
    after = np.concatenate([dict(model.named_parameters())[name].detach().numpy().ravel() for name in targets])
    kept = np.concatenate([found.mask.masks[name.removeprefix("bert.")].ravel() for name in targets])
    expected = int(round(sparsity * original.size))
    assert int((~kept).sum()) == expected == found.mask.total - found.mask.kept
    assert int((after == 0).sum()) == expected and np.all(original != 0)  # random weights: zero means pruned
    np.testing.assert_array_equal(after, np.where(kept, original, 0))
    assert np.abs(original[~kept]).max() <= np.abs(original[kept]).min()
    for name, parameter in model.named_parameters():  # embeddings, biases, norms, classifier: untouched
        if name not in targets:
            assert torch.equal(parameter, before[name]), name


# --- 2. iterative global magnitude --------------------------------------------------------------------------------

@st.composite
def _weights_and_keep(draw):
    count = draw(st.integers(1, 4))
    shapes = [tuple(draw(st.lists(st.integers(1, 9), min_size=1, max_size=2))) for _ in range(count)]
    floats = st.floats(-100, 100, allow_nan=False, width=32)
    weights = {f"w{i}": torch.from_numpy(draw(hnp.arrays(np.float32, shape, elements=floats)))
               for i, shape in enumerate(shapes)}
    keep = {key: torch.from_numpy(draw(hnp.arrays(np.bool_, tuple(w.shape)))) for key, w in weights.items()}
    return weights, keep, draw(st.floats(0.0, 1.0))


@FAST
@given(_weights_and_keep())
def test_global_magnitude_keeps_pruned_weights_pruned_and_counts_the_original_total(case):
    weights, keep, sparsity = case
    total = sum(w.numel() for w in weights.values())
    already = int(sum((~k).sum() for k in keep.values()))
    assume(round(sparsity * total) >= already)  # iterative pruning only ever prunes more
    masks = global_magnitude(weights, sparsity, keep=keep)
    old = np.concatenate([keep[k].numpy().ravel() for k in weights])
    new = np.concatenate([masks[k].numpy().ravel() for k in weights])
    magnitude = np.abs(np.concatenate([w.numpy().ravel() for w in weights.values()]))
    assert all(masks[k].shape == w.shape and masks[k].dtype == torch.bool for k, w in weights.items())
    assert not np.any(new & ~old)  # once pruned, pruned
    assert int((~new).sum()) == round(sparsity * total)
    newly = old & ~new
    if newly.any() and new.any():
        assert magnitude[newly].max() <= magnitude[new].min()


# --- 3. Wanda -----------------------------------------------------------------------------------------------------

def _input_norms(model, tokenizer, modules):
    """||X_j|| of each module's input over the real tokens of TEXTS, from forward pre-hooks (float64); the pooler
    reads one vector a text."""
    encoded = tokenizer(list(TEXTS), padding=True, return_tensors="pt")
    real = encoded["attention_mask"].bool()
    sums = {}

    def hook(name):
        def capture(_module, inputs):
            x = (inputs[0][real] if inputs[0].dim() == 3 else inputs[0]).double()
            sums[name] = sums.get(name, 0) + (x ** 2).sum(dim=0)
        return capture

    handles = [module.register_forward_pre_hook(hook(name)) for name, module in modules.items()]
    with torch.no_grad():
        model(input_ids=encoded["input_ids"], attention_mask=encoded["attention_mask"])
    for handle in handles:
        handle.remove()
    return {name: total.sqrt().numpy() for name, total in sums.items()}


@pytest.mark.parametrize("kind", ["bert-text-classification", "gpt2-text-generation"])
def test_wanda_prunes_the_smallest_weight_times_input_norm_in_every_output_row(tiny_model, kind):
    sparsity = 0.4
    model, tokenizer = _load(tiny_model, kind)
    prunables = prunable_weights(model)
    norms = _input_norms(model, tokenizer, {p.key: p.module for p in prunables})
    original = {p.key: p.weight.detach().double().numpy().copy() for p in prunables}
    found = sparsify_(model, SparsityConfig(method="wanda", sparsity=sparsity, texts=TEXTS), tokenizer,
                      progress=False)
    for p in prunables:
        weight, kept = original[p.key], found.mask.masks[p.key]
        np.testing.assert_array_equal(p.weight.detach().numpy(), np.where(kept, weight, 0).astype(np.float32))
        if p.transposed:  # Conv1D stores (in x out): an output row is a column
            weight, kept = weight.T, kept.T
        scores = np.abs(weight) * norms[p.key][None, :]
        assert scores.shape[1] == norms[p.key].size
        assert np.all((~kept).sum(axis=1) == round(sparsity * weight.shape[1])), p.key
        for row, row_kept in zip(scores, kept):
            assert row[~row_kept].max() <= row[row_kept].min() * (1 + 1e-5), p.key


# --- 4. schedule --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("sparsity, share, levels", [
    (0.5, 0.1, [0.1, 0.2, 0.3, 0.4, 0.5]),
    (0.35, 0.1, [0.1, 0.2, 0.3, 0.35]),
    (0.5, 0.25, [0.25, 0.5]),
    (0.05, 0.1, [0.05]),
])
def test_imp_schedule_climbs_by_the_round_share_to_the_sparsity(sparsity, share, levels):
    assert SparsityConfig(method="imp", sparsity=sparsity, round_share=share).schedule() == levels
    assert SparsityConfig(method="magnitude", sparsity=sparsity).schedule() == [sparsity]


@FAST
@given(st.integers(1, 999), st.integers(1, 999))
def test_imp_levels_rise_by_the_round_share_and_end_at_the_sparsity(thousandths, share_thousandths):
    sparsity, share = thousandths / 1000, share_thousandths / 1000
    if -(-thousandths // share_thousandths) > MAX_ROUNDS:  # each round trains the model: refused, not started
        with pytest.raises(EdgefoldError, match=f"more than {MAX_ROUNDS}"):
            SparsityConfig(method="imp", sparsity=sparsity, round_share=share)
        return
    levels = SparsityConfig(method="imp", sparsity=sparsity, round_share=share).schedule()
    assert levels[-1] == sparsity and len(levels) == -(-thousandths // share_thousandths)
    assert all(b - a == pytest.approx(share) for a, b in zip(levels, levels[1:-1]))
    assert all(0 < b - a <= share + 1e-9 for a, b in zip([0.0, *levels], levels))


def test_round_share_is_refused_past_the_round_limit_and_without_imp(tiny_model, tmp_path, capsys):
    model, out = str(tiny_model("bert-fill-mask")), tmp_path / "out"
    _refused(capsys, ["prune", model, str(out), "--method", "imp", "--sparsity", "0.5", "--round-share", "0.000001"],
             "500000 rounds of training, more than 100", out)
    _refused(capsys, ["prune", model, str(out), "--method", "wanda", "--round-share", "0.2"],
             "--round-share sets the rounds of --method imp", out)


def test_a_sparsity_just_past_a_level_adds_no_round_that_prunes_nothing():
    levels = SparsityConfig(method="imp", sparsity=0.3000000005, round_share=0.1).schedule()
    assert len(set(levels)) == len(levels), levels  # a repeated level: a round of training that prunes nothing


# --- 5-7. lottery ticket and masked training ----------------------------------------------------------------------

def _to_mask_set(prunables):
    def convert(masks, level):
        return MaskSet({p.key: masks[p.key].numpy() for p in prunables},
                       {p.key: {"kind": p.kind, "layer": p.layer} for p in prunables}, {"level": level})
    return convert


def _ticket(tiny_model, kind, schedule, *, labels=True, folder=None, fingerprint="", on_level=None, seed=0,
            steps=3, learning_rate=1e-3):
    """lottery_ticket on a fresh tiny model; returns (model, prunables, pretrained, levels, rounds, train calls)."""
    model, tokenizer = _load(tiny_model, kind)
    pretrained = {name: p.detach().clone() for name, p in model.named_parameters()}
    prunables = prunable_weights(model)
    trainer = MaskedTrainer(model, prunables, tokenizer, list(TEXTS), list(LABELS) if labels else None,
                            batch_size=4, learning_rate=learning_rate, progress=False)
    calls = []
    train = trainer.train
    trainer.train = lambda *args, **kwargs: calls.append(args) or train(*args, **kwargs)
    levels, rounds = lottery_ticket(model, prunables, trainer, schedule, steps, seed,
                                    Checkpoints(folder, fingerprint, _to_mask_set(prunables)), on_level)
    return model, prunables, pretrained, levels, rounds, calls


def test_lottery_ticket_rewinds_the_base_model_keeps_the_trained_head_and_nests_its_levels(tiny_model):
    schedule = [0.1, 0.2, 0.3]
    model, prunables, pretrained, levels, rounds, calls = _ticket(tiny_model, "bert-text-classification", schedule)
    assert model.config.label2id == {"LABEL_0": 0, "LABEL_1": 1} and len(calls) == len(schedule)
    total = sum(p.weight.numel() for p in prunables)
    previous = {p.key: torch.ones_like(p.weight, dtype=torch.bool) for p in prunables}
    for sparsity, masks in zip(schedule, levels):
        assert sum(int((~masks[p.key]).sum()) for p in prunables) == round(sparsity * total)
        assert all(not (masks[p.key] & ~previous[p.key]).any() for p in prunables)  # kept_k within kept_k-1
        previous = masks
    final = {f"bert.{p.key}": levels[-1][p.key] for p in prunables}
    for name, parameter in model.named_parameters():
        if name in final:  # survivors at their pre-trained values exactly, the pruned exactly zero
            assert torch.equal(parameter, torch.where(final[name], pretrained[name], 0)), name
        elif name.startswith("bert."):  # the rest of the base model rewound too
            assert torch.equal(parameter, pretrained[name]), name
        else:  # the classification head keeps its training
            assert name.startswith("classifier.") and not torch.equal(parameter, pretrained[name]), name
    assert [r["level"] for r in rounds] == [1, 2, 3] and all(r["steps"] == 3 for r in rounds)


def test_the_same_seed_finds_the_same_ticket_and_another_seed_another(tiny_model):
    def run(seed):
        model, tokenizer = _load(tiny_model, "bert-text-classification")
        config = SparsityConfig(method="imp", sparsity=0.4, round_share=0.2, steps=2, batch_size=4,
                                learning_rate=1e-3, seed=seed, texts=TEXTS, labels=LABELS)
        found = sparsify_(model, config, tokenizer, progress=False)
        return [level.masks for level in found.levels] + [found.mask.masks]

    first, again, other = run(0), run(0), run(1)
    assert len(first) == 3
    for a, b in zip(first, again):
        assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    assert any(not np.array_equal(first[-1][k], other[-1][k]) for k in first[-1])


def test_an_interrupted_ticket_resumes_from_its_last_level_with_the_same_result(tiny_model, tmp_path):
    schedule, folder = [0.1, 0.2, 0.3], tmp_path / "levels"
    whole_model, _, _, whole, *_ = _ticket(tiny_model, "bert-text-classification", schedule)

    def stop(level):
        if level == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _ticket(tiny_model, "bert-text-classification", schedule, folder=folder, fingerprint="run-a", on_level=stop)
    assert json.loads((folder / "state.json").read_text())["levels_done"] == 2
    model, prunables, _, levels, rounds, calls = _ticket(tiny_model, "bert-text-classification", schedule,
                                                         folder=folder, fingerprint="run-a")
    assert len(calls) == len(schedule) - 2 and [r["level"] for r in rounds] == [1, 2, 3]
    assert len(levels) == len(whole)
    for mine, theirs in zip(levels, whole):
        assert all(torch.equal(mine[p.key], theirs[p.key]) for p in prunables)
    for (name, parameter), (_, reference) in zip(model.named_parameters(), whole_model.named_parameters()):
        assert torch.equal(parameter, reference), name  # the head restored, then trained as it would have been

    *_, calls = _ticket(tiny_model, "bert-text-classification", schedule, folder=folder, fingerprint="run-b",
                        steps=1)
    assert len(calls) == len(schedule)  # another run's levels: started over
    assert json.loads((folder / "state.json").read_text())["fingerprint"] == "run-b"


def test_pruned_weights_stay_exactly_zero_while_the_kept_ones_train(tiny_model):
    model, tokenizer = _load(tiny_model, "bert-fill-mask")
    prunables = prunable_weights(model)
    masks = global_magnitude({p.key: p.weight for p in prunables}, 0.6)
    apply_masks(prunables, masks)
    before = {p.key: p.weight.detach().clone() for p in prunables}
    trainer = MaskedTrainer(model, prunables, tokenizer, list(TEXTS), None, batch_size=4, learning_rate=1e-3,
                            progress=False)
    record = trainer.train(masks, 3, seed=0)
    assert record["steps"] == 3 and trainer.objective == "distillation"
    moved = total = 0
    for p in prunables:
        assert torch.all(p.weight[~masks[p.key]] == 0), p.key
        changed = p.weight.detach()[masks[p.key]] != before[p.key][masks[p.key]]
        moved, total = moved + int(changed.sum()), total + changed.numel()
    assert moved > 0.9 * total


# --- 8. mask files ------------------------------------------------------------------------------------------------

@st.composite
def _mask_sets(draw, names=st.text("abcdefgh.0123", min_size=1, max_size=12)):
    keys = draw(st.lists(names, min_size=1, max_size=4, unique=True))
    masks, modules = {}, {}
    for key in keys:
        shape = tuple(draw(st.lists(st.integers(1, 19), min_size=1, max_size=3)))
        masks[key] = draw(hnp.arrays(np.bool_, shape))
        modules[key] = {"kind": draw(st.sampled_from(["q", "k", "v", "ffn-in", "qkv", "pooler"])),
                        "layer": draw(st.one_of(st.none(), st.integers(0, 11)))}
    info = {"method": draw(st.sampled_from(["magnitude", "imp"])), "seed": draw(st.integers(0, 99)), "level": None}
    return MaskSet(masks, modules, info)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(_mask_sets())
def test_mask_files_round_trip_bit_packed(tmp_path, found):
    path = found.save(tmp_path / "mask.safetensors")
    back = read_masks(path)
    assert back.masks.keys() == found.masks.keys() and back.modules == found.modules and back.info == found.info
    assert all(np.array_equal(back.masks[k], m) and back.masks[k].dtype == np.bool_ for k, m in found.masks.items())
    with safe_open(str(path), framework="numpy") as file:
        for key, mask in found.masks.items():
            stored = file.get_tensor(key)
            assert stored.dtype == np.uint8 and stored.shape == (-(-mask.size // 8),)


def _good_mask_file(folder):
    return MaskSet({"a.weight": np.arange(21).reshape(3, 7) % 3 == 0}, {"a.weight": {"kind": "q", "layer": 0}},
                   {"method": "magnitude"}).save(folder / "good.safetensors")


@pytest.mark.parametrize("damage, message", [
    ("missing", "mask file not found"),
    ("text", "cannot read mask file"),
    ("no-format", "not an edgefold mask file"),
    ("truncated-data", "cannot read mask file"),
    ("truncated-header", "cannot read mask file"),
    ("empty", "cannot read mask file"),
])
def test_a_file_that_is_not_a_whole_mask_file_is_refused_in_one_line(tmp_path, capsys, damage, message):
    good = _good_mask_file(tmp_path)
    bad = tmp_path / "bad.safetensors"
    data = good.read_bytes()
    if damage == "text":
        bad.write_text("a mask? no, a text file\n")
    elif damage == "no-format":
        save_file({"a.weight": np.packbits(np.ones(21, dtype=bool))}, str(bad))
    elif damage == "truncated-data":
        bad.write_bytes(data[:-1])
    elif damage == "truncated-header":
        bad.write_bytes(data[:20])
    elif damage == "empty":
        bad.write_bytes(b"")
    with pytest.raises(EdgefoldError, match=message) as error:
        read_masks(bad)
    assert "\n" not in str(error.value)
    _refused(capsys, ["masks", "overlap", str(good), str(bad)], message)


# --- 9. overlap ---------------------------------------------------------------------------------------------------

@st.composite
def _mask_pairs(draw):
    a = draw(_mask_sets(names=st.sampled_from(["w0", "w1", "w2", "w3", "w4"])))
    b = MaskSet({k: draw(hnp.arrays(np.bool_, m.shape)) for k, m in a.masks.items()}, a.modules, a.info)
    return a, b


def _expected(a, b, keys):
    kept_a = {(k, i) for k in keys for i in np.flatnonzero(a.masks[k])}
    kept_b = {(k, i) for k in keys for i in np.flatnonzero(b.masks[k])}
    every = {(k, i) for k in keys for i in range(a.masks[k].size)}
    agree = {(k, i) for k, i in every if ((k, i) in kept_a) == ((k, i) in kept_b)}
    union = kept_a | kept_b
    return (len(kept_a & kept_b) / len(union) if union else 1.0), len(agree) / len(every)


@FAST
@given(_mask_pairs())
def test_overlap_is_the_jaccard_and_agreement_of_the_sets_of_kept_positions(pair):
    a, b = pair
    result = pair_overlap(a, b)
    assert (result["jaccard"], result["agreement"]) == pytest.approx(_expected(a, b, list(a.masks)))
    for group, field in (("by_layer", "layer"), ("by_kind", "kind")):
        names = {str(m[field]) if field == "layer" else m[field] for m in a.modules.values()}
        assert set(result[group]) == names
        for name in names:
            keys = [k for k, m in a.modules.items() if (str(m[field]) if field == "layer" else m[field]) == name]
            scores = result[group][name]
            assert (scores["jaccard"], scores["agreement"]) == pytest.approx(_expected(a, b, keys)), (group, name)
            assert scores["weights"] == sum(a.masks[k].size for k in keys)
    same = pair_overlap(a, a)
    assert same["jaccard"] == 1.0 and same["agreement"] == 1.0


def test_masks_of_different_weights_are_not_compared():
    a = MaskSet({"w": np.ones((2, 3), dtype=bool)}, {"w": {"kind": "q", "layer": 0}})
    for other in ({"w": np.ones((3, 2), dtype=bool)}, {"v": np.ones((2, 3), dtype=bool)}):
        with pytest.raises(EdgefoldError, match="different weights"):
            pair_overlap(a, MaskSet(other, {k: {"kind": "q", "layer": 0} for k in other}))


# --- 10-12. edgefold prune and edgefold masks ---------------------------------------------------------------------

def _feed(session, encoded):
    names = {i.name for i in session.get_inputs()}
    feed = {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"],
            "token_type_ids": np.zeros_like(encoded["input_ids"])}
    return {name: value.astype(np.int64) for name, value in feed.items() if name in names}


def _check_export(folder, model, tokenizer, sparsity, trained=False):
    """The folder's graph holds the pruned weights and runs as the original torch model with the masks applied
    (``trained``: the sub-network was trained after pruning, so only its zeros are known here)."""
    found = read_masks(folder / "mask.safetensors")
    manifest = json.loads((folder / "edgefold.json").read_text())
    targets = {name: p for name, p in model.named_parameters() if BERT_TARGET.search(name)}
    total = sum(p.numel() for p in targets.values())
    base = model.base_model
    assert {f"{model.base_model_prefix}.{key}" for key in found.masks} == set(targets)
    assert manifest["sparsity"]["weights_pruned"] == round(sparsity * total) == found.total - found.kept
    assert manifest["sparsity"]["weights_targeted"] == total
    assert manifest["parity"]["max_abs_diff"] <= 1e-3
    assert manifest["sparsity"]["graph_zipped_bytes"] < manifest["sparsity"]["graph_bytes"]
    with torch.no_grad():
        for key, mask in found.masks.items():
            base.get_parameter(key).mul_(torch.from_numpy(mask))
    graph = onnx.load(str(folder / "model.onnx"))
    zeros = sum(int((numpy_helper.to_array(t) == 0).sum()) for t in graph.graph.initializer)
    assert zeros >= found.total - found.kept
    if trained:
        return found, manifest, graph
    encoded = tokenizer(["a short sentence about rivers", "and a longer one about seven old dogs sleeping"],
                        padding=True, return_tensors="np")
    session = onnxruntime.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    ours = session.run(None, _feed(session, encoded))[0]
    with torch.no_grad():
        theirs = model(**{k: torch.from_numpy(v) for k, v in encoded.items() if k != "token_type_ids"})[0]
    np.testing.assert_allclose(ours, theirs.numpy(), atol=1e-4)
    return found, manifest, graph


@pytest.fixture(scope="module")
def labelled_data(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "train.csv"
    path.write_text("text,label\n" + "".join(f"{t},{label}\n" for t, label in zip(TEXTS, LABELS)))
    return path


@pytest.fixture(scope="module")
def bert_magnitude(tiny_model, tmp_path_factory):
    folder = tmp_path_factory.mktemp("prune") / "bert-magnitude"
    assert main(["prune", str(tiny_model("bert-fill-mask")), str(folder), "--sparsity", "0.5", "--optimize", "none",
                 "--quiet"]) == 0
    return folder


def _imp_argv(tiny_model, folder, labelled_data):
    return ["prune", str(tiny_model("bert-text-classification")), str(folder), "--method", "imp", "--sparsity", "0.2",
            "--steps", "2", "--batch-size", "4", "--data", str(labelled_data), "--label-column", "label", "--quiet"]


@pytest.fixture(scope="module")
def imp_export(tiny_model, tmp_path_factory, labelled_data):
    folder = tmp_path_factory.mktemp("prune") / "bert-imp"
    assert main(_imp_argv(tiny_model, folder, labelled_data)) == 0
    return folder


@pytest.mark.slow
def test_a_pruned_bert_exports_its_zeros_and_runs_as_the_masked_torch_model(tiny_model, bert_magnitude):
    model, tokenizer = _load(tiny_model, "bert-fill-mask")
    found, manifest, graph = _check_export(bert_magnitude, model, tokenizer, 0.5)
    assert {p.name for p in bert_magnitude.iterdir()} >= {"model.onnx", "mask.safetensors", "edgefold.json"}
    assert manifest["sparsity"]["method"] == "magnitude" and manifest["sparsity"]["levels"] == []
    # unoptimised, every pruned weight is in the graph as torch has it (a Linear's weight, or its transpose)
    initializers = [numpy_helper.to_array(t) for t in graph.graph.initializer]
    for key in found.masks:
        weight = model.base_model.get_parameter(key).detach().numpy()
        assert any(np.array_equal(w, weight) or np.array_equal(w, weight.T) for w in initializers), key


@pytest.mark.slow
def test_a_pruned_xlm_roberta_exports_with_parity(tiny_model, tmp_path):
    folder = tmp_path / "xlmr"
    assert main(["prune", str(tiny_model("xlm-roberta-fill-mask")), str(folder), "--sparsity", "0.5", "--quiet"]) == 0
    model, tokenizer = _load(tiny_model, "xlm-roberta-fill-mask")
    _check_export(folder, model, tokenizer, 0.5)


@pytest.mark.parametrize("kind", ["gpt2-text-generation", "llama-text-generation"])
@pytest.mark.slow
def test_causal_lms_prune_with_wanda_and_export_with_parity(tiny_model, tmp_path, kind):
    """GPT-2 stores its Linears transposed (Conv1D) and fuses Q, K and V; Llama has a gated FFN and no pooler."""
    folder = tmp_path / kind
    assert main(["prune", str(tiny_model(kind)), str(folder), "--method", "wanda", "--sparsity", "0.5",
                 "--optimize", "none", "--quiet"]) == 0
    manifest = json.loads((folder / "edgefold.json").read_text())
    model, _ = _load(tiny_model, kind)
    targets = prunable_weights(model)
    found = read_masks(folder / "mask.safetensors")
    assert set(found.masks) == {p.key for p in targets} and "pooler" not in manifest["sparsity"]["targets"]
    for prunable in targets:  # Wanda: the same share of every output row
        rows = found.masks[prunable.key].T if prunable.transposed else found.masks[prunable.key]
        assert (rows.sum(axis=1) == rows.shape[1] - round(0.5 * rows.shape[1])).all(), prunable.key
    assert manifest["parity"]["max_abs_diff"] <= 1e-3
    assert manifest["sparsity"]["weights_pruned"] == found.total - found.kept


@pytest.mark.slow
def test_an_imp_export_writes_every_level_and_leaves_no_checkpoints(tiny_model, imp_export):
    model, tokenizer = _load(tiny_model, "bert-text-classification")
    found, manifest, _ = _check_export(imp_export, model, tokenizer, 0.2, trained=True)
    levels = [read_masks(imp_export / "masks" / f"level-{k:02d}.safetensors") for k in (1, 2)]
    assert sorted(p.name for p in (imp_export / "masks").iterdir()) == ["level-01.safetensors",
                                                                          "level-02.safetensors"]
    assert [level.total - level.kept for level in levels] == [round(0.1 * found.total), round(0.2 * found.total)]
    assert all(np.array_equal(levels[-1].masks[k], m) for k, m in found.masks.items())
    assert manifest["sparsity"]["objective"] == "task loss" and len(manifest["sparsity"]["rounds"]) == 2
    assert not any(p.name.endswith(".imp-levels") for p in imp_export.parent.iterdir())


@pytest.mark.slow
def test_an_interrupted_imp_export_resumes_from_its_checkpoints_to_the_same_masks(tiny_model, labelled_data,
                                                                                imp_export, tmp_path, monkeypatch):
    save, saved = Checkpoints.save, []

    def save_then_stop(self, level, *args):
        save(self, level, *args)
        raise KeyboardInterrupt

    folder, checkpoints = tmp_path / "bert-imp", tmp_path / ".bert-imp.imp-levels"
    monkeypatch.setattr(Checkpoints, "save", save_then_stop)
    assert main(_imp_argv(tiny_model, folder, labelled_data)) == 130
    assert not folder.exists() and json.loads((checkpoints / "state.json").read_text())["levels_done"] == 1
    monkeypatch.setattr(Checkpoints, "save", lambda self, level, *args: saved.append(level) or save(self, level, *args))
    assert main(_imp_argv(tiny_model, folder, labelled_data)) == 0
    assert saved == [2] and not checkpoints.exists()
    for name in ("mask.safetensors", "masks/level-01.safetensors", "masks/level-02.safetensors"):
        mine, theirs = read_masks(folder / name), read_masks(imp_export / name)
        assert mine.masks.keys() == theirs.masks.keys(), name
        assert all(np.array_equal(m, theirs.masks[k]) for k, m in mine.masks.items()), name


@pytest.mark.slow
def test_real_minilm_pruned_and_quantised_reports_what_it_costs(tmp_path, capsys):
    folder = tmp_path / "minilm"
    assert main(["prune", str(MINILM), str(folder), "--sparsity", "0.5", "--quantize", "int8", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "sub-network: magnitude" in out and "(50.0%)" in out and "zipped download" in out and "fidelity" in out
    manifest = json.loads((folder / "edgefold.json").read_text())
    found = manifest["sparsity"]
    assert found["weights_pruned"] == round(0.5 * found["weights_targeted"])
    assert found["weights_targeted"] == 6 * (4 * 384 * 384 + 2 * 384 * 1536) + 384 * 384
    assert found["graph_zipped_bytes"] < found["graph_bytes"]
    assert manifest["quantization"] and 0.5 < manifest["fidelity"]["mean_cosine"] <= 1.0


@pytest.fixture(scope="module")
def feature_mask(tiny_model, tmp_path_factory):
    folder = tmp_path_factory.mktemp("prune") / "features"
    assert main(["prune", str(tiny_model("bert-text-classification")), str(folder), "--task", "feature-extraction",
                 "--sparsity", "0.5", "--quiet"]) == 0
    return folder / "mask.safetensors"


@pytest.mark.slow
def test_a_mask_found_on_features_applies_as_it_is_to_the_classifier(tiny_model, feature_mask, tmp_path):
    folder = tmp_path / "transfer"
    assert main(["prune", str(tiny_model("bert-text-classification")), str(folder), "--mask", str(feature_mask),
                 "--quiet"]) == 0
    given_mask, written = read_masks(feature_mask), read_masks(folder / "mask.safetensors")
    assert "pooler.dense.weight" in given_mask.masks and given_mask.masks.keys() == written.masks.keys()
    assert all(np.array_equal(given_mask.masks[k], m) for k, m in written.masks.items())
    model, tokenizer = _load(tiny_model, "bert-text-classification")
    _check_export(folder, model, tokenizer, 0.5)


@pytest.mark.slow
def test_a_random_control_copies_each_weights_pruned_count_not_its_pattern(tiny_model, feature_mask, tmp_path):
    folder = tmp_path / "control"
    assert main(["prune", str(tiny_model("bert-text-classification")), str(folder), "--method", "random",
                 "--mask", str(feature_mask), "--quiet"]) == 0
    given_mask, control = read_masks(feature_mask), read_masks(folder / "mask.safetensors")
    for key, mask in given_mask.masks.items():
        assert int((~control.masks[key]).sum()) == int((~mask).sum()), key
        assert not np.array_equal(control.masks[key], mask), key
    assert json.loads((folder / "edgefold.json").read_text())["sparsity"]["method"] == "random"


@pytest.mark.parametrize("change, message", [("shape", "[64, 128] in the mask, [128, 64] in the model"),
                                             ("other-model", "it lacks pooler.dense.weight")])
def test_a_mask_of_another_model_is_refused(tiny_model, feature_mask, bert_magnitude, tmp_path, capsys, change,
                                            message):
    if change == "shape":
        found = read_masks(feature_mask)
        key = "encoder.layer.0.intermediate.dense.weight"
        found.masks[key] = found.masks[key].T.copy()
        mask = found.save(tmp_path / "other.safetensors")
    else:
        mask = bert_magnitude / "mask.safetensors"  # a fill-mask BERT: no pooler
    out = tmp_path / "out"
    _refused(capsys, ["prune", str(tiny_model("bert-text-classification")), str(out), "--mask", str(mask),
                      "--quiet"], message, out)


@pytest.mark.parametrize("model, flags, message", [
    ("bert-fill-mask", ["--sparsity", "1.5"], "--sparsity must be a share between 0 and 1"),
    ("bert-fill-mask", ["--sparsity", "0"], "--sparsity must be a share between 0 and 1"),
    ("bert-fill-mask", ["--method", "wanda", "--mask", "MASK"], "not with wanda"),
    ("bert-fill-mask", ["--mask", "MASK", "--sparsity", "0.5"], "drop --sparsity"),
    ("bert-fill-mask", ["--mask", "MISSING"], "mask file not found"),
    ("bert-fill-mask", ["--sparsity", "0.5", "--label-column", "label"], "--label-column names a column of --data"),
    ("bert-fill-mask", ["--sparsity", "0.5", "--data", "DATA", "--label-column", "label"],
     "labels train a classification head"),
    ("bert-text-classification", ["--sparsity", "0.5", "--data", "UNKNOWN", "--label-column", "label"],
     "does not know the label(s) 'negative', 'positive'"),
])
def test_bad_prune_input_is_refused_in_one_line_and_writes_nothing(tiny_model, bert_magnitude, labelled_data,
                                                                   tmp_path, capsys, model, flags, message):
    unknown = tmp_path / "unknown.csv"
    unknown.write_text("text,label\ngood,positive\nbad,negative\n")
    paths = {"MASK": bert_magnitude / "mask.safetensors", "MISSING": tmp_path / "missing.safetensors",
             "DATA": labelled_data, "UNKNOWN": unknown}
    out = tmp_path / "out"
    _refused(capsys, ["prune", str(tiny_model(model)), str(out), *[str(paths.get(f, f)) for f in flags], "--quiet"],
             message, out, tmp_path / ".out.imp-levels")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["unknown.csv"]


def test_masks_overlap_refuses_one_mask_and_a_plot_of_two(bert_magnitude, tmp_path, capsys):
    mask = str(bert_magnitude / "mask.safetensors")
    _refused(capsys, ["masks", "overlap", mask], "two or more mask files")
    plot = tmp_path / "plot.png"
    _refused(capsys, ["masks", "overlap", mask, mask, "--plot", str(plot)], "three masks or more", plot)
    report = tmp_path / "missing" / "overlap.json"
    _refused(capsys, ["masks", "overlap", mask, mask, "--json", str(report)], "no such folder", report)


def test_masks_overlap_never_writes_over_a_mask_or_a_users_file(bert_magnitude, tmp_path, capsys):
    """--json and --plot replace only their own earlier result, with --overwrite; an input never, whatever the flag."""
    mask = tmp_path / "mask.safetensors"
    mask.write_bytes((bert_magnitude / "mask.safetensors").read_bytes())
    other = tmp_path / "other.safetensors"
    other.write_bytes(mask.read_bytes())
    masks = [str(mask), str(other)]
    before = mask.read_bytes()
    for flags in ([], ["--overwrite"]):
        _refused(capsys, ["masks", "overlap", *masks, "--json", str(mask), *flags], "one of this command's inputs")
    assert mask.read_bytes() == before
    notes, picture = tmp_path / "notes.json", tmp_path / "holiday.png"
    notes.write_text('{"mine": true}')
    picture.write_bytes(b"JPEG, named .png")
    _refused(capsys, ["masks", "overlap", *masks, "--json", str(notes)], "exists; pass --overwrite")
    _refused(capsys, ["masks", "overlap", *masks, "--json", str(notes), "--overwrite"], "replaces only files it wrote")
    _refused(capsys, ["masks", "overlap", *masks, masks[0], "--plot", str(picture), "--overwrite"],
             "replaces only files it wrote")
    assert notes.read_text() == '{"mine": true}' and picture.read_bytes() == b"JPEG, named .png"
    result = tmp_path / "overlap.json"
    assert main(["masks", "overlap", *masks, "--json", str(result)]) == 0
    _refused(capsys, ["masks", "overlap", *masks, "--json", str(result)], "exists; pass --overwrite")
    assert main(["masks", "overlap", *masks, "--json", str(result), "--overwrite"]) == 0
    assert json.loads(result.read_text())["schema"] == "edgefold.mask-overlap"


def test_masks_overlap_of_three_levels_prints_writes_json_and_plots(imp_export, tmp_path, capsys):
    paths = [imp_export / "masks" / "level-01.safetensors", imp_export / "masks" / "level-02.safetensors",
             imp_export / "mask.safetensors"]
    report, plot = tmp_path / "overlap.json", tmp_path / "overlap.png"
    assert main(["masks", "overlap", *map(str, paths), "--json", str(report), "--plot", str(plot)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("| a | b | Jaccard | agreement |") and len(lines) == 2 + 3
    result = json.loads(report.read_text())
    sets = [read_masks(p) for p in paths]
    kept = [{(k, i) for k, m in s.masks.items() for i in np.flatnonzero(m)} for s in sets]
    expected = [[len(a & b) / len(a | b) for b in kept] for a in kept]
    np.testing.assert_allclose(result["jaccard"], expected, rtol=1e-12)
    assert expected[0][1] == pytest.approx(0.8 / 0.9, abs=1e-4) and expected[1][2] == 1.0  # nested levels
    assert [(p["a"], p["b"]) for p in result["pairs"]] == [("level-01", "level-02"), ("level-01", "mask"),
                                                          ("level-02", "mask")]
    assert plot.read_bytes().startswith(PNG_SIGNATURE)
