"""The test sshd (tests/sshd.py) against the real OpenSSH client: what the SSH device tests rely on."""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

import pytest
from sshd import HOST_KEY_ALIAS, SshServer, keygen, relay, skip_reason, start_sshd

pytestmark = pytest.mark.skipif(skip_reason() is not None, reason=skip_reason() or "")

TIMEOUT_S = 30


@pytest.fixture(scope="module")
def ssh_server(tmp_path_factory):
    with start_sshd(tmp_path_factory.mktemp("sshd")) as server:
        yield server


@pytest.fixture(scope="module")
def bare_server(tmp_path_factory):
    """A device whose sessions have a PATH without python3."""
    folder = tmp_path_factory.mktemp("sshd-bare")
    bin_dir = folder / "bin"
    bin_dir.mkdir()
    for tool in ("sh", "cat", "echo", "true"):
        (bin_dir / tool).symlink_to(f"/bin/{tool}")
    with start_sshd(folder / "server", env={"PATH": str(bin_dir), "EDGEFOLD_EMULATED": "1"}) as server:
        yield server


def ssh(server: SshServer, command: str, *, config: Path | None = None, port: int | None = None,
        stdin: bytes = b"") -> subprocess.CompletedProcess:
    return subprocess.run(server.ssh_command(command, config=config, port=port), check=False, input=stdin,
                          capture_output=True, timeout=TIMEOUT_S)


def test_runs_a_command_with_the_client_key(ssh_server):
    done = ssh(ssh_server, "echo hello from sshd; echo to stderr >&2; exit 7")
    assert done.returncode == 7, done.stderr
    assert done.stdout == b"hello from sshd\n"
    assert done.stderr == b"to stderr\n"
    assert ssh_server.url() == f"ssh://root@127.0.0.1:{ssh_server.port}"
    assert ssh_server.url("pi") == f"ssh://pi@127.0.0.1:{ssh_server.port}"
    assert ssh_server.known_hosts.read_text() == f"{HOST_KEY_ALIAS} {ssh_server.host_public_key}\n"
    assert ssh_server.host_public_key.startswith("ssh-ed25519 AAAA")


def test_stdin_reaches_the_command(ssh_server):
    data = bytes(range(256)) * 4096  # 1 MiB, every byte value
    done = ssh(ssh_server, "cat", stdin=data)
    assert done.returncode == 0, done.stderr
    assert done.stdout == data


def test_unknown_host_key_is_refused(ssh_server, tmp_path):
    config = ssh_server.write_config(tmp_path / "config", known_hosts_text="")
    done = ssh(ssh_server, "echo should not run", config=config)
    assert done.returncode == 255
    assert b"Host key verification failed" in done.stderr
    assert done.stdout == b""
    assert (tmp_path / "config.known_hosts").read_text() == ""  # StrictHostKeyChecking=yes adds nothing


def test_changed_host_key_is_refused(ssh_server, tmp_path):
    other = keygen(tmp_path / "other_host", "another host")
    config = ssh_server.write_config(tmp_path / "config", known_hosts_text=f"{HOST_KEY_ALIAS} {other}\n")
    done = ssh(ssh_server, "echo should not run", config=config)
    assert done.returncode == 255
    assert b"REMOTE HOST IDENTIFICATION HAS CHANGED" in done.stderr
    assert done.stdout == b""


def test_key_not_in_authorized_keys_is_refused(ssh_server, tmp_path):
    stranger = tmp_path / "stranger"
    keygen(stranger, "not authorized")
    config = ssh_server.write_config(tmp_path / "config", identity=stranger)
    done = ssh(ssh_server, "echo should not run", config=config)
    assert done.returncode == 255
    assert b"Permission denied" in done.stderr
    assert done.stdout == b""


def test_session_path_without_python3(bare_server, ssh_server):
    bin_dir = bare_server.folder.parent / "bin"
    done = ssh(bare_server, 'echo "$PATH|$EDGEFOLD_EMULATED"; command -v python3')
    assert done.returncode != 0  # `command -v` fails: no python3 on the session's PATH
    assert done.stdout == f"{bin_dir}|1\n".encode()
    assert done.stderr == b""  # no login-shell startup file ran with that PATH
    # the default server's sessions do have python3 (this machine's own PATH)
    done = ssh(ssh_server, "command -v python3")
    assert done.returncode == 0, done.stderr


def test_scp_and_sftp_copy_files(ssh_server, tmp_path):
    source = tmp_path / "bundle.bin"
    source.write_bytes(bytes(range(256)) * 1000)
    target = tmp_path / "remote"
    target.mkdir()
    base = ["-F", str(ssh_server.config), "-P", str(ssh_server.port), "-o", "BatchMode=yes"]
    for name, extra in (("sftp-mode", []), ("scp-mode", ["-O"])):
        done = subprocess.run(["scp", *extra, *base, str(source), f"root@127.0.0.1:{target / name}"],
                              check=False, capture_output=True, timeout=TIMEOUT_S)
        assert done.returncode == 0, done.stderr
        assert (target / name).read_bytes() == source.read_bytes()


def test_relay_passes_a_session_through(ssh_server):
    with relay(ssh_server.port) as port:
        assert port != ssh_server.port
        for _ in range(2):  # one connection after another; the same known_hosts entry (HostKeyAlias) matches
            done = ssh(ssh_server, "echo through the relay", port=port)
            assert done.returncode == 0, done.stderr
            assert done.stdout == b"through the relay\n"
        data = b"x" * (2 << 20)
        done = ssh(ssh_server, "wc -c", port=port, stdin=data)
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == str(len(data)).encode()


def test_relay_cut_drops_a_large_upload(ssh_server):
    with relay(ssh_server.port, cut_after=256 << 10) as port:
        done = ssh(ssh_server, "echo small", port=port)  # a session well under the limit goes through
        assert done.returncode == 0, done.stderr
        assert done.stdout == b"small\n"
        started = time.monotonic()
        done = ssh(ssh_server, "cat > /dev/null; echo finished", port=port, stdin=b"x" * (4 << 20))
        assert done.returncode == 255, done.stderr
        assert b"finished" not in done.stdout
        assert time.monotonic() - started < TIMEOUT_S / 2


def test_relay_stops_on_exit(ssh_server):
    with relay(ssh_server.port) as port:
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()


def test_exit_stops_sshd_and_its_sessions(tmp_path):
    with start_sshd(tmp_path / "server") as server:
        session = subprocess.Popen(server.ssh_command("echo started; sleep 60"), stdin=subprocess.DEVNULL,
                                   stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        try:
            assert session.stdout.readline() == b"started\n"  # ssh's ConnectTimeout bounds this
            port = server.port
        except BaseException:
            session.kill()
            raise
    try:
        assert session.wait(timeout=10) == 255  # its sshd child went with the server
    finally:
        session.kill()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
