"""python benchmarks/tracking_overhead.py [--trials 3] [--epochs 10] [--log-models best] [overrides]

Claim: MLflow tracking costs at most 5% of a 10-epoch trial's time on the default local
SQLite store. The trials are real: the sweep's own objective (`make_objective`) samples,
trains and records each one, with every `MlflowClient` method and `log_model`
wrapped in a timer. Both shares come from the same trials, so load hits them alike.

The once-per-sweep costs are reported apart: opening a fresh store (its SQLite
migrations), the experiment and the parent run.
"""

from __future__ import annotations

import tempfile
import time
from collections import defaultdict
from typing import Any, Callable

import _common
import optuna
import torch

from convsweep.search import objective as objective_module
from convsweep.search.compose import compose_config
from convsweep.search.objective import make_objective
from convsweep.search.parent_run import start_parent_run
from convsweep.search.preflight import prepare_sweep
from convsweep.search.storage import experiment_id, init_mlflow, open_optuna_storage


class TimedClient:
    """Wraps an `MlflowClient`: every method call appends its wall seconds to `spent[name]`."""

    def __init__(self, client: Any, spent: dict[str, list[float]]) -> None:
        self._client, self._spent = client, spent

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._client, name)
        return _timed(attr, name, self._spent) if callable(attr) else attr


def _timed(fn: Callable[..., Any], name: str, spent: dict[str, list[float]]) -> Callable[..., Any]:
    def call(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            spent[name].append(time.perf_counter() - start)

    return call


def main() -> None:
    p = _common.parser(__doc__)
    p.add_argument("--trials", type=int, default=3)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: stable on a shared 2-core machine)")
    p.add_argument("--log-models", default="best", choices=["best", "all", "none"], help="search.log_models")
    p.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. search_space=wide")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    _common.banner("benchmarks/tracking_overhead.py", args)
    with tempfile.TemporaryDirectory() as run_dir:
        cfg = compose_config([f"tracking.run_dir={run_dir}", f"trainer.max_epochs={args.epochs}", "trainer.accelerator=cpu",
                              f"trainer.num_threads={args.threads}", f"search.log_models={args.log_models}",
                              "sampler=random", "pruner=none", *args.overrides])
        plan = prepare_sweep(cfg)
        once: dict[str, float] = {}
        start = time.perf_counter()
        import mlflow.tracking  # noqa: F401 - timed apart from the store's migrations

        once["import mlflow"] = time.perf_counter() - start
        start = time.perf_counter()
        raw_client = init_mlflow(plan.locations)
        once["open fresh store (migrations)"] = time.perf_counter() - start
        spent: dict[str, list[float]] = defaultdict(list)
        client = TimedClient(raw_client, spent)
        start = time.perf_counter()
        exp_id = experiment_id(client, str(cfg.tracking.experiment_name), plan.locations)
        parent_id, _ = start_parent_run(client, exp_id, "bench", params={"bench": 1}, tags={})
        once["experiment + parent run"] = time.perf_counter() - start
        spent.clear()
        objective_module.log_model = _timed(objective_module.log_model, "log_model (fluent)", spent)  # the name the objective calls

        study = optuna.create_study(storage=open_optuna_storage(plan.locations), study_name="bench", direction="maximize",
                                    sampler=optuna.samplers.RandomSampler(seed=0))
        plan.client, plan.experiment_id, plan.parent_run_id = client, exp_id, parent_id
        objective = make_objective(plan)
        rows = []

        def timed_objective(trial: optuna.Trial) -> float:
            before, start = _total(spent), time.perf_counter()
            try:
                return objective(trial)
            finally:
                rows.append((trial.number, time.perf_counter() - start, _total(spent) - before))

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study.optimize(timed_objective, n_trials=args.trials)

    print("\nonce per sweep (not counted below): " + ", ".join(f"{k} {v:.2f} s" for k, v in once.items()))
    print(f"\nper trial ({args.epochs} epochs, search.log_models={args.log_models}):")
    print(f"  {'trial':>5} {'trial s':>9} {'mlflow s':>9} {'share':>7}")
    for number, total, mlflow_s in rows:
        print(f"  {number:>5} {total:>9.2f} {mlflow_s:>9.3f} {100 * mlflow_s / total:>6.2f}%")
    total, mlflow_s = sum(r[1] for r in rows), sum(r[2] for r in rows)
    print("\nMLflow time by call, all trials:")
    print(f"  {'call':<22} {'calls':>5} {'total s':>8} {'share':>7} {'first ms':>9} {'median ms':>9}")
    for name, calls in sorted(spent.items(), key=lambda kv: -sum(kv[1])):
        print(f"  {name:<22} {len(calls):>5} {sum(calls):>8.3f} {100 * sum(calls) / total:>6.2f}% "
              f"{1000 * calls[0]:>9.1f} {1000 * _common.median(calls):>9.1f}")
    without_model = mlflow_s - sum(spent.get("log_model (fluent)", []))
    print(f"RESULT MLflow share of trial time = {100 * mlflow_s / total:.2f}% (target <= 5%); "
          f"without model logging {100 * without_model / total:.2f}%; "
          f"{1000 * without_model / len(rows) / args.epochs:.1f} ms per trial-epoch")


def _total(spent: dict[str, list[float]]) -> float:
    return sum(sum(calls) for calls in spent.values())


if __name__ == "__main__":
    main()
