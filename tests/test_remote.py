"""``bench`` and ``validate`` with ``--on ssh://...`` against a real OpenSSH server started by the test.

Every device here is 127.0.0.1: the same sshd under several names, or a second one whose sessions lack python3
or a package index. The device's Python is the one running these tests (``--remote-python``), so its runtime
venv installs the same onnxruntime, numpy and tokenizers; it is built once per module and reused.
"""

from __future__ import annotations

import base64
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sshd import keygen, relay, skip_reason, start_sshd

from edgefold.exporter import CompressionConfig, GraphConfig, export
from edgefold.cli import main
from edgefold.runtime.errors import EdgefoldError
from edgefold.runtime.remote import SshSettings, parse_device
from edgefold.runtime.remote.ssh import agent_command
from edgefold.runtime.report import load_results

needs_sshd = pytest.mark.skipif(skip_reason() is not None, reason=skip_reason() or "")
DEVICE_PYTHON = str(Path(sys._base_executable).resolve())
QUICK = ["--threads", "1", "--seq", "16", "--warmup", "1", "--iterations", "2", "--min-seconds", "0"]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with start_sshd(tmp_path_factory.mktemp("sshd")) as server:
        yield server


@pytest.fixture(scope="module")
def device_root(tmp_path_factory) -> Path:
    """edgefold's folder on the "device": the runtime venv in it is built by the first test and reused."""
    return tmp_path_factory.mktemp("device") / "edgefold"


@pytest.fixture(scope="module")
def tiny_export(tiny_model, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tiny") / "tiny-bert"
    export(str(tiny_model("bert-fill-mask")), out, CompressionConfig(method="none"), GraphConfig(optimize="none"),
           progress=False)
    return out


def on(server, root: Path, *names: str, config: Path | None = None) -> list[str]:
    devices = [part for name in (names or ("device",)) for part in ("--on", f"{name}={server.url()}")]
    return [*devices, "--ssh-config", str(config or server.config), "--remote-dir", str(root),
            "--remote-python", DEVICE_PYTHON]


def runs_left(root: Path) -> list[str]:
    runs = root / "runs"
    return sorted(p.name for p in runs.iterdir()) if runs.is_dir() else []


@needs_sshd
def test_bench_on_two_devices_in_parallel_then_one_report(server, device_root, minilm_variants, tmp_path, capsys):
    results = tmp_path / "results"
    code = main(["bench", str(minilm_variants["mild"]), "--compare", str(minilm_variants["reference"]), *QUICK,
                 *on(server, device_root, "board-a", "board-b"), "-o", str(results), "--report",
                 str(tmp_path / "report")])
    out, err = capsys.readouterr()
    assert code == 0, err
    files = sorted(p.name for p in results.iterdir())
    assert files == ["bench-mild@board-a.json", "bench-mild@board-b.json"]
    for name in ("board-a", "board-b"):
        document = json.loads((results / f"bench-mild@{name}.json").read_text())
        assert document["device"] == {"name": name, "address": server.url()}
        assert set(document["models"]) == {"mild", "reference"} and document["compare"] == ["mild", "reference"]
        assert [(r["threads"], r["seq_length"]) for r in document["results"]] == [(1, 16)]
        assert f"{name}: done" in err and f"wrote {results / f'bench-mild@{name}.json'}" in out
    assert "runtime: installing" in err or "runtime: reusing" in err
    assert runs_left(device_root) == []  # each run folder removed; the venv stays for the next run
    assert [p.name for p in (device_root / "venvs").iterdir() if (p / ".edgefold-ready").is_file()]
    load_results(list(results.iterdir()))
    report = (tmp_path / "report" / "report.md").read_text()  # --report: the merged report of the same command
    assert "| board-a |" in report and "| board-b |" in report and "## Devices" in report
    assert (tmp_path / "report" / "latency-p50.png").is_file()


@pytest.mark.slow
@needs_sshd
def test_validate_on_a_device_sends_data_and_gates_and_exits_1_on_a_failed_gate(server, device_root, tiny_export,
                                                                               tmp_path, capsys):
    data = tmp_path / "items.txt"
    data.write_text("".join(f"sentence number {i} about boards\n" for i in range(12)))
    gates = tmp_path / "gates.json"
    gates.write_text(json.dumps({"gates": ["perplexity_ratio<=1.001"]}))
    code = main(["validate", str(tiny_export), "--reference", str(tiny_export), "--data", str(data),
                 "--gates", str(gates), *on(server, device_root), "-o", str(tmp_path)])
    assert code == 0, capsys.readouterr().err
    report = json.loads((tmp_path / "validate-tiny-bert@device.json").read_text())
    assert report["passed"] and report["data"]["items"] == 12 and report["data"]["source"].endswith("data.txt")
    assert [g["metric"] for g in report["gates"]] == ["perplexity_ratio"]  # the gate file went along

    failing = main(["validate", str(tiny_export), "--reference", str(tiny_export), "--data", str(data),
                    "--gate", "perplexity_ratio<=0.5", *on(server, device_root), "-o", str(tmp_path), "--overwrite"])
    assert failing == 1 and "FAIL: a gate failed on device" in capsys.readouterr().err
    assert not json.loads((tmp_path / "validate-tiny-bert@device.json").read_text())["passed"]


@needs_sshd
def test_a_failing_device_is_named_while_the_others_finish(server, device_root, tiny_export, tmp_path, capsys):
    closed = _closed_port()
    code = main(["bench", str(tiny_export), *QUICK, *on(server, device_root, "good"),
                 "--on", f"gone=ssh://root@127.0.0.1:{closed}", "-o", str(tmp_path)])
    out, err = capsys.readouterr()
    assert code == 3
    assert (tmp_path / "bench-tiny-bert@good.json").is_file() and not (tmp_path / "bench-tiny-bert@gone.json").exists()
    assert re.search(r"gone .*FAILED: unreachable \(ssh: connect to host 127.0.0.1 port \d+: Connection refused\)",
                     out)
    assert "1 of 2 device(s) failed: gone" in err


@needs_sshd
@pytest.mark.parametrize("case", ["unknown host key", "changed host key", "refused key"])
def test_ssh_refusals_stop_before_anything_is_sent(case, server, tiny_export, tmp_path, capsys):
    root = tmp_path / "device"
    if case == "unknown host key":
        config = server.write_config(tmp_path / "config", known_hosts_text="")
        expected = "its host key is not in known_hosts: refusing"
    elif case == "changed host key":
        other = keygen(tmp_path / "other-host-key", "another machine")
        config = server.write_config(tmp_path / "config", known_hosts_text=f"edgefold-test-sshd {other}\n")
        expected = "its host key has CHANGED"
    else:
        keygen(tmp_path / "stranger", "not authorised")
        config = server.write_config(tmp_path / "config", identity=tmp_path / "stranger")
        expected = "the device refused the login (root@127.0.0.1: Permission denied"
    code = main(["bench", str(tiny_export), *QUICK, *on(server, root, config=config), "-o", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 3 and expected in out
    assert not root.exists() and not list(tmp_path.glob("bench-*.json"))


@needs_sshd
def test_accept_new_host_key_adds_an_unknown_key_but_never_a_changed_one(server, device_root, tiny_export, tmp_path,
                                                                         capsys):
    config = server.write_config(tmp_path / "config", known_hosts_text="")
    code = main(["bench", str(tiny_export), *QUICK, *on(server, device_root, config=config), "-o", str(tmp_path),
                 "--accept-new-host-key"])
    assert code == 0, capsys.readouterr()
    assert server.host_public_key in (tmp_path / "config.known_hosts").read_text()
    other = keygen(tmp_path / "other-host-key", "another machine")
    changed = server.write_config(tmp_path / "changed", known_hosts_text=f"edgefold-test-sshd {other}\n")
    code = main(["bench", str(tiny_export), *QUICK, *on(server, device_root, config=changed), "-o", str(tmp_path),
                 "--overwrite", "--accept-new-host-key"])
    assert code == 3 and "CHANGED" in capsys.readouterr().out


@needs_sshd
def test_a_device_without_python_or_with_an_old_one_is_refused_by_name(tiny_export, tmp_path, capsys):
    empty = tmp_path / "bin"
    empty.mkdir()
    with start_sshd(tmp_path / "bare", env={"PATH": str(empty)}) as bare:
        code = main(["bench", str(tiny_export), *QUICK, "--on", f"bare={bare.url()}", "--ssh-config",
                     str(bare.config), "--remote-dir", str(tmp_path / "device"), "-o", str(tmp_path)])
    assert code == 3
    assert "no Python on the device: 'python3' is not on its PATH" in capsys.readouterr().out
    old = Path("/root/.pyenv/versions/3.8.18/bin/python3.8")
    if not old.is_file():
        pytest.skip(f"no Python 3.8 at {old} to play an old device")
    with start_sshd(tmp_path / "old") as server:
        code = main(["bench", str(tiny_export), *QUICK, "--on", f"old={server.url()}", "--ssh-config",
                     str(server.config), "--remote-dir", str(tmp_path / "device"), "--remote-python", str(old),
                     "-o", str(tmp_path)])
    assert code == 3 and "Python 3.8.18 on the device; edgefold's runtime needs 3.10" in capsys.readouterr().out
    assert not (tmp_path / "device").exists()


@needs_sshd
def test_a_device_out_of_disk_is_refused_before_the_transfer(server, tiny_export, tmp_path, capsys):
    small = tmp_path / "small-disk"
    small.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(small)], capture_output=True).returncode:
        pytest.skip("cannot mount a small tmpfs here to play a full disk")
    try:
        code = main(["bench", str(tiny_export), *QUICK, *on(server, small / "edgefold"), "-o", str(tmp_path)])
    finally:
        subprocess.run(["umount", str(small)], check=True)
    out = capsys.readouterr().out
    assert code == 3 and re.search(r"out of disk: 2 MB free in .*small-disk/edgefold, the run needs about \d+ MB", out)


@needs_sshd
def test_an_interrupted_transfer_fails_that_device_and_leaves_nothing_there(server, device_root, minilm_variants,
                                                                           tmp_path, capsys):
    with relay(server.port, cut_after=4 << 20) as port:
        code = main(["bench", str(minilm_variants["mild"]), *QUICK, "--on", f"flaky=ssh://root@127.0.0.1:{port}",
                     "--ssh-config", str(server.config), "--remote-dir", str(device_root), "--remote-python",
                     DEVICE_PYTHON, "-o", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 3 and "flaky" in out and "the connection broke during the transfer" in out
    assert runs_left(device_root) == []  # the partial file and its run folder are gone
    assert not list(tmp_path.glob("bench-*.json"))


@needs_sshd
def test_a_command_that_fails_on_the_device_reports_its_last_lines(server, device_root, tiny_export, tmp_path,
                                                                   capsys):
    # the tiny model has 128 positions: a 4096-token bench is refused by the device's edgefold
    code = main(["bench", str(tiny_export), *QUICK[:2], "--seq", "4096", *QUICK[4:], *on(server, device_root),
                 "-o", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 3 and "edgefold bench failed on the device (exit 2)" in out and "4096" in out
    assert runs_left(device_root) == []


@needs_sshd
def test_keep_remote_leaves_the_run_folder_with_the_unpacked_model(server, device_root, tiny_export, tmp_path, capsys):
    code = main(["bench", str(tiny_export), *QUICK, *on(server, device_root), "-o", str(tmp_path), "--keep-remote"])
    assert code == 0
    kept = runs_left(device_root)
    assert len(kept) == 1 and f"kept {device_root}/runs/{kept[0]}" in capsys.readouterr().err
    folder = device_root / "runs" / kept[0]
    assert (folder / "tiny-bert" / "model.onnx").is_file() and (folder / "result.json").is_file()
    subprocess.run(["rm", "-rf", str(folder)], check=True)


@pytest.mark.slow
@needs_sshd
def test_a_device_without_a_package_index_installs_from_a_wheelhouse(server, tiny_export, tmp_path, capsys):
    from importlib import metadata

    from edgefold.runtime.package import PINNED

    wheelhouse = tmp_path / "wheelhouse"
    pins = [f"{name}=={metadata.version(name)}" for name in PINNED]
    download = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "-d", str(wheelhouse),
                               "--only-binary=:all:", *pins], capture_output=True, text=True, timeout=600)
    if download.returncode != 0:
        pytest.skip(f"pip cannot download the runtime's wheels here: {download.stderr.strip()[-200:]}")
    offline = {"PIP_INDEX_URL": f"http://127.0.0.1:{_closed_port()}/simple", "PIP_RETRIES": "0",
               "PIP_TIMEOUT": "2", "PATH": "/usr/local/bin:/usr/bin:/bin"}
    with start_sshd(tmp_path / "offline", env=offline) as offline_server:
        args = ["bench", str(tiny_export), *QUICK, "--on", f"offline={offline_server.url()}", "--ssh-config",
                str(offline_server.config), "--remote-dir", str(tmp_path / "device"), "--remote-python",
                DEVICE_PYTHON, "-o", str(tmp_path)]
        assert main(args) == 3
        assert "pip could not install the runtime" in capsys.readouterr().out
        assert main([*args, "--wheelhouse", str(wheelhouse)]) == 0, capsys.readouterr()
    assert (tmp_path / "bench-tiny-bert@offline.json").is_file()


@pytest.mark.slow
def test_device_flags_without_on_and_bad_devices_are_one_line_errors(tiny_export, capsys):
    assert main(["bench", str(tiny_export), "--keep-remote"]) == 2
    assert "--keep-remote only apply with --on" in capsys.readouterr().err
    for flags, problem in ((["--remote-python", "python3; rm -rf ~"], "--remote-python 'python3; rm -rf ~'"),
                           (["--wheelhouse", "/no/such/folder"], "--wheelhouse /no/such/folder: no such folder"),
                           (["--ssh-config", "/no/such/file"], "--ssh-config /no/such/file: no such file")):
        assert main(["bench", str(tiny_export), "--on", "ssh://board", *flags]) == 2
        err = capsys.readouterr().err
        assert problem in err and err.count("\n") == 1 and "packed" not in err  # refused before any work
    for bad in ("ssh://-oProxyCommand=x", "pi=ssh://host:70000", "http://host", "a b=ssh://host", "ssh://us er@h"):
        with pytest.raises(SystemExit) as exit_:
            main(["bench", str(tiny_export), "--on", bad])
        assert exit_.value.code == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "--on" in err


@given(st.text(max_size=60))
def test_a_device_address_never_reaches_ssh_as_an_option_or_a_shell_word(text):
    try:
        device = parse_device(text)
    except EdgefoldError:
        return
    assert re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9._@:-]*", device.destination), device
    assert device.port is None or 1 <= device.port <= 65535


@given(st.text(max_size=80), st.lists(st.text(max_size=30), max_size=4))
def test_the_remote_command_line_is_fixed_text_and_base64_whatever_the_user_gives(remote_dir, arguments):
    try:
        settings = SshSettings(remote_dir=remote_dir)
    except EdgefoldError:
        return
    command = agent_command(settings, {"op": "run", "root": remote_dir, "command": arguments})
    fixed = "python3 -c 'import base64,sys;exec(base64.b64decode(sys.argv[1]))' "
    assert command.startswith(fixed)
    words = command[len(fixed):].split(" ")
    assert len(words) == 2 and all(re.fullmatch(r"[A-Za-z0-9+/]+=*", word) for word in words)
    assert json.loads(base64.b64decode(words[1]))["command"] == arguments


def _closed_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@needs_sshd
def test_sigterm_on_the_host_stops_the_device_side_too(server, device_root, tiny_export, tmp_path):
    """The agent takes the end of its stdin for the host going away: the bench it started must not run on."""
    import os
    import signal
    import time

    argv = [sys.executable, "-m", "edgefold.cli", "bench", str(tiny_export), "--threads", "1", "--seq", "16",
            "--min-seconds", "120", *on(server, device_root), "-o", str(tmp_path)]
    host = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in host.stderr:
        if "running edgefold bench" in line:
            break
    time.sleep(2)  # the bench is under way on the device
    assert _device_processes(device_root)
    host.send_signal(signal.SIGTERM)
    assert host.wait(timeout=60) == 143 and "terminated" in host.stderr.read()
    deadline = time.monotonic() + 20
    while _device_processes(device_root) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not _device_processes(device_root) and runs_left(device_root) == []
    assert not list(tmp_path.glob("bench-*.json")) and os.listdir(tmp_path) == []


def _device_processes(root: Path) -> list[str]:
    found = subprocess.run(["pgrep", "-af", str(root)], capture_output=True, text=True).stdout
    return [line for line in found.splitlines() if "pgrep" not in line]


ARM_CHROOT = Path(__file__).resolve().parents[1] / "benchmarks" / "arm_chroot.sh"


def _arm_skip_reason() -> str | None:
    if skip_reason():
        return skip_reason()
    root = subprocess.run([str(ARM_CHROOT), "root"], capture_output=True, text=True).stdout.strip()
    marker = Path(root) / ".edgefold-ready"
    if not marker.is_file() or "openssh-server" not in marker.read_text():
        return (f"no emulated aarch64 chroot with sshd at {root} (benchmarks/arm_emulated.sh builds it; CI runs it "
                "before the tests)")
    return None


@pytest.mark.slow
@pytest.mark.skipif(_arm_skip_reason() is not None, reason=_arm_skip_reason() or "")
def test_one_command_measures_an_x86_and_an_emulated_arm_device_and_report_merges_them(server, device_root,
                                                                                      tiny_export, tmp_path, capsys):
    """The chroot's own sshd is a second device, reached by an alias of the ssh config. Both devices run their own
    python3 (Debian's) and install the runtime into the same path, each on its own file system."""
    port = _closed_port()
    pidfile = tmp_path / "arm-sshd.pid"
    started = subprocess.run([str(ARM_CHROOT), "sshd", str(port), f"{server.client_key}.pub", str(pidfile)],
                             capture_output=True, text=True, timeout=900)
    assert started.returncode == 0, started.stderr
    arm_key = started.stdout.strip().splitlines()[-1]
    try:
        both = server.write_config(tmp_path / "config", known_hosts_text=(
            f"{server.known_hosts.read_text().strip()}\nedgefold-arm-sshd {arm_key}\n"))
        both.write_text(f"Host arm\n    HostName 127.0.0.1\n    Port {port}\n    HostKeyAlias edgefold-arm-sshd\n\n"
                        + both.read_text())
        code = main(["bench", str(tiny_export), *QUICK, "--on", f"x86={server.url()}", "--on", "arm=ssh://root@arm",
                     "--ssh-config", str(both), "--remote-dir", str(tmp_path / "device"), "-o",
                     str(tmp_path / "results")])
    finally:
        subprocess.run([str(ARM_CHROOT), "sshd-stop", str(pidfile)], capture_output=True, timeout=120)
    out = capsys.readouterr().out
    assert code == 0, out
    arm = json.loads((tmp_path / "results" / "bench-tiny-bert@arm.json").read_text())
    x86 = json.loads((tmp_path / "results" / "bench-tiny-bert@x86.json").read_text())
    assert arm["machine"]["architecture"] == "aarch64" and arm["machine"]["emulated"] is True
    assert x86["machine"]["architecture"] == "x86_64" and not x86["machine"]["emulated"]
    results = sorted(map(str, (tmp_path / "results").iterdir()))
    assert main(["report", *results, "-o", str(tmp_path / "report")]) == 0
    report = (tmp_path / "report" / "report.md").read_text()
    assert "## Devices" in report and "aarch64" in report and "x86_64" in report
    assert (tmp_path / "report" / "latency-p50-emulated.png").is_file()


@given(threads=st.none() | st.lists(st.integers(1, 64), min_size=1, max_size=3, unique=True),
       seq=st.lists(st.integers(1, 512), min_size=1, max_size=3, unique=True),
       warmup=st.integers(0, 50), no_arena=st.booleans(), inputs=st.sampled_from(["text", "synthetic"]),
       level=st.sampled_from(["disable", "basic", "extended", "all"]))
def test_the_flags_a_device_gets_mean_what_the_user_gave(threads, seq, warmup, no_arena, inputs, level):
    """bench's flags are written back for the device's edgefold: parsed there, they are the user's settings."""
    from edgefold.cli import build_parser
    from edgefold.cli.bench import _FORWARDED
    from edgefold.cli.devices import forwarded

    user = ["bench", "model", "--seq", ",".join(map(str, seq)), "--warmup", str(warmup), "--inputs", inputs,
            "--ort-optimization-level", level, *(["--threads", ",".join(map(str, threads))] if threads else []),
            *(["--no-arena"] if no_arena else []), "--on", "ssh://board", "--keep-remote", "-o", "out"]
    args = build_parser().parse_args(user)
    device = build_parser().parse_args(["bench", "model", *forwarded(args, args.actions, _FORWARDED)])
    for dest in _FORWARDED:
        assert getattr(device, dest) == getattr(args, dest), dest
    assert device.on is None and not device.keep_remote and device.output is None  # host-only flags stay home


@given(gates=st.lists(st.text(min_size=1, max_size=20).filter(lambda g: not g.startswith("-")), max_size=3),
       limit=st.none() | st.integers(1, 10_000), column=st.text(min_size=1, max_size=12).filter(
           lambda c: not c.startswith("-")))
def test_validate_flags_reach_the_device_unchanged_whatever_they_hold(gates, limit, column):
    from edgefold.cli import build_parser
    from edgefold.cli.devices import forwarded
    from edgefold.cli.validate import _FORWARDED

    user = ["validate", "cand", "--reference", "ref", "--text-column", column,
            *[part for gate in gates for part in ("--gate", gate)], *(["--limit", str(limit)] if limit else []),
            "--on", "ssh://board"]
    args = build_parser().parse_args(user)
    device = build_parser().parse_args(["validate", "cand", "--reference", "ref",
                                        *forwarded(args, args.actions, _FORWARDED)])
    for dest in _FORWARDED:
        assert getattr(device, dest) == getattr(args, dest), dest


def test_a_device_keeps_the_two_last_used_runtimes_of_its_python(tmp_path):
    """An upgrade of edgefold installs a new venv; older ones go, beyond the last two used, and only for the same
    Python and machine (another Python's venvs are not this one's to judge)."""
    import os

    from edgefold.runtime.remote import agent

    venvs = tmp_path / "venvs"
    ages = {"aaaaaaaaaaaaaaaa-py3.11-aarch64": 30, "bbbbbbbbbbbbbbbb-py3.11-aarch64": 10,
            "cccccccccccccccc-py3.11-aarch64": 20, "dddddddddddddddd-py3.9-aarch64": 40,
            "eeeeeeeeeeeeeeee-py3.11-aarch64.partial-20261130-000000-00000000": 50}
    for name, days in ages.items():
        (venvs / name).mkdir(parents=True)
        if "partial" not in name:
            marker = venvs / name / ".edgefold-ready"
            marker.touch()
            os.utime(marker, (0, 1e9 - days * 86400))
    current = venvs / "ffffffffffffffff-py3.11-aarch64"
    (current).mkdir()
    (current / ".edgefold-ready").touch()
    agent._prune_runtimes(str(current))
    assert sorted(p.name for p in venvs.iterdir()) == sorted(
        ["bbbbbbbbbbbbbbbb-py3.11-aarch64", "dddddddddddddddd-py3.9-aarch64", current.name,
         "eeeeeeeeeeeeeeee-py3.11-aarch64.partial-20261130-000000-00000000"])
