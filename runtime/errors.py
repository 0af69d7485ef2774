"""The one error type a user sees: a single line that names the problem."""


class EdgefoldError(Exception):
    """Bad input or a failed check. The CLI prints it as one line and exits non-zero."""
