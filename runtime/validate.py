"""``edgefold validate``: may this model ship? Task-aware metrics against a reference, and gates on them."""

from __future__ import annotations

import hashlib
import math
import operator
import re
import time
from collections import OrderedDict
from pathlib import Path

import numpy as np

from .dataset import EvalData, check_data
from .errors import EdgefoldError
from .folder import ExportedFolder
from .jsonfile import read_json
from .metrics import (
    TAIL,
    bootstrap,
    mean_pool,
    neighbour_agreements,
    row_cosines,
    spearman_of_similarities,
)
from .session import make_feed, open_session, run
from .system import machine_context

SCHEMA = "edgefold.validate"
SCHEMA_VERSION = 1
GATE_FILE = "edgefold-gates.json"
#: Gates used when neither flags nor a gate file give any, per task.
DEFAULT_GATES = {
    "feature-extraction": ["mean_cosine>=0.98", "p01_cosine>=0.90", "top10_agreement>=0.80"],
    "text-classification": ["label_agreement>=0.98"],
    "fill-mask": ["perplexity_ratio<=1.05"],
    "text-generation": ["perplexity_ratio<=1.05"],
}
_NUMBER = r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?"
_GATE = re.compile(rf"\s*([a-z0-9_@]+)\s*(>=|<=)\s*({_NUMBER})\s*", re.ASCII)
_OPS = {">=": operator.ge, "<=": operator.le}
_BATCH = 32
#: Reference embeddings kept per process: a search validates every candidate against one reference on the same
#: splits, and the reference's forward passes were half of every validation. Keyed by the graph's files (path, size,
#: modification time) and the texts themselves; a few entries of (items x hidden) floats.
_REFERENCE_EMBEDDINGS: OrderedDict[tuple, np.ndarray] = OrderedDict()
_KEPT_EMBEDDINGS = 8
#: The one-sided level of the bound every gate reports (and must clear with ``confidence``, at that level).
BOUND_LEVEL = 0.95
# every metric a task can report, and what the data needs for it (None: nothing)
_METRICS_BY_TASK = {
    "feature-extraction": [(("mean_cosine", "p01_cosine", "min_cosine"), None),
                           (("top10_agreement", "spearman"), "items"),
                           (("recall_at_1_reference", "mrr_reference", "recall_at_1_candidate", "mrr_candidate",
                             "recall_at_1_drop"), "pairs")],
    "text-classification": [(("label_agreement",), None),
                            (("accuracy_reference", "macro_f1_reference", "accuracy_candidate", "macro_f1_candidate",
                              "accuracy_drop"), "labels")],
    "fill-mask": [(("perplexity_reference", "perplexity_candidate", "perplexity_ratio"), None)],
    "text-generation": [(("perplexity_reference", "perplexity_candidate", "perplexity_ratio"), None)],
}
_NEEDS = {"items": "at least 3 items", "labels": "a label column", "pairs": "query and positive columns"}

Gate = tuple[str, str, float]
#: Per metric, the per-item values it is a statistic of, and which statistic (a name in metrics.STATISTICS).
Samples = dict[str, tuple[np.ndarray, str]]


def parse_gate(text: str) -> Gate:
    match = _GATE.fullmatch(text) if isinstance(text, str) else None
    if not match:
        raise EdgefoldError(f"a gate reads METRIC>=VALUE or METRIC<=VALUE (e.g. mean_cosine>=0.98), not {text!r}")
    value = float(match[3])
    if not math.isfinite(value):
        raise EdgefoldError(f"the threshold of the gate {text!r} is not a finite number")
    return match[1], match[2], value


def metric_names(task: str, data: EvalData) -> list[str]:
    """The metrics ``validate`` reports for ``task`` on ``data``: what a gate may name."""
    have = {None, *(["items"] if len(data.texts) >= 3 else []), *(["labels"] if data.labels is not None else []),
            *(["pairs"] if data.pairs else [])}
    return [name for names, need in _METRICS_BY_TASK[task] if need in have for name in names]


def load_gates(flags: list[str], candidate: ExportedFolder, gate_file: str | Path | None, task: str) -> list[str]:
    """Gates from flags, else from a gate file (given, or ``edgefold-gates.json`` in the candidate), else defaults."""
    if flags:
        return list(flags)
    path = Path(gate_file) if gate_file is not None else candidate.path / GATE_FILE
    if gate_file is not None and not path.is_file():
        raise EdgefoldError(f"gate file not found: {gate_file}")
    if not path.exists():
        return DEFAULT_GATES[task]
    content = read_json(path)
    gates = content.get("gates") if isinstance(content, dict) else None
    if not isinstance(gates, list) or not all(isinstance(g, str) for g in gates):
        raise EdgefoldError(f'{path} must be JSON like {{"gates": ["mean_cosine>=0.98"]}}')
    if not gates:
        raise EdgefoldError(f"{path} lists no gates: with none, any model would pass")
    return gates


def check_inputs(candidate: str | Path, data: EvalData, gates: list[str] | None = None,
                 gate_file: str | Path | None = None, verify: bool = True) -> list[Gate]:
    """Refuse what can be refused without running a model: the candidate folder, the data, the gates.

    ``validate`` calls it first; call it yourself before work that comes earlier (exporting a reference).
    Returns the gates as (metric, operator, threshold).
    """
    return _check_inputs(ExportedFolder.open(candidate, verify), data, gates, gate_file)


def _check_inputs(cand: ExportedFolder, data: EvalData, gates: list[str] | None,
                  gate_file: str | Path | None) -> list[Gate]:
    check_data(data, cand.task)
    return check_gates(cand.task, data, load_gates(gates or [], cand, gate_file, cand.task))


def check_gates(task: str, data: EvalData, gates: list[str]) -> list[Gate]:
    """Parse ``gates`` and refuse any on a metric ``task`` does not report on ``data``."""
    checks = [parse_gate(g) for g in gates]
    available = metric_names(task, data)
    for name, _, _ in checks:
        if name in available:
            continue
        need = next((need for names, need in _METRICS_BY_TASK[task] if name in names), None)
        if need:
            raise EdgefoldError(f"the gate on {name} needs {_NEEDS[need]} in the data")
        raise EdgefoldError(f"no metric {name} for {task}; there are: {', '.join(available)}")
    return checks


def validate(candidate: str | Path, reference: str | Path, data: EvalData, gates: list[str] | None = None,
             gate_file: str | Path | None = None, verify: bool = True, confidence: float | None = None) -> dict:
    """Run both models on ``data``; the report says which gates fail (``passed`` False if any).

    A metric that is undefined on this data or non-finite (a broken model's NaN outputs) is reported as None
    and fails any gate on it. ``verify``: both folders checked against their manifests first.

    Each gate on a per-item metric (cosines, neighbour agreement, recall@1, labels) reports a bootstrap bound
    (one-sided, :data:`BOUND_LEVEL`) and the share of resamples in which it holds: how sure the verdict is of
    more text like this. With ``confidence`` (e.g. 0.95), a gate passes only where its bound at that level
    clears the threshold too; a metric of the whole text at once (perplexity, spearman) is gated on its value.
    """
    check_confidence(confidence)
    cand, ref = ExportedFolder.open(candidate, verify), ExportedFolder.open(reference, verify)
    if cand.task != ref.task:
        raise EdgefoldError(f"the candidate is a {cand.task} model but the reference a {ref.task} model")
    task = cand.task
    checks = _check_inputs(cand, data, gates, gate_file)
    if task == "text-classification":
        _check_labels(cand, ref, data)
    models = [_Model(ref, reference=True), _Model(cand)]  # tokenizers first: cheaper to refuse than sessions
    for model in models:
        model.open()
    start = time.perf_counter()
    measured, samples = _METRICS[task](models[1], models[0], data)
    metrics = {name: _finite(value) for name, value in measured.items()}
    results = [_gate_result(gate, metrics.get(gate[0]), samples.get(gate[0]), confidence) for gate in checks]
    return {
        "schema": SCHEMA, "schema_version": SCHEMA_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine_context(),
        "candidate": {"path": str(cand.path), "name": cand.name, "bytes": cand.bytes_on_disk()},
        "reference": {"path": str(ref.path), "name": ref.name, "bytes": ref.bytes_on_disk()},
        "task": task, "data": data.describe(), "metrics": metrics, "gates": results, "confidence": confidence,
        "passed": all(r["passed"] for r in results), "seconds": round(time.perf_counter() - start, 2),
    }


def holds(op: str, value: float, threshold: float) -> bool:
    """``value`` meets a gate's ``op`` (``>=`` or ``<=``) ``threshold``."""
    return bool(_OPS[op](value, threshold))


def check_confidence(confidence: float | None) -> None:
    if confidence is not None and not (isinstance(confidence, float) and 0.5 <= confidence < 1):
        raise EdgefoldError(f"a confidence is a level from 0.5 up to (not including) 1, e.g. 0.95 (got {confidence!r})")


def _gate_result(gate: Gate, value: float | None, sample: tuple[np.ndarray, str] | None,
                 confidence: float | None) -> dict:
    name, op, threshold = gate
    level = confidence or BOUND_LEVEL
    bound = share = None
    if value is not None and sample is not None:
        resampled = bootstrap(*sample)
        bound = _finite(float(np.quantile(resampled, 1 - level if op == ">=" else level)))
        share = float(_OPS[op](resampled, threshold).mean())
    holds = value is not None and bool(_OPS[op](value, threshold))
    if confidence is not None and sample is not None:
        holds = holds and bound is not None and bool(_OPS[op](bound, threshold))
    return {"metric": name, "op": op, "threshold": threshold, "value": value, "bound": bound, "level": level,
            "confidence": share, "passed": holds}


def _finite(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


def _check_labels(cand: ExportedFolder, ref: ExportedFolder, data: EvalData) -> None:
    names, ref_names = cand.config.get("id2label"), ref.config.get("id2label")
    if names and ref_names and names != ref_names:
        raise EdgefoldError(f"the candidate's labels ({', '.join(names.values())}) are not the reference's "
                            f"({', '.join(ref_names.values())})")
    if names and data.labels is not None:
        unknown = sorted(set(data.labels) - set(names.values()))
        if unknown:
            raise EdgefoldError(f"{data.source} has label(s) {', '.join(map(repr, unknown[:5]))} the model does "
                                f"not know; its labels are: {', '.join(names.values())}")


def failures(report: dict) -> list[str]:
    return [_failure(g) for g in report["gates"] if not g["passed"]]


def gate_line(gate: dict) -> str:
    """``mean_cosine>=0.95: 0.9612, 95% bound 0.9580, holds in 100% of resamples: pass``"""
    line = f"{gate['metric']}{gate['op']}{gate['threshold']:g}: {_number(gate['value'])}"
    if gate["bound"] is not None:
        line += (f", {gate['level']:.0%} bound {gate['bound']:.4f}, holds in {gate['confidence']:.0%} of "
                 "resamples")
    return f"{line}: {'pass' if gate['passed'] else 'FAIL'}"


def _failure(gate: dict) -> str:
    needs = f"needs {gate['op']} {gate['threshold']:g}"
    if gate["value"] is None:
        return f"{gate['metric']} is undefined on this data, {needs}"
    if _OPS[gate["op"]](gate["value"], gate["threshold"]) and gate["bound"] is None:  # a margin was asked
        return f"{gate['metric']} = {gate['value']:.4f}, too close to the threshold ({needs})"
    if _OPS[gate["op"]](gate["value"], gate["threshold"]):  # the value holds; its bound does not
        return (f"{gate['metric']} = {gate['value']:.4f}, but its {gate['level']:.0%} bound "
                f"{gate['bound']:.4f} does not clear it ({needs}; it holds in {gate['confidence']:.0%} of resamples)")
    return f"{gate['metric']} = {gate['value']:.4f}, {needs}"


def _number(value: float | None) -> str:
    return "undefined" if value is None else f"{value:.4f}"


class _Model:
    """A folder ready for inference: tokenizer on construction, session (and what it must offer) on ``open``."""

    def __init__(self, folder: ExportedFolder, reference: bool = False):
        self.folder, self.encoder, self.reference = folder, folder.encoder(), reference
        self.length = min(128, folder.max_positions or 128)
        self.mask_id = None
        if folder.task == "fill-mask":
            self.mask_id = next((i for token in ("[MASK]", "<mask>")
                                 if (i := self.encoder.tokenizer.token_to_id(token)) is not None), None)
            if self.mask_id is None:
                raise EdgefoldError(f"the tokenizer of {folder.path} has no mask token")

    def open(self) -> _Model:
        self.session = open_session(self.folder.graph)
        make_feed(self.session, np.zeros((1, 1), np.int64), np.ones((1, 1), np.int64))  # refuses unknown inputs
        outputs = [o.name for o in self.session.get_outputs()]
        if self.folder.task in ("fill-mask", "text-generation") and "logits" not in outputs:
            raise EdgefoldError(f"{self.folder.graph} has no logits output (it has: {', '.join(outputs)})")
        return self


def _outputs(model: _Model, texts: list[str]) -> tuple[list[np.ndarray], list[tuple[np.ndarray, np.ndarray]]]:
    """The first output for every batch of texts, and the batches (ids, mask) fed."""
    first = model.session.get_outputs()[0].name
    outputs, batches = [], []
    for start in range(0, len(texts), _BATCH):
        ids, mask = model.encoder.encode(texts[start:start + _BATCH], max_length=model.length)
        outputs.append(run(model.session, [first], make_feed(model.session, ids, mask))[0])
        batches.append((ids, mask))
    return outputs, batches


def sentence_embeddings(model: ExportedFolder, texts: list[str]) -> np.ndarray:
    """Mean-pooled last hidden states of ``texts`` (128 tokens at most), from the folder's own graph."""
    return _embeddings(_Model(model).open(), texts)


def _embeddings(model: _Model, texts: list[str]) -> np.ndarray:
    key = _embeddings_key(model, texts) if model.reference else None
    if key in _REFERENCE_EMBEDDINGS:
        _REFERENCE_EMBEDDINGS.move_to_end(key)
        return _REFERENCE_EMBEDDINGS[key]
    outputs, batches = _outputs(model, texts)
    embeddings = np.concatenate([mean_pool(out, mask) for out, (_, mask) in zip(outputs, batches)])
    if key is not None:
        embeddings.setflags(write=False)  # shared by every later caller
        _REFERENCE_EMBEDDINGS[key] = embeddings
        while len(_REFERENCE_EMBEDDINGS) > _KEPT_EMBEDDINGS:
            _REFERENCE_EMBEDDINGS.popitem(last=False)
    return embeddings


def _embeddings_key(model: _Model, texts: list[str]) -> tuple:
    graph = model.folder.graph.resolve()
    files = sorted(graph.parent.glob(f"{graph.name}*"))  # the graph and its external data
    stats = tuple((file.name, file.stat().st_size, file.stat().st_mtime_ns) for file in files)
    digest = hashlib.sha256("\0".join(texts).encode()).hexdigest()
    return str(graph), stats, model.length, digest


def _feature_extraction(cand: _Model, ref: _Model, data: EvalData) -> tuple[dict, Samples]:
    a, b = _embeddings(ref, data.texts), _embeddings(cand, data.texts)
    cosines = row_cosines(a, b)
    metrics = {"mean_cosine": float(cosines.mean()), "p01_cosine": float(np.quantile(cosines, TAIL)),
               "min_cosine": float(cosines.min())}
    samples = {"mean_cosine": (cosines, "mean"), "p01_cosine": (cosines, "p01"), "min_cosine": (cosines, "min")}
    if len(a) >= 3:  # neighbours and a rank correlation need a few items
        agreements = neighbour_agreements(a, b, 10)
        metrics.update(top10_agreement=float(agreements.mean()), spearman=spearman_of_similarities(a, b))
        samples["top10_agreement"] = (agreements, "mean")
    if data.pairs:
        queries, positives = (list(side) for side in zip(*data.pairs))
        hits = {}
        for side, model in (("reference", ref), ("candidate", cand)):
            ranks = _retrieval_ranks(_embeddings(model, queries), _embeddings(model, positives))
            hits[side] = (ranks == 0).astype(float)
            metrics[f"recall_at_1_{side}"] = float(hits[side].mean())
            metrics[f"mrr_{side}"] = float((1 / (ranks + 1)).mean())
        metrics["recall_at_1_drop"] = metrics["recall_at_1_reference"] - metrics["recall_at_1_candidate"]
        samples["recall_at_1_drop"] = (hits["reference"] - hits["candidate"], "mean")
    return metrics, samples


def _retrieval_ranks(queries: np.ndarray, positives: np.ndarray) -> np.ndarray:
    def unit(rows: np.ndarray) -> np.ndarray:
        return rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)

    scores = unit(queries) @ unit(positives).T
    return (scores > np.diag(scores)[:, None]).sum(axis=1)


def _classification(cand: _Model, ref: _Model, data: EvalData) -> tuple[dict, Samples]:
    ref_labels = np.concatenate(_outputs(ref, data.texts)[0]).argmax(-1)
    cand_labels = np.concatenate(_outputs(cand, data.texts)[0]).argmax(-1)
    agree = (ref_labels == cand_labels).astype(float)
    metrics, samples = {"label_agreement": float(agree.mean())}, {"label_agreement": (agree, "mean")}
    if data.labels:
        names = cand.folder.config.get("id2label") or {}
        truth = np.array(data.labels)
        right = {}
        for side, predicted in (("reference", ref_labels), ("candidate", cand_labels)):
            predicted = np.array([str(names.get(str(p), p)) for p in predicted])
            right[side] = (predicted == truth).astype(float)
            metrics[f"accuracy_{side}"] = float(right[side].mean())
            metrics[f"macro_f1_{side}"] = _macro_f1(truth, predicted)
        metrics["accuracy_drop"] = metrics["accuracy_reference"] - metrics["accuracy_candidate"]
        samples["accuracy_drop"] = (right["reference"] - right["candidate"], "mean")
    return metrics, samples


def _macro_f1(truth: np.ndarray, predicted: np.ndarray) -> float:
    scores = []
    for label in np.unique(truth):
        tp = float(((predicted == label) & (truth == label)).sum())
        precision = tp / max((predicted == label).sum(), 1)
        recall = tp / max((truth == label).sum(), 1)
        scores.append(0.0 if tp == 0 else 2 * precision * recall / (precision + recall))
    return float(np.mean(scores))


def _language_model(cand: _Model, ref: _Model, data: EvalData) -> tuple[dict, Samples]:
    a, b = _finite(_perplexity(ref, data.texts)), _finite(_perplexity(cand, data.texts))
    return {"perplexity_reference": a, "perplexity_candidate": b,
            "perplexity_ratio": None if a is None or b is None else b / a}, {}


def _perplexity(model: _Model, texts: list[str]) -> float | None:
    """Causal LMs: next-token perplexity. Masked LMs: every 7th real token masked, perplexity of the originals.

    None when no token was scored (texts too short); inf when it overflows.
    """
    session = model.session
    total, count = 0.0, 0
    for start in range(0, len(texts), _BATCH):
        ids, mask = model.encoder.encode(texts[start:start + _BATCH], max_length=model.length)
        if model.mask_id is not None:
            position = np.arange(ids.shape[1])[None, :]
            inside = (position >= 1) & (position < mask.sum(axis=1, keepdims=True) - 1)  # not [CLS] / [SEP]
            chosen = inside & (position % 7 == 1)
            feed_ids = np.where(chosen, model.mask_id, ids)
            logits = run(session, ["logits"], make_feed(session, feed_ids, mask))[0]
            targets, where = ids, chosen
        else:
            logits = run(session, ["logits"], make_feed(session, ids, mask))[0][:, :-1]
            targets, where = ids[:, 1:], mask[:, 1:].astype(bool)
        logits = logits - logits.max(-1, keepdims=True)
        log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
        picked = np.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]
        total -= float(picked[where].sum())
        count += int(where.sum())
    if count == 0:
        return None
    with np.errstate(over="ignore"):
        return float(np.exp(total / count))


_METRICS = {"feature-extraction": _feature_extraction, "text-classification": _classification,
            "fill-mask": _language_model, "text-generation": _language_model}
