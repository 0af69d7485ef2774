"""``export()``: source model -> compressed torch model -> verified ONNX folder, written all at once."""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import sys
import time
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

import onnx
import torch
from torch import nn

from edgefold.exporter.calibration.batches import TextBatch, max_text_length, onnx_outputs, tokenize, torch_outputs
from edgefold.exporter.calibration.corpus import Calibration
from edgefold.exporter.calibration.streaming import streamed_outputs
from edgefold.exporter.checks.manifest import build_manifest, write_manifest
from edgefold.exporter.checks.verify import fidelity, max_abs_difference
from edgefold.exporter.compress import compress_
from edgefold.exporter.config import CompressionConfig
from edgefold.exporter.graph.config import GraphConfig
from edgefold.exporter.graph.optimize import optimize
from edgefold.exporter.graph.steps import GraphInputs, convert_to_ort, quantize_graph
from edgefold.exporter.methods import NO_COMPRESSION, LowRankFactors
from edgefold.exporter.nn.layers import LowRankEmbedding
from edgefold.exporter.nn.swap import tied_head
from edgefold.exporter.onnx import decoding, passes
from edgefold.exporter.onnx.export import export_onnx
from edgefold.exporter.onnx.reuse import ExportedGraphs, graph_cache
from edgefold.exporter.source.architectures import spec_for
from edgefold.exporter.source.lazy import LazyWeights
from edgefold.exporter.source.loading import SourceModel, inspect_model, load_model, load_tokenizer
from edgefold.exporter.source.output import check_output_dir, staged_folder
from edgefold.exporter.streaming import check_streamable, compress_streamed_
from edgefold.exporter.subnetworks import SparsityConfig, sparsify_, zipped_bytes
from edgefold.exporter.subnetworks.training import check_labels
from edgefold.runtime import EdgefoldError
from edgefold.runtime.texts import shipped_texts

#: fp32 ONNX against fp32 torch: kernels differ in summation order, nothing more.
DEFAULT_PARITY_ATOL = 1e-3
#: Calibration items GPTQ fits on: its second moments settle well before this many sentences.
GPTQ_TEXTS = 512


def export(model: str | Path, output_dir: str | Path, config: CompressionConfig | None = None,
           graph: GraphConfig | None = None, *, task: str = "auto", overwrite: bool = False,
           trust_remote_code: bool = False, parity_atol: float = DEFAULT_PARITY_ATOL, progress: bool = True,
           calibration: Calibration | None = None, fitted: Mapping[str, LowRankFactors] | None = None,
           sparsity: SparsityConfig | None = None, streamed: bool = False,
           reuse: ExportedGraphs | None = None) -> dict:
    """Compress ``model`` (a folder, a bundled name or a hub id) and write a verified ONNX folder.

    ``graph`` says what happens to the folded graph after its parity check against torch (see
    :class:`GraphConfig`): fusions kept where they are measured faster, quantisation, the mobile format. Returns
    the manifest, also written as ``edgefold.json``. Raises :class:`EdgefoldError` on bad input or a failed
    check, in which case nothing is written and an existing ``output_dir`` is left as it was.

    ``calibration`` replaces ``config.calibration``'s text (a search passes its fit split); ``fitted`` gives
    the factors of some modules of ``config.plan``, fitted before (see :func:`compress_`).

    ``sparsity`` finds a sub-network instead of compressing (``edgefold prune``): its masks are written beside the
    graph, and the manifest says what they cost to download. IMP keeps its levels in a folder beside
    ``output_dir`` until the export succeeds, so that a run that stops resumes from its last level.

    ``streamed``: the original model is never whole in memory (models larger than memory): its weights are read
    from safetensors one layer at a time for the reference outputs and the compression (see
    :func:`compress_streamed_`), and the ONNX export holds the compressed model only. Methods that need the
    whole model at once are refused before any work; the factors and outputs are those of an unstreamed run.

    ``reuse`` keeps exported graphs: a network exported before through the same ``reuse`` is copied, not exported
    again (a search's candidates that differ only in their precisions). ``EDGEFOLD_GRAPH_CACHE`` names a folder
    that takes its place for every export (see ``exporter.onnx.reuse``).
    """
    graph = graph or GraphConfig()
    if sparsity is not None and config is not None and config.method != NO_COMPRESSION:
        raise EdgefoldError("a sub-network is pruned from the original weights: not combined with --method "
                            f"{config.method}")
    config = graph.adapt(config or CompressionConfig(method=NO_COMPRESSION if sparsity else "svd"))
    output_dir = Path(output_dir)
    if not (isinstance(parity_atol, (int, float)) and 0 <= parity_atol < math.inf):
        raise EdgefoldError(f"the parity tolerance must be a finite number of 0 or more (got {parity_atol!r})")
    needs_calibration = config.needs_calibration or graph.needs_calibration
    if config.calibration is not None and not needs_calibration:
        raise EdgefoldError(f"--calibration is not used by method {config.method} here: it serves svd-whitened, "
                            "svd-fisher, ae, --frequency, --allocation sensitivity and --quant-algorithm gptq")
    if streamed:
        if sparsity is not None:
            raise EdgefoldError("a streamed run cannot find a sub-network: pruning trains the whole model")
        check_streamable(config, fitted)
    reuse = graph_cache() or reuse  # checked before any work
    step = _Steps(progress, total=5 + len(graph.steps))
    source = inspect_model(str(model), task, trust_remote_code)
    check_output_dir(output_dir, source.path, overwrite)
    if sparsity is not None and sparsity.labels is not None:
        check_labels(source.config, source.task, list(sparsity.labels))
    if calibration is None and needs_calibration:
        calibration = Calibration.load(config.calibration)

    step("load", f"loading {source.name} ({source.config.model_type}, {source.task})")
    torch.manual_seed(config.seed)
    weights = LazyWeights(source) if streamed else None
    network = weights.skeleton(trust_remote_code) if weights else load_model(source, trust_remote_code)
    if graph.precisions:
        graph = replace(graph, precisions=with_tied_heads(network, graph.precisions))
    tokenizer = load_tokenizer(source)
    batches = tokenize(tokenizer, shipped_texts(), max_length=max_text_length(network))
    reference = streamed_outputs(network, weights, batches) if weights else torch_outputs(network, batches)
    params_before = _count_params(network)

    subnetwork, checkpoints = None, _checkpoints_folder(output_dir)
    if sparsity is not None:
        step("compress", f"finding a sub-network ({sparsity.method}"
             + (f", sparsity {sparsity.sparsity:g})" if sparsity.sparsity else f", {sparsity.mask})"))
        subnetwork = sparsify_(network, sparsity, tokenizer, source=source.name, checkpoints_folder=checkpoints,
                               fingerprint=_fingerprint(source, sparsity), progress=progress)
        records = []
    else:
        step("compress", f"compressing as planned ({config.plan.describe()})" if config.plan else
             f"compressing with {config.method} at ratio {config.ratio:g}")
        records = compress_streamed_(network, weights, config, tokenizer, calibration, progress) if weights else \
            compress_(network, config, tokenizer=tokenizer, calibration=calibration, progress=progress, fitted=fitted)
    compressed = torch_outputs(network, batches)
    fidelity_result = fidelity(source.task, reference, compressed, batches)

    with staged_folder(output_dir) as staging:
        step("export", "exporting to ONNX")
        onnx_path, shared = _write_graph(network, source.task, staging, tokenizer, records, reuse)

        step("parity", "checking parity of ONNX against torch")
        fp32_outputs = onnx_outputs(onnx_path, batches)
        parity = _check_parity(fp32_outputs, compressed, batches, parity_atol)

        inputs = GraphInputs(batches, fp32_outputs, reference, source.task, parity_atol,
                             _quantization_text(graph, calibration, tokenizer, network))
        done: dict[str, dict] = {}
        if graph.optimize != "none":
            step("optimize", f"optimising the graph ({graph.optimize}: fusions kept where measured faster)")
            done["optimization"] = optimize(onnx_path, graph.optimize, network.config,
                                            spec_for(source.config.model_type).ort_model_type, inputs,
                                            quantize=graph.quantize)
        if graph.quantizes:
            step("quantize", f"quantising to {graph.quantize if graph.quantize != 'none' else 'planned precisions'}")
            done["quantization"] = quantize_graph(onnx_path, graph, inputs)
        files = passes.graph_files(onnx_path)  # with its external data, however the steps left it
        if "ort" in graph.formats:
            step("ort", "writing the onnxruntime mobile format (.ort) and its operator list")
            done["ort_format"] = convert_to_ort(onnx_path, inputs)

        if subnetwork is not None:
            subnetwork.write(staging)
            done["sparsity"] = {**subnetwork.describe(), "graph_bytes": sum(f.stat().st_size for f in files),
                                "graph_zipped_bytes": zipped_bytes(files)}
        step("manifest", "writing the manifest")
        manifest = build_manifest(source, config, records, model_params=(params_before, _count_params(network)),
                                  files=files, parity=parity, fidelity=fidelity_result, shared_weights=shared,
                                  calibration=calibration.as_dict() if calibration else None, graph=done,
                                  seconds=step.timings())
        manifest["streamed"] = streamed  # the original read one layer at a time
        write_manifest(staging, manifest)
    if subnetwork is not None:
        shutil.rmtree(checkpoints, ignore_errors=True)  # the levels are in the folder now
    return manifest


def _quantization_text(graph: GraphConfig, calibration: Calibration | None, tokenizer,
                       network: nn.Module) -> list[TextBatch] | None:
    """What GPTQ fits on: the fit split of the calibration text, at most GPTQ_TEXTS items."""
    if not graph.needs_calibration:
        return None
    return tokenize(tokenizer, calibration.fit_texts[:GPTQ_TEXTS], max_length=max_text_length(network))


def _checkpoints_folder(output_dir: Path) -> Path:
    """Beside the output folder, as its staging folder is: IMP's levels while the run is unfinished."""
    return output_dir.absolute().parent / f".{output_dir.name[:32]}.imp-levels"


def _fingerprint(source: SourceModel, sparsity: SparsityConfig) -> str:
    """Names the run a checkpoint folder belongs to: the weights, the settings and the text."""
    described = json.dumps([source.weights_sha256(), source.task, sparsity.describe(), sparsity.texts,
                            sparsity.labels], sort_keys=True)
    return hashlib.sha256(described.encode()).hexdigest()


def _write_graph(network: nn.Module, task: str, folder: Path, tokenizer, records,
                 reuse: ExportedGraphs | None = None) -> tuple[Path, int]:
    """Export, store shared weights once, refuse dense copies; returns the graph's path and the weights shared.
    With ``reuse``, a network it already holds is copied from there, not exported again."""
    key = reuse.key(network, task, tokenizer) if reuse is not None else None
    if key is not None and (shared := reuse.restore(key, folder)) is not None:
        return folder / "model.onnx", shared
    onnx_path = export_onnx(network, task, folder, tokenizer)
    graph = onnx.load(str(onnx_path))
    decoding.store_decoded_weights(graph, network)  # storage-compressed weights: decoded when the session starts
    shared = passes.store_shared_weights_once(graph)
    passes.check_no_dense_copies(graph, {r.shape for r in records if r.status == "factorised"},
                                 [tuple(t.shape) for t in _tensors(network)])
    passes.save(graph, onnx_path)
    if key is not None:
        reuse.keep(key, folder, shared)
    return onnx_path, shared


def with_tied_heads(network: nn.Module, precisions: Mapping[str, str]) -> dict[str, str]:
    """A head that shares the embedding table (GPT-2's lm_head) takes the table's precision: one table stored,
    read by both. Left at fp32, it would keep the fp32 table beside the quantised one."""
    precisions = dict(precisions)
    for name, module in network.named_modules():
        head = tied_head(network, module) if name in precisions else None
        if head:
            precisions.setdefault(head[0], precisions[name])
    return precisions


def _check_parity(onnx_out: list, torch_out: list, batches: list, atol: float) -> dict:
    difference = max_abs_difference(onnx_out, torch_out, batches)
    if not difference <= atol:
        raise EdgefoldError(f"parity check failed: ONNX differs from the compressed torch model by "
                            f"{difference:.3g} (tolerance {atol:g}); nothing was written")
    return {"max_abs_diff": difference, "atol": atol, "texts": sum(len(b.input_ids) for b in batches),
            "runtime": "onnxruntime CPUExecutionProvider"}


class _Steps:
    """Numbered progress lines on stderr (the per-module bar comes from tqdm), and the seconds each step took."""

    def __init__(self, enabled: bool, total: int):
        self.enabled, self.done, self.total = enabled, 0, total
        self.seconds: dict[str, float] = {}
        self._current, self._started = None, time.perf_counter()

    def __call__(self, name: str, what: str) -> None:
        self._close()
        self._current = name
        self.done += 1
        if self.enabled:
            print(f"edgefold: [{self.done}/{self.total}] {what}", file=sys.stderr, flush=True)

    def _close(self) -> None:
        now = time.perf_counter()
        if self._current:
            self.seconds[self._current] = round(now - self._started, 3)
        self._started = now

    def timings(self) -> dict[str, float]:
        self._close()
        self._current = None
        return self.seconds


def _tensors(network: nn.Module) -> list[torch.Tensor]:
    return [*network.parameters(), *network.buffers()]


def _count_params(network: nn.Module) -> int:
    """Parameters (shared ones once) plus the slot lookups of exact embedding rows, which are stored too."""
    slots = sum(m.slot.numel() for m in network.modules() if isinstance(m, LowRankEmbedding) and m.slot is not None)
    return sum(p.numel() for p in network.parameters()) + slots
