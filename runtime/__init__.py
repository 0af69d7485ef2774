"""edgefold's device side: run and measure an exported folder with onnxruntime, numpy and tokenizers only."""

from .errors import EdgefoldError, GateFailure

__all__ = ["EdgefoldError", "GateFailure"]
__version__ = "0.1.0"
