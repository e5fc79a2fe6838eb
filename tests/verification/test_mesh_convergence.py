"""Mesh convergence of the injected charge per pulse: the default meshes are within 1 % of the
converged value (issue requirement), and a mesh too coarse at the interfaces is not, so the check
can fail. (The positivity-preserving log-density form is far less mesh-sensitive than the
primitive-variable prototype, where 0.2 nm at the interfaces lost 15 %: here 0.5 nm loses ~1.2 %.)"""
from __future__ import annotations

import csv
from pathlib import Path

import pytest
from mpi4py import MPI

from protonfem.solver.run import Simulation
from solver_cases import short_case

COMM = MPI.COMM_WORLD
#: Five 1-D/2-D runs at tight time tolerances: serial only (a 1-D stack split over ranks is all
#: communication; partition independence is tested in tests/test_solver.py).
pytestmark = pytest.mark.serial
#: One +10 V / 5 ns pulse; a short held rest keeps the test quick while the pulse-end charge is
#: the quantity the mesh has to resolve (double layers at both interfaces). Shipped time-step
#: settings: their time error in this charge is ~0.2 % (against 50x tighter ones).
BASE = dict(pulses_up=1, pulses_down=0, rest=1e-3, output__fields=[], protocol__rest_gate="held")


@pytest.fixture
def shared_tmp(tmp_path):
    return Path(COMM.bcast(str(tmp_path), root=0))


def injected(path: Path, out: Path) -> float:
    summary = Simulation(path, out, progress=False).run()
    assert summary["status"] == "completed", summary["message"]
    COMM.Barrier()
    with open(out / "series.csv", newline="") as fh:
        row = next(r for r in csv.DictReader(fh) if r["event"] == "pulse_end")
    return float(row["pulse_faradaic_charge_C"])


def test_default_1d_mesh_is_converged_to_one_percent(shared_tmp):
    levels = {"default": {}, "half": dict(mesh__h_min=1e-11, mesh__h_max=5e-10, mesh__growth=1.12),
              "quarter": dict(mesh__h_min=5e-12, mesh__h_max=2.5e-10, mesh__growth=1.06)}
    q = {name: injected(short_case(shared_tmp / f"m1{name}.toml", dim=1, **BASE, **kw), shared_tmp / f"m1{name}")
         for name, kw in levels.items()}
    converged = q["quarter"]
    assert abs(q["half"] / converged - 1) < abs(q["default"] / converged - 1) + 2e-3  # converging
    assert q["default"] == pytest.approx(converged, rel=0.01)
    coarse = injected(short_case(shared_tmp / "m1coarse.toml", dim=1, mesh__h_min=5e-10, mesh__h_max=2e-9,
                                 mesh__growth=1.5, **BASE), shared_tmp / "m1coarse")
    assert abs(coarse / converged - 1) > 0.01


def test_default_2d_mesh_is_converged_to_one_percent(shared_tmp):
    default = injected(short_case(shared_tmp / "m2d.toml", dim=2, **BASE), shared_tmp / "m2d")
    fine = injected(short_case(shared_tmp / "m2f.toml", dim=2, mesh__h_min=1e-11, mesh__h_max=5e-10,
                               mesh__growth=1.12, **BASE), shared_tmp / "m2f")
    assert default == pytest.approx(fine, rel=0.01)
