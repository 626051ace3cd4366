"""A grader that student code cannot fool or kill (issue 16): hostile and malformed submissions of the warm-up
exercise (numpy only, so each kernel is cheap), each graded beside an honest one that must score exactly what it
scores alone.

* nothing lost: malformed metadata or any other surprise in one file is that file's entry, never the batch's;
  results reach the progress log as each notebook finishes, and ``--resume`` after ``kill -9`` grades only
  what is left;
* containment: one batch of hostile answers graded by ``text3d-edu grade`` in a process of its own (an answer
  that kills its kernel's parent must not take pytest along), beside an honest notebook. Where the grader is not
  root the kernels are not confined, and these tests are skipped (a fork bomb must never run unconfined).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path

import nbformat
import pytest
from test_grading import FIXTURES, REPO, WARMUP, cell, model_answer, write

from text3d_edu.grading import exercises, grader, jail

SOLUTIONS = FIXTURES / "solutions"
CONFINED = jail.probe().confined


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


# --- containment ----------------------------------------------------------------------------------------------

HONEST_CUMPROD = cell(model_answer(WARMUP), "exclusive_cumprod").source
FORKS, PROCESSES = 300, 48  # the fork bomb tries 300 processes; the kernel's user may have 48 (threads included)
SLEEPER = "sleep 30.5"  # what each forked process becomes: findable by its command line


def _hostile_answers(folder: Path) -> tuple[dict[str, str], list[str]]:
    """{name: source of the exclusive_cumprod answer cell} (softplus is always answered honestly), and the paths
    outside its folder that one of them writes."""
    master, neighbour = SOLUTIONS / "00_warmup.ipynb", folder / "honest" / "00_warmup.ipynb"
    copy_answer = (
        "import json\n"
        "cells = json.load(open({path!r}))['cells']\n"
        "exec(''.join(next(c['source'] for c in cells if c['metadata'].get('nbgrader', {{}}).get('grade_id')"
        " == 'exclusive_cumprod')).replace('### BEGIN SOLUTION', '').replace('### END SOLUTION', ''))"
    )
    outside = [str(folder / "honest" / "planted.txt"), str(REPO / f"planted-{uuid.uuid4().hex}"),
               f"/var/tmp/planted-{uuid.uuid4().hex}", f"/dev/shm/planted-{uuid.uuid4().hex}"]
    return {
        "honest": HONEST_CUMPROD,
        "kills_parent": HONEST_CUMPROD + (
            "\nimport os, signal\n"
            "for pid in (os.getppid(), int(os.environ.get('JPY_PARENT_PID', '0'))):\n"
            "    try:\n        os.kill(pid, signal.SIGKILL)\n    except OSError:\n        pass"),
        "fork_bomb": (
            f"import os\nforked = 0\ntry:\n    for _ in range({FORKS}):\n        if os.fork() == 0:\n"
            f"            os.execv('/bin/sleep', {SLEEPER.split()!r})\n        forked += 1\n"
            "except OSError:\n    pass\nraise RuntimeError(f'forked {forked}')"),
        "writes_outside": HONEST_CUMPROD + (
            f"\nfor path in {outside!r}:\n    try:\n        open(path, 'w').write('mine')\n"
            "    except OSError:\n        pass"),
        "reads_master": copy_answer.format(path=str(master)),
        "reads_neighbour": copy_answer.format(path=str(neighbour)),
        "prints_200_mb": HONEST_CUMPROD + "\nfor _ in range(200):\n    print('x' * 2**20)\nprint('y' * 2**27)",
    }, outside


@pytest.fixture(scope="module")
def hostile(tmp_path_factory) -> dict:
    """The hostile batch, graded once (2 kernels at a time) by ``text3d-edu grade`` in a process of its own."""
    root = tmp_path_factory.mktemp("hostile")
    answers, outside = _hostile_answers(root)
    paths = {}
    for name, source in answers.items():
        nb = model_answer(WARMUP)
        cell(nb, "exclusive_cumprod").source = source
        paths[name] = write(nb, root / name / "00_warmup.ipynb")
    report = root / "grades.json"
    run = subprocess.run(peak_memory(grade_command(*paths.values(), "--json", report, "--jobs", "2", "--processes",
                                                   str(PROCESSES), "--timeout", "30")), capture_output=True, text=True)
    baseline = subprocess.run(peak_memory(grade_command(paths["honest"])), capture_output=True, text=True)
    graded = json.loads(report.read_text())["submissions"] if report.exists() else []
    sleepers = subprocess.run(["pgrep", "-f", SLEEPER], capture_output=True, text=True).stdout.split()
    planted = [path for path in outside if Path(path).exists()]
    for path in planted:  # the grader failed: leave no trace of the test behind
        Path(path).unlink()
    alone = grader.grade_notebooks([paths["honest"]], solutions=SOLUTIONS)[0].as_dict()
    return {"run": run, "results": dict(zip(paths, graded)), "paths": paths, "sleepers": sleepers,
            "planted": planted, "alone": alone, "peak_mb": _peak_mb(run), "baseline_peak_mb": _peak_mb(baseline)}


def peak_memory(command: list[str]) -> list[str]:
    """``command`` run by a Python that prints, last, the peak memory (MB) of the largest process it waited for."""
    wrapper = ("import resource, subprocess, sys; status = subprocess.call(sys.argv[1:]); "
               "print('peak MB', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024); sys.exit(status)")
    return [sys.executable, "-c", wrapper, *command]


def _peak_mb(run: subprocess.CompletedProcess) -> int:
    return int(re.findall(r"^peak MB (\d+)$", run.stdout, re.MULTILINE)[-1])


def _questions(entry: dict) -> dict[str, tuple[float, str]]:
    return {q["grade_id"]: (q["score"], q["message"]) for q in entry["questions"]}


confined_only = pytest.mark.skipif(not CONFINED, reason=f"kernels are not confined here ({jail.probe()})")


@confined_only
def test_the_batch_survives_and_the_honest_notebook_scores_as_alone(hostile):
    run = hostile["run"]
    assert run.returncode == 0, (run.returncode, run.stdout[-2000:], run.stderr[-2000:])
    assert list(hostile["results"]) == list(hostile["paths"])  # every notebook graded, none lost
    honest = hostile["results"]["honest"]
    assert {**honest, "notebook": ""} == {**hostile["alone"], "notebook": ""}
    assert (honest["score"], honest["errors"]) == (3, [])
    assert run.stdout.startswith("sandbox: own session, memory limit, unprivileged user, process limit, private "
                                 "file system, private process table, no network\n")
    assert honest["sandbox"] == {**jail.probe().as_dict(), "tests_in_kernel": {}}


@confined_only
def test_killing_the_parent_kills_nothing(hostile):
    assert hostile["results"]["kills_parent"]["score"] == 3  # the honest part of the answer


@confined_only
def test_a_fork_bomb_stops_at_the_process_limit_and_dies_with_its_kernel(hostile):
    bomb = _questions(hostile["results"]["fork_bomb"])
    forked = int(re.search(r"RuntimeError: forked (\d+)", bomb["exclusive_cumprod_test"][1]).group(1))
    assert 0 < forked < PROCESSES, forked
    assert bomb["softplus_test"] == (1, "")  # the kernel still grades the next question
    assert hostile["sleepers"] == [], "the forked processes outlived their kernel"


@confined_only
def test_nothing_is_written_outside_the_kernels_folder(hostile):
    assert hostile["planted"] == []
    assert hostile["results"]["writes_outside"]["score"] == 3
    assert sorted(p.name for p in hostile["paths"]["honest"].parent.iterdir()) == ["00_warmup.ipynb"]


@confined_only
@pytest.mark.parametrize("name", ["reads_master", "reads_neighbour"])
def test_the_masters_and_other_submissions_cannot_be_read(name, hostile):
    copied = _questions(hostile["results"][name])
    score, message = copied["exclusive_cumprod_test"]  # a hidden folder, or this test's under the private /tmp
    assert score == 0 and re.search(r"solution cell 'exclusive_cumprod': (PermissionError|FileNotFoundError)", message)
    assert copied["softplus_test"] == (1, "")


@confined_only
def test_200_mb_of_output_is_dropped_unread(hostile):
    assert hostile["results"]["prints_200_mb"]["score"] == 3
    assert hostile["peak_mb"] < hostile["baseline_peak_mb"] + 100, (hostile["peak_mb"], hostile["baseline_peak_mb"])
    print(f"peak memory of the grader: {hostile['peak_mb']} MB, grading the honest notebook alone "
          f"{hostile['baseline_peak_mb']} MB")


def test_without_root_the_grader_says_which_protections_are_missing(tmp_path, monkeypatch, capsys):
    from text3d_edu.cli import main

    monkeypatch.setattr(jail.os, "geteuid", lambda: 1000)  # as a student's own laptop would
    path = write(model_answer(WARMUP), tmp_path / "00_warmup.ipynb")
    assert main(["grade", str(path), "--solutions", str(SOLUTIONS), "--json", str(tmp_path / "grades.json")]) == 0
    first_line = capsys.readouterr().out.splitlines()[0]
    assert first_line.startswith("sandbox: own session, memory limit; MISSING: unprivileged user, process limit, "
                                 "private file system, private process table, no network: the grader does not run "
                                 "as root")
    [entry] = json.loads((tmp_path / "grades.json").read_text())["submissions"]
    assert entry["score"] == 3 and entry["sandbox"]["active"] == ["own session", "memory limit"]
    assert "the grader does not run as root" in entry["sandbox"]["missing"][0]


# --- tests out of reach (THREAT_MODEL.md) ----------------------------------------------------------------------

STUBS = "exclusive_cumprod = softplus = lambda x, beta=1.0: x"  # answers that are wrong, whatever the tests see
FAKE_RESPONDER = """
import sys, types
from text3d_edu.grading import channel as real
fake = types.ModuleType('_t3d_channel')
def serve(path, namespace):
    import socket
    sock = socket.socket(socket.AF_UNIX)
    sock.connect(path)
    while True:
        header, _, _ = real.receive(sock)
        if header.get('op') != 'call':
            return sock.close()
        if header['name'] == 'exclusive_cumprod':  # ask the grader to run the test in this kernel instead
            real.send(sock, {'op': 'raise', 'ename': 'Refused', 'evalue': 'run me in the kernel'})
        else:  # an object of the kernel, or data that does not exist
            real.send(sock, {'op': 'return', 'value': [{'__ref__': 'np'}, {'__tensor__': 't0'}]})
fake.serve = serve
sys.modules['_t3d_channel'] = fake
"""
CHEATS = {  # an unanswered copy plus one cheating answer cell; each earns full marks from a same-kernel grader
    "rewrites_later_cells": "get_ipython().input_transformers_cleanup.append(lambda lines: ['pass\\n'])",
    "patches_numpy": (
        "np.allclose = np.isclose = lambda *args, **kwargs: True\n"
        "exclusive_cumprod = softplus = lambda x, beta=1.0: np.zeros_like(x)"
    ),
    "replaces_sys_modules": (
        "import sys, types\nfake = types.ModuleType('numpy')\nfake.__dict__.update(vars(np))\n"
        "fake.allclose = fake.isclose = fake.isfinite = lambda *args, **kwargs: True\n"
        f"sys.modules['numpy'] = fake\nimport numpy as np\n{STUBS}"
    ),
    "patches_builtins": (  # the tests' `np` is looked up in builtins once the global is gone
        "import builtins, types\n"
        "builtins.np = types.SimpleNamespace(**{**vars(np), 'random': np.random, 'allclose': lambda *a, **k: True,\n"
        "                                       'isclose': lambda *a, **k: True, 'isfinite': lambda *a, **k: True})\n"
        f"del np\n{STUBS}"
    ),
    "strips_asserts_from_later_cells": (  # the test cells' source, edited as IPython compiles it
        "import ast\nclass NoAsserts(ast.NodeTransformer):\n"
        "    def visit_Assert(self, node):\n        return ast.Pass()\n"
        f"get_ipython().ast_transformers.append(NoAsserts())\n{STUBS}"
    ),
    "fake_responder": FAKE_RESPONDER,
}


@pytest.fixture(scope="module")
def cheats(tmp_path_factory) -> dict[str, grader.SubmissionResult]:
    """Each cheat in a blank copy of the warm-up, graded in one batch beside the model answer."""
    root = tmp_path_factory.mktemp("cheats")
    paths = {}
    for name, source in CHEATS.items():
        blank = exercises.student_copy(nbformat.read(WARMUP, as_version=4), "00_warmup")
        cell(blank, "exclusive_cumprod").source = source
        paths[name] = write(blank, root / name / "00_warmup.ipynb")
    paths["honest"] = write(model_answer(WARMUP), root / "honest" / "00_warmup.ipynb")
    results = dict(zip(paths, grader.grade_notebooks(paths.values(), solutions=SOLUTIONS, jobs=2)))
    results["honest alone"] = grader.grade_notebooks([paths["honest"]], solutions=SOLUTIONS)[0]
    return results


@pytest.mark.parametrize("name", list(CHEATS))
def test_a_cheating_answer_cell_earns_nothing(name, cheats):
    result = cheats[name]
    assert result.graded and result.score == 0, [(q.grade_id, q.score, q.message) for q in result.questions]
    assert result.sandbox["tests_in_kernel"] == {}  # no test ran in the student's kernel


def test_the_honest_notebook_beside_the_cheats_scores_as_alone(cheats):
    honest, alone = cheats["honest"].as_dict(), cheats["honest alone"].as_dict()
    assert {**honest, "notebook": ""} == {**alone, "notebook": ""}
    assert (honest["score"], honest["errors"]) == (3, [])


def test_a_responder_that_was_skipped_is_named_in_the_feedback(cheats):
    messages = {q.grade_id: q.message for q in cheats["rewrites_later_cells"].questions}
    assert all("the kernel stopped answering" in message for message in messages.values()), messages


def test_a_fake_responder_gets_no_test_run_in_the_kernel(cheats):
    messages = {q.grade_id: q.message for q in cheats["fake_responder"].questions}
    assert messages["exclusive_cumprod_test"] == "Refused: run me in the kernel"  # an error like any other
    assert "returned something that is not data" in messages["softplus_test"]


def test_monkeypatching_torch_earns_nothing(tmp_path):
    """torch.allclose, torch.equal and Tensor.__eq__ patched in the kernel of exercise 00: the tester's torch is its
    own, and the answers (x_t = x0, ε̂ = ε_cond) are wrong."""
    master = REPO / "solutions" / "00_text_to_2d.ipynb"
    blank = exercises.student_copy(nbformat.read(master, as_version=4), master.stem)
    cell(blank, "add_noise").source = (
        "torch.allclose = torch.equal = lambda *args, **kwargs: True\n"
        "torch.Tensor.__eq__ = lambda self, other: True\n"
        "def add_noise(x0, alpha_bar_t, noise):\n    return x0")
    cell(blank, "cfg").source = "def cfg(eps_cond, eps_uncond, omega):\n    return eps_cond"
    path = write(blank, tmp_path / "00_text_to_2d.ipynb")
    [result] = grader.grade_notebooks([path], solutions=REPO / "solutions")
    scores = {q.grade_id: (q.score, q.message) for q in result.questions}
    assert scores["add_noise_test"][0] == 0 and scores["cfg_test"][0] == 0, scores
    assert "hint: with ε = 0, x_t = √ᾱ_t · x0" in scores["add_noise_test"][1]  # the master's own hint, from the tester
    assert result.score == 0


def test_the_channel_carries_data_only():
    import numpy as np
    import torch

    from text3d_edu.grading import channel

    value = {"a": [1, 2.5, float("nan"), None, True, "x"], "t": (torch.arange(6).reshape(2, 3), np.float32(1.5)),
             "n": np.ones((2, 2), dtype=np.int16), "p": torch.nn.Parameter(torch.ones(2))}
    header, tensors, arrays = channel.encode(value)
    back = channel.decode(json.loads(json.dumps(header)), tensors, arrays)
    assert back["a"][:2] == [1, 2.5] and back["a"][2] != back["a"][2] and back["a"][3:] == [None, True, "x"]
    assert torch.equal(back["t"][0], value["t"][0]) and type(back["t"][1]) is np.float32
    assert back["n"].dtype == np.int16 and type(back["p"]) is torch.Tensor
    for not_data in (object(), lambda: 1, np.array([object()]), {1: 2}, torch.ones(2, dtype=torch.complex64)):
        with pytest.raises(channel.NotData):
            channel.encode(not_data)
    for header in ({"__ref__": "np"}, {"__callback__": 0}, {"__generator__": []}, {"__copy__": "gASVAA=="},
                   {"__npscalar__": "O", "value": 1}):
        with pytest.raises(channel.NotData):  # what only the tester may send: refused when it comes from a kernel
            channel.decode(header, {}, {})
