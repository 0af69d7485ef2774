"""Which weights a mask keeps: global magnitude (one threshold over every targeted weight), Wanda (per output
row, |W| scaled by the input's norm), and a random control with the same per-weight sparsity.

Every selection prunes an exact count (``round(share * size)``); ties go to the earlier position, so a mask is
a function of the weights alone.
"""

from __future__ import annotations

import torch

Masks = dict[str, torch.Tensor]  # key -> bool tensor of the weight's shape, True: kept


def pruned_count(share: float, size: int) -> int:
    return int(round(share * size))


def global_magnitude(weights: dict[str, torch.Tensor], sparsity: float, keep: Masks | None = None) -> Masks:
    """Prune the ``sparsity`` share of ALL the weights together with the smallest |w|. Weights ``keep`` already
    pruned stay pruned and count towards the share (iterative pruning: share of the original weights)."""
    scores = {key: weight.detach().abs().float() for key, weight in weights.items()}
    if keep is not None:
        scores = {key: score.masked_fill(~keep[key], -1.0) for key, score in scores.items()}  # |w| >= 0 > -1
    flat = torch.cat([score.reshape(-1) for score in scores.values()])
    kept = torch.ones(flat.numel(), dtype=torch.bool)
    kept[torch.argsort(flat, stable=True)[:pruned_count(sparsity, flat.numel())]] = False
    masks, start = {}, 0
    for key, score in scores.items():
        masks[key] = kept[start:start + score.numel()].reshape(score.shape)
        start += score.numel()
    return masks


def wanda(weight: torch.Tensor, input_norms: torch.Tensor, sparsity: float, transposed: bool = False) -> torch.Tensor:
    """Wanda's mask of one weight: in each OUTPUT row, prune the ``sparsity`` share with the smallest
    |W_ij| * ||X_j|| (``input_norms``: the norm of each input feature over the calibration tokens)."""
    rows = weight.detach().float().t() if transposed else weight.detach().float()
    scores = rows.abs() * input_norms.float()[None, :]
    kept = torch.ones_like(scores, dtype=torch.bool)
    kept.scatter_(1, torch.argsort(scores, dim=1, stable=True)[:, :pruned_count(sparsity, scores.shape[1])], False)
    return kept.t().contiguous() if transposed else kept


def random_like(reference: Masks, seed: int) -> Masks:
    """A random mask pruning as many weights of each tensor as ``reference`` does: the control of a transfer."""
    generator = torch.Generator().manual_seed(seed)
    masks = {}
    for key, mask in reference.items():
        kept = torch.ones(mask.numel(), dtype=torch.bool)
        kept[torch.randperm(mask.numel(), generator=generator)[:int((~mask).sum())]] = False
        masks[key] = kept.reshape(mask.shape)
    return masks


def uniform_random(shapes: dict[str, torch.Size], sparsity: float, seed: int) -> Masks:
    """A random mask pruning the ``sparsity`` share of each tensor."""
    full = {key: torch.ones(shape, dtype=torch.bool) for key, shape in shapes.items()}
    reference = {}
    for key, mask in full.items():
        mask.view(-1)[:pruned_count(sparsity, mask.numel())] = False
        reference[key] = mask
    return random_like(reference, seed)
