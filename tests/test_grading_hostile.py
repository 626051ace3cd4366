"""A grader that student code cannot fool or kill (issue 16): hostile and malformed submissions of the warm-up
exercise (numpy only, so each kernel is cheap), each graded beside an honest one that must score exactly what it
scores alone.

* nothing lost: malformed metadata or any other surprise in one file is that file's entry, never the batch's;
  results reach the progress log as each notebook finishes, and ``--resume`` after ``kill -9`` grades only
  what is left.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import nbformat
from test_grading import FIXTURES, WARMUP, cell, model_answer, write

from text3d_edu.grading import grader

SOLUTIONS = FIXTURES / "solutions"


def grade_command(*args: str | Path) -> list[str]:
    """``text3d-edu grade`` in a process of its own: a test must survive the grader being killed."""
    return [sys.executable, "-m", "text3d_edu.cli", "grade", *map(str, args), "--solutions", str(SOLUTIONS)]


def with_cell(nb: nbformat.NotebookNode, source: str) -> nbformat.NotebookNode:
    """``nb`` with one more ordinary code cell at the end."""
    nb.cells.append(nbformat.v4.new_code_cell(source))
    return nb


# --- nothing lost -------------------------------------------------------------------------------------------


def test_malformed_metadata_costs_only_its_own_notebook(tmp_path):
    oops = model_answer(WARMUP)
    cell(oops, "softplus").metadata["nbgrader"] = "oops"
    list_id = model_answer(WARMUP)
    cell(list_id, "exclusive_cumprod_test").metadata["nbgrader"]["grade_id"] = ["exclusive_cumprod_test"]
    recorded = model_answer(WARMUP)
    recorded.metadata["text3d_edu"] = "oops"
    paths = {
        "oops": write(oops, tmp_path / "oops" / "00_warmup.ipynb"),
        "list_id": write(list_id, tmp_path / "list_id" / "00_warmup.ipynb"),
        "recorded": write(recorded, tmp_path / "recorded" / "00_warmup.ipynb"),
        "int_source": tmp_path / "int_source" / "00_warmup.ipynb",
        "honest": write(model_answer(WARMUP), tmp_path / "honest" / "00_warmup.ipynb"),
    }
    broken = json.loads(paths["honest"].read_text())
    next(c for c in broken["cells"] if c["cell_type"] == "code")["source"] = 42
    paths["int_source"].parent.mkdir()
    paths["int_source"].write_text(json.dumps(broken))

    results = dict(zip(paths, grader.grade_notebooks(paths.values(), solutions=SOLUTIONS)))

    assert (results["oops"].score, results["oops"].max_score) == (3, 3)  # the answer still ran, as the student's
    assert results["oops"].errors == ["code cell 4: unusable nbgrader metadata; run as the student's own cell",
                                      "solution cell 'softplus' is missing"]
    assert results["list_id"].score == 3
    assert "locked cell 'exclusive_cumprod_test' was deleted; the original was run" in results["list_id"].errors
    assert results["recorded"].score == 3 and results["recorded"].errors == []
    bad = results["int_source"]
    assert not bad.graded and bad.errors[0].startswith("could not be graded: AttributeError")
    assert results["honest"].graded and (results["honest"].score, results["honest"].errors) == (3, [])


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def test_kill_9_mid_batch_then_resume_grades_only_what_is_left(tmp_path):
    # the first notebook is quick, the next two wait 4 s in a cell of their own: the kill lands in the second
    first = write(model_answer(WARMUP), tmp_path / "a" / "00_warmup.ipynb")
    rest = [write(with_cell(model_answer(WARMUP), "import time\ntime.sleep(4)"), tmp_path / name / "00_warmup.ipynb")
            for name in ("b", "c")]
    notebooks, report = [first, *rest], tmp_path / "out" / "grades.json"
    log = Path(f"{report}.jsonl")
    grading = subprocess.Popen(grade_command(*notebooks, "--json", report), stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not _lines(log) and time.monotonic() < deadline and grading.poll() is None:
        time.sleep(0.1)
    grading.kill()  # SIGKILL: no clean-up of any kind
    grading.wait()
    before = _lines(log)
    assert len(before) == 1 and not report.exists(), "the kill must land after the first result, before the last"
    assert json.loads(before[0])["result"]["notebook"] == str(first)

    resumed = subprocess.run(grade_command(*notebooks, "--json", report, "--resume"), capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert f"1 of 3 notebooks already graded in {log}" in resumed.stdout
    assert f"{first} (00_warmup)" not in resumed.stdout  # no feedback: it was not graded again
    after = _lines(log)
    assert after[:1] == before and len(after) == 3  # the first line untouched, one new line per notebook left
    graded = json.loads(report.read_text())["submissions"]
    assert [(s["notebook"], s["score"], s["max_score"]) for s in graded] == [(str(n), 3, 3) for n in notebooks]

    nbformat.write(with_cell(nbformat.read(first, as_version=4), "x = 1"), first)  # resubmitted: graded again
    again = subprocess.run(grade_command(*notebooks, "--json", report, "--resume"), capture_output=True, text=True)
    assert "2 of 3 notebooks already graded" in again.stdout and f"{first} (00_warmup): 3 / 3" in again.stdout
    assert len(_lines(log)) == 4


def test_resume_needs_a_progress_log(capsys):
    from text3d_edu.cli import main

    assert main(["grade", str(WARMUP), "--resume"]) == 2
    assert "--resume reads the progress log" in capsys.readouterr().err
