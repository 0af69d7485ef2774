"""``edgefold.json``: the versioned manifest an exported folder carries."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable
from pathlib import Path

from .errors import EdgefoldError
from .jsonfile import read_json_object

MANIFEST_NAME = "edgefold.json"
SCHEMA = "edgefold.manifest"
SCHEMA_VERSION = 1
#: The manifest's list of every file edgefold wrote into the folder: ``--overwrite`` replaces no other.
CONTENTS = "contents"
#: Size and SHA-256 of every file the manifest covers, checked before a folder is measured, validated or unpacked.
CHECKSUMS = "checksums"
TASKS = ("feature-extraction", "text-classification", "fill-mask", "text-generation")


def read_manifest(folder: str | Path) -> dict:
    path = Path(folder) / MANIFEST_NAME
    if not path.exists():
        raise EdgefoldError(f"{folder} has no {MANIFEST_NAME}: it was not written by edgefold export")
    manifest = read_json_object(path)
    version = manifest.get("schema_version")
    if manifest.get("schema") != SCHEMA or not _is_int(version) or version > SCHEMA_VERSION:
        raise EdgefoldError(f"{path} has schema {manifest.get('schema')!r} v{version}, "
                            f"this edgefold reads {SCHEMA} v{SCHEMA_VERSION}")
    _check_fields(manifest, path)
    return manifest


def checksums(folder: Path, names: Iterable[str]) -> dict[str, dict]:
    """``{name: {"bytes", "sha256"}}`` of the files ``names`` (POSIX paths relative to ``folder``)."""
    return {name: {"bytes": (folder / name).stat().st_size, "sha256": sha256(folder / name)} for name in names}


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while chunk := stream.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def verify_folder(folder: str | Path, manifest: dict) -> None:
    """Refuse a folder whose files are not the ones its manifest records: one missing, another size or hash (a
    manifest older than checksums: the sizes it records). ``--no-verify`` skips this for a folder edited on
    purpose."""
    folder = Path(folder)
    recorded = manifest.get(CHECKSUMS)
    if not isinstance(recorded, dict):  # written before checksums: the graph files' sizes
        recorded = {name: {"bytes": size} for name, size in (manifest.get("files") or {}).items()}
    for name, expected in recorded.items():
        path = folder / name
        if not isinstance(expected, dict) or not path.is_file():
            raise EdgefoldError(f"{path} is missing: {folder} is not the folder its {MANIFEST_NAME} records "
                                "(pass --no-verify to use it anyway)")
        size = path.stat().st_size
        if size != expected.get("bytes"):
            raise EdgefoldError(f"{path} is {size} bytes, its {MANIFEST_NAME} records {expected.get('bytes')}: "
                                "changed since the export (pass --no-verify to use it anyway)")
        if "sha256" in expected and sha256(path) != expected["sha256"]:
            raise EdgefoldError(f"{path} does not match the SHA-256 its {MANIFEST_NAME} records: changed since the "
                                "export (pass --no-verify to use it anyway)")


def _check_fields(manifest: dict, path: Path) -> None:
    """The fields the runtime reads, so that a hand-edited manifest fails here and not deep in a run."""
    if manifest.get("task") not in TASKS:
        raise EdgefoldError(f"{path}: task must be one of {', '.join(TASKS)}, not {manifest.get('task')!r}")
    if not isinstance(manifest.get("method"), str):
        raise EdgefoldError(f"{path}: method must be a string, not {manifest.get('method')!r}")
    ratio = manifest.get("ratio")
    if ratio is not None and not (_is_number(ratio) and ratio > 0):
        raise EdgefoldError(f"{path}: ratio must be a positive number or null, not {ratio!r}")
    targets = manifest.get("targets")
    if not (isinstance(targets, list) and all(isinstance(t, str) for t in targets)):
        raise EdgefoldError(f"{path}: targets must be a list of strings, not {targets!r}")
    if not isinstance(manifest.get("compression", ""), str):
        raise EdgefoldError(f"{path}: compression must be a string, not {manifest['compression']!r}")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return _is_int(value) or isinstance(value, float) and math.isfinite(value)
