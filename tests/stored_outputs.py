"""A run's outputs against the notebook's stored ones, by nbval's rules, so that one run of a lecture checks both.

nbval re-runs a notebook in a kernel and compares, cell by cell, what each cell printed or displayed with what the
stored notebook holds. The browser test runs each lecture through JupyterLab instead, and hands the notebook model
the page ended with to ``differences``, which applies the same rules with nbval's own helpers:

- a cell tagged ``nbval-ignore-output`` (or ``# NBVAL_IGNORE_OUTPUT``) is not compared, one tagged ``nbval-skip`` is
  neither (nor run, under nbval); every other code cell is;
- streams of one name are joined and their ``\\r`` / ``\\b`` applied, as a terminal would show them;
- outputs are compared by key — each stream name and each MIME type of displayed data — in order within a key,
  except what nbval never compares: metadata, tracebacks, execution counts, PNG/JPEG images and widget model ids.
"""

import nbformat
from nbval.plugin import coalesce_streams, find_comment_markers, find_metadata_tags, transform_streams_for_comparison

NOT_COMPARED = ("metadata", "traceback", "prompt_number", "output_type", "name", "execution_count",
                "application/vnd.jupyter.widget-view+json", "image/png", "image/jpeg")  # nbval's skip_compare


def _joined(value):
    """nbformat stores text as a list of lines or one string; JupyterLab's model gives one string."""
    return "".join(value) if isinstance(value, list) and all(isinstance(v, str) for v in value) else value


def _by_key(outputs: list) -> dict:
    """nbval's flattening: {stream name or MIME type: [value, ...]} over a cell's outputs, in order."""
    outputs = [nbformat.from_dict(out) for out in outputs]
    for out in outputs:
        if out.output_type == "stream":
            out.text = _joined(out.text)
    flat = {}
    for out in transform_streams_for_comparison(coalesce_streams(outputs)):
        for key, value in out.items():
            if key in NOT_COMPARED:
                continue
            items = value.items() if key == "data" else [(key, value)]
            for name, item in items:
                if name not in NOT_COMPARED:
                    flat.setdefault(name, []).append(_joined(item))
    return flat


def compared(cell: dict) -> bool:
    """Whether nbval compares this code cell's outputs (its comment markers and tags, the latter winning)."""
    options = dict(find_comment_markers(_joined(cell.get("source", ""))))
    options.update(find_metadata_tags(cell.get("metadata", {})))
    return options.get("check", True) and not options.get("skip", False)


def _short(value, width: int = 160) -> str:
    text = repr(value)
    return text if len(text) <= width else text[:width] + "…"


def differences(stored: dict, run: dict) -> list[str]:
    """Where the `run` notebook's outputs differ from the `stored` one's (both nbformat dicts, same cells).

    One line per differing cell, numbered as in the notebook (markdown cells counted), naming the key and the first
    differing value; an empty list when nbval would pass the run.
    """
    if len(stored["cells"]) != len(run["cells"]):
        return [f"the run has {len(run['cells'])} cells, the stored notebook {len(stored['cells'])}"]
    found = []
    for i, (ref, new) in enumerate(zip(stored["cells"], run["cells"])):
        if ref["cell_type"] != "code" or not compared(ref):
            continue
        want, got = _by_key(ref.get("outputs", [])), _by_key(new.get("outputs", []))
        if want.keys() != got.keys():
            found.append(f"cell {i}: outputs {sorted(got)} where the stored notebook has {sorted(want)}")
            continue
        for key in want:
            if len(want[key]) != len(got[key]):
                found.append(f"cell {i}: {len(got[key])} {key} outputs where the stored notebook has {len(want[key])}")
                break
            if want[key] != got[key]:
                ref_value, new_value = next((a, b) for a, b in zip(want[key], got[key]) if a != b)
                found.append(f"cell {i}: {key} differs from the stored output: stored {_short(ref_value)}, "
                             f"run {_short(new_value)}")
                break
    return found
