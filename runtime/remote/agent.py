"""What edgefold runs on a device over SSH: standard library only, one request in, one JSON line out.

The host sends this file's source and a request, both base64 (so the command line the device's shell parses holds
nothing a user typed), and reads one JSON object from the last line of stdout. Progress goes to stderr. Everything
it writes lies under the remote folder (default ``~/.edgefold``): ``venvs/`` keeps one runtime per edgefold wheel
and Python, reused by later runs; ``runs/ID/`` holds one run and is removed afterwards unless the user keeps it.

The syntax stays that of Python 3.6 so that ``probe`` can tell an old device its version instead of failing to
parse; every other operation runs only on 3.10+, which the host checks first.
"""

import base64
import hashlib
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import threading

_RUN_ID = re.compile(r"^[0-9]{8}-[0-9]{6}-[0-9a-f]{8}$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,199}(/[A-Za-z0-9][A-Za-z0-9._+-]{0,199})?$")
_INSTALLER = re.compile(r"^(requirements\.txt|wheels/[A-Za-z0-9][A-Za-z0-9._+-]*\.whl)$")
_CLI = ("-m", "edgefold.cli")
_CHUNK = 1 << 20
#: Marks the agent's progress lines on stderr, apart from what ssh and the shell print there.
PROGRESS = "edgefold-agent: "
#: How many runtime venvs (edgefold versions) a device keeps for one Python and machine.
KEEP_RUNTIMES = 2


class Refused(Exception):
    """A reason the operation cannot go on, for the host to show as that device's one line."""


def main():
    request = json.loads(base64.b64decode(sys.argv[2]).decode("utf-8"))
    root = os.path.abspath(os.path.expanduser(request["root"]))
    try:
        reply = OPERATIONS[request["op"]](root, request)
        reply["ok"] = True
    except Refused as error:
        reply = {"ok": False, "error": str(error)}
    except OSError as error:
        reply = {"ok": False, "error": _os_error(error)}
    sys.stdout.write("\n" + json.dumps(reply) + "\n")
    sys.stdout.flush()


def _os_error(error):
    if error.errno == 28:  # ENOSPC
        return "out of disk on the device ({})".format(error.filename or "writing")
    return "{} ({})".format(error.strerror or error, error.filename or "")


def probe(root, request):
    """The Python, machine and free space that decide whether the device can run edgefold, and whether its
    runtime is installed already."""
    existing = root
    while not os.path.isdir(existing):
        existing = os.path.dirname(existing)
    return {"python": platform.python_version(), "machine": platform.machine(), "system": platform.system(),
            "root": root, "free_bytes": shutil.disk_usage(existing).free,
            "venv_ready": os.path.isfile(os.path.join(_venv(root, request["venv_key"]), ".edgefold-ready"))}


def receive(root, request):
    """Write the files announced in the request from stdin, in order, each checked against its size and SHA-256.
    A transfer cut short leaves no partial file behind."""
    run = _run_folder(root, request["run"], create=True)
    stream = sys.stdin.buffer
    for entry in request["files"]:
        name, size = _checked_name(entry["name"]), entry["size"]
        target = os.path.join(run, name)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        partial, digest, got = target + ".partial", hashlib.sha256(), 0
        try:
            with open(partial, "xb") as sink:
                while got < size:
                    chunk = stream.read(min(_CHUNK, size - got))
                    if not chunk:
                        raise Refused("transfer interrupted: {} of {} bytes of {} arrived".format(got, size, name))
                    sink.write(chunk)
                    digest.update(chunk)
                    got += len(chunk)
            if digest.hexdigest() != entry["sha256"]:
                raise Refused("{} arrived damaged (its SHA-256 differs from the host's)".format(name))
            os.rename(partial, target)
        finally:
            if os.path.exists(partial):
                os.unlink(partial)
    return {"run": run}


def run(root, request):
    """Install (or reuse) the runtime, unpack the bundles with edgefold's checked unpack, run one edgefold
    command, and return its JSON result."""
    folder = _run_folder(root, request["run"])
    _watch_host()
    python = _runtime(root, folder, request)
    for bundle, name in sorted(request["bundles"].items()):
        _edgefold(python, folder, ["unpack", _checked_name(bundle), _checked_name(name)], "unpack " + bundle)
    _progress("running edgefold " + request["command"][0])
    _edgefold(python, folder, request["command"], "edgefold " + request["command"][0],
              accept=request.get("accept", [0]))
    result = os.path.join(folder, _checked_name(request["result"]))
    if not os.path.isfile(result):
        raise Refused("edgefold {} wrote no result on the device".format(request["command"][0]))
    with open(result, encoding="utf-8") as handle:
        return {"result": json.load(handle)}


def remove(root, request):
    """Delete one run's folder (never anything else) and what a failed install of that run left."""
    folder = _run_folder(root, request["run"])
    shutil.rmtree(folder, ignore_errors=True)
    venvs = os.path.join(root, "venvs")
    if os.path.isdir(venvs):
        for name in os.listdir(venvs):
            if name.endswith(".partial-" + request["run"]):
                shutil.rmtree(os.path.join(venvs, name), ignore_errors=True)
    return {"removed": folder}


OPERATIONS = {"probe": probe, "receive": receive, "run": run, "remove": remove}


def _runtime(root, folder, request):
    """The venv's python for this wheel and Python: reused when a finished one is there, else built beside its
    final place and renamed into it (so a half-built venv is never taken for a ready one)."""
    venv = _venv(root, request["venv_key"])
    python = os.path.join(venv, "bin", "python")
    ready = os.path.join(venv, ".edgefold-ready")
    if os.path.isfile(ready):
        os.utime(ready)  # when it was last used: what _prune_runtimes keeps by
        _progress("runtime: reusing " + venv)
        return python
    _progress("runtime: installing into " + venv)
    _extract_installer(os.path.join(folder, _checked_name(request["installer"])), folder)
    staging = venv + ".partial-" + request["run"]
    shutil.rmtree(staging, ignore_errors=True)
    _call([sys.executable, "-m", "venv", staging], folder, "python3 -m venv (is the venv module installed? "
          "Debian and Ubuntu: apt install python3-venv)")
    pip = [os.path.join(staging, "bin", "python"), "-m", "pip", "install", "--disable-pip-version-check", "-q"]
    if request.get("wheelhouse"):
        pip += ["--no-index", "--find-links", os.path.join(folder, "wheelhouse")]
    _call(pip + ["-r", "requirements.txt"], folder, "pip could not install the runtime" + (
        "" if request.get("wheelhouse") else " (a device without a package index needs --wheelhouse DIR)"))
    open(os.path.join(staging, ".edgefold-ready"), "w").close()
    try:
        os.rename(staging, venv)
    except OSError:  # another run finished the same runtime first: use that one
        shutil.rmtree(staging, ignore_errors=True)
    _prune_runtimes(venv)
    return python


def _prune_runtimes(current, keep=KEEP_RUNTIMES):
    """Each edgefold version installs its own venv: keep the ``keep`` last used for this Python and machine
    (``current`` among them), so that upgrades do not fill a small board's disk."""
    folder, tag = os.path.dirname(current), os.path.basename(current).split("-", 1)[1]
    ready = []
    for name in os.listdir(folder):
        marker = os.path.join(folder, name, ".edgefold-ready")
        if name.endswith("-" + tag) and os.path.join(folder, name) != current and os.path.isfile(marker):
            ready.append((os.path.getmtime(marker), os.path.join(folder, name)))
    for _, old in sorted(ready, reverse=True)[keep - 1:]:
        shutil.rmtree(old, ignore_errors=True)


def _extract_installer(bundle, folder):
    """requirements.txt and wheels/*.whl out of an edgefold archive: only those names, only plain files."""
    with tarfile.open(bundle, "r:gz") as tar:
        for member in tar:
            if not _INSTALLER.match(member.name):
                continue
            if not member.isfile():
                raise Refused("{} in the bundle is not a plain file".format(member.name))
            target = os.path.join(folder, member.name)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with tar.extractfile(member) as source, open(target, "xb") as sink:
                shutil.copyfileobj(source, sink)


def _edgefold(python, folder, arguments, what, accept=(0,)):
    return _call([python, *_CLI, *arguments], folder, what, accept)


_children = []


def _watch_host():
    """The host holds our stdin open for as long as it waits: end of file means it is gone (Ctrl-C, a dropped
    link), and then nothing it started may go on running here. Children run in their own process group, so the
    bench's worker processes are stopped with them."""
    def watch():
        while os.read(0, 65536):  # the raw descriptor: a thread blocked in sys.stdin would abort Python's exit
            pass
        for child in list(_children):
            try:
                os.killpg(child.pid, signal.SIGTERM)
            except OSError:
                pass
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def _call(argv, folder, what, accept=(0,)):
    """Run argv (no shell) in the run folder, its output kept in a log there; a refusal quotes the last lines."""
    log = os.path.join(folder, "edgefold-device.log")
    with open(log, "ab") as sink:
        sink.write(("$ " + " ".join(argv) + "\n").encode())
        sink.flush()
        child = subprocess.Popen(argv, cwd=folder, stdout=sink, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                 start_new_session=True)
        _children.append(child)
        code = child.wait()
    if code in accept:
        return code
    with open(log, "rb") as handle:
        lines = [line for line in handle.read().decode("utf-8", "replace").splitlines() if line.strip()]
    tail = " | ".join(lines[-3:])[-600:]
    if "No space left on device" in tail:
        raise Refused("out of disk on the device during {}: {}".format(what, tail))
    raise Refused("{} failed on the device (exit {}): {}".format(what, _exit_text(code), tail))


def _exit_text(code):
    return "signal {}".format(-code) if code < 0 else str(code)


def _venv(root, key):
    if not re.match(r"^[0-9a-f]{16}$", key):
        raise Refused("bad runtime key")
    tag = "py{}-{}".format(".".join(platform.python_version_tuple()[:2]), platform.machine())
    return os.path.join(root, "venvs", key + "-" + re.sub(r"[^A-Za-z0-9._-]", "_", tag))


def _run_folder(root, run_id, create=False):
    if not _RUN_ID.match(run_id):
        raise Refused("bad run id")
    folder = os.path.join(root, "runs", run_id)
    if create:
        os.makedirs(os.path.dirname(folder), exist_ok=True)
        os.mkdir(folder)  # a run id is used once: an existing folder is someone else's
    elif not os.path.isdir(folder):
        raise Refused("the run folder {} is gone".format(folder))
    return folder


def _checked_name(name):
    if not _NAME.match(name) or ".." in name.split("/"):
        raise Refused("bad file name {!r}".format(name))
    return name


def _progress(text):
    sys.stderr.write(PROGRESS + text + "\n")
    sys.stderr.flush()


if __name__ == "__main__":
    main()
