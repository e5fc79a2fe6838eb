"""MPI ensembles: many independent tasks spread over the ranks of a communicator, resumable.

The engine knows nothing about what a task does; :mod:`protonfem.solver.sweep` runs case variants
with it, and any other driver (a response map, a sensitivity study) can do the same::

    tasks = [Task(id=f"t{i:03d}", parameters={"x": x}) for i, x in enumerate(xs)]

    def worker(task: Task, comm: MPI.Comm, workdir: Path) -> dict:
        ...                       # collective over comm (the task's group of ranks)
        return {"y": y}           # figures: a flat mapping of names to numbers/strings

    records = run_ensemble(tasks, worker, Path("results/map"), group_size=1, label="map")

How it works:

* ``comm`` is split into groups of ``group_size`` consecutive ranks; a task runs on one group.
* Tasks are handed out dynamically from a shared counter, an MPI one-sided window on rank 0
  (``Fetch_and_op``), so every rank works, rank 0 included, and a slow task does not hold up the
  others. Group leaders fetch the next index and broadcast it to their group.
* Each finished task writes ``outdir/variants/<id>/result.json`` atomically (leader only). A re-run
  skips tasks whose result is ``completed`` for the same parameters and fingerprint; failed,
  interrupted, stale and missing ones run (again).
* A worker exception (including :class:`TaskFailure` and the solver's ``SolverFailure``) marks its
  task ``failed`` with the message and the ensemble goes on. The group agrees on the outcome
  (the worst status over its ranks), so a worker that raises on one rank only after its last
  collective still ends in one consistent record. A worker must not leave a rank of its group
  inside a collective the others never reach: that would hang the group, not the engine (under
  ``python -m mpi4py`` an uncaught exception aborts every rank instead).
* SIGINT/SIGTERM, or a worker raising :class:`TaskInterrupted`, stops the hand-out: running tasks
  finish (or stop, if the worker checks for signals), the rest stay ``pending`` for the next run.
* At the end rank 0 writes ``outdir/<label>.csv`` (one row per task, sorted by id: id, status,
  the task parameters, the worker's figures, wall time, attempts, message) and
  ``outdir/<label>.json`` (counts, wall time, ranks, group size, versions, caller's metadata),
  both atomically, and every rank returns the merged records.

One-sided progress: all accesses to the counters live in one passive-target epoch
(``Lock_all(MODE_NOCHECK)`` + ``Flush``), which MPICH serves through shared memory on one node
without rank 0's help; when the ranks span nodes, a thread on rank 0 polls MPI so that fetches are
answered while it computes (:class:`_TargetProgress`). Rank 0 computes tasks like every other rank.
"""
from __future__ import annotations

import csv
import io
import json
import os
import platform
import re
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from mpi4py import MPI

COMPLETED, FAILED, INTERRUPTED, PENDING = "completed", "failed", "interrupted", "pending"
#: Which outcome wins when the ranks of a group disagree (higher wins).
_SEVERITY = {COMPLETED: 0, INTERRUPTED: 1, FAILED: 2}
RESULT_FILE = "result.json"
_TASK_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass(frozen=True)
class Task:
    """One unit of work: ``id`` names its directory and its row (letters, digits, ``._-``);
    ``parameters`` (JSON-serialisable) become columns of the merged table; ``fingerprint``
    identifies everything else the result depends on (e.g. a hash of the full input), so a
    completed result is reused only while both are unchanged."""

    id: str
    parameters: dict = field(default_factory=dict)
    fingerprint: str = ""


class TaskFailure(Exception):
    """Raised by a worker: the task failed; ``figures`` computed so far are still recorded."""

    def __init__(self, message: str, figures: Mapping | None = None):
        super().__init__(message)
        self.figures = dict(figures or {})


class TaskInterrupted(Exception):
    """Raised by a worker that stopped on a signal: the task stays to be rerun and the ensemble
    hands out nothing more."""


Worker = Callable[[Task, MPI.Comm, Path], Mapping]


# ---------------------------------------------------------------------------------------------
def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` so that ``path`` holds either the old or the complete new contents."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", newline="") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _json_roundtrip(obj):
    """``obj`` as it reads back from JSON (tuples become lists, ...), to compare with a stored one."""
    return json.loads(json.dumps(obj, default=str))


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def result_path(outdir: Path, task_id: str) -> Path:
    return Path(outdir) / "variants" / task_id / RESULT_FILE


def read_result(outdir: Path, task_id: str) -> dict | None:
    """The stored record of a task, or None if there is none or it cannot be read."""
    try:
        record = json.loads(result_path(outdir, task_id).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _reusable(record: dict | None, task: Task) -> bool:
    return (record is not None and record.get("status") == COMPLETED
            and record.get("parameters") == _json_roundtrip(task.parameters)
            and record.get("fingerprint", "") == task.fingerprint)


def _on_root(comm: MPI.Comm, fn: Callable[[], object]):
    """Run ``fn`` on rank 0 and give its result to every rank; an exception there is raised on
    every rank (rather than leaving the others waiting in the broadcast)."""
    outcome = None
    if comm.rank == 0:
        try:
            outcome = (True, fn())
        except Exception as exc:  # noqa: BLE001 - re-raised below, on every rank
            outcome = (False, exc)
    ok, value = comm.bcast(outcome, root=0)
    if not ok:
        raise value
    return value


# ---------------------------------------------------------------------------------------------
class _SharedCounters:
    """Four int64 slots in a window on rank 0: the next task index, tasks finished, tasks failed,
    and a stop flag. Every access is an atomic ``Fetch_and_op`` completed by a ``Flush``, inside one
    shared passive-target epoch that lasts the whole ensemble (``Lock_all`` with ``MODE_NOCHECK``:
    nobody ever takes an exclusive lock), so an access costs one round trip to rank 0, not three."""

    NEXT, DONE, FAILED, STOP = range(4)

    def __init__(self, comm: MPI.Comm):
        nbytes = 4 * 8 if comm.rank == 0 else 0
        self.win = MPI.Win.Allocate(nbytes, disp_unit=8, comm=comm)
        if comm.rank == 0:  # MPI leaves allocated window memory uninitialised
            self.win.Lock(0, MPI.LOCK_EXCLUSIVE)
            self.win.Put([np.zeros(4, dtype=np.int64), MPI.INT64_T], 0)
            self.win.Unlock(0)
        comm.Barrier()
        self.win.Lock_all(MPI.MODE_NOCHECK)

    def _fetch_and_ops(self, *ops: tuple[int, int, MPI.Op]) -> list[int]:
        """Apply ``(slot, value, op)`` atomically in order; the slots' values before each op."""
        origin = np.array([value for _, value, _ in ops], dtype=np.int64)
        result = np.zeros(len(ops), dtype=np.int64)
        for k, (slot, _, op) in enumerate(ops):
            self.win.Fetch_and_op([origin[k:k + 1], MPI.INT64_T], [result[k:k + 1], MPI.INT64_T], 0, slot, op)
        self.win.Flush(0)
        return [int(r) for r in result]

    def claim(self) -> int:
        """The next task index, or -1 once a stop was requested (the index drawn is then dropped:
        the task stays pending)."""
        stopped, index = self._fetch_and_ops((self.STOP, 0, MPI.NO_OP), (self.NEXT, 1, MPI.SUM))
        return -1 if stopped else index

    def request_stop(self) -> None:
        self._fetch_and_ops((self.STOP, 1, MPI.REPLACE))

    def finished(self, failed: bool) -> None:
        self._fetch_and_ops((self.FAILED, int(failed), MPI.SUM), (self.DONE, 1, MPI.SUM))

    def read(self, *slots: int) -> list[int]:
        return self._fetch_and_ops(*((slot, 0, MPI.NO_OP) for slot in slots))

    def free(self) -> None:
        self.win.Unlock_all()
        self.win.Free()


class _TargetProgress:
    """Keeps rank 0 answering the others' fetches while it computes a task itself.

    On one node MPICH serves these atomics through shared memory, with no help from rank 0
    (measured: 0.0 ms per fetch while rank 0 runs pure Python). Between nodes an MPI may serve a
    ``Fetch_and_op`` only when the window's owner enters its progress engine, which a rank deep in
    a solve does not (measured here with per-access ``Lock``/``Unlock`` epochs: every fetch waited
    for rank 0's task to end, and 2 ranks ran no faster than 1). So when ``comm`` spans several
    nodes, a thread on rank 0 polls the engine (``Iprobe`` on a private duplicate of ``comm``; a
    COMM_SELF duplicate does not reach the window's traffic) every few milliseconds. Needs
    ``MPI_THREAD_MULTIPLE``, mpi4py's default. (``MPIR_CVAR_ASYNC_PROGRESS=1`` does the same inside
    MPICH but spins a core per rank.)
    """

    POLL_INTERVAL_S = 0.005

    def __init__(self, comm: MPI.Comm, poll: bool | None = None):
        """``poll``: run the thread (None: only if ``comm`` spans several nodes)."""
        self._comm = comm.Dup()  # collective: every rank enters and leaves together
        self._stop = threading.Event()
        self._thread = None
        if poll is None:
            node = comm.Split_type(MPI.COMM_TYPE_SHARED)
            poll = node.size < comm.size
            node.Free()
        if poll and comm.rank == 0 and comm.size > 1 and MPI.Query_thread() == MPI.THREAD_MULTIPLE:
            self._thread = threading.Thread(target=self._poll, name="ensemble-mpi-progress", daemon=True)
            self._thread.start()

    def _poll(self):
        while not self._stop.wait(self.POLL_INTERVAL_S):
            self._comm.Iprobe(MPI.ANY_SOURCE, MPI.ANY_TAG)

    def stop(self):
        """Stop the thread (before MPI objects it could be touching are freed, or MPI finalises)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def close(self):
        """Stop the thread and free its communicator (collective)."""
        self.stop()
        self._comm.Free()


class _StopSignals:
    """SIGINT/SIGTERM between tasks set a flag (main thread only; restored on exit). A worker
    may install its own handlers while it runs (the device simulation does, and stops cleanly)."""

    def __init__(self):
        self.requested = False
        self._old = {}

    def _handle(self, signum, frame):
        self.requested = True

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, handler in self._old.items():
            signal.signal(sig, handler)


# ---------------------------------------------------------------------------------------------
def _run_task(task: Task, worker: Worker, group: MPI.Comm, outdir: Path, attempts: int) -> dict:
    """Run one task on every rank of ``group``; the returned record is the group's agreed one."""
    workdir = Path(outdir) / "variants" / task.id
    if group.rank == 0:
        workdir.mkdir(parents=True, exist_ok=True)
    group.Barrier()  # the directory exists before any rank of the worker looks for it
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    t0 = time.perf_counter()
    status, message, trace, figures = COMPLETED, "", "", {}
    try:
        figures = dict(worker(task, group, workdir) or {})
    except TaskInterrupted as exc:
        status, message = INTERRUPTED, _one_line(exc) or "interrupted by a signal"
    except KeyboardInterrupt:
        status, message = INTERRUPTED, "interrupted by a signal"
    except TaskFailure as exc:
        status, message, figures = FAILED, _one_line(exc), exc.figures
    except Exception as exc:  # noqa: BLE001 - a failed task must not end the ensemble
        status, message = FAILED, _one_line(f"{type(exc).__name__}: {exc}")
        trace = traceback.format_exc()
    wall = time.perf_counter() - t0
    # The ranks of a group agree on one outcome: the worst, with the message of a rank that saw it.
    outcomes = group.allgather((status, message, trace))
    status, message, trace = max(outcomes, key=lambda o: _SEVERITY[o[0]])
    record = {
        "id": task.id, "status": status, "message": message, "parameters": _json_roundtrip(task.parameters),
        "figures": _json_roundtrip(figures), "fingerprint": task.fingerprint,
        "attempts": attempts + 1, "ranks": group.size, "started_utc": started, "wall_time_s": wall,
    }
    if trace:
        record["traceback"] = trace
    return record


def _table(records: Sequence[dict]) -> str:
    """The merged CSV: id, status, parameters, figures, wall time, attempts, message."""
    def union(key: str) -> list[str]:
        names: dict[str, None] = {}
        for r in records:
            names.update(dict.fromkeys(r.get(key) or {}))
        return list(names)

    own = ["id", "status", "wall_time_s", "attempts", "message"]  # the engine's columns win a name clash
    params = [p for p in union("parameters") if p not in own]
    figures = [f for f in union("figures") if f not in params and f not in own]
    columns = [*own[:2], *params, *figures, *own[2:]]

    def cell(value) -> str:
        if value is None:
            return ""
        if isinstance(value, float):
            return repr(value)  # shortest text that reads back to the same float
        if isinstance(value, (list, dict)):
            return json.dumps(value)
        return str(value)

    buf = io.StringIO()
    out = csv.writer(buf, lineterminator="\n")
    out.writerow(columns)
    for r in records:
        values = {**(r.get("figures") or {}), **(r.get("parameters") or {}), **{k: r.get(k) for k in own}}
        out.writerow([cell(values.get(c)) for c in columns])
    return buf.getvalue()


def _versions() -> dict:
    import mpi4py

    from protonfem import __version__
    return {"protonfem": __version__, "mpi4py": mpi4py.__version__, "numpy": np.__version__,
            "python": platform.python_version(), "mpi": MPI.Get_library_version().splitlines()[0].strip()}


def _work_through(tasks, todo, previous, worker, comm, group, outdir, counters, show_progress) -> tuple[list, bool]:
    """Claim and run tasks until none are left or a stop is requested; the records this rank
    wrote (as a group leader) and whether the ensemble was stopped early."""
    produced = []
    with _StopSignals() as signals:
        while True:
            index = -1
            if group.rank == 0:
                if signals.requested:
                    counters.request_stop()
                index = counters.claim()
            index = group.bcast(index, root=0)
            if not 0 <= index < len(todo):
                break
            task = tasks[todo[index]]
            record = _run_task(task, worker, group, outdir, attempts=(previous[task.id] or {}).get("attempts", 0))
            if group.rank == 0:
                write_text_atomic(result_path(outdir, task.id), json.dumps(record, indent=2))
                produced.append(record)
                if record["status"] == INTERRUPTED:
                    counters.request_stop()
                counters.finished(failed=record["status"] == FAILED)
            show_progress()
        # Rank 0 keeps the bar moving while the other groups finish; a non-blocking barrier
        # ends the wait without anyone counting tasks.
        done = comm.Ibarrier()
        while not done.Test():
            show_progress()
            time.sleep(0.1)
        return produced, signals.requested or bool(counters.read(counters.STOP)[0])


def run_ensemble(tasks: Sequence[Task], worker: Worker, outdir: Path | str, comm: MPI.Comm = MPI.COMM_WORLD,
                 group_size: int = 1, progress: bool = True, label: str = "ensemble",
                 metadata: Mapping | None = None) -> list[dict]:
    """Run every task not already completed in ``outdir``; return one record per task, by id.

    Collective over ``comm``: every rank calls it with the same ``tasks``. ``worker(task, group,
    workdir)`` runs collectively on the task's group of ``group_size`` ranks with ``workdir =
    outdir/variants/<id>`` (created for it) and returns the task's figures, a flat mapping of
    names to scalars (the leader's is recorded); it reports failure by raising (``TaskFailure``
    keeps partial figures) and an interrupt by raising ``TaskInterrupted``.

    A record: ``id``, ``status`` (``completed``, ``failed``, ``interrupted``, or ``pending`` for a
    task that never started), ``message``, ``parameters``, ``figures``, ``fingerprint``,
    ``attempts``, ``ranks``, ``started_utc``, ``wall_time_s`` (+ ``traceback`` for an unexpected
    exception) as in ``result.json``, plus ``reused`` (True: completed in an earlier run).
    ``metadata`` (e.g. the input's hash) goes into ``<label>.json``.
    """
    tasks = list(tasks)
    ids = [t.id for t in tasks]
    bad = [i for i in ids if not _TASK_ID.match(i)]
    if bad:
        raise ValueError(f"task ids must be letters, digits, '.', '_' or '-' (not starting with a dot): {bad[:3]}")
    if len(set(ids)) != len(ids):
        raise ValueError("task ids must be unique")
    if group_size < 1 or comm.size % group_size:
        raise ValueError(f"group size {group_size} does not divide the {comm.size} MPI rank(s); "
                         f"use a divisor of {comm.size}")
    outdir = Path(outdir)
    t0 = time.perf_counter()

    def scan():
        (outdir / "variants").mkdir(parents=True, exist_ok=True)
        return {t.id: read_result(outdir, t.id) for t in tasks}

    previous = _on_root(comm, scan)
    todo = [i for i, t in enumerate(tasks) if not _reusable(previous[t.id], t)]
    reused = len(tasks) - len(todo)

    group = comm.Split(color=comm.rank // group_size, key=comm.rank)
    counters = _SharedCounters(comm)
    progress_thread = _TargetProgress(comm)
    bar = None
    if progress and comm.rank == 0:
        from tqdm import tqdm
        bar = tqdm(total=len(tasks), initial=reused, desc=label, unit="task", file=sys.stderr, dynamic_ncols=True)

    def show_progress():
        if bar is not None:
            done, failed = counters.read(counters.DONE, counters.FAILED)
            bar.n = reused + done
            bar.set_postfix_str(f"failed={failed}", refresh=False)
            bar.refresh()

    try:
        produced, interrupted = _work_through(tasks, todo, previous, worker, comm, group, outdir, counters,
                                              show_progress)
    except BaseException:
        progress_thread.stop()  # an engine error: no polling thread left behind at MPI_Finalize
        raise
    show_progress()
    if bar is not None:
        bar.close()
    progress_thread.close()
    counters.free()
    group.Free()

    gathered = comm.gather(produced, root=0)

    def merge():
        new = {r["id"]: r for part in gathered for r in part}
        records = []
        for t in sorted(tasks, key=lambda t: t.id):
            if t.id in new:
                records.append({**new[t.id], "reused": False})
            elif previous[t.id] is not None:  # completed earlier, or failed and not retried (stopped)
                records.append({**previous[t.id], "reused": _reusable(previous[t.id], t)})
            else:
                records.append({"id": t.id, "status": PENDING, "message": "not run",
                                "parameters": _json_roundtrip(t.parameters),
                                "figures": {}, "fingerprint": t.fingerprint, "attempts": 0, "reused": False})
        counts = {s: sum(r["status"] == s for r in records) for s in (COMPLETED, FAILED, INTERRUPTED, PENDING)}
        provenance = {
            "label": label, "finished_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "wall_time_s": time.perf_counter() - t0, "ranks": comm.size, "group_size": group_size,
            "groups": comm.size // group_size, "host": platform.node(), "stopped_early": interrupted,
            "counts": {"tasks": len(tasks), **counts, "reused": sum(r["reused"] for r in records), "ran": len(new)},
            "failed": [{"id": r["id"], "message": r["message"]} for r in records if r["status"] == FAILED],
            "table": f"{label}.csv", "versions": _versions(), "metadata": dict(metadata or {}),
        }
        write_text_atomic(outdir / f"{label}.csv", _table(records))
        write_text_atomic(outdir / f"{label}.json", json.dumps(provenance, indent=2, default=str))
        return records

    return _on_root(comm, merge)
