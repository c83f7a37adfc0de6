"""The one error a study raises for its user: the CLI prints it and the Studies page shows it,
so its message must read as plain advice, never as a traceback."""

from __future__ import annotations


class StudyError(RuntimeError):
    """A study cannot start or continue; the message says why in plain words."""
