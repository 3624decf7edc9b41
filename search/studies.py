"""Open a sweep's Optuna study for writing, or an existing one for the read-only commands."""

from __future__ import annotations

import optuna

from convsweep.errors import ConvsweepError
from convsweep.search.allowlist import safe_instantiate
from convsweep.search.preflight import SweepPlan
from convsweep.search.samplers import make_sampler
from convsweep.search.storage import Locations, StorageError, open_optuna_storage


def open_study(plan: SweepPlan, worker: int = 0) -> optuna.Study:
    """Create or resume the plan's study with this worker's sampler."""
    cfg = plan.cfg
    storage = open_optuna_storage(plan.locations)
    try:
        return optuna.create_study(study_name=str(cfg.search.study_name), storage=storage, load_if_exists=True,
                                   sampler=make_sampler(cfg, plan.space, worker),
                                   pruner=safe_instantiate(cfg.pruner), direction=str(cfg.search.direction))
    except ValueError as exc:  # e.g. resuming with another direction
        raise ConvsweepError(f"cannot open study '{cfg.search.study_name}': {exc}") from None


def ensure_study_exists(loc: Locations, study_name: str) -> optuna.Study:
    """Load an existing study for read-only commands (best, report, reproduce)."""
    storage = open_optuna_storage(loc, create=False)
    try:
        return optuna.load_study(study_name=study_name, storage=storage)
    except KeyError:
        names = [s.study_name for s in optuna.get_all_study_summaries(storage)]
        raise StorageError(f"no study '{study_name}' in {loc.describe()['optuna_storage']}; "
                           f"known studies: {', '.join(names) or 'none'}") from None
