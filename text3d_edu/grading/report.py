"""Grading results for people and for gradebooks: a feedback text, the ``--json`` file, the ``--csv`` file, and
the ``--summary`` table for a CI log (and GitHub's job summary). The ``--junit`` file is ``junit.py``'s.

The feedback is what a student sees when grading their own notebook: which questions pass and, for each
failing one, the hint (the assertion's message) — the hidden tests' code never appears in any of them.
"""

from __future__ import annotations

import csv
import html
import json
from pathlib import Path

from text3d_edu.grading.grader import PassMark, SubmissionResult


def feedback(result: SubmissionResult) -> str:
    """A few lines: the total, then PASS/FAIL per question with the hint, then notes."""
    if not result.graded:
        return "\n".join([f"{result.notebook}: NOT GRADED", *(f"  {error}" for error in result.errors)])
    lines = [f"{result.notebook} ({result.exercise}): {result.score:g} / {result.max_score:g} points"]
    width = max((len(q.grade_id) for q in result.questions), default=0)
    for q in result.questions:
        line = f"  {'PASS' if q.passed else 'FAIL'}  {q.grade_id:<{width}}  {q.score:g}/{q.max_score:g}"
        lines.append(line if q.passed else f"{line}  {q.message}")
    lines += [f"  note: {error}" for error in result.errors]
    return "\n".join(lines)


def write_json(results: list[SubmissionResult], path: str | Path) -> None:
    payload = {"submissions": [result.as_dict() for result in results]}
    Path(path).write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")


def write_csv(results: list[SubmissionResult], path: str | Path) -> None:
    """One row per submission; one column per question (grade_id), empty where it does not apply."""
    grade_ids = list(dict.fromkeys(q.grade_id for result in results for q in result.questions))
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["notebook", "exercise", "score", "max_score", *grade_ids, "errors"])
        for result in results:
            scores = {q.grade_id: q.score for q in result.questions}
            writer.writerow(
                [result.notebook, result.exercise or "", result.score, result.max_score]
                + [scores.get(grade_id, "") for grade_id in grade_ids]
                + ["; ".join(result.errors)]
            )


# --- the --summary table: one row per question, then the notebook's total -----------------------------------


def _summary_rows(results: list[SubmissionResult], pass_mark: PassMark | None) -> list[tuple[str, ...]]:
    """[(notebook, question, points, verdict, why)]; the notebook is named on its first row only."""
    rows = []
    for result in results:
        if not result.graded:
            rows.append((result.notebook, "", "", "NOT GRADED", "; ".join(result.errors)))
            continue
        for i, q in enumerate(result.questions):
            rows.append((result.notebook if i == 0 else "", q.grade_id, f"{q.score:g}/{q.max_score:g}",
                         "PASS" if q.passed else "FAIL", q.message))
        verdict = "" if pass_mark is None else (
            f"reaches {pass_mark}" if pass_mark.reached_by(result) else f"BELOW {pass_mark}")
        rows.append(("" if result.questions else result.notebook, "total",
                     f"{result.score:g}/{result.max_score:g}", verdict, ""))
    return rows


def _headline(results: list[SubmissionResult], pass_mark: PassMark | None) -> str:
    if pass_mark is None:
        return f"{sum(r.graded for r in results)} of {len(results)} notebooks graded"
    return f"{sum(pass_mark.reached_by(r) for r in results)} of {len(results)} notebooks reach {pass_mark}"


def summary(results: list[SubmissionResult], pass_mark: PassMark | None = None) -> str:
    """A plain table for a CI log: notebook, question, points, PASS or FAIL, and each notebook's total against
    the pass mark (the hints are in the feedback printed before it)."""
    rows = [("notebook", "question", "points", "result"),
            *(row[:4] for row in _summary_rows(results, pass_mark))]
    widths = [max(len(row[column]) for row in rows) for column in range(3)]
    lines = ["  ".join(f"{text:<{width}}" for text, width in zip(row, widths)) + "  " + row[3] for row in rows]
    return "\n".join([_headline(results, pass_mark), *(line.rstrip() for line in lines)])


def _markdown_cell(text: str) -> str:
    """``text`` shown as itself in a table cell: no HTML, no column break, on one line."""
    return html.escape(text, quote=False).replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def summary_markdown(results: list[SubmissionResult], pass_mark: PassMark | None = None) -> str:
    """The same table as GitHub-flavoured markdown for ``$GITHUB_STEP_SUMMARY``, with each failure's hint."""
    lines = [f"### text3d-edu grade: {_headline(results, pass_mark)}", "",
             "| notebook | question | points | result |", "| --- | --- | ---: | --- |"]
    for notebook, question, points, verdict, why in _summary_rows(results, pass_mark):
        result = f"{verdict}: {why}" if why else verdict
        cells = [_markdown_cell(notebook), _markdown_cell(question), points, _markdown_cell(result)]
        lines.append(f"| {' | '.join(cells)} |")
    return "\n".join(lines) + "\n"
