"""Checkpoint and restart: a run killed with SIGKILL and continued with ``--resume`` writes the
same series.csv as a run never stopped, on 1 and on 2 MPI ranks; 1-rank and 2-rank results agree
to 1e-8; a checkpoint is refused for another case or rank count."""
from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from solver_cases import short_case

#: Subprocess tests (they start mpiexec themselves): one rank of the test runner is enough.
pytestmark = pytest.mark.serial

MPIEXEC = Path(sys.executable).parent / "mpiexec"
PULSES = 6  # 4 up, 2 down; a checkpoint after every second pulse
CASE_KW = dict(pulses_up=4, pulses_down=2, rest=1e-4, output__fields=["potential"], output__field_every=2,
               output__checkpoint_every=2, mesh__h_min=5e-11, mesh__h_max=2e-9, mesh__growth=1.5)


def _command(case: Path, out: Path, ranks: int, *extra: str) -> list[str]:
    cmd = [sys.executable, "-m", "protonfem.cli", "run", str(case), "-o", str(out), "-q", *extra]
    return [str(MPIEXEC), "-n", str(ranks), *cmd] if ranks > 1 else cmd


def _read_rows(out: Path) -> list[str]:
    path = out / "series.csv"
    return path.read_text().splitlines() if path.is_file() else []


def _reads(out: Path) -> int:
    return sum(",read," in line for line in _read_rows(out))


def _run(cmd: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def case(tmp_path_factory) -> Path:
    return short_case(tmp_path_factory.mktemp("resume") / "resume.toml", **CASE_KW)


@pytest.mark.parametrize("ranks", [1, 2])
def test_sigkill_then_resume_gives_the_same_series(case, tmp_path, ranks):
    full = tmp_path / "full"
    r = _run(_command(case, full, ranks))
    assert r.returncode == 0, r.stderr
    assert _reads(full) == PULSES

    killed = tmp_path / "killed"
    proc = subprocess.Popen(_command(case, killed, ranks), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    deadline = time.time() + 600
    # kill after the checkpoint of pulse 2 and in the middle of the later pulses
    while _reads(killed) < 3 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, "the run finished before it could be killed; make the case longer"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert (killed / "checkpoint" / "checkpoint.json").is_file()
    assert 3 <= _reads(killed) < PULSES

    r = _run(_command(case, killed, ranks, "--resume"))
    assert r.returncode == 0, r.stderr
    assert _read_rows(killed) == _read_rows(full)  # identical, byte for byte
    assert (killed / "fields_resume1.xdmf").is_file()


def test_one_and_two_ranks_agree(tmp_path):
    # Partition independence to 1e-8 needs Newton converged below it: the shipped 1e-6 kT/q leaves
    # ~2e-8 of the gate charge to the round-off of the two factorisations (PETSc LU / MUMPS).
    case = short_case(tmp_path / "tight.toml", **CASE_KW, solver__potential_tolerance=1e-10)
    outs = {}
    for ranks in (1, 2):
        outs[ranks] = tmp_path / f"n{ranks}"
        r = _run(_command(case, outs[ranks], ranks))
        assert r.returncode == 0, r.stderr
    rows = {k: list(csv.DictReader(open(v / "series.csv"))) for k, v in outs.items()}
    assert len(rows[1]) == len(rows[2])
    # The gate's surface charge during floating rests is what the floating-gate solve matches (to
    # 1e-4 C kT/q, stopping after different iteration counts on the two factorisations): 1e-7.
    for key, rel in (("conductance_S", 1e-8), ("inventory_channel", 1e-8), ("faradaic_charge_C", 1e-8),
                     ("gate_charge_C", 1e-7)):
        # relative to the largest value of the column: the gate charge passes through zero
        scale = max(abs(float(r[key])) for r in rows[1] if r[key] not in ("", "nan"))
        for a, b in zip(rows[1], rows[2]):
            if a[key] not in ("", "nan"):
                assert float(b[key]) == pytest.approx(float(a[key]), rel=rel, abs=rel * scale), key


def test_resume_refuses_other_case_or_rank_count(case, tmp_path):
    out = tmp_path / "o"
    r = _run(_command(case, out, 1))
    assert r.returncode == 0, r.stderr
    r = _run(_command(case, out, 2, "--resume"))
    assert r.returncode != 0 and "mpiexec -n 1" in r.stderr, r.stderr
    other = short_case(tmp_path / "other.toml", **{**CASE_KW, "pulses_up": 3})
    r = _run(_command(other, out, 1, "--resume"))
    assert r.returncode != 0 and "another version of the case file" in r.stderr, r.stderr
    r = _run(_command(case, tmp_path / "empty", 1, "--resume"))
    assert r.returncode == 2 and "no checkpoint" in r.stderr, r.stderr
