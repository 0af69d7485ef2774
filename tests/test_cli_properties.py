"""Property-based: bad and odd input for every subcommand's flags gets exit 2 and one line, or reaches the work.

Each generated command runs in-process with the expensive step replaced by a tripwire (``ReachedWork``): a case
that passes validation stops there, so no case exports, benchmarks or runs inference. Whatever happens, there is
no traceback, nothing is written or left behind, and the inputs are untouched.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil

import pytest
from conftest import tree_digest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from edgefold.cli import build_parser, main


class ReachedWork(BaseException):
    """The tripwire: the command got past validation to its expensive step."""


def _trip(*args, **kwargs):
    raise ReachedWork()


ODD_VALUES = ["", " ", "-1", "0", "1", "2", "0.5", "1e309", "-0", "nan", "inf", "-inf", "1,2", "1,,2", "abc",
              "1.0.0", "٣", "∞", "../x", "/", "/nonexistent/file", "x=1", "=1", "lr=nan", "epochs=-3", "a\x00b",
              "mean_cosine>=0.9.8", "mean_cosine>=", ">=0.5", "embeddings,mlp", "int7", "auto", "svd", "none",
              "ffn", "💥", "x" * 300]


def _flags(command: str) -> dict[str, argparse.Action]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[command]
    return {a.option_strings[-1]: a for a in sub._actions if a.option_strings and a.dest != "help"}


@pytest.fixture(scope="module")
def playground(tmp_path_factory, tiny_model, tiny_export):
    """A folder of inputs: a real model folder, a real exported folder (both tiny: they are copied and hashed for
    every example), data files."""
    root = tmp_path_factory.mktemp("playground")
    shutil.copytree(tiny_model("bert-fill-mask"), root / "model")
    shutil.copytree(tiny_export, root / "exported")
    (root / "data.txt").write_text("one line\nanother line\n")
    (root / "data.jsonl").write_text('{"text": "a"}\n{"text": null}\n')
    (root / "bad.bin").write_bytes(b"\xff\xfe\x00garbage")
    (root / "gates.json").write_text(json.dumps({"gates": []}))
    (root / "result.json").write_text(json.dumps({"schema": "edgefold.bench", "results": "wrong"}))
    return root


def _positional(command: str) -> st.SearchStrategy[list[str]]:
    path = st.sampled_from(["model", "exported", "data.txt", "bad.bin", "missing", "", ".", "result.json"])
    if command in ("export", "probes"):
        return st.tuples(path, st.sampled_from(["out", "model", "exported", "data.txt", ".", "a\x00b"])).map(list)
    if command in ("bench", "validate", "pack"):
        return st.lists(path, min_size=1, max_size=1 if command != "pack" else 2).map(
            lambda p: p + (["out.tar.gz"] if command == "pack" and len(p) == 1 else []))
    if command == "unpack":
        return st.tuples(st.sampled_from(["bad.bin", "missing", "data.txt"]), st.just("dest")).map(list)
    return st.lists(path, min_size=1, max_size=3)  # report


@st.composite
def commands(draw) -> list[str]:
    command = draw(st.sampled_from(["export", "probes", "bench", "validate", "pack", "unpack", "report"]))
    argv = [command, *draw(_positional(command))]
    flags = _flags(command)
    chosen = draw(st.lists(st.sampled_from(sorted(flags)), max_size=4, unique=True)) if flags else []
    for flag in chosen:
        action = flags[flag]
        if action.nargs == 0:
            argv.append(flag)
        else:
            choices = list(action.choices or [])
            argv += [flag, draw(st.sampled_from(ODD_VALUES + choices + ["data.txt", "gates.json", "exported"]))]
    if command == "validate" and "--reference" not in argv:
        argv += ["--reference", draw(st.sampled_from(["exported", "model", "missing"]))]
    if command == "report" and "-o" not in argv and "--output" not in argv:
        argv += ["-o", "report-out"]
    return argv


@pytest.fixture
def tripwires(monkeypatch):
    import edgefold.exporter.pipeline as pipeline
    import edgefold.exporter.search.search as search
    import edgefold.exporter.source.loading as loading
    import edgefold.runtime.bench as bench
    import edgefold.runtime.validate as validate

    monkeypatch.setattr(pipeline, "load_model", _trip)
    monkeypatch.setattr(search, "load_model", _trip)  # the goal-driven export (the default)
    monkeypatch.setattr(loading, "load_model", _trip)  # edgefold probes
    monkeypatch.setattr(bench, "_run_worker", _trip)
    monkeypatch.setattr(validate, "_METRICS", {task: _trip for task in validate._METRICS})


@settings(max_examples=int(os.environ.get("EDGEFOLD_FUZZ_EXAMPLES", 150)), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(argv=commands())
@pytest.mark.slow
def test_every_bad_input_is_one_line_and_nothing_is_written(argv, playground, tripwires, tmp_path_factory,
                                                              monkeypatch, capsys):
    work = tmp_path_factory.mktemp("case")
    for item in playground.iterdir():
        (shutil.copytree if item.is_dir() else shutil.copy2)(item, work / item.name)
    before = {p.name: tree_digest(p) if p.is_dir() else p.read_bytes() for p in work.iterdir()}
    monkeypatch.chdir(work)
    capsys.readouterr()
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse: usage errors, --help, --version
        code = exit_.code
    except ReachedWork:
        code = None
    out, err = capsys.readouterr()
    event(f"{argv[0]}: {'reached the work' if code is None else f'exit {code}'}")
    assert "Traceback" not in err
    if code == 2:
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("edgefold: error:"), (argv, err)
    else:
        assert code in (None, 0), (argv, code, err)  # got to the work, or --help / --version
    after = {p.name: tree_digest(p) if p.is_dir() else p.read_bytes() for p in work.iterdir()}
    if code is None or code == 2:
        assert after == before, (argv, set(after) ^ set(before))
    else:  # only report and pack finish without a tripwire: they may add their one output
        assert {k: v for k, v in after.items() if k in before} == before
    shutil.rmtree(work)
