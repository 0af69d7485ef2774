"""A folder is what its edgefold.json records, or it is refused before use: bench, validate, pack and unpack check
every file's size and SHA-256 (``--no-verify`` for a folder edited on purpose)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import one_error_line

from edgefold.cli import main
from edgefold.runtime.manifest import CHECKSUMS, read_manifest, sha256
from edgefold.runtime.package import pack


@pytest.fixture
def copied(tiny_export, tmp_path) -> Path:
    folder = tmp_path / "model"
    shutil.copytree(tiny_export, folder)
    return folder


def _flip_one_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def test_the_manifest_records_every_file_it_lists_with_size_and_sha256(tiny_export):
    manifest = read_manifest(tiny_export)
    recorded = manifest[CHECKSUMS]
    assert set(recorded) == set(manifest["contents"]) - {"edgefold.json"} and "model.onnx" in recorded
    for name, entry in recorded.items():
        assert entry == {"bytes": (tiny_export / name).stat().st_size, "sha256": sha256(tiny_export / name)}


@pytest.mark.parametrize("change,match", [
    (lambda folder: _flip_one_byte(folder / "model.onnx"), "does not match the SHA-256"),
    (lambda folder: (folder / "model.onnx").write_bytes((folder / "model.onnx").read_bytes()[:1000]),
     "bytes, its edgefold.json records"),
    (lambda folder: (folder / "tokenizer.json").unlink(), "is missing"),
])
def test_bench_and_validate_refuse_a_folder_that_is_not_the_recorded_one(copied, tmp_path, capsys, change, match):
    change(copied)
    out = tmp_path / "result.json"
    for argv in (["bench", copied, "--threads", "1", "--min-seconds", "0", "-o", out],
                 ["validate", copied, "--reference", copied, "-o", out]):
        assert main([str(a) for a in argv]) == 2
        error = one_error_line(capsys)
        assert match in error and "--no-verify" in error, error
        assert not out.exists()


def test_no_verify_uses_a_folder_edited_on_purpose(copied, tmp_path, capsys):
    config = json.loads((copied / "config.json").read_text())
    (copied / "config.json").write_text(json.dumps({**config, "note": "edited by hand"}))
    out = tmp_path / "bench.json"
    argv = ["bench", str(copied), "--threads", "1", "--iterations", "2", "--min-seconds", "0", "-o", str(out)]
    assert main(argv) == 2 and "config.json" in one_error_line(capsys)
    assert main([*argv, "--no-verify"]) == 0
    assert json.loads(out.read_text())["schema"] == "edgefold.bench"


def test_unpack_writes_nothing_when_the_archive_holds_another_graph(copied, tmp_path, capsys):
    archive = tmp_path / "model.tar.gz"
    _flip_one_byte(copied / "model.onnx")
    assert main(["pack", str(copied), str(archive)]) == 2 and "SHA-256" in one_error_line(capsys)
    pack(copied, archive, verify=False)  # as an archive damaged or edited after packing would be
    destination = tmp_path / "unpacked"
    assert main(["unpack", str(archive), str(destination)]) == 2 and "SHA-256" in one_error_line(capsys)
    assert not destination.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["model", "model.tar.gz"]
    assert main(["unpack", str(archive), str(destination), "--no-verify"]) == 0
    assert (destination / "model.onnx").read_bytes() == (copied / "model.onnx").read_bytes()
