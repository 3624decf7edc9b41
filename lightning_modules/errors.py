"""The one family of errors meant for users.

Each is caught once, at the CLI, and printed as a single line that says what is wrong and
how to fix it. Any other exception is a bug and keeps its traceback. It lives in the lowest
layer (`lightning_modules`) because `search` and `dashboards` import from here, never back.
"""

from __future__ import annotations


class ConvsweepError(Exception):
    """A problem with the user's input or environment, reported as one actionable line."""


class DatasetError(ConvsweepError):
    """A dataset is missing, unreadable, or misconfigured."""
