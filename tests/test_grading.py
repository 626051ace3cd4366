"""Exercises and autograding.

The student copy is generated from the master and runs to the end; the grader gives the master and the model
answer full marks, the unanswered copy zero, and each classic mistake (``grading_fixtures/mistakes.json``)
exactly the points of its question; broken submissions (endless loops, memory hogs, crashes, vandalism,
edited tests, unreadable files) are contained and reported while the rest is still graded.

Every master in ``solutions/`` is covered automatically, next to the small numpy-only fixture master
``grading_fixtures/solutions/00_warmup.ipynb``. Kernels are started in batches (``grade_notebooks(jobs=2)``)
in module-scoped fixtures, and the tests read the results.
"""

from __future__ import annotations

import ast
import csv
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from text3d_edu.cli import main
from text3d_edu.grading import exercises, grader
from text3d_edu.grading.exercises import nbgrader
from text3d_edu.grading.sandbox import Limits

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).resolve().parent / "grading_fixtures"
WARMUP = FIXTURES / "solutions" / "00_warmup.ipynb"
MASTERS = sorted([*(REPO / "solutions").glob("*.ipynb"), *(FIXTURES / "solutions").glob("*.ipynb")])
MISTAKES = json.loads((FIXTURES / "mistakes.json").read_text())["mistakes"]
_MARKER = re.compile(r"^[ \t]*### (BEGIN|END) SOLUTION[ \t]*\n?", re.MULTILINE)


# --- building submissions ---------------------------------------------------------------------------------


def model_answer(master_path: Path) -> nbformat.NotebookNode:
    """The student copy with every solution cell answered as the master does (markers dropped)."""
    master = nbformat.read(master_path, as_version=4)
    nb = exercises.student_copy(master, master_path.stem)
    for cell, original in zip(nb.cells, master.cells):
        if exercises.is_solution_cell(original):
            cell.source = _MARKER.sub("", original.source)
    return nb


def cell(nb: nbformat.NotebookNode, grade_id: str) -> nbformat.NotebookNode:
    return next(c for c in nb.cells if nbgrader(c).get("grade_id") == grade_id)


def break_cell(nb: nbformat.NotebookNode, grade_id: str, find: str, replace: str) -> nbformat.NotebookNode:
    target = cell(nb, grade_id)
    assert target.source.count(find) == 1, f"'{find}' must occur once in cell '{grade_id}'"
    target.source = target.source.replace(find, replace)
    return nb


def write(nb: nbformat.NotebookNode, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)
    return path


@pytest.fixture(scope="module")
def all_solutions(tmp_path_factory) -> Path:
    """The repository's masters and the fixture master in one --solutions folder."""
    folder = tmp_path_factory.mktemp("solutions")
    for master in MASTERS:
        shutil.copy(master, folder)
    return folder


@pytest.fixture(scope="module")
def generated(all_solutions, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("exercises")
    exercises.make_exercises(all_solutions, out)
    return out


# --- the student copy -------------------------------------------------------------------------------------


def test_solution_regions_become_the_stub_at_their_indentation():
    source = (
        "def f(x):\n    y = 1\n    ### BEGIN SOLUTION\n    return x + y\n    ### END SOLUTION\n\n"
        "### BEGIN SOLUTION\nz = 2\n### END SOLUTION"
    )
    assert exercises.clear_solutions(source) == (
        "def f(x):\n    y = 1\n    # YOUR CODE HERE\n    raise NotImplementedError()\n\n"
        "# YOUR CODE HERE\nraise NotImplementedError()"
    )
    assert exercises.clear_solutions("answer = 42") == "# YOUR CODE HERE\nraise NotImplementedError()"


def test_hidden_tests_are_removed_and_malformed_regions_fail_loudly():
    source = 'assert f(1) == 2, "hint"\n### BEGIN HIDDEN TESTS\nassert f(3) == 4\n### END HIDDEN TESTS'
    assert exercises.remove_hidden_tests(source) == 'assert f(1) == 2, "hint"'
    with pytest.raises(ValueError, match="never closed"):
        exercises.remove_hidden_tests("### BEGIN HIDDEN TESTS\nassert True")
    with pytest.raises(ValueError, match="without its BEGIN"):
        exercises.clear_solutions("x = 1\n### END SOLUTION")


def test_masters_with_unusable_metadata_are_rejected():
    master = nbformat.read(WARMUP, as_version=4)
    nbgrader(cell(master, "softplus"))["grade_id"] = "exclusive_cumprod"
    with pytest.raises(ValueError, match="grade_id used twice"):
        exercises.student_copy(master, "00_warmup")
    master = nbformat.read(WARMUP, as_version=4)
    del nbgrader(cell(master, "softplus_test"))["points"]
    with pytest.raises(ValueError, match="locked code cell with points"):
        exercises.student_copy(master, "00_warmup")


@pytest.mark.parametrize("master_path", MASTERS, ids=lambda p: p.stem)
def test_student_copy_hides_answers_and_keeps_nbgrader_metadata(master_path, generated):
    master = nbformat.read(master_path, as_version=4)
    copy = nbformat.read(generated / master_path.name, as_version=4)
    assert [c.metadata.get("nbgrader") for c in copy.cells] == [c.metadata.get("nbgrader") for c in master.cells]
    assert copy.metadata["text3d_edu"] == {"exercise": master_path.stem}
    text = (generated / master_path.name).read_text()
    assert "BEGIN SOLUTION" not in text and "HIDDEN TESTS" not in text
    code = [c for c in copy.cells if c.cell_type == "code"]
    assert all(c.outputs == [] and c.execution_count is None for c in code)
    for c in code:
        if exercises.is_solution_cell(c) or exercises.is_test_cell(c):
            assert exercises.RAISES_TAG in c.metadata["tags"]


REPO_MASTERS = sorted((REPO / "solutions").glob("*.ipynb"))


@pytest.mark.parametrize("master_path", REPO_MASTERS, ids=lambda p: p.stem)
def test_masters_open_with_their_lecture_one_thread_and_the_copy_to_grade(master_path):
    nb = nbformat.read(master_path, as_version=4)
    header = nb.cells[0].source
    assert f"lectures/{master_path.stem[:2]}_" in header, "the header names the lecture it exercises"
    assert f"text3d-edu grade my_work/{master_path.name}" in header and "grade exercises/" not in header
    first = next(c.source for c in nb.cells if c.cell_type == "code")
    assert first.startswith("import text3d_edu") and first.index("import text3d_edu") < first.index("import torch")
    assert "torch.set_num_threads(1)" in first


def test_a_function_name_has_one_contract_across_exercises():
    signatures: dict[str, tuple[str, str]] = {}
    for master_path in REPO_MASTERS:
        for c in nbformat.read(master_path, as_version=4).cells:
            if not exercises.is_solution_cell(c):
                continue
            for node in ast.walk(ast.parse(c.source)):
                if isinstance(node, ast.FunctionDef):
                    signature = ast.unparse(node.args)
                    seen = signatures.setdefault(node.name, (signature, master_path.stem))
                    assert seen[0] == signature, \
                        f"{node.name}: ({signature}) in {master_path.stem}, ({seen[0]}) in {seen[1]}"


def test_make_exercises_is_deterministic_writes_only_its_out_dir_and_checks(tmp_path, capsys):
    solutions = tmp_path / "solutions"
    shutil.copytree(FIXTURES / "solutions", solutions)
    before = {p: p.read_bytes() for p in solutions.iterdir()}
    out = tmp_path / "exercises"
    assert main(["make-exercises", "--solutions", str(solutions), "--out", str(out)]) == 0
    first = (out / "00_warmup.ipynb").read_bytes()
    assert main(["make-exercises", "--solutions", str(solutions), "--out", str(out)]) == 0
    assert (out / "00_warmup.ipynb").read_bytes() == first
    assert {p: p.read_bytes() for p in solutions.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exercises", "solutions"]
    assert main(["make-exercises", "--solutions", str(solutions), "--out", str(out), "--check"]) == 0

    (out / "00_warmup.ipynb").write_bytes(first.replace(b"YOUR CODE HERE", b"my answer"))
    (out / "99_orphan.ipynb").write_bytes(first)
    capsys.readouterr()
    assert main(["make-exercises", "--solutions", str(solutions), "--out", str(out), "--check"]) == 1
    err = capsys.readouterr().err
    assert "00_warmup.ipynb: differs from its master" in err and "99_orphan.ipynb: has no master" in err
    assert main(["make-exercises", "--solutions", str(solutions), "--out", str(solutions)]) == 2


def test_repository_exercises_are_exactly_what_make_exercises_writes():
    if list((REPO / "solutions").glob("*.ipynb")):
        assert exercises.stale_exercises(REPO / "solutions", REPO / "exercises") == []
    else:
        assert list((REPO / "exercises").glob("*.ipynb")) == []


def test_student_copies_run_to_the_end_under_nbclient_and_nbval(generated):
    for path in sorted(generated.glob("*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": generated}}).execute()
        assert all(c.execution_count for c in nb.cells if c.cell_type == "code" and c.source.strip())
    notebooks = sorted(p.name for p in generated.glob("*.ipynb"))
    nbval = subprocess.run(
        [sys.executable, *"-m pytest --nbval -q -p no:cacheprovider --rootdir .".split(), *notebooks],
        cwd=generated,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert nbval.returncode == 0, nbval.stdout[-3000:]


# --- grading a class: masters, unanswered copies, model answers, classic mistakes -------------------------


@pytest.fixture(scope="module")
def graded(all_solutions, generated, tmp_path_factory) -> dict[str, grader.SubmissionResult]:
    root = tmp_path_factory.mktemp("class")
    submissions = {}
    for master in MASTERS:
        submissions[f"master/{master.stem}"] = shutil.copy(master, root / master.name)
        submissions[f"unanswered/{master.stem}"] = shutil.copy(generated / master.name, root / f"blank_{master.name}")
        submissions[f"answered/{master.stem}"] = write(model_answer(master), root / f"model_{master.name}")
    for i, m in enumerate(MISTAKES):
        nb = break_cell(model_answer(all_solutions / f"{m['exercise']}.ipynb"), m["cell"], m["find"], m["replace"])
        submissions[f"mistake/{i}"] = write(nb, root / f"mistake{i}" / f"{m['exercise']}.ipynb")
    results = grader.grade_notebooks(submissions.values(), solutions=all_solutions, jobs=2)
    return dict(zip(submissions, results))


@pytest.mark.parametrize("master", MASTERS, ids=lambda p: p.stem)
def test_masters_and_model_answers_score_full_marks(master, graded):
    for kind in ("master", "answered"):
        result = graded[f"{kind}/{master.stem}"]
        assert result.graded and result.errors == [], result.errors
        assert result.max_score > 0 and result.score == result.max_score, result.questions
        assert result.sandbox["tests_in_kernel"] == {}, result.sandbox  # every test ran out of the student's reach


@pytest.mark.parametrize("master", MASTERS, ids=lambda p: p.stem)
def test_unanswered_copies_score_zero(master, graded):
    result = graded[f"unanswered/{master.stem}"]
    assert result.graded and result.errors == []
    assert result.score == 0 and not any(q.passed for q in result.questions)
    assert any("not answered yet" in q.message for q in result.questions)


@pytest.mark.parametrize("index", range(len(MISTAKES)), ids=[f"{m['exercise']}:{m['mistake']}" for m in MISTAKES])
def test_each_classic_mistake_loses_exactly_its_questions_points(index, graded):
    mistake, result = MISTAKES[index], graded[f"mistake/{index}"]
    failed = {q.grade_id for q in result.questions if not q.passed}
    assert failed == set(mistake["loses"]), [(q.grade_id, q.message) for q in result.questions]
    lost = sum(q.max_score for q in result.questions if q.grade_id in mistake["loses"])
    assert result.score == result.max_score - lost


# --- broken submissions are contained -----------------------------------------------------------------------

BROKEN = {
    "endless_loop": ("exclusive_cumprod", "inclusive = ", "while True:\n        pass\n    inclusive = "),
    "ignores_interrupt": (
        "exclusive_cumprod",
        "inclusive = ",
        "import signal\n    signal.signal(signal.SIGINT, signal.SIG_IGN)\n    while True:\n        pass\n"
        "    inclusive = ",
    ),
    "memory_hog": (
        "exclusive_cumprod",
        "inclusive = ",
        "hog = [bytearray(2**26) for _ in iter(int, 1)]\n    inclusive = ",
    ),
    "crash": ("exclusive_cumprod", "inclusive = ", "import os\n    os._exit(1)\n    inclusive = "),
}
VANDAL = """
import glob, os, shutil
for path in glob.glob("*") + glob.glob("../*"):
    shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
with open("../grades.csv", "w") as f:
    f.write("me,100\\n")
"""


def _folder_state(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def broken(tmp_path_factory) -> dict:
    """Broken variants of the warm-up's model answer, each in a student folder with other files around it."""
    root = tmp_path_factory.mktemp("broken")
    paths = {}
    for name, (grade_id, find, replace) in BROKEN.items():
        paths[name] = write(break_cell(model_answer(WARMUP), grade_id, find, replace), root / name / "00_warmup.ipynb")

    vandal = model_answer(WARMUP)
    cell(vandal, "exclusive_cumprod").source += "\n" + VANDAL
    paths["vandal"] = write(vandal, root / "vandal" / "00_warmup.ipynb")
    (root / "vandal" / "notes.txt").write_text("my notes")
    write(model_answer(WARMUP), root / "vandal" / "drafts" / "draft.ipynb")

    raises = model_answer(WARMUP)
    cell(raises, "imports").source = "import nump as np"
    raises.cells.insert(0, nbformat.v4.new_code_cell("import a_module_that_does_not_exist"))
    paths["raises_at_import"] = write(raises, root / "raises" / "00_warmup.ipynb")

    edited = break_cell(model_answer(WARMUP), "exclusive_cumprod", "inclusive[..., :-1]", "inclusive[..., 1:]")
    cell(edited, "exclusive_cumprod_test").source = "pass"
    deleted = break_cell(edited, "softplus", "np.logaddexp(0.0, beta * x)", "np.log(1.0 + np.exp(beta * x))")
    deleted.cells.remove(cell(deleted, "softplus_test"))
    paths["edits_tests"] = write(deleted, root / "edits" / "00_warmup.ipynb")

    (root / "junk").mkdir()
    (root / "junk" / "00_warmup.ipynb").write_text("this is not a notebook")
    paths["junk"] = root / "junk" / "00_warmup.ipynb"
    paths["no_master"] = write(nbformat.v4.new_notebook(), root / "other" / "homework.ipynb")

    folders = {name: _folder_state(path.parent) for name, path in paths.items()}
    limits = Limits(cell_timeout=5, notebook_timeout=60, memory_mb=1024)
    results = grader.grade_notebooks(paths.values(), solutions=FIXTURES / "solutions", limits=limits, jobs=2)
    return {"results": dict(zip(paths, results)), "folders": folders, "paths": paths}


def _outcome(result) -> dict[str, tuple[bool, str]]:
    return {q.grade_id: (q.passed, q.message) for q in result.questions}


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("endless_loop", "timed out after 5 s"),
        ("ignores_interrupt", "timed out after 5 s"),
        ("memory_hog", "MemoryError"),
        ("crash", "the kernel died"),
    ],
)
def test_a_runaway_question_scores_zero_and_the_next_is_still_graded(name, message, broken):
    result = broken["results"][name]
    assert result.graded and result.score == 1 and result.max_score == 3
    outcome = _outcome(result)
    assert not outcome["exclusive_cumprod_test"][0] and message in outcome["exclusive_cumprod_test"][1]
    assert outcome["softplus_test"] == (True, "")
    assert ("a new kernel re-ran" in " ".join(result.errors)) == (name in ("ignores_interrupt", "crash"))


def test_files_around_a_submission_are_never_touched(broken):
    for name, path in broken["paths"].items():
        assert _folder_state(path.parent) == broken["folders"][name], name
    vandal = broken["results"]["vandal"]
    assert vandal.score == vandal.max_score == 3


def test_a_submission_raising_at_import_is_graded_on_the_original_given_code(broken):
    result = broken["results"]["raises_at_import"]
    assert result.score == result.max_score == 3
    assert result.errors == ["locked cell 'imports' was changed; the original was run"]


def test_edited_or_deleted_tests_are_reported_and_the_originals_run(broken):
    result = broken["results"]["edits_tests"]
    assert result.score == 0
    assert result.errors == [
        "locked cell 'exclusive_cumprod_test' was changed; the original was run",
        "locked cell 'softplus_test' was deleted; the original was run",
    ]
    outcome = _outcome(result)
    assert outcome["exclusive_cumprod_test"][1] == "hint: out[0] must be 1 and out[i] the product of x[:i] (EXCLUSIVE)"
    assert outcome["softplus_test"][1] == "hint: softplus must not overflow for large x"


def test_unreadable_or_unknown_notebooks_are_reported_not_graded(broken):
    for name in ("junk", "no_master"):
        result = broken["results"][name]
        assert not result.graded and result.questions == [] and "could not be graded" in result.errors[0]


def test_the_notebook_time_limit_stops_the_remaining_cells(tmp_path):
    path = write(break_cell(model_answer(WARMUP), *BROKEN["endless_loop"]), tmp_path / "00_warmup.ipynb")
    # a generous notebook limit, so that the cells before the loop finish in time even on a busy machine
    [result] = grader.grade_notebooks([path], solutions=FIXTURES / "solutions", limits=Limits(60, 10))
    outcome = _outcome(result)
    assert re.search(r"timed out after \d+ s", outcome["exclusive_cumprod_test"][1])
    assert outcome["softplus_test"] == (False, "not run: the notebook's time limit (10 s) was reached")


# --- what students and instructors read -----------------------------------------------------------------------


def test_grade_command_feedback_json_and_gradebook(tmp_path, capsys):
    wrong = break_cell(model_answer(WARMUP), "exclusive_cumprod", "cumprod(x, axis=-1)", "cumprod(x, axis=0)")
    submissions = [
        write(wrong, tmp_path / "alice" / "00_warmup.ipynb"),
        write(model_answer(WARMUP), tmp_path / "bob.ipynb"),
    ]
    out_json, out_csv = tmp_path / "grades.json", tmp_path / "grades.csv"
    argv = ["grade", *map(str, submissions), "--solutions", str(FIXTURES / "solutions"), "--jobs", "2"]
    assert main([*argv, "--json", str(out_json), "--csv", str(out_csv)]) == 0

    printed = capsys.readouterr().out
    assert "FAIL  exclusive_cumprod_test  0/2  hint: multiply along the last axis" in printed
    assert "PASS  softplus_test" in printed and "graded 2 of 2 notebooks" in printed
    hidden = [
        line
        for line in cell(nbformat.read(WARMUP, as_version=4), "exclusive_cumprod_test").source.splitlines()
        if "HIDDEN" not in line and "hint" not in line
    ]
    assert hidden and not any(line.strip() in printed for line in hidden)

    report = json.loads(out_json.read_text())
    assert list(report) == ["submissions"]
    alice, bob = report["submissions"]
    assert list(alice) == ["notebook", "score", "max_score", "errors", "questions", "sandbox"]
    assert alice["notebook"] == str(submissions[0]) and (alice["score"], alice["max_score"]) == (1, 3)
    assert alice["questions"][0] == {
        "grade_id": "exclusive_cumprod_test",
        "score": 0,
        "max_score": 2,
        "passed": False,
        "message": "hint: multiply along the last axis",
    }
    assert (bob["score"], bob["errors"]) == (3, [])

    rows = list(csv.DictReader(out_csv.open()))
    assert [(r["exercise"], r["score"], r["exclusive_cumprod_test"], r["softplus_test"]) for r in rows] == [
        ("00_warmup", "1", "0", "1"),
        ("00_warmup", "3", "2", "1"),
    ]

    assert main(["grade", str(tmp_path / "grades.json"), "--solutions", str(FIXTURES / "solutions")]) == 1
    assert "NOT GRADED" in capsys.readouterr().out


def test_default_solutions_are_the_repositorys():
    assert grader.default_solutions_dir() == REPO / "solutions"
