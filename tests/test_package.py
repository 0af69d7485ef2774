"""edgefold pack / unpack: one archive for a device, and an unpack that refuses anything landing outside."""

import io
import json
import subprocess
import sys
import tarfile
import zipfile

import pytest
from conftest import tree_digest

from edgefold.runtime.cli import main
from edgefold.runtime.package import PINNED, runtime_wheel


def _error_line(capsys) -> str:
    (line,) = [l for l in capsys.readouterr().err.splitlines() if l.startswith("edgefold: error:")]
    return line


@pytest.fixture(scope="module")
def packed(minilm_variants, tmp_path_factory):
    archive = tmp_path_factory.mktemp("packed") / "mild.tar.gz"
    assert main(["pack", str(minilm_variants["mild"]), str(archive)]) == 0
    return archive


def test_pack_unpack_round_trip_then_validate(packed, minilm_variants, tmp_path, capsys):
    with tarfile.open(packed) as tar:
        names = tar.getnames()
        requirements = tar.extractfile("requirements.txt").read().decode().splitlines()
    wheel = next(n for n in names if n.startswith("wheels/"))
    assert f"./{wheel}" in requirements and {"mild/model.onnx", "mild/tokenizer.json"} <= set(names)
    from importlib.metadata import version
    for name in PINNED:
        assert f"{name}=={version(name)}" in requirements

    folder = tmp_path / "mild"
    assert main(["unpack", str(packed), str(folder)]) == 0
    assert tree_digest(folder) == tree_digest(minilm_variants["mild"])
    out = tmp_path / "v.json"
    assert main(["validate", str(folder), "--reference", str(minilm_variants["reference"]), "-o", str(out)]) == 0
    assert json.loads(out.read_text())["passed"] and "PASS" in capsys.readouterr().out


def test_the_wheel_is_the_runtime_alone_and_pip_installs_it(tmp_path):
    name, data = runtime_wheel()
    wheel = tmp_path / name
    wheel.write_bytes(data)
    names = zipfile.ZipFile(wheel).namelist()
    assert "edgefold/runtime/cli.py" in names and "edgefold/runtime/data/evaluation.txt" in names
    assert not any(n.startswith("edgefold/exporter") or "__pycache__" in n for n in names)
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--target", str(target),
                    str(wheel)], check=True, timeout=120)  # pip checks RECORD's hashes and sizes
    run = subprocess.run([str(target / "bin" / "edgefold"), "unpack", "--help"], capture_output=True, text=True,
                         env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"}, timeout=60)
    assert run.returncode == 0 and "DEST" in run.stdout.upper(), run.stderr


def test_pack_refuses_an_existing_archive_and_a_folder_that_is_not_an_export(packed, tmp_path, capsys):
    assert main(["pack", str(tmp_path), str(tmp_path / "a.tar.gz")]) == 2  # checked before anything is written
    assert "holds no model.onnx" in _error_line(capsys) and list(tmp_path.iterdir()) == []
    folder = tmp_path / "x"
    folder.mkdir()
    (folder / "model.onnx").write_bytes(b"graph")
    assert main(["pack", str(folder), str(folder / "x.tar.gz")]) == 2
    assert "inside the folder it packs" in _error_line(capsys)
    before = packed.stat().st_mtime_ns
    assert main(["pack", str(folder), str(packed)]) == 2
    assert "exists; pass --overwrite" in _error_line(capsys) and packed.stat().st_mtime_ns == before
    assert not list(packed.parent.glob("*.partial")) and list(folder.iterdir()) == [folder / "model.onnx"]


def _member(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, link
    return info


MALICIOUS = {
    "absolute path": (_member("/tmp/edgefold-evil"), "has an absolute path"),
    "parent folder": (_member("../edgefold-evil"), "would land outside"),
    "parent inside a path": (_member("m/../../edgefold-evil"), "would land outside"),
    "symlink out": (_member("m/link", tarfile.SYMTYPE, "/etc/passwd"), "is a link"),
    "symlink up": (_member("m/up", tarfile.SYMTYPE, "../.."), "is a link"),
    "hardlink out": (_member("m/hard", tarfile.LNKTYPE, "../../etc/passwd"), "is a link"),
    "device": (_member("m/dev", tarfile.CHRTYPE), "device or special file"),
    "fifo": (_member("m/fifo", tarfile.FIFOTYPE), "device or special file"),
}


@pytest.mark.parametrize("case", MALICIOUS)
def test_unpack_refuses_a_member_landing_outside_and_writes_nothing(case, tmp_path, capsys):
    bad, message = MALICIOUS[case]
    archive = tmp_path / "evil.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for info, data in ((_member("m/model.onnx"), b"graph"), (bad, b"evil")):
            info.size = len(data) if info.isreg() else 0
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    work = tmp_path / "work"
    work.mkdir()
    assert main(["unpack", str(archive), str(work / "dest")]) == 2
    assert message in _error_line(capsys)
    assert list(work.iterdir()) == [] and not (tmp_path / "edgefold-evil").exists()


@pytest.mark.parametrize("problem,match", [("not-a-tar", "cannot read"), ("no-model", "not an edgefold archive"),
                                           ("exists", "exists; unpack writes a new folder")])
def test_unpack_bad_input(problem, match, packed, tmp_path, capsys):
    archive, dest = packed, tmp_path / "dest"
    if problem == "not-a-tar":
        archive = tmp_path / "x.tar.gz"
        archive.write_bytes(b"not an archive" * 10)
    elif problem == "no-model":
        archive = tmp_path / "x.tar.gz"
        with tarfile.open(archive, "w:gz") as tar:
            info = tarfile.TarInfo("requirements.txt")
            tar.addfile(info, io.BytesIO(b""))
    else:
        dest.mkdir()
    assert main(["unpack", str(archive), str(dest)]) == 2
    assert match in _error_line(capsys)
    assert not list(tmp_path.glob(".dest.*"))
