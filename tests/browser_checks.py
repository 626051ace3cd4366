"""A real browser for the tests: Debian's Chromium driven by playwright, and what a page must show.

Used by ``test_browser_lectures.py`` (notebooks in JupyterLab) and ``test_website.py`` (the built course site).
The browser is the system's ``chromium`` (``apt-get install chromium``; ``.ci/setup-browser`` installs it in CI),
never one that playwright downloads: the machines that run the course may have no route to playwright's CDN.
"""

import os
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
ARTEFACTS = REPO / "outputs" / "browser"  # screenshots and the JupyterLab log: CI keeps this folder

PLOTLY_MIME = "application/vnd.plotly.v1+json"
WIDGET_MIME = "application/vnd.jupyter.widget-view+json"

# Console messages that are not the page's fault, each with why. Anything else logged as an error fails the test.
BENIGN_CONSOLE_ERRORS = (
    # JupyterLab's debugger asks every new kernel for its debug state; the tests close each notebook (and shut its
    # kernel down) as soon as it is checked, sometimes before the kernel answered, and the debugger logs that.
    "Could not restore the debugger state: Canceled future for debug_request",
)


def chromium_path() -> str:
    """The system Chromium; a test that needs it fails (never skips) when it is missing."""
    for name in (os.environ.get("CHROMIUM", ""), "chromium", "chromium-browser"):
        if name and shutil.which(name):
            return shutil.which(name)
    pytest.fail("no Chromium: install Debian's package (`apt-get install chromium`, or run .ci/setup-browser as "
                "root), or point CHROMIUM at a Chromium/Chrome executable", pytrace=False)


class ConsoleErrors(list):
    """Every JavaScript error a page reports: uncaught exceptions and console.error, minus the benign ones."""

    def watch(self, page):
        page.on("pageerror", self._on_uncaught)
        page.on("console", self._on_console)
        return page

    def _on_uncaught(self, exc):
        frames = [line.strip() for line in (exc.stack or "").splitlines() if line.strip().startswith("at ")]
        where = f" ({frames[0][:200]})" if frames else ""  # the script it came from: a notebook's output or Lab's
        self._add(f"uncaught: {str(exc).splitlines()[0][:300]}{where}")

    def _on_console(self, msg):
        if msg.type != "error":
            return
        where = (msg.location or {}).get("url", "")
        first_line = msg.text.splitlines()[0][:300] if msg.text else ""  # a stack trace adds nothing to find it
        text = f"{first_line} ({where})" if where else first_line
        self._add(f"console.error: {text}")

    def _add(self, text):
        if not any(noise in text for noise in BENIGN_CONSOLE_ERRORS):
            self.append(text)


def screenshot(page, name: str) -> Path:
    """A PNG of what the page shows now, into the CI artefact folder outputs/browser/."""
    ARTEFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTEFACTS / f"{name}.png"
    page.screenshot(path=str(path))
    return path
