"""``edgefold pack`` / ``unpack``: an exported folder and what runs it, as one archive for a device.

The archive (gzipped tar) holds the model folder under its own name, a ``requirements.txt`` pinned to the
onnxruntime, numpy and tokenizers this machine has (what was tested), and a runtime-only edgefold wheel built
from the installed package, so the device needs nothing but Python and PyPI::

    requirements.txt                          ./wheels/edgefold-0.1.0-py3-none-any.whl + the pins
    wheels/edgefold-0.1.0-py3-none-any.whl
    minilm-svd/model.onnx, config.json, tokenizer.json, edgefold.json, ...

``unpack`` checks every member before it writes anything and refuses the archive if any member could land
outside the destination (absolute paths, ``..``, links, devices).
"""

from __future__ import annotations

import base64
import contextlib
import gzip
import hashlib
import io
import os
import shutil
import tarfile
import tempfile
import zipfile
import zlib
from importlib import metadata, resources
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from .errors import EdgefoldError
from .folder import ExportedFolder

REQUIREMENTS = "requirements.txt"
WHEELS = "wheels"
#: What the device installs besides edgefold: the runtime's own dependencies, pinned to this machine's versions.
PINNED = ("onnxruntime", "numpy", "tokenizers")
_MTIME = 315532800  # 1980-01-01, the date a wheel's entries get too: members do not depend on when they were packed


def pack(folder: str | Path, archive: str | Path, overwrite: bool = False) -> dict:
    """Write ``archive`` (tar.gz) with the model folder, pinned requirements and an edgefold wheel."""
    model = ExportedFolder.open(folder)
    archive = Path(archive)
    if archive.exists() and not overwrite:
        raise EdgefoldError(f"{archive} exists; pass --overwrite to replace it")
    if not archive.absolute().parent.is_dir():
        raise EdgefoldError(f"no such folder: {archive.absolute().parent}")
    if archive.resolve().is_relative_to(model.path.resolve()):
        raise EdgefoldError(f"{archive} would lie inside the folder it packs")
    wheel_name, wheel = runtime_wheel()
    requirements = requirements_text(f"./{WHEELS}/{wheel_name}")
    files = sorted(p for p in model.path.rglob("*") if p.is_file())
    with _atomic(archive) as tmp, tarfile.open(tmp, "w:gz", format=tarfile.PAX_FORMAT) as tar:
        _add(tar, REQUIREMENTS, io.BytesIO(requirements.encode()), len(requirements.encode()))
        _add(tar, f"{WHEELS}/{wheel_name}", io.BytesIO(wheel), len(wheel))
        for path in files:
            with open(path, "rb") as stream:  # streamed: external weights can be gigabytes
                _add(tar, f"{model.name}/{path.relative_to(model.path).as_posix()}", stream, path.stat().st_size)
    return {"archive": str(archive), "model": model.name, "files": len(files), "wheel": wheel_name,
            "requirements": requirements.splitlines(), "bytes": archive.stat().st_size}


def unpack(archive: str | Path, destination: str | Path) -> Path:
    """Write the archive's model folder to ``destination`` (which must not exist), after checking every member."""
    archive, destination = Path(archive), Path(destination)
    if not archive.is_file():
        raise EdgefoldError(f"no such archive: {archive}")
    if destination.exists():
        raise EdgefoldError(f"{destination} exists; unpack writes a new folder")
    if not destination.absolute().parent.is_dir():
        raise EdgefoldError(f"no such folder: {destination.absolute().parent}")
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = tar.getmembers()
            model = _check_members(members)
            with _atomic_folder(destination) as staging:
                for member in members:
                    _extract(tar, member, model, staging)
    except (tarfile.TarError, EOFError, gzip.BadGzipFile, zlib.error) as error:
        raise EdgefoldError(f"cannot read {archive}: {error}") from None
    return destination


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
    with tar.extractfile(member) as source, open(target, "xb") as sink:  # "x": a duplicate member fails
        shutil.copyfileobj(source, sink)


def _check_members(members: list[tarfile.TarInfo]) -> str:
    """The model folder's name, once every member is a plain file or folder that stays inside the destination."""
    models = set()
    for member in members:
        name, path = member.name, PurePosixPath(member.name)
        if member.issym() or member.islnk():
            raise EdgefoldError(f"refusing the archive: member {name!r} is a link (to {member.linkname!r})")
        if not (member.isfile() or member.isdir()):
            raise EdgefoldError(f"refusing the archive: member {name!r} is a device or special file")
        if path.is_absolute() or name.startswith("\\") or (path.parts and ":" in path.parts[0]):
            raise EdgefoldError(f"refusing the archive: member {name!r} has an absolute path")
        if ".." in path.parts or "\\" in name:
            raise EdgefoldError(f"refusing the archive: member {name!r} would land outside the destination")
        if path.parts and path.parts[0] not in (REQUIREMENTS, WHEELS):
            models.add(path.parts[0])
    if len(models) != 1 or not any(PurePosixPath(m.name).parts[1:] == ("model.onnx",) for m in members):
        raise EdgefoldError("not an edgefold archive: it must hold one model folder with a model.onnx in it")
    return models.pop()


def requirements_text(wheel: str) -> str:
    lines = ["# edgefold's runtime and the versions it was tested with (edgefold pack)", wheel]
    for name in PINNED:
        lines.append(f"{name}=={metadata.version(name)}")
    return "\n".join(lines) + "\n"


def runtime_wheel() -> tuple[str, bytes]:
    """A pure-Python wheel of the installed ``edgefold.runtime`` alone (no exporter): (file name, bytes)."""
    version = metadata.version("edgefold")
    dist_info = f"edgefold-{version}.dist-info"
    package = resources.files("edgefold.runtime")
    files = {f"edgefold/runtime/{rel}": data for rel, data in _package_files(Path(str(package)))}
    requires = [r for r in metadata.requires("edgefold") or [] if "extra ==" not in r]
    files[f"{dist_info}/METADATA"] = "\n".join(
        ["Metadata-Version: 2.1", "Name: edgefold", f"Version: {version}",
         "Summary: edgefold's device runtime (bench, validate, report), packed by edgefold pack",
         f"Requires-Python: {metadata.metadata('edgefold')['Requires-Python'] or '>=3.10'}",
         *(f"Requires-Dist: {r}" for r in requires)]).encode() + b"\n"
    files[f"{dist_info}/WHEEL"] = (b"Wheel-Version: 1.0\nGenerator: edgefold pack\nRoot-Is-Purelib: true\n"
                                   b"Tag: py3-none-any\n")
    files[f"{dist_info}/entry_points.txt"] = b"[console_scripts]\nedgefold = edgefold.runtime.cli:main\n"
    record = [f"{name},sha256={_digest(data)},{len(data)}" for name, data in files.items()]
    files[f"{dist_info}/RECORD"] = ("\n".join(record + [f"{dist_info}/RECORD,,"]) + "\n").encode()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as wheel:
        for name, data in files.items():
            wheel.writestr(zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0)), data, zipfile.ZIP_DEFLATED)
    return f"edgefold-{version}-py3-none-any.whl", buffer.getvalue()


def _package_files(root: Path) -> list[tuple[str, bytes]]:
    files = [p for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"]
    return [(p.relative_to(root).as_posix(), p.read_bytes()) for p in sorted(files)]


def _digest(data: bytes) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def _add(tar: tarfile.TarFile, name: str, stream: BinaryIO, size: int) -> None:
    """A plain file member, whatever the source was (a link is packed as the file it points to)."""
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = size, 0o644, _MTIME
    tar.addfile(info, stream)


@contextlib.contextmanager
def _atomic(path: Path):
    """A temporary file beside ``path``, renamed onto it only if the block succeeds."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.absolute().parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 would hide the archive from other users
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@contextlib.contextmanager
def _atomic_folder(path: Path):
    """A staging folder beside ``path``, renamed onto it only if the block succeeds."""
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".partial", dir=path.absolute().parent))
    try:
        yield staging
        staging.rename(path)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
