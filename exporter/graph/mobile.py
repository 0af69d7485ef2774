"""``--format ort``: onnxruntime's mobile format and the operator list of a reduced-size build.

The ``.ort`` file is the graph after onnxruntime's own optimisations, serialised as flatbuffers, which the
minimal (mobile) onnxruntime builds for Android and iOS load. ``required_operators.config`` lists the operators
(and their types) the graph uses: pass it to onnxruntime's ``build.py --include_ops_by_config`` for a runtime
that carries only those kernels. Same settings as onnxruntime's ``convert_onnx_models_to_ort`` for a fixed,
portable optimisation: every level, without the x86-only NCHWc layout transformer.
"""

from __future__ import annotations

import logging
from pathlib import Path

import onnxruntime as ort

from edgefold.exporter.onnx import passes
from edgefold.runtime import EdgefoldError

FORMATS = ("onnx", "ort")
OPERATORS_CONFIG = "required_operators.config"
#: A .ort file is one flatbuffer, with no external data: 2 GiB at most.
ORT_FORMAT_MAX_BYTES = 2**31 - 1


def check_formats(formats: tuple[str, ...]) -> tuple[str, ...]:
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise EdgefoldError(f"unknown --format {unknown[0]!r}; choose from: {', '.join(FORMATS)}")
    return formats


def write_ort_format(onnx_path: Path) -> tuple[Path, Path]:
    """Write ``model.ort`` and ``required_operators.config`` beside ``onnx_path``; returns both paths."""
    from onnxruntime.tools.ort_format_model.utils import create_config_from_models

    graph_bytes = sum(path.stat().st_size for path in passes.graph_files(onnx_path))
    if graph_bytes > ORT_FORMAT_MAX_BYTES:
        raise EdgefoldError(f"the .ort format holds at most 2 GiB and this graph is {graph_bytes:,} bytes: quantise it "
                            "(--quantize int8 or int4), compress it further, or leave out --format ort")
    ort_path = onnx_path.with_suffix(".ort")
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.optimized_model_filepath = str(ort_path)
    options.add_session_config_entry("session.save_model_format", "ORT")
    try:
        ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"],
                             disabled_optimizers=["NchwcTransformer"])
    except Exception as error:  # onnxruntime raises several unrelated types
        raise EdgefoldError(f"onnxruntime could not write the .ort format: {error}") from error
    config_path = onnx_path.with_name(OPERATORS_CONFIG)
    logging.getLogger("ort_format_model.utils").setLevel(logging.WARNING)  # it announces the file on stderr
    create_config_from_models([ort_path], config_path, enable_type_reduction=True)
    # The config's header names the models by absolute path: the staging folder's, meaningless once moved.
    lines = config_path.read_text(encoding="utf-8").splitlines()
    body = [line for line in lines if not line.startswith("# - ")]
    body.insert(1, f"# - {ort_path.name}")
    config_path.write_text("\n".join(body) + "\n", encoding="utf-8")
    return ort_path, config_path
