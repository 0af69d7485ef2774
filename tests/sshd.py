"""A real OpenSSH server for tests, started by the test itself on 127.0.0.1, and a TCP relay that can drop a link.

Nothing here touches ~/.ssh or /etc/ssh: the host key, the client key, authorized_keys, known_hosts, the
sshd_config and the ssh_config all live in the folder the test gives. Test modules import the plain helpers
(``from sshd import SshServer, relay, skip_reason, start_sshd``; pytest puts tests/ on sys.path, as for
``from conftest import ...``) and define their own fixtures.

The client side is the ``ssh`` command with ``-F server.config``: that config's ``Host *`` block names the
client key (IdentitiesOnly), the folder's known_hosts (no global one) and ``HostKeyAlias edgefold-test-sshd``,
so the one known_hosts entry matches whatever port the client connects to (the server's or a relay's).

Sessions (verified with OpenSSH 9.2 on Debian 12, as root): sshd runs a remote command as ``$SHELL -c COMMAND``
with the user's login shell, and Debian's bash then sources ~/.bashrc (it sees SSH_CLIENT), even for a
non-interactive command. ``SetEnv PATH=/dir`` alone does reach that shell, but a ~/.bashrc that prepends to PATH
undoes it: with root's ~/.bashrc here, ``echo $PATH`` printed pyenv's shims (which hold a python3) before /dir.
So every session of this sshd is made independent of the machine's dotfiles, in two real ways:

- ``SetEnv SHLVL=1`` (besides the env items): bash sources ~/.bashrc for sshd only as a top-level shell
  (SHLVL below 2), and one inheriting SHLVL=1 is at level 2, so root's ~/.bashrc does not run;
- ``ForceCommand`` is a wrapper script in the folder, run with ``/bin/sh`` (which reads no startup file when not
  interactive), that exports each env item again and then runs the client's command with
  ``/bin/sh -c "$SSH_ORIGINAL_COMMAND"``, the sftp subsystem with OpenSSH's sftp-server, or, with no command, ``/bin/sh``
  (interactive on a tty). Remote commands thus see exactly the env given to start_sshd, and a POSIX sh (dash),
  as on a small device; ``start_sshd(env={"PATH": "/dir"})`` with no python3 in /dir is a device without python3.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

SSHD = Path("/usr/sbin/sshd")
HOST_KEY_ALIAS = "edgefold-test-sshd"
PRIVSEP_DIR = Path("/run/sshd")
SFTP_SERVER = Path("/usr/lib/openssh/sftp-server")
START_TIMEOUT_S = 20.0


def skip_reason() -> str | None:
    """Why tests that need a real sshd cannot run on this machine, or None when they can."""
    if not sys.platform.startswith("linux"):
        return f"the sshd tests run on Linux only, not {sys.platform}"
    if not SSHD.is_file() or not os.access(SSHD, os.X_OK):
        return f"no OpenSSH server at {SSHD} (apt-get install openssh-server)"
    for tool in ("ssh", "ssh-keygen"):
        if shutil.which(tool) is None:
            return f"no `{tool}` command (apt-get install openssh-client)"
    if os.geteuid() != 0:
        return "the sshd tests start sshd as root (privilege separation, login as root); not root here"
    try:
        pwd.getpwnam("sshd")
    except KeyError:
        return "no `sshd` user for sshd's privilege separation (a broken openssh-server install)"
    return None


def _quote(value: object) -> str:
    """A value for an ssh_config/sshd_config line (double quotes, which both accept)."""
    text = str(value)
    if '"' in text or "\n" in text:
        raise ValueError(f"cannot put {text!r} in an OpenSSH config file")
    return f'"{text}"'


@dataclass
class SshServer:
    port: int
    folder: Path
    host_public_key: str  # "ssh-ed25519 AAAA..." (no comment)
    client_key: Path  # private key (its .pub is in authorized_keys)
    config: Path  # ssh_config for `ssh -F`
    known_hosts: Path  # holds host_public_key under HOST_KEY_ALIAS

    def url(self, user: str = "root") -> str:
        return f"ssh://{user}@127.0.0.1:{self.port}"

    def write_config(self, path: Path, *, known_hosts_text: str | None = None, identity: Path | None = None) -> Path:
        """Write an ssh_config for `ssh -F` at path; with known_hosts_text, its known_hosts is a new file next to
        path holding that text ("" for an unknown host key); with identity, the client offers that key instead."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        known_hosts = self.known_hosts
        if known_hosts_text is not None:
            known_hosts = path.with_name(path.name + ".known_hosts")
            known_hosts.write_text(known_hosts_text)
        lines = [
            "Host *",
            f"    IdentityFile {_quote(identity if identity is not None else self.client_key)}",
            "    IdentitiesOnly yes",
            "    IdentityAgent none",
            f"    UserKnownHostsFile {_quote(known_hosts)}",
            "    GlobalKnownHostsFile /dev/null",
            f"    HostKeyAlias {HOST_KEY_ALIAS}",
            "    CheckHostIP no",
            "    UpdateHostKeys no",
            "    PasswordAuthentication no",
            "    KbdInteractiveAuthentication no",
            "    ConnectTimeout 10",
            "",
        ]
        path.write_text("\n".join(lines))
        return path

    def ssh_command(self, *command: str, config: Path | None = None, port: int | None = None) -> list[str]:
        """The argv of `ssh` running command on this server (through port, e.g. a relay's, when given)."""
        return ["ssh", "-F", str(config or self.config), "-p", str(port or self.port), "-o", "BatchMode=yes",
                "-o", "StrictHostKeyChecking=yes", "root@127.0.0.1", "--", *command]


def keygen(path: Path, comment: str) -> str:
    """A new ed25519 key pair without passphrase at path (and path.pub); returns "ssh-ed25519 AAAA..."."""
    path = Path(path)
    for stale in (path, path.with_name(path.name + ".pub")):
        stale.unlink(missing_ok=True)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
                   check=True, capture_output=True, timeout=30)
    kind, blob = path.with_name(path.name + ".pub").read_text().split()[:2]
    return f"{kind} {blob}"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def _descendants(pid: int) -> list[int]:
    """pid's descendants (sshd's per-connection children call setsid, so killing its group misses them)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path("/proc", entry, "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _signal(pids: list[int], sig: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def _stop(proc: subprocess.Popen) -> None:
    family = _descendants(proc.pid)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGTERM)
    _signal(family, signal.SIGTERM)
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=5)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(Path("/proc", str(p)).exists() for p in family):
        time.sleep(0.05)
    _signal([p for p in family if Path("/proc", str(p)).exists()], signal.SIGKILL)


def _log_tail(log: Path, lines: int = 30) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no sshd log)"


def _session_wrapper(folder: Path, env: dict[str, str]) -> Path:
    """The ForceCommand script: exports env (whatever the login shell did), then runs what the client asked for."""
    exports = "".join(f"export {name}={shlex.quote(value)}\n" for name, value in env.items())
    script = folder / "session_env.sh"
    script.write_text(
        "#!/bin/sh\n"
        "# ForceCommand of the test sshd: the login shell may have changed these; set them again.\n"
        f"{exports}"
        'case "${SSH_ORIGINAL_COMMAND-}" in\n'
        f'  sftp|internal-sftp|*/sftp-server) exec {shlex.quote(str(SFTP_SERVER))} ;;\n'
        '  "") exec /bin/sh ;;\n'
        '  *) exec /bin/sh -c "$SSH_ORIGINAL_COMMAND" ;;\n'
        "esac\n")
    script.chmod(0o755)
    return script


def _write_sshd_config(folder: Path, port: int, host_key: Path, authorized_keys: Path,
                       env: dict[str, str]) -> Path:
    for name in env:
        if not name.isidentifier():
            raise ValueError(f"not an environment variable name: {name!r}")
    lines = [
        "ListenAddress 127.0.0.1",
        f"Port {port}",
        f"HostKey {_quote(host_key)}",
        f"AuthorizedKeysFile {_quote(authorized_keys)}",
        "PubkeyAuthentication yes",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "PermitRootLogin prohibit-password",
        "StrictModes no",
        "UsePAM no",
        f"PidFile {_quote(folder / 'sshd.pid')}",
        "PrintMotd no",
        "PrintLastLog no",
        "X11Forwarding no",
        "PermitUserRC no",
        "MaxStartups 100",
        "MaxSessions 100",
        "Subsystem sftp internal-sftp",
        # One SetEnv line: sshd uses the first SetEnv directive only.
        "SetEnv " + " ".join(_quote(f"{name}={value}") for name, value in {"SHLVL": "1", **env}.items()),
        f"ForceCommand {_quote(_session_wrapper(folder, env))}",
    ]
    config = folder / "sshd_config"
    config.write_text("\n".join(lines) + "\n")
    return config


@contextlib.contextmanager
def start_sshd(folder: Path, *, env: dict[str, str] | None = None) -> Iterator[SshServer]:
    """Run a real sshd on 127.0.0.1 (a free port) with its keys and configs in folder; yields the SshServer once
    `ssh -F server.config` logs in as root; stops sshd and every session it started on exit.

    env: variables every session sees (SetEnv, and exported again by the session wrapper: see the module's
    docstring), e.g. {"PATH": "/some/bin"} for a device without python3, {"EDGEFOLD_EMULATED": "1"}."""
    reason = skip_reason()
    if reason is not None:
        raise RuntimeError(f"cannot start sshd: {reason}")
    folder = Path(folder).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    host_key, client_key = folder / "host_ed25519", folder / "client_ed25519"
    host_public_key = keygen(host_key, "edgefold-test-sshd-host")
    client_public_key = keygen(client_key, "edgefold-test-client")
    authorized_keys = folder / "authorized_keys"
    authorized_keys.write_text(client_public_key + "\n")
    known_hosts = folder / "known_hosts"
    known_hosts.write_text(f"{HOST_KEY_ALIAS} {host_public_key}\n")
    PRIVSEP_DIR.mkdir(mode=0o755, exist_ok=True)
    log = folder / "sshd.log"

    proc = None
    for _attempt in range(3):  # another process may take the free port before sshd binds it
        server = SshServer(port=_free_port(), folder=folder, host_public_key=host_public_key,
                           client_key=client_key, config=folder / "ssh_config", known_hosts=known_hosts)
        server.write_config(server.config)
        sshd_config = _write_sshd_config(folder, server.port, host_key, authorized_keys, dict(env or {}))
        check = subprocess.run([str(SSHD), "-t", "-f", str(sshd_config)], check=False, capture_output=True, text=True,
                               timeout=30)
        if check.returncode != 0:
            raise RuntimeError(f"sshd rejects its config {sshd_config}:\n{check.stderr}")
        with open(log, "ab") as out:
            proc = subprocess.Popen([str(SSHD), "-D", "-e", "-f", str(sshd_config)], stdin=subprocess.DEVNULL,
                                    stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            why = _wait_ready(proc, server)
        except BaseException:
            _stop(proc)
            raise
        if why is None:
            break
        _stop(proc)
        if "Address already in use" not in _log_tail(log):
            raise RuntimeError(f"sshd on port {server.port} not usable within {START_TIMEOUT_S:.0f} s ({why}); "
                               f"its log ({log}):\n{_log_tail(log)}")
    else:
        raise RuntimeError(f"sshd found no free port; its log ({log}):\n{_log_tail(log)}")
    try:
        yield server
    finally:
        _stop(proc)


def _wait_ready(proc: subprocess.Popen, server: SshServer) -> str | None:
    """None once the port accepts connections and `ssh ... true` works, else why not (sshd exited, time ran out)."""
    deadline = time.monotonic() + START_TIMEOUT_S
    why = "the port never accepted a connection"
    while time.monotonic() < deadline and proc.poll() is None:
        if _port_open(server.port):
            try:
                done = subprocess.run(server.ssh_command("true"), check=False, stdin=subprocess.DEVNULL,
                                      capture_output=True, timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                return "`ssh ... true` did not finish in time"
            if done.returncode == 0:
                return None
            why = f"`ssh ... true` exited {done.returncode}: {done.stderr.decode(errors='replace').strip()}"
        time.sleep(0.1)
    return f"sshd exited with {proc.returncode}" if proc.poll() is not None else f"timed out; {why}"


@contextlib.contextmanager
def relay(target_port: int, cut_after: int | None = None) -> Iterator[int]:
    """A TCP relay from a free port on 127.0.0.1 to 127.0.0.1:target_port; yields its port. With cut_after, it
    forwards at most cut_after bytes client->server on each connection, and closes that connection when more
    come (a link dropped mid-transfer). Stops, closing every connection, on exit."""
    stop = threading.Event()
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    listener.settimeout(0.1)
    live: set[socket.socket] = set()
    lock = threading.Lock()
    threads: list[threading.Thread] = []

    def cut(*socks: socket.socket) -> None:
        for s in socks:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def pump(src: socket.socket, dst: socket.socket, limit: int | None) -> None:
        sent = 0
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    with contextlib.suppress(OSError):
                        dst.shutdown(socket.SHUT_WR)
                    return
                if limit is not None and sent + len(data) > limit:
                    dst.sendall(data[: limit - sent])
                    cut(src, dst)
                    return
                dst.sendall(data)
                sent += len(data)
        except OSError:
            cut(src, dst)

    def serve(client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(("127.0.0.1", target_port), timeout=5)
        except OSError:
            client.close()
            return
        upstream.settimeout(None)
        client.settimeout(None)
        with lock:
            live.update((client, upstream))
        if stop.is_set():
            cut(client, upstream)
        ways = [threading.Thread(target=pump, args=(client, upstream, cut_after), daemon=True),
                threading.Thread(target=pump, args=(upstream, client, None), daemon=True)]
        for way in ways:
            way.start()
        for way in ways:
            way.join()
        with lock:
            live.difference_update((client, upstream))
        client.close()
        upstream.close()

    def accept() -> None:
        while not stop.is_set():
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            worker = threading.Thread(target=serve, args=(client,), daemon=True)
            with lock:
                threads.append(worker)
            worker.start()

    acceptor = threading.Thread(target=accept, daemon=True)
    acceptor.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        acceptor.join(timeout=5)
        listener.close()
        with lock:
            cut(*live)
            workers = list(threads)
        for worker in workers:
            worker.join(timeout=5)
