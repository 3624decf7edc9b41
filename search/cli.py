"""convsweep: sweep conv-net architectures with Optuna, train with Lightning, track in MLflow.

    convsweep sweep [hydra overrides]            e.g. dataset=digits search.n_trials=30 sampler=random
    convsweep recover --study NAME               end a study's trials whose worker is gone
    convsweep train [--config-file F] [overrides]
    convsweep best --study NAME [-o best.yaml] [--register NAME] [--pick RULE]
    convsweep reproduce RUN_ID | --study NAME [--tolerance T] [--force]
    convsweep evaluate --study NAME | --config-file F [--train-on-val] [--register NAME]
    convsweep report --study NAME
    convsweep ui [--port 5000] [--optuna]
    convsweep config [overrides]                 print the composed config

This module is the thin layer: parse arguments, compose the config, call one typed function
per command, and print a user error as one line. Heavy libraries are imported inside the
commands, so `convsweep --help` stays instant.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, Callable, Sequence

DEFAULT_UI_PORT = 5000


def _compose(args: argparse.Namespace, extra: Sequence[str] = ()) -> Any:
    from convsweep.search.compose import compose_config
    from convsweep.search.readback import load_config_file

    overrides = [*extra, *getattr(args, "overrides", [])]
    if getattr(args, "study", None):
        overrides.append(f"search.study_name={args.study}")
    if getattr(args, "config_file", None):
        return load_config_file(args.config_file, overrides)
    return compose_config(overrides)


def _console() -> Any:
    from rich.console import Console

    return Console(highlight=False, soft_wrap=True)  # trial lines and errors stay whole, e.g. in CI logs


def ui_hint(cfg: Any) -> str:
    """The command that opens the MLflow UI on this config's store."""
    from convsweep.search.compose import compose_config
    from convsweep.search.storage import resolve_locations

    loc = resolve_locations(cfg.tracking)
    hint = "convsweep ui"
    if str(cfg.search.study_name) != str(compose_config([]).search.study_name):
        hint += f" --study {cfg.search.study_name}"
    if loc != resolve_locations({"run_dir": "./convsweep-runs"}):
        hint += f" tracking.run_dir={loc.run_dir}"
    return hint


def cmd_sweep(args: argparse.Namespace) -> int:
    """convsweep sweep [overrides]

    Exit codes: 0 when a trial of this invocation completed (or none failed), 1 when a worker
    process crashed or every trial failed, 2 for a user error, 130 when interrupted (Ctrl-C, SIGTERM).
    """
    import signal

    signal.signal(signal.SIGTERM, signal.default_int_handler)  # a scheduler's SIGTERM is Ctrl-C here too: exit 130
    cfg = _compose(args)  # config errors surface before the heavy imports below
    from convsweep.search import store_prewarm
    from convsweep.search.storage import resolve_locations

    prewarm = store_prewarm.start(resolve_locations(cfg.tracking).mlflow_uri)  # migrates while torch imports
    try:
        return _sweep(cfg, prewarm)
    finally:
        if prewarm is not None:
            prewarm.discard()


def _sweep(cfg: Any, prewarm: Any) -> int:
    """The sweep itself, once the new store (if any) is migrating; imports here are the heavy ones."""
    from convsweep.search.preflight import check_search, prepare_sweep

    check_search(cfg)  # before Lightning's and MLflow's imports: a wrong metric or space is told at once
    from convsweep.dashboards.leaderboard import failure_counts, failures_table, leaderboard, leaderboard_table, state_counts
    from convsweep.search.studies import ensure_study_exists
    from convsweep.search.sweep import run_sweep

    console = _console()
    plan = prepare_sweep(cfg, prewarm)
    console.print(f"study [bold]{cfg.search.study_name}[/] on {plan.data.name} {plan.data.sizes()} | "
                  f"sampler {cfg.choices.sampler}, pruner {cfg.choices.pruner}, {cfg.search.n_trials} trials "
                  f"x {cfg.trainer.max_epochs} epochs | metric {cfg.search.metric}"
                  + (f" | objectives {', '.join(map(str, cfg.search.objectives))} (no pruning: Optuna cannot prune "
                     "multi-objective trials)" if len(cfg.search.get("objectives") or []) > 1 else ""))
    summary = run_sweep(plan, console)
    study = ensure_study_exists(summary.locations, summary.study_name)
    console.print()
    console.print(leaderboard_table(leaderboard(study, str(cfg.search.metric), 10), str(cfg.search.metric),
                                    f"leaderboard: {summary.study_name}", states=state_counts(study)))
    failures = failure_counts(study)
    if failures:
        console.print(failures_table(failures[:10], f"trials without a result: {summary.study_name}"))
    refused = f" ({summary.n_refused} refused before training)" if summary.n_refused else ""
    waiting = f" ({summary.n_not_started} asked ahead, not started)" if summary.n_not_started else ""
    console.print(f"this sweep: {summary.n_complete} complete, {summary.n_pruned} pruned{refused}, "
                  f"{summary.n_failed} failed{waiting}")
    for pid, code in summary.crashed:
        console.print(f"[red]worker process {pid} crashed[/] (exit code {code}): a trial it was running ended "
                      "`worker lost` and did not count toward search.n_trials")
    if summary.n_failed > summary.n_not_started and not summary.n_complete:
        console.print("[red]no trial completed[/]: every trial of this sweep failed (reasons above)")
    if summary.best_value is not None:
        console.print(f"best {cfg.search.metric} = {summary.best_value:.4f} (MLflow run {summary.best_run_id})")
    console.print(f"results: {summary.locations.run_dir}")
    console.print(f"open the MLflow UI: [bold]{ui_hint(cfg)}[/]")
    if summary.best_value is not None:
        console.print(f"export the best config: convsweep best --study {summary.study_name}")
    return 0 if summary.status == "FINISHED" else 1


def cmd_recover(args: argparse.Namespace) -> int:
    """convsweep recover --study NAME [overrides]"""
    from convsweep.search.recovery import recover_command

    return recover_command(_compose(args), _console())


def cmd_train(args: argparse.Namespace) -> int:
    """convsweep train [--config-file best.yaml] [overrides]"""
    from convsweep.search.train import train_and_track

    console = _console()
    cfg = _compose(args)
    run = train_and_track(cfg, role="train", log_model=True)
    for row in run.result.history:
        console.print("epoch {:>2}: ".format(int(row["epoch"])) +
                      "  ".join(f"{k}={v:.4f}" for k, v in sorted(row.items()) if k != "epoch"))
    console.print(f"best {cfg.search.metric} = {run.result.best_value:.4f} at epoch {run.result.best_epoch} "
                  f"| {run.result.plan.params:,} params | {run.result.duration_s:.1f} s on {run.result.device}")
    console.print(f"MLflow run {run.run_id}; model {run.model_uri}")
    console.print(f"open the MLflow UI: {ui_hint(cfg)}")
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    """convsweep config [overrides]"""
    from convsweep.search.masking import to_yaml

    print(to_yaml(_compose(args)), end="")
    return 0


def cmd_best(args: argparse.Namespace) -> int:
    """convsweep best --study NAME [-o best.yaml] [--register NAME] [--pick RULE]"""
    from convsweep.search.best import export_best

    return export_best(_compose(args), args.output, args.register, _console(), pick=args.pick)


def cmd_reproduce(args: argparse.Namespace) -> int:
    """convsweep reproduce RUN_ID | --study NAME"""
    from convsweep.search.reproduce import reproduce

    run_ids = [o for o in args.overrides if "=" not in o]
    args.overrides = [o for o in args.overrides if "=" in o]
    if len(run_ids) > 1 or (not run_ids and not args.study):
        from convsweep.errors import ConvsweepError  # noqa: PLC0415 - the CLI imports lazily

        raise ConvsweepError("give one MLflow RUN_ID of a trial, or --study NAME for the study's best trial")
    return reproduce(_compose(args), run_ids[0] if run_ids else None, args.tolerance, args.force, _console())


def cmd_evaluate(args: argparse.Namespace) -> int:
    """convsweep evaluate --study NAME | --config-file F"""
    from convsweep.search.evaluate import evaluate

    return evaluate(_compose(args), from_study=args.config_file is None, train_on_val=args.train_on_val,
                    register=args.register, console=_console())


def cmd_report(args: argparse.Namespace) -> int:
    """convsweep report --study NAME"""
    from convsweep.search.report import report

    return report(_compose(args), _console())


def cmd_ui(args: argparse.Namespace) -> int:
    """convsweep ui [--port 5000] [--host 127.0.0.1] [--optuna]"""
    from convsweep.search.ui import serve_ui

    return serve_ui(_compose(args), host=args.host, port=args.port, optuna_port=args.optuna_port if args.optuna else None,
                    console=_console())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="convsweep", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="Overrides use Hydra syntax: key=value or group=option. "
                                            "`convsweep config` prints every key.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, func: Callable[[argparse.Namespace], int], help: str, study: bool = False,
            config_file: bool = False) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        p.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. dataset=digits trainer.max_epochs=8")
        if study:
            p.add_argument("--study", help="study name (default: the config's search.study_name)")
        if config_file:
            p.add_argument("--config-file", help="a standalone resolved config, e.g. the best.yaml `convsweep best` writes")
        p.set_defaults(func=func)
        return p

    add("sweep", cmd_sweep, "run (or resume) an Optuna sweep over conv-net configurations")
    add("recover", cmd_recover, "end a study's RUNNING trials whose worker is gone (as a sweep's start does)",
        study=True)
    add("train", cmd_train, "train one fixed configuration (conf/arch or --config-file) and log it", config_file=True)
    add("config", cmd_config, "print the composed, resolved config", config_file=True)
    p = add("best", cmd_best, "print the best trial and write it as a standalone config", study=True)
    p.add_argument("-o", "--output", default="best.yaml", help="where to write the config (default: best.yaml)")
    p.add_argument("--register", metavar="NAME", help="register the best trial's model in the MLflow Model Registry")
    p.add_argument("--pick", metavar="RULE", help="multi-objective: which Pareto trial to write, best:NAME or "
                                                  "smallest-within:TOL[:NAME] (e.g. smallest-within:0.005)")
    p = add("reproduce", cmd_reproduce, "re-run a trial from its logged config and compare metrics", study=True)
    p.add_argument("--tolerance", type=float, default=1e-6, help="max per-epoch metric difference (default 1e-6)")
    p.add_argument("--force", action="store_true", help="run even if the dataset fingerprint changed")
    p = add("evaluate", cmd_evaluate, "train the chosen config and evaluate it once on the held-out test split",
            study=True, config_file=True)
    p.add_argument("--train-on-val", action="store_true", help="train on train+val before the test evaluation")
    p.add_argument("--register", metavar="NAME", help="register the trained model in the MLflow Model Registry")
    add("report", cmd_report, "regenerate the sweep plots and print the leaderboard", study=True)
    p = add("ui", cmd_ui, "open the MLflow UI (and optionally optuna-dashboard) on the sweep's stores", study=True)
    p.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=DEFAULT_UI_PORT, help=f"MLflow UI port (default {DEFAULT_UI_PORT})")
    p.add_argument("--optuna", action="store_true", help="also start optuna-dashboard on the Optuna storage")
    p.add_argument("--optuna-port", type=int, default=8080, help="optuna-dashboard port (default 8080)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `convsweep` console script."""
    args = build_parser().parse_args(argv)
    from convsweep.errors import ConvsweepError

    try:
        return args.func(args)
    except ConvsweepError as exc:
        print(f"convsweep {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"convsweep {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
