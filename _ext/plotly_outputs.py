"""Interactive plotly figures on the course website.

The notebooks store each plotly figure as its JSON (``application/vnd.plotly.v1+json``, what JupyterLab draws)
beside a ``text/plain`` fallback, and MyST-NB has no HTML renderer for that JSON: it would print the fallback.
This Sphinx extension gives it one — the figure's ``<div>`` and its ``Plotly.newPlot`` call, from plotly's own
``plotly.io.to_html`` — and ships the ``plotly.min.js`` of the installed plotly with the site, loaded only on pages
that have a figure, before any RequireJS that a widget page loads (plotly.js would register itself as an anonymous
AMD module instead of ``window.Plotly`` after it). No CDN: the site works offline.

MyST-NB finds mime renderers through the ``myst_nb.mime_renderers`` entry point of installed packages; this file is
a Jupyter Book local extension, not a package, so ``setup`` adds its renderer to the list MyST-NB reads.
"""

import functools
import hashlib
import json
import shutil
from pathlib import Path

import plotly
import plotly.io
from docutils import nodes
from myst_nb.core import render

PLOTLY_MIME = "application/vnd.plotly.v1+json"
PLOTLY_JS = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"


class PlotlyFigure:
    """A MyST-NB mime render plugin (``myst_nb.core.render.MimeRenderPlugin``) for plotly's JSON."""

    # Ahead of every other output of the same cell (html: widgets 10, text/html 30, ..., text/plain 120).
    mime_priority_overrides = [(builder, PLOTLY_MIME, 1) for builder in ("html", "dirhtml", "singlehtml")]

    @staticmethod
    def handle_mime(renderer, data, inline):
        if inline or data.mime_type != PLOTLY_MIME:
            return None
        figure = json.loads(data.content) if isinstance(data.content, (str, bytes)) else data.content
        # a stable id, so that rebuilding an unchanged notebook gives the same page
        digest = hashlib.sha1(f"{data.cell_index}/{data.output_index}/{json.dumps(figure, sort_keys=True)}"
                              .encode()).hexdigest()[:16]
        height = (figure.get("layout") or {}).get("height") or 525  # plotly's own default in a notebook
        html = plotly.io.to_html(figure, include_plotlyjs=False, full_html=False, validate=False,
                                 default_height=f"{height}px", div_id=f"plotly-{digest}")
        renderer.add_js_file("plotly", "plotly.min.js", {"priority": 100})
        return [nodes.raw("", html, format="html", classes=["output", "text_html"])]


def copy_plotly_js(app, exception):
    if exception is None and app.builder.format == "html":
        static = Path(app.builder.outdir) / "_static"
        static.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(PLOTLY_JS, static / "plotly.min.js")


def setup(app):
    installed = render.load_mime_renders
    render.load_mime_renders = functools.lru_cache(lambda: [*installed(), PlotlyFigure])
    app.connect("build-finished", copy_plotly_js)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
