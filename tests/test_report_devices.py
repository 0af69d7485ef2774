"""``edgefold report`` over results fetched from several devices: the Devices table, a device column, and one
bar chart per metric with the devices side by side. Documents are synthetic (running bench is slow) but shaped
as runtime/bench.py and runtime/validate.py write them."""

import json
from dataclasses import asdict

import pytest

from edgefold.runtime import report as report_module
from edgefold.runtime.bench import SCHEMA as BENCH
from edgefold.runtime.bench import SCHEMA_VERSION as BENCH_VERSION
from edgefold.runtime.bench import BenchSettings
from edgefold.cli import main
from edgefold.runtime.validate import SCHEMA as VALIDATE
from edgefold.runtime.validate import SCHEMA_VERSION as VALIDATE_VERSION

PNG = b"\x89PNG\r\n\x1a\n"
NEW_PLOTS = {"latency-p50.png", "latency-p50-emulated.png", "peak-rss.png", "accuracy.png"}
OLD_PLOTS = {"quality.png", "latency.png", "latency-emulated.png"}


def _machine(**changes) -> dict:
    machine = {"cpu": "Cortex-A76", "architecture": "aarch64", "features": ["asimd", "asimddp"], "cores": 4,
               "os": "Linux-6.6.31-rpi-v8-aarch64-with-glibc2.36", "python": "3.11.2", "onnxruntime": "1.20.1",
               "hostname": "raspberrypi", "emulated": False}
    machine.update(changes)
    return machine


def _latency(p50: float) -> dict:
    return {"iterations": 10, "p50": p50, "p90": p50 * 1.1, "p95": p50 * 1.2, "p99": p50 * 1.3, "mean": p50,
            "stdev": 0.1, "sequences_per_s": 1000 / p50}


def _bench(machine: dict, device: dict | None = None, p50: float = 12.5, rss: int = 180 * 2**20) -> dict:
    models = {"tiny": {"name": "tiny", "path": "/models/tiny", "task": "feature-extraction",
                       "bytes": {"model.onnx": 4_000_000, "tokenizer.json": 700_000},
                       "manifest": {"method": "int8", "ratio": None, "targets": ["all"], "compression": "int8"}}}
    results = [{"threads": threads, "batch": 1, "seq_length": 128,
                "models": {"tiny": {"session_create_s": 0.2, "first_inference_ms": 30.0,
                                    "latency_ms": _latency(p50 / threads), "peak_rss_bytes": rss}}}
               for threads in (1, 4)]
    document = {"schema": BENCH, "schema_version": BENCH_VERSION, "created": "2025-01-01T00:00:00Z",
                "machine": machine, "settings": asdict(BenchSettings(threads=(1, 4))), "models": models,
                "compare": None, "results": results}
    return document if device is None else {**document, "device": device}


def _validate(machine: dict, device: dict | None = None, cosine: float | None = 0.991) -> dict:
    document = {"schema": VALIDATE, "schema_version": VALIDATE_VERSION, "created": "2025-01-01T00:00:00Z",
                "machine": machine,
                "candidate": {"path": "/models/tiny", "name": "tiny", "bytes": {"model.onnx": 4_000_000}},
                "reference": {"path": "/models/ref", "name": "ref", "bytes": {"model.onnx": 16_000_000}},
                "task": "feature-extraction",
                "data": {"source": "shipped evaluation.txt", "items": 64, "sha256": "0" * 64, "labels": False,
                         "pairs": 0},
                "metrics": {"mean_cosine": cosine, "min_cosine": None if cosine is None else cosine - 0.05},
                "gates": [{"metric": "mean_cosine", "op": ">=", "threshold": 0.98, "value": cosine,
                           "passed": cosine is not None and cosine >= 0.98}],
                "passed": cosine is not None and cosine >= 0.98, "seconds": 3.2}
    return document if device is None else {**document, "device": device}


def _write(folder, documents: dict[str, dict]) -> list[str]:
    paths = []
    for name, document in documents.items():
        (folder / name).write_text(json.dumps(document))
        paths.append(str(folder / name))
    return paths


def _two_devices(tmp_path) -> list[str]:
    pi = {"name": "pi", "address": "ssh://pi@board:22"}
    qemu = {"name": "arm-qemu", "address": "ssh://ci@builder:2222"}
    emulated = _machine(cpu="Intel Xeon", cores=16, os="Linux-6.8-x86_64", python="3.12.3",
                        onnxruntime="1.19.0", hostname="builder", emulated=True)
    return _write(tmp_path, {"bench-pi.json": _bench(_machine(), pi, p50=40.0),
                             "bench-qemu.json": _bench(emulated, qemu, p50=400.0, rss=250 * 2**20),
                             "validate-pi.json": _validate(_machine(), pi, cosine=0.991),
                             "validate-qemu.json": _validate(emulated, qemu, cosine=0.992)})


def _recording_bars(monkeypatch) -> dict:
    """What each bar chart was drawn from: {file name: {device shown in its legend}}, the real drawing kept."""
    drawn = {}
    draw = report_module._draw_bars

    def record(panels, title, path):
        drawn[path.name] = {device for _, groups in panels for bars in groups.values() for device in bars}
        draw(panels, title, path)

    monkeypatch.setattr(report_module, "_draw_bars", record)
    return drawn


def test_two_devices_get_a_devices_table_a_device_column_and_side_by_side_plots(tmp_path, monkeypatch):
    drawn = _recording_bars(monkeypatch)
    out = tmp_path / "report"
    assert main(["report", *_two_devices(tmp_path), "-o", str(out)]) == 0
    assert {p.name for p in out.iterdir()} == {"report.md"} | OLD_PLOTS | NEW_PLOTS
    for plot in OLD_PLOTS | NEW_PLOTS:
        data = (out / plot).read_bytes()
        assert data.startswith(PNG) and len(data) > 5000, plot
    text = (out / "report.md").read_text()
    assert text.index("## Devices") < text.index("## Accuracy") < text.index("## Latency and memory")
    assert "| device | CPU | architecture | cores | OS | Python | onnxruntime | emulated |" in text
    assert ("| pi | Cortex-A76 | aarch64 | 4 | Linux-6.6.31-rpi-v8-aarch64-with-glibc2.36 | 3.11.2 | 1.20.1 | no |"
            in text)
    assert "| arm-qemu | Intel Xeon | aarch64 | 16 | Linux-6.8-x86_64 | 3.12.3 | 1.19.0 | yes |" in text
    assert "| device | model | reference | bytes | metric | value | gates |" in text
    assert "| pi | tiny | ref | 4,000,000 | mean_cosine | 0.9910 | pass |" in text
    assert "| arm-qemu (EMULATED) | tiny | ref | 4,000,000 | mean_cosine | 0.9920 | pass |" in text
    assert "| device | model | bytes | threads | batch | seq | p50 ms | peak RSS MB |" in text
    assert "| pi | tiny | 4,700,000 | 1 | 1 | 128 | 40.00 | 180 |" in text
    assert "| arm-qemu (EMULATED) | tiny | 4,700,000 | 4 | 1 | 128 | 100.00 | 250 |" in text
    for plot in OLD_PLOTS | NEW_PLOTS:
        assert any(line.startswith("![") and line.endswith(f"]({plot})") for line in text.splitlines()), plot
    for plot in NEW_PLOTS:
        assert f"![{plot.removesuffix('.png')}]({plot})" in text.splitlines()
    # emulated timings never share an axis with real ones; memory and accuracy may, labelled
    assert drawn == {"latency-p50.png": {"pi"}, "latency-p50-emulated.png": {"arm-qemu (EMULATED)"},
                     "peak-rss.png": {"pi", "arm-qemu (EMULATED)"}, "accuracy.png": {"pi", "arm-qemu (EMULATED)"}}


def test_a_report_with_new_plots_may_be_replaced(tmp_path):
    paths, out = _two_devices(tmp_path), tmp_path / "report"
    assert main(["report", *paths, "-o", str(out)]) == 0
    assert main(["report", *paths[:1], "-o", str(out), "--overwrite"]) == 0
    assert {p.name for p in out.iterdir()} == {"report.md", "latency.png"}  # no stale plot left


def test_names_from_json_are_text_in_tables_and_plots(tmp_path, monkeypatch):
    drawn = _recording_bars(monkeypatch)
    odd = {"name": "lab | $\\alpha$\nbench", "address": "ssh://x"}
    hidden = {"name": "_pi", "address": "ssh://y"}  # matplotlib would leave a "_" label out of an automatic legend
    paths = _write(tmp_path, {"a.json": _bench(_machine(), odd), "b.json": _bench(_machine(), hidden),
                              "c.json": _validate(_machine(), odd, cosine=None)})
    assert main(["report", *paths, "-o", str(tmp_path / "report")]) == 0
    text = (tmp_path / "report" / "report.md").read_text()
    assert "| lab \\| $\\alpha$ bench | tiny | 4,700,000 | 1 |" in text
    assert "| lab \\| $\\alpha$ bench | tiny | ref | 4,000,000 | mean_cosine | n/a | FAIL |" in text
    assert "accuracy.png" not in drawn  # no value to draw
    assert drawn["latency-p50.png"] == {"lab | $\\alpha$\nbench", "_pi"}


@pytest.mark.parametrize("device, problem", [
    ({"name": 3, "address": "ssh://pi@board:22"}, "device.name must be a string with a visible character"),
    ({"name": "  ", "address": "ssh://pi@board:22"}, "device.name must be"),
    ({"name": "pi"}, "device.address is missing"),
    ({"name": "pi", "address": None}, "device.address must be a string"),
    ("pi", "device must be an object"),
])
def test_a_malformed_device_is_refused_in_one_line_naming_the_file(tmp_path, capsys, device, problem):
    good = _write(tmp_path, {"good.json": _bench(_machine())})
    bad = _write(tmp_path, {"bad.json": {**_validate(_machine()), "device": device}})
    assert main(["report", *good, *bad, "-o", str(tmp_path / "report")]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("edgefold: error:") and bad[0] in line and problem in line
    assert not (tmp_path / "report").exists()


def test_a_malformed_machine_field_is_refused(tmp_path, capsys):
    bad = _write(tmp_path, {"bad.json": _bench(_machine(cores="four"))})
    assert main(["report", *bad, "-o", str(tmp_path / "report")]) == 2
    assert "machine.cores must be a whole number >= 0 or null" in capsys.readouterr().err


def test_old_documents_without_device_or_hostname_still_report(tmp_path):
    old = {"cpu": "Old CPU", "architecture": "x86_64"}  # before machine_context grew its other fields
    local = _machine(hostname="laptop", cores=None)  # os.cpu_count() may be None
    paths = _write(tmp_path, {"old-bench.json": _bench(old), "old-validate.json": _validate(old),
                              "local.json": _bench(local)})
    out = tmp_path / "report"
    assert main(["report", *paths, "-o", str(out)]) == 0
    text = (out / "report.md").read_text()
    assert "| x86_64 Old CPU | Old CPU | x86_64 | - | - | - | - | no |" in text
    assert "| laptop | Cortex-A76 | aarch64 | - | Linux-6.6.31-rpi-v8-aarch64-with-glibc2.36 | 3.11.2 | 1.20.1 | no |" \
        in text
    assert "| x86_64 Old CPU | tiny | ref |" in text and "| laptop | tiny | 4,700,000 |" in text
    assert text.count("| x86_64 Old CPU | Old CPU |") == 1  # one device, however many documents
    assert {p.name for p in out.iterdir()} == {"report.md", "quality.png", "latency.png", "latency-p50.png",
                                                "peak-rss.png", "accuracy.png"}


def test_one_device_adds_no_side_by_side_plot(tmp_path):
    paths = _write(tmp_path, {"b.json": _bench(_machine()), "v.json": _validate(_machine())})
    out = tmp_path / "report"
    assert main(["report", *paths, "-o", str(out)]) == 0
    assert {p.name for p in out.iterdir()} == {"report.md", "quality.png", "latency.png"}
    assert "| raspberrypi | Cortex-A76 |" in (out / "report.md").read_text()
