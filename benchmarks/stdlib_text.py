"""A second domain of English text for benchmarks: docstrings of the Python standard library.

What the text is: the docstrings of public functions, classes and methods of about fifty well-known modules of
the standard library of the running Python interpreter (``json``, ``pathlib``, ``argparse``, ``logging``,
``email.*``, ``asyncio.*``, ``unittest.*``, ...), read with :func:`inspect.getdoc`. Each item pairs a docstring's
summary (its first sentence: the ``query``) with the paragraphs that follow it (the ``positive``, one line,
at most about 60 words), and ``text`` is the two together (at most 80 words). Lines of code are left out:
doctest examples (``>>>``), signature lines, reST directives and literal blocks.

Licence: the docstrings are part of CPython's source code and are distributed under the Python Software
Foundation License (PSF-2.0), like the rest of the standard library; see https://docs.python.org/3/license.html.
They were written by CPython's developers, not by edgefold, and they ship with every Python installation, so
the text is available offline on any machine without downloading anything.

Why: the calibration text (``runtime/data/calibration.txt``) is general written English made for edgefold;
this is another domain, technical API documentation ("Return the canonical string representation of the
object..."), human-written by other people. Benchmarks measure on it to see whether a compression fitted or
selected on the calibration text still holds on text it has never seen the like of.

The committed file ``benchmarks/results/stdlib_docstrings.jsonl`` was produced by Python 3.11.7 (CPython).
Docstrings change between Python versions, so another interpreter writes a somewhat different file; on the
same version the output is identical every run (modules and names are sorted, nothing is random).

Use it for retrieval (for each summary, find the right body among all bodies)::

    python benchmarks/stdlib_text.py     # writes results/stdlib_docstrings.jsonl, prints what it used
    edgefold validate DIR --reference REF --data benchmarks/results/stdlib_docstrings.jsonl \\
        --text-column text --query-column query --positive-column positive
"""

from __future__ import annotations

import importlib
import inspect
import json
import platform
import re
import sys
import warnings
from pathlib import Path

# Well-known, mostly pure-Python modules (a few wrap C accelerators that keep their docstrings). A module that
# fails to import on some build (no sqlite3, say) is skipped.
MODULES = sorted([
    "argparse", "asyncio.base_events", "asyncio.events", "asyncio.locks", "asyncio.queues", "asyncio.streams",
    "asyncio.tasks", "base64", "bisect", "calendar", "cmd", "collections", "configparser", "contextlib", "copy",
    "csv", "dataclasses", "datetime", "decimal", "difflib", "email.headerregistry", "email.message", "email.parser",
    "email.utils", "enum", "fnmatch", "fractions", "ftplib", "functools", "gettext", "glob", "gzip", "heapq",
    "html.parser", "http.client", "http.cookiejar", "http.server", "imaplib", "inspect", "ipaddress", "json",
    "logging", "logging.handlers", "mailbox", "mimetypes", "numbers", "optparse", "os.path", "pathlib", "pickle",
    "pprint", "queue", "random", "re", "sched", "selectors", "shlex", "shutil", "smtplib", "socketserver",
    "statistics", "string", "subprocess", "tarfile", "tempfile", "textwrap", "threading", "timeit", "traceback",
    "typing", "unittest.case", "unittest.mock", "urllib.parse", "urllib.request", "uuid", "warnings",
    "xml.dom.minidom", "xml.etree.ElementTree", "zipfile",
])

SUMMARY_WORDS = (4, 30)  # a query keeps 4 to 30 words
BODY_MIN_WORDS = 8
BODY_MAX_WORDS = 60
TEXT_MAX_WORDS = 80  # summary + body
RESULT = Path(__file__).resolve().parent / "results" / "stdlib_docstrings.jsonl"
MAX_BYTES = 1_000_000

_SIGNATURE = re.compile(r"^[\w.\[\]]+\s*\(.*\)\s*(->.*)?$"  # name(args) -> result
                        r"|^\S+\s*->\s*\S"
                        r"|^[\w\s,.()\[\]]+\s=\s\S.*\)$")  # (typ, [data]) = <instance>.fetch(...)
_DIRECTIVE = re.compile(r"^\.\.\s")
_RULE = re.compile(r"^[-=~^*+#`'\". ]{3,}$")  # heading underlines, table borders
_ROLE = re.compile(r":[\w:.-]+:`~?!?([^`<]*?)(?:\s*<[^>]*>)?`")  # :func:`name`, :class:`~a.B`, :ref:`t <x>`
_LITERAL = re.compile(r"``([^`]+)``")
_FIELD = re.compile(r"^:(?:param|parameter|arg|argument|key|keyword|type|raises?|except|exception)\s+"
                    r"(?:[\w.]+\s+)?([\w.*]+)\s*:")
_RETURNS = re.compile(r"^:(?:returns?|rtype|return type)\s*:")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z(\"'`*])")
_ABBREVIATION = re.compile(r"(?:\b(?:e\.g|i\.e|etc|vs|cf|Mr|Dr|No)|\b[A-Z]|\.\.)\.$")
_WORD = re.compile(r"^[(\"'\[]*[A-Za-z][A-Za-z'-]*[)\"'\]]*[.,;:!?]*[)\"'\]]*$")


def docstring_items(limit: int | None = None) -> list[dict]:
    """Items from the stdlib's docstrings, in a fixed order: modules sorted, then names sorted within each.

    ``limit`` keeps that many items spread evenly over the whole list (every k-th), so that a smaller set still
    draws on every module rather than on the first few in alphabetical order.
    """
    items, seen_summaries, seen_bodies = [], set(), set()
    for module_name, source, doc in _docstrings():
        item = _item(doc, source)
        if item is None:
            continue
        summary_key, body_key = item["query"].lower(), item["positive"].lower()
        if summary_key in seen_summaries or body_key in seen_bodies:  # inherited or copied docstrings repeat
            continue
        seen_summaries.add(summary_key)
        seen_bodies.add(body_key)
        items.append(item)
    if limit is not None and limit < len(items):
        items = [items[i * len(items) // limit] for i in range(max(limit, 0))]
    return items


def write_jsonl(path: str | Path, items: list[dict]) -> None:
    """One JSON object a line, UTF-8, keys in a fixed order."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps({key: item[key] for key in ("query", "positive", "text", "source")}, ensure_ascii=False)
             for item in items]
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    tmp.replace(path)


def used_modules() -> list[str]:
    """The modules of :data:`MODULES` that import on this interpreter."""
    return [name for name, _ in _modules()]


def _module_of(source: str) -> str:
    """The module in :data:`MODULES` an item's ``source`` comes from (the longest that prefixes it)."""
    return max((m for m in MODULES if source.startswith(m + ".")), key=len)


def _modules():
    for name in MODULES:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                module = importlib.import_module(name)
        except Exception:  # noqa: BLE001, S112  a build without the module (or its C part): skip it
            continue
        yield name, module


def _docstrings():
    """(module, "module.qualname", docstring) for public functions, classes and their own methods."""
    for module_name, module in _modules():
        homes = {module.__name__, "_" + module.__name__.rsplit(".", 1)[-1]}  # heapq's functions live in _heapq
        for name in sorted(vars(module)):
            if name.startswith("_"):
                continue
            obj = vars(module)[name]
            if not (inspect.isclass(obj) or inspect.isfunction(obj) or inspect.isbuiltin(obj)):
                continue
            if getattr(obj, "__module__", None) not in homes:  # re-exported from elsewhere
                continue
            yield module_name, f"{module_name}.{name}", inspect.getdoc(obj)
            if inspect.isclass(obj):
                for member in sorted(vars(obj)):
                    if member.startswith("_"):
                        continue
                    raw = vars(obj)[member]
                    if isinstance(raw, (staticmethod, classmethod)):
                        raw = raw.__func__
                    if not (inspect.isfunction(raw) or inspect.ismethoddescriptor(raw) or isinstance(raw, property)
                            or inspect.isbuiltin(raw)):
                        continue
                    yield module_name, f"{module_name}.{name}.{member}", inspect.getdoc(raw)


def _item(doc: str | None, source: str) -> dict | None:
    paragraphs = _paragraphs(doc or "")
    if len(paragraphs) < 1:
        return None
    summary, rest = _first_sentence(paragraphs[0])
    body_parts = ([rest] if rest else []) + paragraphs[1:]
    n_summary = len(summary.split())
    if not SUMMARY_WORDS[0] <= n_summary <= SUMMARY_WORDS[1] or _wordiness(summary) < 0.7:
        return None
    body = _truncate(" ".join(body_parts), min(BODY_MAX_WORDS, TEXT_MAX_WORDS - n_summary))
    if len(body.split()) < BODY_MIN_WORDS or _wordiness(body) < 0.6:
        return None
    return {"query": summary, "positive": body, "text": f"{summary} {body}", "source": source}


def _paragraphs(doc: str) -> list[str]:
    """The docstring's prose paragraphs, each cleaned to one line; code, directives and signatures left out."""
    paragraphs, current = [], []
    dropped = 0  # lines of the current paragraph left out as code: what is left of it must read as prose
    skip_block = skip_indented = False  # a doctest block; a literal block (after '::') or a directive's body

    def close():
        nonlocal dropped
        if current:
            text = _clean(" ".join(current))
            if text and _wordiness(text) >= (0.8 if dropped else 0.5):
                paragraphs.append(text)
            current.clear()
        dropped = 0

    for line in doc.expandtabs().split("\n"):
        stripped = line.strip()
        indented = line[:1] == " "
        if not stripped:
            close()
            skip_block = False
            continue
        if skip_indented:
            if indented:
                continue
            skip_indented = False
        if skip_block:
            continue
        if stripped.startswith("# "):  # a comment in a code example
            dropped += 1
            continue
        if stripped.startswith(">>>"):
            close()
            skip_block = True
            continue
        if _DIRECTIVE.match(stripped):
            close()
            skip_indented = True
            continue
        if _RULE.match(stripped) or _SIGNATURE.match(stripped):
            if current and _RULE.match(stripped):  # a heading's underline: the heading goes too
                current.pop()
            else:
                dropped += 1
            continue
        if stripped.endswith("::"):
            stripped = stripped[:-2].rstrip() + (":" if stripped[:-2].strip() else "")
            current.append(stripped) if stripped else None
            close()
            skip_indented = True
            continue
        current.append(stripped)
    close()
    return paragraphs


def _clean(text: str) -> str:
    text = _FIELD.sub(r"\1:", text)
    text = _RETURNS.sub("Returns:", text)
    text = _ROLE.sub(r"\1", text)
    text = _LITERAL.sub(r"\1", text)
    text = re.sub(r"(?<![\w`])`([^`]+)`(?!\w)", r"\1", text)
    text = re.sub(r"\s+", " ", text).strip()
    return text


def _first_sentence(paragraph: str) -> tuple[str, str]:
    position = 0
    for match in _SENTENCE_END.finditer(paragraph):
        if not _ABBREVIATION.search(paragraph[:match.start()]):
            position = match.start()
            break
    if not position:
        return paragraph, ""
    return paragraph[:position].strip(), paragraph[position:].strip()


def _truncate(text: str, max_words: int) -> str:
    """At most ``max_words`` words; at a sentence end where one falls in the second half, else at a word."""
    words = text.split()
    if len(words) <= max_words:
        return " ".join(words)
    kept = words[:max_words]
    for end in range(len(kept), max_words // 2, -1):
        if kept[end - 1].endswith((".", "!", "?")) and not _ABBREVIATION.search(kept[end - 1]):
            return " ".join(kept[:end])
    return " ".join(kept)


def _wordiness(text: str) -> float:
    """The share of whitespace-separated tokens that are plain words: prose near 1, code near 0."""
    tokens = text.split()
    return sum(bool(_WORD.match(token)) for token in tokens) / len(tokens) if tokens else 0.0


def main() -> None:
    items = docstring_items()
    found = len(items)
    size = sum(len(json.dumps(item, ensure_ascii=False).encode()) + 1 for item in items)
    if size > MAX_BYTES:  # keep the committed file small: an even spread over all modules
        items = docstring_items(limit=int(found * MAX_BYTES / size))
    write_jsonl(RESULT, items)
    contributing = sorted({_module_of(item["source"]) for item in items})
    print(f"{len(items)} items (of {found} found) -> {RESULT} ({RESULT.stat().st_size:,} bytes)")
    print(f"Python {platform.python_version()} ({platform.python_implementation()}, {sys.version.split()[0]})")
    print(f"{len(contributing)} of {len(MODULES)} modules contributed: {', '.join(contributing)}")


if __name__ == "__main__":
    main()
