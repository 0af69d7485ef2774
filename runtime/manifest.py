"""``edgefold.json``: the versioned manifest an exported folder carries."""

from __future__ import annotations

import math
from pathlib import Path

from .errors import EdgefoldError
from .jsonfile import read_json_object

MANIFEST_NAME = "edgefold.json"
SCHEMA = "edgefold.manifest"
SCHEMA_VERSION = 1
#: The manifest's list of every file edgefold wrote into the folder: ``--overwrite`` replaces no other.
CONTENTS = "contents"
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
