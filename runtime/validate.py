"""``edgefold validate``: may this model ship? Task-aware metrics against a reference, and gates on them."""

from __future__ import annotations

import json
import operator
import re
import time
from pathlib import Path

import numpy as np

from .dataset import EvalData
from .errors import EdgefoldError
from .folder import ExportedFolder
from .metrics import mean_pool, neighbour_agreement, row_cosines, spearman_of_similarities
from .session import make_feed, open_session
from .system import machine_context

SCHEMA = "edgefold.validate"
SCHEMA_VERSION = 1
GATE_FILE = "edgefold-gates.json"
#: Gates used when neither flags nor a gate file give any, per task.
DEFAULT_GATES = {
    "feature-extraction": ["mean_cosine>=0.98", "min_cosine>=0.90", "top10_agreement>=0.80"],
    "text-classification": ["label_agreement>=0.98"],
    "fill-mask": ["perplexity_ratio<=1.05"],
    "text-generation": ["perplexity_ratio<=1.05"],
}
_GATE = re.compile(r"^\s*([a-z0-9_@]+)\s*(>=|<=)\s*(-?[0-9.eE+-]+)\s*$")
_OPS = {">=": operator.ge, "<=": operator.le}
_BATCH = 32


def parse_gate(text: str) -> tuple[str, str, float]:
    match = _GATE.match(text)
    if not match:
        raise EdgefoldError(f"a gate reads METRIC>=VALUE or METRIC<=VALUE, not {text!r}")
    return match[1], match[2], float(match[3])


def load_gates(flags: list[str], candidate: ExportedFolder, gate_file: str | None, task: str) -> list[str]:
    """Gates from flags, else from a gate file (given, or ``edgefold-gates.json`` in the candidate), else defaults."""
    if flags:
        return flags
    path = Path(gate_file) if gate_file else candidate.path / GATE_FILE
    if gate_file and not path.is_file():
        raise EdgefoldError(f"gate file not found: {gate_file}")
    if path.is_file():
        try:
            gates = json.loads(path.read_text(encoding="utf-8"))["gates"]
        except (json.JSONDecodeError, KeyError, TypeError):
            raise EdgefoldError(f'{path} must be JSON like {{"gates": ["mean_cosine>=0.98"]}}') from None
        return list(gates)
    return DEFAULT_GATES[task]


def validate(candidate: str | Path, reference: str | Path, data: EvalData, gates: list[str] | None = None,
             gate_file: str | None = None) -> dict:
    """Run both models on ``data``; the report says which gates fail (``passed`` False if any)."""
    cand, ref = ExportedFolder.open(candidate), ExportedFolder.open(reference)
    if cand.task != ref.task:
        raise EdgefoldError(f"the candidate is a {cand.task} model but the reference a {ref.task} model")
    task = cand.task
    checks = [parse_gate(g) for g in load_gates(gates or [], cand, gate_file, task)]
    start = time.perf_counter()
    metrics = _METRICS[task](cand, ref, data)
    unknown = [name for name, _, _ in checks if name not in metrics]
    if unknown:
        raise EdgefoldError(f"no metric {', '.join(unknown)} for {task}; there are: {', '.join(metrics)}")
    results = [{"metric": name, "op": op, "threshold": value, "value": metrics[name],
                "passed": bool(_OPS[op](metrics[name], value))} for name, op, value in checks]
    return {
        "schema": SCHEMA, "schema_version": SCHEMA_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine_context(),
        "candidate": {"path": str(cand.path), "name": cand.name, "bytes": cand.bytes_on_disk()},
        "reference": {"path": str(ref.path), "name": ref.name, "bytes": ref.bytes_on_disk()},
        "task": task, "data": data.describe(), "metrics": metrics, "gates": results,
        "passed": all(r["passed"] for r in results), "seconds": round(time.perf_counter() - start, 2),
    }


def failures(report: dict) -> list[str]:
    return [f"{g['metric']} = {g['value']:.4f}, needs {g['op']} {g['threshold']:g}" for g in report["gates"]
            if not g["passed"]]


def _outputs(model: ExportedFolder, texts: list[str]) -> tuple[list[np.ndarray], list[tuple[np.ndarray, np.ndarray]]]:
    """The first output for every batch of texts, and the batches (ids, mask) fed."""
    session, encoder = open_session(model.graph), model.encoder()
    length = min(128, model.max_positions or 128)
    first = session.get_outputs()[0].name
    outputs, batches = [], []
    for start in range(0, len(texts), _BATCH):
        ids, mask = encoder.encode(texts[start:start + _BATCH], max_length=length)
        outputs.append(session.run([first], make_feed(session, ids, mask))[0])
        batches.append((ids, mask))
    return outputs, batches


def sentence_embeddings(model: ExportedFolder, texts: list[str]) -> np.ndarray:
    """Mean-pooled last hidden states of ``texts`` (128 tokens at most), from the folder's own graph."""
    outputs, batches = _outputs(model, texts)
    return np.concatenate([mean_pool(out, mask) for out, (_, mask) in zip(outputs, batches)])


def _feature_extraction(cand: ExportedFolder, ref: ExportedFolder, data: EvalData) -> dict:
    a, b = sentence_embeddings(ref, data.texts), sentence_embeddings(cand, data.texts)
    cosines = row_cosines(a, b)
    metrics = {"mean_cosine": float(cosines.mean()), "min_cosine": float(cosines.min())}
    if len(a) >= 3:  # neighbours and a rank correlation need a few items
        metrics.update(top10_agreement=neighbour_agreement(a, b, 10), spearman=spearman_of_similarities(a, b))
    if data.pairs:
        queries, positives = zip(*data.pairs)
        for side, model in (("reference", ref), ("candidate", cand)):
            ranks = _retrieval_ranks(sentence_embeddings(model, list(queries)),
                                     sentence_embeddings(model, list(positives)))
            metrics[f"recall_at_1_{side}"] = float((ranks == 0).mean())
            metrics[f"mrr_{side}"] = float((1 / (ranks + 1)).mean())
        metrics["recall_at_1_drop"] = metrics["recall_at_1_reference"] - metrics["recall_at_1_candidate"]
    return metrics


def _retrieval_ranks(queries: np.ndarray, positives: np.ndarray) -> np.ndarray:
    unit_q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    unit_p = positives / np.linalg.norm(positives, axis=1, keepdims=True)
    scores = unit_q @ unit_p.T
    return (scores > np.diag(scores)[:, None]).sum(axis=1)


def _classification(cand: ExportedFolder, ref: ExportedFolder, data: EvalData) -> dict:
    ref_labels = np.concatenate(_outputs(ref, data.texts)[0]).argmax(-1)
    cand_labels = np.concatenate(_outputs(cand, data.texts)[0]).argmax(-1)
    metrics = {"label_agreement": float((ref_labels == cand_labels).mean())}
    if data.labels:
        names = cand.config.get("id2label") or {}
        truth = np.array(data.labels)
        for side, predicted in (("reference", ref_labels), ("candidate", cand_labels)):
            predicted = np.array([str(names.get(str(p), p)) for p in predicted])
            metrics[f"accuracy_{side}"] = float((predicted == truth).mean())
            metrics[f"macro_f1_{side}"] = _macro_f1(truth, predicted)
        metrics["accuracy_drop"] = metrics["accuracy_reference"] - metrics["accuracy_candidate"]
    return metrics


def _macro_f1(truth: np.ndarray, predicted: np.ndarray) -> float:
    scores = []
    for label in np.unique(truth):
        tp = float(((predicted == label) & (truth == label)).sum())
        precision = tp / max((predicted == label).sum(), 1)
        recall = tp / max((truth == label).sum(), 1)
        scores.append(0.0 if tp == 0 else 2 * precision * recall / (precision + recall))
    return float(np.mean(scores))


def _language_model(cand: ExportedFolder, ref: ExportedFolder, data: EvalData) -> dict:
    a, b = _perplexity(ref, data.texts), _perplexity(cand, data.texts)
    return {"perplexity_reference": a, "perplexity_candidate": b, "perplexity_ratio": b / a}


def _perplexity(model: ExportedFolder, texts: list[str]) -> float:
    """Causal LMs: next-token perplexity. Masked LMs: every 7th real token masked, perplexity of the originals."""
    session, encoder = open_session(model.graph), model.encoder()
    length = min(128, model.max_positions or 128)
    mask_id = encoder.tokenizer.token_to_id("[MASK]") or encoder.tokenizer.token_to_id("<mask>")
    if model.task == "fill-mask" and mask_id is None:
        raise EdgefoldError(f"the tokenizer of {model.path} has no mask token")
    total, count = 0.0, 0
    for start in range(0, len(texts), _BATCH):
        ids, mask = encoder.encode(texts[start:start + _BATCH], max_length=length)
        if model.task == "fill-mask":
            position = np.arange(ids.shape[1])[None, :]
            inside = (position >= 1) & (position < mask.sum(axis=1, keepdims=True) - 1)  # not [CLS] / [SEP]
            chosen = inside & (position % 7 == 1)
            feed_ids = np.where(chosen, mask_id, ids)
            logits = session.run(["logits"], make_feed(session, feed_ids, mask))[0]
            targets, where = ids, chosen
        else:
            logits = session.run(["logits"], make_feed(session, ids, mask))[0][:, :-1]
            targets, where = ids[:, 1:], mask[:, 1:].astype(bool)
        logits = logits - logits.max(-1, keepdims=True)
        log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
        picked = np.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]
        total -= float(picked[where].sum())
        count += int(where.sum())
    return float(np.exp(total / max(count, 1)))


_METRICS = {"feature-extraction": _feature_extraction, "text-classification": _classification,
            "fill-mask": _language_model, "text-generation": _language_model}
