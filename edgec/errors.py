"""One exception type for mistakes a user can fix.

Anything raised as :class:`EdgecError` is shown by the CLI as a single line (message plus the fix) with exit code 2
and no traceback; every other exception is a bug in edgec and keeps its traceback.
"""

from __future__ import annotations


class EdgecError(Exception):
    """A problem with the user's input, environment or request, with a hint on how to fix it."""

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message
