"""Grading in CI: the JUnit report, the pass mark as the exit status, the ``--summary`` table, the class workflow.

One mixed batch of the warm-up exercise — its master, the blank student copy, a classic mistake, a notebook that
crashes its kernel, a file that is not a notebook — is graded once through the command line with every report
(``batch``); the tests read what it wrote. The exit-status tests feed the command that batch's results, so that
no kernel starts twice. The workflow template's ``run`` steps are run on a scratch class repository.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import junitparser
import nbformat
import pytest
import yaml
from test_grading import BROKEN, FIXTURES, MISTAKES, WARMUP, break_cell, model_answer, write

from text3d_edu.cli import main
from text3d_edu.grading import exercises, grader
from text3d_edu.grading.grader import PassMark, QuestionResult, SubmissionResult
from text3d_edu.grading.junit import NOT_GRADED_CASE, junit_xml

REPO = Path(__file__).resolve().parents[1]
TEMPLATE = REPO / "templates" / "github-classroom-grading.yml"
[OVERFLOW] = [m for m in MISTAKES if m["exercise"] == "00_warmup" and m["cell"] == "softplus"]  # loses 1 of 3


@pytest.fixture(scope="module")
def batch(tmp_path_factory) -> dict:
    """The mixed batch graded by ``text3d-edu grade --min-score 60% --summary --junit --json`` (jobs=2)."""
    root = tmp_path_factory.mktemp("batch")
    (root / "junk").mkdir()
    (root / "junk" / "00_warmup.ipynb").write_text("this is not a notebook")
    paths = {
        "solution": write(nbformat.read(WARMUP, as_version=4), root / "solution" / "00_warmup.ipynb"),
        "blank": write(exercises.student_copy(nbformat.read(WARMUP, as_version=4), "00_warmup"),
                       root / "blank" / "00_warmup.ipynb"),
        "wrong": write(break_cell(model_answer(WARMUP), OVERFLOW["cell"], OVERFLOW["find"], OVERFLOW["replace"]),
                       root / "wrong" / "00_warmup.ipynb"),
        "crash": write(break_cell(model_answer(WARMUP), *BROKEN["crash"]), root / "crash" / "00_warmup.ipynb"),
        "junk": root / "junk" / "00_warmup.ipynb",
    }
    step_summary = root / "step_summary.md"
    step_summary.write_text("written by an earlier step\n")
    junit, report = root / "grades.xml", root / "grades.json"
    results, grade_notebooks, stdout = [], grader.grade_notebooks, io.StringIO()

    def grade_and_keep(*args, **kwargs):  # the command's results, for the exit-status tests
        results.extend(grade_notebooks(*args, **kwargs))
        return results

    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(stdout):
        patch.setenv("GITHUB_STEP_SUMMARY", str(step_summary))
        patch.setattr(grader, "grade_notebooks", grade_and_keep)
        status = main(["grade", *map(str, paths.values()), "--solutions", str(FIXTURES / "solutions"),
                       "--jobs", "2", "--min-score", "60%", "--summary", "--junit", str(junit), "--json", str(report)])
    return {"status": status, "stdout": stdout.getvalue(), "step_summary": step_summary.read_text(),
            "junit": junit, "json": json.loads(report.read_text()), "paths": paths,
            "results": dict(zip(paths, results))}


def test_the_batch_scores_what_its_notebooks_deserve(batch):
    scores = {name: (r.graded, r.score, r.max_score) for name, r in batch["results"].items()}
    assert scores == {"solution": (True, 3, 3), "blank": (True, 0, 3), "wrong": (True, 2, 3),
                      "crash": (True, 1, 3), "junk": (False, 0, 0)}


# --- the JUnit file ---------------------------------------------------------------------------------------------

# The common JUnit XML structure, as https://github.com/testmoapp/junitxml documents it: the children each element
# may have, and the attributes it must have.
CHILDREN = {
    "testsuites": {"testsuite"},
    "testsuite": {"properties", "testcase", "system-out", "system-err"},
    "properties": {"property"},
    "testcase": {"properties", "failure", "error", "skipped", "system-out", "system-err"},
    **{leaf: set() for leaf in ("property", "failure", "error", "skipped", "system-out", "system-err")},
}
REQUIRED = {
    "testsuites": {"tests", "failures", "errors", "skipped"},
    "testsuite": {"name", "tests", "failures", "errors", "skipped"},
    "testcase": {"name", "classname"},
    "property": {"name", "value"},
    "failure": {"message"},
    "error": {"message"},
}
OUTCOMES = ("failure", "error", "skipped")


def _count_with(cases: list[ET.Element], outcome: str) -> int:
    return sum(case.find(outcome) is not None for case in cases)


def check_junit_structure(root: ET.Element) -> None:
    """Raise AssertionError where ``root`` strays from the common JUnit structure or its counts are wrong."""
    assert root.tag == "testsuites"
    for element in root.iter():
        assert element.tag in CHILDREN, f"unknown element <{element.tag}>"
        assert {child.tag for child in element} <= CHILDREN[element.tag], f"<{element.tag}> holds {list(element)}"
        assert REQUIRED.get(element.tag, set()) <= set(element.attrib), f"<{element.tag}> lacks attributes"
    for suite in root:
        cases = suite.findall("testcase")
        assert all(len([child for child in case if child.tag in OUTCOMES]) <= 1 for case in cases)
        counts = {"tests": len(cases), "failures": _count_with(cases, "failure"), "errors": _count_with(cases, "error"),
                  "skipped": _count_with(cases, "skipped")}
        assert {name: int(suite.get(name)) for name in counts} == counts, suite.get("name")
    for name in ("tests", "failures", "errors", "skipped"):
        assert int(root.get(name)) == sum(int(suite.get(name)) for suite in root), name


def test_junit_follows_the_common_schema(batch):
    check_junit_structure(ET.parse(batch["junit"]).getroot())


def test_the_structure_check_catches_wrong_counts_and_misplaced_elements():
    result = SubmissionResult("n.ipynb", "00_warmup", [QuestionResult("q", 0, 1, False, "hint")])
    check_junit_structure(junit_xml([result]).getroot())
    miscounted = junit_xml([result]).getroot()
    miscounted.find("testsuite").set("failures", "0")
    misplaced = junit_xml([result]).getroot()
    misplaced.append(ET.Element("testcase", name="q", classname="n"))
    for root in (miscounted, misplaced):
        with pytest.raises(AssertionError):
            check_junit_structure(root)


def test_junit_failures_are_exactly_the_questions_the_json_marks_lost(batch):
    root = ET.parse(batch["junit"]).getroot()
    suites = {suite.get("name"): suite for suite in root}
    submissions = batch["json"]["submissions"]
    assert list(suites) == [s["notebook"] for s in submissions] == [str(p) for p in batch["paths"].values()]
    for submission in submissions:
        suite = suites[submission["notebook"]]
        if not submission["questions"]:  # could not be graded
            continue
        cases = {case.get("name"): case for case in suite.findall("testcase")}
        assert list(cases) == [q["grade_id"] for q in submission["questions"]]
        lost = {q["grade_id"]: q["message"] for q in submission["questions"] if not q["passed"]}
        assert {name: case.find("failure").get("message") for name, case in cases.items()
                if case.find("failure") is not None} == lost
        points = {name: {p.get("name"): float(p.get("value")) for p in case.iter("property")}
                  for name, case in cases.items()}
        assert points == {q["grade_id"]: {"score": q["score"], "max_score": q["max_score"]}
                          for q in submission["questions"]}
        totals = {p.get("name"): p.get("value") for p in suite.find("properties")}
        assert (float(totals["score"]), float(totals["max_score"])) == (submission["score"], submission["max_score"])
    questions = [q for s in submissions for q in s["questions"]]
    not_graded = [s for s in submissions if not s["questions"]]
    assert (int(root.get("tests")), int(root.get("failures")), int(root.get("errors"))) == (
        len(questions) + len(not_graded), sum(not q["passed"] for q in questions), len(not_graded))


def test_unanswered_questions_fail_and_an_ungradable_notebook_is_an_error(batch):
    suites = {suite.get("name"): suite for suite in ET.parse(batch["junit"]).getroot()}
    blank = suites[str(batch["paths"]["blank"])]
    assert [case.find("failure").text for case in blank.iter("testcase")] == [
        "lost 2 of 2 points: NotImplementedError: not answered yet",
        "lost 1 of 1 points: NotImplementedError: not answered yet",
    ]
    junk = suites[str(batch["paths"]["junk"])]
    [case] = junk.findall("testcase")
    assert case.get("name") == NOT_GRADED_CASE and case.find("error").get("message").startswith("could not be graded")
    crash = suites[str(batch["paths"]["crash"])]
    assert "a new kernel re-ran the cells before it" in crash.find("system-out").text


def test_junit_is_read_by_junitparser_as_the_json_says(batch):
    """junitparser is what GitHub's publish-unit-test-result-action reads JUnit files with."""
    suites = {suite.name: suite for suite in junitparser.JUnitXml.fromfile(str(batch["junit"]))}
    for submission in batch["json"]["submissions"]:
        cases = list(suites[submission["notebook"]])
        if submission["questions"]:
            assert [(case.name, case.is_passed, case.is_failure) for case in cases] == [
                (q["grade_id"], q["passed"], not q["passed"]) for q in submission["questions"]]
        else:
            assert [(case.name, case.is_error) for case in cases] == [(NOT_GRADED_CASE, True)]


def test_junit_survives_characters_xml_cannot_hold():
    result = SubmissionResult("a/b.ipynb", "00_warmup", [QuestionResult("q", 0, 1, False, "bad \x1b[31m\x00 <&>")])
    root = ET.fromstring(ET.tostring(junit_xml([result]).getroot()))
    assert root.find(".//failure").get("message") == "bad \\x1b[31m\\x00 <&>"
    assert root.find(".//testcase").get("classname") == "a.b"


# --- the pass mark and the exit status ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "score", "max_score", "reached"),
    [("2", 2, 3, True), ("2.5", 2, 3, False), ("66%", 2, 3, True), ("67%", 2, 3, False), ("29%", 29, 100, True),
     ("100%", 3, 3, True), ("0", 0, 3, True)],
)
def test_pass_mark_in_points_or_percent(text, score, max_score, reached):
    result = SubmissionResult("n.ipynb", "00_warmup", [QuestionResult("q", score, max_score, score == max_score, "")])
    assert PassMark.parse(text).reached_by(result) is reached
    assert not PassMark.parse("0").reached_by(SubmissionResult("n.ipynb", None, graded=False))


@pytest.mark.parametrize("text", ["sixty", "101%", "-1", "nan", "%"])
def test_a_bad_pass_mark_is_refused_before_grading(text, capsys):
    assert main(["grade", "any.ipynb", "--min-score", text]) == 2
    assert f"got '{text}'" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("notebooks", "min_score", "status", "below"),
    [
        (["solution", "wrong"], "60%", 0, []),
        (["solution", "wrong"], "2", 0, []),
        (["solution", "wrong"], "67%", 1, ["wrong"]),  # 2 of 3 points
        (["solution", "crash", "blank"], "1", 1, ["blank"]),  # 1 of 3 and 0 of 3
        (["solution", "junk"], "0", 1, []),  # a notebook that could not be graded reaches no mark
        (["solution", "blank"], None, 0, []),  # no pass mark: graded is enough
        (["solution", "junk"], None, 1, []),
    ],
)
def test_exit_status_is_0_when_every_notebook_reaches_the_mark_and_1_otherwise(
        notebooks, min_score, status, below, batch, monkeypatch, capsys):
    results = [batch["results"][name] for name in notebooks]
    monkeypatch.setattr(grader, "grade_notebooks", lambda *args, **kwargs: results)
    argv = ["grade", *(r.notebook for r in results)] + (["--min-score", min_score] if min_score else [])
    assert main(argv) == status
    last_line = capsys.readouterr().out.splitlines()[-1]
    below_paths = ", ".join(str(batch["paths"][name]) for name in below)
    assert (f"below {PassMark.parse(min_score)}: {below_paths}" in last_line) if below else "below" not in last_line


def test_the_mixed_batch_exits_1(batch):
    assert batch["status"] == 1
    assert batch["stdout"].splitlines()[-1].startswith(
        f"graded 4 of 5 notebooks; not graded: {batch['paths']['junk']}; "
        f"below 60%: {batch['paths']['blank']}, {batch['paths']['crash']}; results in ")


def test_exit_status_is_2_when_the_grader_fails(tmp_path, monkeypatch, capsys):
    solution = write(nbformat.read(WARMUP, as_version=4), tmp_path / "00_warmup.ipynb")
    argv = ["grade", str(solution), "--solutions", str(FIXTURES / "solutions"), "--min-score", "0"]

    async def no_kernel(cells, notebook, master, limits, confinement):
        raise RuntimeError("Kernel didn't respond in 60 seconds")

    monkeypatch.setattr(grader, "run_notebook", no_kernel)
    assert main([*argv, "--junit", str(tmp_path / "grades.xml")]) == 2
    [case] = ET.parse(tmp_path / "grades.xml").getroot().iter("testcase")
    assert "Kernel didn't respond" in case.find("error").get("message")

    assert main([*argv[:2], "--solutions", str(tmp_path / "no_masters_here")]) == 2
    assert "no master notebooks" in capsys.readouterr().err

    def broken_grader(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(grader, "grade_notebooks", broken_grader)
    assert main(argv) == 2
    assert "OSError: disk full" in capsys.readouterr().err


def test_help_documents_the_exit_status(capsys):
    with pytest.raises(SystemExit):
        main(["grade", "--help"])
    assert "0  every notebook was graded (and reaches --min-score" in capsys.readouterr().out


# --- the --summary table ----------------------------------------------------------------------------------------


def test_summary_prints_a_table_per_question(batch):
    table = batch["stdout"][batch["stdout"].index("2 of 5 notebooks reach 60%"):].splitlines()
    assert table[1].split() == ["notebook", "question", "points", "result"]
    rows = [line.split() for line in table[2:-1]]
    assert rows[:3] == [[str(batch["paths"]["solution"]), "exclusive_cumprod_test", "2/2", "PASS"],
                        ["softplus_test", "1/1", "PASS"], ["total", "3/3", "reaches", "60%"]]
    assert ["total", "1/3", "BELOW", "60%"] in rows and [str(batch["paths"]["junk"]), "NOT", "GRADED"] in rows


def test_summary_appends_github_markdown_to_the_step_summary(batch):
    written = batch["step_summary"]
    assert written.startswith("written by an earlier step\n### text3d-edu grade: 2 of 5 notebooks reach 60%\n")
    rows = [line for line in written.splitlines() if line.startswith("| ")]
    assert rows[:2] == ["| notebook | question | points | result |", "| --- | --- | ---: | --- |"]
    assert "|  | softplus_test | 0/1 | FAIL: hint: softplus must not overflow for large x |" in rows
    assert len(rows) == 2 + 4 * 3 + 1  # header, 2 questions and a total per graded notebook, 1 row for the junk


# --- the workflow template for a class repository -------------------------------------------------------------


def _steps() -> list[dict]:
    return yaml.safe_load(TEMPLATE.read_text())["jobs"]["grade"]["steps"]


def _checkout(steps: list[dict], name_part: str) -> dict:
    [step] = [s for s in steps if s.get("uses", "").startswith("actions/checkout") and name_part in s["name"]]
    return step["with"]


def test_template_fetches_the_masters_privately_never_from_the_students_repository():
    steps = _steps()
    masters = _checkout(steps, "masters")
    assert masters["token"] == "${{ secrets.MASTERS_TOKEN }}" and masters["persist-credentials"] is False
    assert "github.repository" not in masters["repository"]
    grade = next(s["run"] for s in steps if s.get("name") == "Grade")
    assert f"--solutions {masters['path']}/" in grade
    assert f"--solutions {_checkout(steps, 'student')['path']}" not in grade


def test_template_commands_grade_a_scratch_class_repository(tmp_path):
    """The template's ``run`` steps, run as GitHub runs them (bash -eo pipefail, the workflow's env), in a
    workspace laid out as its checkout steps leave it; the install step is checked, not run (offline)."""
    workflow = yaml.safe_load(TEMPLATE.read_text())
    steps = workflow["jobs"]["grade"]["steps"]
    write(model_answer(WARMUP), tmp_path / _checkout(steps, "student")["path"] / "00_warmup.ipynb")
    (tmp_path / _checkout(steps, "student")["path"] / "README.md").write_text("my answers")
    shutil.copytree(FIXTURES / "solutions", tmp_path / _checkout(steps, "masters")["path"] / "solutions")
    env = {**os.environ, **workflow["env"], "GITHUB_STEP_SUMMARY": str(tmp_path / "summary.md"),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}

    runs = [step for step in steps if "run" in step]
    install = next(step for step in runs if step["name"] == "Install the course")
    assert install["run"].startswith("pip install") and install["run"].endswith('"$COURSE"')
    for step in runs:
        if step is install:
            continue
        assert "${{" not in step["run"], "run steps use the env block, so that this test runs them verbatim"
        done = subprocess.run(["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", step["run"]], cwd=tmp_path,
                              env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stdout + done.stderr

    [upload] = [step for step in steps if step.get("uses", "").startswith("actions/upload-artifact")]
    assert upload["if"] == "always()"
    uploaded = [tmp_path / line for line in upload["with"]["path"].split()]
    assert [path.suffix for path in uploaded] == [".xml", ".json"] and all(path.is_file() for path in uploaded)
    [submission] = json.loads(uploaded[1].read_text())["submissions"]
    assert (submission["score"], submission["max_score"]) == (3, 3)
    check_junit_structure(ET.parse(uploaded[0]).getroot())
    assert "1 of 1 notebooks reach 60%" in (tmp_path / "summary.md").read_text()
