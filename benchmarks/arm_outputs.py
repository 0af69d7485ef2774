"""The raw graph outputs of an exported folder, to compare two machines (x86 and aarch64) number for number.

    python arm_outputs.py dump PREFIX FOLDER...     the first output on shipped verification sentences, to
                                                    PREFIX-<folder name>.npz
    python arm_outputs.py compare A.npz B.npz [--atol 1e-4]   max abs difference; exit 1 above atol
    python arm_outputs.py summarize WORK RESULTS [--timing NAME=VALUE ...]   arm_emulated.sh's checks and results

dump and compare need only edgefold's runtime (onnxruntime, numpy, tokenizers), so it runs on the device or in the chroot.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from edgefold.runtime.folder import ExportedFolder
from edgefold.runtime.session import make_feed, open_session
from edgefold.runtime.texts import shipped_texts

ITEMS = 8  # sentences, one batch: enough to cover the vocabulary's common rows, cheap under emulation


def dump(prefix: str, folders: list[str]) -> None:
    for folder in folders:
        model = ExportedFolder.open(folder)
        session = open_session(model.graph)
        ids, mask = model.encoder().encode(shipped_texts("verify.txt")[:ITEMS], max_length=128)
        output = session.run([session.get_outputs()[0].name], make_feed(session, ids, mask))[0]
        np.savez(f"{prefix}-{model.name}.npz", output=output, attention_mask=mask)


def compare(a: str, b: str, atol: float) -> int:
    diff = max_abs_diff(a, b)
    print(json.dumps({"max_abs_diff": diff, "atol": atol, "passed": diff <= atol}))
    return 0 if diff <= atol else 1


def max_abs_diff(a: str | Path, b: str | Path) -> float:
    left, right = np.load(a), np.load(b)
    if not np.array_equal(left["attention_mask"], right["attention_mask"]):
        raise SystemExit(f"{a} and {b}: the two machines tokenised the text differently")
    return float(np.abs(left["output"].astype(np.float64) - right["output"]).max())


def check_bench(document: dict) -> list[str]:
    """What is wrong with an emulated aarch64 bench document (nothing: an empty list)."""
    problems = []
    machine = document.get("machine", {})
    if document.get("schema") != "edgefold.bench" or document.get("schema_version") != 1:
        problems.append("not an edgefold.bench v1 document")
    if machine.get("architecture") != "aarch64" or machine.get("emulated") is not True:
        problems.append(f"machine is {machine.get('architecture')}, emulated={machine.get('emulated')}")
    rows = [m for row in document.get("results", []) for m in row.get("models", {}).values()]
    if not rows or not all(0 < m["latency_ms"]["p50"] <= m["latency_ms"]["p99"] and m["peak_rss_bytes"] > 0
                           and m["latency_ms"]["iterations"] >= 1 for m in rows):
        problems.append("missing or impossible latency/memory figures")
    return problems


def summarize(work: str, results: str, timings: list[str], atol: float = 1e-4) -> int:
    """Check the emulated run in ``work`` and write ``results``.md/.json; exit status 1 if any check fails."""
    folder = Path(work)
    diffs = {m: max_abs_diff(folder / f"x86-{m}.npz", folder / f"arm-{m}.npz") for m in ("minilm-ref", "minilm-svd")}
    (bench_file,) = folder.glob("bench-*-arm.json")
    (validate_file,) = folder.glob("validate-*-arm.json")
    bench, arm_validate = json.loads(bench_file.read_text()), json.loads(validate_file.read_text())
    x86_validate = json.loads((folder / "x86-validate.json").read_text())
    metric_diffs = {k: abs(arm_validate["metrics"][k] - v) for k, v in x86_validate["metrics"].items()}
    versions = dict(line.split("==") for line in (folder / "freeze.txt").read_text().split() if "==" in line)
    problems = [f"{m}: max abs diff {d:.2e} > {atol:g}" for m, d in diffs.items() if not d <= atol]
    problems += [f"bench: {p}" for p in check_bench(bench)]
    problems += [f"validate metric {k} differs by {d:.2e}" for k, d in metric_diffs.items() if not d <= atol]
    if not arm_validate["machine"]["emulated"]:
        problems.append("validate: not labelled emulated")
    document = {
        "architecture": (folder / "arch.txt").read_text().strip(), "emulated": True,
        "max_abs_diff_vs_x86": diffs, "items": ITEMS, "atol": atol,
        "validate_metrics": {"aarch64": arm_validate["metrics"], "x86_64": x86_validate["metrics"],
                             "items": arm_validate["data"]["items"]},
        "validate_metric_abs_diff": metric_diffs,
        "bench_well_formed": not check_bench(bench), "bench_machine": bench["machine"],
        "bench_p50_ms_emulated": {name: m["latency_ms"]["p50"] for row in bench["results"]
                                  for name, m in row["models"].items()},
        "versions_aarch64": {k: versions.get(k) for k in ("edgefold", "onnxruntime", "numpy", "tokenizers")},
        "timings": dict(t.split("=", 1) for t in timings), "problems": problems, "passed": not problems,
    }
    Path(results).with_suffix(".json").write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    Path(results).with_suffix(".md").write_text(_markdown(document), encoding="utf-8")
    print(_markdown(document))
    return 0 if not problems else 1


def _markdown(d: dict) -> str:
    t, v = d["timings"], d["versions_aarch64"]
    lines = ["# edgefold's runtime on aarch64, emulated (qemu-user, Debian bookworm arm64 chroot)", "",
             "Produced by `benchmarks/arm_emulated.sh`: the README's \"Benchmark on an ARM device\" steps, word for "
             "word, with the device's part run in the chroot. Emulated timings say nothing about device speed.", "",
             f"- result: **{'PASS' if d['passed'] else 'FAIL: ' + '; '.join(d['problems'])}**",
             f"- aarch64 versions: onnxruntime {v['onnxruntime']}, numpy {v['numpy']}, tokenizers {v['tokenizers']}, "
             f"edgefold {v['edgefold']}",
             "", f"| model | max abs diff, aarch64 vs x86 (last_hidden_state, {d['items']} sentences) | tolerance |",
             "|---|---|---|"]
    lines += [f"| {m} | {diff:.2e} | {d['atol']:g} |" for m, diff in d["max_abs_diff_vs_x86"].items()]
    lines += ["", f"`edgefold validate` on aarch64 against x86 ({d['validate_metrics']['items']} items):", "",
              "| metric | aarch64 | x86_64 | abs diff |", "|---|---|---|---|"]
    lines += [f"| {k} | {d['validate_metrics']['aarch64'][k]:.6f} | {x:.6f} | {d['validate_metric_abs_diff'][k]:.1e} |"
              for k, x in d["validate_metrics"]["x86_64"].items()]
    lines += ["", f"Bench JSON well formed and labelled emulated: {d['bench_well_formed']}; "
              f"emulated p50 (meaningless as speed): "
              + ", ".join(f"{n} {p:.0f} ms" for n, p in d["bench_p50_ms_emulated"].items()), "",
              f"Wall time: {t.get('total_s')} s in all (chroot {'cached' if t.get('chroot_cached') == 'true' else 'built from scratch'}, "
              f"ready after {t.get('chroot_ready_s')} s, overlapping the x86 exports of {t.get('host_exports_s')} s; "
              f"device steps {t.get('device_steps_s')} s).", ""]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    d = commands.add_parser("dump")
    d.add_argument("prefix")
    d.add_argument("folders", nargs="+")
    c = commands.add_parser("compare")
    c.add_argument("a")
    c.add_argument("b")
    c.add_argument("--atol", type=float, default=1e-4)
    r = commands.add_parser("summarize")
    r.add_argument("work")
    r.add_argument("results")
    r.add_argument("--timing", action="append", default=[])
    args = parser.parse_args()
    if args.command == "dump":
        dump(args.prefix, args.folders)
        return 0
    if args.command == "summarize":
        return summarize(args.work, args.results, args.timing)
    return compare(args.a, args.b, args.atol)


if __name__ == "__main__":
    sys.exit(main())
