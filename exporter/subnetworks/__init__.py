"""Sub-networks: unstructured masks of a pre-trained model's Linear weights (magnitude, Wanda, lottery tickets),
their files, and how much two of them overlap.

    from edgefold.exporter.subnetworks import SparsityConfig, sparsify_
    found = sparsify_(model, SparsityConfig(method="wanda", sparsity=0.5), tokenizer)   # in place, torch
    export("path/to/model", "out", sparsity=SparsityConfig(method="imp", sparsity=0.5))  # a verified folder
"""

from edgefold.exporter.subnetworks.config import METHODS, SparsityConfig
from edgefold.exporter.subnetworks.masks import MaskSet, read_masks
from edgefold.exporter.subnetworks.sparsify import SubNetwork, sparsify_, zipped_bytes

__all__ = ["METHODS", "MaskSet", "SparsityConfig", "SubNetwork", "read_masks", "sparsify_", "zipped_bytes"]
