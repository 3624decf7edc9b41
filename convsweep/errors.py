"""The one family of errors meant for users.

Each is caught once, at the CLI, and printed as a single line that says what is wrong and
how to fix it. Any other exception is a bug and keeps its traceback. It sits at the root of
the namespace, so every layer (`search`, `lightning_modules`, `dashboards`) can raise it
without importing another layer.
"""

from __future__ import annotations


class ConvsweepError(Exception):
    """A problem with the user's input or environment, reported as one actionable line."""


class DatasetError(ConvsweepError):
    """A dataset is missing, unreadable, or misconfigured."""
