"""edgefold's device side: run and measure an exported folder with onnxruntime, numpy and tokenizers only."""

from .errors import EdgefoldError

__all__ = ["EdgefoldError"]
__version__ = "0.1.0"
