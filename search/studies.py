"""Open a sweep's Optuna study for writing, or an existing one for the read-only commands."""

from __future__ import annotations

import warnings

import optuna

from convsweep.errors import ConvsweepError
from convsweep.search.allowlist import safe_instantiate
from convsweep.search.preflight import SPACE_ATTR, SPACE_NAME_ATTR, SweepPlan, space_fingerprint, space_source, sweep_objectives
from convsweep.search.recovery import lost_trial_callback
from convsweep.search.samplers import make_sampler
from convsweep.search.storage import Locations, StorageError, open_optuna_storage


def open_study(plan: SweepPlan, worker: int = 0) -> optuna.Study:
    """Create or resume the plan's study with this worker's sampler."""
    cfg = plan.cfg
    objectives = sweep_objectives(cfg)
    search = cfg.search
    storage = open_optuna_storage(plan.locations, heartbeat_interval=int(search.heartbeat_interval),
                                  grace_period=int(search.grace_period),
                                  stale_trial_callback=lost_trial_callback(plan.client, lambda: plan.experiment_id,
                                                                           bool(search.retry_lost)))
    sampler = make_sampler(cfg, plan.space, worker, n_existing=_n_trials(storage, str(cfg.search.study_name)))
    try:
        study = optuna.create_study(study_name=str(cfg.search.study_name), storage=storage, load_if_exists=True,
                                    sampler=sampler, pruner=safe_instantiate(cfg.pruner),
                                    directions=[o.direction for o in objectives])
    except ValueError as exc:
        raise ConvsweepError(f"cannot open study '{cfg.search.study_name}': {exc}") from None
    if SPACE_ATTR not in study.user_attrs:  # at creation (and once for a study made before fingerprints)
        study.set_user_attr(SPACE_ATTR, space_fingerprint(cfg))
        study.set_user_attr(SPACE_NAME_ATTR, space_source(cfg))
    names = [o.name for o in objectives]
    had = [d.name.lower() for d in study.directions]
    if had != [o.direction for o in objectives] or study.metric_names not in (None, names):
        # Optuna loads an existing study with its own directions and says nothing: refuse the mismatch here
        raise ConvsweepError(f"study '{study.study_name}' optimises {study.metric_names or had}, not {names}; resume "
                             "it with its own search.metric/search.objectives, or pick another search.study_name")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(names)  # plots, optuna-dashboard and `convsweep best` name the values
    return study


def _n_trials(storage: optuna.storages.BaseStorage, study_name: str) -> int:
    """Trials the study already holds (0 for a new one): part of the sampler's seed, so a resume never repeats."""
    try:
        return storage.get_n_trials(storage.get_study_id_from_name(study_name))
    except KeyError:
        return 0


def ensure_study_exists(loc: Locations, study_name: str) -> optuna.Study:
    """Load an existing study for read-only commands (best, report, reproduce)."""
    storage = open_optuna_storage(loc, create=False)
    try:
        return optuna.load_study(study_name=study_name, storage=storage)
    except KeyError:
        names = [s.study_name for s in optuna.get_all_study_summaries(storage)]
        raise StorageError(f"no study '{study_name}' in {loc.describe()['optuna_storage']}; "
                           f"known studies: {', '.join(names) or 'none'}") from None
