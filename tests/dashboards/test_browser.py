"""The MLflow UI in headless Chromium after a real tiny sweep: what a user opens `convsweep ui` to see.

Chromium reaches nothing but the local server (every other request is aborted), so the
interactive plot report must render from what it carries: the offline case.

    python -m pytest tests/dashboards/test_browser.py -s     # -s prints the screenshots' paths

Needs Debian's chromium (`apt-get install chromium`; `.ci/run` installs it). Outside CI a machine
without it skips this test; in CI (CI=true) its absence fails.
"""

from __future__ import annotations

import os
import re
import subprocess
import urllib.parse
from pathlib import Path
from typing import Callable

import pytest
from mlflow import MlflowClient
from playwright.sync_api import BrowserContext, Page, Route, expect, sync_playwright

from convsweep.dashboards.study_plots import REPORT
from convsweep.search.run_records import ROLE
from convsweep.search.storage import resolve_locations
from tests.conftest import CONVSWEEP, CONVSWEEP_ENV, UiProcess

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CHROMIUM = Path("/usr/bin/chromium")
# Root in a container needs --no-sandbox; the rest keeps Chromium off the (closed) network.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-quic"]
TIMEOUT_MS = 60_000  # the first page load compiles MLflow's large JS bundle; the plot report is about 5 MB
STUDY = "browser"
N_TRIALS = 3


def run_tiny_sweep(run_dir: Path) -> str:
    """Sweep `digits` for real (about 30-60 s) and return the best trial's MLflow run id, as the sweep prints it."""
    out = subprocess.run([*CONVSWEEP, "sweep", "dataset=digits", f"search.study_name={STUDY}", f"search.n_trials={N_TRIALS}",
                          "trainer.max_epochs=2", "search_space.depth.high=2", f"tracking.run_dir={run_dir}"],
                         capture_output=True, text=True, timeout=600, cwd=run_dir.parent, env=CONVSWEEP_ENV)
    assert out.returncode == 0, out.stderr[-3000:]
    best = re.search(r"best \S+ = \S+ \(MLflow run ([0-9a-f]{32})\)", out.stdout)
    assert best, out.stdout
    return best.group(1)


def keep_offline(context: BrowserContext, base_url: str) -> list[str]:
    """Abort every request that does not go to the local server (a CDN, say); returns the list of those."""
    local = urllib.parse.urlsplit(base_url).netloc
    blocked: list[str] = []

    def route(r: Route) -> None:
        url = urllib.parse.urlsplit(r.request.url)
        if url.scheme in ("http", "https", "ws", "wss") and url.netloc != local:
            blocked.append(r.request.url)
            r.abort("internetdisconnected")
        else:
            r.continue_()

    context.route("**/*", route)
    return blocked


def open_artifact(page: Page, runs_url: str, run_id: str, folder: str, name: str, landmark: str) -> None:
    """Open a run's Artifacts tab (once `landmark`, a top-level file, is listed) and click `folder/name`."""
    path, _, query = runs_url.partition("?")
    page.goto(f"{path}/{run_id}/artifacts?{query}")
    entry = page.get_by_text(name, exact=True)
    page.get_by_text(landmark, exact=True).wait_for()  # the artifact tree has loaded
    if not entry.is_visible():
        page.get_by_text(folder, exact=True).click()
    with page.expect_response(lambda r: "get-artifact" in r.url and name in r.url) as fetched:
        entry.click()
    assert fetched.value.ok


def open_filter_grid(page: Page, runs_url: str, run_id: str) -> None:
    """Click `cnn/filters.png`; the UI must fetch it and show the image."""
    open_artifact(page, runs_url, run_id, "cnn", "filters.png", "config.yaml")
    image = page.get_by_role("img", name="cnn/filters.png")
    expect(image).to_be_visible()
    assert image.evaluate("img => img.naturalWidth") > 0


def open_plot_report(page: Page, runs_url: str, parent_run_id: str, n_views: int) -> None:
    """Click `plots/report.html`: MLflow shows it in a sandboxed iframe, where plotly must draw each view's figure."""
    open_artifact(page, runs_url, parent_run_id, "plots", REPORT, "sweep_config.yaml")
    report = page.frame_locator("iframe.mlflow-html-iframe")
    expect(report.locator(".plotly-graph-div .main-svg").first).to_be_visible(timeout=TIMEOUT_MS)
    expect(report.locator(".plotly-graph-div:has(.main-svg)")).to_have_count(n_views, timeout=TIMEOUT_MS)


def trials_in_table_order(page: Page) -> list[str]:
    """The trial run names as the runs table shows them, top to bottom (the grid's row-index, not DOM order)."""
    trial = re.compile(r"^trial-\d{3}$")
    rows = page.locator("[role=row][row-index]").filter(has=page.get_by_role("link", name=trial))
    by_index = {int(row.get_attribute("row-index")): row.get_by_role("link", name=trial).inner_text()
                for row in rows.all()}
    return [by_index[i] for i in sorted(by_index)]


def test_mlflow_ui_shows_sorted_trials_their_params_filter_grid_and_offline_plot_report(
        tmp_path: Path, free_port: Callable[[], int], start_ui: Callable[..., UiProcess]) -> None:
    if not CHROMIUM.exists():
        if os.environ.get("CI") == "true":
            pytest.fail(f"{CHROMIUM} is missing in CI: .ci/run should apt-get install chromium")
        pytest.skip(f"{CHROMIUM} is missing: apt-get install chromium to run the browser test")
    run_dir = tmp_path / "runs"
    best_run = run_tiny_sweep(run_dir)
    client = MlflowClient(resolve_locations({"run_dir": str(run_dir)}).mlflow_uri)
    experiment = client.get_experiment_by_name(STUDY).experiment_id
    trial_runs = client.search_runs([experiment], filter_string=f"tags.`{ROLE}` = 'trial'")
    trial_000 = next(r for r in trial_runs if r.info.run_name == "trial-000")
    best_value = {r.info.run_name: r.data.metrics.get("val/acc_best") for r in trial_runs}  # None: ended before training
    parent_run = client.search_runs([experiment], filter_string=f"tags.`{ROLE}` = 'parent'")[0].info.run_id
    views = [a.path for a in client.list_artifacts(parent_run, "plots") if a.path.endswith(".png")]  # one per view
    server = start_ui("--port", str(free_port()), f"tracking.run_dir={run_dir}", f"search.study_name={STUDY}")
    assert "orderByKey=metrics.%60val%2Facc_best%60&orderByAsc=false" in server.url
    shots = [tmp_path / "runs-list.png", tmp_path / "filter-grid.png", tmp_path / "plot-report.png"]

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport={"width": 1600, "height": 1000})
            blocked = keep_offline(context, server.url)
            context.set_default_timeout(TIMEOUT_MS)
            page = context.new_page()
            page.goto(server.url)
            expect(page.get_by_role("link", name=f"sweep-{STUDY}", exact=True)).to_be_visible(timeout=TIMEOUT_MS)
            trials = page.get_by_role("link", name=re.compile(r"^trial-\d{3}$"))
            expect(trials).to_have_count(N_TRIALS)  # listed flat, not folded under the parent row
            shown = trials_in_table_order(page)
            assert sorted(shown) == sorted(best_value)
            scored = [best_value[name] for name in shown if best_value[name] is not None]
            assert scored and scored == sorted(scored, reverse=True)
            page.screenshot(path=shots[0])

            page.get_by_role("link", name="trial-000", exact=True).click()
            for name in ("depth", "block1.filters"):
                row = page.get_by_role("row").filter(has=page.get_by_text(name, exact=True))
                expect(row).to_have_text(re.compile(rf"^\s*{re.escape(name)}\s*{re.escape(trial_000.data.params[name])}\s*$"))

            open_filter_grid(page, server.url, best_run)
            page.screenshot(path=shots[1])

            report = context.new_page()  # a fresh page: the UI keeps the first run's artifact tree for the next run
            assert len(views) >= 3  # history, importances, parallel coordinates, ...
            open_plot_report(report, server.url, parent_run, len(views))
            report.screenshot(path=shots[2])
        finally:
            browser.close()
    print("screenshots:", *shots, "requests kept offline:", blocked)
