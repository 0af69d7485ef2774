"""How much sub-networks overlap: Jaccard of the kept weights |A and B| / |A or B| (in total, per layer, per
module kind) and the share of positions where two masks agree. numpy only: masks are read from their files."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np

from edgefold.exporter.subnetworks.masks import MaskSet, read_masks
from edgefold.runtime import EdgefoldError

SCHEMA = "edgefold.mask-overlap"


def pair_overlap(a: MaskSet, b: MaskSet) -> dict:
    """Jaccard and agreement of two masks of the same weights, in total and grouped by layer and by kind."""
    if {k: m.shape for k, m in a.masks.items()} != {k: m.shape for k, m in b.masks.items()}:
        raise EdgefoldError("the masks cover different weights (another model?): they cannot be compared")
    groups: dict[str, dict[str, np.ndarray]] = {"total": {}, "layer": {}, "kind": {}}
    for key, mask in a.masks.items():
        other = b.masks[key]
        counts = np.array([np.count_nonzero(mask & other), np.count_nonzero(mask | other),
                           np.count_nonzero(mask == other), mask.size])
        module = a.modules.get(key, {})
        for group, name in (("total", "all"), ("layer", str(module.get("layer"))), ("kind", module.get("kind"))):
            groups[group][name] = groups[group].get(name, 0) + counts
    total = groups.pop("total")["all"]
    return {**_scores(total), **{f"by_{group}": {name: _scores(c) for name, c in found.items()}
                                 for group, found in groups.items()}}


def _scores(counts: np.ndarray) -> dict:
    both, either, agree, size = (int(c) for c in counts)
    return {"jaccard": both / either if either else 1.0, "agreement": agree / size if size else 1.0,
            "kept_both": both, "kept_either": either, "weights": size}


def overlap(paths: list[str | Path]) -> dict:
    """Every pair of mask files: ``{"masks": [...], "pairs": [...], "jaccard": matrix}``."""
    if len(paths) < 2:
        raise EdgefoldError("overlap compares two or more mask files")
    sets = [read_masks(path) for path in paths]
    names = _names(paths)
    matrix = np.eye(len(sets))
    pairs = []
    for i, j in itertools.combinations(range(len(sets)), 2):
        result = pair_overlap(sets[i], sets[j])
        matrix[i, j] = matrix[j, i] = result["jaccard"]
        pairs.append({"a": names[i], "b": names[j], **result})
    return {"schema": SCHEMA, "masks": [{"name": name, "file": str(path), "sparsity": s.sparsity, **s.info}
                      for name, path, s in zip(names, paths, sets)],
            "pairs": pairs, "jaccard": matrix.tolist()}


def _names(paths: list[str | Path]) -> list[str]:
    """Short distinct labels: the file names, or the folder and file where file names repeat."""
    names = [Path(p).stem for p in paths]
    if len(set(names)) < len(names):
        names = [f"{Path(p).parent.name}/{Path(p).stem}" for p in paths]
    if len(set(names)) < len(names):
        names = [str(p) for p in paths]
    return names


def table(result: dict) -> str:
    """A Markdown table of every pair (total, and per kind)."""
    kinds = sorted({kind for pair in result["pairs"] for kind in pair["by_kind"]})
    lines = ["| a | b | Jaccard | agreement | " + " | ".join(f"J {k}" for k in kinds) + " |",
             "|---|---|---|---|" + "---|" * len(kinds)]
    for pair in result["pairs"]:
        per_kind = " | ".join(f"{pair['by_kind'][k]['jaccard']:.3f}" if k in pair["by_kind"] else "" for k in kinds)
        lines.append(f"| {pair['a']} | {pair['b']} | {pair['jaccard']:.3f} | {pair['agreement']:.3f} | {per_kind} |")
    return "\n".join(lines)


def heatmap(result: dict, path: Path, title: str = "Jaccard of kept weights") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [m["name"] for m in result["masks"]]
    matrix = np.array(result["jaccard"])
    figure, axes = plt.subplots(figsize=(1.2 + 0.9 * len(names), 1.0 + 0.8 * len(names)))
    image = axes.imshow(matrix, vmin=min(0.0, matrix.min()), vmax=1.0, cmap="viridis")
    axes.set_xticks(range(len(names)), names, rotation=45, ha="right")
    axes.set_yticks(range(len(names)), names)
    for i, j in itertools.product(range(len(names)), repeat=2):
        axes.text(j, i, f"{matrix[i, j]:.2f}", ha="center", va="center",
                  color="black" if matrix[i, j] > 0.6 else "white", fontsize=8)
    figure.colorbar(image, ax=axes, fraction=0.046)
    axes.set_title(title)
    figure.tight_layout()
    figure.savefig(path, dpi=120, format="png")
    plt.close(figure)
    return path
