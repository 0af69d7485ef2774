"""The runtime is what a device installs: it must import and run its CLI without torch or transformers."""

import subprocess
import sys

HEAVY = ("torch", "transformers", "optimum", "edgefold.exporter")


def _python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def test_runtime_and_cli_import_nothing_heavy():
    result = _python(
        "import sys\n"
        "import edgefold.runtime, edgefold.runtime.cli, edgefold.runtime.session, edgefold.runtime.metrics\n"
        "from edgefold.runtime.texts import shipped_texts\n"
        "assert len(shipped_texts()) >= 50\n"
        f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_export_without_the_exporter_says_which_install_adds_it():
    # torch made unimportable, as on a board with only the runtime installed
    result = _python(
        "import sys; sys.modules['torch'] = None\n"
        "from edgefold.runtime.cli import main\n"
        "sys.exit(main(['export', 'some/model', 'out']))\n"
    )
    assert result.returncode == 2
    assert 'pip install "edgefold[export]"' in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
