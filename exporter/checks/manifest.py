"""Build the manifest of an export and the human summary printed after it."""

from __future__ import annotations

import datetime as _dt
import json
from importlib import metadata
from pathlib import Path

from edgefold.exporter.config import CompressionConfig
from edgefold.exporter.methods import NO_COMPRESSION
from edgefold.exporter.onnx.export import backend
from edgefold.exporter.planning.plan import Plan
from edgefold.exporter.records import ModuleRecord
from edgefold.exporter.source.architectures import ALL_KINDS
from edgefold.exporter.source.loading import SourceModel
from edgefold.runtime.manifest import CHECKSUMS, CONTENTS, MANIFEST_NAME, SCHEMA, SCHEMA_VERSION, checksums

_VERSIONED = ("edgefold", "torch", "transformers", "optimum", "optimum-onnx", "onnx", "onnxscript", "onnxruntime",
              "numpy")


def package_versions() -> dict[str, str | None]:
    versions = {}
    for name in _VERSIONED:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def build_manifest(source: SourceModel, config: CompressionConfig, records: list[ModuleRecord], *,
                   model_params: tuple[int, int], files: list[Path], parity: dict, fidelity: dict,
                   shared_weights: int, calibration: dict | None, graph: dict, seconds: dict[str, float]) -> dict:
    statuses = [r.status for r in records]
    return {
        "schema": SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "source": {
            "model": source.name,
            "model_type": source.config.model_type,
            "architectures": source.config.architectures,
            "weight_files": [f.name for f in source.weight_files],
            "weights_sha256": source.weights_sha256(),
        },
        "task": source.task,
        "method": config.method,
        # "factorised": low-rank factors replace the weights in the graph, fewer bytes AND fewer FLOPs.
        # "storage": the file holds a compressed form decoded to the dense weights at load: fewer bytes only.
        # "structured": whole units (FFN neurons, heads) removed, the matrices narrower and dense: both too.
        "compression": "none" if config.method == NO_COMPRESSION else config.build_method().compression,
        "targets": [kind for kind in ALL_KINDS if kind in config.targets],
        "ratio": None if config.size_budget is not None else config.ratio,
        "seed": config.seed,
        "rank_multiple": config.rank_multiple,
        # uniform: every module keeps 1/ratio; sensitivity: one budget for all, ranks from measured fidelity loss
        "allocation": config.allocation,
        "size_budget": config.size_budget,
        "frequency_aware": config.uses_frequency,
        "method_options": config.method_options,
        "bias_correction": config.bias_correction,
        # a mix: the configs applied after this one, each to other targets of the model compressed so far
        "then": _stage(config.then),
        # per module: kept or factorised, and at which precision; `edgefold export --plan edgefold.json` replays it
        "plan": config.plan.as_dict() if config.plan else None,
        "calibration": calibration,
        "modules": [r.as_dict() for r in records],
        "totals": {
            "targeted_params_before": sum(r.params_before for r in records),
            "targeted_params_after": sum(r.params_after for r in records),
            "modules_factorised": statuses.count("factorised"),
            "modules_storage_compressed": statuses.count("storage"),
            "modules_pruned": statuses.count("pruned"),
            "modules_left_dense": statuses.count("dense"),
            "model_params_before": model_params[0],
            "model_params_after": model_params[1],
            "bytes_before": source.weight_bytes,
            "bytes_after": sum(f.stat().st_size for f in files),
            "shared_weights_stored_once": shared_weights,
        },
        "files": {f.name: f.stat().st_size for f in files},
        "parity": parity,
        "fidelity": fidelity,
        # After the fold and its parity check: which fusions were kept (measured), what was quantised and how far
        # it moved the outputs, and the mobile format.
        "optimization": graph.get("optimization"),
        "quantization": graph.get("quantization"),
        "ort_format": graph.get("ort_format"),
        # edgefold prune: the sub-network's masks, how they were found, and the bytes it takes to download
        "sparsity": graph.get("sparsity"),
        "seconds": seconds,
        "exporter": backend(),  # which ONNX exporter wrote the graph: "transformers" or "optimum"
        "versions": package_versions(),
    }


def _stage(config: CompressionConfig | None) -> dict | None:
    if config is None:
        return None
    return {"method": config.method, "compression": config.build_method().compression,
            "targets": [kind for kind in ALL_KINDS if kind in config.targets], "ratio": config.ratio,
            "allocation": config.allocation, "method_options": config.method_options,
            "bias_correction": config.bias_correction, "then": _stage(config.then)}


def write_manifest(folder: Path, manifest: dict) -> Path:
    """Write ``edgefold.json`` last, listing every file of the folder (what ``--overwrite`` may later replace)
    with its size and SHA-256 (what ``bench``, ``validate`` and ``unpack`` check before use)."""
    written = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")
                     if p.is_file() and p.name != MANIFEST_NAME)
    manifest[CONTENTS] = sorted([*written, MANIFEST_NAME])
    manifest[CHECKSUMS] = checksums(folder, written)
    path = folder / MANIFEST_NAME
    path.write_text(json.dumps(manifest, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    return path


def format_summary(manifest: dict, output_dir: Path) -> str:
    """What was gained and what was lost, in a few lines."""
    if manifest.get("sparsity"):
        return _subnetwork_summary(manifest, output_dir)
    t = manifest["totals"]
    storage, pruned = t.get("modules_storage_compressed"), t.get("modules_pruned")
    lines = [
        f"exported {manifest['source']['model']} ({manifest['task']}) -> {output_dir}",
        _plan_line(manifest) if manifest.get("plan") else
        f"  method {manifest['method']} {_budget(manifest)} on {', '.join(manifest['targets'])}: "
        + _then(manifest.get("then"))
        + (f"{pruned} module(s) pruned (narrower dense matrices), " if pruned else "")
        + (f"{t['modules_factorised']} module(s) factorised, " if t["modules_factorised"] or not pruned else "")
        + (f"{storage} storage-compressed (decoded when the session starts: a smaller file, dense weights in "
           "memory, no FLOP saving), " if storage else "")
        + f"{t['modules_left_dense']} left dense",
        f"  targeted weights  {t['targeted_params_before']:>12,} -> {t['targeted_params_after']:>12,} params "
        f"({_ratio(t['targeted_params_before'], t['targeted_params_after'])})",
        f"  whole model       {t['model_params_before']:>12,} -> {t['model_params_after']:>12,} params "
        f"({_ratio(t['model_params_before'], t['model_params_after'])})",
        f"  bytes on disk     {t['bytes_before']:>12,} -> {t['bytes_after']:>12,} "
        f"({_ratio(t['bytes_before'], t['bytes_after'])})",
        *_check_lines(manifest),
    ]
    if manifest.get("allocation") == "sensitivity":
        lines.append("  ranks allocated by sensitivity (module: rank, kept units, or dense):")
        lines += [f"    {m['name']}: {_allocated(m)}" for m in manifest["modules"]]
    return "\n".join(lines + _graph_lines(manifest))


def _check_lines(manifest: dict) -> list[str]:
    fid, par = manifest["fidelity"], manifest["parity"]
    return [f"  fidelity to the original ({fid['compared']}, {fid['items']} items): "
            f"mean cosine {fid['mean_cosine']:.4f}, min {fid['min_cosine']:.4f}",
            f"  parity ONNX vs torch: max abs diff {par['max_abs_diff']:.2e} (tolerance {par['atol']:.0e}) ok"]


def _subnetwork_summary(manifest: dict, output_dir: Path) -> str:
    found = manifest["sparsity"]
    how = found["method"] + (f" ({found['mask']})" if found.get("mask") else "")
    training = found["training"]
    trained = (f"; {len(found['rounds'])} round(s) of {found['steps']} training steps "
               f"({found['objective']}), rewound each round" if found["rounds"] else "")
    if training.get("steps"):
        trained += f"; then {training['steps']} training steps ({found['objective']})"
    lines = [
        f"exported {manifest['source']['model']} ({manifest['task']}) -> {output_dir}",
        f"  sub-network: {how}, {found['weights_pruned']:,} of {found['weights_targeted']:,} weights pruned "
        f"({found['sparsity_measured']:.1%}) in {', '.join(found['targets'])}{trained}",
        "  masks: mask.safetensors" + (f", masks/ ({len(found['levels'])} levels)" if found["levels"] else ""),
        f"  bytes on disk     {found['graph_bytes']:>12,} (as dense: onnxruntime's CPU kernels multiply the zeros;"
        " memory and latency are unchanged)",
        f"  zipped download   {found['graph_zipped_bytes']:>12,} (deflate: "
        f"{found['graph_zipped_bytes'] / found['graph_bytes']:.2f} of the file; a dense graph zips too: compare "
        "with the dense export's zipped bytes)",
        *_check_lines(manifest),
    ]
    return "\n".join(lines + _graph_lines(manifest))


def _graph_lines(manifest: dict) -> list[str]:
    lines = []
    optimization = manifest.get("optimization")
    if optimization and optimization["mode"] != "none":
        kept = optimization["chosen"]
        fused = optimization["candidates"][kept]["fused_ops"]
        lines.append(f"  graph optimisation ({optimization['mode']}): kept {kept}, fused kernels "
                     f"{', '.join(f'{op} x{n}' for op, n in fused.items()) or 'none'}")
    quantization = manifest.get("quantization")
    if quantization:
        weights = quantization["weights"]
        if quantization["scheme"] == "mixed":  # per module: how many at each precision
            weights = ", ".join(f"{precision} x{n}" for precision, n in quantization["modules"].items())
        lines.append(f"  quantised {quantization['scheme']} ({weights}): mean cosine "
                     f"{quantization['fidelity_vs_fp32']['mean_cosine']:.4f} to the fp32 graph, "
                     f"{quantization['fidelity_vs_original']['mean_cosine']:.4f} to the original")
    lines += _gate_lines(manifest)
    ort_format = manifest.get("ort_format")
    if ort_format:
        lines.append(f"  mobile format: {ort_format['file']} ({ort_format['bytes']:,} bytes) and "
                     f"{ort_format['operators_config']}; max abs diff to the .onnx graph "
                     f"{ort_format['max_abs_diff_vs_onnx']:.2e}")
    return lines


def _plan_line(manifest: dict) -> str:
    chosen = Plan.from_dict(manifest["plan"]).describe()
    return (f"  plan per module: {chosen}; {manifest['totals']['modules_factorised']} module(s) factorised, "
            "the rest dense")


def _gate_lines(manifest: dict) -> list[str]:
    """What the search chose and what it measured, or the gates an explicit recipe passed."""
    def gates(results: list[dict]) -> str:
        return ", ".join(f"{g['metric']} {g['value']:.4f} {g['op']} {g['threshold']:g}" + _bound(g) for g in results)

    search = manifest.get("search")
    if manifest.get("gates"):
        return [f"  gates on {manifest['gates']['data']['source']}: {gates(manifest['gates']['gates'])} (all pass)"]
    if not search:
        return []
    splits, reference, latency = search["splits"], search["reference"], search["latency"]
    lines = [f"  search ({search['mode']}, objective {search['objective']}): chose {search['chosen']} "
             f"({manifest['totals']['bytes_after'] / reference['bytes']:.3f} of the original's bytes)",
             f"  gates on the selection split ({splits['selection']} items): {gates(search['selection']['gates'])}",
             f"  gates on the check split ({splits['check']} items, never seen by the search): "
             f"{gates(search['check']['gates'])}"]
    domain = search.get("second_domain")
    if domain:
        lines.append(f"  gates on a second domain, {domain['check']['data']['source']} "
                     f"({domain['check']['data']['items']} items, never seen by the search): "
                     f"{gates(domain['check']['gates'])}")
    measured = search.get("chosen_latency_ms")
    if measured:
        predicted = f", predicted {latency['predicted_ms']:.2f} ms" if latency.get("predicted_ms") else ""
        lines.append(f"  latency (batch 1 x {latency['tokens']}, {latency['threads']} thread): measured "
                     f"{measured:.2f} ms{predicted}; the original {reference['latency_ms']:.2f} ms")
    lines.append("  every candidate verified: frontier.md and frontier.png in the folder")
    return lines


def _bound(gate: dict) -> str:
    """`` (95% bound 0.9580, holds in 100% of resamples)``, where the gate has a bootstrap bound."""
    if gate.get("bound") is None:
        return ""
    return f" ({gate['level']:.0%} bound {gate['bound']:.4f}, holds in {gate['confidence']:.0%} of resamples)"


def _allocated(module: dict) -> str:
    fit = module["fit"]
    if module["status"] == "pruned":
        return f"{fit['units_kept']} of {fit['units']} {fit['unit']}s"
    return str(module["rank"] or "dense")


def _then(stage: dict | None) -> str:
    """The configs of a mix after the first, as ``then METHOD at ratio R on TARGETS``."""
    text = ""
    while stage:
        text += f"then {stage['method']} {_budget(stage)} on {', '.join(stage['targets'])}; "
        stage = stage["then"]
    return text


def _budget(manifest: dict) -> str:
    """What the user asked for: a size budget in bytes, or a ratio (per module, or shared by sensitivity)."""
    if manifest.get("size_budget") is not None:
        return f"within a size budget of {manifest['size_budget']:,} bytes"
    return f"at ratio {manifest['ratio']:g}"


def _ratio(before: int, after: int) -> str:
    return f"{before / after:.2f}x smaller" if after else "nothing targeted"
