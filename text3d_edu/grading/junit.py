"""``grade --junit FILE.xml``: the grades as a JUnit XML test report, for a CI system's per-test view.

The format is the de-facto one that Jenkins (JUnit plugin), GitLab (unit test reports), GitHub actions (e.g.
EnricoMi/publish-unit-test-result-action, which reads it with ``junitparser``) and pytest's ``--junitxml``
share; it is described, element by element, at https://github.com/testmoapp/junitxml. What is written::

    <testsuites name="text3d-edu grade" tests= failures= errors= skipped="0">   (the sums of the suites' counts)
      <testsuite name="submissions/alice/01_nerf.ipynb" tests= failures= errors= skipped="0">  (one per notebook)
        <properties>  exercise, score, max_score  </properties>
        <testcase name="fit_step_test" classname="submissions.alice.01_nerf">              (one per question)
          <properties>  score, max_score  </properties>
          <failure message="hint: ...">lost 3 of 3 points: hint: ...</failure>        (only when points were lost)
        </testcase>
        <system-out>the grader's notes (a locked cell edited, a kernel replaced), one per line</system-out>
      </testsuite>
    </testsuites>

* **a question that lost points** is a ``<failure>``, whatever the reason. That includes a question **not
  answered yet** (``raise NotImplementedError()`` still in place): every consumer shows a skipped test as not
  failing, so a blank exercise would look clean while scoring 0, and the failures would no longer be exactly
  the questions that lost points. The message is the grader's (the assertion's hint, or the error's name and
  value), never a traceback: a traceback of a test cell would show the hidden tests' code;
* **a notebook that could not be graded** (not a notebook, no master, no kernel) is a suite with one
  ``<testcase name="notebook">`` holding an ``<error>`` with the reason: it still appears, and counts as an
  error rather than as failed questions (its questions are unknown);
* ``classname`` is the notebook's path as a dotted name, as pytest writes it, so that consumers which split it
  into package and class (Jenkins) group by folder and notebook rather than by ``.ipynb``;
* no ``time`` attributes (optional in the format): the grader does not time questions.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path, PurePath

from text3d_edu.grading.grader import SubmissionResult

NOT_GRADED_CASE = "notebook"  # the testcase name of a notebook that could not be graded
# Characters XML 1.0 cannot hold at all (control characters other than tab and newlines, lone surrogates): a
# student's exception message may contain them, and one would make the whole file unreadable.
_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def _xml_text(text: str) -> str:
    """``text`` with each character XML cannot hold written as its escape, e.g. ``\\x1b``."""
    return _NOT_XML.sub(lambda match: match.group().encode("unicode_escape").decode("ascii"), text)


def _classname(notebook: str) -> str:
    """``submissions/alice/01_nerf.ipynb`` → ``submissions.alice.01_nerf``."""
    path = PurePath(notebook)
    return ".".join(part for part in path.with_suffix("").parts if part not in (path.anchor, ".."))


def _properties(parent: ET.Element, **values: str) -> None:
    properties = ET.SubElement(parent, "properties")
    for name, value in values.items():
        ET.SubElement(properties, "property", name=name, value=_xml_text(value))


def _counts(element: ET.Element, tests: int, failures: int, errors: int) -> None:
    element.set("tests", str(tests))
    element.set("failures", str(failures))
    element.set("errors", str(errors))
    element.set("skipped", "0")


def _suite(result: SubmissionResult) -> ET.Element:
    """One notebook's ``<testsuite>``."""
    suite = ET.Element("testsuite", name=_xml_text(result.notebook))
    classname = _xml_text(_classname(result.notebook))
    if not result.graded:
        _counts(suite, tests=1, failures=0, errors=1)
        case = ET.SubElement(suite, "testcase", name=NOT_GRADED_CASE, classname=classname)
        reason = _xml_text("; ".join(result.errors))
        ET.SubElement(case, "error", message=reason).text = reason
        return suite
    lost = [q for q in result.questions if not q.passed]
    _counts(suite, tests=len(result.questions), failures=len(lost), errors=0)
    _properties(suite, exercise=result.exercise, score=f"{result.score:g}", max_score=f"{result.max_score:g}")
    for question in result.questions:
        case = ET.SubElement(suite, "testcase", name=_xml_text(question.grade_id), classname=classname)
        _properties(case, score=f"{question.score:g}", max_score=f"{question.max_score:g}")
        if not question.passed:
            message = _xml_text(question.message)
            lost_points = question.max_score - question.score
            ET.SubElement(case, "failure", message=message).text = (
                f"lost {lost_points:g} of {question.max_score:g} points: {message}")
    if result.errors:
        ET.SubElement(suite, "system-out").text = _xml_text("\n".join(result.errors))
    return suite


def junit_xml(results: list[SubmissionResult]) -> ET.ElementTree:
    """The ``<testsuites>`` tree of ``results``: one ``<testsuite>`` per notebook, in the order given."""
    root = ET.Element("testsuites", name="text3d-edu grade")
    suites = [_suite(result) for result in results]
    root.extend(suites)
    _counts(root, *(sum(int(suite.get(count)) for suite in suites) for count in ("tests", "failures", "errors")))
    ET.indent(root)
    return ET.ElementTree(root)


def write_junit(results: list[SubmissionResult], path: str | Path) -> None:
    junit_xml(results).write(path, encoding="utf-8", xml_declaration=True)
