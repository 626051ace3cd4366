"""Every lecture in a real browser (issue 17): JupyterLab on 127.0.0.1 with a token, headless Chromium, Run All.

Each lecture is run through JupyterLab's own "Run All Cells" command and must end with no error output, every plotly
figure drawn (an SVG or a WebGL canvas in its output area), every ipywidget rendered, no cell left queued, no
JavaScript error in the page, and every compared cell's output what the stored notebook holds (nbval's rules,
tests/stored_outputs.py: this run replaces nbval's run of the lectures); the run must leave the stored notebook
untouched. A screenshot of each lands in outputs/browser/ (CI keeps that folder), with test_browser_lectures.jsonl:
one line per lecture, its problems and seconds. That the checks can fail is shown in test_browser_stored.py, on
tests/browser_fixtures/.
"""

import hashlib

import pytest
from browser_checks import REPO
from jupyterlab_browser import notebook_page  # noqa: F401 -- the fixture

pytestmark = [pytest.mark.browser, pytest.mark.browser_lectures]

LECTURES = sorted(p.relative_to(REPO).as_posix() for p in (REPO / "lectures").glob("*.ipynb"))


def digest(path: str) -> str:
    return hashlib.sha256((REPO / path).read_bytes()).hexdigest()


@pytest.mark.parametrize("path", LECTURES)
def test_lecture_runs_in_jupyterlab(notebook_page, path):  # noqa: F811
    before = digest(path)
    report = notebook_page.check(path, run=True)
    assert report["problems"] == [], f"{path} run in JupyterLab, see {report['screenshot']}"
    assert digest(path) == before, "the browser's run must not write into the stored notebook"
