"""Exported graphs kept for reuse: within one process, or in a folder shared by processes and runs.

A search verifies many candidates whose torch networks are the same: plans that differ only in the precisions
applied to the graph afterwards, and the uniform int8 and int4 baselines, whose network is the original. The ONNX
export is the slow step (about 30 s for MiniLM, 10 s for a tiny model) and it is deterministic, so a network
exported before is copied from where it was kept instead of exported again. Every export still checks the copy
against the torch model (parity), so a kept graph that is wrong fails loudly.

A network of the same layout (modules, config, tensor names, shapes and ties) whose weights differ (another
method at the same ranks, a bias correction, a sub-network's masks) reuses the exporter's graph too: each
initializer is recorded as the network tensor it holds (as is, or transposed), and the new network's tensors are
written in. A graph with an initializer that is neither a tensor of the network nor a constant of its layout (a
product the exporter folded) is never reused this way.

``EDGEFOLD_GRAPH_CACHE=FOLDER`` keeps every graph exported in ``FOLDER`` for every process and later run (the test
suite shares one); nothing is written outside the output folder unless it is set.
"""

from __future__ import annotations

import atexit
import functools
import hashlib
import importlib.metadata
import json
import os
import shutil
import sys
import tempfile
from collections import OrderedDict
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper
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
        """Names the graph of exactly this network: its layout and every tensor's bytes."""
        return _digest(network, task, tokenizer, with_values=True)

    @staticmethod
    def layout_key(network: nn.Module, task: str, tokenizer) -> str:
        """Names the graph of every network of this layout, whatever its weights."""
        return "layout-" + _digest(network, task, tokenizer, with_values=False)

    def restore(self, key: str, folder: Path) -> int | None:
        """Copy the graph kept under ``key`` into ``folder``; its count of shared weights, or None if none is kept."""
        shared = self._copy_out(key, folder, "shared")
        return None if shared is None else int(shared)

    def keep(self, key: str, folder: Path, shared: int) -> None:
        """Keep a copy of the freshly exported ``folder`` (flat: graph, weights, config, tokenizer)."""
        self._copy_in(key, folder, "shared", str(shared))

    def restore_layout(self, key: str, network: nn.Module, folder: Path) -> bool:
        """Write into ``folder`` what the exporter wrote for a network of this layout, with ``network``'s weights;
        False if none is kept."""
        sources = self._copy_out(key, folder, "sources.json")
        if sources is None:
            return False
        tensors = _named_tensors(network)
        graph_path = folder / "model.onnx"
        graph = onnx.load(str(graph_path))
        for init in graph.graph.initializer:
            if init.name in sources:
                name, transposed = sources[init.name]
                array = tensors[name].detach().cpu().numpy()
                array = (array.T if transposed else array).reshape(tuple(init.dims))
                init.CopyFrom(numpy_helper.from_array(array.astype(_numpy_type(init)), init.name))
        passes.save(graph, graph_path)
        return True

    def keep_layout(self, key: str, network: nn.Module, folder: Path) -> None:
        """Keep what the exporter just wrote into ``folder`` for every network of this layout, where each of its
        weights can be traced to one tensor of ``network``."""
        sources = weight_sources(onnx.load(str(folder / "model.onnx")), network)
        if sources is not None:
            self._copy_in(key, folder, "sources.json", json.dumps(sources))

    def _copy_out(self, key: str, folder: Path, marker: str):
        """The entry's marker (parsed where it is JSON) after copying its files into ``folder``; None if absent."""
        entry = self._folder / key if self._folder is not None else None
        if entry is None or not (entry / marker).is_file():
            return None
        if key in self._recent:
            self._recent.move_to_end(key)
        for path in (entry / "files").iterdir():
            shutil.copy2(path, folder / path.name)
        text = (entry / marker).read_text()
        return json.loads(text) if marker.endswith(".json") else text

    def _copy_in(self, key: str, folder: Path, marker: str, text: str) -> None:
        root = self._root()
        aside = Path(tempfile.mkdtemp(prefix=f".{key[:16]}-", dir=root))
        shutil.copytree(folder, aside / "files")
        (aside / marker).write_text(text)
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


def weight_sources(graph: onnx.ModelProto, network: nn.Module) -> dict[str, tuple[str, bool]] | None:
    """Each float initializer of more than one value, as the network tensor it holds: ``{initializer: (tensor,
    transposed)}``; None where one is not exactly one tensor (or tied copies of one), as is or transposed."""
    tensors = _named_tensors(network)
    if any(t.dtype not in _PORTABLE for t in tensors.values()):
        return None
    arrays = {name: t.detach().cpu().numpy() for name, t in tensors.items()}
    sources: dict[str, tuple[str, bool]] = {}
    for init in graph.graph.initializer:
        array = numpy_helper.to_array(init)
        if array.dtype.kind != "f" or array.size <= 1:
            continue  # shapes, indices and scalars: the layout's constants
        found = _source_of(array, init.name, arrays)
        if found is None:
            return None
        sources[init.name] = found
    return sources


def _source_of(array: np.ndarray, name: str, arrays: dict[str, np.ndarray]) -> tuple[str, bool] | None:
    named = arrays.get(name)
    if named is not None and named.size == array.size and np.array_equal(named.reshape(array.shape), array):
        return name, False
    matches = [(other, transposed) for other, value in arrays.items() for transposed in (False, True)
               if value.size == array.size and _equal(value.T if transposed else value, array)]
    storages = {_storage(arrays[other]) for other, _ in matches}
    return matches[0] if len(storages) == 1 else None  # none, or ambiguous: not reusable


def _equal(value: np.ndarray, array: np.ndarray) -> bool:
    return value.shape == array.shape and np.array_equal(value, array)


def _storage(array: np.ndarray) -> int:
    return array.__array_interface__["data"][0]


#: Tensor types whose values numpy writes into an initializer as they are.
_PORTABLE = (torch.float32, torch.float16, torch.float64, torch.int64, torch.int32, torch.int8, torch.uint8,
             torch.bool)


def _numpy_type(init: onnx.TensorProto) -> np.dtype:
    return onnx.helper.tensor_dtype_to_np_dtype(init.data_type)


def _named_tensors(network: nn.Module) -> dict[str, torch.Tensor]:
    return {**dict(network.named_parameters(remove_duplicate=False)),
            **dict(network.named_buffers(remove_duplicate=False))}


def _digest(network: nn.Module, task: str, tokenizer, with_values: bool) -> str:
    """What the export reads: the exporting code, the task, the network's modules and config, the tokenizer, and
    every tensor's name, type, shape and tie (and, ``with_values``, its bytes)."""
    digest = hashlib.sha256()
    described = [_exporter_code(type(network)), f"external data from {passes.EXTERNAL_DATA_THRESHOLD}", task,
                 type(network).__qualname__, repr(network), network.config.to_json_string(),
                 getattr(tokenizer, "name_or_path", ""), str(len(tokenizer))]
    digest.update("\n".join(described).encode())
    first_of_storage: dict[int, str] = {}
    for name, tensor in _named_tensors(network).items():
        tied = first_of_storage.setdefault(tensor.data_ptr(), name)
        digest.update(f"{name} {tensor.dtype} {tuple(tensor.shape)} {tied}".encode())
        if with_values:
            digest.update(_raw_bytes(tensor))
    return digest.hexdigest()


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
