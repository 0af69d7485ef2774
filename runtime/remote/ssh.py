"""OpenSSH's client, run for edgefold's agent on a device, and what its failures mean.

Why OpenSSH's ``ssh`` and not a Python library (Paramiko, asyncssh): it is already on every machine that reaches a
board, it reads the user's own ``~/.ssh/config`` (aliases, ProxyJump, ports, keys, agents, certificates,
ControlMaster) and known_hosts (hashed entries, @cert-authority, @revoked) exactly as the user's own ``ssh`` does,
and it adds no dependency to the runtime. edgefold only adds options that make it safe to script: batch mode
(never a password prompt), host keys always checked (``StrictHostKeyChecking=yes``; ``accept-new`` only when the
user asks, and a changed key is refused either way), and keep-alives that notice a dead link.

The command the device's shell parses is fixed text plus base64: the agent's source and the request (with every
user-given path and flag) are base64-encoded, so nothing a user types can break it.
"""

from __future__ import annotations

import base64
import json
import re
import shlex
import shutil
import subprocess
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from ..errors import EdgefoldError
from .agent import PROGRESS
from .devices import Device

_BOOT = "import base64,sys;exec(base64.b64decode(sys.argv[1]))"
_PYTHON = re.compile(r"[A-Za-z0-9_./+-]{1,255}")
#: ssh's own exit status when the connection (not the remote command) failed.
SSH_FAILED = 255


class DeviceError(Exception):
    """What went wrong on (or on the way to) one device, as one line: the others go on."""


@dataclass(frozen=True)
class SshSettings:
    """How edgefold reaches every device of one command."""

    config: Path | None = None
    accept_new_host_key: bool = False
    remote_dir: str = ".edgefold"
    python: str = "python3"
    connect_timeout: int = 15

    def __post_init__(self):
        if shutil.which("ssh") is None:
            raise EdgefoldError("--on needs OpenSSH's ssh command (Debian and Ubuntu: apt install openssh-client)")
        if not _PYTHON.fullmatch(self.python) or self.python.startswith("-"):
            raise EdgefoldError(f"--remote-python {self.python!r}: give a command or path (letters, digits, ./_+-)")
        if self.config is not None and not Path(self.config).is_file():
            raise EdgefoldError(f"--ssh-config {self.config}: no such file")
        if not self.remote_dir.strip() or "\0" in self.remote_dir:
            raise EdgefoldError(f"--remote-dir {self.remote_dir!r}: give a folder on the device")

    def argv(self, device: Device, remote_command: str) -> list[str]:
        options = ["-o", "BatchMode=yes",
                   "-o", f"StrictHostKeyChecking={'accept-new' if self.accept_new_host_key else 'yes'}",
                   "-o", f"ConnectTimeout={self.connect_timeout}",
                   "-o", "ServerAliveInterval=15", "-o", "ServerAliveCountMax=4"]
        config = ["-F", str(self.config)] if self.config else []
        port = ["-p", str(device.port)] if device.port else []
        return ["ssh", *config, *port, *options, "-T", "--", device.destination, remote_command]


def agent_command(settings: SshSettings, request: dict) -> str:
    """The remote command line: the interpreter, the boot line, and two base64 arguments."""
    source = resources.files(__package__).joinpath("agent.py").read_bytes()
    encoded = [base64.b64encode(data).decode() for data in (source, json.dumps(request).encode())]
    return " ".join([shlex.quote(settings.python), "-c", shlex.quote(_BOOT), *encoded])


def call_agent(device: Device, settings: SshSettings, request: dict, *, stdin: Iterable[bytes] | None = None,
               progress: Callable[[str], None] | None = None,
               started: Callable[[subprocess.Popen], None] | None = None) -> dict:
    """Run one agent operation on ``device``; its reply, or :class:`DeviceError` saying why not.

    ``stdin`` chunks are streamed to the agent (a cut link shows as a BrokenPipeError here and exit 255 from
    ssh); the agent's stderr lines go to ``progress``."""
    request = {"root": settings.remote_dir, **request}
    argv = settings.argv(device, agent_command(settings, request))
    # stdin stays open while we wait: the agent takes its end for the host going away
    process = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    if started:
        started(process)
    sent_all = _send(process, stdin) if stdin is not None else True
    errors = []
    for raw in process.stderr:
        line = raw.decode("utf-8", "replace").rstrip()
        errors.append(line)
        if progress and line.startswith(PROGRESS):
            progress(line[len(PROGRESS):])
    output = process.stdout.read().decode("utf-8", "replace")
    code = process.wait()
    process.stdin.close()
    reply = _reply(output)
    if reply is not None and not reply.get("ok"):
        raise DeviceError(reply.get("error") or "the device's agent failed")
    if reply is not None and code == 0 and sent_all:
        return reply
    raise DeviceError(explain(code, errors, settings, sent_all))


def _send(process: subprocess.Popen, chunks: Iterable[bytes]) -> bool:
    """Write every chunk to the agent; False when the link broke before the end."""
    try:
        for chunk in chunks:
            process.stdin.write(chunk)
        process.stdin.close()
        return True
    except (BrokenPipeError, ConnectionResetError):
        return False


def _reply(output: str) -> dict | None:
    """The agent's JSON reply: its last line (a login banner or an rc file may print before it)."""
    lines = [line for line in output.splitlines() if line.strip()]
    try:
        reply = json.loads(lines[-1]) if lines else None
    except json.JSONDecodeError:
        return None
    return reply if isinstance(reply, dict) else None


def explain(code: int, stderr: list[str], settings: SshSettings, sent_all: bool = True) -> str:
    """ssh's failure as one line a user can act on."""
    text = "\n".join(stderr)
    last = next((line.strip() for line in reversed(stderr) if line.strip()), "")
    if "REMOTE HOST IDENTIFICATION HAS CHANGED" in text:
        return ("its host key has CHANGED since known_hosts recorded it: refusing (a reinstalled board, or someone "
                "in the middle); check the new key, then remove the old one with ssh-keygen -R HOST")
    if "Host key verification failed" in text or "No ED25519 host key is known" in text:
        return ("its host key is not in known_hosts: refusing; check the key, add it (ssh-keyscan, or connect "
                "once with ssh), or pass --accept-new-host-key")
    if "Permission denied" in text or "Too many authentication failures" in text:
        return f"the device refused the login ({last})"
    if code == SSH_FAILED and any(reason in text for reason in _UNREACHABLE):
        return f"unreachable ({last})"
    if code == 127 or (settings.python in last and "not found" in last):
        return f"no Python on the device: {settings.python!r} is not on its PATH (install python3, or --remote-python)"
    if not sent_all or code == SSH_FAILED:
        return f"the connection broke{'' if sent_all else ' during the transfer'} ({last or f'ssh exit {code}'})"
    return f"the agent failed (exit {code}): {last or 'no message'}"


_UNREACHABLE = ("Connection refused", "Connection timed out", "No route to host", "Could not resolve hostname",
                "Network is unreachable", "Name or service not known", "Operation timed out",
                "Temporary failure in name resolution")
