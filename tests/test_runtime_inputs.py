"""Bad and odd input to the runtime's library functions: one EdgefoldError line before any work, never a traceback.

Everything here runs without inference: the folders are synthetic (a junk ``model.onnx``, a tiny tokenizer),
so a check that is not made before the session is created shows up as "onnxruntime cannot load".
"""

import csv
import io
import json
import math
import re
import shutil
import tempfile
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer, models, pre_tokenizers

from edgefold.runtime import EdgefoldError, report
from edgefold.runtime.bench import BenchSettings, _summary, bench
from edgefold.runtime.dataset import EvalData, check_data, load_data
from edgefold.runtime.folder import ExportedFolder
from edgefold.runtime.metrics import neighbour_agreement, spearman_of_similarities
from edgefold.runtime.validate import DEFAULT_GATES, check_inputs, failures, parse_gate, validate

TASKS = list(DEFAULT_GATES)
ARCHITECTURES = {"feature-extraction": "BertModel", "text-classification": "BertForSequenceClassification",
                 "fill-mask": "BertForMaskedLM", "text-generation": "GPT2LMHeadModel"}
QUICK = {"max_examples": 40, "deadline": None, "suppress_health_check": [HealthCheck.too_slow]}

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8)


def make_folder(root: Path, task: str = "feature-extraction", config: dict | None = None,
                files: dict[str, object] | None = None) -> Path:
    """A folder ExportedFolder opens: a junk graph (no session can load it), a tiny tokenizer, config.json."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "model.onnx").write_bytes(b"not a graph")
    vocab = {"[PAD]": 0, "[UNK]": 1, "[MASK]": 2, "hello": 3, "world": 4}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.save(str(root / "tokenizer.json"))
    (root / "config.json").write_text(json.dumps(
        config if config is not None else {"architectures": [ARCHITECTURES[task]], "vocab_size": 30}))
    for name, content in (files or {}).items():
        (root / name).write_bytes(content if isinstance(content, bytes) else json.dumps(content).encode())
    return root


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("synthetic")
    made = {task: make_folder(root / task, task) for task in TASKS}
    made["labelled"] = make_folder(root / "labelled", config={
        "architectures": ["BertForSequenceClassification"], "id2label": {"0": "neg", "1": "pos"}})
    return made


def _fails(call, match: str) -> str:
    with pytest.raises(EdgefoldError, match=match) as error:
        call()
    assert "\n" not in str(error.value)
    return str(error.value)


def _data(tmp_path: Path, name: str, content: str | bytes, **columns) -> EvalData:
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return load_data(str(path), **columns)


# --- bench settings -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("values", [
    {"min_seconds": math.inf}, {"min_seconds": math.nan}, {"min_seconds": -1}, {"min_seconds": 3601},
    {"warmup": -1}, {"warmup": 1.5}, {"warmup": True}, {"iterations": 0}, {"iterations": 10**9},
    {"threads": ()}, {"threads": (0,)}, {"threads": (10**6,)}, {"threads": ("1",)}, {"threads": 1},
    {"batch_sizes": ()}, {"batch_sizes": (10**6,)}, {"seq_lengths": (0,)}, {"inputs": "tokens"},
    {"optimization": []}, {"arena": "yes"}])
def test_bench_settings_refuse_mistyped_values(values):
    _fails(lambda: BenchSettings(**values), "must be")


def test_bench_settings_take_lists_and_numpy_numbers():
    chosen = BenchSettings(threads=[np.int64(1)], batch_sizes=[1, 1, 2], min_seconds=np.float32(0.5), warmup=0)
    assert chosen.threads == (1,) and type(chosen.threads[0]) is int and chosen.min_seconds == 0.5
    assert chosen.grid() == [(1, 1, 128), (1, 2, 128)]


def test_bench_summary_of_one_run_has_no_nan():
    assert _summary([5.0], batch=2) == {"iterations": 1, "p50": 5.0, "p90": 5.0, "p95": 5.0, "p99": 5.0,
                                        "mean": 5.0, "stdev": 0.0, "sequences_per_s": 400.0}
    assert _summary([0.0], batch=1)["sequences_per_s"] is None


def test_bench_names_a_graph_onnxruntime_cannot_load_before_any_worker(folders):
    graph = folders["feature-extraction"] / "model.onnx"
    with mock.patch("edgefold.runtime.bench._run_worker", side_effect=AssertionError("a worker started")):
        _fails(lambda: bench(folders["feature-extraction"], BenchSettings(threads=(1,))),
               f"onnxruntime cannot load {graph}")


# --- gates ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("gate", ["mean_cosine>=0.9.8", "mean_cosine>=inf", "mean_cosine>=nan", "mean_cosine>=1e999",
                                  "", "mean_cosine > 0.9", "mean_cosine>=", ">=0.9", None, 0.9])
def test_bad_gate_expressions(gate):
    _fails(lambda: parse_gate(gate), "gate")


def test_gate_expressions():
    assert parse_gate(" mean_cosine >= 0.98 ") == ("mean_cosine", ">=", 0.98)
    assert parse_gate("accuracy_drop<=-1e-3") == ("accuracy_drop", "<=", -0.001)


@pytest.mark.parametrize("content,match", [
    ({"gates": []}, "lists no gates"), ([], "must be JSON like"), (None, "must be JSON like"),
    ("mean_cosine>=0.9", "must be JSON like"), ({"gates": "mean_cosine>=0.9"}, "must be JSON like"),
    ({"gates": [0.9]}, "must be JSON like"), ({}, "must be JSON like"), (b"\xff\xfe{}", "not UTF-8"),
    (b"{gates", "not valid JSON"), ({"gates": ["mean_cosine>=0.9.8"]}, "a gate reads"),
    ({"gates": ["mean_cosine>=Infinity"]}, "a gate reads"), ({"gates": ["label_agreement>=0.9"]}, "no metric"),
    ({"gates": ["recall_at_1_drop<=0.1"]}, "needs query and positive columns")])
def test_bad_gate_files(folders, tmp_path, content, match):
    path = tmp_path / "gates.json"
    path.write_bytes(content if isinstance(content, bytes) else json.dumps(content).encode())
    _fails(lambda: check_inputs(folders["feature-extraction"], load_data(None), gate_file=path), match)


def test_unreadable_gate_files(folders, tmp_path):
    _fails(lambda: check_inputs(folders["feature-extraction"], load_data(None), gate_file=tmp_path / "none.json"),
           "gate file not found")
    candidate = shutil.copytree(folders["feature-extraction"], tmp_path / "candidate")
    (candidate / "edgefold-gates.json").mkdir()
    _fails(lambda: check_inputs(candidate, load_data(None)), "cannot read")


def test_gates_and_data_are_checked_before_any_session(folders):
    cand = ref = folders["feature-extraction"]
    with mock.patch("edgefold.runtime.validate.open_session", side_effect=AssertionError("a session was made")):
        _fails(lambda: validate(cand, ref, load_data(None), ["mean_cosine>=0.9.8"]), "a gate reads")
        _fails(lambda: validate(cand, ref, load_data(None).first(2)), "top10_agreement needs at least 3 items")
        _fails(lambda: validate(cand, ref, EvalData("x", [])), "no items")
    _fails(lambda: validate(cand, ref, load_data(None)), f"onnxruntime cannot load {cand / 'model.onnx'}")


def test_failures_name_an_undefined_metric():
    gates = [{"metric": "spearman", "op": ">=", "threshold": 0.9, "value": None, "passed": False}]
    assert failures({"gates": gates}) == ["spearman is undefined on this data, needs >= 0.9"]


# --- data -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name,content,match", [
    ("bytes.txt", b"caf\xe9\n", "is not UTF-8 text"),
    ("rows.jsonl", '{"text": "a"}\n{"body": "b"}\n', "line 2 has no column text"),
    ("null.jsonl", '{"text": "a"}\n{"text": null}\n', "line 2: text must be a string, not null"),
    ("number.jsonl", '{"text": 3}\n', "not a number"), ("list.jsonl", '{"text": ["a"]}\n', "not a list"),
    ("dict.jsonl", '{"text": {"a": 1}}\n', "not an object"),
    ("empty.jsonl", '{"text": "  "}\n', "line 1: text is empty"),
    ("nan.jsonl", '{"text": NaN}\n', "not a number"), ("array.jsonl", '["text"]\n', "line 1 is not a JSON object"),
    ("deep.jsonl", "[" * 100000, "line 1 is "),
    ("noheader.csv", "hello world\nfoo bar\n", "its header line has: hello"),
    ("fields.csv", "text\na, b\n", "line 2 has 2 fields but the header has 1"),
    ("short.csv", "text,label\nfine,1\nlost\n", "line 3 has 1 fields"),
    ("blank.csv", 'text,label\n"",pos\n', "line 2: text is empty"),
    ("twice.csv", "text,text\na,b\n", "appear twice"), ("empty.csv", "\n\n", "is empty")])
def test_bad_data_files(tmp_path, name, content, match):
    _fails(lambda: _data(tmp_path, name, content), match)


def test_odd_but_good_data_files(tmp_path):
    data = _data(tmp_path, "excel.csv", '\ufefftext,label\n"two\nlines, one item",pos\n', label_column="label")
    assert data.texts == ["two\nlines, one item"] and data.labels == ["pos"]
    data = _data(tmp_path, "sep.jsonl", json.dumps({"text": "a\u2028b", "label": 1}, ensure_ascii=False),
                 label_column="label")
    assert data.texts == ["a\u2028b"] and data.labels == ["1"]


def test_columns_that_do_not_apply_are_refused(tmp_path, folders):
    jsonl = '{"text": "a", "label": "pos", "q": "x", "p": "y"}\n'
    _fails(lambda: _data(tmp_path, "d.jsonl", jsonl, query_column="q"), "both a query column and a positive")
    _fails(lambda: _data(tmp_path, "d.jsonl", jsonl, positive_column="p"), "both a query column and a positive")
    _fails(lambda: _data(tmp_path, "d.txt", "a\n", label_column="label"), "plain text")
    _fails(lambda: load_data(None, label_column="label"), "need a data file")
    labelled = _data(tmp_path, "d.jsonl", jsonl, label_column="label")
    pairs = _data(tmp_path, "d.jsonl", jsonl, query_column="q", positive_column="p")
    for task in ("feature-extraction", "fill-mask", "text-generation"):
        _fails(lambda task=task: check_data(labelled, task), "apply to text-classification models")
    for task in ("text-classification", "fill-mask"):
        _fails(lambda task=task: check_data(pairs, task), "apply to feature-extraction models")
    check_data(labelled, "text-classification")
    check_data(pairs, "feature-extraction")
    with mock.patch("edgefold.runtime.validate.open_session", side_effect=AssertionError("a session was made")):
        _fails(lambda: validate(folders["fill-mask"], folders["fill-mask"], labelled), "text-classification")


def test_labels_the_model_does_not_know(tmp_path, folders):
    data = _data(tmp_path, "d.jsonl", '{"text": "a", "label": "good"}\n{"text": "b", "label": "pos"}\n',
                 label_column="label")
    with mock.patch("edgefold.runtime.validate.open_session", side_effect=AssertionError("a session was made")):
        _fails(lambda: validate(folders["labelled"], folders["labelled"], data, ["label_agreement>=0.9"]),
               "label\\(s\\) 'good' the model does not know; its labels are: neg, pos")
        other = make_folder(tmp_path / "other", config={"architectures": ["BertForSequenceClassification"],
                                                        "id2label": {"0": "pos", "1": "neg"}})
        _fails(lambda: validate(other, folders["labelled"], data, ["label_agreement>=0.9"]), "not the reference's")


# --- folders and manifests ------------------------------------------------------------------------------------

MANIFEST = {"schema": "edgefold.manifest", "schema_version": 1, "task": "feature-extraction", "method": "svd",
            "ratio": 2.0, "targets": ["ffn"], "compression": "factorised"}


@pytest.mark.parametrize("files,match", [
    ({"edgefold.json": []}, "must hold a JSON object"), ({"edgefold.json": None}, "must hold a JSON object"),
    ({"edgefold.json": "svd"}, "must hold a JSON object"), ({"edgefold.json": b"\xff"}, "not UTF-8"),
    ({"edgefold.json": {"schema": "edgefold.manifest", "schema_version": "1"}}, "has schema"),
    ({"edgefold.json": {"schema": "edgefold.manifest", "schema_version": 1}}, "task must be one of"),
    ({"edgefold.json": dict(MANIFEST, task="translation")}, "task must be one of"),
    ({"edgefold.json": dict(MANIFEST, method=None)}, "method must be a string"),
    ({"edgefold.json": dict(MANIFEST, ratio="2")}, "ratio must be"),
    ({"edgefold.json": dict(MANIFEST, targets="ffn")}, "targets must be"),
    ({"config.json": []}, "must hold a JSON object"), ({"config.json": None}, "must hold a JSON object"),
    ({"config.json": {"vocab_size": "big"}}, "vocab_size must be a positive integer"),
    ({"config.json": {"max_position_embeddings": -1}}, "max_position_embeddings"),
    ({"config.json": {"architectures": "BertModel"}}, "architectures must be"),
    ({"config.json": {"id2label": ["neg", "pos"]}}, "id2label must be"),
    ({"config.json": {"pad_token_id": [0]}}, "pad_token_id")])
def test_bad_manifests_and_configs(tmp_path, files, match):
    folder = make_folder(tmp_path / "m", files=files)
    _fails(lambda: ExportedFolder.open(folder), match)


@pytest.mark.parametrize("files,match", [
    ({"tokenizer_config.json": []}, "must hold a JSON object"), ({"special_tokens_map.json": "x"}, "JSON object"),
    ({"tokenizer_config.json": {"pad_token": 5}}, "pad_token must be"),
    ({"special_tokens_map.json": {"pad_token": {"content": ["[PAD]"]}}}, "pad_token must be"),
    ({"tokenizer.json": b"{}"}, "cannot read")])
def test_bad_tokenizer_files(tmp_path, files, match):
    folder = ExportedFolder.open(make_folder(tmp_path / "m", files=files))
    _fails(folder.encoder, match)


def test_a_good_manifest_and_pad_token(tmp_path):
    folder = ExportedFolder.open(make_folder(tmp_path / "m", files={
        "edgefold.json": MANIFEST, "special_tokens_map.json": {"pad_token": {"content": "[MASK]"}}}))
    assert folder.task == "feature-extraction" and folder.encoder().pad_id == 2


# --- report inputs --------------------------------------------------------------------------------------------

MACHINE = {"cpu": "cpu", "architecture": "x86_64", "cores": 2, "emulated": False, "onnxruntime": "1"}
BENCH = {"schema": "edgefold.bench", "schema_version": 1, "machine": MACHINE,
         "models": {"a/m": {"name": "m", "bytes": {"model.onnx": 10}},
                    "b/m": {"name": "m", "bytes": {"model.onnx": 5}}},
         "compare": ["a/m", "b/m"],
         "results": [{"threads": 1, "batch": 1, "seq_length": 8, "p50_ratio": None, "peak_rss_ratio": 1.0,
                      "models": {label: {"latency_ms": {"p50": 1.0, "p90": 1.0, "p99": 1.0, "sequences_per_s": None},
                                         "peak_rss_bytes": 2**20, "session_create_s": 0.1, "first_inference_ms": 1}
                                 for label in ("a/m", "b/m")}}]}
VALIDATE = {"schema": "edgefold.validate", "schema_version": 1, "machine": MACHINE,
            "candidate": {"name": "m|x", "bytes": {"model.onnx": 5}}, "reference": {"name": "r", "bytes": {}},
            "metrics": {"mean_cosine": None, "min_cosine": 0.5}, "passed": False}


def _load(tmp_path: Path, document: object, raw: bytes | None = None):
    path = tmp_path / "result.json"
    path.write_bytes(raw if raw is not None else json.dumps(document).encode())
    return report.load_results([path])


@pytest.mark.parametrize("change,match", [
    (lambda d: d.pop("machine"), "machine is missing"), (lambda d: d.update(results={}), "results must be a list"),
    (lambda d: d["results"][0]["models"]["a/m"].pop("latency_ms"), r"results\[0\].models.a/m.latency_ms is missing"),
    (lambda d: d["models"]["a/m"].update(bytes={"model.onnx": -1}), "a whole number"),
    (lambda d: d["results"][0]["models"].update(c=d["results"][0]["models"]["a/m"]), "not one of its models"),
    (lambda d: d.update(schema_version=2), "reads up to version 1"),
    (lambda d: d["machine"].update(emulated="no"), "true or false")])
def test_report_refuses_malformed_bench_results(tmp_path, change, match):
    document = json.loads(json.dumps(BENCH))
    change(document)
    _fails(lambda: _load(tmp_path, document), match)


@pytest.mark.parametrize("change,match", [
    (lambda d: d.pop("metrics"), "metrics is missing"), (lambda d: d.pop("candidate"), "candidate is missing"),
    (lambda d: d.update(metrics=[]), "metrics must be an object"), (lambda d: d.update(passed="yes"), "true or false"),
    (lambda d: d["metrics"].update(mean_cosine="0.9"), "a number or null"),
    (lambda d: d["candidate"].update(bytes=5), "candidate.bytes must be an object")])
def test_report_refuses_malformed_validate_results(tmp_path, change, match):
    document = json.loads(json.dumps(VALIDATE))
    change(document)
    _fails(lambda: _load(tmp_path, document), match)


@pytest.mark.parametrize("raw,match", [(b'{"schema": "edgefold.bench", "x": NaN}', "NaN, which is not JSON"),
                                       (b"\xff", "not UTF-8"), (b"[1]", "neither"), (b"[" * 100000, "cannot read")])
def test_report_refuses_unreadable_results(tmp_path, raw, match):
    _fails(lambda: _load(tmp_path, None, raw), match)


def test_report_writes_undefined_metrics_and_shared_names(tmp_path):
    bench_file, validate_file = tmp_path / "b.json", tmp_path / "v.json"
    bench_file.write_text(json.dumps(BENCH))
    validate_file.write_text(json.dumps(VALIDATE))
    text = report.write_report([bench_file, validate_file], tmp_path / "out").read_text()
    assert "| m\\|x | r | 5 | mean_cosine | n/a | FAIL |" in text and "| a/m |" in text and "| b/m |" in text


def test_undefined_similarity_metrics_are_none():
    same = np.ones((4, 3))
    assert spearman_of_similarities(same, np.random.default_rng(0).normal(size=(4, 3))) is None
    assert spearman_of_similarities(same[:2], same[:2]) is None and neighbour_agreement(same[:1], same[:1]) is None


# --- properties: any input gives a result or one EdgefoldError line -------------------------------------------


def _contract(call):
    """Call; an EdgefoldError must be one line. Returns the result, or None after an EdgefoldError."""
    try:
        return call()
    except EdgefoldError as error:
        assert str(error) and "\n" not in str(error)
        return None


columns = st.sampled_from([None, "text", "label", "q", "p", "x", ""])


@settings(**QUICK)
@given(content=st.binary(max_size=200) | st.text(max_size=200).map(str.encode),
       suffix=st.sampled_from([".txt", ".jsonl", ".csv", ".JSONL", ""]), label=columns, query=columns,
       positive=columns, task=st.sampled_from(TASKS))
def test_any_data_file(content, suffix, label, query, positive, task):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"data{suffix}"
        path.write_bytes(content)
        data = _contract(lambda: load_data(str(path), "text", label, query, positive))
        if data is not None:
            assert data.texts and all(isinstance(t, str) and t.strip() for t in data.texts)
            _contract(lambda: check_data(data, task))


@settings(**QUICK)
@given(rows=st.lists(st.dictionaries(st.sampled_from(["text", "label", "q", "p"]), json_values, max_size=4),
                     max_size=4),
       label=columns, query=columns, positive=columns)
def test_any_jsonl_rows(rows, label, query, positive):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "data.jsonl"
        path.write_text("\n".join(json.dumps(row) for row in rows), encoding="utf-8")
        data = _contract(lambda: load_data(str(path), "text", label, query, positive))
        if data is not None:
            assert data.texts == [row["text"] for row in rows]
            assert data.labels is None or data.labels == [str(row[label]) for row in rows]


@settings(**QUICK)
@given(rows=st.lists(st.lists(st.text(alphabet="ab ,\"\n\r\x00", max_size=6), max_size=3), max_size=4),
       quoted=st.booleans(), label=columns)
def test_any_csv_rows(rows, quoted, label):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "data.csv"
        if quoted:
            buffer = io.StringIO()
            csv.writer(buffer).writerows([["text", "label"], *rows])
            path.write_text(buffer.getvalue(), encoding="utf-8")
        else:  # written as is: a line break inside a cell (\n, \r) starts another record, as in any CSV reader
            path.write_text("\n".join(",".join(["text", "label"] if i == 0 else row) for i, row in
                                      enumerate([[], *rows])), encoding="utf-8", newline="")
        records = len(rows) if quoted else len(re.split(r"\r\n|\r|\n", path.read_bytes().decode("utf-8"))) - 1
        data = _contract(lambda: load_data(str(path), "text", label))
        if data is not None:
            assert len(data.texts) <= records


gate_text = st.text(max_size=30) | st.from_regex(
    r"\A\s?(mean_cosine|spearman|label_agreement|x)\s?(>=|<=|>|==)\s?[-+]?[0-9.eE+infa]{0,8}\s?\Z")


@settings(**QUICK)
@given(text=gate_text)
def test_any_gate_expression(text):
    gate = _contract(lambda: parse_gate(text))
    if gate is not None:
        assert gate[1] in (">=", "<=") and math.isfinite(gate[2])


@settings(**QUICK)
@given(content=json_values | st.fixed_dictionaries({"gates": st.lists(gate_text | json_values, max_size=3)}),
       raw=st.none() | st.binary(max_size=30), task=st.sampled_from(TASKS), items=st.integers(0, 4))
def test_any_gate_file_is_judged_before_inference(folders, content, raw, task, items):
    with tempfile.TemporaryDirectory() as tmp:
        gate_file = Path(tmp) / "gates.json"
        gate_file.write_bytes(raw if raw is not None else json.dumps(content).encode())
        data = EvalData("generated", ["hello world"] * items)
        gates = _contract(lambda: check_inputs(folders[task], data, gate_file=gate_file))
        if gates is not None:
            assert gates and all(math.isfinite(value) for _, _, value in gates)
        with mock.patch("edgefold.runtime.validate._Model.open", side_effect=EdgefoldError("would run")):
            _contract(lambda: validate(folders[task], folders[task], data, gate_file=gate_file))


known_keys = st.fixed_dictionaries({}, optional={
    "schema": st.just("edgefold.manifest") | json_values, "schema_version": st.just(1) | json_values,
    "task": st.sampled_from(TASKS) | json_values, "method": st.just("svd") | json_values,
    "ratio": st.just(2.0) | json_values, "targets": st.just(["ffn"]) | json_values,
    "architectures": st.just(["BertForMaskedLM"]) | json_values, "vocab_size": st.just(30) | json_values,
    "max_position_embeddings": st.just(512) | json_values, "model_type": st.just("roberta") | json_values,
    "pad_token_id": st.just(0) | json_values, "id2label": st.just({"0": "a"}) | json_values,
    "pad_token": st.just("[PAD]") | st.just({"content": "[PAD]"}) | json_values})


@settings(**QUICK)
@given(name=st.sampled_from(["edgefold.json", "config.json", "tokenizer_config.json", "special_tokens_map.json"]),
       content=known_keys | json_values, raw=st.none() | st.binary(max_size=20))
def test_any_manifest_or_config(name, content, raw):
    with tempfile.TemporaryDirectory() as tmp:
        root = make_folder(Path(tmp) / "m", files={name: raw if raw is not None else content})
        folder = _contract(lambda: ExportedFolder.open(root))
        if folder is not None:
            assert folder.task in TASKS
            _contract(lambda: folder.encoder().encode(["hello world"]))
            with mock.patch("edgefold.runtime.bench._run_worker", side_effect=AssertionError("a worker started")):
                assert _contract(lambda: bench(root, BenchSettings(threads=(1,), seq_lengths=(8,)))) is None


def _paths(document, prefix=()):
    """Every (path to a) value inside a JSON document."""
    yield prefix
    items = document.items() if isinstance(document, dict) else enumerate(document) if isinstance(document, list) \
        else ()
    for key, value in items:
        yield from _paths(value, (*prefix, key))


@settings(**QUICK)
@given(base=st.sampled_from([BENCH, VALIDATE]), data=st.data())
def test_any_result_document(base, data):
    document = json.loads(json.dumps(base))
    for _ in range(data.draw(st.integers(1, 3))):
        where = data.draw(st.sampled_from(list(_paths(document))[1:]))
        parent = document
        for key in where[:-1]:
            parent = parent[key]
        if data.draw(st.booleans()):
            del parent[where[-1]]
        else:
            parent[where[-1]] = data.draw(json_values)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "result.json"
        path.write_text(json.dumps(document))
        loaded = _contract(lambda: report.load_results([path]))
        if loaded is not None:  # whatever loads, the report can write
            with mock.patch("edgefold.runtime.report._plot", return_value=[]):
                report.write_report([path], Path(tmp) / "out")


settings_values = st.none() | st.integers(-2, 5) | st.floats() | st.text(max_size=3) | st.booleans() | st.lists(
    st.integers(-1, 3) | st.floats(0, 2) | st.text(max_size=1), max_size=3).map(tuple)


@settings(**QUICK)
@given(values=st.dictionaries(st.sampled_from(["threads", "batch_sizes", "seq_lengths", "warmup", "iterations",
                                               "min_seconds", "inputs", "optimization", "arena", "spinning"]),
                              settings_values, max_size=4))
def test_any_bench_settings(values):
    chosen = _contract(lambda: BenchSettings(**values))
    if chosen is not None:
        assert chosen.grid() and 0 <= chosen.min_seconds <= 3600
        from dataclasses import asdict

        again = BenchSettings(**json.loads(json.dumps(asdict(chosen), allow_nan=False)))  # as the worker does
        assert again == chosen
