"""Nothing the user did not ask to destroy is destroyed: the output rule of every command that writes, and
what SIGTERM and Ctrl-C leave behind."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import MINILM, tree_digest

from edgefold.runtime import EdgefoldError
from edgefold.cli import main
from edgefold.runtime.outputs import check_folder_output, check_json_output, staged_folder, write_json


def _one_error(capsys, argv: list, match: str) -> None:
    assert main([str(a) for a in argv]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("edgefold: error:") and match in lines[0], lines


@pytest.fixture
def user_folder(tmp_path) -> Path:
    folder = tmp_path / "mine"
    (folder / "sub").mkdir(parents=True)
    (folder / "thesis.tex").write_text("years of work")
    (folder / "sub" / "data.csv").write_text("a,b\n1,2\n")
    return folder


def test_export_overwrite_refuses_a_folder_edgefold_did_not_write(capsys, tiny_model, user_folder):
    before = tree_digest(user_folder)
    _one_error(capsys, ["export", tiny_model("bert-fill-mask"), user_folder, "--overwrite"],
               match="holds files edgefold did not write")
    assert tree_digest(user_folder) == before


def test_export_overwrite_refuses_the_current_folder(capsys, tiny_model, tmp_path, monkeypatch):
    (tmp_path / "edgefold.json").write_text(json.dumps({"schema": "edgefold.manifest", "schema_version": 1}))
    (tmp_path / "notes.txt").write_text("mine")
    monkeypatch.chdir(tmp_path)
    _one_error(capsys, ["export", tiny_model("bert-fill-mask"), ".", "--overwrite"], match="the current folder")
    _one_error(capsys, ["export", tiny_model("bert-fill-mask"), "..", "--overwrite"], match="")
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_export_into_an_impossible_place_fails_before_any_work(capsys, tiny_model, tmp_path):
    (tmp_path / "file").write_text("x")
    _one_error(capsys, ["export", tiny_model("bert-fill-mask"), tmp_path / "file" / "out"], match="not a folder")
    _one_error(capsys, ["export", tiny_model("bert-fill-mask"), tmp_path / ("x" * 300)], match="longer than 255")


@pytest.mark.parametrize("command", ["bench", "validate"])
def test_default_json_output_never_replaces_a_user_file(capsys, tmp_path, monkeypatch, command):
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "model.onnx").write_bytes(b"not used: the output is refused first")
    mine = tmp_path / f"{command}-m.json"
    mine.write_text('{"my": "results"}')
    extra = ["--reference", folder] if command == "validate" else []
    _one_error(capsys, [command, folder, *extra], match="exists; pass --overwrite")
    _one_error(capsys, [command, folder, *extra, "--overwrite"], match="is not an edgefold")
    assert mine.read_text() == '{"my": "results"}'


def test_json_output_into_a_missing_folder_is_refused_before_the_work(capsys, tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "model.onnx").write_bytes(b"")
    _one_error(capsys, ["bench", folder, "-o", tmp_path / "missing" / "b.json"], match="no such folder")


def test_json_replaced_only_when_edgefold_wrote_it(tmp_path):
    path = tmp_path / "b.json"
    write_json(path, {"schema": "edgefold.bench", "results": []})
    with pytest.raises(EdgefoldError, match="pass --overwrite"):
        check_json_output(path, "edgefold.bench", overwrite=False)
    check_json_output(path, "edgefold.bench", overwrite=True)
    with pytest.raises(EdgefoldError, match="not an edgefold validate result"):
        check_json_output(path, "edgefold.validate", overwrite=True)
    with pytest.raises(ValueError):
        write_json(path, {"x": float("inf")})  # never a manifest or result that is not JSON
    assert json.loads(path.read_text())["schema"] == "edgefold.bench"
    assert [p.name for p in tmp_path.iterdir()] == ["b.json"]


def test_export_overwrite_keeps_a_folder_the_user_added_to_an_export(capsys, tiny_model, tiny_export, tmp_path):
    """An export folder replaced with --overwrite holds only what its manifest lists: an empty folder the user made
    in it (for results to come) is not edgefold's to delete."""
    out = tmp_path / "out"
    shutil.copytree(tiny_export, out)
    (out / "results").mkdir()
    _one_error(capsys, ["export", tiny_model("bert-fill-mask"), out, "--overwrite"], match="holds files edgefold did not write")
    assert (out / "results").is_dir()


def test_probes_overwrite_replaces_only_the_graphs_its_index_lists(capsys, tiny_model, tmp_path):
    probes = tmp_path / "probes"
    probes.mkdir()
    (probes / "probes.json").write_text(json.dumps({"schema": "edgefold.op-probes", "schema_version": 1,
                                                   "tokens": 8, "probes": [{"file": "matmul_8x8_fp32.onnx"}]}))
    (probes / "matmul_8x8_fp32.onnx").write_bytes(b"graph")
    (probes / "notes.txt").write_text("timed on the board, fan on")
    before = tree_digest(probes)
    _one_error(capsys, ["probes", tiny_model("bert-fill-mask"), probes, "--overwrite"],
               match="holds files edgefold did not write")
    assert tree_digest(probes) == before


def test_report_overwrite_replaces_only_the_report_and_the_plots_it_shows(capsys, tmp_path):
    report = tmp_path / "report"
    report.mkdir()
    (report / "report.md").write_text("# edgefold report\n\n![accuracy against bytes](quality.png)\n")
    (report / "quality.png").write_bytes(b"\x89PNG")
    (report / "holiday.png").write_bytes(b"\x89PNG mine")
    result = tmp_path / "b.json"
    result.write_text("{}")
    before = tree_digest(report)
    _one_error(capsys, ["report", result, "-o", report, "--overwrite"], match="holds files edgefold did not write")
    assert tree_digest(report) == before
    (report / "holiday.png").unlink()  # the report alone may be replaced: the next refusal is of the bad input
    assert main(["report", str(result), "-o", str(report), "--overwrite"]) == 2
    assert "did not write" not in capsys.readouterr().err


def test_a_failed_write_removes_the_folders_it_made_for_the_output(tmp_path):
    out = tmp_path / "made" / "for" / "out"
    with pytest.raises(RuntimeError), staged_folder(out) as staging:
        (staging / "edgefold.json").write_text("{}")
        raise RuntimeError("the export failed")
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "made").mkdir()
    (tmp_path / "made" / "mine.txt").write_text("mine")
    with pytest.raises(RuntimeError), staged_folder(out):
        raise RuntimeError("the export failed")
    assert [p.name for p in (tmp_path / "made").iterdir()] == ["mine.txt"]


def test_report_never_writes_into_a_user_folder(capsys, tmp_path, user_folder):
    result = tmp_path / "b.json"
    result.write_text("{}")
    before = tree_digest(user_folder)
    _one_error(capsys, ["report", result, "-o", user_folder], match="already exists; pass --overwrite")
    _one_error(capsys, ["report", result, "-o", user_folder, "--overwrite"], match="holds files edgefold did not write")
    assert tree_digest(user_folder) == before


def test_an_interrupt_between_the_two_renames_waits_until_both_are_done(tmp_path, monkeypatch):
    """Ctrl-C right after the old folder is set aside must not leave the output hidden."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "edgefold.json").write_text("old")
    real_rename = Path.rename

    def rename_then_interrupt(self, target):
        moved = real_rename(self, target)
        if self == out:  # the old folder was just set aside
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)  # a signal not held back would be raised here
        return moved

    monkeypatch.setattr(Path, "rename", rename_then_interrupt)
    # Python's own Ctrl-C handler, whatever a library imported by an earlier test installed (in CI's transformers 5
    # run one was left in place, and Ctrl-C no longer raised KeyboardInterrupt)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt), staged_folder(out) as staging:
            (staging / "edgefold.json").write_text("new")
    finally:
        signal.signal(signal.SIGINT, previous)
    assert (out / "edgefold.json").read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_check_folder_output_accepts_new_and_empty_folders_creates_nothing_and_refuses_a_users_file(tmp_path):
    check_folder_output(tmp_path / "new" / "deeper", overwrite=False, written_by_edgefold=lambda p: False, what="x")
    assert not (tmp_path / "new").exists()  # a check writes nothing
    empty = tmp_path / "empty"
    empty.mkdir()
    check_folder_output(empty, overwrite=False, written_by_edgefold=lambda p: False, what="x")
    assert list(empty.iterdir()) == []
    (empty / "notes.txt").write_text("mine")
    with pytest.raises(EdgefoldError):
        check_folder_output(empty, overwrite=True, written_by_edgefold=lambda p: False, what="x")
    assert (empty / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize("sig,code,word", [(signal.SIGTERM, 143, "terminated (SIGTERM)"),
                                           (signal.SIGHUP, 129, "terminated (SIGHUP)"),
                                           (signal.SIGINT, 130, "interrupted")])
@pytest.mark.slow
def test_a_signal_during_export_leaves_nothing_behind(tmp_path, sig, code, word):
    """SIGTERM (kill, timeout, CI), SIGHUP (a closed terminal or SSH session) and Ctrl-C while the ONNX file is
    written: no output, no staging folder."""
    out = tmp_path / "out"
    process = subprocess.Popen(
        [sys.executable, "-m", "edgefold.cli", "export", str(MINILM), str(out), "--method", "none"],
        stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        # A test run started in the background inherits SIGINT ignored, and so would the export: restore it.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    lines = []
    for line in process.stderr:
        if "exporting to ONNX" in line:
            time.sleep(0.5)
            break
    reader = threading.Thread(target=lambda: lines.extend(process.stderr), daemon=True)
    reader.start()
    # The tracer can absorb a signal under load: send again until the export reacts (later ones are ignored).
    while process.poll() is None and not any("no output was left half-written" in line for line in lines):
        process.send_signal(sig)
        time.sleep(2)
    assert process.wait(timeout=120) == code, lines
    reader.join(timeout=10)
    assert any(f"{word}; no output was left half-written" in line for line in lines), lines
    assert list(tmp_path.iterdir()) == []
