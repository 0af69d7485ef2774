"""Training of a masked model: the task's loss where the data has labels the model's head knows, otherwise
distillation to the dense model's outputs on the same text. Pruned weights stay exactly zero throughout."""

from __future__ import annotations

import copy
from contextlib import contextmanager

import torch
from torch import nn
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from edgefold.exporter.calibration.batches import TextBatch, max_text_length, tokenize
from edgefold.exporter.onnx.export import task_of_model
from edgefold.exporter.subnetworks.select import Masks
from edgefold.exporter.subnetworks.targets import Prunable
from edgefold.runtime import EdgefoldError


class MaskedTrainer:
    """Trains ``model`` in place, a fixed number of steps at a time, under a mask of its prunable weights."""

    def __init__(self, model: PreTrainedModel, prunables: list[Prunable], tokenizer: PreTrainedTokenizerBase,
                 texts: list[str], labels: list[str] | None, batch_size: int, learning_rate: float,
                 progress: bool = True):
        self.model, self.prunables, self.learning_rate, self.progress = model, prunables, learning_rate, progress
        self.batches = tokenize(tokenizer, texts, max_text_length(model), batch_size=batch_size)
        self.targets = _label_ids(model, labels, batch_size) if labels is not None else None
        # distillation: the dense model, frozen; its outputs are cached per batch (the batches never change)
        self.teacher = copy.deepcopy(model).eval() if labels is None else None
        self._teacher_outputs: dict[int, torch.Tensor] = {}

    @property
    def objective(self) -> str:
        return "task loss" if self.targets is not None else "distillation"

    def train(self, masks: Masks, steps: int, seed: int, description: str = "training") -> dict:
        """``steps`` AdamW steps (a fresh optimiser: the paper resets it every round); returns the losses."""
        if steps == 0:
            return {"steps": 0}
        torch.manual_seed(seed)  # dropout
        order = torch.randperm(len(self.batches), generator=torch.Generator().manual_seed(seed))
        parameters = [p for p in self.model.parameters() if p.requires_grad]
        optimiser = torch.optim.AdamW(parameters, lr=self.learning_rate, weight_decay=0.0)
        losses = []
        self.model.train()
        try:
            with _masked_gradients(self.prunables, masks):
                for step in tqdm(range(steps), desc=description, unit="step", disable=not self.progress,
                                 leave=False):
                    index = int(order[step % len(order)])
                    loss = self._loss(index, self.batches[index])
                    optimiser.zero_grad(set_to_none=True)
                    loss.backward()
                    optimiser.step()
                    apply_masks(self.prunables, masks)
                    losses.append(loss.item())
        finally:
            self.model.eval()
        return {"steps": steps, "loss_first": losses[0], "loss_last": losses[-1],
                "loss_mean_last_10": sum(losses[-10:]) / len(losses[-10:])}

    def _loss(self, index: int, batch: TextBatch) -> torch.Tensor:
        input_ids = torch.from_numpy(batch.input_ids)
        attention_mask = torch.from_numpy(batch.attention_mask)
        output = self.model(input_ids=input_ids, attention_mask=attention_mask)[0]
        if self.targets is not None:
            return nn.functional.cross_entropy(output, self.targets[index])
        if index not in self._teacher_outputs:
            with torch.no_grad():
                self._teacher_outputs[index] = self.teacher(input_ids=input_ids, attention_mask=attention_mask)[0]
        teacher = self._teacher_outputs[index]
        if output.dim() == 3:  # per token: the real tokens only
            real = attention_mask.bool()
            output, teacher = output[real], teacher[real]
        # mean squared error relative to the teacher's mean square: comparable across models and layers
        return ((output - teacher) ** 2).mean() / (teacher ** 2).mean().clamp_min(1e-12)


@torch.no_grad()
def apply_masks(prunables: list[Prunable], masks: Masks) -> None:
    for prunable in prunables:
        prunable.weight.mul_(masks[prunable.key].to(prunable.weight.dtype))


@contextmanager
def _masked_gradients(prunables: list[Prunable], masks: Masks):
    """Pruned weights get no gradient, so the optimiser's moments never move them."""
    handles = [p.weight.register_hook(lambda grad, mask=masks[p.key]: grad * mask) for p in prunables]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def check_labels(config, task: str, labels: list[str]) -> dict[str, int]:
    """The head's id of each label; a model without a classification head, or labels it does not know, are
    refused (checked on the config, before the weights are loaded)."""
    if task != "text-classification":
        raise EdgefoldError("labels train a classification head: give --task text-classification and a model "
                            "fine-tuned for these labels, or drop --label-column to distil")
    known = {str(name): int(index) for name, index in (config.label2id or {}).items()}
    unknown = sorted({label for label in labels if label not in known})
    if unknown:
        raise EdgefoldError(f"the model's head does not know the label(s) {', '.join(map(repr, unknown[:5]))}; it "
                            f"knows {', '.join(map(repr, known))}")
    return known


def _label_ids(model: PreTrainedModel, labels: list[str], batch_size: int) -> list[torch.Tensor]:
    known = check_labels(model.config, task_of_model(model), labels)
    ids = torch.tensor([known[label] for label in labels])
    return [ids[start:start + batch_size] for start in range(0, len(ids), batch_size)]
