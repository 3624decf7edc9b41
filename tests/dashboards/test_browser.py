"""The MLflow UI in headless Chromium after a real tiny sweep: what a user opens `convsweep ui` to see.

    python -m pytest tests/dashboards/test_browser.py -s     # -s prints the screenshots' paths

Needs Debian's chromium (`apt-get install chromium`; `.ci/run` installs it). Outside CI a machine
without it skips this test; in CI (CI=true) its absence fails.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path
from typing import Callable

import pytest
from mlflow import MlflowClient
from playwright.sync_api import Page, expect, sync_playwright

from convsweep.search.storage import resolve_locations
from tests.conftest import CONVSWEEP, CONVSWEEP_ENV, UiProcess

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
# Root in a container needs --no-sandbox; the rest keeps Chromium off the (closed) network.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-quic"]
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


def open_filter_grid(page: Page, runs_url: str, run_id: str) -> None:
    """Open a run's Artifacts tab and click `cnn/filters.png`; the UI must fetch it and show the image."""
    path, _, query = runs_url.partition("?")  # keep `convsweep ui`'s query: the UI's "Model training" view
    page.goto(f"{path}/{run_id}/artifacts?{query}")
    filters = page.get_by_text("filters.png", exact=True)
    page.get_by_text("config.yaml", exact=True).wait_for()  # the artifact tree has loaded
    if not filters.is_visible():
        page.get_by_text("cnn", exact=True).click()
    with page.expect_response(lambda r: "get-artifact" in r.url and "filters.png" in r.url) as fetched:
        filters.click()
    assert fetched.value.ok and fetched.value.headers["content-type"] == "image/png"
    image = page.get_by_role("img", name="cnn/filters.png")
    expect(image).to_be_visible()
    assert image.evaluate("img => img.naturalWidth") > 0


def test_mlflow_ui_shows_the_sweep_its_trials_params_and_filter_grid(
        tmp_path: Path, free_port: Callable[[], int], start_ui: Callable[..., UiProcess]) -> None:
    if not CHROMIUM.exists():
        if os.environ.get("CI") == "true":
            pytest.fail(f"{CHROMIUM} is missing in CI: .ci/run should apt-get install chromium")
        pytest.skip(f"{CHROMIUM} is missing: apt-get install chromium to run the browser test")
    run_dir = tmp_path / "runs"
    best_run = run_tiny_sweep(run_dir)
    client = MlflowClient(resolve_locations({"run_dir": str(run_dir)}).mlflow_uri)
    trial_000 = client.search_runs([client.get_experiment_by_name(STUDY).experiment_id],
                                   filter_string="attributes.run_name = 'trial-000'")[0]
    server = start_ui("--port", str(free_port()), f"tracking.run_dir={run_dir}", f"search.study_name={STUDY}")
    shots = [tmp_path / "runs-list.png", tmp_path / "filter-grid.png"]

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1600, "height": 1000})
            page.set_default_timeout(60_000)  # the first page load compiles MLflow's large JS bundle
            page.goto(server.url)
            parent = page.get_by_role("link", name=f"sweep-{STUDY}", exact=True)
            expect(parent).to_be_visible()
            page.get_by_role("gridcell").filter(has=parent).get_by_role("button").click()  # unfold the nested trials
            trials = page.get_by_role("link", name=re.compile(r"^trial-\d{3}$"))
            expect(trials).to_have_count(N_TRIALS)
            page.screenshot(path=shots[0])

            page.get_by_role("link", name="trial-000", exact=True).click()
            for name in ("depth", "block1.filters"):
                row = page.get_by_role("row").filter(has=page.get_by_text(name, exact=True))
                expect(row).to_have_text(re.compile(rf"^\s*{re.escape(name)}\s*{re.escape(trial_000.data.params[name])}\s*$"))

            open_filter_grid(page, server.url, best_run)
            page.screenshot(path=shots[1])
        finally:
            browser.close()
    print("screenshots:", *shots)
