"""Exported graphs kept for reuse: within one process, or in a folder shared by processes and runs.

A search verifies many candidates whose torch networks are the same: plans that differ only in the precisions
applied to the graph afterwards, and the uniform int8 and int4 baselines, whose network is the original. The ONNX
export is the slow step (about 30 s for MiniLM, 10 s for a tiny model) and it is deterministic, so a network
exported before is copied from where it was kept instead of exported again. Every export still checks the copy
against the torch model (parity), so a kept graph that is wrong fails loudly.

``EDGEFOLD_GRAPH_CACHE=FOLDER`` keeps every graph exported in ``FOLDER`` for every process and later run (the test
suite shares one); nothing is written outside the output folder unless it is set.
"""

from __future__ import annotations

import atexit
import functools
import hashlib
import importlib.metadata
import os
import shutil
import sys
import tempfile
from collections import OrderedDict
from pathlib import Path

import torch
from torch import nn

from edgefold.exporter.onnx import passes
from edgefold.runtime import EdgefoldError

#: Graphs kept at once in a process (the oldest goes first): a search's candidates share a handful of networks.
KEPT = 3
#: The variable naming a folder where every exported graph is kept, for every process and run.
CACHE_VARIABLE = "EDGEFOLD_GRAPH_CACHE"


class ExportedGraphs:
    """Folders of exported graphs, by a digest of what the export reads: the task, the network's modules, config
    and every tensor, the tokenizer, the versions of the code that exports and the size from which weights are
    written as external data.

    ``ExportedGraphs()`` keeps the last ``kept`` in a temporary folder of this process; ``ExportedGraphs(folder)``
    keeps all of them in ``folder``, where other processes find them: an entry is whole or absent (written
    beside it, then renamed into place).
    """

    def __init__(self, folder: Path | None = None, kept: int = KEPT) -> None:
        self._folder = folder
        self._kept = kept if folder is None else None  # a shared folder keeps everything
        self._recent: OrderedDict[str, None] = OrderedDict()

    @staticmethod
    def key(network: nn.Module, task: str, tokenizer) -> str:
        digest = hashlib.sha256()
        described = [_exporter_code(type(network)), f"external data from {passes.EXTERNAL_DATA_THRESHOLD}", task,
                     type(network).__qualname__, repr(network), network.config.to_json_string(),
                     getattr(tokenizer, "name_or_path", ""), str(len(tokenizer))]
        digest.update("\n".join(described).encode())
        for name, tensor in network.state_dict().items():
            digest.update(f"{name} {tensor.dtype} {tuple(tensor.shape)}".encode())
            digest.update(_raw_bytes(tensor))
        return digest.hexdigest()

    def restore(self, key: str, folder: Path) -> int | None:
        """Copy the graph kept under ``key`` into ``folder``; its count of shared weights, or None if none is kept."""
        if self._folder is None:  # nothing kept yet
            return None
        entry = self._folder / key
        if not (entry / "shared").is_file():
            return None
        if key in self._recent:
            self._recent.move_to_end(key)
        for path in (entry / "files").iterdir():
            shutil.copy2(path, folder / path.name)
        return int((entry / "shared").read_text())

    def keep(self, key: str, folder: Path, shared: int) -> None:
        """Keep a copy of the freshly exported ``folder`` (flat: graph, weights, config, tokenizer)."""
        root = self._root()
        aside = Path(tempfile.mkdtemp(prefix=f".{key[:16]}-", dir=root))
        shutil.copytree(folder, aside / "files")
        (aside / "shared").write_text(str(shared))
        try:
            os.rename(aside, root / key)
        except OSError:  # another process kept the same graph first
            shutil.rmtree(aside, ignore_errors=True)
        if self._kept is not None:
            self._recent[key] = None
            while len(self._recent) > self._kept:
                oldest, _ = self._recent.popitem(last=False)
                shutil.rmtree(root / oldest, ignore_errors=True)

    def _root(self) -> Path:
        if self._folder is None:
            self._folder = _process_folder()
        self._folder.mkdir(parents=True, exist_ok=True)
        return self._folder


def graph_cache() -> ExportedGraphs | None:
    """The graphs kept in the folder ``EDGEFOLD_GRAPH_CACHE`` names, or None where it is not set; one line where it
    names something that is not a folder."""
    folder = os.environ.get(CACHE_VARIABLE)
    if not folder:
        return None
    if Path(folder).exists() and not Path(folder).is_dir():
        raise EdgefoldError(f"{CACHE_VARIABLE} names {folder}, which is not a folder")
    return ExportedGraphs(Path(folder))


def _process_folder() -> Path:
    folder = Path(tempfile.mkdtemp(prefix="edgefold-graphs-"))
    atexit.register(shutil.rmtree, folder, True)
    return folder


@functools.cache
def _exporter_code(network_class: type) -> str:
    """What a graph depends on beside the network: the exporting libraries' versions and the source of edgefold's
    export and layer code and of the model's own module (remote code changes without a version)."""
    digest = hashlib.sha256()
    for name in ("torch", "transformers", "onnx", "onnxscript", "onnx-ir", "optimum", "optimum-onnx"):
        try:
            digest.update(f"{name} {importlib.metadata.version(name)}\n".encode())
        except importlib.metadata.PackageNotFoundError:
            digest.update(f"{name} absent\n".encode())
    here = Path(__file__).parent
    sources = [*sorted(here.glob("*.py")), *sorted((here.parent / "nn").glob("*.py")),
               Path(getattr(sys.modules.get(network_class.__module__), "__file__", "") or os.devnull)]
    for path in sources:
        digest.update(path.read_bytes())
    return digest.hexdigest()


def _raw_bytes(tensor: torch.Tensor) -> bytes:
    """The tensor's bytes whatever its dtype (numpy has no bfloat16)."""
    return tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
