"""Grading results for people and for gradebooks: a feedback text, the ``--json`` file, the ``--csv`` file.

The feedback is what a student sees when grading their own notebook: which questions pass and, for each
failing one, the hint (the assertion's message) — the hidden tests' code never appears in any of the three.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from text3d_edu.grading.grader import SubmissionResult


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
