"""Reading the JSON files edgefold meets (manifests, configs, results, gate files): the value, or one line."""

from __future__ import annotations

import json
from pathlib import Path

from .errors import EdgefoldError


def read_json(path: Path, *, strict: bool = False) -> object:
    """A JSON file's content, or one line saying why it cannot be read. ``strict``: NaN and Infinity, which
    Python writes but JSON does not have, are refused too (edgefold's own results never hold them)."""

    def refuse(constant: str) -> None:
        raise EdgefoldError(f"{path} holds {constant}, which is not JSON")

    try:
        return json.loads(path.read_text(encoding="utf-8"), parse_constant=refuse if strict else None)
    except UnicodeDecodeError:
        raise EdgefoldError(f"{path} is not UTF-8 text") from None
    except (OSError, RecursionError) as error:
        raise EdgefoldError(f"cannot read {path}: {error}") from None
    except json.JSONDecodeError as error:
        raise EdgefoldError(f"{path} is not valid JSON: {error}") from None


def read_json_object(path: Path, *, strict: bool = False) -> dict:
    content = read_json(path, strict=strict)
    if not isinstance(content, dict):
        raise EdgefoldError(f"{path} must hold a JSON object, not {type(content).__name__}")
    return content
