"""One source for exercises: the student copy of a master notebook is generated, never edited by hand.

A master ``solutions/NN_topic.ipynb`` marks its cells with nbgrader's schema-v3 metadata
(``cell.metadata.nbgrader``: ``grade``, ``solution``, ``locked``, ``grade_id``, ``points``), and two kinds of
regions that this module rewrites, exactly as nbgrader's ``generate_assignment`` does:

* ``### BEGIN SOLUTION`` … ``### END SOLUTION`` in a solution cell becomes ``# YOUR CODE HERE`` /
  ``raise NotImplementedError()`` at the region's indentation (a solution cell without a region is replaced
  whole);
* ``### BEGIN HIDDEN TESTS`` … ``### END HIDDEN TESTS`` is removed (the grader runs the master's cell).

Outputs and execution counts are cleared, the nbgrader metadata is kept (so a school running nbgrader can use
``solutions/`` as its ``source/``), and every code cell from the first solution cell on is tagged
``raises-exception``: a student copy then runs to the end under nbclient and ``pytest --nbval`` although its
unanswered cells raise. The bytes written are a function of the master alone, so ``--check`` can compare them.
"""

from __future__ import annotations

import copy
import hashlib
import re
from pathlib import Path

import nbformat

SOLUTION_STUB = ["# YOUR CODE HERE", "raise NotImplementedError()"]
RAISES_TAG = "raises-exception"

_BEGIN_SOLUTION = re.compile(r"^(\s*)### BEGIN SOLUTION\s*$")
_END_SOLUTION = re.compile(r"^\s*### END SOLUTION\s*$")
_BEGIN_HIDDEN = re.compile(r"^\s*### BEGIN HIDDEN TESTS\s*$")
_END_HIDDEN = re.compile(r"^\s*### END HIDDEN TESTS\s*$")


# --- the cell metadata ------------------------------------------------------------------------------------


def nbgrader(cell: nbformat.NotebookNode) -> dict:
    """The cell's nbgrader metadata (``{}`` for an ordinary cell)."""
    return cell.get("metadata", {}).get("nbgrader", {})


def is_test_cell(cell: nbformat.NotebookNode) -> bool:
    """An autograded test cell: one question, worth ``points``."""
    meta = nbgrader(cell)
    return bool(meta.get("grade")) and not meta.get("solution")


def is_solution_cell(cell: nbformat.NotebookNode) -> bool:
    return bool(nbgrader(cell).get("solution"))


def is_locked(cell: nbformat.NotebookNode) -> bool:
    """Given code or a test: the grader runs the master's version whatever the student did to it."""
    return bool(nbgrader(cell).get("locked"))


def checksum(source: str) -> str:
    """sha256 of a cell's source, blind to trailing whitespace (what Jupyter's editor may add or drop)."""
    normalised = "\n".join(line.rstrip() for line in source.strip().splitlines())
    return hashlib.sha256(normalised.encode()).hexdigest()


# --- rewriting one cell -----------------------------------------------------------------------------------


def _regions(lines: list[str], begin: re.Pattern, end: re.Pattern, where: str) -> list[tuple[int, int]]:
    """(first, last) line indices of each begin … end region, markers included; malformed regions raise."""
    regions, start = [], None
    for i, line in enumerate(lines):
        if begin.match(line):
            if start is not None:
                raise ValueError(f"{where}: nested '{begin.pattern}' at line {i + 1}")
            start = i
        elif end.match(line):
            if start is None:
                raise ValueError(f"{where}: '{line.strip()}' without its BEGIN at line {i + 1}")
            regions.append((start, i))
            start = None
    if start is not None:
        raise ValueError(f"{where}: '{lines[start].strip()}' is never closed")
    return regions


def clear_solutions(source: str, where: str = "cell") -> str:
    """Each solution region → the stub, indented like the region's ``### BEGIN SOLUTION`` line."""
    lines = source.splitlines()
    regions = _regions(lines, _BEGIN_SOLUTION, _END_SOLUTION, where)
    if not regions:
        return "\n".join(SOLUTION_STUB)
    for first, last in reversed(regions):
        indent = _BEGIN_SOLUTION.match(lines[first]).group(1)
        lines[first : last + 1] = [indent + line for line in SOLUTION_STUB]
    return "\n".join(lines)


def remove_hidden_tests(source: str, where: str = "cell") -> str:
    lines = source.splitlines()
    regions = _regions(lines, _BEGIN_HIDDEN, _END_HIDDEN, where)
    for first, last in reversed(regions):
        del lines[first : last + 1]
    return "\n".join(lines).rstrip() if regions else source


def student_source(cell: nbformat.NotebookNode, where: str = "cell") -> str:
    """What the student copy shows for this master cell."""
    if cell.cell_type != "code":
        return cell.source
    source = clear_solutions(cell.source, where) if is_solution_cell(cell) else cell.source
    return remove_hidden_tests(source, where)


# --- the whole notebook -----------------------------------------------------------------------------------


def check_master(master: nbformat.NotebookNode, name: str) -> None:
    """Fail loudly on metadata the grader cannot use: duplicate ids, tests without points, stray regions."""
    seen = set()
    for index, cell in enumerate(master.cells):
        meta = nbgrader(cell)
        if not isinstance(meta, dict):
            raise ValueError(f"{name}, cell {index}: its nbgrader metadata must be a mapping (schema v3), "
                             f"not {type(meta).__name__}")
        where = f"{name}, cell {index} ({meta.get('grade_id', 'no grade_id')})"
        if meta:
            if not meta.get("grade_id") or not isinstance(meta["grade_id"], str):
                raise ValueError(f"{where}: nbgrader cell without a grade_id (a non-empty string)")
            if meta["grade_id"] in seen:
                raise ValueError(f"{where}: grade_id used twice")
            seen.add(meta["grade_id"])
        if meta.get("grade") and meta.get("solution"):
            raise ValueError(f"{where}: manually graded answers (grade and solution) are not autogradable")
        if meta.get("solution") and meta.get("locked"):
            raise ValueError(f"{where}: a solution cell cannot be locked")
        points = meta.get("points")
        if is_test_cell(cell) and (cell.cell_type != "code" or not meta.get("locked")
                                   or not isinstance(points, (int, float)) or isinstance(points, bool)):
            raise ValueError(f"{where}: a test cell must be a locked code cell with points")
        has_region = any(_BEGIN_SOLUTION.match(line) for line in cell.source.splitlines())
        if cell.cell_type == "code" and has_region and not is_solution_cell(cell):
            raise ValueError(f"{where}: '### BEGIN SOLUTION' in a cell not marked solution: true")
        student_source(cell, where)  # raises on malformed regions


def student_copy(master: nbformat.NotebookNode, exercise: str) -> nbformat.NotebookNode:
    """The student copy of ``master``; ``exercise`` (the master's file stem) is recorded for the grader."""
    check_master(master, exercise)
    nb = copy.deepcopy(master)
    nb.metadata["text3d_edu"] = {"exercise": exercise}
    after_first_solution = False
    for index, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        cell.source = student_source(cell, f"{exercise}, cell {index}")
        cell.outputs = []
        cell.execution_count = None
        cell.metadata.pop("execution", None)  # nbclient's timing record
        after_first_solution = after_first_solution or is_solution_cell(cell)
        tags = cell.metadata.get("tags", [])
        if after_first_solution and RAISES_TAG not in tags:
            cell.metadata["tags"] = [*tags, RAISES_TAG]
    return nb


def notebook_text(nb: nbformat.NotebookNode) -> str:
    """nbformat's canonical JSON (indent 1, sorted keys) and a final newline: the bytes ``--check`` wants."""
    return nbformat.writes(nb, version=nbformat.NO_CONVERT).rstrip("\n") + "\n"


def _generated(solutions: Path) -> dict[str, str]:
    """{file name: student-copy text} for every master in ``solutions``."""
    masters = sorted(Path(solutions).glob("*.ipynb"))
    if not masters:
        raise ValueError(f"no master notebooks (*.ipynb) in {solutions}")
    return {path.name: notebook_text(student_copy(nbformat.read(path, as_version=4), path.stem)) for path in masters}


def make_exercises(solutions: Path, out: Path) -> list[Path]:
    """Write the student copy of every master in ``solutions`` into ``out`` (and nowhere else)."""
    solutions, out = Path(solutions), Path(out)
    if out.resolve() == solutions.resolve():
        raise ValueError("--out must differ from --solutions: the masters would be overwritten")
    generated = _generated(solutions)
    out.mkdir(parents=True, exist_ok=True)
    for name, text in generated.items():
        (out / name).write_text(text, encoding="utf-8", newline="\n")
    return [out / name for name in generated]


def stale_exercises(solutions: Path, out: Path) -> list[str]:
    """Why ``out`` differs from what ``make_exercises`` would write, one line per file (empty: up to date)."""
    generated = _generated(Path(solutions))
    out = Path(out)
    problems = [
        f"{out / name}: {'missing' if not (out / name).exists() else 'differs from its master'}"
        for name, text in generated.items()
        if not (out / name).exists() or (out / name).read_bytes() != text.encode()
    ]
    orphans = [path for path in sorted(out.glob("*.ipynb")) if path.name not in generated]
    problems += [f"{path}: has no master" for path in orphans]
    return problems
