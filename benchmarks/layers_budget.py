"""Layer methods at the same budget on the real all-MiniLM-L6-v2: the encoder's Linears keep 75% / 50%.

Every variant keeps a share of ALL the encoder's Linear parameters (6 layers x (4 x 384 x 384 attention +
2 x 384 x 1536 FFN)), whatever it targets: whitened SVD on attention + FFN (alone, with bias correction, fitted
sequentially against anchored targets with bias correction), FFN neurons pruned (the FFN keeps
``(kept - 1/3) / (2/3)``), attention heads pruned (the attention keeps ``(kept - 2/3) / (1/3)``: n/a at 50%),
and a mix (FFN neurons pruned, then the attention factorised on the pruned model, both at the budget's share);
each with uniform ranks/widths and with ranks/widths allocated by measured sensitivity. Each is exported with
``edgefold.exporter.export`` (fp32, unfused: ``GRAPH_CONFIG``), then quantised to int8 on top (onnxruntime
dynamic int8, as ``--quantize int8``) into a copy of the folder; both are measured through their ONNX graphs in
onnxruntime, against the original fp32 export and against the original quantised alone ("int8 alone"):

- fidelity and retrieval on the shipped evaluation text (runtime/data/evaluation.txt, 1,225 lines) and on a
  second human-written domain, Python standard-library docstrings (``results/stdlib_docstrings.jsonl``, 867
  summary/body pairs, see ``stdlib_text.py``; its 1,734 summaries and bodies are embedded): cosine of sentence
  embeddings to the original (mean, min), top-10 neighbour agreement, Spearman of pairwise similarities,
  recall@1 and top-1 agreement with the original's retrieval (evaluation text: the first line of each 5-line
  cluster finds the second among all second lines; docstrings: each summary finds its body among all bodies).
  Neither text is calibration text: fits, statistics and the sensitivity allocation use only the shipped
  calibration text;
- bytes on disk; the share of encoder Linear parameters kept (= the Linears' FLOP ratio) and a whole-model FLOP
  ratio at 128 tokens (attention score/context matmuls included); fit time (the manifest's compress seconds);
- latency: batch 1 x 128 tokens, every model taking turns in each round, at 1 and 2 intra-op threads (blocks of
  rounds alternate between the two), medians; ratios to int8 alone measured in the same run. Peak RSS: a fresh
  process opens the graph (1 thread) and runs it three times, its VmHWM (Linux).

    python benchmarks/layers_budget.py                  # every variant; about 45 minutes on 2 quiet cores
    python benchmarks/layers_budget.py --list           # the variants (names for --only) and their settings
    python benchmarks/layers_budget.py --only prune-ffn,"svd-whitened+bias allocated 0.5"
                                                        # measure those rows, merge them into the results
    python benchmarks/layers_budget.py --skip "svd-whitened-seq+bias allocated"    # all but those, afresh
    python benchmarks/layers_budget.py --render         # table and plot again from the JSON
    python benchmarks/layers_budget.py --results /tmp/lb --only "svd-whitened uniform 0.75"   # a trial

The results directory is ``--results`` (or $EDGEFOLD_BENCH_RESULTS), by default benchmarks/results; a run
writes layers_budget.json after every variant (partial, latencies come last), then .md and .png.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
from ae_vs_svd import MODEL, quality  # noqa: E402
from stdlib_text import RESULT as STDLIB_JSONL  # noqa: E402

from edgefold.exporter import CompressionConfig, GraphConfig, export  # noqa: E402
from edgefold.exporter.graph.quantize import quantize  # noqa: E402
from edgefold.exporter.methods import WhitenedOptions  # noqa: E402
from edgefold.exporter.source.loading import resolve_model_path  # noqa: E402
from edgefold.runtime import EdgefoldError  # noqa: E402
from edgefold.runtime.folder import GRAPH, ExportedFolder  # noqa: E402
from edgefold.runtime.session import make_feed, open_session  # noqa: E402
from edgefold.runtime.texts import shipped_texts  # noqa: E402
from edgefold.runtime.validate import _retrieval_ranks, sentence_embeddings  # noqa: E402

DEFAULT_RESULTS = Path(__file__).resolve().parent / "results"
NAME = "layers_budget"
KEPT = (0.75, 0.5)  # share of ALL encoder Linear parameters kept
TOKENS = 128  # sequence length of the latency runs and of the whole-model FLOP estimate
THREADS = (1, 2)
CLUSTER = 5  # evaluation.txt: clusters of 5 lines, the first two a paraphrase pair
#: Goals of the issue: mean cosine (evaluation text, fp32) at each budget; with int8 on top, a variant this many
#: times faster than int8 alone at this mean cosine; structured variants' latency ratio within this of their FLOPs.
GOAL_COSINE = {0.75: 0.97, 0.5: 0.92}
GOAL_SPEEDUP, GOAL_SPEEDUP_COSINE = 1.5, 0.95
GOAL_FLOP_TOLERANCE = 0.10
#: Graphs as exported, unfused: every variant and its int8 copy in the same form. ``optimize="auto"`` would pick a
#: fusion set per graph by timing it (noisy on a shared machine), and its onnxruntime fusions are chosen for the
#: precision of the export: EmbedLayerNormalization keeps the embedding table from int8 quantised on top (a 53 MB
#: "int8" graph). onnxruntime still fuses at session start (ORT_ENABLE_ALL) what it can.
GRAPH_CONFIG = GraphConfig(optimize="none")
#: A row counts for a budget if it keeps at most this much more than the budget (rank/width rounding).
BUDGET_SLACK = 0.005

#: Families (``variants`` orders the rows by cost). ``targets`` decides how hard each target is compressed for the
#: same share of all encoder Linears (see ``ratio_for``).
FAMILIES: dict[str, dict] = {
    "svd-whitened": dict(method="svd-whitened", targets="attention,ffn"),
    "svd-whitened+bias": dict(method="svd-whitened", targets="attention,ffn", bias_correction=True),
    "svd-whitened-seq+bias": dict(method="svd-whitened", targets="attention,ffn", bias_correction=True,
                                  options=WhitenedOptions(sequential=True)),
    "prune-ffn": dict(method="prune-ffn", targets="ffn"),
    "prune-heads": dict(method="prune-heads", targets="attention"),
    # A mix (``then``: a second config on other targets, fitted on the model compressed so far): FFN neurons
    # pruned, then the attention factorised with whitened SVD and bias correction; every stage at the same ratio.
    "mix-prune-ffn+svd-whitened-attn": dict(method="prune-ffn", targets="ffn",
                                           then=dict(method="svd-whitened", targets="attention", bias_correction=True)),
    # Both structured: FFN neurons pruned, then heads, fitted on the model with narrower FFNs.
    "mix-prune-ffn+prune-heads": dict(method="prune-ffn", targets="ffn", then=dict(method="prune-heads",
                                                                                  targets="attention")),
}
STRUCTURED = ("prune-ffn", "prune-heads")
MIXES = ("mix-prune-ffn+prune-heads", "mix-prune-ffn+svd-whitened-attn")


@dataclass(frozen=True)
class Geometry:
    """The encoder's Linears, from config.json (BERT-like: q, k, v, attention output, FFN in and out)."""

    layers: int
    hidden: int
    ffn: int

    @classmethod
    def of(cls, model_path: Path) -> Geometry:
        config = json.loads((model_path / "config.json").read_text())
        return cls(config["num_hidden_layers"], config["hidden_size"], config["intermediate_size"])

    @property
    def attention_params(self) -> int:
        return self.layers * 4 * self.hidden * self.hidden

    @property
    def ffn_params(self) -> int:
        return self.layers * 2 * self.hidden * self.ffn

    @property
    def linear_params(self) -> int:
        return self.attention_params + self.ffn_params

    def share(self, targets: str) -> float:
        """The share of all encoder Linear parameters ``targets`` hold."""
        held = {"attention": self.attention_params, "ffn": self.ffn_params}
        return sum(held[t] for t in targets.split(",")) / self.linear_params

    def model_macs(self, linear_params: int, attention_width: int) -> int:
        """Multiply-accumulates per token at ``TOKENS`` tokens: one per Linear parameter (dense rows x cols,
        factorised r x (rows + cols), pruned the narrower dense) plus the attention scores and context
        (2 x TOKENS x the attention width, summed over layers). Norms, activations, softmax left out."""
        return linear_params + 2 * TOKENS * attention_width


def all_targets(settings: dict) -> str:
    """The targets of a family's config and of the configs after it (``then``), comma-separated."""
    then = settings.get("then")
    return settings["targets"] + ("," + all_targets(then) if then else "")


def ratio_for(share: float, kept: float) -> float | None:
    """The ratio R a method acting on ``share`` of the encoder Linears needs for all of them to keep ``kept``;
    None where out of reach (it would have to keep nothing, or less)."""
    targets_keep = (kept - (1 - share)) / share
    return round(1 / targets_keep, 4) if targets_keep > 1e-9 else None


@dataclass(frozen=True)
class Variant:
    """One row: a family at a budget, its ranks uniform or allocated by sensitivity; ``ratio`` None: n/a."""

    family: str
    ranks: str
    kept: float
    ratio: float | None
    settings: dict = field(compare=False)

    @property
    def name(self) -> str:
        return f"{self.family} {self.ranks} {self.kept:g}"

    def config(self) -> CompressionConfig:
        """The export's settings; an unknown method or option fails here, before any work."""
        allocation = "sensitivity" if self.ranks == "allocated" else "uniform"

        def build(settings: dict) -> CompressionConfig:
            settings = dict(settings)
            then = settings.pop("then", None)
            return CompressionConfig(ratio=self.ratio, allocation=allocation, **settings,
                                     **({"then": build(then)} if then else {}))

        try:
            return build(self.settings)
        except (EdgefoldError, TypeError) as error:  # TypeError: an edgefold without mixes (``then``)
            raise SystemExit(f"variant {self.name!r} cannot be built with this edgefold: {error}") from None


def variants(geometry: Geometry) -> list[Variant]:
    """Cheap rows first: uniform before allocated (each allocated export measures every module at several
    ranks), structured allocations (a few widths per layer) before mixes and factorised ones, 75% before 50%."""
    sequential = [f for f in FAMILIES if "-seq" in f]  # statistics measured again for every stage of the fit
    factorised = [f for f in FAMILIES if f not in (*STRUCTURED, *MIXES, *sequential)]
    rows = []
    for ranks in ("uniform", "allocated"):
        families = ([*factorised, *STRUCTURED, *MIXES, *sequential] if ranks == "uniform" else
                    [*STRUCTURED, *MIXES, *factorised, *sequential])
        for family in families:
            for kept in KEPT:
                settings = FAMILIES[family]
                rows.append(Variant(family, ranks, kept, ratio_for(geometry.share(all_targets(settings)), kept),
                                    settings))
    return rows


def named(all_variants: list[Variant], names: str, flag: str) -> list[Variant]:
    """Comma-separated names, each the first words of rows' names ("prune-ffn", "prune-ffn allocated",
    "prune-ffn allocated 0.5")."""
    chosen = []
    for term in (t.strip() for t in names.split(",") if t.strip()):
        words = term.split()
        matches = [v for v in all_variants if v.name.split()[:len(words)] == words]
        if not matches:
            raise SystemExit(f"{flag} {term!r} names no variant; the variants are:\n  "
                             + "\n  ".join(v.name for v in all_variants))
        chosen += [v for v in matches if v not in chosen]
    return chosen


def select(all_variants: list[Variant], only: str | None, skip: str | None = None) -> list[Variant]:
    """``--only`` these rows (all when None), less the ``--skip`` ones, in the run's order."""
    chosen = named(all_variants, only, "--only") if only else all_variants
    skipped = named(all_variants, skip, "--skip") if skip else []
    return [v for v in all_variants if v in chosen and v not in skipped]


# --- measuring --------------------------------------------------------------------------------------------


@dataclass
class Domain:
    """Texts whose embeddings are compared with the original's, and retrieval pairs (query, positive) as
    indices into them."""

    name: str
    texts: list[str]
    queries: np.ndarray
    positives: np.ndarray


def domains() -> list[Domain]:
    """The evaluation text (queries: the first line of each cluster, positives: the second), and the docstrings'
    summaries then bodies (each summary's positive its own body; the summary + body texts of the file are not
    embedded: the two halves are, at a third of the tokens)."""
    texts = shipped_texts("evaluation.txt")
    evaluation = Domain("evaluation", texts, np.arange(0, len(texts), CLUSTER), np.arange(1, len(texts), CLUSTER))
    items = [json.loads(line) for line in STDLIB_JSONL.read_text(encoding="utf-8").splitlines() if line.strip()]
    n = len(items)
    stdlib = Domain("stdlib", [i["query"] for i in items] + [i["positive"] for i in items], np.arange(n),
                    np.arange(n, 2 * n))
    return [evaluation, stdlib]


def embed(folder: Path, domain: Domain) -> np.ndarray:
    """Sentence embeddings of the domain's texts, computed shortest first (batches pad to their longest text)
    and returned in the domain's order."""
    order = np.argsort([len(text) for text in domain.texts], kind="stable")
    embeddings = sentence_embeddings(ExportedFolder.open(folder), [domain.texts[i] for i in order])
    result = np.empty_like(embeddings)
    result[order] = embeddings
    return result


def _unit(rows: np.ndarray) -> np.ndarray:
    return rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)


def retrieval(embeddings: np.ndarray, domain: Domain) -> tuple[np.ndarray, np.ndarray]:
    """Ranks of each query's positive, and each query's top-1 retrieved positive."""
    queries, positives = embeddings[domain.queries], embeddings[domain.positives]
    top1 = (_unit(queries) @ _unit(positives).T).argmax(axis=1)
    return _retrieval_ranks(queries, positives), top1


def compare(reference: np.ndarray, candidate: np.ndarray, domain: Domain) -> dict:
    ref_ranks, ref_top1 = retrieval(reference, domain)
    ranks, top1 = retrieval(candidate, domain)
    return {**quality(reference, candidate), "recall_at_1": float((ranks == 0).mean()),
            "recall_at_1_drop": float((ref_ranks == 0).mean() - (ranks == 0).mean()),
            "top1_agreement": float((top1 == ref_top1).mean())}


#: VmHWM, not ru_maxrss: Linux carries ru_maxrss over exec, so a child of this (large) process would report ours.
_PEAK_RSS = """
import sys
import numpy as np
from edgefold.runtime.session import make_feed, open_session
session = open_session(sys.argv[1], threads=1)
ids = np.random.default_rng(0).integers(1000, 20000, size=(1, int(sys.argv[2])))
feed = make_feed(session, ids, np.ones_like(ids))
for _ in range(3):
    session.run(None, feed)
status = open("/proc/self/status").read().split("\\n")
print("PEAK_RSS_KB", next(line.split()[1] for line in status if line.startswith("VmHWM:")))
"""


def peak_rss_mb(graph: Path) -> float:
    """Peak resident memory of a fresh process that opens ``graph`` and runs it on batch 1 x TOKENS."""
    done = subprocess.run([sys.executable, "-c", _PEAK_RSS, str(graph), str(TOKENS)], capture_output=True, text=True,
                          check=False)
    line = next((x for x in done.stdout.splitlines() if x.startswith("PEAK_RSS_KB")), None)
    if done.returncode != 0 or line is None:
        raise SystemExit(f"peak RSS of {graph} failed: {done.stderr.strip().splitlines()[-3:]}")
    return int(line.split()[1]) / 1024


def measure(folder: Path, references: dict[str, np.ndarray], data: list[Domain],
            embeddings: dict[str, np.ndarray] | None = None) -> dict:
    """``embeddings``: the folder's, where already computed (the original's are the references)."""
    result = {"bytes": sum(ExportedFolder.open(folder).bytes_on_disk().values())}
    for domain in data:
        own = embeddings[domain.name] if embeddings else embed(folder, domain)
        result[domain.name] = compare(references[domain.name], own, domain)
    result["peak_rss_mb"] = peak_rss_mb(folder / GRAPH)
    return result


def quantized_copy(folder: Path, output: Path) -> Path:
    """``folder`` with its graph quantised to int8 (onnxruntime dynamic, as ``--quantize int8``): tokenizer,
    config and manifest copied as they are (the manifest still describes the fp32 export)."""
    shutil.copytree(folder, output, ignore=shutil.ignore_patterns(GRAPH, "model.onnx_data", "model.onnx.data"))
    quantize(folder / GRAPH, output / GRAPH, "int8")
    return output


def latencies(paths: dict[str, Path], rounds: int, threads: tuple[int, ...] = THREADS,
              blocks: int = 2) -> dict[str, dict[int, float]]:
    """Median ms of one batch-1, TOKENS-token run per model and thread count. All models take turns in every
    round; the thread counts alternate in ``blocks`` blocks each (sessions opened per block, so that only one
    thread count's sessions are held at a time)."""
    ids = np.random.default_rng(0).integers(1000, 20000, size=(1, TOKENS))
    times: dict[tuple[str, int], list[float]] = {(name, t): [] for name in paths for t in threads}
    for block in range(blocks):
        for t in threads:
            sessions = {name: open_session(path, threads=t, spinning=False) for name, path in paths.items()}
            feeds = {name: make_feed(s, ids, np.ones_like(ids)) for name, s in sessions.items()}
            for name, session in sessions.items():  # warm-up
                for _ in range(3):
                    session.run(None, feeds[name])
            for _ in range(max(1, rounds // blocks)):
                for name, session in sessions.items():
                    start = time.perf_counter()
                    session.run(None, feeds[name])
                    times[(name, t)].append((time.perf_counter() - start) * 1000)
            del sessions, feeds
            print(f"latency block {block + 1}/{blocks}, {t} thread(s) done", flush=True)
    return {name: {t: statistics.median(times[(name, t)]) for t in threads} for name in paths}


def flops(manifest: dict, geometry: Geometry) -> dict:
    """Parameters kept against ALL encoder Linears (= the Linears' FLOP ratio) and the whole-model estimate."""
    totals = manifest["totals"]
    linear = geometry.linear_params - totals["targeted_params_before"] + totals["targeted_params_after"]
    width = geometry.layers * geometry.hidden
    for record in manifest["modules"]:  # pruned heads narrow the attention: its scores and context shrink too
        if "attention-output" in record["kinds"] and record["status"] == "pruned":
            width -= geometry.hidden - record["params_after"] // record["shape"][0]
    full = geometry.model_macs(geometry.linear_params, geometry.layers * geometry.hidden)
    return {"params_kept": linear / geometry.linear_params, "linear_flop_ratio": linear / geometry.linear_params,
            "model_flop_ratio": geometry.model_macs(linear, width) / full, "attention_width": width}


def stages(config: CompressionConfig | None) -> list[dict]:
    """What the export was asked, one entry per config of a mix (``then``)."""
    described = []
    while config is not None:
        described.append({"method": config.method, "targets": sorted(config.targets), "ratio": config.ratio,
                          "allocation": config.allocation, "bias_correction": config.bias_correction,
                          "method_options": config.method_options})
        config = getattr(config, "then", None)
    return described


def _progress(row: dict) -> str:
    parts = [f"{row['name']:36}"]
    for precision in ("fp32", "int8"):
        m = row.get(precision)
        if m:
            parts.append(f"{precision} cos {m['evaluation']['mean_cosine']:.4f}/{m['stdlib']['mean_cosine']:.4f}")
    if "params_kept" in row:
        parts.append(f"kept {row['params_kept']:.3f} fit {row['fit_s']:.0f}s export {row['export_s']:.0f}s "
                     f"measure {row['measure_s']:.0f}s")
    return "  ".join(parts)


def run(chosen: list[Variant], geometry: Geometry, rounds: int, save) -> dict:
    """Measure ``chosen``; ``save(result)`` is called after every variant (latencies are filled in last)."""
    model_path = resolve_model_path(MODEL)
    data = domains()
    started = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    result = {"model": MODEL, "run": started, "geometry": vars(geometry), "tokens": TOKENS, "threads": list(THREADS),
              "latency_rounds": rounds, "domains": {d.name: len(d.texts) for d in data}, "rows": []}
    begun = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="edgefold-layers-budget-") as tmp:
        root = Path(tmp)
        original = root / "original"
        export(str(model_path), original, CompressionConfig(method="none"), GRAPH_CONFIG, progress=False)
        references = {d.name: embed(original, d) for d in data}
        int8 = quantized_copy(original, root / "original-int8")
        paths = {"original fp32": original / GRAPH, "int8 alone": int8 / GRAPH}
        result["rows"] += [
            {"name": "original fp32", "family": "original", "ranks": "-", "kept": 1.0, "precision": "fp32",
             "params_kept": 1.0, "linear_flop_ratio": 1.0, "model_flop_ratio": 1.0, "fit_s": 0.0, "run": started,
             "fp32": measure(original, references, data, references)},
            {"name": "int8 alone", "family": "original", "ranks": "-", "kept": 1.0, "precision": "int8",
             "params_kept": 1.0, "linear_flop_ratio": 1.0, "model_flop_ratio": 1.0, "fit_s": 0.0, "run": started,
             "int8": measure(int8, references, data)}]
        seconds = result["seconds"] = {"baseline": round(time.perf_counter() - begun, 1)}  # exported, measured
        print(f"original fp32 and int8 alone measured in {seconds['baseline']:.0f}s", flush=True)
        for variant in chosen:
            row = {"name": variant.name, "family": variant.family, "ranks": variant.ranks, "kept": variant.kept,
                   "ratio": variant.ratio, "targets": all_targets(variant.settings), "run": started}
            if variant.ratio is None:
                targets = all_targets(variant.settings)
                row["note"] = (f"n/a: {targets} holds {geometry.share(targets):.0%} of the encoder Linears; keeping "
                               f"{variant.kept:.0%} of all needs it to keep nothing or less")
            else:
                config = variant.config()
                row["stages"] = stages(config)
                folder = root / re.sub(r"[^a-z0-9.]+", "-", variant.name.lower())
                start = time.perf_counter()
                try:
                    manifest = export(str(model_path), folder, config, GRAPH_CONFIG, progress=False)
                except EdgefoldError as error:  # a failed check: the row says so, the run goes on
                    row["error"] = str(error)
                    print(f"{variant.name}: export failed: {error}", flush=True)
                else:
                    exported = time.perf_counter()
                    quantized = quantized_copy(folder, folder.with_name(folder.name + "-int8"))
                    row.update(export_s=round(exported - start, 1), fit_s=manifest["seconds"]["compress"],
                               **flops(manifest, geometry),
                               allocated={m["name"]: m["rank"] if m["status"] != "pruned" else m["params_after"]
                                          for m in manifest["modules"]} if variant.ranks == "allocated" else None,
                               fp32=measure(folder, references, data), int8=measure(quantized, references, data))
                    row["measure_s"] = round(time.perf_counter() - exported, 1)  # int8 copy and both measured
                    paths[f"{variant.name} | fp32"], paths[f"{variant.name} | int8"] = (folder / GRAPH,
                                                                                      quantized / GRAPH)
            result["rows"].append(row)
            print(_progress(row), flush=True)
            save(result)
        begun = time.perf_counter()
        times = latencies(paths, rounds)
        seconds["latency"] = round(time.perf_counter() - begun, 1)
    for row in result["rows"]:
        for precision in ("fp32", "int8"):
            key = row["name"] if row["family"] == "original" else f"{row['name']} | {precision}"
            if row.get(precision) and key in times:
                add_latency(row[precision], times[key], times["int8 alone"], times["original fp32"])
    save(result)
    return result


def add_latency(measured: dict, ms: dict[int, float], int8_alone: dict[int, float], fp32: dict[int, float]) -> None:
    measured["latency_ms"] = {str(t): ms[t] for t in ms}
    measured["int8_alone_ms"] = {str(t): int8_alone[t] for t in ms}
    measured["fp32_ms"] = {str(t): fp32[t] for t in ms}
    measured["vs_int8_alone"] = {str(t): ms[t] / int8_alone[t] for t in ms}


# --- results ----------------------------------------------------------------------------------------------


def _run_info(result: dict) -> dict:
    return {"latency_rounds": result["latency_rounds"], "seconds": result.get("seconds"),
            "variants": [r["name"] for r in result["rows"] if r["family"] != "original"]}


def merge(previous: dict, new: dict, order: list[str]) -> dict:
    """``new``'s variant rows replace or join ``previous``'s; the baselines of ``previous`` stay (every row
    carries the int8-alone and fp32 latencies of its own run, which its ratios are to)."""
    rows = {r["name"]: r for r in previous["rows"]}
    rows.update({r["name"]: r for r in new["rows"] if r["family"] != "original" or r["name"] not in rows})
    position = {name: i for i, name in enumerate(["original fp32", "int8 alone", *order])}
    merged = {**previous, "rows": sorted(rows.values(), key=lambda r: position.get(r["name"], len(position)))}
    runs = previous.get("runs")
    runs = runs if isinstance(runs, dict) else {previous["run"]: _run_info(previous)}
    merged["runs"] = {**runs, new["run"]: _run_info(new)}
    return merged


def measured_rows(result: dict) -> list[tuple[dict, str, dict]]:
    """(row, precision, its measurements) for every measured model."""
    return [(r, p, r[p]) for r in result["rows"] for p in ("fp32", "int8") if r.get(p)]


def _structured_lag(row: dict, precision: str, m: dict, threads: str) -> float | None:
    """Latency ratio to the same precision's unpruned model, over the whole-model FLOP ratio, minus 1."""
    if "latency_ms" not in m:
        return None
    base = m["int8_alone_ms"] if precision == "int8" else m["fp32_ms"]
    return m["latency_ms"][threads] / base[threads] / row["model_flop_ratio"] - 1


def goals(result: dict) -> list[str]:
    lines = []
    rows = measured_rows(result)
    for kept, goal in GOAL_COSINE.items():
        candidates = [(m["evaluation"]["mean_cosine"], r["name"], p) for r, p, m in rows
                      if r["family"] != "original" and r["params_kept"] <= kept + BUDGET_SLACK]
        best = max(candidates, default=None)
        lines.append(f"- {kept:.0%} of the encoder Linear parameters, mean cosine >= {goal} (evaluation text): "
                     + ("no row measured" if best is None else
                        f"{'met' if best[0] >= goal else 'not met'}, best {best[0]:.4f} ({best[1]}, {best[2]})"))
    fast = [(m["vs_int8_alone"]["1"], m["vs_int8_alone"].get("2"), m["evaluation"]["mean_cosine"], r["name"])
            for r, p, m in rows if p == "int8" and r["family"] != "original" and "vs_int8_alone" in m]
    good = [f for f in fast if f[2] >= GOAL_SPEEDUP_COSINE and f[0] <= 1 / GOAL_SPEEDUP]
    closest = min((f for f in fast if f[2] >= GOAL_SPEEDUP_COSINE), default=None)
    text = (f"- int8 on top, >= {GOAL_SPEEDUP}x faster than int8 alone (1 thread) at mean cosine >= "
            f"{GOAL_SPEEDUP_COSINE}: ")
    if good:
        f = min(good)
        text += f"met by {len(good)} row(s); fastest {f[3]}: {1 / f[0]:.2f}x at 1 thread"
        text += f", {1 / f[1]:.2f}x at 2, cosine {f[2]:.4f}" if f[1] else f", cosine {f[2]:.4f}"
    elif closest:
        text += f"not met; fastest at that cosine {closest[3]}: {1 / closest[0]:.2f}x (cosine {closest[2]:.4f})"
    else:
        text += "not met (no int8 row reaches the cosine)" if fast else "no latencies measured"
    lines.append(text)
    lags = [(abs(lag), lag, r["name"], p, t) for r, p, m in rows if r["family"] in STRUCTURED
            for t in ("1", "2") if (lag := _structured_lag(r, p, m, t)) is not None]
    within = sum(a <= GOAL_FLOP_TOLERANCE for a, *_ in lags)
    worst = max(lags, default=None)
    lines.append(f"- structured variants' latency ratio within {GOAL_FLOP_TOLERANCE:.0%} of their whole-model FLOP "
                 "ratio (fp32 against the original fp32, int8 against int8 alone; 1 and 2 threads): "
                 + ("no structured row measured" if worst is None else
                    f"{'met' if within == len(lags) else 'not met'}, {within} of {len(lags)} within; worst "
                    f"{worst[2]} {worst[3]} at {worst[4]} thread(s): latency {worst[1]:+.0%} off its FLOP ratio"))
    return lines


def _f(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def write_table(result: dict, path: Path) -> None:
    g = result["geometry"]
    linear = Geometry(**g).linear_params
    lines = [
        "# Layer methods at the same budget on all-MiniLM-L6-v2, alone and with int8 on top",
        "",
        f"Budget: the share of ALL the encoder's Linear parameters kept ({g['layers']} layers x (4 x {g['hidden']}^2 "
        f"attention + 2 x {g['hidden']} x {g['ffn']} FFN) = {linear:,}), "
        "whatever a method targets: whitened SVD on attention + FFN (+bias: bias correction; seq+bias: fitted "
        "sequentially against anchored targets, with bias correction), prune-ffn on the FFN only (it keeps "
        "(kept - 1/3) / (2/3) of the FFN), prune-heads on the attention only (it keeps (kept - 2/3) / (1/3): n/a "
        "at 50%), and a mix: FFN neurons pruned, then the attention factorised (whitened SVD with bias "
        "correction, fitted on the pruned model), each keeping the budget's share. Uniform: every module (block) "
        "keeps the same share; allocated: ranks (widths) per module by measured sensitivity, one budget for all "
        "targeted weights (a mix: per stage). Linear params kept = the Linears' FLOP ratio "
        "(MACs per token = parameters: dense rows x cols, factorised r x (rows + cols), pruned the narrower dense). "
        f"Model FLOPs: MACs per token at {result['tokens']} tokens = Linear parameters + sum over layers of "
        f"2 x {result['tokens']} x the attention width (scores and context; pruned heads narrow it); norms, "
        "activations, softmax and the embedding lookup left out. int8: onnxruntime dynamic int8 (`--quantize "
        "int8`) of each exported graph; int8 alone: the original quantised. Graphs are exported unfused "
        "(`--optimize none`: the same form for every variant; onnxruntime fuses at session start).",
        "",
        f"Quality: mean-pooled sentence embeddings of each ONNX graph against the original fp32 graph, on "
        f"`runtime/data/evaluation.txt` ({result['domains']['evaluation']} lines; recall@1: the first line of each "
        "5-line cluster retrieves its paraphrase among all second lines) and on Python standard-library "
        f"docstrings (the {result['domains']['stdlib'] // 2} summaries and as many bodies of "
        "`results/stdlib_docstrings.jsonl`, human-written API documentation; recall@1: each summary retrieves its "
        "body among all bodies). top-1 agr: the share of queries whose top-1 result is the original's. Fits, "
        "statistics and sensitivity allocations use only the shipped calibration text: none saw the evaluation "
        f"text or the docstrings. Latency: batch 1 x {result['tokens']} tokens, all models taking turns in each round, "
        f"{result['latency_rounds']} rounds per thread count (blocks alternating 1 and 2 threads), medians, as "
        "ratios to int8 alone in the same run; the machine (2 cores) was shared, so latencies are indicative. "
        "Peak RSS: a fresh process opening the graph (1 thread) and running it three times. Fit s: the export's "
        "compress step (statistics, sensitivity measurements, fit).",
        "",
        "Goals (computed from the rows):",
        "",
        *goals(result),
        "",
        "| kept | variant | ranks | prec | Linear params kept | model FLOPs | eval mean cos | eval min cos "
        "| eval top-10 | eval R@1 | eval top-1 agr | stdlib mean cos | stdlib min cos | stdlib top-10 | stdlib R@1 "
        "| stdlib top-1 agr | MB | ms 1t | vs int8 1t | vs int8 2t | peak RSS MB | fit s |",
        "|" + "---|" * 22,
    ]
    for row in result["rows"]:
        head = f"| {row['kept']:.2f} | {row['family']} | {row['ranks']} |"
        if "note" in row or "error" in row:
            lines.append(f"{head} - | {row.get('note') or 'export failed: ' + row['error']} |" + " |" * 17)
            continue
        for precision in ("fp32", "int8"):
            m = row.get(precision)
            if not m:
                continue
            e, s = m["evaluation"], m["stdlib"]
            ratio = m.get("vs_int8_alone", {})
            lines.append(
                f"{head} {precision} | {row['params_kept']:.3f} | {row['model_flop_ratio']:.3f} | "
                f"{e['mean_cosine']:.4f} | {e['min_cosine']:.3f} | {e['top10_agreement']:.3f} | "
                f"{e['recall_at_1']:.3f} | {e['top1_agreement']:.3f} | {s['mean_cosine']:.4f} | "
                f"{s['min_cosine']:.3f} | {s['top10_agreement']:.3f} | {s['recall_at_1']:.3f} | "
                f"{s['top1_agreement']:.3f} | {m['bytes'] / 2**20:.1f} | "
                f"{_f(m.get('latency_ms', {}).get('1'), '.1f')} | {_f(ratio.get('1'), '.2f')} | "
                f"{_f(ratio.get('2'), '.2f')} | {m['peak_rss_mb']:.0f} | {_f(row.get('fit_s'), '.0f')} |")
    runs = list(result.get("runs") or [result["run"]])
    lines += ["", f"Runs: {', '.join(runs)} (rows measured by `--only` carry the ratios of their own run).",
              "", "Reproduce: `python benchmarks/layers_budget.py`", ""]
    path.write_text("\n".join(lines))


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(14, 5.4))
    colours = {family: f"C{i}" for i, family in enumerate(FAMILIES)}
    rows = [r for r in result["rows"] if r["family"] in FAMILIES and r.get("fp32")]
    for family, ranks in dict.fromkeys((r["family"], r["ranks"]) for r in rows):
        for precision, style in (("fp32", "-"), ("int8", ":")):
            points = sorted((r["params_kept"], r[precision]["evaluation"]["mean_cosine"]) for r in rows
                            if (r["family"], r["ranks"]) == (family, ranks) and r.get(precision))
            if points:
                left.plot(*zip(*points), linestyle=style if ranks == "allocated" else "--" if style == "-" else ":",
                          marker="o" if ranks == "allocated" else "s", color=colours[family],
                          fillstyle="full" if precision == "fp32" else "none",
                          label=f"{family} {ranks} {precision}")
    int8_alone = next((r for r in result["rows"] if r["name"] == "int8 alone"), None)
    if int8_alone:
        left.axhline(int8_alone["int8"]["evaluation"]["mean_cosine"], color="grey", linestyle=":",
                     label="int8 alone")
    for kept, goal in GOAL_COSINE.items():
        left.plot([kept], [goal], marker="*", markersize=14, color="black", linestyle="none")
    left.set(xlabel="share of all encoder Linear parameters kept (= Linear FLOP ratio)",
             ylabel="mean cosine to the original (evaluation text)",
             title="fidelity at the budget (stars: goals; filled: fp32, hollow: int8 on top)")
    left.grid(alpha=0.3)
    left.legend(fontsize=6, ncol=2)
    for r in rows:
        m = r.get("int8", {})
        for threads, fill in (("1", "full"), ("2", "none")):
            if "vs_int8_alone" in m:
                right.plot(r["model_flop_ratio"], m["vs_int8_alone"][threads], marker="o" if r["ranks"] == "allocated"
                           else "s", fillstyle=fill, color=colours[r["family"]], linestyle="none")
    handles = [plt.Line2D([], [], color=c, marker="o", linestyle="none", label=f) for f, c in colours.items()]
    handles += [plt.Line2D([], [], color="grey", marker="o", linestyle="none", label="allocated"),
                plt.Line2D([], [], color="grey", marker="s", linestyle="none", label="uniform"),
                plt.Line2D([], [], color="grey", marker="o", fillstyle="none", linestyle="none", label="2 threads")]
    right.plot([1.0], [1.0], marker="x", color="black", linestyle="none", label="int8 alone")
    right.plot([0, 1.05], [0, 1.05], color="black", linewidth=0.8, label="y = x")
    right.axhline(1 / GOAL_SPEEDUP, color="grey", linestyle="--", linewidth=0.8)
    right.set(xlim=(0, 1.05), ylim=(0, 1.3), xlabel=f"whole-model FLOP ratio ({result['tokens']} tokens)",
              ylabel="latency / int8 alone", title="int8 on top: latency against FLOPs (dashed: the 1.5x goal)")
    right.grid(alpha=0.3)
    right.legend(handles=[*handles, *right.lines[-3:-1]], fontsize=7)
    figure.suptitle("all-MiniLM-L6-v2: layer methods at 75% / 50% of the encoder's Linear parameters", fontsize=11)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def render(result: dict, results: Path) -> None:
    write_table(result, results / f"{NAME}.md")
    plot(result, results / f"{NAME}.png")
    print(f"wrote {results}/{NAME}.{{md,json,png}}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", help="comma-separated variant names (or their first words) to measure and merge "
                                       "into the results; the baselines are measured again for the ratios")
    parser.add_argument("--skip", help="comma-separated variant names (or their first words) to leave out (without "
                                       "--only: a full run without them, not merged)")
    parser.add_argument("--results", type=Path, default=Path(os.environ.get("EDGEFOLD_BENCH_RESULTS",
                                                                            DEFAULT_RESULTS)),
                        help="directory of layers_budget.{json,md,png} (default: benchmarks/results)")
    parser.add_argument("--rounds", type=int, default=60, help="latency rounds per thread count")
    parser.add_argument("--list", action="store_true", help="print the variants and exit")
    parser.add_argument("--render", action="store_true", help="write the table and plot again from the JSON")
    args = parser.parse_args()
    geometry = Geometry.of(resolve_model_path(MODEL))
    all_variants = variants(geometry)
    json_path = args.results / f"{NAME}.json"
    if args.list:
        for v in all_variants:
            print(f"{v.name:40} {'n/a' if v.ratio is None else f'ratio {v.ratio:g}'} on {all_targets(v.settings)}")
        return
    if args.render:
        render(json.loads(json_path.read_text()), args.results)
        return
    chosen = select(all_variants, args.only, args.skip)
    for variant in chosen:  # every config is checked (method known, options valid) before any work
        if variant.ratio is not None:
            variant.config()
    args.results.mkdir(parents=True, exist_ok=True)
    previous = json.loads(json_path.read_text()) if args.only and json_path.exists() else None
    if previous is not None and "geometry" not in previous:
        previous = None  # today's format: start afresh
    order = [v.name for v in all_variants]

    def save(result: dict) -> None:
        merged = merge(previous, result, order) if previous else result
        json_path.write_text(json.dumps(merged, indent=2) + "\n")

    result = run(chosen, geometry, args.rounds, save)
    render(merge(previous, result, order) if previous else result, args.results)


if __name__ == "__main__":
    main()
