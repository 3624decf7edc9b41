"""Sweep-level Optuna views, each drawn as a PNG (matplotlib) and an interactive HTML (plotly).

Every HTML file embeds plotly.js (about 4.8 MB): MLflow's artifact viewer shows HTML from a
blob URL in a sandboxed iframe, where a CDN link needs the internet and a sibling
`plotly.min.js` does not resolve. Only a self-contained file works offline there.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import optuna
from matplotlib import pyplot as plt
from optuna.exceptions import ExperimentalWarning
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState
from optuna.visualization import matplotlib as optuna_mpl

from convsweep.dashboards.figures import PlotOutcome, ViewSkipped, draw_view, fresh_dir, log_views, save_png

WIDTH_IN, HEIGHT_IN = 10.0, 6.0  # every PNG is at least 1000 x 600 px (see figures.DPI)
PANEL_IN = 2.5  # extra width per slice panel or parallel-coordinate axis, so many params stay legible
BLOCK_PARAM = re.compile(r"block\d+\.")  # conditional per-block params: `block2.filters` exists iff depth >= 2


@dataclass(frozen=True)
class _Plot:
    """One view: the optuna function, named alike in both backends, and the arguments both take."""

    function: str  # e.g. "plot_slice": optuna.visualization.matplotlib.plot_slice and optuna.visualization.plot_slice
    kwargs: dict[str, Any] = field(default_factory=dict)
    figsize: tuple[float, float] = (WIDTH_IN, HEIGHT_IN)  # inches; optuna's slice takes half the width per panel
    ylabel: str | None = None  # set where optuna takes no target name


def _require_completed(study: optuna.Study, n: int) -> list[FrozenTrial]:
    trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if len(trials) < n:
        raise ViewSkipped(f"needs at least {n} completed trial(s), the study has {len(trials)}")
    return trials


def _target(study: optuna.Study, metric: str) -> dict[str, Any]:
    """Plot the first objective (the sweep's metric) under its name, also in multi-objective studies."""
    target = (lambda t: t.values[0]) if len(study.directions) > 1 else None
    return {"target": target, "target_name": metric}


def _param_names(trials: list[FrozenTrial]) -> set[str]:
    return {name for t in trials for name in t.params}


def _history(study: optuna.Study, metric: str) -> _Plot:
    _require_completed(study, 1)
    return _Plot("plot_optimization_history", _target(study, metric))


def _importances(study: optuna.Study, metric: str) -> _Plot:
    """PedANOVA, optuna's default, ranks params by how they reach *low* values of a custom target, so a
    maximised first objective is negated: "important" then means what it means in a single-objective study."""
    _require_completed(study, 2)
    kwargs = _target(study, metric)
    if kwargs["target"] is not None and study.directions[0] == StudyDirection.MAXIMIZE:
        kwargs["target"] = lambda t: -t.values[0]
    return _Plot("plot_param_importances", kwargs)


def _parallel(study: optuna.Study, metric: str) -> _Plot:
    """Depth plus every per-block param; optuna marks a block's params missing in shallower trials."""
    names = _param_names(_require_completed(study, 1))
    params = sorted(n for n in names if BLOCK_PARAM.match(n) or n == "depth")
    if not any(BLOCK_PARAM.match(n) for n in params):
        raise ViewSkipped("no per-block params (block<i>.*) in the completed trials")
    return _Plot("plot_parallel_coordinate", {"params": params, **_target(study, metric)},
                 figsize=(max(WIDTH_IN, PANEL_IN * (len(params) + 1)), HEIGHT_IN))


def _intermediate(study: optuna.Study, metric: str) -> _Plot:
    if not any(t.intermediate_values for t in study.get_trials(deepcopy=False)):
        raise ViewSkipped("no trial reported intermediate values")
    return _Plot("plot_intermediate_values", ylabel=metric)


def _slice(study: optuna.Study, metric: str) -> _Plot:
    """The sweep-wide params (depth, head, optimiser); the per-block ones are in the parallel plot."""
    names = _param_names(_require_completed(study, 1))
    params = sorted(n for n in names if not BLOCK_PARAM.match(n)) or sorted(names)
    if not params:
        raise ViewSkipped("the completed trials have no params")
    return _Plot("plot_slice", {"params": params, **_target(study, metric)}, figsize=(2 * PANEL_IN, HEIGHT_IN))


def _pareto(study: optuna.Study, metric: str) -> _Plot:
    """The metric against the model's costs (search.objectives), the front highlighted."""
    if len(study.directions) == 1:
        raise ViewSkipped("single-objective study: no Pareto front")
    if len(study.directions) > 3:
        raise ViewSkipped(f"a Pareto plot shows 2 or 3 objectives, the study has {len(study.directions)}")
    _require_completed(study, 1)
    names = study.metric_names or [metric] + [f"objective {i}" for i in range(1, len(study.directions))]
    return _Plot("plot_pareto_front", {"target_names": names})


VIEWS: dict[str, Callable[[optuna.Study, str], _Plot]] = {
    "optimization_history": _history,
    "param_importances": _importances,
    "parallel_coordinate": _parallel,
    "intermediate_values": _intermediate,
    "slice": _slice,
    "pareto_front": _pareto,
}


def _draw(name: str, plot: _Plot, study: optuna.Study, out_dir: Path) -> list[Path]:
    """The PNG via optuna's matplotlib backend, then the self-contained HTML via plotly."""
    # rc_context undoes optuna's global plt.style.use("ggplot"), sizes the figure optuna creates,
    # and lays it out so long param names are not clipped at the edges.
    with warnings.catch_warnings(), plt.rc_context({"figure.figsize": plot.figsize,
                                                    "figure.constrained_layout.use": True}):
        warnings.simplefilter("ignore", ExperimentalWarning)
        warnings.filterwarnings("ignore", "PedAnovaImportanceEvaluator computes", UserWarning)  # see _importances
        axes = np.ravel(getattr(optuna_mpl, plot.function)(study, **plot.kwargs))
        if plot.ylabel:
            axes[0].set_ylabel(plot.ylabel)
        png = save_png(axes[0].figure, out_dir / f"{name}.png")
        figure = getattr(optuna.visualization, plot.function)(study, **plot.kwargs)
    if plot.ylabel:
        figure.update_yaxes(title_text=plot.ylabel)
    html = out_dir / f"{name}.html"
    figure.write_html(html, include_plotlyjs=True)
    return [png, html]


def make_study_plots(study: optuna.Study, metric: str, out_dir: Path) -> list[PlotOutcome]:
    """Draw every sweep-level view into `out_dir` as `<view>.png` and `<view>.html`.

    Never raises for a study it cannot draw: such a view comes back with `skipped` set.

    Args:
        study: a finished (or running) convsweep study.
        metric: the sweep's metric (`search.metric`, e.g. "val/acc"); labels the value axes.
        out_dir: folder for the files (created if missing).

    Returns:
        One outcome per view, in `VIEWS` order.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    return [draw_view(name, lambda view=view, name=name: _draw(name, view(study, metric), study, out_dir))
            for name, view in VIEWS.items()]


def log_study_plots(client: Any, run_id: str, study: optuna.Study, metric: str, work_dir: Path) -> list[PlotOutcome]:
    """Draw the study's views and log them, with `notes.txt` on skipped views, under the run's `plots/`.

    Args:
        client: an `mlflow.MlflowClient`.
        run_id: usually the sweep's parent run.
        study, metric: as for `make_study_plots`.
        work_dir: scratch folder; its `plots/` subfolder is replaced by this call's files.
    """
    out_dir = fresh_dir(Path(work_dir) / "plots")
    outcomes = make_study_plots(study, metric, out_dir)
    log_views(client, run_id, outcomes, out_dir, "plots")
    return outcomes
