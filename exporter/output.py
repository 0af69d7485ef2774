"""Write an output folder all at once: a staging folder beside it, renamed into place only at the end."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from edgefold.runtime import EdgefoldError


def check_output_dir(output_dir: Path, source_dir: Path, overwrite: bool) -> None:
    """Refuse an output that exists (without overwrite) or that would touch the source model."""
    out, source = output_dir.resolve(), source_dir.resolve()
    if out == source or source in out.parents or out in source.parents:
        raise EdgefoldError(f"OUTPUT_DIR {output_dir} must not be the source model's folder, lie inside it, "
                            "or contain it")
    if out.exists():
        if not out.is_dir():
            raise EdgefoldError(f"OUTPUT_DIR {output_dir} exists and is not a folder")
        if not overwrite:
            raise EdgefoldError(f"OUTPUT_DIR {output_dir} already exists; pass --overwrite to replace it")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def staged_output(output_dir: Path) -> Iterator[Path]:
    """Yield a staging folder; on success it replaces ``output_dir``, on any failure (Ctrl-C too) it vanishes."""
    output_dir = output_dir.resolve()
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.", suffix=".partial", dir=output_dir.parent))
    staging.chmod(0o777 & ~_umask())  # mkdtemp makes it private; the result should look like any new folder
    try:
        yield staging
        if output_dir.exists():
            retired = staging.with_suffix(".replaced")
            output_dir.rename(retired)
            staging.rename(output_dir)
            shutil.rmtree(retired)
        else:
            staging.rename(output_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
