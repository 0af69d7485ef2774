"""One edgefold command on many devices at once; each device's failure is its own.

For each device, in its own thread: probe (Python 3.10+, free space, is the runtime installed), send the bundles
and files into a new run folder (checked by size and SHA-256), install the runtime into a venv kept for later runs
(or reuse it), run the command, bring its JSON back, and remove the run folder unless asked to keep it.
"""

from __future__ import annotations

import hashlib
import secrets
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import EdgefoldError
from ..package import pack, requirements_text, runtime_wheel
from .devices import Device, check_devices
from .ssh import DeviceError, SshSettings, call_agent

RESULT = "result.json"
MIN_PYTHON = (3, 10)
#: Room a new runtime venv takes (onnxruntime, numpy, tokenizers, pip's cache): checked before sending.
VENV_BYTES = 400 << 20
_CHUNK = 1 << 20


@dataclass
class RemoteJob:
    """What each device gets and runs: ``edgefold COMMAND ARGUMENTS... -o result.json`` in its run folder,
    where ``bundles`` (device-side name -> local exported folder) were unpacked and ``files`` copied."""

    command: str
    arguments: list[str]
    bundles: dict[str, Path]
    files: dict[str, Path] = field(default_factory=dict)
    wheelhouse: Path | None = None
    #: exit codes that still mean "ran and wrote its result" (validate: 1, a gate failed)
    accept: tuple[int, ...] = (0,)


@dataclass
class DeviceOutcome:
    device: Device
    result: dict | None = None
    error: str | None = None
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(frozen=True)
class _Upload:
    name: str
    path: Path
    size: int
    sha256: str


def run_on_devices(devices: list[Device], job: RemoteJob, settings: SshSettings, *, keep: bool = False,
                   say: Callable[[str], None] | None = None) -> list[DeviceOutcome]:
    """Run ``job`` on every device in parallel; one outcome per device, in the order given."""
    check_devices(devices)
    say = say or _stderr_lines()
    with tempfile.TemporaryDirectory(prefix="edgefold-devices-") as scratch:
        uploads, installer = _prepare(job, Path(scratch), say)
        key = _runtime_key()
        runner = _Runner(job, settings, uploads, installer, key, keep, say)
        with ThreadPoolExecutor(max_workers=len(devices), thread_name_prefix="edgefold-device") as pool:
            futures = [pool.submit(runner.run, device) for device in devices]
            try:
                return [future.result() for future in futures]
            except BaseException:  # Ctrl-C: stop every ssh now; each thread still removes its run folder
                runner.stop()
                raise


def _stderr_lines() -> Callable[[str], None]:
    lock = threading.Lock()

    def say(line: str) -> None:
        with lock:
            print(line, file=sys.stderr, flush=True)

    return say


def _prepare(job: RemoteJob, scratch: Path, say: Callable[[str], None]) -> tuple[list[_Upload], str]:
    """Pack each folder once for all devices, and list what goes over the wire."""
    paths: dict[str, Path] = {}
    for name, folder in job.bundles.items():
        archive = scratch / f"{name}.tar.gz"
        packed = pack(folder, archive)
        say(f"packed {folder} ({packed['bytes'] / 1e6:.1f} MB)")
        paths[archive.name] = archive
    paths.update(job.files)
    if job.wheelhouse is not None:
        wheels = sorted(p for p in Path(job.wheelhouse).iterdir() if p.is_file() and p.suffix == ".whl")
        if not wheels:
            raise EdgefoldError(f"--wheelhouse {job.wheelhouse} holds no .whl files")
        paths.update({f"wheelhouse/{wheel.name}": wheel for wheel in wheels})
    uploads = [_Upload(name, path, path.stat().st_size, _sha256(path)) for name, path in paths.items()]
    return uploads, f"{next(iter(job.bundles))}.tar.gz"


def _runtime_key() -> str:
    """Names the venv on the device: the same wheel and pins, the same venv."""
    name, wheel = runtime_wheel()
    return hashlib.sha256(requirements_text(name).encode() + wheel).hexdigest()[:16]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while chunk := stream.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


class _Runner:
    """The steps on one device; one instance serves every device's thread."""

    def __init__(self, job: RemoteJob, settings: SshSettings, uploads: list[_Upload], installer: str, key: str,
                 keep: bool, say: Callable[[str], None]):
        self.job, self.settings, self.uploads, self.installer = job, settings, uploads, installer
        self.key, self.keep, self.say = key, keep, say
        self._processes: set[subprocess.Popen] = set()
        self._lock = threading.Lock()
        self._stopped = threading.Event()

    def stop(self) -> None:
        self._stopped.set()
        with self._lock:
            for process in self._processes:
                process.terminate()

    def run(self, device: Device) -> DeviceOutcome:
        start = time.monotonic()
        outcome = DeviceOutcome(device)
        run_id = time.strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(4)
        started = False
        try:
            probe = self._probe(device)
            started = True  # from here on a run folder may exist on the device
            self._send(device, run_id, probe)
            reply = self._agent(device, {"op": "run", "run": run_id, "venv_key": self.key,
                                         "installer": self.installer, "wheelhouse": self.job.wheelhouse is not None,
                                         "bundles": {f"{n}.tar.gz": n for n in self.job.bundles},
                                         "command": [self.job.command, *self.job.arguments, "-o", RESULT],
                                         "result": RESULT, "accept": list(self.job.accept)})
            outcome.result = reply["result"]
        except DeviceError as error:
            outcome.error = str(error)
        except (KeyError, TypeError, ValueError) as error:  # a reply this edgefold cannot read: that device's alone
            outcome.error = f"unexpected reply from the device's agent ({type(error).__name__}: {error})"
        finally:
            if started:
                self._finish(device, run_id)
            outcome.seconds = time.monotonic() - start
        self.say(f"{device.name}: " + (f"done in {outcome.seconds:.0f} s" if outcome.ok else f"FAILED: {outcome.error}"))
        return outcome

    def _probe(self, device: Device) -> dict:
        self.say(f"{device.name}: connecting to {device.address}")
        probe = self._agent(device, {"op": "probe", "venv_key": self.key})
        version = tuple(int(part) for part in probe["python"].split(".")[:2])
        if version < MIN_PYTHON:
            raise DeviceError(f"Python {probe['python']} on the device; edgefold's runtime needs 3.10 or newer "
                              "(install it, then point --remote-python at it)")
        need = sum(u.size for u in self.uploads) * 3 + (0 if probe["venv_ready"] else VENV_BYTES)
        if probe["free_bytes"] < need:
            raise DeviceError(f"out of disk: {probe['free_bytes'] / 1e6:.0f} MB free in {probe['root']}, the run "
                              f"needs about {need / 1e6:.0f} MB")
        self.say(f"{device.name}: {probe['system']} {probe['machine']}, Python {probe['python']}, runtime "
                 + ("installed" if probe["venv_ready"] else "to install"))
        return probe

    def _send(self, device: Device, run_id: str, probe: dict) -> None:
        # a device whose runtime is installed needs no wheelhouse
        uploads = [u for u in self.uploads if not (probe["venv_ready"] and u.name.startswith("wheelhouse/"))]
        total = sum(u.size for u in uploads)
        self.say(f"{device.name}: sending {len(uploads)} file(s), {total / 1e6:.1f} MB")
        start = time.monotonic()
        self._agent(device, {"op": "receive", "run": run_id,
                             "files": [{"name": u.name, "size": u.size, "sha256": u.sha256} for u in uploads]},
                    stdin=self._chunks(device, uploads, total))
        self.say(f"{device.name}: sent in {time.monotonic() - start:.1f} s")

    def _chunks(self, device: Device, uploads: list[_Upload], total: int) -> Iterator[bytes]:
        sent, shown = 0, 0
        for upload in uploads:
            with open(upload.path, "rb") as stream:
                while chunk := stream.read(_CHUNK):
                    yield chunk
                    sent += len(chunk)
                    if total > 16 * _CHUNK and sent * 4 // total > shown:  # a line per quarter of a long send
                        shown = sent * 4 // total
                        self.say(f"{device.name}: sent {sent / 1e6:.0f} of {total / 1e6:.0f} MB")

    def _finish(self, device: Device, run_id: str) -> None:
        """Remove the run folder (or say where it was kept); a failed removal is reported, never fatal."""
        if self.keep:
            self.say(f"{device.name}: kept {self.settings.remote_dir}/runs/{run_id}")
            return
        try:
            self._agent(device, {"op": "remove", "run": run_id}, stoppable=False)
        except DeviceError as error:
            self.say(f"{device.name}: could not remove its run folder ({error})")

    def _agent(self, device: Device, request: dict, *, stdin=None, stoppable: bool = True) -> dict:
        if stoppable and self._stopped.is_set():
            raise DeviceError("stopped")
        return call_agent(device, self.settings, request, stdin=stdin,
                          progress=lambda line: self.say(f"{device.name}: {line}"),
                          started=self._track if stoppable else None)

    def _track(self, process: subprocess.Popen) -> None:
        with self._lock:
            self._processes = {p for p in self._processes if p.poll() is None} | {process}
            if self._stopped.is_set():
                process.terminate()
