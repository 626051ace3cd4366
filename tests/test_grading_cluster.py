"""``text3d-edu grade --scheduler``: the same grades from a Dask cluster as from this machine, and no submission lost
when a worker dies.

The clusters are small ``LocalCluster``s (2 worker processes, 1 thread each) grading variants of the warm-up
exercise (numpy only, cheap kernels).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import pytest
from test_grading import FIXTURES, WARMUP, break_cell, cell, model_answer, write

from text3d_edu.cli import main
from text3d_edu.grading import cluster
from text3d_edu.grading.sandbox import Limits

distributed = pytest.importorskip("distributed")
dask = pytest.importorskip("dask")

# 10 s a test cell: with 3 s, a correct answer timed out on the cluster path while the browser tests loaded the CPU
LIMITS = ["--timeout", "10", "--notebook-timeout", "60", "--memory-mb", "600"]


def local_cluster() -> distributed.LocalCluster:
    return distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, memory_limit=0,
                                    dashboard_address=None)


def answered(tmp_path: Path, name: str, first: str = "", grade_id: str = "softplus") -> Path:
    """The warm-up's model answer with ``first`` run at the start of one answer cell, in its own student folder."""
    nb = model_answer(WARMUP)
    cell(nb, grade_id).source = first + "\n" + cell(nb, grade_id).source
    return write(nb, tmp_path / name / "00_warmup.ipynb")


def grades(args: list) -> tuple[int, list[dict]]:
    out = Path(args[args.index("--json") + 1])
    status = main(["grade", *map(str, args), "--solutions", str(FIXTURES / "solutions"), *LIMITS])
    return status, json.loads(out.read_text())["submissions"]


def test_a_cluster_gives_the_local_grades_in_the_order_given(tmp_path, capsys):
    batch = [
        answered(tmp_path, "correct"),
        write(break_cell(model_answer(WARMUP), "exclusive_cumprod", "cumprod(x, axis=-1)", "cumprod(x, axis=0)"),
              tmp_path / "wrong" / "00_warmup.ipynb"),
        answered(tmp_path, "crashing", "import os\nos._exit(1)", grade_id="exclusive_cumprod"),
        answered(tmp_path, "looping", "while True:\n    pass"),
        answered(tmp_path, "memory_hungry", "hog = np.ones(10**9)"),
    ]
    local_status, local = grades([*batch, "--jobs", "2", "--json", tmp_path / "local.json"])
    with local_cluster() as dask_cluster:
        address = dask_cluster.scheduler_address
        on_cluster = [*batch, "--scheduler", address, "--json", tmp_path / "cluster.json"]
        cluster_status, remote = grades(on_cluster)
        assert "grading on the Dask cluster at " + address in capsys.readouterr().out
        resumed_status, resumed = grades([*on_cluster, "--resume"])

    assert [entry["notebook"] for entry in remote] == list(map(str, batch))
    assert remote == local and cluster_status == local_status == 0
    assert [entry["score"] for entry in remote] == [3, 1, 1, 2, 2]  # each variant loses what it breaks
    assert "timed out after 10 s" in json.dumps(remote[3]) and "MemoryError" in json.dumps(remote[4])
    assert len((tmp_path / "cluster.json.jsonl").read_text().splitlines()) == len(batch)  # the progress log
    assert "5 of 5 notebooks already graded" in capsys.readouterr().out
    assert (resumed_status, resumed) == (0, local)


@pytest.mark.parametrize("allowed_failures, graded", [(3, True), (0, False)], ids=["rerun", "reported"])
def test_a_worker_killed_mid_task_loses_no_submission(tmp_path, allowed_failures, graded):
    """The worker grading a slow notebook is killed: the scheduler reruns its task on another worker, or, past
    ``allowed-failures``, the notebook gets an error entry with grader_failed (exit status 2). Either way every
    notebook has its entry."""
    batch = [answered(tmp_path, "quick"), answered(tmp_path, "slow", "import time\ntime.sleep(12)")]
    config = {"distributed.scheduler.allowed-failures": allowed_failures}  # read when the scheduler starts
    with dask.config.set(config), local_cluster() as dask_cluster, distributed.Client(dask_cluster) as client, \
            ThreadPoolExecutor(1) as pool:
        grading = pool.submit(cluster.grade_on_cluster, batch, dask_cluster.scheduler_address,
                              FIXTURES / "solutions", Limits(cell_timeout=30, notebook_timeout=60, memory_mb=600))
        worker_pid = _wait_for(lambda: _grading_only(client, batch[1]))
        time.sleep(1)  # its kernel is running the slow notebook
        os.kill(worker_pid, signal.SIGKILL)
        quick, slow = grading.result(timeout=90)

    assert (quick.notebook, quick.score) == (str(batch[0]), 3)
    assert slow.notebook == str(batch[1])
    if graded:
        assert (slow.score, slow.errors, slow.grader_failed) == (3, [], False)
    else:
        assert not slow.graded and slow.grader_failed
        assert slow.errors[0].startswith("could not be graded: KilledWorker")


def _grading_only(client: distributed.Client, notebook: Path) -> int | None:
    """The pid of the worker whose only task is grading ``notebook``, once its kernel runs; else None."""
    for worker, keys in client.processing().items():
        if keys and all(str(notebook) in str(key) for key in keys):
            pid = client.run(os.getpid, workers=[worker])[worker]
            try:
                commands = [" ".join(child.cmdline()) for child in psutil.Process(pid).children(recursive=True)]
            except psutil.Error:  # a process that ended while we looked
                continue
            if any("ipykernel" in command for command in commands):
                return pid
    return None


def _wait_for(found, timeout: float = 60):
    deadline = time.monotonic() + timeout
    while not (value := found()):
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.1)
    return value


def test_an_unreachable_scheduler_fails_fast_naming_it(tmp_path, capsys):
    notebook = answered(tmp_path, "correct")
    started = time.monotonic()
    assert main(["grade", str(notebook), "--solutions", str(FIXTURES / "solutions"),
                 "--scheduler", "tcp://127.0.0.1:1"]) == 2
    assert time.monotonic() - started < cluster.CONNECT_TIMEOUT_S + 10
    assert "cannot reach the Dask scheduler at tcp://127.0.0.1:1" in capsys.readouterr().err


def test_without_distributed_the_error_names_the_fix(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "distributed", None)  # import distributed raises ImportError
    assert main(["grade", str(answered(tmp_path, "correct")), "--solutions", str(FIXTURES / "solutions"),
                 "--scheduler", "tcp://127.0.0.1:8786"]) == 2
    assert 'pip install "text3d-edu[cluster]"' in capsys.readouterr().err
