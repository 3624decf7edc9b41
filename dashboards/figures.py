"""Plumbing every dashboard view shares: PNG files at a fixed DPI, skip notes, upload to MLflow.

A view that cannot be drawn (too few trials, nothing misclassified) or that breaks becomes a
note in `notes.txt` next to the pictures, so a missing plot never costs the sweep or the others.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import matplotlib

matplotlib.use("Agg")  # workers and CI have no display: every plot is a file, never a window

from matplotlib import pyplot as plt  # noqa: E402  (after the backend is chosen)
from matplotlib.figure import Figure  # noqa: E402

DPI = 100  # PNG pixels per figure inch: a (10, 6) inch figure is a 1000 x 600 PNG

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PlotOutcome:
    """One view: the files it was drawn into, or why it was skipped."""

    name: str
    paths: tuple[Path, ...] = ()
    skipped: str | None = None


class ViewSkipped(Exception):
    """The input cannot make this view (not a bug); the message is the note a user reads."""


def save_png(fig: Figure, path: Path) -> Path:
    """Write `fig` as a PNG of exactly its size x DPI pixels (no tight bbox), then free it."""
    try:
        fig.savefig(path, dpi=DPI)
    finally:
        plt.close(fig)
    return path


def draw_view(name: str, draw: Callable[[], Iterable[Path]]) -> PlotOutcome:
    """Run one view's drawing; a skip or a failure becomes the outcome's note instead of an exception."""
    try:
        return PlotOutcome(name, tuple(draw()))
    except ViewSkipped as skip:
        return PlotOutcome(name, skipped=str(skip))
    except Exception as exc:  # one broken view must not cost the other views or the caller's run
        logger.warning("dashboard view %r failed; skipping it", name, exc_info=True)
        return PlotOutcome(name, skipped=f"failed: {type(exc).__name__}: {exc}")


def fresh_dir(path: Path) -> Path:
    """An empty `path`, so a folder uploaded whole carries no file from an earlier call."""
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def log_views(client: Any, run_id: str, outcomes: Sequence[PlotOutcome], out_dir: Path, artifact_dir: str) -> list[str]:
    """Write `notes.txt` (skipped views and why) into `out_dir`, upload the folder, return the artifact paths."""
    notes = [f"{o.name}: {o.skipped}" for o in outcomes if o.skipped] or ["every view was drawn"]
    (out_dir / "notes.txt").write_text("\n".join(notes) + "\n")
    client.log_artifacts(run_id, str(out_dir), artifact_path=artifact_dir)
    return sorted(f"{artifact_dir}/{p.relative_to(out_dir).as_posix()}" for p in out_dir.rglob("*") if p.is_file())
