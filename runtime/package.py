"""``edgefold pack`` / ``unpack``: an exported folder and what runs it, as one archive for a device.

The archive (gzipped tar) holds the model folder under its own name, a ``requirements.txt`` pinned to the
onnxruntime, numpy and tokenizers this machine has (what was tested), and a runtime-only edgefold wheel built
from the installed package, so the device needs nothing but Python and PyPI::

    requirements.txt                          ./wheels/edgefold-0.1.0-py3-none-any.whl + the pins
    wheels/edgefold-0.1.0-py3-none-any.whl
    minilm-svd/model.onnx, config.json, tokenizer.json, edgefold.json, ...

``unpack`` reads the whole archive first (so that gzip's, xz's or bz2's checksums run) and checks every member
before it writes anything: it refuses a damaged archive, one that expands beyond a cap, and any member that could
land outside the destination or clash with another (absolute paths, ``..``, links, devices, odd or repeated names).
``pack`` applies the same checks to what it packs. Either fails with one line and leaves nothing behind.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import hashlib
import io
import lzma
import os
import stat
import tarfile
import zipfile
import zlib
from importlib import metadata, resources
from pathlib import Path, PurePosixPath

from .errors import CONTROL, EdgefoldError, one_line
from .folder import GRAPH, ExportedFolder
from .manifest import MANIFEST_NAME, read_manifest, verify_folder
from .outputs import staged_file, staged_folder

REQUIREMENTS = "requirements.txt"
WHEELS = "wheels"
#: What the device installs besides edgefold: the runtime's own dependencies, pinned to this machine's versions.
PINNED = ("onnxruntime", "numpy", "tokenizers")
_MTIME = 315532800  # 1980-01-01, the date a wheel's entries get too: members do not depend on when they were packed
#: What unpack lets an archive expand to by default (the sum of its files' sizes, and its number of members).
MAX_BYTES = 64 << 30
MAX_MEMBERS = 100_000
_MAGIC = ((b"\x1f\x8b", "gz"), (b"BZh", "bz2"), (b"\xfd7zXZ\x00", "xz"))
_METADATA = (tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE, tarfile.GNUTYPE_LONGNAME,
             tarfile.GNUTYPE_LONGLINK)
_MAX_METADATA = 1 << 20


def _one_line(function):
    """Every EdgefoldError of ``function`` as one printable line: the names in it may hold control characters."""
    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        try:
            return function(*args, **kwargs)
        except EdgefoldError as error:
            raise EdgefoldError(one_line(str(error))) from None
    return wrapper


@_one_line
def pack(folder: str | Path, archive: str | Path, overwrite: bool = False, verify: bool = True) -> dict:
    """Write ``archive`` (tar.gz) with the model folder, pinned requirements and an edgefold wheel.

    Every entry of the folder goes through the checks ``unpack`` applies, so an archive pack writes is one that
    unpack takes."""
    model = ExportedFolder.open(folder, verify)
    archive = Path(archive)
    if model.name in (REQUIREMENTS, WHEELS):
        raise EdgefoldError(f"cannot pack {folder}: the archive reserves the name {model.name!r}; rename the folder")
    if archive.is_dir():
        raise EdgefoldError(f"{archive} is a folder; give the archive's file name")
    if os.path.lexists(archive) and not overwrite:
        raise EdgefoldError(f"{archive} exists; pass --overwrite to replace it")
    if os.path.lexists(archive) and (archive.is_symlink() or not archive.is_file()
                                     or not _packed_by_edgefold(archive)):
        raise EdgefoldError(f"{archive} exists and is not an archive edgefold packed; edgefold replaces only "
                            "files it wrote")
    if not archive.absolute().parent.is_dir():
        raise EdgefoldError(f"no such folder: {archive.absolute().parent}")
    if archive.resolve().is_relative_to(model.path.resolve()):
        raise EdgefoldError(f"{archive} would lie inside the folder it packs")
    wheel_name, wheel = runtime_wheel()
    requirements = requirements_text(f"./{WHEELS}/{wheel_name}")
    installer = [(_file_info(REQUIREMENTS, len(requirements.encode())), requirements.encode()),
                 (_file_info(f"{WHEELS}/{wheel_name}", len(wheel)), wheel)]
    with _failing(f"cannot pack {folder}"):
        entries = _folder_members(model)
    _check_members([info for info, _ in installer + entries], f"cannot pack {folder}")
    with (_failing(f"cannot pack {folder} into {archive}"), staged_file(archive) as tmp,
          tarfile.open(tmp, "w:gz", format=tarfile.PAX_FORMAT) as tar):
        for info, data in installer:
            tar.addfile(info, io.BytesIO(data))
        for info, path in entries:
            if info.isdir():
                tar.addfile(info)
                continue
            with open(path, "rb") as stream:  # streamed: external weights can be gigabytes
                tar.addfile(info, stream)
    return {"archive": str(archive), "model": model.name, "files": sum(info.isfile() for info, _ in entries),
            "wheel": wheel_name, "requirements": requirements.splitlines(), "bytes": archive.stat().st_size}


@_one_line
def unpack(archive: str | Path, destination: str | Path, *, max_bytes: int = MAX_BYTES,
           max_members: int = MAX_MEMBERS, verify: bool = True) -> Path:
    """Write the archive's model folder to ``destination`` (which must not exist), after checking every member.

    The whole archive is read (and its compression's checksums checked) before anything is written, and nothing
    is left behind on failure. ``max_bytes`` and ``max_members`` cap what the archive may expand to. ``verify``:
    the folder written must be the one its manifest records (files, sizes, SHA-256), or nothing is written."""
    archive, destination = Path(archive), Path(destination)
    if not archive.is_file():
        raise EdgefoldError(f"no such archive: {archive}")
    if archive.stat().st_size == 0:
        raise EdgefoldError(f"{archive} is empty: not an edgefold archive")
    if os.path.lexists(destination):
        raise EdgefoldError(f"{destination} exists; unpack writes a new folder")
    if not destination.absolute().parent.is_dir():
        raise EdgefoldError(f"{destination.absolute().parent} is not a folder (or does not exist)")
    with _failing(f"cannot read {archive}"), _open(archive) as tar:
        members = _read_to_end(tar, f"refusing {archive}", max_members)
    model = _check_members(members, f"refusing {archive}", max_bytes, max_members)
    with (_failing(f"cannot unpack {archive} into {destination}"), _open(archive) as tar,
          staged_folder(destination) as staging):
        for member in members:
            _extract(tar, member, model, staging)
        if verify and (staging / MANIFEST_NAME).is_file():
            verify_folder(staging, read_manifest(staging))
    return destination


def _open(archive: Path) -> tarfile.TarFile:
    # The compression comes from the first bytes: "r:*" would try each in turn and report all their failures.
    with open(archive, "rb") as stream:
        head = stream.read(6)
    kind = next((kind for magic, kind in _MAGIC if head.startswith(magic)), "")
    return tarfile.open(archive, f"r:{kind}", tarinfo=_StrictHeader)


class _StrictHeader(tarfile.TarInfo):
    """tarfile takes a damaged header, or none (a truncated archive), for the end of the archive and stops
    quietly; here that is an error. Metadata headers (long names, pax records) are read into memory: capped."""

    @classmethod
    def frombuf(cls, buf: bytes, encoding: str, errors: str) -> tarfile.TarInfo:
        try:
            info = super().frombuf(buf, encoding, errors)
        except tarfile.EOFHeaderError:
            raise  # an all-zero block: the end-of-archive marker
        except tarfile.HeaderError as error:
            raise tarfile.ReadError(f"damaged or truncated ({error})") from None
        if info.type in _METADATA and info.size > _MAX_METADATA:
            raise tarfile.ReadError(f"a metadata header of {info.size} bytes (more than {_MAX_METADATA})")
        return info


def _read_to_end(tar: tarfile.TarFile, refusing: str, max_members: int) -> list[tarfile.TarInfo]:
    """Every member's header, then the rest of the stream: gzip, xz and bz2 check their CRCs and lengths only
    once read to the end, and after the end-of-archive marker there must be nothing but zeros."""
    members = []
    for member in tar:
        members.append(member)
        if len(members) > max_members:
            raise EdgefoldError(f"{refusing}: more than {max_members} members, the limit (max_members)")
    while chunk := tar.fileobj.read(1 << 20):
        if chunk.strip(b"\0"):
            raise tarfile.ReadError("damaged: data after the end-of-archive marker")
    return members


def _extract(tar: tarfile.TarFile, member: tarfile.TarInfo, model: str, staging: Path) -> None:
    """One checked member of the model folder into ``staging``; the installer stays in the archive."""
    parts = PurePosixPath(member.name).parts
    if not parts or parts[0] != model:
        return
    target = staging.joinpath(*parts[1:])
    if member.isdir():
        target.mkdir(parents=True, exist_ok=True)
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    written = 0
    with tar.extractfile(member) as source, open(target, "xb") as sink:
        while chunk := source.read(1 << 20):
            written += len(chunk)
            if written > member.size:  # the cap was checked on the headers' sizes: hold the data to them
                raise EdgefoldError(f"refusing the archive: member {member.name!r} holds more than the "
                                    f"{member.size} bytes its header says")
            sink.write(chunk)


def _check_members(members: list[tarfile.TarInfo], refusing: str, max_bytes: int = MAX_BYTES,
                   max_members: int = MAX_MEMBERS) -> str:
    """The model folder's name, once every member is a plain file or folder with a sane name that stays inside
    the destination, no path is there twice, and the whole stays under the limits. ``pack`` and ``unpack``
    share it: ``refusing`` starts each message."""
    if len(members) > max_members:
        raise EdgefoldError(f"{refusing}: {len(members)} members, more than the limit of {max_members} (max_members)")
    total = sum(member.size for member in members if member.isfile())
    if total > max_bytes:
        raise EdgefoldError(f"{refusing}: its files hold {total} bytes, more than the limit of {max_bytes} "
                            "(max_bytes)")
    files, folders, models = set(), set(), set()
    for member in members:
        path = PurePosixPath(*_member_parts(member, refusing))
        if not path.parts:
            continue  # "." itself
        top = path.parts[0]
        if (top == REQUIREMENTS and (len(path.parts) > 1 or member.isdir())
                or top == WHEELS and len(path.parts) == 1 and not member.isdir()):
            raise EdgefoldError(f"{refusing}: member {member.name!r} misuses a name the archive reserves")
        if member.isdir():
            folders.add(path)
        elif path in files:
            raise EdgefoldError(f"{refusing}: member {member.name!r} is there twice")
        else:
            files.add(path)
        folders.update(path.parents)
        if top not in (REQUIREMENTS, WHEELS):
            models.add(top)
    if files & folders:
        raise EdgefoldError(f"{refusing}: {min(files & folders).as_posix()!r} is both a file and a folder")
    if len(models) != 1 or PurePosixPath(next(iter(models)), GRAPH) not in files:
        raise EdgefoldError(f"{refusing}: not an edgefold archive: it must hold one model folder with a "
                            f"{GRAPH} in it")
    return models.pop()


def _member_parts(member: tarfile.TarInfo, refusing: str) -> tuple[str, ...]:
    """The parts of a member's path, or an error if unpack would refuse the member."""
    name, path = member.name, PurePosixPath(member.name)
    problem = None
    if not name:  # what tarfile leaves of a folder named "/"
        problem = "has an empty name"
    elif member.issym() or member.islnk():
        problem = f"is a link (to {member.linkname!r})"
    elif member.type not in (tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.DIRTYPE):
        problem = "is a device or special file"
    elif CONTROL.search(name) or not _utf8(name):
        problem = "has a control character or invalid UTF-8 in its name"
    elif path.is_absolute() or (path.parts and ":" in path.parts[0]):
        problem = "has an absolute path"
    elif ".." in path.parts or "\\" in name:
        problem = "would land outside the destination"
    elif any(len(part.encode()) > 255 for part in path.parts):
        problem = "has a name longer than 255 bytes"
    elif not path.parts and not member.isdir():
        problem = "is a file without a name"
    if problem:
        raise EdgefoldError(f"{refusing}: member {name!r} {problem}")
    return path.parts


def _utf8(name: str) -> bool:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:  # a byte that is not UTF-8, kept by the surrogateescape error handler
        return False
    return True


def _folder_members(model: ExportedFolder) -> list[tuple[tarfile.TarInfo, Path]]:
    """Every entry below the folder as the member pack would write: links and special files too, so that the
    checks refuse them rather than pack silently following or dropping them."""
    entries = []
    for path in _walk(model.path):
        status = path.lstat()
        mode = status.st_mode
        info = _file_info(f"{model.name}/{path.relative_to(model.path).as_posix()}", status.st_size)
        if stat.S_ISDIR(mode):
            info.type, info.mode, info.size = tarfile.DIRTYPE, 0o755, 0
        elif stat.S_ISLNK(mode):
            info.type, info.linkname, info.size = tarfile.SYMTYPE, os.readlink(path), 0
        elif not stat.S_ISREG(mode):
            info.type, info.size = tarfile.FIFOTYPE, 0  # a fifo, socket or device: all refused alike
        entries.append((info, path))
    return entries


def _walk(folder: Path) -> list[Path]:
    """Every path below ``folder``, sorted, without following links; unlike rglob, errors are not swallowed."""
    with os.scandir(folder) as scan:
        entries = sorted(scan, key=lambda entry: entry.name)
    paths = []
    for entry in entries:
        paths.append(Path(entry.path))
        if entry.is_dir(follow_symlinks=False):
            paths.extend(_walk(Path(entry.path)))
    return paths


@contextlib.contextmanager
def _failing(what: str):
    """A damaged archive (each decompressor has its own errors) or a failed read or write, as one line."""
    try:
        yield
    except (tarfile.TarError, EOFError, zlib.error, lzma.LZMAError, OSError) as error:
        raise EdgefoldError(f"{what}: {str(error) or type(error).__name__}") from None


def _packed_by_edgefold(archive: Path) -> bool:
    """Its first member is the requirements.txt that :func:`requirements_text` writes."""
    try:
        with tarfile.open(archive, "r:gz") as tar:
            first = tar.next()
            if first is None or first.name != REQUIREMENTS or not first.isfile() or first.size > 1 << 16:
                return False
            return tar.extractfile(first).read().startswith(_REQUIREMENTS_HEADER.encode())
    except (OSError, EOFError, tarfile.TarError, zlib.error):
        return False


_REQUIREMENTS_HEADER = "# edgefold's runtime and the versions it was tested with (edgefold pack)"


def requirements_text(wheel: str) -> str:
    lines = [_REQUIREMENTS_HEADER, wheel]
    for name in PINNED:
        lines.append(f"{name}=={metadata.version(name)}")
    return "\n".join(lines) + "\n"


_WHEEL_PACKAGES = ("runtime", "cli")


def runtime_wheel() -> tuple[str, bytes]:
    """A pure-Python wheel of the installed ``edgefold.runtime`` and the command line (no exporter): (file name,
    bytes). The command line imports the exporter only for ``export`` and ``prune``, which then say what to install."""
    version = metadata.version("edgefold")
    dist_info = f"edgefold-{version}.dist-info"
    files = {f"edgefold/{name}/{rel}": data for name in _WHEEL_PACKAGES
             for rel, data in _package_files(Path(str(resources.files(f"edgefold.{name}"))))}
    requires = [r for r in metadata.requires("edgefold") or [] if "extra ==" not in r]
    files[f"{dist_info}/METADATA"] = "\n".join(
        ["Metadata-Version: 2.1", "Name: edgefold", f"Version: {version}",
         "Summary: edgefold's device runtime (bench, validate, report), packed by edgefold pack",
         f"Requires-Python: {metadata.metadata('edgefold')['Requires-Python'] or '>=3.10'}",
         *(f"Requires-Dist: {r}" for r in requires)]).encode() + b"\n"
    files[f"{dist_info}/WHEEL"] = (b"Wheel-Version: 1.0\nGenerator: edgefold pack\nRoot-Is-Purelib: true\n"
                                   b"Tag: py3-none-any\n")
    files[f"{dist_info}/entry_points.txt"] = b"[console_scripts]\nedgefold = edgefold.cli:main\n"
    record = [f"{name},sha256={_digest(data)},{len(data)}" for name, data in files.items()]
    files[f"{dist_info}/RECORD"] = ("\n".join(record + [f"{dist_info}/RECORD,,"]) + "\n").encode()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as wheel:
        for name, data in files.items():
            wheel.writestr(zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0)), data, zipfile.ZIP_DEFLATED)
    return f"edgefold-{version}-py3-none-any.whl", buffer.getvalue()


def _package_files(root: Path) -> list[tuple[str, bytes]]:
    # the code and the shipped text only: nothing else that happens to lie in an editable checkout
    files = [p for p in root.rglob("*") if p.is_file() and not p.is_symlink() and "__pycache__" not in p.parts
             and (p.suffix == ".py" or (p.parent.name == "data" and p.suffix in (".txt", ".md")))]
    return [(p.relative_to(root).as_posix(), p.read_bytes()) for p in sorted(files)]


def _digest(data: bytes) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def _file_info(name: str, size: int) -> tarfile.TarInfo:
    """A plain file member, dated like a wheel's entries: members do not depend on when they were packed."""
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = size, 0o644, _MTIME
    return info
