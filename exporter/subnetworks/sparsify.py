"""``sparsify_``: find a sub-network of a loaded model in place (zeros where weights are pruned), with what
found it and what it costs; and the bytes a pruned export takes to download."""

from __future__ import annotations

import io
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from edgefold.exporter.calibration.batches import max_text_length, tokenize
from edgefold.exporter.calibration.corpus import Calibration
from edgefold.exporter.calibration.statistics import STATISTICS_BATCH, input_moments
from edgefold.exporter.subnetworks.config import SparsityConfig
from edgefold.exporter.subnetworks.imp import Checkpoints, lottery_ticket, round_seed
from edgefold.exporter.subnetworks.masks import MaskSet, read_masks
from edgefold.exporter.subnetworks.select import Masks, global_magnitude, random_like, uniform_random, wanda
from edgefold.exporter.subnetworks.targets import Prunable, prunable_weights
from edgefold.exporter.subnetworks.training import MaskedTrainer, apply_masks
from edgefold.runtime import EdgefoldError

MASK_FILE = "mask.safetensors"
LEVELS_FOLDER = "masks"


@dataclass
class SubNetwork:
    """What ``sparsify_`` did: the final mask, every IMP level's, each round's record and the training after."""

    config: SparsityConfig
    mask: MaskSet
    levels: list[MaskSet] = field(default_factory=list)
    rounds: list[dict] = field(default_factory=list)
    training: dict = field(default_factory=dict)
    seconds: float = 0.0

    def write(self, folder: Path) -> list[Path]:
        """The final mask, and IMP's levels under ``masks/``."""
        written = [self.mask.save(folder / MASK_FILE)]
        if self.levels:
            (folder / LEVELS_FOLDER).mkdir()
            written += [level.save(folder / LEVELS_FOLDER / f"level-{k:02d}.safetensors")
                        for k, level in enumerate(self.levels, start=1)]
        return written

    def describe(self) -> dict:
        by_kind: dict[str, list[int]] = {}
        by_layer: dict[str, list[int]] = {}
        for key, mask in self.mask.masks.items():
            module = self.mask.modules[key]
            for groups, name in ((by_kind, module["kind"]), (by_layer, str(module["layer"]))):
                counts = groups.setdefault(name, [0, 0])
                counts[0] += int(mask.size - mask.sum())
                counts[1] += int(mask.size)
        return {
            **self.config.describe(),
            "targets": list(by_kind),
            "weights_targeted": self.mask.total,
            "weights_pruned": self.mask.total - self.mask.kept,
            "sparsity_measured": self.mask.sparsity,
            "sparsity_by_kind": {k: pruned / total for k, (pruned, total) in by_kind.items()},
            "sparsity_by_layer": {k: pruned / total for k, (pruned, total) in by_layer.items()},
            "levels": [{"file": f"{LEVELS_FOLDER}/level-{k:02d}.safetensors", "sparsity": level.sparsity}
                       for k, level in enumerate(self.levels, start=1)],
            "rounds": self.rounds,
            "training": self.training,
            "seconds": round(self.seconds, 2),
            # onnxruntime's CPU kernels are dense: pruned weights are stored and multiplied as zeros
            "on_device": "file bytes, memory and latency as dense; zeros shrink the compressed download only",
        }


def sparsify_(model: PreTrainedModel, config: SparsityConfig, tokenizer: PreTrainedTokenizerBase, *,
              source: str = "", checkpoints_folder: Path | None = None, fingerprint: str = "",
              progress: bool = True) -> SubNetwork:
    """Prune ``model``'s Q, K, V, attention-output, FFN and pooler weights in place as ``config`` says (and
    train, where it says so). ``checkpoints_folder``: where IMP keeps its levels to resume from."""
    started = time.perf_counter()
    prunables = prunable_weights(model)
    reference = read_masks(config.mask) if config.mask else None
    if reference is not None:
        _check_mask_fits(reference, prunables, config.mask)
    texts = list(config.texts) if config.texts is not None else Calibration.load(None).fit_texts
    labels = list(config.labels) if config.labels is not None else None
    steps = config.training_steps
    trainer = MaskedTrainer(model, prunables, tokenizer, texts, labels, config.batch_size, config.learning_rate,
                            progress) if steps or config.method == "imp" else None

    def as_mask_set(masks: Masks, level: int | None = None) -> MaskSet:
        info = {"method": config.method, "model": source, "seed": config.seed, "level": level,
                "objective": trainer.objective if trainer else None}
        return mask_set(masks, prunables, info)

    levels, rounds = [], []
    if config.method == "imp":
        checkpoints = Checkpoints(checkpoints_folder, fingerprint, as_mask_set)
        found, rounds = lottery_ticket(model, prunables, trainer, config.schedule(), steps, config.seed,
                                       checkpoints)
        masks, levels = found[-1], [as_mask_set(m, k) for k, m in enumerate(found, start=1)]
    else:
        masks = _one_shot(model, prunables, config, reference, texts, tokenizer, progress)
    apply_masks(prunables, masks)
    training = trainer.train(masks, steps, round_seed(config.seed, len(levels) + 1), "training the sub-network") \
        if trainer and steps else {"steps": 0}
    return SubNetwork(config, as_mask_set(masks, len(levels) or None), levels, rounds,
                      {**training, "objective": trainer.objective if trainer else None},
                      time.perf_counter() - started)


def _one_shot(model: PreTrainedModel, prunables: list[Prunable], config: SparsityConfig, reference: MaskSet | None,
              texts: list[str], tokenizer: PreTrainedTokenizerBase, progress: bool) -> Masks:
    if config.method == "mask":
        return {p.key: torch.from_numpy(reference.masks[p.key]) for p in prunables}
    if config.method == "random":
        if reference is not None:
            return random_like({p.key: torch.from_numpy(reference.masks[p.key]) for p in prunables}, config.seed)
        return uniform_random({p.key: p.weight.shape for p in prunables}, config.sparsity, config.seed)
    if config.method == "magnitude":
        return global_magnitude({p.key: p.weight for p in prunables}, config.sparsity)
    norms = input_norms(model, prunables, tokenizer, texts, progress)
    return {p.key: wanda(p.weight, norms[p.key], config.sparsity, p.transposed) for p in prunables}


def input_norms(model: PreTrainedModel, prunables: list[Prunable], tokenizer: PreTrainedTokenizerBase,
                texts: list[str], progress: bool = True) -> dict[str, torch.Tensor]:
    """Wanda's ||X_j||, up to a factor per weight that no row's order depends on: the root of E[x_j^2] of each
    prunable weight's input over ``texts``."""
    batches = tokenize(tokenizer, texts, max_text_length(model), batch_size=STATISTICS_BATCH)
    moments = input_moments(model, {p.key: (p.module, p.transposed) for p in prunables}, batches, progress)
    return {key: second.diagonal().sqrt() for key, (second, _) in moments.items()}


def mask_set(masks: Masks, prunables: list[Prunable], info: dict) -> MaskSet:
    return MaskSet({p.key: masks[p.key].numpy() for p in prunables},
                   {p.key: {"kind": p.kind, "layer": p.layer} for p in prunables}, info)


def _check_mask_fits(found: MaskSet, prunables: list[Prunable], path: str) -> None:
    """A mask from elsewhere must name exactly this model's prunable weights, at their shapes."""
    wanted = {p.key: tuple(p.weight.shape) for p in prunables}
    have = {key: mask.shape for key, mask in found.masks.items()}
    missing, extra = sorted(set(wanted) - set(have)), sorted(set(have) - set(wanted))
    if missing or extra:
        raise EdgefoldError(f"mask file {path} does not fit this model: "
                            + (f"it lacks {missing[0]}" if missing else f"this model has no {extra[0]}")
                            + f" ({len(missing)} missing, {len(extra)} unknown)")
    for key, shape in wanted.items():
        if have[key] != shape:
            raise EdgefoldError(f"mask file {path} does not fit this model: {key} is {list(have[key])} in the "
                                f"mask, {list(shape)} in the model")


def zipped_bytes(paths: list[Path]) -> int:
    """The bytes of ``paths`` in a deflated zip (as an app store or an APK delivers them)."""

    class Counter(io.RawIOBase):
        size = 0

        def writable(self) -> bool:
            return True

        def write(self, data) -> int:
            self.size += len(data)
            return len(data)

    counter = Counter()
    with zipfile.ZipFile(counter, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=6) as archive:
        for path in paths:
            with path.open("rb") as source, archive.open(path.name, "w", force_zip64=True) as member:
                while chunk := source.read(1 << 20):
                    member.write(chunk)
    return counter.size
