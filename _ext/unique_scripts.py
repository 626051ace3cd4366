"""One copy of each inline script per page of the course website.

sphinx-thebe (which Jupyter Book always loads) adds its inline configuration, ``const THEBE_JS_URL = ...``, on every
``env-before-read-docs``, and Sphinx 7.4 fires that event twice in a Jupyter Book build: the page then declares the
constant twice, and the browser logs "Identifier 'THEBE_JS_URL' has already been declared" on every page. This
extension drops repeated scripts (same file, same inline body) from each page; the same happens to
sphinx-togglebutton's ``var togglebuttonSelector``, harmless but dropped too.
"""


def drop_repeated_scripts(app, pagename, templatename, context, doctree):
    seen, unique = set(), []
    for script in context.get("script_files", []):
        # an inline script's file is None or "" depending on who added it: both mean "inline"
        key = (getattr(script, "filename", script) or "", tuple(sorted(getattr(script, "attributes", {}).items())))
        if key not in seen:
            seen.add(key)
            unique.append(script)
    context["script_files"][:] = unique  # in place: it is the builder's own list


def setup(app):
    app.connect("html-page-context", drop_repeated_scripts, priority=900)  # after every extension added its own
    return {"parallel_read_safe": True, "parallel_write_safe": True}
