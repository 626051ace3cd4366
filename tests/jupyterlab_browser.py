"""JupyterLab in a real browser: start a server, open a notebook, run all its cells through the UI, read what shows.

``JupyterLab`` starts ``jupyter lab`` on 127.0.0.1 with a random token and a free port, on the repository (so the
lectures run in their own folder, as a student runs them), with settings that keep the test honest and the files
untouched: no autosave (the stored notebooks are not overwritten by the browser's run), no windowing (every cell's
output is in the page, not only the visible ones), no news or update checks. ``NotebookPage.check`` opens one notebook
in a Chromium page, optionally runs it with JupyterLab's own "Run All Cells" command, and returns what went wrong;
``notebook_page`` is the pytest fixture that gives a test module both.
"""

import json
import secrets
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from browser_checks import ARTEFACTS, PLOTLY_MIME, REPO, WIDGET_MIME, ConsoleErrors, chromium_path, screenshot
from playwright.sync_api import sync_playwright
from stored_outputs import differences

SETTINGS = {  # user settings, one file per plugin, written into a fresh settings folder
    "@jupyterlab/docmanager-extension/plugin.jupyterlab-settings": {"autosave": False},
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {"fetchNews": "false",
                                                                         "checkForUpdates": False},
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class JupyterLab:
    """``with JupyterLab(tmp) as lab: lab.url("lab")`` — a server for this test session only."""

    def __init__(self, scratch: Path, root: Path = REPO):
        self.scratch, self.root = Path(scratch), Path(root)
        self.port, self.token = free_port(), secrets.token_hex(16)

    def url(self, path: str = "lab") -> str:
        return f"http://127.0.0.1:{self.port}/{path}?token={self.token}&reset"

    def __enter__(self):
        settings = self.scratch / "settings"
        for name, values in SETTINGS.items():
            (settings / name).parent.mkdir(parents=True, exist_ok=True)
            (settings / name).write_text(json.dumps(values))
        ARTEFACTS.mkdir(parents=True, exist_ok=True)
        self.log = open(ARTEFACTS / f"jupyterlab-{self.port}.log", "w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--ServerApp.ip=127.0.0.1",
             f"--ServerApp.port={self.port}", "--ServerApp.port_retries=0", f"--IdentityProvider.token={self.token}",
             f"--ServerApp.root_dir={self.root}", "--LabApp.expose_app_in_browser=True",
             f"--LabServerApp.user_settings_dir={settings}", f"--LabServerApp.workspaces_dir={self.scratch}",
             "--LabApp.check_for_updates_class=jupyterlab.handlers.announcements.NeverCheckForUpdate",
             "--LabApp.extension_manager=readonly", "--allow-root"],
            stdout=self.log, stderr=subprocess.STDOUT, cwd=self.root)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"jupyter lab exited with {self.process.returncode}: see {self.log.name}")
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.port}/api/status?token={self.token}", timeout=2)
                return self
            except OSError:
                time.sleep(0.5)
        self.__exit__()
        raise RuntimeError(f"jupyter lab did not answer within 120 s: see {self.log.name}")

    def __exit__(self, *exc):
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()


# Runs in the page. Opens `path` in JupyterLab's notebook editor, which starts the notebook's kernel.
OPEN = """async (path) => {
  const app = window.jupyterapp;
  await app.restored;
  const panel = await app.commands.execute('docmanager:open', {path, factory: 'Notebook'});
  await panel.context.ready;
  await panel.sessionContext.ready;
  app.shell.activateById(panel.id);
  window.__panel = panel;
  window.__run = null;
  return panel.sessionContext.session ? panel.sessionContext.session.kernel.name : null;
}"""

# JupyterLab's "Run All Cells" (the Run menu's command); window.__run says when the kernel has answered them all.
RUN_ALL = """() => {
  window.__run = 'running';
  window.jupyterapp.commands.execute('notebook:run-all-cells').then(
      () => { window.__run = 'done'; }, (e) => { window.__run = 'failed: ' + e; });
}"""

# What the page shows, output by output, from the notebook's model and the DOM it rendered.
# A stored (not run) notebook is untrusted and its kernel holds no widget, so JupyterLab shows a widget's text/plain
# fallback; ipywidgets 8 in JupyterLab 4 does not draw widgets from the state saved in a notebook either
# (jupyterlab/jupyterlab#15361). What makes a stored widget displayable without a kernel (nbviewer, the course site)
# is its model saved in the notebook's metadata: that is what `stored` checks.
INSPECT = """([plotlyMime, widgetMime, stored]) => {
  const found = {errors: [], plotly: [], widgets: [], pending: 0};
  const saved = ((window.__panel.context.model.getMetadata('widgets') || {})
                 ['application/vnd.jupyter.widget-state+json'] || {}).state || {};
  window.__panel.content.widgets.forEach((cell, i) => {
    if (cell.model.type !== 'code') return;
    if (cell.promptNode && cell.promptNode.textContent.includes('*')) found.pending += 1;
    const children = cell.outputArea.node.querySelectorAll(':scope > .jp-OutputArea-child');
    cell.model.outputs.toJSON().forEach((out, j) => {
      const node = children[j];
      if (out.output_type === 'error') found.errors.push(`cell ${i}: ${out.ename}: ${out.evalue}`);
      const data = out.data || {};
      if (plotlyMime in data) {
        // drawn: plotly.js accepted at least one trace, and made its SVG (2D) or WebGL canvas (3D)
        const gd = node && node.querySelector('.js-plotly-plot');
        const drawn = !!(gd && gd._fullData && gd._fullData.length > 0 && gd.querySelector('svg.main-svg, canvas'));
        found.plotly.push({cell: i, drawn});
      }
      if (widgetMime in data) {
        const text = node ? node.textContent : '';
        const rendered = stored ? data[widgetMime].model_id in saved
            : !!(node && node.querySelector('.jupyter-widgets')) && !text.includes('Error displaying');
        found.widgets.push({cell: i, rendered, text: text.slice(0, 200)});
      }
    });
  });
  return found;
}"""


# Shuts the notebook's kernel down and closes it unsaved, so the next notebook starts from a quiet page.
CLOSE = """async () => {
  const panel = window.__panel;
  await panel.sessionContext.shutdown();
  panel.context.model.dirty = false;
  panel.dispose();
}"""


class NotebookPage:
    """Chromium on a JupyterLab; ``check`` opens a notebook in a page of its own, runs it or not, and reports.

    A page per notebook, as a student opens one: a page reused across notebooks collected JavaScript errors from
    the figures of notebooks closed before (uncaught "reading 'removeChild'" in the next notebook's run).
    """

    def __init__(self, browser, lab: JupyterLab, log: Path):
        self.browser, self.lab = browser, lab
        self.log = log  # one JSON line per check: the notebook, its problems, its seconds
        self.log.unlink(missing_ok=True)
        self.errors = ConsoleErrors()

    def _open_lab(self):
        self.errors.clear()
        self.page = self.errors.watch(self.browser.new_page(viewport={"width": 1280, "height": 1600}))
        self.page.goto(self.lab.url("lab"), wait_until="domcontentloaded", timeout=120_000)
        self.page.wait_for_function("() => window.jupyterapp !== undefined", timeout=120_000)

    def _wait_drawn(self, stored: bool, timeout_s: float = 30) -> dict:
        """What INSPECT finds once every figure drew and every widget rendered, or when `timeout_s` ran out.

        Renderers draw asynchronously (plotly.js loads on first use, a WebGL scene takes a while on a busy CPU);
        a figure cleared while it is still drawing makes plotly.js throw, so nothing is run or closed before this.
        """
        deadline = time.monotonic() + timeout_s
        while True:
            found = self.page.evaluate(INSPECT, [PLOTLY_MIME, WIDGET_MIME, stored])
            settled = all(p["drawn"] for p in found["plotly"]) and all(w["rendered"] for w in found["widgets"])
            if settled or time.monotonic() > deadline:
                return found
            self.page.wait_for_timeout(500)

    def check(self, path: str, run: bool, timeout_s: float = 900) -> dict:
        """Open `path` (relative to the lab's root); with `run`, run all its cells with JupyterLab's Run All.

        Returns ``{"problems": [...], "plotly": n, "widgets": n, "seconds": s, "screenshot": path}``; no problem
        means: no error output, every plotly figure drew, every ipywidget rendered (a stored one: its model is
        saved), no cell left queued, the page logged no JavaScript error while the notebook was open, and (run) no
        stale output: each cell nbval compares printed and displayed what the stored notebook holds.
        """
        start = time.monotonic()
        self._open_lab()
        page = self.page
        if page.evaluate(OPEN, path) is None:
            page.close()
            return {"problems": [f"{path}: no kernel started"], "seconds": time.monotonic() - start}
        if run:
            self._wait_drawn(stored=True, timeout_s=15)  # as a reader would: stored outputs on screen, then Run All
            page.evaluate(RUN_ALL)
            page.wait_for_function("() => window.__run !== 'running'", timeout=timeout_s * 1000, polling=1000)
            if page.evaluate("() => window.__run") != "done":
                self.errors.append(f"Run All: {page.evaluate('() => window.__run')}")
        found = self._wait_drawn(stored=not run)
        if run:  # what nbval checks: every compared cell printed and displayed what the stored notebook holds
            stored = json.loads((self.lab.root / path).read_text())
            found["differs"] = differences(stored, page.evaluate("() => window.__panel.context.model.toJSON()"))
        name = Path(path).with_suffix("").as_posix().replace("/", "__") + ("" if run else "__stored")
        shot = screenshot(page, name)
        console = list(self.errors)  # what the notebook caused; closing it (disposing its figures) is the test's doing
        page.evaluate(CLOSE)
        page.close()
        problems = [f"error output: {e}" for e in found["errors"]]
        problems += [f"stale output: {d}" for d in found.get("differs", [])]
        problems += [f"plotly figure in cell {p['cell']} did not draw" for p in found["plotly"] if not p["drawn"]]
        problems += [f"widget in cell {w['cell']} " + ("has no saved model" if not run else "did not render")
                     + f": {w['text']!r}" for w in found["widgets"] if not w["rendered"]]
        if found["pending"]:
            problems.append(f"{found['pending']} cells still queued or running")
        problems += console
        report = {"problems": problems, "plotly": len(found["plotly"]), "widgets": len(found["widgets"]),
                  "seconds": round(time.monotonic() - start, 1), "screenshot": str(shot)}
        with open(self.log, "a") as log:
            log.write(json.dumps({"notebook": path, "run": run, **report}) + "\n")
        return report


@pytest.fixture(scope="module")
def notebook_page(tmp_path_factory, request):
    """A JupyterLab and a Chromium page on it for one test module, logging to outputs/browser/<module>.jsonl."""
    with JupyterLab(tmp_path_factory.mktemp("jupyterlab")) as lab, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium_path())
        page = NotebookPage(browser, lab, log=ARTEFACTS / f"{request.module.__name__}.jsonl")
        yield page
        browser.close()
