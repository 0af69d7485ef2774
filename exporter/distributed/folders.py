"""A folder's files as bytes: how a path on this machine reaches a worker on another, and comes back."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Folder:
    """The files of a folder (a model's weights, config and tokenizer; an exported graph), by relative path."""

    files: dict[str, bytes]

    @classmethod
    def read(cls, path: Path) -> Folder:
        path = Path(path)
        return cls({p.relative_to(path).as_posix(): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()})

    def write(self, path: Path) -> Path:
        for name, data in self.files.items():
            (path / name).parent.mkdir(parents=True, exist_ok=True)
            (path / name).write_bytes(data)
        path.mkdir(parents=True, exist_ok=True)
        return path
