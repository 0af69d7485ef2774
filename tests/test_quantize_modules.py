"""``quantize_modules``: a precision per torch module (fp32, int8, int4 in blocks of 32 or 128) on real exported
graphs: which nodes each module owns, what each became, that the graph still runs and stays close to fp32."""

from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import transformers
from conftest import MINILM

from edgefold.exporter import CompressionConfig, GraphConfig, export
from edgefold.exporter.graph.quantize import quantize_modules, weight_nodes
from edgefold.runtime import EdgefoldError
from edgefold.runtime.texts import shipped_texts

UNOPTIMISED = GraphConfig(optimize="none")  # fusions rename nodes; the search quantises the plain export


@pytest.fixture(scope="module")
def exports(tmp_path_factory, tiny_model):
    """A factory: ``exports(model, method)`` -> the exported model.onnx, each built once for this file."""
    built: dict[tuple, Path] = {}

    def get(model: str, method: str = "none") -> Path:
        if (model, method) not in built:
            source = MINILM if model == "minilm" else tiny_model(model)
            targets = "ffn" if method == "svd-shared" else "embeddings,attention,ffn"  # (the FFNs suffice there)
            config = CompressionConfig(method=method, targets=targets, ratio=2.0)
            folder = tmp_path_factory.mktemp(f"{model}-{method}")
            export(str(source), folder, config, UNOPTIMISED, progress=False, overwrite=True)
            built[model, method] = folder / "model.onnx"
        return built[model, method]

    return get


def _graph(path: Path) -> onnx.GraphProto:
    return onnx.load(str(path)).graph


def _ops(graph: onnx.GraphProto, module: str) -> Counter:
    """Op types of the nodes in a module's scope (the quantisers keep the node name as a prefix)."""
    return Counter(n.op_type for n in graph.node if n.name.replace("/", ".").startswith(f".{module}."))


def _fp32_weight_nodes(graph: onnx.GraphProto) -> set[str]:
    weights = {i.name for i in graph.initializer if i.data_type == onnx.TensorProto.FLOAT and len(i.dims) == 2}
    return {n.name for n in graph.node if n.op_type in ("MatMul", "Gemm") and n.input[1] in weights}


def _attributes(node: onnx.NodeProto) -> dict:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _run(path: Path, ids: np.ndarray) -> np.ndarray:
    """The first output for a batch of token ids (empty past for a decoder)."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = {}
    for arg in session.get_inputs():
        if arg.name == "input_ids":
            feeds[arg.name] = ids
        elif arg.name == "attention_mask":
            feeds[arg.name] = (ids != 0).astype(np.int64)
        elif arg.name in ("token_type_ids", "position_ids"):
            feeds[arg.name] = np.zeros_like(ids) if arg.name == "token_type_ids" else np.tile(
                np.arange(ids.shape[1]), (ids.shape[0], 1))
        else:  # past key/values: none yet
            feeds[arg.name] = np.zeros((ids.shape[0], arg.shape[1], 0, arg.shape[3]), np.float32)
    return session.run(None, feeds)[0]


def _token_ids(count: int = 8) -> np.ndarray:
    tokenizer = transformers.AutoTokenizer.from_pretrained(MINILM)
    return tokenizer(shipped_texts()[:count], padding=True, return_tensors="np")["input_ids"].astype(np.int64)


def _cosines(a: np.ndarray, b: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Per real (not padding) token, the cosine of two outputs' vectors."""
    a, b = a[ids != 0], b[ids != 0]
    return (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)


@pytest.mark.slow
def test_weight_nodes_follow_the_module_scope(exports):
    graph = _graph(exports("minilm"))
    found = weight_nodes(graph, ["encoder.layer.0.attention.self.query", "encoder.layer.0.attention.self",
                                 "embeddings", "embeddings.word_embeddings", "encoder.layer.0.attention.self.q",
                                 "encoder.layer.1"])
    assert found["encoder.layer.0.attention.self.query"] == ["/encoder/layer.0/attention/self/query/MatMul"]
    # q, k, v: not attention's own activation MatMuls (scores, context), which have no weight
    assert sorted(found["encoder.layer.0.attention.self"]) == [
        f"/encoder/layer.0/attention/self/{name}/MatMul" for name in ("key", "query", "value")]
    # the three tables, not the shape Gathers beside them
    assert len(found["embeddings"]) == 3 and all(n.endswith("_embeddings/Gather") for n in found["embeddings"])
    assert found["embeddings.word_embeddings"] == ["/embeddings/word_embeddings/Gather"]
    assert found["encoder.layer.0.attention.self.q"] == []  # whole names only
    assert len(found["encoder.layer.1"]) == 6
    assert all(n.startswith("/encoder/layer.1/") for n in found["encoder.layer.1"])


@pytest.mark.slow
def test_mixed_precisions_on_the_real_minilm(exports, tmp_path):
    source = exports("minilm")
    precisions = {"encoder.layer.0.attention.self.query": "int8", "encoder.layer.0.attention.self.key": "int4-32",
                  "encoder.layer.0.attention.self.value": "int4-128", "encoder.layer.0.output.dense": "fp32",
                  "encoder.layer.1": "int8",  # a parent module: its six Linears
                  "encoder.layer.1.output.dense": "int4-32",  # nested: the innermost name decides
                  "encoder.layer.2.intermediate.dense": "int4-128", "embeddings.word_embeddings": "int4-32"}
    output = tmp_path / "model.onnx"
    report = quantize_modules(source, output, precisions)
    graph = _graph(output)

    assert _ops(graph, "encoder.layer.0.attention.self.query")["MatMulInteger"] == 1
    for module, block in [("encoder.layer.0.attention.self.key", 32), ("encoder.layer.0.attention.self.value", 128),
                          ("encoder.layer.1.output.dense", 32), ("encoder.layer.2.intermediate.dense", 128)]:
        (node,) = [n for n in graph.node if n.op_type == "MatMulNBits" and n.name.startswith(
            "/" + module.replace(".", "/").replace("layer/", "layer."))]
        assert _attributes(node)["block_size"] == block and _attributes(node)["accuracy_level"] == 4
        assert _ops(graph, module)["MatMul"] == 0
    layer1 = _ops(graph, "encoder.layer.1")
    assert layer1["MatMulInteger"] == 5 and layer1["MatMulNBits"] == 1 and layer1["MatMul"] == 2  # 2: activations
    (table,) = [n for n in graph.node if n.op_type == "GatherBlockQuantized"]
    assert table.name.startswith("/embeddings/word_embeddings/") and _attributes(table)["block_size"] == 32
    # the int8 pass touched only its nodes: every 4-bit node survived it, every other weight is still fp32
    ops = Counter(n.op_type for n in graph.node)
    assert ops["MatMulNBits"] == 4 and ops["GatherBlockQuantized"] == 1 and ops["MatMulInteger"] == 6
    untouched = _fp32_weight_nodes(_graph(source)) - {
        f"/encoder/layer.{i}/{name}/MatMul" for i, name in [(0, "attention/self/query"), (0, "attention/self/key"),
                                                            (0, "attention/self/value"), (2, "intermediate/dense")]}
    untouched = {n for n in untouched if not n.startswith("/encoder/layer.1/")}
    assert _fp32_weight_nodes(graph) == untouched and "/encoder/layer.0/output/dense/MatMul" in untouched
    assert report["scheme"] == "mixed" and report["modules"] == {"fp32": 1, "int8": 2, "int4-32": 3, "int4-128": 2}
    assert report["nodes"] == {"int8": 6, "int4-32": 3, "int4-128": 2} and report["quantized_ops"]["MatMulNBits"] == 4
    assert report["weight_bytes"]["after"] < 0.6 * report["weight_bytes"]["before"] and report["split_weights"] == {}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]  # the staged files are gone

    ids = _token_ids()
    cosines = _cosines(_run(source, ids), _run(output, ids), ids)
    assert cosines.min() > 0.95 and cosines.mean() > 0.98


@pytest.mark.slow
def test_factorised_modules_quantise_both_factors(exports, tmp_path):
    source = exports("bert-fill-mask", "svd")
    found = weight_nodes(_graph(source), ["bert.encoder.layer.0.attention.self.query",
                                          "bert.embeddings.word_embeddings"])
    assert found["bert.encoder.layer.0.attention.self.query"] == [
        "/bert/encoder/layer.0/attention/self/query/MatMul", "/bert/encoder/layer.0/attention/self/query/MatMul_1"]
    assert found["bert.embeddings.word_embeddings"] == [  # the V x r table and the r x d projection
        "/bert/embeddings/word_embeddings/Gather", "/bert/embeddings/word_embeddings/MatMul"]
    precisions = {"bert.encoder.layer.0.attention.self.query": "int4-32", "bert.encoder.layer.0.output.dense": "int8",
                  "bert.encoder.layer.1.intermediate.dense": "int4-128", "bert.embeddings.word_embeddings": "int4-32"}
    output = tmp_path / "model.onnx"
    report = quantize_modules(source, output, precisions)
    graph = _graph(output)
    assert _ops(graph, "bert.encoder.layer.0.attention.self.query")["MatMulNBits"] == 2
    assert _ops(graph, "bert.encoder.layer.0.output.dense")["MatMulInteger"] == 2
    assert _ops(graph, "bert.encoder.layer.1.intermediate.dense")["MatMulNBits"] == 2
    assert _ops(graph, "bert.embeddings.word_embeddings") == Counter(GatherBlockQuantized=1, MatMulNBits=1)
    assert _ops(graph, "bert.encoder.layer.0.attention.self.key")["MatMul"] == 2  # not named: fp32
    assert report["nodes"] == {"int8": 2, "int4-32": 4, "int4-128": 2}
    ids = _token_ids()
    assert _cosines(_run(source, ids), _run(output, ids), ids).min() > 0.95


@pytest.mark.slow
def test_a_basis_shared_by_layers(exports, tmp_path):
    source = exports("bert-fill-mask", "svd-shared")
    graph = _graph(source)
    # optimum's exporter hands a parameter shared by modules to the later ones through an Identity, transformers 5's
    # reads one initializer from every module: either way, still each module's weight
    modules = [f"bert.encoder.layer.{i}.intermediate.dense" for i in (0, 1)]
    assert all(len(nodes) == 2 for nodes in weight_nodes(graph, modules).values())
    output = tmp_path / "model.onnx"
    report = quantize_modules(source, output, dict(zip(modules, ["int4-32", "int4-128"])))
    quantized = _graph(output)
    assert all(_ops(quantized, m)["MatMulNBits"] == 2 for m in modules)
    # the shared factor is stored once per precision, and each quantised name once
    assert max(Counter(i.name for i in quantized.initializer).values()) == 1 and report["split_weights"]
    ids = _token_ids()
    assert _cosines(_run(source, ids), _run(output, ids), ids).min() > 0.95


#: GPT-2's tied token table, named after the module each exporter meets first (optimum: the embedding).
TIED_TABLE = {"transformer.wte.weight", "lm_head.weight"}


@pytest.mark.slow
def test_gpt2_tied_head_and_gemms(exports, tmp_path):
    source = exports("gpt2-text-generation")
    graph = _graph(source)
    # the head reads the token table through a Transpose (the exporter stores the tied weight once); GPT-2's
    # Conv1D layers are Gemms
    assert weight_nodes(graph, ["lm_head"]) == {"lm_head": ["/lm_head/MatMul"]}
    assert weight_nodes(graph, ["transformer.h.0.attn.c_attn"])["transformer.h.0.attn.c_attn"] == [
        "/transformer/h.0/attn/c_attn/Gemm"]
    ids = _token_ids(4)
    reference = _run(source, ids)

    both = tmp_path / "both.onnx"
    report = quantize_modules(source, both, {"transformer.wte": "int4-32", "lm_head": "int4-32",
                                             "transformer.h.0.attn.c_attn": "int8",
                                             "transformer.h.0.mlp.c_fc": "int4-128"})
    quantized = _graph(both)
    assert _ops(quantized, "transformer.wte")["GatherBlockQuantized"] == 1
    assert _ops(quantized, "lm_head")["MatMulNBits"] == 1
    assert _ops(quantized, "transformer.h.0.attn.c_attn")["MatMulInteger"] == 1
    assert _ops(quantized, "transformer.h.0.mlp.c_fc")["MatMulNBits"] == 1
    # quantize_dynamic rewrites every Gemm into MatMul (+ Add): the modules not named stay fp32 all the same
    for module in ("transformer.h.0.attn.c_proj", "transformer.h.0.mlp.c_proj", "transformer.h.1.mlp.c_fc"):
        assert _ops(quantized, module)["MatMul"] + _ops(quantized, module)["Gemm"] == 1
        assert not {"MatMulInteger", "MatMulNBits"} & set(_ops(quantized, module))
    # both readers of the tied table quantised: the fp32 table and its Transpose are gone
    assert not TIED_TABLE & {i.name for i in quantized.initializer}
    assert not [n for n in quantized.node if n.name.startswith("edgefold_shared_")]
    assert report["split_weights"] == {} and report["weight_bytes"]["after"] < 0.5 * report["weight_bytes"]["before"]
    assert _cosines(reference, _run(both, ids), ids).min() > 0.95

    # only the head: the embedding still reads the fp32 table, so it is stored twice, and the report says so
    head = tmp_path / "head.onnx"
    report = quantize_modules(source, head, {"lm_head": "int8"})
    [(table, precisions)] = report["split_weights"].items()
    assert table in TIED_TABLE and precisions == ["fp32", "int8"]
    assert report["weight_bytes"]["after"] > report["weight_bytes"]["before"]
    assert _ops(_graph(head), "transformer.wte")["Gather"] == 1
    assert _cosines(reference, _run(head, ids), ids).min() > 0.95


def test_bad_requests_are_one_line_errors(exports, tmp_path):
    source = exports("minilm")
    output = tmp_path / "model.onnx"
    cases = {"'encoder.layer.0.attention.self.q'": {"encoder.layer.0.attention.self.q": "int8"},
             "'encoder.layer.9'": {"encoder.layer.0": "int8", "encoder.layer.9": "int8"},
             "'int2'": {"encoder.layer.0": "int2"}}
    for named, precisions in cases.items():
        with pytest.raises(EdgefoldError) as error:
            quantize_modules(source, output, precisions)
        assert named in str(error.value) and "\n" not in str(error.value)
    with pytest.raises(EdgefoldError, match="risc"):
        quantize_modules(source, output, {"encoder.layer.0": "int8"}, target="risc")
    assert not output.exists()
    # fp32 throughout is a plan too: nothing quantised
    report = quantize_modules(source, output, {"encoder.layer.0": "fp32"})
    assert report["quantized_ops"] == {} and _fp32_weight_nodes(_graph(output)) == _fp32_weight_nodes(_graph(source))
