"""Sweep-level plots: every view drawn as a PNG and into one offline HTML report, or skipped with a reason."""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import optuna
import pytest
from optuna.exceptions import ExperimentalWarning
from PIL import Image
from plotly.offline import get_plotlyjs

from convsweep.dashboards import study_plots
from convsweep.dashboards.figures import DPI, PlotOutcome
from convsweep.dashboards.study_plots import REPORT, VIEWS, log_study_plots, make_study_plots

SINGLE_OBJECTIVE_VIEWS = set(VIEWS) - {"pareto_front"}
MAX_PNG_WIDTH = 2000
MAX_HTML_BYTES = 5_000_000  # all of a sweep's HTML plots together
SweepPlots = tuple[optuna.Study, dict[str, PlotOutcome], Path]


def _by_name(outcomes: list[PlotOutcome]) -> dict[str, PlotOutcome]:
    return {o.name: o for o in outcomes}


def _png(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def _section(report: Path, view: str) -> str:
    """The part of the report page that draws one view (up to the next view's heading)."""
    page = report.read_text()
    start = page.index(f'<h2 id="{view}">')
    end = page.find("<h2 ", start + 1)
    return page[start:end if end > 0 else None]


def _assert_drawn(outcome: PlotOutcome, report: Path) -> None:
    """A real picture (not blank), at most 2000 px wide, and a plotly figure of the view in the report."""
    assert outcome.skipped is None, outcome.skipped
    [png] = outcome.paths
    pixels = _png(png)
    assert pixels.shape[0] == study_plots.HEIGHT_IN * DPI
    assert pixels.shape[1] <= MAX_PNG_WIDTH
    assert pixels.std() > 0
    assert "Plotly.newPlot(" in _section(report, outcome.name)


def _assert_offline_report(out_dir: Path) -> None:
    """One HTML file, under the size budget, that carries plotly.js once and fetches nothing."""
    pages = list(out_dir.glob("*.html"))
    assert pages == [out_dir / REPORT]
    assert sum(page.stat().st_size for page in pages) <= MAX_HTML_BYTES
    page = pages[0].read_text()
    assert page.count(get_plotlyjs()[:200]) == 1
    assert not re.search(r"<script[^>]+src=", page)


@pytest.fixture(scope="module")
def sweep_plots(make_study: Callable[..., optuna.Study],
                tmp_path_factory: pytest.TempPathFactory) -> SweepPlots:
    """One pruned sweep drawn once for the read-only tests below (drawing all views takes seconds).

    Optuna's ExperimentalWarning is an error here: a leaked one would turn a view into a failure note.
    """
    study = make_study()
    out_dir = tmp_path_factory.mktemp("plots")
    with warnings.catch_warnings():
        warnings.simplefilter("error", ExperimentalWarning)
        outcomes = make_study_plots(study, "val/acc", out_dir)
    return study, _by_name(outcomes), out_dir


def test_a_pruned_sweep_gets_every_single_objective_view_and_one_offline_report(sweep_plots: SweepPlots) -> None:
    _, outcomes, out_dir = sweep_plots

    assert list(outcomes) == list(VIEWS)
    for name in SINGLE_OBJECTIVE_VIEWS:
        _assert_drawn(outcomes[name], out_dir / REPORT)
    assert _png(outcomes["optimization_history"].paths[0]).shape == (600, 1000, 3)
    assert outcomes["pareto_front"].skipped == "single-objective study: no Pareto front"
    assert outcomes["pareto_front"].paths == ()
    assert '<h2 id="pareto_front">' not in (out_dir / REPORT).read_text()
    _assert_offline_report(out_dir)


def test_value_axes_carry_the_metric_name(sweep_plots: SweepPlots) -> None:
    _, _, out_dir = sweep_plots

    for name in ("optimization_history", "intermediate_values", "slice", "parallel_coordinate"):
        assert "val\\u002facc" in _section(out_dir / REPORT, name), name  # plotly's JSON escapes "/"


def test_parallel_coordinates_show_the_eight_most_important_params(sweep_plots: SweepPlots) -> None:
    """Ranked by optuna's default evaluator (PedANOVA), which also ranks the conditional per-block params."""
    study, outcomes, out_dir = sweep_plots
    ranked = list(optuna.importance.get_param_importances(study))
    deepest = max(t.params["depth"] for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE)
    assert len(ranked) > study_plots.PARALLEL_PARAMS  # so some param is left out

    [axes] = re.findall(r'"ticktext":(\[[^\]]*\])', _section(out_dir / REPORT, "parallel_coordinate"))
    shown = json.loads(axes)
    assert shown[0] == "val/acc"
    assert set(shown[1:]) == set(ranked[:study_plots.PARALLEL_PARAMS])
    assert any(name.startswith(f"block{deepest}.") for name in shown)  # only the deepest trials have these
    assert _png(outcomes["parallel_coordinate"].paths[0]).shape[1] == MAX_PNG_WIDTH  # 9 axes: capped, not wider


def test_multi_objective_study_gets_a_pareto_front(multi_objective_study: optuna.Study, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Three views, for speed: parallel coordinates and slices take the first objective through the same
    `_target` as the history, and the importances have their own test below."""
    views = ("pareto_front", "optimization_history", "intermediate_values")
    monkeypatch.setattr(study_plots, "VIEWS", {name: VIEWS[name] for name in views})

    outcomes = _by_name(make_study_plots(multi_objective_study, "val/acc", tmp_path))

    _assert_drawn(outcomes["pareto_front"], tmp_path / REPORT)
    _assert_drawn(outcomes["optimization_history"], tmp_path / REPORT)  # of the first objective, the sweep's metric
    assert outcomes["intermediate_values"].skipped == "no trial reported intermediate values"


def test_a_study_without_completed_trials_skips_every_view(make_study: Callable[..., optuna.Study],
                                                           tmp_path: Path) -> None:
    """The other degenerate cases: one completed trial in the logging test, no intermediate values in the
    multi-objective one, a view that raises below."""
    outcomes = _by_name(make_study_plots(make_study(n_trials=0), "val/acc", tmp_path))

    assert all(o.skipped and not o.paths for o in outcomes.values())
    assert outcomes["optimization_history"].skipped == "needs at least 1 completed trial(s), the study has 0"
    assert list(tmp_path.iterdir()) == []


def test_a_view_that_breaks_is_noted_and_the_others_are_drawn(sweep_study: optuna.Study, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(study: optuna.Study, metric: str) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(study_plots, "VIEWS", {"slice": broken, "optimization_history": VIEWS["optimization_history"]})
    outcomes = _by_name(make_study_plots(sweep_study, "val/acc", tmp_path))

    assert outcomes["slice"].skipped == "failed: RuntimeError: boom"
    _assert_drawn(outcomes["optimization_history"], tmp_path / REPORT)


def test_log_study_plots_uploads_pictures_pages_and_notes(make_study: Callable[..., optuna.Study],
                                                          mlflow_client: object, run_id: str, tmp_path: Path,
                                                          listed: Callable[[str], set[str]],
                                                          read_artifact: Callable[[str], str],
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """One completed trial: enough for some views, too few for importances. Three views keep it quick."""
    views = ("optimization_history", "param_importances", "pareto_front")
    monkeypatch.setattr(study_plots, "VIEWS", {name: VIEWS[name] for name in views})

    outcomes = log_study_plots(mlflow_client, run_id, make_study(n_trials=1), "val/acc", tmp_path / "work")

    drawn = {f"plots/{o.name}.png" for o in outcomes if not o.skipped} | {f"plots/{REPORT}"}
    assert drawn == {"plots/optimization_history.png", "plots/report.html"}
    assert listed("plots") == drawn | {"plots/notes.txt"}
    assert read_artifact("plots/notes.txt") == (
        "param_importances: needs at least 2 completed trial(s), the study has 1\n"
        "pareto_front: single-objective study: no Pareto front\n")


def test_logging_again_replaces_the_earlier_files(make_study: Callable[..., optuna.Study], tmp_path: Path) -> None:
    class Client:
        def log_artifacts(self, run_id: str, local_dir: str, artifact_path: str) -> None:
            self.files = sorted(p.name for p in Path(local_dir).iterdir())

    (tmp_path / "plots").mkdir()
    (tmp_path / "plots" / "stale.png").write_bytes(b"old")
    client = Client()
    log_study_plots(client, "run", make_study(n_trials=0), "val/acc", tmp_path)

    assert client.files == ["notes.txt"]


def test_multi_objective_importances_rank_params_as_a_single_objective_study_would(
        multi_objective_study: optuna.Study) -> None:
    single = optuna.create_study(direction="maximize")
    for t in multi_objective_study.get_trials(states=(optuna.trial.TrialState.COMPLETE,)):
        single.add_trial(optuna.trial.create_trial(params=t.params, distributions=t.distributions, value=t.values[0]))
    target = study_plots.VIEWS["param_importances"](multi_objective_study, "val/acc").kwargs["target"]

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # optuna warns whenever a custom target is given
        ranked = optuna.importance.get_param_importances(multi_objective_study, target=target)

    assert list(ranked) == list(optuna.importance.get_param_importances(single))
