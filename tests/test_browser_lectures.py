"""Every lecture in a real browser (issue 17): JupyterLab on 127.0.0.1 with a token, headless Chromium, Run All.

Each lecture is run through JupyterLab's own "Run All Cells" command and must end with no error output, every plotly
figure drawn (an SVG or a WebGL canvas in its output area), every ipywidget rendered, and no JavaScript error in the
page. The stored notebooks (lectures and solutions, opened and not run) must display their outputs as saved: no
error, plotly figures drawn, each widget's model saved in the notebook. A screenshot of each lands in
outputs/browser/ (CI keeps that folder), with lab-report.jsonl: one line per notebook, its problems and seconds.

The fixtures in tests/browser_fixtures/ show that the checks can fail: a notebook that raises and one whose plotly
output cannot draw fail both run and stored; a widget output without a saved model fails stored; a small good
notebook with a figure and a widget passes.
"""

import hashlib
import json

import pytest
from browser_checks import ARTEFACTS, REPO, chromium_path
from jupyterlab_browser import JupyterLab, NotebookPage
from playwright.sync_api import sync_playwright

pytestmark = pytest.mark.browser

LECTURES = sorted(p.relative_to(REPO).as_posix() for p in (REPO / "lectures").glob("*.ipynb"))
SOLUTIONS = sorted(p.relative_to(REPO).as_posix() for p in (REPO / "solutions").glob("*.ipynb"))
FIXTURES = "tests/browser_fixtures"


@pytest.fixture(scope="module")
def notebooks(tmp_path_factory):
    with JupyterLab(tmp_path_factory.mktemp("jupyterlab")) as lab, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium_path())
        (ARTEFACTS / "lab-report.jsonl").unlink(missing_ok=True)
        page = NotebookPage(browser, lab)
        yield page
        page.close()
        browser.close()


def check(notebooks, path: str, run: bool) -> dict:
    """Check one notebook and log the result to outputs/browser/lab-report.jsonl."""
    report = notebooks.check(path, run=run)
    with open(ARTEFACTS / "lab-report.jsonl", "a") as log:
        log.write(json.dumps({"notebook": path, "run": run, **report}, default=str) + "\n")
    return report


def digest(path: str) -> str:
    return hashlib.sha256((REPO / path).read_bytes()).hexdigest()


def test_good_notebook_passes(notebooks):
    report = check(notebooks, f"{FIXTURES}/good.ipynb", run=True)
    assert report["problems"] == []
    assert (report["plotly"], report["widgets"]) == (1, 1)


@pytest.mark.parametrize("run", [True, False], ids=["run", "stored"])
def test_notebook_that_raises_fails(notebooks, run):
    report = check(notebooks, f"{FIXTURES}/raises.ipynb", run=run)
    assert report["problems"] == ["error output: cell 1: ValueError: this fixture raises on purpose"]


@pytest.mark.parametrize("run", [True, False], ids=["run", "stored"])
def test_broken_plotly_output_fails(notebooks, run):
    problems = check(notebooks, f"{FIXTURES}/broken_plotly.ipynb", run=run)["problems"]
    assert "plotly figure in cell 1 did not draw" in problems
    assert any(p.startswith("console.error: TypeError") for p in problems)  # plotly.js threw while drawing


def test_widget_without_saved_model_fails_stored(notebooks):
    problems = check(notebooks, f"{FIXTURES}/missing_widget.ipynb", run=False)["problems"]
    assert problems == ["widget in cell 1 has no saved model: '[1]:IntSlider(value=0)'"]


@pytest.mark.parametrize("path", LECTURES + SOLUTIONS)
def test_stored_notebook_displays(notebooks, path):
    report = check(notebooks, path, run=False)
    assert report["problems"] == [], f"{path} as stored, see {report['screenshot']}"


@pytest.mark.parametrize("path", LECTURES)
def test_lecture_runs_in_jupyterlab(notebooks, path):
    before = digest(path)
    report = check(notebooks, path, run=True)
    assert report["problems"] == [], f"{path} run in JupyterLab, see {report['screenshot']}"
    assert digest(path) == before, "the browser's run must not write into the stored notebook"
