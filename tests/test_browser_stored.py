"""The stored notebooks in a real browser, and the checks of the browser tests shown to fail (issue 17).

Every lecture and solution is opened in JupyterLab (headless Chromium) as stored, not run: its outputs must display
as saved — no error output, each plotly figure drawn, each ipywidget's model saved in the notebook (what lets
nbviewer or the course website draw it without a kernel), no JavaScript error. The fixtures in
tests/browser_fixtures/ show that the checks of both modes can fail: a notebook that raises and one whose plotly
output cannot draw fail run and stored; a widget output without a saved model fails stored; a stored output that
no longer matches what its cell prints fails run; a small good notebook with a figure and a widget passes when run.
Screenshots in outputs/browser/, one line per notebook in test_browser_stored.jsonl.
"""

import pytest
from browser_checks import REPO
from jupyterlab_browser import notebook_page  # noqa: F401 -- the fixture

pytestmark = pytest.mark.browser

STORED = sorted(p.relative_to(REPO).as_posix() for folder in ("lectures", "solutions")
                for p in (REPO / folder).glob("*.ipynb"))
FIXTURES = "tests/browser_fixtures"


def test_good_notebook_passes(notebook_page):  # noqa: F811
    report = notebook_page.check(f"{FIXTURES}/good.ipynb", run=True)
    assert report["problems"] == []
    assert (report["plotly"], report["widgets"]) == (1, 1)


@pytest.mark.parametrize("run", [True, False], ids=["run", "stored"])
def test_notebook_that_raises_fails(notebook_page, run):  # noqa: F811
    report = notebook_page.check(f"{FIXTURES}/raises.ipynb", run=run)
    assert report["problems"] == ["error output: cell 1: ValueError: this fixture raises on purpose"]


@pytest.mark.parametrize("run", [True, False], ids=["run", "stored"])
def test_broken_plotly_output_fails(notebook_page, run):  # noqa: F811
    problems = notebook_page.check(f"{FIXTURES}/broken_plotly.ipynb", run=run)["problems"]
    assert "plotly figure in cell 1 did not draw" in problems
    assert any(p.startswith("console.error: TypeError") for p in problems)  # plotly.js threw while drawing


def test_widget_without_saved_model_fails_stored(notebook_page):  # noqa: F811
    problems = notebook_page.check(f"{FIXTURES}/missing_widget.ipynb", run=False)["problems"]
    assert problems == ["widget in cell 1 has no saved model: '[1]:IntSlider(value=0)'"]


@pytest.mark.parametrize("path", STORED)
def test_stored_notebook_displays(notebook_page, path):  # noqa: F811
    report = notebook_page.check(path, run=False)
    assert report["problems"] == [], f"{path} as stored, see {report['screenshot']}"


def test_stale_output_fails_run(notebook_page):  # noqa: F811
    problems = notebook_page.check(f"{FIXTURES}/stale_output.ipynb", run=True)["problems"]
    assert problems == ["stale output: cell 1: stdout differs from the stored output: stored '41\\n', run '42\\n'"]
