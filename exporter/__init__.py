"""edgefold's host side: compress a transformers model offline and fold it into a verified ONNX folder.

    from edgefold.exporter import CompressionConfig, compress_, export

    compress_(model, CompressionConfig(method="svd", targets="embeddings,ffn", ratio=4))   # in place, torch
    export("path/to/model", "out", CompressionConfig(ratio=2))                           # whole pipeline
    export("path/to/model", "out", CompressionConfig(ratio=2), GraphConfig(quantize="int8", formats=("onnx", "ort")))
"""

from .compress import CompressionConfig, ModuleRecord, compress_
from .graph import GraphConfig
from .methods import METHODS
from .pipeline import DEFAULT_PARITY_ATOL, export

__all__ = ["DEFAULT_PARITY_ATOL", "METHODS", "CompressionConfig", "GraphConfig", "ModuleRecord", "compress_",
           "export"]
