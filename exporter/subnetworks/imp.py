"""Iterative magnitude pruning with rewinding: the lottery-ticket procedure (Frankle and Carbin; Chen et al. for
BERT; the multilingual study in ``methods.md`` section 3).

Each round trains the masked model, prunes ``round_share`` of the ORIGINAL weights by global magnitude of the
trained weights, and rewinds the base model to its pre-trained values under the new mask (a task head keeps its
trained values). The optimiser is new every round, each round's randomness comes from (seed, round), and every
level's mask is saved, so a run that stops resumes from its last saved level with the same result.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from transformers import PreTrainedModel

from edgefold.exporter.subnetworks.masks import MaskSet, read_masks
from edgefold.exporter.subnetworks.select import Masks, global_magnitude
from edgefold.exporter.subnetworks.targets import Prunable, base_parameters
from edgefold.exporter.subnetworks.training import MaskedTrainer, apply_masks

STATE = "state.json"
HEAD = "head.safetensors"


def round_seed(seed: int, level: int) -> int:
    return seed * 1000 + level


class Checkpoints:
    """The levels done so far, in a folder of their own: each level's mask, the trained head, and (written last)
    ``state.json`` naming the run they belong to. A folder of another run is started over."""

    def __init__(self, folder: Path | None, fingerprint: str, to_mask_set: Callable[[Masks, int], MaskSet]):
        self.folder, self.fingerprint, self.to_mask_set = folder, fingerprint, to_mask_set

    def resume(self, model: PreTrainedModel, prunables: list[Prunable]) -> tuple[list[Masks], list[dict]]:
        """The masks and rounds of the levels an earlier run of the same settings saved; its head restored."""
        state = self._state()
        if state is None or state.get("fingerprint") != self.fingerprint:
            return [], []
        levels = [_read_level(self._level_path(k), prunables) for k in range(1, int(state["levels_done"]) + 1)]
        if (self.folder / HEAD).is_file():
            model.load_state_dict(load_file(str(self.folder / HEAD)), strict=False)
        return levels, list(state["rounds"])

    def save(self, level: int, masks: Masks, head: dict[str, torch.Tensor], rounds: list[dict]) -> None:
        if self.folder is None:
            return
        if level == 1 or self._state() is None:
            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder.mkdir(parents=True)
        self.to_mask_set(masks, level).save(self._level_path(level))
        if head:
            save_file({k: v.detach().contiguous() for k, v in head.items()}, str(self.folder / HEAD))
        temporary = self.folder / f"{STATE}.tmp"
        temporary.write_text(json.dumps({"fingerprint": self.fingerprint, "levels_done": level, "rounds": rounds}))
        temporary.replace(self.folder / STATE)  # the state names a level only once its files are complete

    def _state(self) -> dict | None:
        if self.folder is None or not (self.folder / STATE).is_file():
            return None
        try:
            return json.loads((self.folder / STATE).read_text())
        except (OSError, ValueError):
            return None

    def _level_path(self, level: int) -> Path:
        return self.folder / f"level-{level:02d}.safetensors"


def _read_level(path: Path, prunables: list[Prunable]) -> Masks:
    found = read_masks(path).masks
    return {p.key: torch.from_numpy(found[p.key]) for p in prunables}


def lottery_ticket(model: PreTrainedModel, prunables: list[Prunable], trainer: MaskedTrainer, schedule: list[float],
                   steps: int, seed: int, checkpoints: Checkpoints,
                   on_level: Callable[[int], None] | None = None) -> tuple[list[Masks], list[dict]]:
    """Run the rounds of ``schedule`` (the sparsity after each); returns each level's mask and each round's
    record. The model is left rewound under the last mask (the ticket, untrained)."""
    pretrained = {name: p.detach().clone() for name, p in base_parameters(model).items()}
    levels, rounds = checkpoints.resume(model, prunables)
    if levels and trainer.progress:
        print(f"edgefold: resuming the lottery ticket after level {len(levels)} of {len(schedule)} "
              f"({checkpoints.folder})", file=sys.stderr)
    masks = levels[-1] if levels else {p.key: torch.ones_like(p.weight, dtype=torch.bool) for p in prunables}
    for level, sparsity in enumerate(schedule[len(levels):], start=len(levels) + 1):
        started = time.perf_counter()
        _rewind(model, pretrained, prunables, masks)
        training = trainer.train(masks, steps, round_seed(seed, level),
                                 f"round {level}/{len(schedule)} ({sparsity:.0%})")
        masks = global_magnitude({p.key: p.weight for p in prunables}, sparsity, keep=masks)
        rounds.append({"level": level, "sparsity": sparsity, "seconds": round(time.perf_counter() - started, 2),
                       **training})
        levels.append(masks)
        _rewind(model, pretrained, prunables, masks)
        base = {id(p) for p in base_parameters(model).values()}
        head = {name: p for name, p in model.named_parameters() if id(p) not in base}
        checkpoints.save(level, masks, head, rounds)
        if on_level is not None:
            on_level(level)
    _rewind(model, pretrained, prunables, masks)
    return levels, rounds


@torch.no_grad()
def _rewind(model: PreTrainedModel, pretrained: dict[str, torch.Tensor], prunables: list[Prunable],
            masks: Masks) -> None:
    for name, parameter in base_parameters(model).items():
        parameter.copy_(pretrained[name])
    apply_masks(prunables, masks)
