"""Fixtures that compose the real conf/ and shrink it to a few seconds per trial."""

from __future__ import annotations

from pathlib import Path

import pytest

from convsweep.search.compose import compose_config


def tiny_overrides(run_dir: Path, study: str = "tiny", *extra: str) -> list[str]:
    """The shipped config on `digits`, with 2 epochs and at most 2 small blocks."""
    return ["dataset=digits", f"search.study_name={study}", "search.n_trials=3", "trainer.max_epochs=2",
            "search_space.depth.high=2", "search_space.widths.filters.choices=[4,8]",
            "search_space.optim.batch_size.choices=[128]", f"tracking.run_dir={run_dir}", *extra]


@pytest.fixture
def tiny_cfg(tmp_path: Path):
    """Compose a tiny config; extra overrides go last."""
    def make(*extra: str, study: str = "tiny"):
        return compose_config(tiny_overrides(tmp_path / "runs", study, *extra))
    return make
