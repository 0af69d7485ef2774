"""The runtime is what a device installs: it must import and run its CLI without torch or transformers."""

import ast
import subprocess
import sys
from pathlib import Path

import edgefold.runtime

HEAVY = ("torch", "transformers", "optimum", "edgefold.exporter")


def _python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def _imported_modules(path: Path) -> set[str]:
    """Every module a file imports, at any depth (a lazy import inside a function included), made absolute."""
    package = "edgefold." + ".".join(path.relative_to(RUNTIME.parent).with_suffix("").parts[:-1])
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level else ""
            names.add(".".join(part for part in (base, node.module) if part))
    return names


RUNTIME = Path(edgefold.runtime.__file__).parent


def test_no_runtime_file_imports_the_exporter_even_lazily():
    offenders = {str(path.relative_to(RUNTIME)): sorted(m for m in _imported_modules(path)
                                                          if m.split(".")[0] in HEAVY or m.startswith(HEAVY))
                 for path in RUNTIME.rglob("*.py")}
    assert len(offenders) > 15  # the walk found the runtime's files
    assert {path: found for path, found in offenders.items() if found} == {}


def test_runtime_and_cli_import_nothing_heavy():
    result = _python(
        "import sys\n"
        "import edgefold.runtime, edgefold.cli, edgefold.runtime.session, edgefold.runtime.metrics\n"
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
        "from edgefold.cli import main\n"
        "sys.exit(main(['export', 'some/model', 'out']))\n"
    )
    assert result.returncode == 2
    assert 'pip install "edgefold[export]"' in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
