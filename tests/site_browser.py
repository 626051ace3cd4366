"""The built course website in a real browser: serve it on 127.0.0.1, open a page, report what is wrong with it.

``serve(folder)`` serves a built site (``_build/html``) over HTTP, as a reader's browser gets it. ``check_page``
loads one page in Chromium and returns its problems: a JavaScript error, a plotly figure that did not draw, an
image that did not load, a link to a page or an anchor of the site that does not exist.
"""

import functools
import http.server
import re
import threading
import urllib.parse
from contextlib import contextmanager
from pathlib import Path

from browser_checks import ConsoleErrors, screenshot

# The only off-site addresses the built site may ask for: Sphinx loads MathJax from jsDelivr to typeset the maths, and
# MyST-NB loads RequireJS and the ipywidgets HTML manager from these CDNs on a page with saved widgets, to draw them.
# The machines that run the tests have no route to them, so the test blocks them (the maths shows as TeX, a widget
# as its text fallback); every other file must come from the site itself, and a failure to load it is a problem.
CDNS = ("https://cdn.jsdelivr.net/npm/mathjax@3/", "https://cdnjs.cloudflare.com/ajax/libs/require.js/",
        "https://cdn.jsdelivr.net/npm/@jupyter-widgets/")

PAGE = """() => {
  const plotly = Array.from(document.querySelectorAll('.plotly-graph-div')).map(gd =>
      !!(gd._fullData && gd._fullData.length > 0 && gd.querySelector('svg.main-svg, canvas')));
  const images = Array.from(document.querySelectorAll('img')).filter(img => !(img.complete && img.naturalWidth > 0))
      .map(img => img.getAttribute('src').slice(0, 80));
  const links = Array.from(document.querySelectorAll('a[href]')).map(a => a.href);
  return {plotly, images, links};
}"""


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


class _Server(http.server.ThreadingHTTPServer):
    def handle_error(self, request, client_address):
        pass  # a browser that closes a connection early (a favicon it gave up on) is not the site's fault


@contextmanager
def serve(folder: Path):
    """``with serve(site) as base: ...`` — an HTTP server for `folder` on a free port of 127.0.0.1."""
    server = _Server(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


def _anchors(html_file: Path) -> set:
    return set(re.findall(r'\bid="([^"]+)"', html_file.read_text(errors="replace")))


def broken_links(links, base: str, site: Path) -> list:
    """Links into the site whose file, or whose #anchor in that file, does not exist."""
    broken = []
    for link in links:
        if not link.startswith(base):
            continue  # off-site links (papers, GitHub) are not the build's to check, and there is no network here
        parsed = urllib.parse.urlsplit(link)
        target = site / urllib.parse.unquote(parsed.path[1:])
        if target.is_dir():
            target = target / "index.html"
        if not target.is_file():
            broken.append(f"{link} (no such file)")
        elif parsed.fragment and target.suffix == ".html" and urllib.parse.unquote(parsed.fragment) not in \
                _anchors(target):
            broken.append(f"{link} (no such anchor)")
    return broken


def check_page(browser, base: str, site: Path, page_path: str) -> dict:
    """Load `page_path` (relative to the site), screenshot it, and return ``{"problems": [...], "plotly": n}``."""
    errors = ConsoleErrors()
    page = errors.watch(browser.new_page(viewport={"width": 1280, "height": 1000}))
    page.route(re.compile("|".join(re.escape(cdn) for cdn in CDNS)), lambda route: route.abort())
    blocked = []  # requests to those CDNs, which fail by design here (see CDNS)
    page.on("requestfailed", lambda req: blocked.append(req.url) if req.url.startswith(CDNS) else None)
    try:
        response = page.goto(base + page_path, wait_until="load", timeout=120_000)
        problems = [] if response and response.ok else [f"HTTP {response.status if response else 'no response'}"]
        try:  # plotly draws after load: wait until every figure did (or give up and report the ones that did not)
            page.wait_for_function("() => Array.from(document.querySelectorAll('.plotly-graph-div'))"
                                   ".every(gd => gd._fullData && gd.querySelector('svg.main-svg, canvas'))",
                                   timeout=30_000)
        except Exception:  # noqa: BLE001 -- a timeout here is reported below as figures that did not draw
            pass
        found = page.evaluate(PAGE)
        screenshot(page, "site__" + page_path.removesuffix(".html").replace("/", "__"))
    finally:
        page.close()
    problems += [f"plotly figure {i} did not draw" for i, drawn in enumerate(found["plotly"]) if not drawn]
    problems += [f"image did not load: {src}" for src in found["images"]]
    problems += [f"broken link: {link}" for link in broken_links(found["links"], base, site)]
    # a blocked CDN script makes the browser log "Failed to load resource" at its address: expected, nothing else is
    problems += [e for e in errors if not any(url in e for url in blocked)]
    return {"problems": problems, "plotly": len(found["plotly"])}
