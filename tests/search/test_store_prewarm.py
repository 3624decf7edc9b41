"""A new MLflow store is migrated beside the imports and lands in the run dir only after the checks pass."""

from __future__ import annotations

import pytest
from mlflow.tracking import MlflowClient

from convsweep.errors import ConvsweepError
from convsweep.search import store_prewarm
from convsweep.search.preflight import prepare_sweep
from convsweep.search.storage import resolve_locations


@pytest.mark.slow
def test_the_store_is_installed_after_the_checks(tiny_cfg) -> None:
    loc = resolve_locations(tiny_cfg().tracking)
    prewarm = store_prewarm.start(loc.mlflow_uri)
    assert prewarm is not None and not loc.run_dir.exists()
    assert prewarm.install()
    assert [e.name for e in MlflowClient(loc.mlflow_uri).search_experiments()] == ["Default"]
    assert store_prewarm.start(loc.mlflow_uri) is None  # an existing store is opened as it is


@pytest.mark.slow
def test_a_failed_check_leaves_the_run_dir_untouched(tiny_cfg) -> None:
    cfg = tiny_cfg("search.metric=val/accuracy")
    prewarm = store_prewarm.start(resolve_locations(cfg.tracking).mlflow_uri)
    assert prewarm is not None
    try:
        with pytest.raises(ConvsweepError, match="unknown metric"):
            prepare_sweep(cfg, prewarm)
    finally:
        prewarm.discard()
    assert not resolve_locations(cfg.tracking).run_dir.exists()
    assert not prewarm.workdir.exists()
