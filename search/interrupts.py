"""Ctrl-C and SIGTERM as one KeyboardInterrupt, never in the middle of a write to MLflow.

Cluster schedulers stop a job with SIGTERM; a sweep treats it as Ctrl-C, so its trials and runs
end `interrupted` instead of staying RUNNING. An interrupt that lands inside a write would tear
it: a SQLite transaction left open keeps the store locked for every other process, and the
clean-up writes then fail with "database is locked". So writes run under `deferred()`, and an
interrupt that arrives meanwhile is raised when the write is done.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Any, Iterator

_depth = 0  # nesting of `deferred()` blocks in the main thread, where Python raises signal handlers' exceptions
_pending = False  # an interrupt arrived inside one


def ignore_signals() -> None:
    """Ignore Ctrl-C and SIGTERM (until `interrupt_on_signals` restores the handlers it found)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def _interrupt(signum: int, frame: Any) -> None:
    global _pending
    ignore_signals()  # one interrupt: the clean-up (ending the trial, its run, the workers) is not cut short
    if _depth:
        _pending = True
        return
    raise KeyboardInterrupt


@contextlib.contextmanager
def interrupt_on_signals() -> Iterator[None]:
    """Within the block, SIGTERM raises KeyboardInterrupt as Ctrl-C (SIGINT) does; the first one only."""
    global _pending
    _pending = False
    previous = {s: signal.signal(s, _interrupt) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """A write that an interrupt must not tear: one arriving inside is raised when the block ends."""
    global _depth, _pending
    if threading.current_thread() is not threading.main_thread():
        yield  # other threads never get a signal's KeyboardInterrupt
        return
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1
        if not _depth and _pending:
            _pending = False
            raise KeyboardInterrupt
