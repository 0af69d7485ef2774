"""Calibration statistics of the ORIGINAL model, collected once before any module is swapped.

Data-aware methods declare what they need (``Method.needs``) and receive it per module through ``FitContext``:

- ``input_moments``: the second moment of each targeted Linear's input, ``E[x x^T]`` (cols x cols, float64),
  token-weighted, padding excluded. ``||(W - W') x||^2`` averaged over calibration tokens is
  ``tr((W - W') M (W - W')^T)``: the error of the layer's OUTPUT, which whitened SVD minimises.
- ``input_mean``: ``E[x]`` (cols, float64), the same tokens: the mean output error ``(W - W') E[x]`` that bias
  correction removes, and the intercept of a least-squares repair.
- ``row_importance``: per output unit, the summed squared gradients of its weights (FWSVD's Fisher
  information, one number per row). The loss is the model's own next-token loss where it has one (a causal LM);
  otherwise a Gaussian-output Fisher: the gradient of ``<output, g>`` with ``g ~ N(0, I)`` drawn per output
  vector (per token, or per text where the head gives one vector a text, as a classifier's logits). Its expected
  squared gradient is the Fisher information of a Gaussian likelihood centred on the model's output (the
  unsupervised case FWSVD's justification covers), and because ``g`` is independent across vectors the cross
  terms of a batch vanish in expectation, so batched gradients estimate the per-vector sum without bias.

A sequential fit measures more, layer by layer: see ``calibration.sequential``.

Only the calibration FIT split is used: the validation lines stay for checkpoint selection.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from edgefold.exporter.calibration.batches import TextBatch, max_text_length, tokenize
from edgefold.exporter.methods.base import INPUT_MEAN, INPUT_MOMENTS, ROW_IMPORTANCE
from edgefold.exporter.onnx.export import task_of_model

#: Texts per forward pass while statistics are collected.
STATISTICS_BATCH = 32


def collect_statistics(model: PreTrainedModel, modules: dict[str, tuple[nn.Module, bool]], needs: frozenset[str],
                       texts: list[str], tokenizer: PreTrainedTokenizerBase, seed: int = 0,
                       progress: bool = True) -> dict[str, dict[str, torch.Tensor]]:
    """``{module name: {need: tensor}}`` for ``modules`` (name -> (module, stored transposed as GPT-2's Conv1D))."""
    batches = tokenize(tokenizer, texts, max_text_length(model), batch_size=STATISTICS_BATCH)
    statistics: dict[str, dict[str, torch.Tensor]] = {name: {} for name in modules}
    if needs & {INPUT_MOMENTS, INPUT_MEAN}:
        for name, (moments, mean) in input_moments(model, modules, batches, progress).items():
            statistics[name].update({INPUT_MOMENTS: moments, INPUT_MEAN: mean})
    if ROW_IMPORTANCE in needs:
        for name, importance in row_importance(model, modules, batches, seed, progress).items():
            statistics[name][ROW_IMPORTANCE] = importance
    return statistics


@torch.no_grad()
def input_moments(model: PreTrainedModel, modules: dict[str, tuple[nn.Module, bool]], batches: list[TextBatch],
                  progress: bool) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """``(E[x x^T], E[x])`` of each module's input over the real tokens of ``batches`` (float64); a module fed one
    vector per text (BERT's pooler reads the first token) averages over texts."""
    sums = MomentSums()
    mask: list[torch.Tensor | None] = [None]
    with hooks(modules, lambda name: lambda _module, inputs: sums.add(name, inputs[0], mask[0])):
        for batch in tqdm(batches, desc="input moments", unit="batch", disable=not progress, leave=False):
            mask[0] = torch.from_numpy(batch.attention_mask).bool()
            model(input_ids=torch.from_numpy(batch.input_ids), attention_mask=torch.from_numpy(batch.attention_mask))
    return sums.means()


class MomentSums:
    """Running sums of ``x x^T`` and ``x`` of modules' inputs over real tokens, batch after batch: a batch in
    float32 (fast), the sums in float64. A layer-streamed run adds the same batches in the same order, so its
    statistics are bitwise those of a whole-model pass."""

    def __init__(self) -> None:
        self.sums: dict[str, tuple[torch.Tensor, torch.Tensor, int]] = {}

    def add(self, name: str, x: torch.Tensor, mask: torch.Tensor) -> None:
        x = (x[mask] if x.dim() == 3 else x).float()  # real tokens only, (tokens, cols)
        product, total = (x.T @ x).double(), x.sum(dim=0).double()
        found = self.sums.get(name)
        self.sums[name] = (product, total, len(x)) if found is None else \
            (found[0] + product, found[1] + total, found[2] + len(x))

    def means(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        return {name: (product / count, total / count) for name, (product, total, count) in self.sums.items()}


def row_importance(model: PreTrainedModel, modules: dict[str, tuple[nn.Module, bool]], batches: list[TextBatch],
                   seed: int, progress: bool) -> dict[str, torch.Tensor]:
    """Per output unit, the squared gradients of its weights summed over the row and the batches (float64)."""
    generator = torch.Generator().manual_seed(seed)
    causal = task_of_model(model) == "text-generation"
    importance: dict[str, torch.Tensor] = {}
    with _gradients_only_for(model, [module.weight for module, _ in modules.values()]):
        for batch in tqdm(batches, desc="row importance", unit="batch", disable=not progress, leave=False):
            ids, mask = torch.from_numpy(batch.input_ids), torch.from_numpy(batch.attention_mask)
            model.zero_grad(set_to_none=True)
            _loss(model, ids, mask, causal, generator).backward()
            for name, (module, transposed) in modules.items():
                squared = module.weight.grad.double().pow(2)
                rows = squared.sum(dim=0 if transposed else 1)  # Conv1D stores (in x out)
                importance[name] = rows if name not in importance else importance[name] + rows
        model.zero_grad(set_to_none=True)
    return importance


def _loss(model: PreTrainedModel, ids: torch.Tensor, mask: torch.Tensor, causal: bool,
          generator: torch.Generator) -> torch.Tensor:
    if causal:  # the model's own next-token loss; padded positions are not predicted
        return model(input_ids=ids, attention_mask=mask, labels=ids.masked_fill(mask == 0, -100)).loss
    output = model(input_ids=ids, attention_mask=mask)[0]
    probe = torch.randn(output.shape, generator=generator, dtype=output.dtype)
    if output.dim() == mask.dim() + 1:  # one vector per token (hidden states, MLM logits): padding says nothing
        probe = probe * mask[..., None]
    return (output * probe).sum()  # else one per sequence (a classifier's logits)


@contextmanager
def hooks(modules: dict[str, tuple[nn.Module, bool]], make_hook) -> Iterator[None]:
    handles = [module.register_forward_pre_hook(make_hook(name)) for name, (module, _) in modules.items()]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def _gradients_only_for(model: nn.Module, weights: list[nn.Parameter]) -> Iterator[None]:
    """Gradients for ``weights`` alone (the rest frozen, for speed), the model's flags restored afterwards."""
    flags = {p: p.requires_grad for p in model.parameters()}
    chosen = {id(w) for w in weights}
    try:
        for parameter in model.parameters():
            parameter.requires_grad_(id(parameter) in chosen)
        yield
    finally:
        for parameter, flag in flags.items():
            parameter.requires_grad_(flag)
