"""The graph passes after parity, each checked against the graph before it: the quantised graph against the fp32
one and the original (reported: quantisation moves outputs by design), and the ``.ort`` file against the ``.onnx``
file it came from (the optimised graph is checked inside ``graph.optimize``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgefold.exporter.calibration.batches import TextBatch, onnx_outputs
from edgefold.exporter.checks.verify import fidelity, max_abs_difference
from edgefold.exporter.graph.config import GraphConfig
from edgefold.exporter.graph.mobile import write_ort_format
from edgefold.exporter.graph.quantize import quantize, quantize_modules
from edgefold.exporter.onnx import passes
from edgefold.runtime import EdgefoldError

#: The .ort file runs the same kernels as the .onnx file after onnxruntime's optimisations: summation order only.
ORT_FORMAT_ATOL = 1e-4


@dataclass
class GraphInputs:
    """What every check needs: the verification batches and the outputs to compare against."""

    batches: list[TextBatch]
    fp32_outputs: list[np.ndarray]
    reference: list[np.ndarray]
    task: str
    parity_atol: float
    calibration: list[TextBatch] | None = None  # what data-aware quantisation fits on (never ``batches``)


def quantize_graph(onnx_path: Path, graph: GraphConfig, inputs: GraphInputs) -> dict:
    """Quantise the checked graph in place; report how far it moved from the fp32 graph and the original."""
    unquantized = onnx_path.with_name(".fp32.onnx")
    passes.settle(onnx_path, unquantized)  # its weights, if external, move with it
    if graph.precisions:
        quantization = quantize_modules(unquantized, onnx_path, graph.precisions, graph.target, graph.algorithm,
                                        inputs.calibration)
    else:
        quantization = quantize(unquantized, onnx_path, graph.quantize, graph.per_channel, graph.target,
                                graph.algorithm, inputs.calibration)
    passes.remove(unquantized)
    passes.settle(onnx_path, onnx_path)  # the quantiser's external data, if any, under the usual name
    quantized = onnx_outputs(onnx_path, inputs.batches)
    quantization.update(
        max_abs_diff_vs_fp32=max_abs_difference(quantized, inputs.fp32_outputs, inputs.batches),
        fidelity_vs_fp32=fidelity(inputs.task, inputs.fp32_outputs, quantized, inputs.batches),
        fidelity_vs_original=fidelity(inputs.task, inputs.reference, quantized, inputs.batches))
    return quantization


def convert_to_ort(onnx_path: Path, inputs: GraphInputs) -> dict:
    """Write the .ort file and its operator list; the .ort must give the .onnx file's outputs."""
    ort_path, operators = write_ort_format(onnx_path)
    batches = inputs.batches
    difference = max_abs_difference(onnx_outputs(ort_path, batches), onnx_outputs(onnx_path, batches), batches)
    if not difference <= ORT_FORMAT_ATOL:
        raise EdgefoldError(f"the .ort file differs from the .onnx graph by {difference:.3g} "
                            f"(tolerance {ORT_FORMAT_ATOL:g}); nothing was written")
    return {"file": ort_path.name, "bytes": ort_path.stat().st_size, "operators_config": operators.name,
            "max_abs_diff_vs_onnx": difference, "atol": ORT_FORMAT_ATOL}
