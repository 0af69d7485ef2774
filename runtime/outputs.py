"""Where edgefold writes: checked before any work, never over what edgefold did not write, never half a file.

Every command that writes follows one rule. A new path, or an empty folder, is written. An existing output is
replaced only when the user asked (``--overwrite``) and only if edgefold wrote it: a JSON result of the same
schema, an exported folder holding only the files its ``edgefold.json`` lists, a report folder. Anything else is
refused in one line.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import EdgefoldError
from .jsonfile import read_json

#: What stops a command, cleanup run: Ctrl-C, ``kill`` / ``timeout`` and a closed terminal or SSH session.
STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))

#: Longest file name most file systems take; staging names add a prefix and a suffix to the output's name.
_NAME_MAX = 255
_PATH_MAX = 4096


def check_path(path: Path) -> None:
    """Refuse a path no file system takes: a NUL byte, a name that is not text, a part longer than 255 bytes."""
    text = str(path)
    if len(os.fsencode(os.path.abspath(text))) >= _PATH_MAX:
        raise EdgefoldError(f"the path {text[:40]}... is longer than {_PATH_MAX} bytes")
    if "\0" in text:
        raise EdgefoldError(f"the path {text!r} holds a NUL byte")
    for part in path.parts:
        try:
            size = len(part.encode())
        except UnicodeEncodeError:
            raise EdgefoldError(f"the path {text!r} is not valid text") from None
        if size > _NAME_MAX:
            raise EdgefoldError(f"the name {part[:40]}... is longer than {_NAME_MAX} bytes")


def check_writable_parent(path: Path) -> None:
    """Refuse a path whose folder is missing, is not a folder, or cannot be written (found now, not after the work)."""
    check_path(path)
    parent = path.absolute().parent
    if not parent.exists():
        raise EdgefoldError(f"no such folder: {parent}")
    if not parent.is_dir():
        raise EdgefoldError(f"{parent} is not a folder")
    try:  # root passes os.access on a read-only file system: only a real write tells
        fd, probe = tempfile.mkstemp(prefix=".edgefold-probe-", dir=parent)
        os.close(fd)
        os.unlink(probe)
    except OSError as error:
        raise EdgefoldError(f"cannot write in {parent}: {error.strerror}") from None


def check_file_output(path: Path, overwrite: bool, inputs: Iterable[Path] = (),
                      written_by_edgefold: Callable[[Path], bool] | None = None, what: str = "result") -> None:
    """A file output may go to ``path``: never one of the command's ``inputs``, whatever the flag; an existing
    file only with ``overwrite`` and only if ``written_by_edgefold`` says edgefold wrote it."""
    check_writable_parent(path)
    if path.is_dir():
        raise EdgefoldError(f"{path} is a folder; give a file name")
    for source in inputs:
        if Path(source).exists() and path.exists() and os.path.samefile(source, path):
            raise EdgefoldError(f"{path} is one of this command's inputs: write the result elsewhere")
    if not path.exists() and not path.is_symlink():
        return
    if not overwrite:
        raise EdgefoldError(f"{path} exists; pass --overwrite to replace it")
    if not path.is_file() or path.is_symlink() or (written_by_edgefold is not None and not written_by_edgefold(path)):
        raise EdgefoldError(f"{path} exists and is not an edgefold {what}; edgefold replaces only files it wrote")


def check_json_output(path: Path, schema: str, overwrite: bool, inputs: Iterable[Path] = ()) -> None:
    """A JSON result may go to ``path``: new, or (with ``overwrite``) an edgefold ``schema`` document."""
    check_file_output(path, overwrite, inputs, lambda existing: _schema(existing) == schema,
                      f"{schema.split('.')[-1]} result")


def holds_only(folder: Path, listed: Iterable[str]) -> bool:
    """Whether ``folder`` holds nothing but the ``listed`` files (POSIX paths relative to it) and the folders
    they lie in: a file, link or empty folder the user added would be lost with it."""
    listed = set(listed)
    kept_folders = {parent.as_posix() for name in listed for parent in Path(name).parents}
    for entry in folder.rglob("*"):
        name = entry.relative_to(folder).as_posix()
        if entry.is_dir() and not entry.is_symlink():
            if name not in kept_folders:
                return False
        elif name not in listed:
            return False
    return True


def check_folder_output(path: Path, overwrite: bool, written_by_edgefold: Callable[[Path], bool],
                        what: str) -> None:
    """A folder output may go to ``path``: new or empty, or (with ``overwrite``) one ``written_by_edgefold``."""
    check_path(path)
    if path.is_symlink():
        raise EdgefoldError(f"{path} is a symbolic link; give a real folder")
    if path.resolve() in (Path.cwd(), *Path.cwd().parents):
        raise EdgefoldError(f"{path} is the current folder or holds it: give a folder of its own")
    if path.exists() and not path.is_dir():
        raise EdgefoldError(f"{path} exists and is not a folder")
    if path.is_dir() and any(path.iterdir()):
        if not overwrite:
            raise EdgefoldError(f"{path} already exists; pass --overwrite to replace it")
        if not written_by_edgefold(path):
            raise EdgefoldError(f"{path} holds files edgefold did not write (or no {what} of its own): "
                                "refusing to replace it; move them out or choose another folder")
    parent = path.absolute().parent  # the output is staged beside itself, so its parent must take writes
    nearest = next(p for p in (parent, *parent.parents) if p.exists())
    check_writable_parent(nearest / path.name)


def write_json(path: Path, document: dict) -> None:
    """Write ``document`` whole or not at all; NaN and inf, which JSON does not have, are refused."""
    text = json.dumps(document, indent=2, allow_nan=False) + "\n"
    with staged_file(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


@contextmanager
def staged_file(path: Path) -> Iterator[Path]:
    """Yield a temporary file beside ``path``; it replaces ``path`` when the block succeeds, and on any failure
    (Ctrl-C, SIGTERM and SIGHUP included) it vanishes."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name[:32]}.", suffix=".partial", dir=path.absolute().parent)
    try:
        os.close(fd)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp's 0600 would hide the file from other users
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.lexists(tmp):
            os.unlink(tmp)


@contextmanager
def staged_folder(path: Path) -> Iterator[Path]:
    """Yield a staging folder beside ``path``; when the block succeeds it replaces ``path`` (already checked by
    :func:`check_folder_output`), and on any failure, Ctrl-C, SIGTERM and SIGHUP included, it vanishes."""
    path = path.absolute()
    created = [folder for folder in (path.parent, *path.parent.parents) if not folder.exists()]
    path.parent.mkdir(parents=True, exist_ok=True)
    done = False
    try:
        staging = Path(tempfile.mkdtemp(prefix=f".{path.name[:32]}.", suffix=".partial", dir=path.parent))
        try:
            staging.chmod(0o777 & ~_umask())  # mkdtemp makes it private; the result should look like any new folder
            yield staging
            _swap_into_place(staging, path)
            done = True
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    finally:
        if not done:  # the folders made for the output go with it, innermost first, if nothing else came in
            for folder in created:
                try:
                    folder.rmdir()
                except OSError:
                    break


def _swap_into_place(staging: Path, path: Path) -> None:
    """Rename ``staging`` onto ``path``. The old folder is set aside first; a signal that arrives between the two
    renames waits until both are done, and a failed second rename puts the old folder back."""
    if not path.exists():
        staging.rename(path)
        return
    retired = staging.with_suffix(".replaced")
    swapped = False
    try:
        with _signals_held():
            path.rename(retired)
            try:
                staging.rename(path)
                swapped = True
            except BaseException:
                retired.rename(path)
                raise
    finally:
        if swapped:  # never the only copy of the old folder
            shutil.rmtree(retired, ignore_errors=True)


@contextmanager
def _signals_held() -> Iterator[None]:
    """The :data:`STOP_SIGNALS` are recorded inside the block and raised again after it. Python runs signal handlers in
    the main thread whichever thread the signal hit (blocking it there would not do: torch and onnxruntime run
    threads of their own), so the handlers themselves are swapped."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    previous = {sig: signal.signal(sig, lambda signum, frame: received.append(signum))
                for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if received:
            signal.raise_signal(received[0])


def _schema(path: Path) -> str | None:
    try:
        document = read_json(path)
    except EdgefoldError:
        return None
    return document.get("schema") if isinstance(document, dict) else None


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
