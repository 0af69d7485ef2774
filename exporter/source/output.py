"""The export's output folder: checked before any work, written all at once (see ``edgefold.runtime.outputs``)."""

from __future__ import annotations

from pathlib import Path

from edgefold.runtime import EdgefoldError
from edgefold.runtime.manifest import CONTENTS, MANIFEST_NAME, read_manifest
from edgefold.runtime.outputs import check_folder_output, check_path, holds_only, staged_folder

__all__ = ["check_output_dir", "staged_folder"]


def check_output_dir(output_dir: Path, source_dir: Path, overwrite: bool) -> None:
    """Refuse an output that would touch the source model, or replace what edgefold did not write."""
    check_path(output_dir)
    out, source = output_dir.resolve(), source_dir.resolve()
    if out == source or source in out.parents or out in source.parents:
        raise EdgefoldError(f"OUTPUT_DIR {output_dir} must not be the source model's folder, lie inside it, "
                            "or contain it")
    check_folder_output(output_dir, overwrite, _only_what_edgefold_wrote, MANIFEST_NAME)


def _only_what_edgefold_wrote(folder: Path) -> bool:
    """An export's folder holding nothing but the files its manifest lists (a gate file, notes or a folder added
    since would be lost with it)."""
    try:
        listed = read_manifest(folder).get(CONTENTS)
    except EdgefoldError:
        return False
    return isinstance(listed, list) and all(isinstance(name, str) for name in listed) and holds_only(folder, listed)
