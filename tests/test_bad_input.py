"""Bad input: one clear line on stderr, a non-zero exit, nothing written, the source untouched."""

import json
import os
import shutil

import pytest
from conftest import tree_digest

from edgefold.cli import main


def _fails(capsys, *argv, match: str) -> str:
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    errors = [line for line in err if line.startswith("edgefold: error:")]
    assert len(errors) == 1, err
    assert match in errors[0], errors[0]
    return errors[0]


def _fails_in_argparse(capsys, *argv, match: str) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in argv])
    assert exit_info.value.code == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("edgefold: error:") and match in line, line


@pytest.fixture
def tiny_copy(tiny_model, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(tiny_model("bert-fill-mask"), folder)
    return folder


def test_missing_path(capsys, tmp_path):
    _fails(capsys, "export", tmp_path / "nowhere", tmp_path / "out", match="no such model folder")
    assert not (tmp_path / "out").exists()


def test_folder_that_is_not_a_model(capsys, tmp_path):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("hello")
    _fails(capsys, "export", tmp_path / "notes", tmp_path / "out", match="not a transformers model folder")
    assert not (tmp_path / "out").exists()


def test_unsupported_architecture_is_named_before_any_work(capsys, tmp_path):
    import transformers

    transformers.T5Config(d_model=32, num_layers=1, num_heads=2).save_pretrained(tmp_path / "t5")
    _fails(capsys, "export", tmp_path / "t5", tmp_path / "out", match="architecture 't5' is not supported")


@pytest.mark.parametrize("ratio,match", [("0.5", "must be greater than 1"), ("1", "must be greater than 1"),
                                         ("five", "not a number"), ("nan", "must be a finite number"),
                                         ("inf", "must be a finite number")])
def test_bad_ratio(capsys, tiny_copy, tmp_path, ratio, match):
    _fails_in_argparse(capsys, "export", tiny_copy, tmp_path / "out", "--ratio", ratio, match=match)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("flags,match", [
    (["--method", "none", "--bias-correction"], "--bias-correction corrects the Linears"),
    (["--method", "prune-ffn", "--targets", "attention"], "target exactly those (--targets ffn)"),
    (["--method", "prune-heads", "--targets", "ffn"], "target exactly those (--targets attention)"),
    (["--method", "svd-whitened", "--method-option", "sequential=maybe"], "option sequential takes true or false"),
    (["--method", "none", "--frequency"], "method none fits no embedding rows"),
    (["--method", "svd-shared", "--frequency"], "method svd-shared fits no embedding rows"),
    (["--method", "svd", "--targets", "ffn", "--frequency"], "target embeddings too"),
])
def test_refused_recipes(capsys, tiny_copy, tmp_path, flags, match):
    _fails(capsys, "export", tiny_copy, tmp_path / "out", *flags, match=match)
    assert not (tmp_path / "out").exists()


def test_unknown_target(capsys, tiny_copy, tmp_path):
    _fails(capsys, "export", tiny_copy, tmp_path / "out", "--targets", "embeddings,mlp", match="unknown target 'mlp'")


def test_unknown_method(capsys, tiny_copy, tmp_path):
    _fails(capsys, "export", tiny_copy, tmp_path / "out", "--method", "magic", match="unknown method 'magic'")


def test_existing_output_without_overwrite_is_kept(capsys, tiny_copy, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    _fails(capsys, "export", tiny_copy, out, match="already exists; pass --overwrite")
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


@pytest.mark.slow
def test_overwrite_replaces_the_whole_folder_edgefold_wrote(capsys, tiny_copy, tmp_path):
    out = tmp_path / "out"
    assert main(["export", str(tiny_copy), str(out), "--quiet", "--method", "none"]) == 0
    (out / "edgefold-gates.json").write_text('{"gates": ["mean_cosine>=0.99"]}')  # the user's, added since
    assert main(["export", str(tiny_copy), str(out), "--overwrite", "--quiet", "--method", "svd"]) == 2
    assert "holds files edgefold did not write" in capsys.readouterr().err
    (out / "edgefold-gates.json").unlink()
    old_manifest = (out / "edgefold.json").read_text()
    assert main(["export", str(tiny_copy), str(out), "--overwrite", "--quiet", "--method", "svd"]) == 0
    assert (out / "edgefold.json").read_text() != old_manifest and (out / "model.onnx").is_file()
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o777 & ~umask  # a normal folder, not mkdtemp's private one
    assert "exported" in capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model", "out"]  # no staging folder left


@pytest.mark.parametrize("where", ["same", "inside"])
def test_output_in_the_source_folder_is_refused(capsys, tiny_copy, where):
    out = tiny_copy if where == "same" else tiny_copy / "onnx"
    before = tree_digest(tiny_copy)
    _fails(capsys, "export", tiny_copy, out, "--overwrite", match="must not be the source model's folder")
    assert tree_digest(tiny_copy) == before


@pytest.mark.parametrize("damage", ["corrupt", "truncated"])
def test_damaged_weights(capsys, tiny_copy, tmp_path, damage):
    weights = tiny_copy / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(os.urandom(4096) if damage == "corrupt" else data[: len(data) // 2])
    _fails(capsys, "export", tiny_copy, tmp_path / "out", match="cannot load the weights")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("field,value", [("num_hidden_layers", -1), ("num_hidden_layers", 0), ("hidden_size", 2.5),
                                         ("num_attention_heads", True), ("vocab_size", "many")])
def test_a_config_no_model_can_have_is_refused_before_loading(capsys, tiny_copy, tmp_path, field, value):
    config = json.loads((tiny_copy / "config.json").read_text())
    (tiny_copy / "config.json").write_text(json.dumps({**config, field: value}))
    _fails(capsys, "export", tiny_copy, tmp_path / "out", match=f"{field} must be a whole number of at least 1")
    assert not (tmp_path / "out").exists()


def test_heads_that_do_not_divide_the_width_are_refused(capsys, tiny_copy, tmp_path):
    config = json.loads((tiny_copy / "config.json").read_text())
    (tiny_copy / "config.json").write_text(json.dumps({**config, "num_attention_heads": config["hidden_size"] + 1}))
    _fails(capsys, "export", tiny_copy, tmp_path / "out", match="is not a multiple of its")


def test_a_model_without_tokenizer_files_is_refused_not_given_an_invented_tokenizer(capsys, tiny_copy, tmp_path):
    for name in ("tokenizer.json", "vocab.txt"):
        (tiny_copy / name).unlink(missing_ok=True)
    _fails(capsys, "export", tiny_copy, tmp_path / "out", match="has no tokenizer files")
    assert not (tmp_path / "out").exists()


def test_remote_code_needs_consent(capsys, tiny_copy, tmp_path):
    config = json.loads((tiny_copy / "config.json").read_text())
    config["auto_map"] = {"AutoModel": "modeling_evil.EvilModel"}
    (tiny_copy / "config.json").write_text(json.dumps(config))
    _fails(capsys, "export", tiny_copy, tmp_path / "out", match="needs remote code")


@pytest.mark.slow
def test_failed_parity_writes_nothing(capsys, tiny_copy, tmp_path):
    _fails(capsys, "export", tiny_copy, tmp_path / "out", "--method", "svd", "--parity-atol", "0", "--quiet",
           match="parity check failed")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


@pytest.mark.parametrize("flags, match", [
    (["--ratio", "3", "--size-budget", "1000"], "give one"),
    (["--per-channel"], "--per-channel sets int8 weight scales"),
    (["--calibration", "/missing"], "--calibration is not used by method svd"),
    (["--method", "svd-whitened", "--calibration", "/missing"], "calibration file not found"),
    (["--parity-atol", "-1"], "must be 0 or more"),
    (["--parity-atol", "0.1"], "--parity-atol works on a recipe"),
    (["--objective", "size", "--method", "svd"], "give one: use one or the other"),
    (["--targets", ""], "unknown target ''"),
    (["--plan", "plan.json", "--quantize", "int8"], "--plan exports a plan as it is"),
    (["--data", "texts.txt", "--method", "svd"], "give --gate too"),
    (["--label-column", "label"], "give the file"),
    (["--objective", "speed"], "invalid choice"),
    (["--gate", "mean_cosine>0.9"], "a gate reads METRIC>=VALUE"),
    (["--gate", "recall_at_1_drop<=0.01"], "no metric recall_at_1_drop for fill-mask"),
    (["--gate", "bleu>=0.3"], "no metric bleu"),
    (["--latency-table", "table.json"], "a latency table serves --objective latency"),
    (["--objective", "latency", "--latency-table", "/missing.json"], "/missing.json"),
    (["--plan", "/missing.json"], "/missing.json"),
    (["--optimize", "auto"], "--optimize works on a recipe"),
    (["--target", "arm64"], "unrecognized arguments: --target"),  # no abbreviation of --targets
])
def test_options_that_do_not_apply_or_make_no_sense_fail_before_any_work(capsys, tiny_copy, tmp_path, flags, match):
    argv = ["export", tiny_copy, tmp_path / "out", *flags]
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exit_:
        code = exit_.code
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and line.startswith("edgefold: error:") and match in line, line
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("config", ["[1, 2]", "null", '"bert"', '{"model_type": 7}'])
def test_a_config_json_of_the_wrong_shape_is_one_line(capsys, tiny_copy, tmp_path, config):
    (tiny_copy / "config.json").write_text(config)
    _fails(capsys, "export", tiny_copy, tmp_path / "out", match="config.json")
