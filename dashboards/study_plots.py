"""Sweep-level Optuna views: one PNG per view (matplotlib), and one interactive page holding them all (plotly).

MLflow's artifact viewer shows an HTML file from a blob URL in an iframe sandboxed to
`allow-scripts`: a CDN link needs the internet and a sibling `plotly.min.js` does not resolve,
so only a self-contained page works offline there. plotly.js is about 4.8 MB, so the views share
one page (`report.html`) that embeds it once; a page per view would cost a sweep about 29 MB.
"""

from __future__ import annotations

import functools
import html
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import optuna
from matplotlib import pyplot as plt
from optuna.exceptions import ExperimentalWarning
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState
from optuna.visualization import matplotlib as optuna_mpl

from convsweep.dashboards.figures import DPI, PlotOutcome, ViewSkipped, draw_view, fresh_dir, log_views, save_png

WIDTH_IN, HEIGHT_IN = 10.0, 6.0  # every PNG is at least 1000 x 600 px (see figures.DPI)
MAX_WIDTH_IN = 20.0  # and at most 2000 px wide, so it fits a screen without scrolling
PANEL_IN = 2.5  # width per slice panel or parallel-coordinate axis, while MAX_WIDTH_IN allows
PARALLEL_PARAMS = 8  # axes of the parallel-coordinate plot: the most important params (more is unreadable)
BLOCK_PARAM = re.compile(r"block\d+\.")  # conditional per-block params: `block2.filters` exists iff depth >= 2
REPORT = "report.html"  # every interactive view on one page
_CSS = "body { font-family: sans-serif; margin: 1em } h1 { font-size: 1.3em } h2 { font-size: 1.1em; margin-top: 2em }"


@dataclass(frozen=True)
class _Plot:
    """One view: the optuna function, named alike in both backends, and the arguments both take."""

    function: str  # e.g. "plot_slice": optuna.visualization.matplotlib.plot_slice and optuna.visualization.plot_slice
    kwargs: dict[str, Any] = field(default_factory=dict)
    figsize: tuple[float, float] = (WIDTH_IN, HEIGHT_IN)  # inches; optuna's slice takes half the width per panel
    ylabel: str | None = None  # set where optuna takes no target name
    title: str | None = None  # replaces optuna's title where it needs saying what the view leaves out


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


def _width(inches: float) -> float:
    """A figure width within [WIDTH_IN, MAX_WIDTH_IN]."""
    return min(max(WIDTH_IN, inches), MAX_WIDTH_IN)


def _history(study: optuna.Study, metric: str) -> _Plot:
    _require_completed(study, 1)
    return _Plot("plot_optimization_history", _target(study, metric))


def _importance_target(study: optuna.Study, metric: str) -> dict[str, Any]:
    """PedANOVA, optuna's default, ranks params by how they reach *low* values of a custom target, so a
    maximised first objective is negated: "important" then means what it means in a single-objective study."""
    _require_completed(study, 2)
    kwargs = _target(study, metric)
    if kwargs["target"] is not None and study.directions[0] == StudyDirection.MAXIMIZE:
        kwargs["target"] = lambda t: -t.values[0]
    return kwargs


def _importances(study: optuna.Study, metric: str) -> _Plot:
    return _Plot("plot_param_importances", _importance_target(study, metric))


def _parallel(study: optuna.Study, metric: str) -> _Plot:
    """The PARALLEL_PARAMS most important params, conditional ones included (PedANOVA ranks those too);
    optuna marks a block's params missing in shallower trials."""
    names = _param_names(_require_completed(study, 1))
    if not names:
        raise ViewSkipped("the completed trials have no params")
    title = None
    if len(names) > PARALLEL_PARAMS:
        ranked = optuna.importance.get_param_importances(study, target=_importance_target(study, metric)["target"])
        names = set(list(ranked)[:PARALLEL_PARAMS])
        title = f"Parallel Coordinate Plot: the {PARALLEL_PARAMS} most important of {len(ranked)} params"
    params = sorted(names)
    return _Plot("plot_parallel_coordinate", {"params": params, **_target(study, metric)}, title=title,
                 figsize=(_width(PANEL_IN * (len(params) + 1)), HEIGHT_IN))


def _intermediate(study: optuna.Study, metric: str) -> _Plot:
    if not any(t.intermediate_values for t in study.get_trials(deepcopy=False)):
        raise ViewSkipped("no trial reported intermediate values")
    return _Plot("plot_intermediate_values", ylabel=metric)


def _slice(study: optuna.Study, metric: str) -> _Plot:
    """The sweep-wide params (depth, head, optimiser): a panel each, as one row no wider than MAX_WIDTH_IN."""
    names = _param_names(_require_completed(study, 1))
    params = sorted(n for n in names if not BLOCK_PARAM.match(n)) or sorted(names)
    if not params:
        raise ViewSkipped("the completed trials have no params")
    panel = min(PANEL_IN, MAX_WIDTH_IN / len(params))
    return _Plot("plot_slice", {"params": params, **_target(study, metric)}, figsize=(2 * panel, HEIGHT_IN))


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


def _draw(name: str, view: Callable[[optuna.Study, str], _Plot], study: optuna.Study, metric: str, out_dir: Path,
          figures: dict[str, Any]) -> list[Path]:
    """The PNG via optuna's matplotlib backend; the plotly figure of the same view goes into `figures`."""
    plot = view(study, metric)
    # rc_context undoes optuna's global plt.style.use("ggplot"), sizes the figure optuna creates,
    # and lays it out so long param names are not clipped at the edges.
    with plt.rc_context({"figure.figsize": plot.figsize, "figure.constrained_layout.use": True}):
        axes = np.ravel(getattr(optuna_mpl, plot.function)(study, **plot.kwargs))
        if plot.ylabel:
            axes[0].set_ylabel(plot.ylabel)
        if plot.title:
            axes[0].set_title(plot.title)
        png = save_png(axes[0].figure, out_dir / f"{name}.png")
    figure = getattr(optuna.visualization, plot.function)(study, **plot.kwargs)
    if plot.ylabel:
        figure.update_yaxes(title_text=plot.ylabel)
    if plot.title:
        figure.update_layout(title_text=plot.title)
    figures[name] = figure
    return [png]


def write_report(figures: Mapping[str, Any], path: Path, title: str) -> Path:
    """One self-contained page with every plotly figure, plotly.js embedded once (works offline, see above)."""
    import plotly.io as pio
    from plotly.offline import get_plotlyjs

    title = html.escape(title)
    head = [f'<meta charset="utf-8"><title>{title}</title>', f"<style>{_CSS}</style>",
            f'<script type="text/javascript">{get_plotlyjs()}</script>']
    body = [f"<h1>{title}</h1>"]
    height = f"{HEIGHT_IN * DPI:.0f}px"  # as tall as the PNGs
    for name, figure in figures.items():
        body.append(f'<h2 id="{name}">{name.replace("_", " ")}</h2>')
        body.append(pio.to_html(figure, include_plotlyjs=False, full_html=False, default_height=height))
    path.write_text("\n".join(["<!DOCTYPE html>", "<html>", "<head>", *head, "</head>", "<body>", *body, "</body>",
                               "</html>", ""]), encoding="utf-8")
    return path


def make_study_plots(study: optuna.Study, metric: str, out_dir: Path) -> list[PlotOutcome]:
    """Draw every sweep-level view into `out_dir` as `<view>.png`, and all of them into one `report.html`.

    Never raises for a study it cannot draw: such a view comes back with `skipped` set (and is not
    in the report; with no view drawn there is no report).

    Args:
        study: a finished (or running) convsweep study.
        metric: the sweep's metric (`search.metric`, e.g. "val/acc"); labels the value axes.
        out_dir: folder for the files (created if missing).

    Returns:
        One outcome per view, in `VIEWS` order.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    figures: dict[str, Any] = {}  # view name -> plotly figure, in VIEWS order
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        warnings.filterwarnings("ignore", "PedAnovaImportanceEvaluator computes", UserWarning)  # _importance_target
        outcomes = [draw_view(name, functools.partial(_draw, name, view, study, metric, out_dir, figures))
                    for name, view in VIEWS.items()]
    if figures:
        write_report(figures, out_dir / REPORT, f"study {study.study_name}: {metric}")
    return outcomes


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
