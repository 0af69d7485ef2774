"""edgefold's host side: compress a transformers model offline and fold it into a verified ONNX folder.

    from edgefold.exporter import CompressionConfig, compress_, export

    compress_(model, CompressionConfig(method="svd", targets="embeddings,ffn", ratio=4))   # in place, torch
    export("path/to/model", "out", CompressionConfig(ratio=2))                           # whole pipeline
    export("path/to/model", "out", CompressionConfig(ratio=2), GraphConfig(quantize="int8", formats=("onnx", "ort")))
    export("path/to/model", "out", CompressionConfig(method="ae", options=AutoencoderOptions(epochs=5)))
    search_export("path/to/model", "out", SearchConfig(objective="size", gates=("mean_cosine>=0.95",)))
"""

from edgefold.exporter.compress import compress_
from edgefold.exporter.config import CompressionConfig
from edgefold.exporter.graph.config import GraphConfig
from edgefold.exporter.methods import (
    METHODS,
    AutoencoderOptions,
    CrossLayerOptions,
    SharedBasisOptions,
    parse_method_options,
)
from edgefold.exporter.pipeline import DEFAULT_PARITY_ATOL, export
from edgefold.exporter.planning.plan import ModuleChoice, Plan
from edgefold.exporter.records import ModuleRecord
from edgefold.exporter.search import SearchConfig, export_gated, search_export

__all__ = ["DEFAULT_PARITY_ATOL", "METHODS", "AutoencoderOptions", "CompressionConfig", "CrossLayerOptions",
           "GraphConfig", "ModuleChoice", "ModuleRecord", "Plan", "SearchConfig", "SharedBasisOptions", "compress_",
           "export", "export_gated", "parse_method_options", "search_export"]
