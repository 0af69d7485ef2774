"""``edgefold.json``: the versioned manifest an exported folder carries."""

from __future__ import annotations

import json
from pathlib import Path

from .errors import EdgefoldError

MANIFEST_NAME = "edgefold.json"
SCHEMA = "edgefold.manifest"
SCHEMA_VERSION = 1


def read_manifest(folder: str | Path) -> dict:
    path = Path(folder) / MANIFEST_NAME
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise EdgefoldError(f"{folder} has no {MANIFEST_NAME}: it was not written by edgefold export") from None
    except json.JSONDecodeError as error:
        raise EdgefoldError(f"{path} is not valid JSON: {error}") from None
    if manifest.get("schema") != SCHEMA or manifest.get("schema_version", 0) > SCHEMA_VERSION:
        raise EdgefoldError(f"{path} has schema {manifest.get('schema')!r} v{manifest.get('schema_version')}, "
                            f"this edgefold reads {SCHEMA} v{SCHEMA_VERSION}")
    return manifest
