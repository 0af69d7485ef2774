"""A model whose weights stay in their safetensors files until a part of it runs: models larger than memory.

:meth:`LazyWeights.skeleton` builds the model with every parameter on torch's meta device (as accelerate's
``init_empty_weights`` does; buffers such as rotary frequencies are computed at construction
and stay real). :meth:`LazyWeights.materialise` reads a part's tensors from the files (memory-mapped, opened for
that call only, so no mapping outlives it) and :meth:`LazyWeights.release` puts them back on the meta device.
What is resident is counted: ``resident_bytes`` now, ``peak_bytes`` at most.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
import transformers
from safetensors import safe_open
from torch import nn
from transformers import PreTrainedModel

from edgefold.exporter.onnx.export import TASK_AUTO_CLASSES
from edgefold.exporter.source.loading import SourceModel
from edgefold.runtime import EdgefoldError


@dataclass
class _Loaded:
    """A parameter read from the file: every (module, attribute) that holds it (tied weights have several)."""

    slots: list[tuple[str, nn.Module, str]]
    nbytes: int


class LazyWeights:
    """The safetensors weights of ``source``, read part by part into a skeleton model."""

    def __init__(self, source: SourceModel):
        if any(file.suffix != ".safetensors" for file in source.weight_files):
            raise EdgefoldError(f"a streamed run reads the weights lazily from safetensors, and {source.name} has "
                                ".bin weights only: save it with safe_serialization=True, or run without streaming")
        self.source = source
        self.index: dict[str, Path] = {}
        for file in source.weight_files:
            try:
                with safe_open(file, framework="pt") as handle:
                    self.index.update(dict.fromkeys(handle.keys(), file))
            except Exception as error:
                raise EdgefoldError(f"cannot read the weights of {source.name} ({file.name}): "
                                    f"{str(error).strip().splitlines()[0] if str(error).strip() else error}") from None
        self.loaded: dict[int, _Loaded] = {}
        self.resident_bytes = self.peak_bytes = 0
        self._prefix = ""

    def skeleton(self, trust_remote_code: bool = False) -> PreTrainedModel:
        """The model in float32 eval mode with its parameters on the meta device (buffers the file holds read);
        a parameter the files lack is refused now, before any work."""
        auto_class = getattr(transformers, TASK_AUTO_CLASSES[self.source.task])
        with _parameters_on_meta():
            model = auto_class.from_config(self.source.config, trust_remote_code=trust_remote_code,
                                           dtype=torch.float32)
        model.tie_weights()  # a head sharing the embeddings (lm_head, BERT's decoder) holds the same parameter
        self._prefix = model.base_model_prefix
        for name, slots in _meta_parameters(model, "").items():
            if self._key(name for name, _, _ in slots) is None:
                raise EdgefoldError(f"the weights of {self.source.name} lack {name}, which the {self.source.task} "
                                    "model needs; they are incomplete or for another task")
        for name, buffer in model.named_buffers():
            key = self._key([name])
            if key is not None:
                buffer.copy_(self._read([key])[key])
        return model.eval()

    def materialise(self, model: nn.Module, prefix: str = "", skip: str | None = None) -> None:
        """Read every parameter under ``prefix`` (a module name; "" for all) that is still on the meta device,
        except those under ``skip``."""
        wanted = {name: slots for name, slots in _meta_parameters(model, prefix).items()
                  if skip is None or not _under(name, skip)}
        keys = {self._key(name for name, _, _ in slots): slots for slots in wanted.values()}
        tensors = self._read(list(keys))
        for key, slots in keys.items():
            meta = getattr(slots[0][1], slots[0][2])
            parameter = nn.Parameter(tensors[key].to(torch.float32), requires_grad=meta.requires_grad)
            for _, module, attribute in slots:
                module._parameters[attribute] = parameter
            self.loaded[id(parameter)] = _Loaded(slots, parameter.numel() * parameter.element_size())
            self.resident_bytes += self.loaded[id(parameter)].nbytes
        self.peak_bytes = max(self.peak_bytes, self.resident_bytes)

    def release(self, prefix: str = "") -> None:
        """Put every parameter read under ``prefix`` back on the meta device, in every module that held it when it
        was read (a module swapped out since included): only a compressed replacement keeps what it took."""
        for key, loaded in list(self.loaded.items()):
            if not any(_under(name, prefix) for name, _, _ in loaded.slots):
                continue
            _, module, attribute = loaded.slots[0]
            current = module._parameters[attribute]
            meta = nn.Parameter(current.to("meta"), requires_grad=current.requires_grad)
            for _, module, attribute in loaded.slots:
                module._parameters[attribute] = meta
            self.resident_bytes -= loaded.nbytes
            del self.loaded[key]

    def _key(self, names) -> str | None:
        """The file's name for a parameter known by ``names`` (tied ones have several); a checkpoint of the base
        model names it without the task model's prefix (``encoder...`` for ``bert.encoder...``), and the other
        way round."""
        for name in names:
            base = name.removeprefix(f"{self._prefix}.")
            for candidate in (name, base, f"{self._prefix}.{name}"):
                if candidate in self.index:
                    return candidate
        return None

    def _read(self, keys: list[str]) -> dict[str, torch.Tensor]:
        """The tensors at ``keys``, each file opened once for this call (its memory map closed after)."""
        tensors: dict[str, torch.Tensor] = {}
        for file in sorted({self.index[key] for key in keys}, key=str):
            with safe_open(file, framework="pt") as handle:
                for key in keys:
                    if self.index[key] == file:
                        tensors[key] = handle.get_tensor(key).clone()  # a copy: nothing keeps the file mapped
        return tensors


def _meta_parameters(model: nn.Module, prefix: str) -> dict[str, list[tuple[str, nn.Module, str]]]:
    """{first name: every (name, module, attribute) holding it} of the meta parameters with a slot under
    ``prefix``; a tied parameter is listed once, with all its slots in the model."""
    slots: dict[int, list[tuple[str, nn.Module, str]]] = {}
    for module_name, module in model.named_modules(remove_duplicate=False):
        for attribute, parameter in module._parameters.items():
            if parameter is not None and parameter.is_meta:
                name = f"{module_name}.{attribute}" if module_name else attribute
                slots.setdefault(id(parameter), []).append((name, module, attribute))
    return {found[0][0]: found for found in slots.values() if any(_under(name, prefix) for name, _, _ in found)}


def _under(name: str, prefix: str) -> bool:
    return not prefix or name == prefix or name.startswith(f"{prefix}.")


@contextmanager
def _parameters_on_meta() -> Iterator[None]:
    """Every parameter a module registers inside is moved to the meta device; buffers stay real. (transformers 5
    no longer has ``init_empty_weights``, and a ``torch.device("meta")`` context would take the buffers too.)"""
    register = nn.Module.register_parameter

    def on_meta(module: nn.Module, name: str, param: nn.Parameter | None) -> None:
        register(module, name, param)
        if param is not None:
            module._parameters[name] = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)

    nn.Module.register_parameter = on_meta
    try:
        yield
    finally:
        nn.Module.register_parameter = register
