"""Grade submissions against their master: points per question, the failing assertion's hint, a total.

For each submission:

1. **find its master** in ``solutions/``: by the exercise the student copy records in its metadata, else by
   file name (``01_nerf.ipynb``, ``alice_01_nerf.ipynb``), else by the grade_ids it shares with a master;
2. **assemble the cells to run**: the student's code cells in the student's order, with every locked cell
   (given code, tests) swapped for the master's original — hidden tests included. A locked cell the student
   changed is caught by checksum against the student copy and reported; one they deleted is put back after
   the master cell that precedes it;
3. **run them**: the student's cells in the sandbox (``sandbox.KernelSession``: private folder, time and memory
   limits, restart after a crash); the master's locked cells also in the tester (``tester.py``), a separate plain
   Python process whose proxies call the student's functions in the kernel and get data back (``channel.py``);
4. **score**: one question = one test cell (its ``grade_id``), run in the tester; it earns its ``points`` when the
   cell ran without error, else 0 and a message — the assertion's text (the hint the master wrote) or the error's
   name and value, never the test's code. A test the tester refuses (it needs what cannot cross) runs in the
   kernel as before, and the result's ``sandbox["tests_in_kernel"]`` says which and why;
5. **the pass mark** (``--min-score``, a ``PassMark``): a notebook reaches it with enough points, or a high
   enough share of its maximum; one that could not be graded reaches none.
"""

from __future__ import annotations

import ast
import asyncio
import math
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import nbformat
from jupyter_core.utils import run_sync

from text3d_edu.grading import jail
from text3d_edu.grading.exercises import (
    check_master,
    checksum,
    is_locked,
    is_solution_cell,
    is_test_cell,
    nbgrader,
    student_source,
)
from text3d_edu.grading.sandbox import CellOutcome, Confinement, KernelSession, Limits, _bounded
from text3d_edu.grading.tester import LOST_S, Tester


@dataclass
class QuestionResult:
    grade_id: str
    score: float
    max_score: float
    passed: bool
    message: str  # "" when passed


@dataclass
class SubmissionResult:
    notebook: str  # the path as given
    exercise: str | None  # the master's file stem; None when no master was found
    questions: list[QuestionResult] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # what went wrong around the questions
    graded: bool = True  # False: nothing could be graded (unreadable file, no master, no kernel)
    grader_failed: bool = False  # True: the grader's fault (no kernel), not the submission's: exit status 2
    sandbox: dict = field(default_factory=dict)  # the kernel's protections: jail.Protections.as_dict(), and
    # "tests_in_kernel": {grade_id: why} for the tests that could not run out of the student's reach (tester.py)

    @property
    def score(self) -> float:
        return sum(q.score for q in self.questions)

    @property
    def max_score(self) -> float:
        return sum(q.max_score for q in self.questions)

    def as_dict(self) -> dict:
        """The submission's entry in ``grade --json``."""
        return {
            "notebook": self.notebook,
            "score": self.score,
            "max_score": self.max_score,
            "errors": self.errors,
            "questions": [asdict(q) for q in self.questions],
            "sandbox": self.sandbox,
        }

    def as_record(self) -> dict:
        """Every field, for the progress log (``progress.py``); ``from_record`` reads it back."""
        return asdict(self)

    @classmethod
    def from_record(cls, record: dict) -> SubmissionResult:
        questions = [QuestionResult(**question) for question in record["questions"]]
        return cls(**{**record, "questions": questions})


@dataclass(frozen=True)
class PassMark:
    """``grade --min-score``: points (``"5"``) or a percentage of each notebook's maximum (``"60%"``)."""

    value: float
    percent: bool

    @classmethod
    def parse(cls, text: str) -> PassMark:
        percent = text.strip().endswith("%")
        try:
            value = float(text.strip().removesuffix("%"))
        except ValueError:
            value = math.nan
        if not math.isfinite(value) or value < 0 or (percent and value > 100):
            raise ValueError(f"--min-score takes points (e.g. 5) or a percentage from 0% to 100% (e.g. 60%), "
                             f"got '{text}'")
        return cls(value, percent)

    def reached_by(self, result: SubmissionResult) -> bool:
        """A graded notebook's score is at least the mark (X% of its own maximum); an ungraded one reaches none."""
        if not result.graded:
            return False
        if self.percent:
            return result.score * 100 >= self.value * result.max_score  # no division: 29 / 100 * 100 < 29 in floats
        return result.score >= self.value

    def __str__(self) -> str:
        return f"{self.value:g}%" if self.percent else f"{self.value:g} points"


# --- the master -------------------------------------------------------------------------------------------


def default_solutions_dir() -> Path:
    """The repository's ``solutions/`` beside the package (a clone installed with ``pip install -e``), else
    ``./solutions``."""
    beside_package = Path(__file__).resolve().parents[2] / "solutions"
    return beside_package if beside_package.is_dir() else Path("solutions")


def load_masters(solutions: Path) -> dict[str, nbformat.NotebookNode]:
    """{exercise (file stem): master notebook}, each checked for usable nbgrader metadata."""
    paths = sorted(Path(solutions).glob("*.ipynb"))
    masters = {path.stem: nbformat.read(path, as_version=4) for path in paths}
    if not masters:
        raise ValueError(f"no master notebooks (*.ipynb) in {solutions}; pass --solutions DIR")
    for exercise, master in masters.items():
        check_master(master, exercise)
    return masters


def _claimed_nbgrader(cell: nbformat.NotebookNode) -> object:
    """What a *submitted* cell holds as its nbgrader metadata: anything at all, the file is the student's."""
    metadata = cell.get("metadata")
    return metadata.get("nbgrader") if isinstance(metadata, dict) else None


def submitted_grade_id(cell: nbformat.NotebookNode) -> str | None:
    """The grade_id a submitted cell claims, or None when its metadata is not nbgrader's shape
    (``"nbgrader": "oops"``, a list as ``grade_id``): such a cell counts as the student's own."""
    meta = _claimed_nbgrader(cell)
    grade_id = meta.get("grade_id") if isinstance(meta, dict) else None
    return grade_id if isinstance(grade_id, str) and grade_id else None


def _grade_ids(nb: nbformat.NotebookNode) -> set[str]:
    return {grade_id for cell in nb.cells if (grade_id := submitted_grade_id(cell))}


def find_master(path: Path, submission: nbformat.NotebookNode, masters: dict) -> str:
    """The exercise ``submission`` answers (a key of ``masters``)."""
    recorded = submission.metadata.get("text3d_edu", {})
    recorded = recorded.get("exercise") if isinstance(recorded, dict) else None
    if isinstance(recorded, str) and recorded in masters:
        return recorded
    if path.stem in masters:
        return path.stem
    in_name = [exercise for exercise in masters if exercise in path.stem]
    if len(in_name) == 1:
        return in_name[0]
    submitted = _grade_ids(submission)
    shared = {exercise: len(_grade_ids(master) & submitted) for exercise, master in masters.items()}
    best = max(shared, key=shared.get)
    if shared[best] == 0:
        raise ValueError(f"no master for it among {', '.join(masters)}: keep the exercise's file name")
    return best


# --- the cells to run -------------------------------------------------------------------------------------


def assemble(master: nbformat.NotebookNode, submission: nbformat.NotebookNode) -> tuple[list, list[str]]:
    """[(grade_id or None, source)] to run, and notes on locked cells the student changed or deleted."""
    originals = {nbgrader(c)["grade_id"]: c for c in master.cells if c.cell_type == "code" and nbgrader(c)}
    cells, notes, found = [], [], set()
    for number, cell in enumerate((c for c in submission.cells if c.cell_type == "code"), 1):
        grade_id = submitted_grade_id(cell)
        if grade_id is None and _claimed_nbgrader(cell) is not None:
            notes.append(f"code cell {number}: unusable nbgrader metadata; run as the student's own cell")
        original = originals.get(grade_id) if grade_id not in found else None
        if original is None:  # the student's own cell, or a second copy of a master cell
            cells.append((None, cell.source))
            continue
        found.add(grade_id)
        if not is_locked(original):
            cells.append((grade_id, cell.source))
            continue
        if checksum(cell.source) not in (checksum(student_source(original)), checksum(original.source)):
            notes.append(f"locked cell '{grade_id}' was changed; the original was run")
        cells.append((grade_id, original.source))
    previous = None  # grade_id of the last master cell found, to put a deleted one back after it
    for grade_id, original in originals.items():
        if grade_id in found:
            previous = grade_id
        elif is_locked(original):
            at = next((i + 1 for i, (cell_id, _) in enumerate(cells) if cell_id == previous), 0)
            cells.insert(at, (grade_id, original.source))
            notes.append(f"locked cell '{grade_id}' was deleted; the original was run")
            previous = grade_id
        else:
            notes.append(f"solution cell '{grade_id}' is missing")
    return cells, notes


# --- scores -----------------------------------------------------------------------------------------------


def questions(master: nbformat.NotebookNode) -> list[tuple[str, float, list[str]]]:
    """[(grade_id, points, its solution cells)] in order. A solution cell belongs to the test cells after it,
    up to the next solution cell that follows a test."""
    found, solutions, test_seen = [], [], False
    for cell in master.cells:
        if is_solution_cell(cell):
            solutions = [nbgrader(cell)["grade_id"]] if test_seen else [*solutions, nbgrader(cell)["grade_id"]]
            test_seen = False
        elif is_test_cell(cell):
            found.append((nbgrader(cell)["grade_id"], nbgrader(cell)["points"], solutions))
            test_seen = True
    return found


def describe(outcome: CellOutcome) -> str:
    """What a student may read about a failed cell: the assertion's hint or the error, never the code."""
    if outcome.status == "error":
        if outcome.ename == "AssertionError" and outcome.evalue:
            return outcome.evalue
        if outcome.ename == "NotImplementedError" and not outcome.evalue:
            return "NotImplementedError: not answered yet"
        return f"{outcome.ename}: {outcome.evalue}" if outcome.evalue else outcome.ename
    return {
        "timeout": f"timed out after {outcome.evalue}",
        "crash": outcome.evalue or "the kernel died (a crash, os._exit, or memory outside the heap limit)",
        "not run": f"not run: the notebook's time limit ({outcome.evalue}) was reached",
    }[outcome.status]


def score(master, cells: list, outcomes: list[CellOutcome]) -> list[QuestionResult]:
    outcome_of = {cell_id: outcome for (cell_id, _), outcome in zip(cells, outcomes) if cell_id}
    results = []
    for grade_id, points, solution_ids in questions(master):
        test = outcome_of[grade_id]
        if test.status == "ok":
            results.append(QuestionResult(grade_id, points, points, True, ""))
            continue
        message = describe(test)
        for solution_id in solution_ids:
            solution = outcome_of.get(solution_id)
            if solution is not None and solution.status in ("error", "timeout", "crash"):
                message += f" (solution cell '{solution_id}': {describe(solution)})"
        results.append(QuestionResult(grade_id, 0, points, False, message))
    return results


# --- one submission, many submissions ---------------------------------------------------------------------


def student_names(master: nbformat.NotebookNode) -> list[str]:
    """The names the master's solution cells bind at their top level: what the tester reaches in the kernel."""
    names = []
    for cell in master.cells:
        if not is_solution_cell(cell):
            continue
        for node in ast.parse(cell.source).body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.append(node.name)
            elif isinstance(node, (ast.Assign, ast.AnnAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                names += [n.id for target in targets for n in ast.walk(target) if isinstance(n, ast.Name)]
    return sorted(set(names))


def _serve_source(socket_path: str) -> str:
    """The grader's cell that lets the tester call the student's functions (``channel.serve``). The student may
    replace what it runs: then their functions answer nothing, and their tests fail."""
    channel = Path(__file__).with_name("channel.py")
    return ("import importlib.util as __t3d_u, sys as __t3d_sys\n"
            "if '_t3d_channel' not in __t3d_sys.modules:\n"
            f"    __t3d_s = __t3d_u.spec_from_file_location('_t3d_channel', {str(channel)!r})\n"
            "    __t3d_sys.modules['_t3d_channel'] = __t3d_u.module_from_spec(__t3d_s)\n"
            "    __t3d_s.loader.exec_module(__t3d_sys.modules['_t3d_channel'])\n"
            f"__t3d_sys.modules['_t3d_channel'].serve({socket_path!r}, globals())")


class _OutOfReach:
    """Runs one notebook's cells: the student's in their kernel, the master's locked cells also in the tester,
    whose outcome scores the tests; a test the tester refuses runs in the kernel, as before, and is reported."""

    def __init__(self, session: KernelSession, tester: Tester, master: nbformat.NotebookNode):
        self.session, self.tester, self.on = session, tester, True
        self.originals = {nbgrader(c)["grade_id"]: c for c in master.cells if c.cell_type == "code" and nbgrader(c)}
        self.in_kernel: dict[str, str] = {}  # the tests that ran in the student's kernel, and why
        self.serve = _serve_source(tester.socket)

    async def run(self, number: int, cell_id: str | None, source: str) -> CellOutcome:
        original = self.originals.get(cell_id)
        locked, test = original is not None and is_locked(original), original is not None and is_test_cell(original)
        if not (locked and self.on):
            outcome = await self.session.run(source)
            if test:
                self.in_kernel[cell_id] = self.why_off
            return outcome
        if not test:  # setup or run cell: the kernel's state first, then the tester's
            own = await self.session.run(source)
            report, served = await self._in_tester(number, source, setup=True)
            if report["status"] == "refused":
                self.on = False
                self.why_off = f"locked cell '{cell_id}' could not run out of reach: {report['evalue']}"
            return served if served.status in ("timeout", "crash") and not own.kernel_lost else own
        report, served = await self._in_tester(number, source, setup=False)
        if served.status in ("timeout", "crash", "not run"):
            return served
        if report["status"] == "refused":
            self.in_kernel[cell_id] = report["evalue"]
            return await self.session.run(source)
        if report["status"] == "ok":
            return CellOutcome("ok")
        return CellOutcome("error", _bounded(report.get("ename", "")), _bounded(report.get("evalue", "")))

    async def _in_tester(self, number: int, source: str, setup: bool) -> tuple[dict, CellOutcome]:
        """The tester's report on a locked cell, and the outcome of the kernel's responder meanwhile."""
        report = asyncio.ensure_future(self.tester.report(number))
        self.tester.send({"run": number, "source": source, "setup": setup})
        served = await self.session.run(self.serve, record=False)
        if not report.done():
            self.tester.send({"cancel": number})
        try:
            return await asyncio.wait_for(report, LOST_S), served
        except asyncio.TimeoutError:
            raise RuntimeError("the tester did not report a locked cell in time") from None


async def grade_submission(path: Path, masters: dict, limits: Limits, confinement: Confinement) -> SubmissionResult:
    """Grade one notebook; whatever goes wrong is reported in its result, never raised: the file is untrusted,
    and one bad notebook must cost only its own entry in a batch."""
    exercise = None
    try:
        submission = nbformat.read(path, as_version=4)
        exercise = find_master(Path(path), submission, masters)
        cells, notes = assemble(masters[exercise], submission)
    except Exception as err:
        return not_graded(path, exercise, err)
    try:
        outcomes, in_kernel = await run_notebook(cells, Path(path), masters[exercise], limits, confinement)
    except Exception as err:  # no kernel or no tester: nothing ran, and not the student's doing
        return not_graded(path, exercise, err, grader_failed=True)
    try:
        for index, ((cell_id, _), outcome) in enumerate(zip(cells, outcomes)):
            if outcome.kernel_lost:
                where = f"cell '{cell_id}'" if cell_id else f"code cell {index + 1}"
                notes.append(f"{where}: {describe(outcome)}; a new kernel re-ran the cells before it")
        return SubmissionResult(str(path), exercise, score(masters[exercise], cells, outcomes), notes,
                                sandbox={**confinement.protections.as_dict(), "tests_in_kernel": in_kernel})
    except Exception as err:
        return not_graded(path, exercise, err)


async def run_notebook(cells: list, notebook: Path, master: nbformat.NotebookNode, limits: Limits,
                       confinement: Confinement) -> tuple[list[CellOutcome], list[str]]:
    """Each cell's outcome, the tests' from the tester; and {grade_id: why} of the tests that ran in the kernel."""
    async with KernelSession(notebook, limits, confinement) as session:
        tester = Tester(session.folder.root / "tester", student_names(master), session.uid,
                        jail.kernel_environment(str(session.folder.root / "tester")))
        try:
            await tester.start()
            runner = _OutOfReach(session, tester, master)
            outcomes = [await runner.run(number, cell_id, source) for number, (cell_id, source) in enumerate(cells)]
        finally:
            await tester.stop()
    return outcomes, runner.in_kernel


def not_graded(path: Path, exercise: str | None, err: Exception, grader_failed: bool = False) -> SubmissionResult:
    """The entry of a notebook that could not be graded; our own ``ValueError`` messages already say why."""
    reason = str(err) if type(err) is ValueError else f"{type(err).__name__}: {err}"
    return SubmissionResult(str(path), exercise, errors=[f"could not be graded: {reason}"], graded=False,
                            grader_failed=grader_failed)


def grade_notebooks(
    paths: Iterable[str | Path],
    solutions: str | Path | None = None,
    limits: Limits | None = None,
    jobs: int = 1,
    on_result: Callable[[SubmissionResult], None] | None = None,
    confinement: Confinement | None = None,
) -> list[SubmissionResult]:
    """Grade ``paths`` (``jobs`` kernels at a time); results in the order given. ``on_result`` sees each
    result as soon as it is ready (to print progress). The kernels run confined as this machine allows, and see
    neither the masters nor any submission of the batch (``Confinement.for_batch``)."""
    if jobs < 1:
        raise ValueError(f"--jobs must be at least 1, got {jobs}")
    solutions = Path(solutions or default_solutions_dir())
    masters = load_masters(solutions)
    paths = list(paths)
    confinement = confinement or Confinement.for_batch(solutions, [Path(path) for path in paths])

    async def grade_all() -> list[SubmissionResult]:
        gate = asyncio.Semaphore(jobs)

        async def one(path: Path) -> SubmissionResult:
            async with gate:
                result = await grade_submission(Path(path), masters, limits or Limits(), confinement)
            if on_result:
                on_result(result)
            return result

        return await asyncio.gather(*(one(path) for path in paths))

    return run_sync(grade_all)()
