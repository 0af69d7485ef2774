"""The one error type a user sees: a single line that names the problem."""

import re

#: Control characters (C0, DEL, C1): a file name may carry them, and a newline would split the line.
CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")


class EdgefoldError(Exception):
    """Bad input or a failed check. The CLI prints it as one line and exits non-zero."""


class GateFailure(EdgefoldError):
    """The input was fine, the model is not: an accuracy gate failed (exit 1, as ``validate``'s FAIL)."""


def one_line(text: str) -> str:
    """``text`` with every control character written as its escape, so it prints as one line."""
    return CONTROL.sub(lambda match: repr(match[0])[1:-1], text)
