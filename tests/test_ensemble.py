"""The MPI ensemble engine with cheap pure-Python workers (no DOLFINx): every task exactly once,
dynamic hand-out over all ranks, resume, failures, interrupts, and no deadlock when workers raise.
Runs serially and under ``mpiexec -n 2``."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from mpi4py import MPI

from protonfem.solver.ensemble import (COMPLETED, FAILED, INTERRUPTED, PENDING, Task, TaskFailure,
                                       TaskInterrupted, _SharedCounters, _TargetProgress, read_result,
                                       run_ensemble)

COMM = MPI.COMM_WORLD
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def shared_tmp(tmp_path):
    return Path(COMM.bcast(str(tmp_path), root=0))


def make_tasks(n: int) -> list[Task]:
    return [Task(f"t{i:02d}", {"x": i, "scale": 0.5}) for i in range(n)]


class Recorder:
    """A worker that squares x, sleeps a little (so both ranks get tasks) and remembers what this
    rank ran as its group's leader."""

    def __init__(self, fail=(), interrupt=(), fail_on_group_rank=None, sleep=0.01):
        self.fail, self.interrupt, self.fail_on_group_rank = set(fail), set(interrupt), fail_on_group_rank
        self.sleep = sleep
        self.ran: list[str] = []

    def __call__(self, task: Task, comm: MPI.Comm, workdir: Path) -> dict:
        assert workdir.is_dir() and workdir.name == task.id
        # every rank of the group is handed the same task
        assert comm.allgather(task.id) == [task.id] * comm.size
        if comm.rank == 0:
            self.ran.append(task.id)
        time.sleep(self.sleep)
        x = task.parameters["x"]
        if task.id in self.interrupt:
            raise TaskInterrupted("stopped by the test")
        if task.id in self.fail and (self.fail_on_group_rank is None or comm.rank == self.fail_on_group_rank):
            if x % 2:
                raise TaskFailure(f"odd x = {x}", {"square": x * x})
            raise RuntimeError(f"worker bug at x = {x}")
        return {"square": x * x * task.parameters["scale"], "leader_world_rank": COMM.rank}

    def all_ran(self) -> list[str]:
        """What every group leader ran, over all ranks."""
        return sorted(i for part in COMM.allgather(self.ran) for i in part)


def read_table(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.mark.parametrize("group_size", sorted({1, COMM.size}))
def test_every_task_runs_exactly_once(shared_tmp, group_size):
    tasks = make_tasks(12)
    worker = Recorder()
    records = run_ensemble(tasks, worker, shared_tmp, comm=COMM, group_size=group_size, progress=False, label="squares",
                           metadata={"purpose": "test"})
    assert worker.all_ran() == [t.id for t in tasks]
    assert [r["id"] for r in records] == [t.id for t in tasks]
    assert all(r["status"] == COMPLETED and not r["reused"] and r["ranks"] == group_size for r in records)
    assert [r["figures"]["square"] for r in records] == [0.5 * i * i for i in range(12)]
    if group_size == 1 and COMM.size > 1:
        # dynamic hand-out: every rank, rank 0 included, ran tasks
        assert {r["figures"]["leader_world_rank"] for r in records} == set(range(COMM.size))
    COMM.Barrier()
    rows = read_table(shared_tmp / "squares.csv")
    assert [r["id"] for r in rows] == [t.id for t in tasks]
    assert list(rows[0])[:5] == ["id", "status", "x", "scale", "square"]
    assert [float(r["square"]) for r in rows] == [0.5 * i * i for i in range(12)]
    prov = json.loads((shared_tmp / "squares.json").read_text())
    assert prov["counts"] == {"tasks": 12, "completed": 12, "failed": 0, "interrupted": 0, "pending": 0,
                              "reused": 0, "ran": 12}
    assert prov["ranks"] == COMM.size and prov["group_size"] == group_size
    assert prov["metadata"] == {"purpose": "test"} and prov["versions"]["mpi4py"]
    for t in tasks:
        assert read_result(shared_tmp, t.id)["status"] == COMPLETED
    assert not list(shared_tmp.rglob("*.tmp"))  # atomic writes leave no temporaries


def test_resume_skips_completed_and_retries_failed(shared_tmp):
    tasks = make_tasks(8)
    failing = {"t02", "t05"}
    first = run_ensemble(tasks, Recorder(fail=failing), shared_tmp, comm=COMM, progress=False)
    by_id = {r["id"]: r for r in first}
    assert {i for i, r in by_id.items() if r["status"] == FAILED} == failing
    assert by_id["t05"]["message"] == "odd x = 5" and by_id["t05"]["figures"] == {"square": 25}
    assert by_id["t02"]["message"] == "RuntimeError: worker bug at x = 2"
    assert "Traceback" in by_id["t02"]["traceback"]
    COMM.Barrier()
    rows = {r["id"]: r for r in read_table(shared_tmp / "ensemble.csv")}
    assert rows["t05"]["status"] == FAILED and rows["t05"]["message"] == "odd x = 5"

    # A re-run retries exactly the failed tasks; the completed ones are reused untouched.
    if COMM.rank == 0:
        (shared_tmp / "variants" / "t07" / "result.json").write_text("{ truncated")  # unreadable: run again
    COMM.Barrier()
    mtime = os.stat(shared_tmp / "variants" / "t00" / "result.json").st_mtime_ns
    again = Recorder()
    second = run_ensemble(tasks, again, shared_tmp, comm=COMM, progress=False)
    assert again.all_ran() == ["t02", "t05", "t07"]
    assert all(r["status"] == COMPLETED for r in second)
    by_id = {r["id"]: r for r in second}
    assert by_id["t02"]["attempts"] == 2 and not by_id["t02"]["reused"]
    assert by_id["t00"]["attempts"] == 1 and by_id["t00"]["reused"]
    assert os.stat(shared_tmp / "variants" / "t00" / "result.json").st_mtime_ns == mtime

    # A task whose parameters or fingerprint changed is stale: it runs again.
    changed = [Task(t.id, {**t.parameters, "x": 100}) if t.id == "t03" else t for t in tasks]
    changed[4] = Task("t04", tasks[4].parameters, fingerprint="new input")
    third = Recorder()
    records = run_ensemble(changed, third, shared_tmp, comm=COMM, progress=False)
    assert third.all_ran() == ["t03", "t04"]
    assert {r["id"]: r for r in records}["t03"]["figures"]["square"] == 5000.0


@pytest.mark.parametrize("group_size", sorted({1, COMM.size}))
def test_failure_on_one_rank_of_a_group_is_agreed(shared_tmp, group_size):
    tasks = make_tasks(6)
    worker = Recorder(fail={"t01", "t04"}, fail_on_group_rank=group_size - 1)
    records = run_ensemble(tasks, worker, shared_tmp, comm=COMM, group_size=group_size, progress=False)
    status = {r["id"]: r["status"] for r in records}
    assert status == {t.id: FAILED if t.id in ("t01", "t04") else COMPLETED for t in tasks}
    assert COMM.allgather(status) == [status] * COMM.size  # every rank returns the same records


def test_interrupt_stops_the_handout_and_resumes(shared_tmp):
    tasks = make_tasks(30)
    records = run_ensemble(tasks, Recorder(interrupt={"t03"}, sleep=0.05), shared_tmp, comm=COMM, progress=False)
    status = {r["id"]: r["status"] for r in records}
    assert status["t03"] == INTERRUPTED
    assert PENDING in status.values()
    COMM.Barrier()
    prov = json.loads((shared_tmp / "ensemble.json").read_text())
    assert prov["stopped_early"] and prov["counts"]["pending"] == sum(s == PENDING for s in status.values())
    worker = Recorder()
    resumed = run_ensemble(tasks, worker, shared_tmp, comm=COMM, progress=False)
    assert worker.all_ran() == sorted(i for i, s in status.items() if s != COMPLETED)
    assert all(r["status"] == COMPLETED for r in resumed)


@pytest.mark.skipif(COMM.size < 2, reason="needs a second rank")
def test_other_ranks_keep_fetching_while_rank_0_computes(shared_tmp):
    """Rank 0 holds the task counter; a long pure-Python task on it (no MPI calls, like a solve)
    must not stall the other ranks' fetches."""
    busy_s = 1.5

    class BusyOnRankZero:
        def __init__(self):
            self.first = True

        def __call__(self, task, comm, workdir):
            if COMM.rank == 0 and self.first:
                self.first = False
                t0 = time.perf_counter()
                while time.perf_counter() - t0 < busy_s:
                    pass
            else:
                time.sleep(0.01)
            return {"world_rank": COMM.rank}

    records = run_ensemble(make_tasks(20), BusyOnRankZero(), shared_tmp, comm=COMM, progress=False)
    by_rank = [sum(r["figures"]["world_rank"] == k for r in records) for k in range(COMM.size)]
    # while rank 0 is busy the others share the other 19 tasks (~0.01 s each, plus fetches)
    assert by_rank[0] == 1, by_rank


@pytest.mark.skipif(COMM.size < 2, reason="needs a second rank")
@pytest.mark.parametrize("poll", [False, True])
def test_counter_answers_while_rank_0_computes(poll):
    """The counter itself, with and without rank 0's polling thread (the thread is what serves
    ranks on other nodes; on one node shared memory does)."""
    counters = _SharedCounters(COMM)
    helper = _TargetProgress(COMM, poll=poll)
    assert (helper._thread is not None) == (poll and COMM.rank == 0)
    COMM.Barrier()
    claims = []
    if COMM.rank == 0:
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < 1.0:  # pure Python: no MPI calls
            pass
    else:
        t0 = time.perf_counter()
        claims = [counters.claim() for _ in range(10)]
        assert time.perf_counter() - t0 < 0.5  # not held up by rank 0's second of work
    COMM.Barrier()
    all_claims = sorted(c for part in COMM.allgather(claims) for c in part)
    assert all_claims == list(range(10 * (COMM.size - 1)))
    counters.finished(failed=COMM.rank == 1)
    COMM.Barrier()
    assert counters.read(counters.DONE, counters.FAILED) == [COMM.size, 1]
    helper.close()
    counters.free()


def test_bad_arguments_are_refused(shared_tmp):
    with pytest.raises(ValueError, match="does not divide"):
        run_ensemble(make_tasks(2), Recorder(), shared_tmp, comm=COMM, group_size=COMM.size + 1, progress=False)
    with pytest.raises(ValueError, match="unique"):
        run_ensemble([Task("a"), Task("a")], Recorder(), shared_tmp, comm=COMM, progress=False)
    with pytest.raises(ValueError, match="task ids"):
        run_ensemble([Task("../escape")], Recorder(), shared_tmp, comm=COMM, progress=False)


DEADLOCK_SCRIPT = textwrap.dedent("""
    import json, sys, time
    from pathlib import Path
    from mpi4py import MPI
    from protonfem.solver.ensemble import run_ensemble, Task

    def worker(task, comm, workdir):
        time.sleep(0.01)
        x = task.parameters["x"]
        if x % 3 == 0 and comm.rank == comm.size - 1:   # one rank of the group raises, after every collective
            raise ZeroDivisionError(f"x = {x}")
        return {"y": 1.0 / (x % 3)}

    out = Path(sys.argv[1])
    for k in (1, 2):
        records = run_ensemble([Task(f"t{i:02d}", {"x": i}) for i in range(10)], worker, out / f"k{k}",
                               group_size=k, progress=True, label="raise")
        if MPI.COMM_WORLD.rank == 0:
            (out / f"k{k}.json").write_text(json.dumps([r["status"] for r in records]))
""")


@pytest.mark.serial
def test_raising_workers_do_not_deadlock_two_ranks(tmp_path):
    script = tmp_path / "raise.py"
    script.write_text(DEADLOCK_SCRIPT)
    mpiexec = Path(sys.executable).parent / "mpiexec"
    # Without -m mpi4py: an escaping exception would leave the other rank waiting, and the
    # timeout would fail the test.
    proc = subprocess.run([str(mpiexec), "-n", "2", sys.executable, str(script), str(tmp_path)],
                          capture_output=True, text=True, timeout=180, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for k in (1, 2):
        statuses = json.loads((tmp_path / f"k{k}.json").read_text())
        assert statuses == [FAILED if i % 3 == 0 else COMPLETED for i in range(10)]
    assert "raise: 100%" in proc.stderr  # the progress bar reached the end on rank 0
