"""Protocol features: read-outs during a rest (retention curves) land exactly on their times and
are written as 'rest_read' rows; delays beyond the rest are refused with the key named."""
from __future__ import annotations

import csv
from pathlib import Path

import pytest
import tomli_w
import tomllib
from mpi4py import MPI

from protonfem.solver.case import CaseError, load_case
from solver_cases import short_case

COMM = MPI.COMM_WORLD


def _with_read_delays(case: Path, delays: list[float]) -> Path:
    data = tomllib.loads(case.read_text())
    data["protocol"]["trains"][0]["read_delays"] = delays
    COMM.Barrier()
    if COMM.rank == 0:
        case.write_text(tomli_w.dumps(data))
    COMM.Barrier()
    return case


@pytest.fixture
def shared_tmp(tmp_path):
    return Path(COMM.bcast(str(tmp_path), root=0))


def test_reads_during_the_rest(shared_tmp):
    from protonfem.solver.run import Simulation

    delays = [1e-6, 1e-5, 1e-4]
    case = short_case(shared_tmp / "ret2.toml", pulses_up=1, pulses_down=0, rest=1e-3, output__fields=[],
                      mesh__h_min=5e-11, mesh__h_max=2e-9, mesh__growth=1.5)
    _with_read_delays(case, delays)
    summary = Simulation(case, shared_tmp / "o", progress=False).run()
    assert summary["status"] == "completed", summary["message"]
    COMM.Barrier()
    rows = list(csv.DictReader(open(shared_tmp / "o" / "series.csv")))
    end = float(next(r for r in rows if r["event"] == "pulse_end")["time_s"])
    reads = [r for r in rows if r["event"] == "rest_read"]
    assert [float(r["time_s"]) - end for r in reads] == pytest.approx(delays, rel=1e-9)
    g = [float(r["conductance_S"]) for r in reads]
    assert all(x > 0 for x in g)
    # the read at the end of the rest is still the pulse's read, after the rest reads
    final = [r for r in rows if r["event"] == "read"]
    assert len(final) == 1 and float(final[0]["time_s"]) > float(reads[-1]["time_s"])
    assert summary["pulses_completed"] == 1


@pytest.mark.serial
def test_read_delay_beyond_rest_is_refused(tmp_path):
    case = _with_read_delays(short_case(tmp_path / "bad.toml", pulses_up=1, pulses_down=0, rest=1e-3), [0.01])
    with pytest.raises(CaseError, match=r"bad.toml: protocol.trains\[0\]: read_delays must be shorter than rest"):
        load_case(case)
