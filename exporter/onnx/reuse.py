"""Exported graphs kept for reuse within one process.

A search verifies many candidates whose torch networks are the same: plans that differ only in the precisions
applied to the graph afterwards. The ONNX export is the slow step (about 30 s for MiniLM) and it is deterministic,
so a network already exported in this process is copied from the kept folder instead of exported again.
"""

from __future__ import annotations

import atexit
import hashlib
import shutil
import tempfile
from collections import OrderedDict
from pathlib import Path

import torch
from torch import nn

#: Graphs kept at once (the oldest goes first): a search's candidates share a handful of networks.
KEPT = 3


class ExportedGraphs:
    """Folders of graphs exported in this process, by a digest of what the export reads: the task, the
    network's modules, config and every tensor, and the tokenizer."""

    def __init__(self, kept: int = KEPT) -> None:
        self._kept = kept
        self._root: Path | None = None
        self._folders: OrderedDict[str, tuple[Path, int]] = OrderedDict()

    @staticmethod
    def key(network: nn.Module, task: str, tokenizer) -> str:
        digest = hashlib.sha256()
        described = [task, type(network).__qualname__, repr(network), network.config.to_json_string(),
                     getattr(tokenizer, "name_or_path", ""), str(len(tokenizer))]
        digest.update("\n".join(described).encode())
        for name, tensor in network.state_dict().items():
            digest.update(f"{name} {tensor.dtype} {tuple(tensor.shape)}".encode())
            digest.update(_raw_bytes(tensor))
        return digest.hexdigest()

    def restore(self, key: str, folder: Path) -> int | None:
        """Copy the graph kept under ``key`` into ``folder``; its count of shared weights, or None if none is kept."""
        if key not in self._folders:
            return None
        kept, shared = self._folders[key]
        self._folders.move_to_end(key)
        for path in kept.iterdir():
            shutil.copy2(path, folder / path.name)
        return shared

    def keep(self, key: str, folder: Path, shared: int) -> None:
        """Keep a copy of the freshly exported ``folder`` (flat: graph, weights, config, tokenizer)."""
        if self._root is None:
            self._root = Path(tempfile.mkdtemp(prefix="edgefold-graphs-"))
            atexit.register(shutil.rmtree, self._root, True)
        kept = self._root / key
        shutil.copytree(folder, kept, dirs_exist_ok=True)
        self._folders[key] = (kept, shared)
        while len(self._folders) > self._kept:
            _, (oldest, _) = self._folders.popitem(last=False)
            shutil.rmtree(oldest, ignore_errors=True)


def _raw_bytes(tensor: torch.Tensor) -> bytes:
    """The tensor's bytes whatever its dtype (numpy has no bfloat16)."""
    return tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
