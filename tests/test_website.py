"""The course website (issue 17): Jupyter Book builds it from the repository, and every page works in a browser.

The table of contents (_toc.yml) must list the README's lecture map in its order, each lecture followed by its
exercise. The build runs the README's command (`jupyter-book build .`) with its output in a temporary folder, and
every page of the table of contents is opened in headless Chromium: it loads, logs no JavaScript error, draws each
plotly figure (as many as its notebook stores), shows its images, and links to no missing page or anchor. A small
broken page shows that each of those checks can fail.
"""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import plotly
import pytest
import yaml
from browser_checks import REPO, chromium_path
from playwright.sync_api import sync_playwright
from site_browser import check_page, serve

JUPYTER_BOOK = str(Path(sys.executable).parent / "jupyter-book")


def lecture_map() -> list:
    """The lecture and exercise notebooks of the README's lecture map, row by row (no suffix)."""
    section = (REPO / "README.md").read_text().split("## Lecture map")[1].split("\n## ")[0]
    rows = [row for row in section.splitlines() if re.match(r"\| \d\d \|", row)]
    return [path for row in rows for path in re.findall(r"\]\(((?:lectures|exercises)/[^)]+)\.ipynb\)", row)]


def toc_files() -> list:
    """Every file of _toc.yml, in reading order (the root first)."""
    toc = yaml.safe_load((REPO / "_toc.yml").read_text())

    def walk(entries):
        for entry in entries:
            yield entry["file"]
            yield from walk(entry.get("sections", []))

    return [toc["root"]] + [f for part in toc["parts"] for f in walk(part["chapters"])]


def plotly_outputs(notebook: Path) -> int:
    cells = json.loads(notebook.read_text())["cells"]
    return sum("application/vnd.plotly.v1+json" in out.get("data", {}) for c in cells for out in c.get("outputs", []))


def test_toc_is_the_lecture_map():
    listed = [f for f in toc_files() if f.startswith(("lectures/", "exercises/"))]
    assert listed == lecture_map()
    assert len(listed) >= 2


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    out = tmp_path_factory.mktemp("book")
    build = subprocess.run([JUPYTER_BOOK, "build", ".", "--path-output", str(out)], cwd=REPO,
                           capture_output=True, text=True, timeout=900)
    assert build.returncode == 0, build.stdout[-4000:] + build.stderr[-4000:]
    warnings = [line for line in (build.stdout + build.stderr).splitlines() if "WARNING" in line]
    assert warnings == [], "\n".join(warnings)
    return out / "_build" / "html"


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium_path())
        yield browser
        browser.close()


@pytest.mark.browser
@pytest.mark.parametrize("page", ["index"] + toc_files())
def test_page_works_in_browser(site, browser, page):
    with serve(site) as base:
        report = check_page(browser, base, site, f"{page}.html")
    assert report["problems"] == []
    notebook = REPO / f"{page}.ipynb"
    if notebook.exists():  # the figures are interactive plotly, not their text fallback
        assert report["plotly"] == plotly_outputs(notebook)


BROKEN_PAGE = """<!DOCTYPE html><html><head><script src="plotly.min.js"></script></head><body>
<h1 id="top">A page with every fault the site test looks for</h1>
<div id="figure" class="plotly-graph-div" style="height: 300px"></div>
<script>Plotly.newPlot("figure", "not a list of traces", {});</script>
<img src="missing.png" alt="no such image">
<a href="missing.html">no such page</a> <a href="page.html#nowhere">no such anchor</a> <a href="page.html#top">fine</a>
</body></html>"""


@pytest.mark.browser
def test_broken_page_fails(browser, tmp_path):
    shutil.copyfile(Path(plotly.__file__).parent / "package_data" / "plotly.min.js", tmp_path / "plotly.min.js")
    (tmp_path / "page.html").write_text(BROKEN_PAGE)
    with serve(tmp_path) as base:
        problems = check_page(browser, base, tmp_path, "page.html")["problems"]
    assert "plotly figure 0 did not draw" in problems
    assert "image did not load: missing.png" in problems
    assert f"broken link: {base}missing.html (no such file)" in problems
    assert f"broken link: {base}page.html#nowhere (no such anchor)" in problems
    assert not any("#top" in p for p in problems)
    assert any(p.startswith("console.error: Failed to load resource") for p in problems)  # the missing image
