"""``search_export``: the smallest (or fastest) model that passes the user's gates, on the user's text.

1. The data is split: fit (statistics, token counts), selection (every choice below), check (never seen).
2. Each module's choices (precision fp32/int8/int4-32/int4-128/int2-32, low-bit weights fitted by GPTQ on the fit split
   by default; the word embeddings kept or factorised at a few ratios; in the full search, Linears factorised at a
   few ranks) are scored alone in torch (``sensitivity``).
3. The predicted Pareto curve of cost against loss is built greedily (``frontier``); onnxruntime's quantiser
   alone (int8, and int4 by rounding) is a candidate too, so the result is never worse than either.
4. Candidates along the curve are exported and validated as ONNX graphs on the selection split, bisecting for
   the cheapest that passes (a candidate that fails moves the search back to costlier ones).
   Each candidate is validated on a second domain too, text of another kind than the user's (the shipped Python
   docstrings, ``runtime.dataset.second_domain``): its selection half. A choice fitted to the user's text (token
   frequencies, input moments) must still hold on text it was not fitted to.
5. The chosen model must pass again on the check split and on the second domain's check half; only then is the
   folder written, with its plan and a frontier report. Anything else fails closed: nothing is written.
"""

from __future__ import annotations

import gc
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from edgefold.exporter.checks.manifest import write_manifest
from edgefold.exporter.config import CompressionConfig
from edgefold.exporter.distributed import Executor, executor_for, threads_per_worker
from edgefold.exporter.graph.config import GraphConfig
from edgefold.exporter.graph.quantize import LOW_BITS, PRECISIONS, check_algorithm
from edgefold.exporter.pipeline import export
from edgefold.exporter.planning.plan import ModuleChoice, Plan
from edgefold.exporter.search.candidates import Inputs, Job, shared_inputs, verify_all
from edgefold.exporter.search.frontier import Point, curve
from edgefold.exporter.search.latency import OpShape, measure_table, model_latencies, model_latency
from edgefold.exporter.search.report import write_report
from edgefold.exporter.search.sensitivity import Space, dense_operators, measure_space
from edgefold.exporter.search.space import OBJECTIVES, Cost, fixed_cost
from edgefold.exporter.search.splits import SENSITIVITY_DOMAIN_ITEMS, SENSITIVITY_ITEMS, Splits, halves
from edgefold.exporter.source.loading import SourceModel, inspect_model, load_model, load_tokenizer
from edgefold.exporter.source.output import check_output_dir, staged_folder
from edgefold.runtime import EdgefoldError, GateFailure
from edgefold.runtime.dataset import EvalData, check_data, load_data, second_domain
from edgefold.runtime.manifest import MANIFEST_NAME, read_manifest
from edgefold.runtime.optable import LatencyTable
from edgefold.runtime.texts import shipped_texts
from edgefold.runtime.validate import BOUND_LEVEL, check_gates, failures, holds, metric_names, parse_gate, validate

#: Gates when the user gives none: what a careful release engineer accepts. onnxruntime's int8 alone is what
#: teams ship today; on the shipped evaluation text it keeps a mean cosine of 0.965, a worst 1% of sentences
#: of 0.94 and 82% of each sentence's 10 nearest neighbours. The defaults sit below that (mean 0.95, worst 1%
#: 0.85, neighbours 75%), so no model much worse than int8 alone passes, on the average or on the tail. The tail
#: is the 1st percentile, not the minimum: a minimum falls as the text grows, so no sample certifies it.
#: With task-level data the task decides too (retrieval recall@1 or accuracy at most one point down).
DEFAULT_GATES = {
    "feature-extraction": ("mean_cosine>=0.95", "p01_cosine>=0.85", "top10_agreement>=0.75"),
    "text-classification": ("label_agreement>=0.98",),
    "fill-mask": ("perplexity_ratio<=1.05",),
    "text-generation": ("perplexity_ratio<=1.05",),
}
TASK_GATES = {"pairs": "recall_at_1_drop<=0.01", "labels": "accuracy_drop<=0.01"}
#: Latency is measured and predicted at batch 1 x this many tokens, one thread: an app embedding one text.
LATENCY_TOKENS, LATENCY_THREADS = 128, 1
BASELINES = {"int8 alone": "int8", "int4-32 alone": "int4-32", "int4-128 alone": "int4-128"}
#: The search accepts a candidate only if every gate's one-sided bootstrap bound at this level clears it, on the
#: selection split, and the chosen one again on the check split. The cheapest candidate that passes sits at the
#: edge of a gate by construction; judged on its value alone it would fail on unseen text about half the time
#: (measured: int4-128 alone, mean cosine 0.9504 on selection, 0.9496 on check).
CONFIDENCE = BOUND_LEVEL
#: A gate on a metric of the whole text at once (perplexity, spearman), which has no bootstrap bound, must be
#: cleared by this much instead.
SELECTION_MARGIN = 0.005


@dataclass(frozen=True)
class SearchConfig:
    """What to optimise and what must hold. ``objective``: size (bytes on disk) or latency (batch 1 x 128
    tokens, one thread). ``gates``: ``edgefold validate`` gates (empty: :data:`DEFAULT_GATES`). ``data``: the
    user's text (split fit / selection / check), or None for the shipped calibration text. ``full``: also
    factorise Linears (slower; the quick search chooses precisions and the embeddings' factorisation).
    ``latency_table``: a table measured on the target device (``edgefold bench --op-table``); None measures
    this CPU. ``max_candidates``: graphs verified at most (each one export and one validation). ``ray``: a Ray
    cluster's address (or "auto") where the candidates and the per-module measurements run as tasks (None: local
    processes). ``workers``: candidates verified at once, a round of the bisection (None: this machine's cores, or
    the cluster's CPUs); the same ``workers`` and ``seed`` give the same result locally and on a cluster.
    ``algorithm``: how the candidates' 4-bit weights are chosen: gptq (error feedback on the fit split's inputs)
    or rtn (onnxruntime's rounding, what the baselines use). ``second_domain``: every candidate must clear the
    gates on the selection half of the shipped second domain too, and the chosen one on its check half (False:
    the user's text alone decides)."""

    objective: str = "size"
    gates: tuple[str, ...] = ()
    data: EvalData | None = None
    full: bool = False
    workers: int | None = None
    latency_table: str | None = None
    max_candidates: int = 9
    seed: int = 0
    ray: str | None = None
    algorithm: str = "gptq"
    second_domain: bool = True

    def __post_init__(self) -> None:
        check_algorithm(self.algorithm)
        if self.objective not in OBJECTIVES:
            raise EdgefoldError(f"unknown objective {self.objective!r}; choose from: {', '.join(OBJECTIVES)}")
        for name, low in (("workers", 1), ("max_candidates", 4)):
            value = getattr(self, name)
            if value is None and name == "workers":
                continue
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise EdgefoldError(f"{name} must be a whole number of at least {low} (got {value!r})")
        if self.latency_table is not None and self.objective != "latency":
            raise EdgefoldError("a latency table serves --objective latency")
        if self.ray is not None and (not isinstance(self.ray, str) or not self.ray.strip()):
            raise EdgefoldError(f"ray takes a cluster's address or 'auto' (got {self.ray!r})")
        object.__setattr__(self, "gates", tuple(self.gates))


def search_export(model: str | Path, output_dir: str | Path, search: SearchConfig, *, task: str = "auto",
                  overwrite: bool = False, trust_remote_code: bool = False, progress: bool = True) -> dict:
    """Write the cheapest model (by ``search.objective``) that passes the gates on the selection split and
    again on the check split; returns its manifest (with the plan and the search's summary). Raises
    :class:`EdgefoldError`, writing nothing, for bad input, when no candidate passes, or when the check fails."""
    output_dir = Path(output_dir)
    data = search.data or _shipped_data()
    source, gates = _check_inputs(model, output_dir, task, overwrite, trust_remote_code, data, search.gates)
    splits = Splits.of(data)
    table = LatencyTable.read(search.latency_table) if search.latency_table else None
    if table is not None and table.tokens != LATENCY_TOKENS:
        raise EdgefoldError(f"the latency table {search.latency_table} was measured at {table.tokens} tokens; "
                            f"the search predicts batch 1 x {LATENCY_TOKENS} (write probes with edgefold probes)")
    run = _Search(source, search, gates, splits, data.source, trust_remote_code, progress)
    with tempfile.TemporaryDirectory(prefix="edgefold-search-") as work:
        return run.run(Path(work), output_dir, table)


def _check_inputs(model: str | Path, output_dir: Path, task: str, overwrite: bool, trust_remote_code: bool,
                  data: EvalData, gates: tuple[str, ...] | list[str]) -> tuple:
    """(source, gates): the model, the output folder, the data and the gates (the task's defaults where none are
    given), all refused before any work."""
    source = inspect_model(str(model), task, trust_remote_code)
    check_output_dir(output_dir, source.path, overwrite)
    check_data(data, source.task)
    gates = list(gates) or default_gates(source.task, data)
    check_gates(source.task, data, gates)
    return source, gates


def _export_reference(source: SourceModel, folder: Path, trust_remote_code: bool, streamed: bool = False) -> Path:
    """The original, exported unchanged and unoptimised: what every candidate is validated against."""
    export(source.name, folder, CompressionConfig(method="none"), GraphConfig(optimize="none"), task=source.task,
           trust_remote_code=trust_remote_code, progress=False, streamed=streamed)
    return folder


def default_gates(task: str, data: EvalData) -> list[str]:
    gates = list(DEFAULT_GATES[task])
    if data.pairs and task == "feature-extraction":
        gates.append(TASK_GATES["pairs"])
    if data.labels is not None and task == "text-classification":
        gates.append(TASK_GATES["labels"])
    return gates


def _shipped_data() -> EvalData:
    texts = shipped_texts("calibration.txt")
    return EvalData("shipped calibration.txt", texts)


class _Search:
    """One search: its inputs, checked; ``run`` does the steps of the module docstring in order."""

    def __init__(self, source: SourceModel, search: SearchConfig, gates: list[str], splits: Splits, data_source: str,
                 trust_remote_code: bool, progress: bool):
        self.source, self.search, self.gates, self.splits = source, search, gates, splits
        self.data_source, self.trust_remote_code, self.progress = data_source, trust_remote_code, progress
        self.calibration = splits.calibration()
        self.domain = _second_domain(source.task, gates) if search.second_domain else None
        self.step = self.jobs_made = 0

    def say(self, what: str) -> None:
        self.step += 1
        if self.progress:
            print(f"edgefold: [{self.step}/7] {what}", file=sys.stderr, flush=True)

    def run(self, work: Path, output_dir: Path, table: LatencyTable | None) -> dict:
        # connected first: a cluster that cannot be reached fails the export before any work
        local_workers = self.search.workers or os.cpu_count() or 1
        with executor_for(self.search.ray, self.search.workers if self.search.ray else local_workers) as executor:
            return self._run(executor, work, output_dir, table)

    def _run(self, executor: Executor, work: Path, output_dir: Path, table: LatencyTable | None) -> dict:
        self.say(f"loading {self.source.name} and exporting it unchanged as the reference")
        network = load_model(self.source, self.trust_remote_code)
        if table is not None:
            _check_table(table, dense_operators(network))
        self.reference = _export_reference(self.source, work / "reference", self.trust_remote_code)
        domain_texts = self.domain.selection.texts[:SENSITIVITY_DOMAIN_ITEMS] if self.domain else []
        self.say(f"measuring each module's choices on {SENSITIVITY_ITEMS} selection items"
                 + (f" and {len(domain_texts)} of the second domain" if domain_texts else "") + " "
                 f"({'full' if self.search.full else 'quick'} search"
                 f"{f', on the Ray cluster at {self.search.ray}' if self.search.ray else ''})")
        space = measure_space(network, load_tokenizer(self.source), self.splits, factorise_linears=self.search.full,
                              seed=self.search.seed, progress=self.progress, algorithm=self.search.algorithm,
                              also_on=domain_texts,
                              executor=executor if self.search.ray else None)  # locally: inline, as it always was
        del network
        gc.collect()
        self.say(f"costing the choices ({self.search.objective})")
        cost = self._cost(space, table)
        points = curve(space.options, cost.of, cost.fixed)[1:]  # the first is the original itself
        baselines = {label: _uniform(space, precision, cost) for label, precision in BASELINES.items()}
        self.say(f"verifying candidates as ONNX graphs against the gates ({', '.join(self.gates)})")
        verified = self._verify(executor, work, space, points, baselines)
        self.say(f"measuring the latency of {sum(r['bytes'] is not None for r in verified)} verified graph(s)")
        self._measure_latency(verified)
        chosen = self._choose(verified)
        self.say(f"checking {chosen['label']} on the check split ({len(self.splits.check.texts)} items, unseen)"
                 + (f" and the second domain's check half ({len(self.domain.check.texts)})" if self.domain else ""))
        check = validate(chosen["folder"], self.reference, self.splits.check, self.gates, confidence=CONFIDENCE)
        domain = None if self.domain is None else validate(chosen["folder"], self.reference, self.domain.check,
                                                           list(self.domain.gates), confidence=CONFIDENCE)
        summary = self._summary(verified, chosen, check, domain, cost)
        if not check["passed"]:
            raise GateFailure(f"{chosen['label']} passes the gates on the selection split but not on the check "
                              f"split ({'; '.join(failures(check))}); nothing was written")
        if domain is not None and not domain["passed"]:
            raise GateFailure(f"{chosen['label']} passes the gates on the selection and check splits but not on "
                              f"{domain['data']['source']} ({'; '.join(failures(domain))}); nothing was written")
        self.say(f"writing {output_dir}")
        search = {key: value for key, value in summary.items() if key != "candidates"}
        return _publish(Path(chosen["folder"]), output_dir, {"search": search}, summary)

    def _cost(self, space: Space, table: LatencyTable | None) -> Cost:
        dense = {name: options[0] for name, options in space.options.items()}
        if self.search.objective == "size":
            measured = read_manifest(self.reference)["totals"]["bytes_after"]
            return Cost("size", fixed_cost("size", dense, measured, None))
        if table is not None:  # the device's: the rest of the model was not timed there, and is the same for all
            return Cost("latency", 0.0, table)
        shapes = {op for options in space.options.values() for option in options for op in option.ops}
        table = measure_table(sorted(shapes), PRECISIONS, LATENCY_TOKENS, LATENCY_THREADS)
        measured = model_latency(self.reference, LATENCY_TOKENS, LATENCY_THREADS)
        return Cost("latency", fixed_cost("latency", dense, measured, table), table)

    def _verify(self, executor: Executor, work: Path, space: Space, points: list[Point],
                baselines: dict[str, Point]) -> list[dict]:
        """Bisect the curve for its cheapest passing point, ``workers`` candidates a round; baselines first."""
        workers, budget = executor.workers, self.search.max_candidates
        inputs = Inputs(self.source.name, self.source.task, self.calibration, self.reference, self.splits.selection,
                        tuple(self.gates), self.trust_remote_code, *((self.domain.selection, self.domain.gates)
                                                                     if self.domain else ()))
        shared = shared_inputs(executor, inputs, self.source.path)
        verified: list[dict] = []
        low, high = -1, len(points)  # points[low] passes (-1: the original), points[high] fails (len: assumed)
        queue = [(label, point, None) for label, point in baselines.items()]
        with tqdm(total=budget, desc="candidates", unit="graph", disable=not self.progress) as bar:
            while len(verified) < budget and (queue or high - low > 1):
                room = budget - len(verified)
                indices = _between(low, high, max(1, min(workers, room - len(queue))))
                batch = queue + [(f"curve {i + 1}/{len(points)}", points[i], i) for i in indices]
                queue = []
                jobs = [self._job(work, label, point, space, index, workers)
                        for label, point, index in batch[:room]]
                for (_, meta), result in zip(jobs, verify_all(executor, shared, [job for job, _ in jobs])):
                    verified.append({**meta, **result, "accepted": _clears(result)})
                bar.update(len(jobs))
                low, high = _bounds(verified, len(points))
        return verified

    def _job(self, work: Path, label: str, point: Point, space: Space, index: int | None,
             workers: int) -> tuple[Job, dict]:
        """A candidate's job, and what the search knows of it: where it sits on the curve (None: a baseline)."""
        plan = Plan({name: option.choice for name, option in point.options.items() if option.choice != ModuleChoice()})
        self.jobs_made += 1
        low_bit = any(precision in LOW_BITS for precision in plan.precisions.values())
        algorithm = self.search.algorithm if index is not None and low_bit else "rtn"  # baselines: onnxruntime's
        job = Job(label, plan, space.factors_for(plan.modules), work / f"candidate-{self.jobs_made:02d}",
                  threads_per_worker(workers), algorithm)
        meta = {"kind": "baseline" if index is None else "path", "index": index, "plan": plan.describe(),
                "algorithm": algorithm,
                "plan_modules": plan.as_dict()["modules"], "predicted_cost": point.cost,
                # the sensitivities simulate the search's algorithm: a baseline that rounds has no prediction
                "predicted_loss": point.loss if algorithm == self.search.algorithm or not low_bit else None}
        return job, meta

    def _measure_latency(self, verified: list[dict]) -> None:
        """Every exported candidate and the original, measured together, taking turns."""
        exported = [row for row in verified if row["bytes"] is not None]
        measured = model_latencies([self.reference, *(Path(row["folder"]) for row in exported)], LATENCY_TOKENS,
                                   LATENCY_THREADS)
        self.reference_ms = measured[0]
        for row in verified:
            row["latency_ms"] = None
        for row, ms in zip(exported, measured[1:]):
            row["latency_ms"] = ms

    def _choose(self, verified: list[dict]) -> dict:
        passing = [row for row in verified if row["accepted"]]
        if not passing:
            best = min(verified, key=lambda r: (sum(not g["passed"] for g in _all_gates(r)) if r["gates"] else 99,
                                                r["predicted_loss"] if r["predicted_loss"] is not None else 1.0))
            judged = [{**gate, "passed": _gate_clears(gate)} for gate in _all_gates(best)]
            reasons = "; ".join(failures({"gates": judged})) or best.get("error", "")
            raise GateFailure(f"no candidate clears the gates at {CONFIDENCE:.0%} confidence on the selection split "
                              f"({len(verified)} verified); the closest, {best['label']} ({best['plan']}): "
                              f"{reasons}; nothing was written")
        # bytes are exact; latency is measured here, unless the table came from the device, whose predictions
        # are then the only times of the target there are
        key = {"size": "bytes", "latency": "predicted_cost" if self.search.latency_table else "latency_ms"}
        return min(passing, key=lambda row: (row[key[self.search.objective]], row["predicted_cost"]))

    def _summary(self, verified: list[dict], chosen: dict, check: dict, domain: dict | None, cost: Cost) -> dict:
        reference_bytes = read_manifest(self.reference)["totals"]["bytes_after"]
        rows = [{key: row[key] for key in ("label", "kind", "plan", "algorithm", "bytes", "latency_ms", "predicted_cost",
                                           "predicted_loss", "metrics", "gates", "domain", "passed", "accepted")}
                | ({"error": row["error"]} if row.get("error") else {}) for row in verified]
        return {
            "objective": self.search.objective, "mode": "full" if self.search.full else "quick",
            "algorithm": self.search.algorithm,
            "data": self.data_source, "splits": self.splits.describe(),
            "gates": [{"text": text, "metric": metric, "op": op, "threshold": value}
                      for text, (metric, op, value) in zip(self.gates, check_gates(self.source.task,
                                                                                   self.splits.check, self.gates))],
            "reference": {"bytes": reference_bytes, "latency_ms": self.reference_ms},
            "confidence": CONFIDENCE, "selection_margin": SELECTION_MARGIN,
            "latency": {"tokens": LATENCY_TOKENS, "threads": LATENCY_THREADS,
                        "predicted_ms": chosen["predicted_cost"] if cost.objective == "latency" else None,
                        "table": None if cost.table is None else cost.table.source},
            "chosen": chosen["label"], "chosen_plan": chosen["plan"], "chosen_latency_ms": chosen["latency_ms"],
            "selection": {"metrics": chosen["metrics"], "gates": chosen["gates"]},
            "check": {"metrics": check["metrics"], "gates": check["gates"]},
            "second_domain": None if domain is None else {
                "selection": {"data": self.domain.selection.describe(), "metrics": chosen["domain"]["metrics"],
                              "gates": chosen["domain"]["gates"]},
                "check": {key: domain[key] for key in ("data", "metrics", "gates")}},
            "candidates": rows,
        }


def _uniform(space: Space, precision: str, cost: Cost) -> Point:
    """Every module dense at one precision: what a user gets from onnxruntime's quantiser alone."""
    options = {name: next(o for o in opts if not o.choice.factorised and o.choice.precision == precision)
               for name, opts in space.options.items()}
    return Point(options, cost.total(options), sum(o.loss for o in options.values()))


def _bounds(verified: list[dict], count: int) -> tuple[int, int]:
    """The curve's cheapest accepted point so far (-1: none, the original), and the first point after it that
    failed (``count``: none yet). Where the curve is not monotone, a costlier failure does not hide the cheaper
    points beyond a pass."""
    path = [row for row in verified if row["kind"] == "path"]
    low = max((row["index"] for row in path if row["accepted"]), default=-1)
    high = min((row["index"] for row in path if not row["accepted"] and row["index"] > low), default=count)
    return low, high


def _clears(result: dict) -> bool:
    return result["passed"] and all(_gate_clears(g) for g in _all_gates(result))


def _all_gates(result: dict) -> list[dict]:
    """A candidate's gates on the selection split and on the second domain's selection half."""
    domain = result["domain"]["gates"] if result.get("domain") else []
    return result["gates"] + [{**gate, "metric": f"{gate['metric']} on the second domain"} for gate in domain]


@dataclass(frozen=True)
class _Domain:
    """The shipped second domain: the half the candidates are validated on, the half the chosen one is checked
    on, and the user's gates it can compute (a gate on labels cannot be computed on unlabelled text)."""

    selection: EvalData
    check: EvalData
    gates: tuple[str, ...]


def _second_domain(task: str, gates: list[str]) -> _Domain | None:
    domain = second_domain(task)
    available = metric_names(task, domain)
    computable = tuple(gate for gate in gates if parse_gate(gate)[0] in available)
    return _Domain(*halves(domain), computable) if computable else None


def _gate_clears(gate: dict) -> bool:
    """The gate passed, and its bootstrap bound (at :data:`CONFIDENCE`) clears it too; a gate without a bound
    clears it by :data:`SELECTION_MARGIN` (a threshold of >= moves up, one of <= down)."""
    if not gate["passed"]:
        return False
    if gate["bound"] is not None:
        return holds(gate["op"], gate["bound"], gate["threshold"])
    margin = SELECTION_MARGIN if gate["op"] == ">=" else -SELECTION_MARGIN
    return holds(gate["op"], gate["value"], gate["threshold"] + margin)


def _between(low: int, high: int, count: int) -> list[int]:
    """Up to ``count`` indices strictly between ``low`` and ``high``, evenly spread."""
    indices = {low + (high - low) * (j + 1) // (count + 1) for j in range(count)}
    return sorted(i for i in indices if low < i < high)


def _check_table(table: LatencyTable, shapes: set[OpShape]) -> None:
    """The model's own operators must be in the table as they are (factors' times may be scaled)."""
    for shape in sorted(shapes):
        for precision in PRECISIONS:
            table.ms(shape.op, shape.k, shape.n, precision)  # raises, naming the missing entry


def export_gated(model: str | Path, output_dir: str | Path, config: CompressionConfig, graph: GraphConfig,
                 gates: list[str], data: EvalData | None = None, *, task: str = "auto", overwrite: bool = False,
                 trust_remote_code: bool = False, parity_atol: float | None = None, progress: bool = True,
                 streamed: bool = False) -> dict:
    """``export`` a recipe (or a plan), then validate it against the original on ``data`` (default: the shipped
    evaluation text); a recipe that fails a gate is refused (:class:`GateFailure`), nothing written. ``streamed``:
    both exports, the recipe's and the original's, read one layer at a time (see :func:`export`)."""
    output_dir = Path(output_dir)
    data = data or load_data(None)
    source, gates = _check_inputs(model, output_dir, task, overwrite, trust_remote_code, data, gates)
    atol = {} if parity_atol is None else {"parity_atol": parity_atol}
    with tempfile.TemporaryDirectory(prefix="edgefold-gated-") as work:
        candidate, reference = Path(work) / "candidate", Path(work) / "reference"
        export(source.name, candidate, config, graph, task=source.task, trust_remote_code=trust_remote_code,
               progress=progress, streamed=streamed, **atol)
        if progress:
            print(f"edgefold: validating against the original on {data.source} ({', '.join(gates)})",
                  file=sys.stderr, flush=True)
        _export_reference(source, reference, trust_remote_code, streamed)
        report = validate(candidate, reference, data, gates)
        if not report["passed"]:
            raise GateFailure(f"the recipe fails its gates on {data.source}: {'; '.join(failures(report))}; "
                              "nothing was written")
        return _publish(candidate, output_dir, {"gates": {"data": report["data"], "metrics": report["metrics"],
                                                          "gates": report["gates"]}})


def _publish(candidate: Path, output_dir: Path, additions: dict, report: dict | None = None) -> dict:
    """The candidate's folder written as ``output_dir``, its manifest extended, with the frontier report."""
    manifest = read_manifest(candidate) | additions
    with staged_folder(output_dir) as staging:
        for path in candidate.iterdir():
            if path.is_file() and path.name != MANIFEST_NAME:
                shutil.copy2(path, staging / path.name)
        if report is not None:
            write_report(staging, report)
        write_manifest(staging, manifest)
    return manifest
