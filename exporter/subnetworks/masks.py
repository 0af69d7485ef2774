"""Masks of kept weights (True: kept) and their file: safetensors, each mask bit-packed (one bit a weight).

A file holds one mask per pruned weight, keyed as :class:`~edgefold.exporter.subnetworks.targets.Prunable` keys
them, and in its metadata each weight's shape, kind and layer and what found the mask. Reading needs numpy and
safetensors only, so ``edgefold masks overlap`` never loads a model.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgefold.runtime import EdgefoldError

FORMAT = "edgefold-masks"
VERSION = "1"


@dataclass
class MaskSet:
    """``masks``: key -> bool array (True: kept); ``modules``: key -> {"kind", "layer"}; ``info``: provenance
    (method, sparsity, model, seed, level)."""

    masks: dict[str, np.ndarray]
    modules: dict[str, dict] = field(default_factory=dict)
    info: dict = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(m.size for m in self.masks.values())

    @property
    def kept(self) -> int:
        return int(sum(m.sum() for m in self.masks.values()))

    @property
    def sparsity(self) -> float:
        return 1 - self.kept / self.total if self.total else 0.0

    def save(self, path: str | Path) -> Path:
        from safetensors.numpy import save_file

        path = Path(path)
        packed = {key: np.packbits(mask.reshape(-1)) for key, mask in self.masks.items()}
        shapes = {key: {"shape": list(mask.shape), **self.modules.get(key, {})} for key, mask in self.masks.items()}
        save_file(packed, str(path), metadata={"format": FORMAT, "version": VERSION, "modules": json.dumps(shapes),
                                               "info": json.dumps(self.info)})
        return path


def read_masks(path: str | Path) -> MaskSet:
    """A mask file written by :meth:`MaskSet.save`; anything else is refused in one line."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise EdgefoldError(f"mask file not found: {path}")
    try:
        with safe_open(str(path), framework="numpy") as file:
            metadata = file.metadata() or {}
            if metadata.get("format") != FORMAT:
                raise EdgefoldError(f"{path} is not an edgefold mask file (no '{FORMAT}' format in its metadata)")
            if metadata.get("version") != VERSION:
                raise EdgefoldError(f"{path} is a mask file of version {metadata.get('version')!r}; this edgefold "
                                    f"reads version {VERSION}")
            modules = json.loads(metadata["modules"])
            masks = {key: _unpack(file.get_tensor(key), modules.get(key, {}).get("shape"), path, key)
                     for key in file.keys()}
            info = json.loads(metadata.get("info", "{}"))
    except EdgefoldError:
        raise
    except Exception as error:  # safetensors' own errors: truncated, not safetensors, bad header
        raise EdgefoldError(f"cannot read mask file {path}: {str(error).splitlines()[0] if str(error) else error}") \
            from None
    return MaskSet(masks, {key: {k: v for k, v in entry.items() if k != "shape"} for key, entry in modules.items()},
                   info)


def _unpack(packed: np.ndarray, shape, path: Path, key: str) -> np.ndarray:
    if not isinstance(shape, list) or not all(isinstance(n, int) and n >= 0 for n in shape):
        raise EdgefoldError(f"mask file {path} gives no valid shape for {key}")
    count = int(np.prod(shape))
    if packed.dtype != np.uint8 or packed.ndim != 1 or packed.size != (count + 7) // 8:
        raise EdgefoldError(f"mask file {path}: {key} holds {packed.size} bytes, not the {(count + 7) // 8} of "
                            f"shape {shape}")
    return np.unpackbits(packed, count=count).astype(bool).reshape(shape)
