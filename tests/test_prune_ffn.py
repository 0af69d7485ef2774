"""FFN neuron pruning: the closed forms against independent computations, and real exports of every family."""

import json

import onnx
import pytest
import torch
import transformers
from conftest import MINILM

from edgefold.exporter import CompressionConfig, GraphConfig, compress_, export
from edgefold.exporter.checks.manifest import format_summary
from edgefold.exporter.methods import PruneFFN
from edgefold.exporter.nn.swap import select_modules
from edgefold.exporter.planning.sensitivity import Sensitivity, allocate, candidate_widths
from edgefold.exporter.source.architectures import parse_targets, spec_for
from edgefold.exporter.structured import output_error, prune_, repair, top_units, unit_scores
from edgefold.runtime import EdgefoldError
from edgefold.cli import main
from edgefold.runtime.generate import greedy
from edgefold.runtime.session import make_feed, open_session, run


def _runs_in_onnxruntime(folder, task):
    """One forward pass over the exported graph in a bare session (two greedy tokens for a causal LM)."""
    session = open_session(folder / "model.onnx")
    inputs = transformers.AutoTokenizer.from_pretrained(folder)(["a short test"], return_tensors="np")
    if task == "text-generation":
        assert greedy(session, inputs["input_ids"], inputs["attention_mask"], 2).shape == (
            1, inputs["input_ids"].shape[1] + 2)
    else:
        assert run(session, None, make_feed(session, inputs["input_ids"], inputs["attention_mask"]))[0].shape[0] == 1


def _activations(count=3000, width=24, seed=0):
    """Correlated activations with a non-zero mean (float64): an intercept matters, columns explain each other."""
    generator = torch.Generator().manual_seed(seed)
    mixing = torch.randn(width, width, generator=generator, dtype=torch.float64)
    offset = 3 * torch.rand(width, generator=generator, dtype=torch.float64)
    return torch.randn(count, width, generator=generator, dtype=torch.float64) @ mixing + offset


def _statistics(activations):
    return activations.T @ activations / len(activations), activations.mean(dim=0)


KEPT = torch.tensor([0, 2, 3, 7, 8, 11, 15, 16, 20, 23])


def test_repair_is_the_least_squares_fit_of_the_old_output():
    z = _activations()
    weight, bias = torch.randn(8, z.shape[1], dtype=torch.float64), torch.randn(8, dtype=torch.float64)
    new_weight, new_bias = repair(weight, *_statistics(z), KEPT, bias, centred=False, damping=0.0)
    expected = torch.linalg.lstsq(z[:, KEPT], z @ weight.T).solution.T
    torch.testing.assert_close(new_weight, expected, rtol=1e-8, atol=1e-8)
    assert new_bias is bias  # no intercept: the bias stays


def test_repair_with_an_intercept_is_least_squares_with_a_constant_and_zeroes_the_mean_error():
    z = _activations()
    weight, bias = torch.randn(8, z.shape[1], dtype=torch.float64), torch.randn(8, dtype=torch.float64)
    new_weight, new_bias = repair(weight, *_statistics(z), KEPT, bias, centred=True, damping=0.0)
    design = torch.cat([z[:, KEPT], torch.ones(len(z), 1, dtype=torch.float64)], dim=1)
    solution = torch.linalg.lstsq(design, z @ weight.T + bias).solution
    torch.testing.assert_close(new_weight, solution[:-1].T, rtol=1e-8, atol=1e-8)
    torch.testing.assert_close(new_bias, solution[-1], rtol=1e-8, atol=1e-8)
    residual = (z @ weight.T + bias) - (z[:, KEPT] @ new_weight.T + new_bias)
    assert residual.mean(dim=0).abs().max() < 1e-10


def test_a_bias_correction_adds_a_bias_to_a_reader_without_one():
    z = _activations()
    weight = torch.randn(8, z.shape[1], dtype=torch.float64)
    new_weight, new_bias = repair(weight, *_statistics(z), KEPT, None, centred=True, damping=0.0)
    residual = z @ weight.T - (z[:, KEPT] @ new_weight.T + new_bias)
    assert residual.mean(dim=0).abs().max() < 1e-10


def test_keeping_every_unit_changes_nothing():
    z = _activations()
    weight = torch.randn(8, z.shape[1], dtype=torch.float64)
    new_weight, _ = repair(weight, *_statistics(z), torch.arange(z.shape[1]), None, centred=False, damping=0.0)
    torch.testing.assert_close(new_weight, weight, rtol=1e-8, atol=1e-8)


def test_damping_keeps_a_dead_unit_solvable():
    z = _activations()
    z[:, 3] = 0.0  # a neuron that never fires on calibration text: C[S, S] is singular
    weight = torch.randn(8, z.shape[1], dtype=torch.float64)
    moments, mean = _statistics(z)
    new_weight, _ = repair(weight, moments, mean, KEPT, None, centred=False)
    assert torch.isfinite(new_weight).all()
    assert output_error(weight, moments, mean, KEPT, new_weight) < output_error(weight, moments, mean, KEPT,
                                                                                 weight[:, KEPT])


@pytest.mark.parametrize("centred", [False, True])
def test_output_error_is_the_measured_error_and_the_repair_lowers_it(centred):
    z = _activations()
    weight, bias = torch.randn(8, z.shape[1], dtype=torch.float64), torch.randn(8, dtype=torch.float64)
    moments, mean = _statistics(z)
    new_weight, new_bias = repair(weight, moments, mean, KEPT, bias, centred=centred, damping=0.0)
    measured = (((z @ weight.T + bias) - (z[:, KEPT] @ new_weight.T + new_bias)) ** 2).sum(dim=1).mean()
    predicted = output_error(weight, moments, mean, KEPT, new_weight, new_bias - bias)
    assert predicted == pytest.approx(float(measured / ((z @ weight.T) ** 2).sum(dim=1).mean()), rel=1e-8)
    assert predicted < output_error(weight, moments, mean, KEPT, weight[:, KEPT])  # dropped, nothing repaired


def test_scores_keep_the_neurons_that_move_the_output():
    generator = torch.Generator().manual_seed(1)
    z = torch.randn(2000, 16, generator=generator, dtype=torch.float64)
    z[:, [3, 7, 11, 5]] *= 10  # four loud neurons...
    weight = torch.randn(6, 16, generator=generator, dtype=torch.float64)
    weight[:, 5] = 0  # ...of which one is never read
    units = [torch.tensor([j]) for j in range(16)]
    assert top_units(unit_scores(weight, *_statistics(z), units, centred=False), 3) == [3, 7, 11]


def test_centred_scores_leave_a_constant_neuron_to_the_bias():
    generator = torch.Generator().manual_seed(2)
    z = torch.randn(2000, 8, generator=generator, dtype=torch.float64)
    z[:, 4] = 50.0  # large but constant: with an intercept, removing it costs nothing
    weight = torch.randn(4, 8, generator=generator, dtype=torch.float64)
    units = [torch.tensor([j]) for j in range(8)]
    assert 4 in top_units(unit_scores(weight, *_statistics(z), units, centred=False), 1)
    assert 4 not in top_units(unit_scores(weight, *_statistics(z), units, centred=True), 7)


def test_unit_scores_sum_over_a_units_columns():
    z = _activations(width=8)
    weight = torch.randn(4, 8, dtype=torch.float64)
    singles = unit_scores(weight, *_statistics(z), [torch.tensor([j]) for j in range(8)], centred=False)
    pairs = unit_scores(weight, *_statistics(z), [torch.tensor([2 * j, 2 * j + 1]) for j in range(4)], centred=False)
    torch.testing.assert_close(pairs, singles.view(4, 2).sum(dim=1))


def test_widths_are_counted_in_units_by_the_allocation():
    widths = candidate_widths(128, 8)
    assert widths == sorted(set(widths)) and all(w % 8 == 0 and 0 < w < 128 for w in widths)
    blocks = [Sensitivity(name, 128, 192, widths, [scale / w for w in widths], per_rank=192)
              for name, scale in (("robust", 0.01), ("fragile", 1.0))]
    allocated = allocate(blocks, budget_params=128 * 192)
    assert sum(allocated[b.name] * 192 for b in blocks) <= 128 * 192
    assert allocated["robust"] < allocated["fragile"]


# (tiny model, its FFN width, the FFN matrices per layer, bias correction); at R = 3.2 a block keeps 40 (80)
# neurons, a width nothing else in these graphs has
TINY = [("bert-fill-mask", 128, 2, False), ("gpt2-text-generation", 256, 2, False),
        ("gpt2-text-generation", 256, 2, True), ("llama-text-generation", 128, 3, False),
        ("llama-text-generation", 128, 3, True)]  # gated, and down_proj has no bias to correct: it gains one


@pytest.mark.parametrize("kind,units,matrices,bias_correction", TINY)
@pytest.mark.slow
def test_tiny_models_export_narrower_ffns_with_parity(kind, units, matrices, bias_correction, tiny_model,
                                                      small_calibration, tmp_path):
    config = CompressionConfig(method="prune-ffn", targets="ffn", ratio=3.2, calibration=str(small_calibration),
                               bias_correction=bias_correction)
    folder = tmp_path / "out"
    manifest = export(str(tiny_model(kind)), folder, config, GraphConfig(optimize="none"), progress=False)
    kept = int(units / 3.2)
    assert manifest["compression"] == "structured" and manifest["parity"]["max_abs_diff"] <= 1e-3
    totals = manifest["totals"]
    assert totals["modules_pruned"] == 2 * matrices and totals["modules_left_dense"] == 0
    assert totals["targeted_params_after"] <= totals["targeted_params_before"] / 3.2
    for module in manifest["modules"]:
        assert module["status"] == "pruned" and module["rank"] is None
        assert module["fit"]["units_kept"] == kept and module["fit"]["units"] == units
        assert module["params_after"] == module["params_before"] * kept // units
    readers = [m for m in manifest["modules"] if m["kinds"] == ["ffn-out"]]
    assert all(m["fit"]["output_error"]["repaired"] < m["fit"]["output_error"]["dropped"] for m in readers)
    narrow = [i for i in onnx.load(str(folder / "model.onnx")).graph.initializer if len(i.dims) == 2 and kept in i.dims]
    assert len(narrow) == 2 * matrices  # every FFN matrix of both layers, no other
    assert "module(s) pruned" in format_summary(manifest, folder)
    _runs_in_onnxruntime(folder, manifest["task"])


def test_sensitivity_gives_the_fragile_block_more_neurons(tiny_model, small_calibration):
    folder = tiny_model("bert-fill-mask")
    model = transformers.AutoModelForMaskedLM.from_pretrained(folder).eval()
    with torch.no_grad():  # layer 0's FFN barely matters, layer 1's dominates the residual stream
        model.bert.encoder.layer[0].output.dense.weight.mul_(0.01)
        model.bert.encoder.layer[1].output.dense.weight.mul_(30.0)
    config = CompressionConfig(method="prune-ffn", targets="ffn", ratio=2, allocation="sensitivity",
                               calibration=str(small_calibration))
    records = compress_(model, config, tokenizer=transformers.AutoTokenizer.from_pretrained(folder), progress=False)
    kept = {r.name: r.fit["units_kept"] for r in records if r.kinds == ("ffn-out",)}
    assert kept["bert.encoder.layer.0.output.dense"] < kept["bert.encoder.layer.1.output.dense"]
    assert sum(r.params_after for r in records) <= sum(r.params_before for r in records) / 2
    assert all(len(r.fit["sensitivity"]["widths"]) > 1 for r in records if r.kinds == ("ffn-out",))


@pytest.mark.slow
def test_a_size_budget_sets_the_whole_models_size_in_neurons(tiny_model, small_calibration, tmp_path):
    folder = tiny_model("bert-fill-mask")
    model = transformers.AutoModelForMaskedLM.from_pretrained(folder)
    ffn = sum(m.weight.numel() for _, m, _ in select_modules(model, spec_for("bert"), parse_targets("ffn")))
    budget = (sum(p.numel() for p in model.parameters()) - ffn // 3) * 4  # fp32 bytes with a third of the FFNs gone
    config = CompressionConfig(method="prune-ffn", targets="ffn", size_budget=budget,
                               calibration=str(small_calibration))
    manifest = export(str(folder), tmp_path / "out", config, GraphConfig(optimize="none"), progress=False)
    assert manifest["allocation"] == "sensitivity" and manifest["totals"]["model_params_after"] * 4 <= budget
    summary = format_summary(manifest, tmp_path / "out")
    assert "bert.encoder.layer.0.output.dense: " in summary and " of 128 neurons" in summary


def test_a_method_whose_layers_keep_the_same_units_refuses_an_allocation(tiny_model, small_calibration):
    class SameWidths(PruneFFN):
        def same_units_every_layer(self, model):
            return True

    folder = tiny_model("bert-fill-mask")
    model = transformers.AutoModelForMaskedLM.from_pretrained(folder)
    config = CompressionConfig(method="prune-ffn", targets="ffn", allocation="sensitivity",
                               calibration=str(small_calibration))
    with pytest.raises(EdgefoldError, match="keeps the same number of neurons in every layer of a bert model"):
        prune_(model, spec_for("bert"), config, SameWidths(), select_modules(model, spec_for("bert"),
                                                                              config.targets), None, None)


@pytest.mark.parametrize("targets, message", [
    ("ffn-out", "has no ffn-in targeted: pass --targets ffn"),
    ("attention,ffn", "prunes ffn-in, ffn-out and nothing else: target exactly those (--targets ffn), not "
                     "attention-output, k, q, v"),
])
def test_targets_beyond_or_short_of_the_block_are_refused_in_one_line(targets, message, capsys, tiny_model,
                                                                     small_calibration, tmp_path):
    code = main(["export", str(tiny_model("bert-fill-mask")), str(tmp_path / "out"), "--method", "prune-ffn",
                 "--targets", targets, "--calibration", str(small_calibration), "--quiet"])
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("edgefold: error:")]
    assert code == 2 and len(errors) == 1 and message in errors[0], errors
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_minilm_prunes_its_ffns_by_default_with_parity_and_runs_in_onnxruntime(small_calibration, tmp_path):
    folder = tmp_path / "out"
    assert main(["export", str(MINILM), str(folder), "--method", "prune-ffn", "--ratio", "2", "--optimize", "none",
                 "--calibration", str(small_calibration), "--quiet"]) == 0
    manifest = json.loads((folder / "edgefold.json").read_text())
    assert manifest["targets"] == ["ffn-in", "ffn-out"]  # a structured method's own kinds by default
    assert manifest["parity"]["max_abs_diff"] <= 1e-3 and manifest["totals"]["modules_pruned"] == 12
    assert all(m["fit"]["units_kept"] == 768 for m in manifest["modules"])
    assert manifest["fidelity"]["mean_cosine"] > 0.85
    session = open_session(folder / "model.onnx")
    inputs = transformers.AutoTokenizer.from_pretrained(folder)(["a short test"], return_tensors="np")
    hidden = run(session, None, make_feed(session, inputs["input_ids"], inputs["attention_mask"]))[0]
    assert hidden.shape == (1, inputs["input_ids"].shape[1], 384)
