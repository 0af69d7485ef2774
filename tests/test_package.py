"""edgefold pack / unpack: one archive for a device, and an unpack that refuses anything landing outside,
anything damaged, and anything too big, with one line and nothing left behind."""

import bz2
import gzip
import io
import json
import lzma
import os
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest
from conftest import tree_digest

from edgefold.runtime import package
from edgefold.runtime.errors import EdgefoldError
from edgefold.runtime.package import PINNED, pack, runtime_wheel, unpack


def main(argv: list[str]) -> int:
    from edgefold.cli import main  # imported here: the tests of pack/unpack alone do not need the CLI

    return main(argv)


def _error_line(capsys) -> str:
    (line,) = [l for l in capsys.readouterr().err.splitlines() if l.startswith("edgefold: error:")]
    return line


@pytest.fixture(scope="module")
def packed(minilm_variants, tmp_path_factory):
    archive = tmp_path_factory.mktemp("packed") / "mild.tar.gz"
    assert main(["pack", str(minilm_variants["mild"]), str(archive)]) == 0
    return archive


@pytest.mark.slow
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
    assert "edgefold/cli/__init__.py" in names
    assert "edgefold/runtime/data/evaluation.txt" in names
    assert not any(n.startswith("edgefold/exporter") or "__pycache__" in n for n in names)
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--target", str(target),
                    str(wheel)], check=True, timeout=120)  # pip checks RECORD's hashes and sizes
    run = subprocess.run([str(target / "bin" / "edgefold"), "unpack", "--help"], capture_output=True, text=True,
                         env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"}, timeout=60, check=False)
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


# Pack and unpack alone, on a tiny folder: model.onnx need not be a real graph for them.

@pytest.fixture
def tiny(tmp_path) -> Path:
    folder = tmp_path / "tiny"
    (folder / "sub" / "empty").mkdir(parents=True)
    (folder / "model.onnx").write_bytes(os.urandom(3000))
    (folder / "config.json").write_text("{}")
    (folder / "sub" / "weights.bin").write_bytes(b"w" * 50_000)
    return folder


def _tree(folder: Path) -> dict[str, bytes | None]:
    """Every path below ``folder``: a file's bytes, None for a folder (so empty folders count too)."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() if p.is_file() else None for p in folder.rglob("*")}


def _refused(call, *args, **kwargs) -> str:
    with pytest.raises(EdgefoldError) as error:
        call(*args, **kwargs)
    assert "\n" not in str(error.value)
    return str(error.value)


def _tar(path: Path, members: list[tuple[tarfile.TarInfo, bytes]], mode: str = "w:gz") -> Path:
    with tarfile.open(path, mode, format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            info.size = len(data) if info.isreg() else 0
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return path


def test_pack_overwrite_replaces_only_an_archive_edgefold_packed(tiny, tmp_path):
    archive = tmp_path / "tiny.tar.gz"
    pack(tiny, archive)
    pack(tiny, archive, overwrite=True)  # ours: replaced
    mine = tmp_path / "mine.tar.gz"
    _tar(mine, [(_member("notes.txt"), b"years of work")])
    before = mine.read_bytes()
    assert "not an archive edgefold packed" in _refused(pack, tiny, mine, overwrite=True)
    assert mine.read_bytes() == before


def test_pack_unpack_round_trip_keeps_every_file_and_folder(tiny, tmp_path):
    packed = pack(tiny, tmp_path / "tiny.tar.gz")
    assert packed["files"] == 3 and packed["model"] == "tiny"
    assert unpack(tmp_path / "tiny.tar.gz", tmp_path / "out") == tmp_path / "out"
    assert _tree(tmp_path / "out") == _tree(tiny) and "sub/empty" in _tree(tiny)
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "out").stat().st_mode & 0o777 == 0o777 & ~umask  # a normal folder, not a private one


@pytest.fixture
def raw_tar(tiny, tmp_path) -> bytes:
    """The uncompressed tar that pack writes for ``tiny``."""
    pack(tiny, tmp_path / "tiny.tar.gz")
    return gzip.decompress((tmp_path / "tiny.tar.gz").read_bytes())


def test_unpack_refuses_a_tar_gz_damaged_in_the_middle(raw_tar, tiny, tmp_path):
    stored = bytearray(gzip.compress(raw_tar, compresslevel=0))  # stored blocks: only the CRC at the end can tell
    at = stored.index((tiny / "model.onnx").read_bytes()[:64]) + 10
    stored[at] ^= 0xFF
    archive = tmp_path / "damaged.tar.gz"
    archive.write_bytes(stored)
    with tarfile.open(archive) as tar:  # tarfile alone hands out the wrong bytes without a word
        assert tar.extractfile("tiny/model.onnx").read() != (tiny / "model.onnx").read_bytes()
    work = tmp_path / "work"
    work.mkdir()
    assert "CRC check failed" in _refused(unpack, archive, work / "dest")
    assert list(work.iterdir()) == []


def _damaged(raw: bytes, kind: str) -> bytes:
    header = raw.index(b"tiny/model.onnx") // 512 * 512  # the model's own header block
    if kind == "tar with a bad header":
        return raw[:header + 10] + b"junk" + raw[header + 14:]
    if kind == "tar truncated":
        return raw[:header + 700]
    if kind == "tar with data after its end":
        return raw + b"x" * 512
    if kind == "random bytes":
        return os.urandom(2000)
    compress = {"xz": lzma.compress, "bz2": bz2.compress, "gz": gzip.compress}[kind.split()[0]]
    data = bytearray(compress(raw))
    if kind.endswith("truncated"):
        return bytes(data[: len(data) * 2 // 3])
    data[len(data) // 2] ^= 0x55
    return bytes(data)


@pytest.mark.parametrize("kind", ["xz damaged", "xz truncated", "bz2 damaged", "bz2 truncated", "gz truncated",
                                  "tar with a bad header", "tar truncated", "tar with data after its end",
                                  "random bytes"])
def test_unpack_refuses_a_damaged_archive_of_any_compression_with_one_line(kind, raw_tar, tmp_path):
    archive = tmp_path / "damaged.tar"
    archive.write_bytes(_damaged(raw_tar, kind))
    work = tmp_path / "work"
    work.mkdir()
    assert _refused(unpack, archive, work / "dest").startswith(f"cannot read {archive}")
    assert list(work.iterdir()) == []


@pytest.mark.parametrize("mode", ["w:xz", "w:bz2", "w"])
def test_unpack_takes_every_compression(mode, raw_tar, tiny, tmp_path):
    with tarfile.open(fileobj=io.BytesIO(raw_tar)) as source, tarfile.open(tmp_path / "a", mode) as tar:
        for member in source:
            tar.addfile(member, source.extractfile(member))
    assert _tree(unpack(tmp_path / "a", tmp_path / "out")) == _tree(tiny)


BAD_MEMBERS = {
    "duplicate": ([(_member("m/a"), b"1"), (_member("m/a"), b"2")], "is there twice"),
    "duplicate once normalised": ([(_member("m/a"), b"1"), (_member("m/./a"), b"2")], "is there twice"),
    "file and folder": ([(_member("m/a"), b"1"), (_member("m/a/b"), b"2")], "both a file and a folder"),
    "name too long": ([(_member("m/" + "a" * 300), b"1")], "longer than 255 bytes"),
    "NUL in a name": ([(_member("m/é\x00b"), b"1")], "control character"),
    "newline in a name": ([(_member("m/a\nb"), b"1")], "control character"),
    "byte that is not UTF-8": ([(_member("m/\udcffb"), b"1")], "invalid UTF-8"),
    "backslash": ([(_member("m/a\\..\\..\\b"), b"1")], "would land outside"),
    "sparse file": ([(_member("m/s", tarfile.GNUTYPE_SPARSE), b"")], "device or special file"),
    "requirements.txt as a folder": ([(_member("requirements.txt/x"), b"1")], "reserves"),
    "two model folders": ([(_member("n/model.onnx"), b"1")], "one model folder"),
    "a folder named /": ([(_member("/", tarfile.DIRTYPE), b"")], "empty name"),
}


@pytest.mark.parametrize("case", BAD_MEMBERS)
def test_unpack_refuses_odd_members_with_one_line_and_leaves_nothing(case, tmp_path):
    extra, message = BAD_MEMBERS[case]
    archive = _tar(tmp_path / "odd.tar.gz", [(_member("m/model.onnx"), b"graph"), *extra])
    work = tmp_path / "work"
    work.mkdir()
    assert message in _refused(unpack, archive, work / "dest")
    assert list(work.iterdir()) == []


def test_unpack_refuses_empty_archives(tmp_path):
    (tmp_path / "empty.tar.gz").write_bytes(b"")
    assert "is empty" in _refused(unpack, tmp_path / "empty.tar.gz", tmp_path / "dest")
    archive = _tar(tmp_path / "nothing.tar.gz", [])
    assert "not an edgefold archive" in _refused(unpack, archive, tmp_path / "dest")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.tar.gz", "nothing.tar.gz"]


def test_unpack_caps_what_an_archive_expands_to(raw_tar, tmp_path):
    archive = tmp_path / "a.tar"
    archive.write_bytes(raw_tar)
    work = tmp_path / "work"
    work.mkdir()
    assert "more than the limit of 1000 (max_bytes)" in _refused(unpack, archive, work / "d", max_bytes=1000)
    assert "more than 3 members, the limit (max_members)" in _refused(unpack, archive, work / "d", max_members=3)
    assert list(work.iterdir()) == []
    assert package.MAX_BYTES >= 64 << 30 and package.MAX_MEMBERS >= 100_000


def test_unpack_writes_no_more_bytes_than_a_header_says(raw_tar, tmp_path, monkeypatch):
    archive = tmp_path / "a.tar"
    archive.write_bytes(raw_tar)
    extractfile = tarfile.TarFile.extractfile
    monkeypatch.setattr(tarfile.TarFile, "extractfile",
                        lambda tar, member: io.BytesIO(extractfile(tar, member).read() + b"more"))
    work = tmp_path / "work"
    work.mkdir()
    assert "bytes its header says" in _refused(unpack, archive, work / "dest")
    assert list(work.iterdir()) == []


def test_unpack_into_a_path_too_long_for_the_file_system(tmp_path):
    deep = "/".join(["d" * 250] * 20)  # every part legal, the whole longer than PATH_MAX
    archive = _tar(tmp_path / "deep.tar.gz", [(_member("m/model.onnx"), b"graph"), (_member(f"m/{deep}/x"), b"1")])
    work = tmp_path / "work"
    work.mkdir()
    assert "File name too long" in _refused(unpack, archive, work / "dest")
    assert list(work.iterdir()) == []


def test_unpack_into_a_parent_that_is_a_file_or_cannot_be_written(raw_tar, tmp_path, monkeypatch):
    archive = tmp_path / "a.tar"
    archive.write_bytes(raw_tar)
    (tmp_path / "file").write_text("")
    assert "is not a folder" in _refused(unpack, archive, tmp_path / "file" / "dest")
    read_only = tmp_path / "read-only"
    read_only.mkdir(mode=0o555)
    if os.geteuid() == 0:  # root writes anywhere: make the staging folder fail as a read-only parent would
        def denied(*args, **kwargs):
            raise PermissionError(13, "Permission denied", str(read_only))
        monkeypatch.setattr("edgefold.runtime.outputs.tempfile.mkdtemp", denied)
    assert "Permission denied" in _refused(unpack, archive, read_only / "dest")
    assert list(read_only.iterdir()) == []


def test_ctrl_c_in_the_middle_of_unpack_leaves_nothing(raw_tar, tmp_path, monkeypatch):
    archive = tmp_path / "a.tar"
    archive.write_bytes(raw_tar)
    extractfile, calls = tarfile.TarFile.extractfile, []

    def interrupted(tar, member):
        calls.append(member)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return extractfile(tar, member)

    monkeypatch.setattr(tarfile.TarFile, "extractfile", interrupted)
    work = tmp_path / "work"
    work.mkdir()
    with pytest.raises(KeyboardInterrupt):
        unpack(archive, work / "dest")
    assert len(calls) == 2 and list(work.iterdir()) == []


def test_ctrl_c_in_the_middle_of_pack_leaves_nothing(tiny, tmp_path, monkeypatch):
    addfile, calls = tarfile.TarFile.addfile, []

    def interrupted(tar, info, stream=None):
        calls.append(info)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return addfile(tar, info, stream)

    monkeypatch.setattr(tarfile.TarFile, "addfile", interrupted)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(KeyboardInterrupt):
        pack(tiny, out / "tiny.tar.gz")
    assert len(calls) == 4 and list(out.iterdir()) == []


def _link(folder: Path) -> None:
    (folder / "link").symlink_to("model.onnx")


PACK_REFUSES = {
    "a symlink": (_link, "is a link"),
    "a fifo": (lambda folder: os.mkfifo(folder / "fifo"), "device or special file"),
    "a backslash in a name": (lambda folder: (folder / "a\\b").write_text(""), "would land outside"),
    "a newline in a name": (lambda folder: (folder / "a\nb").write_text(""), "control character"),
    "a byte that is not UTF-8": (lambda folder: (folder / os.fsdecode(b"\xff")).write_text(""), "invalid UTF-8"),
}


@pytest.mark.parametrize("case", PACK_REFUSES)
def test_pack_refuses_what_unpack_would_refuse(case, tiny, tmp_path):
    make, message = PACK_REFUSES[case]
    make(tiny)
    out = tmp_path / "out"
    out.mkdir()
    assert message in _refused(pack, tiny, out / "tiny.tar.gz")
    assert list(out.iterdir()) == []


@pytest.mark.parametrize("name", ["wheels", "requirements.txt"])
def test_pack_refuses_a_folder_named_like_the_archives_own_entries(name, tiny, tmp_path):
    folder = tiny.rename(tmp_path / name)
    assert "reserves the name" in _refused(pack, folder, tmp_path / "a.tar.gz")
    assert not list(tmp_path.glob("*.tar.gz*")) and not list(tmp_path.glob(".a.tar.gz*"))


def test_errors_stay_one_line_whatever_the_names(tiny, tmp_path):
    folder = tiny.rename(tmp_path / "a\nb")
    assert "gone\\n" in _refused(pack, tmp_path / "gone\n", tmp_path / "x.tar.gz")
    (folder / "c\rd").write_text("")
    assert "a\\nb" in (message := _refused(pack, folder, tmp_path / "x.tar.gz")) and "c\\rd" in message
