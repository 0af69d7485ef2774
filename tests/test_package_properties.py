"""Properties of pack / unpack over generated input: whatever pack accepts, unpack gives back byte for byte; any
archive, damaged or odd, unpacks faithfully or fails with one EdgefoldError line and leaves nothing behind."""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import os
import tarfile
import tempfile
from pathlib import Path, PurePosixPath

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from edgefold.runtime import package
from edgefold.runtime.errors import EdgefoldError
from edgefold.runtime.package import pack, unpack

# deadline=None: the machine is shared and timings vary; no example database left in the working tree.
SETTINGS = settings(max_examples=150, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])

DIR, LINK, FIFO = "dir", "link", "fifo"


@pytest.fixture(scope="module", autouse=True)
def cached_wheel():
    """pack builds a wheel of the installed runtime on each call: build it once for the module."""
    wheel = package.runtime_wheel()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(package, "runtime_wheel", lambda: wheel)
        yield


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("properties")


def _tree(folder: Path) -> dict[str, bytes | None]:
    """Every path below ``folder``: a file's bytes, None for a folder (so empty folders count too)."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() if p.is_file() else None for p in folder.rglob("*")}


def _attempt(call, work: Path) -> object | None:
    """``call()``'s result, or None when it failed as the contract allows: one EdgefoldError line and ``work``
    (the destination's parent) left as it was, empty."""
    try:
        result = call()
    except EdgefoldError as error:
        assert "\n" not in str(error)
        assert list(work.iterdir()) == []
        event(f"refused: {str(error).split(': ', 1)[-1][:40]}")  # what was refused, in --hypothesis-show-statistics
        return None
    event("accepted")
    return result


# Names a file system takes: mostly printable unicode, with odd characters (backslashes, control characters, a byte
# that is not UTF-8) now and then, which pack may refuse; '/', NUL, '.' and '..' left out: no file can be named so.
_odd = st.sampled_from(["\\", "\n", "\t", "\x7f", "\x85", os.fsdecode(b"\xff"), ":", " ", ".", "~", "\u200d", "😀"])
_printable = st.characters(codec="utf-8", exclude_categories=["Cc"], exclude_characters="/")
names = (st.text(st.one_of(_printable, _printable, _printable, _odd), min_size=1, max_size=8)
         .filter(lambda name: name not in (".", "..") and len(os.fsencode(name)) <= 255))
entries = st.one_of(st.binary(max_size=200), st.binary(max_size=200), st.sampled_from([DIR, DIR, LINK, FIFO]))
trees = st.dictionaries(st.lists(names, min_size=1, max_size=3).map(tuple), entries, max_size=6)


def _build(folder: Path, tree: dict[tuple[str, ...], bytes | str]) -> None:
    folder.mkdir()
    (folder / "model.onnx").write_bytes(b"graph")
    for parts, entry in sorted(tree.items()):
        path = folder.joinpath(*parts)
        if any(p.exists() and not p.is_dir() or p.is_symlink() for p in path.parents) or os.path.lexists(path):
            continue  # a file already stands where a folder would go, or the path is there already
        path.parent.mkdir(parents=True, exist_ok=True)
        if entry == DIR:
            path.mkdir()
        elif entry == LINK:
            path.symlink_to("model.onnx")
        elif entry == FIFO:
            os.mkfifo(path)
        else:
            path.write_bytes(entry)


@SETTINGS
@given(name=names, reserved=st.sampled_from([None] * 8 + ["wheels", "requirements.txt"]), tree=trees)
def test_what_pack_accepts_unpack_gives_back_byte_for_byte(base, name, reserved, tree):
    name = reserved or name
    with tempfile.TemporaryDirectory(dir=base) as root:
        folder, out, work = Path(root, "in", name), Path(root, "out"), Path(root, "work")
        folder.parent.mkdir()
        out.mkdir()
        work.mkdir()
        _build(folder, tree)
        if _attempt(lambda: pack(folder, out / "a.tar.gz"), out) is None:
            return
        assert [p.name for p in out.iterdir()] == ["a.tar.gz"]
        unpack(out / "a.tar.gz", work / "dest")  # no EdgefoldError allowed here
        assert _tree(work / "dest") == _tree(folder)


@pytest.fixture(scope="module")
def valid(base) -> dict[str, object]:
    """One packed tiny folder: its files, and its tar in each compression unpack reads."""
    folder = base / "tiny"
    (folder / "sub").mkdir(parents=True)
    (folder / "model.onnx").write_bytes(bytes(range(256)) * 8)
    (folder / "sub" / "notes.txt").write_bytes(b"odd but legal\n" * 50)
    pack(folder, base / "tiny.tar.gz")
    raw = gzip.decompress((base / "tiny.tar.gz").read_bytes())
    archives = {"gz": (base / "tiny.tar.gz").read_bytes(), "xz": lzma.compress(raw), "bz2": bz2.compress(raw),
                "tar": raw}
    return {"tree": _tree(folder), "archives": archives}


def _unpack_bytes(base: Path, data: bytes, **limits) -> tuple[dict | None, Path]:
    """Unpack ``data`` into a fresh folder: (the tree written, or None when refused within the contract)."""
    root = Path(tempfile.mkdtemp(dir=base))
    (root / "archive").write_bytes(data)
    work = root / "work"
    work.mkdir()
    dest = _attempt(lambda: unpack(root / "archive", work / "dest", **limits), work)
    if dest is not None:
        assert [p.name for p in work.iterdir()] == ["dest"]
    return (_tree(dest) if dest else None), root


@SETTINGS
@given(data=st.binary(max_size=2000), magic=st.sampled_from([b"", b"\x1f\x8b", b"BZh", b"\xfd7zXZ\x00"]))
def test_random_bytes_are_refused(base, data, magic):
    tree, _ = _unpack_bytes(base, magic + data)
    assert tree is None


@SETTINGS
@given(kind=st.sampled_from(["gz", "xz", "bz2", "tar"]), cut=st.floats(0, 1, exclude_max=True))
def test_a_truncated_archive_is_refused_or_unpacks_faithfully(base, valid, kind, cut):
    archive = valid["archives"][kind]
    tree, _ = _unpack_bytes(base, archive[:int(len(archive) * cut)])
    assert tree in (None, valid["tree"])


@SETTINGS
@given(kind=st.sampled_from(["gz", "xz", "bz2"]),
       flips=st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(1, 255)), min_size=1, max_size=3))
def test_flipped_bytes_in_a_compressed_archive_are_refused_or_harmless(base, valid, kind, flips):
    archive = bytearray(valid["archives"][kind])
    for at, mask in flips:
        archive[int(len(archive) * at)] ^= mask
    tree, _ = _unpack_bytes(base, bytes(archive))
    assert tree in (None, valid["tree"])  # the compression's checksums catch every change that matters


@SETTINGS
@given(flips=st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(1, 255)), min_size=1, max_size=3))
def test_flipped_bytes_in_a_plain_tar_never_escape_or_crash(base, valid, flips):
    archive = bytearray(valid["archives"]["tar"])
    for at, mask in flips:
        archive[int(len(archive) * at)] ^= mask
    _, root = _unpack_bytes(base, bytes(archive))  # a plain tar has no checksum over data: bytes may change
    assert sorted(p.name for p in root.iterdir()) == ["archive", "work"]


# Member names: parts a file system takes and parts no unpack should (absolute, '..', drive letters, '' and '.').
_parts = st.one_of(names, st.sampled_from(["..", ".", "", "C:", "m", "model.onnx", "wheels", "requirements.txt"]))
member_names = st.one_of(
    st.lists(names, min_size=1, max_size=3).map(lambda parts: "m/" + "/".join(parts)),  # most often a legal name
    st.lists(_parts, min_size=1, max_size=4).map("/".join),
    st.lists(_parts, max_size=3).map(lambda parts: "/" + "/".join(parts)))
_kinds = [tarfile.REGTYPE] * 6 + [tarfile.DIRTYPE] * 2 + [
    tarfile.AREGTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.CHRTYPE, tarfile.FIFOTYPE, tarfile.CONTTYPE,
    tarfile.GNUTYPE_SPARSE]
members = st.lists(st.tuples(member_names, st.sampled_from(_kinds), st.binary(max_size=64)), max_size=5)


def _expected(archive: bytes) -> dict[str, bytes | None]:
    """What a faithful unpack writes for this archive: the one model folder's files and folders, as tarfile reads
    the members back (it strips a folder's trailing slashes, for one)."""
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        paths = [(PurePosixPath(m.name).parts, tar.extractfile(m).read() if m.isreg() else None) for m in tar]
    (model,) = {parts[0] for parts, _ in paths if parts and parts[0] not in ("wheels", "requirements.txt")}
    tree: dict[str, bytes | None] = {}
    for parts, data in paths:
        if len(parts) < 2 or parts[0] != model:
            continue
        for end in range(2, len(parts)):
            tree["/".join(parts[1:end])] = None
        tree["/".join(parts[1:])] = data
    return tree


@SETTINGS
@given(named=members, with_model=st.sampled_from([True] * 5 + [False]), mode=st.sampled_from(["w:gz", "w:xz", "w"]))
def test_generated_members_unpack_faithfully_or_are_refused(base, named, with_model, mode):
    named = [("m/model.onnx", tarfile.REGTYPE, b"graph")] * with_model + named
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode=mode, format=tarfile.PAX_FORMAT) as tar:
        for name, kind, data in named:
            info = tarfile.TarInfo(name)
            info.type, info.linkname = kind, "model.onnx" if kind in (tarfile.SYMTYPE, tarfile.LNKTYPE) else ""
            info.size = len(data) if info.isreg() else 0
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    tree, root = _unpack_bytes(base, buffer.getvalue())
    assert sorted(p.name for p in root.iterdir()) == ["archive", "work"]  # nothing landed beside the destination
    if tree is not None:
        assert tree == _expected(buffer.getvalue())


@SETTINGS
@given(sizes=st.lists(st.integers(0, 3000), max_size=8), max_bytes=st.integers(0, 12000),
       max_members=st.integers(1, 10))
def test_the_caps_hold_exactly(base, sizes, max_bytes, max_members):
    named = [("m/model.onnx", b"graph"), *((f"m/{i}", b"x" * size) for i, size in enumerate(sizes))]
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in named:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    tree, _ = _unpack_bytes(base, buffer.getvalue(), max_bytes=max_bytes, max_members=max_members)
    fits = sum(len(data) for _, data in named) <= max_bytes and len(named) <= max_members
    assert (tree is not None) == fits
