"""Optional verification problem ``sg_vs_fe``: the finite-element device model against the
independent 1-D Scharfetter-Gummel solver (:mod:`.sg1d`) on the reference device's first pulse
(+10 V, 5 ns) and its 1 s rest.

Importing this module raises ImportError when ``sg1d.run_reference_pulse`` is not available, so
``protonfem verify`` simply leaves the problem out. It runs only without ``--quick``.
"""
from __future__ import annotations

import tempfile
import time
import tomllib
from pathlib import Path

from mpi4py import MPI

from .common import Check, Result
from .sg1d import run_reference_pulse  # noqa: F401  (ImportError: problem not offered)

REFERENCE_CASE = Path(__file__).resolve().parents[2] / "cases" / "onen2022" / "reference.toml"
#: Relative agreement asked of the two discretisations by the device-physics issue (injected charge
#: within 1 %, at the end of the pulse and after its rest; the read-out conductance too).
TOLERANCE = 0.01


def _one_pulse_case(path: Path) -> Path:
    import tomli_w

    data = tomllib.loads(REFERENCE_CASE.read_text())
    first = data["protocol"]["trains"][0]
    first.update(count=1)
    data["protocol"]["trains"] = [first]
    data["protocol"]["rest_gate"] = "held"          # the SG model holds the gate at rest_voltage
    data["name"] = "verify-sg-vs-fe"
    data.setdefault("output", {})["fields"] = []
    path.write_text(tomli_w.dumps(data))
    return path


def sg_vs_fe(quick: bool = False, comm=MPI.COMM_WORLD) -> Result:
    t0 = time.perf_counter()
    from protonfem.solver.run import Simulation

    tmp = tempfile.mkdtemp(prefix="protonfem-verify-") if comm.rank == 0 else None
    tmp = Path(comm.bcast(tmp, root=0))
    case = tmp / "one_pulse.toml"
    if comm.rank == 0:
        _one_pulse_case(case)
    comm.Barrier()
    summary = Simulation(case, tmp / "fe", comm=comm, progress=False).run()
    fe_g = summary["per_pulse"][0]["conductance_S"]
    fe_q = summary["per_pulse"][0]["faradaic_charge_C"]
    import csv
    with open(tmp / "fe" / "series.csv", newline="") as fh:
        fe_end = float(next(r for r in csv.DictReader(fh) if r["event"] == "pulse_end")["pulse_faradaic_charge_C"])
    sg = run_reference_pulse(case) if comm.rank == 0 else None
    sg = comm.bcast(sg, root=0)
    checks = [Check("read-out conductance after pulse 1, FE vs SG", fe_g, sg["conductance_read_S"], TOLERANCE, "rel", "S"),
              Check("injected (Faradaic) charge at the end of pulse 1, FE vs SG", fe_end,
                    sg["faradaic_charge_pulse_end_C"], TOLERANCE, "rel", "C"),
              Check("Faradaic charge of pulse 1 after its 1 s rest, FE vs SG", fe_q, sg["faradaic_charge_read_C"],
                    TOLERANCE, "rel", "C")]
    res = Result("sg_vs_fe", "FE device model vs independent 1-D Scharfetter-Gummel, reference pulse", checks,
                 {"quantity": ["conductance_S", "faradaic_charge_C"], "fe": [fe_g, fe_q],
                  "sg": [sg["conductance_read_S"], sg["faradaic_charge_read_C"]]},
                 [f"FE status {summary.get('status')}; SG wall {sg.get('wall_time_s', float('nan')):.2f} s; "
                  f"tolerance {TOLERANCE:g} relative is this suite's choice",
                  "the Faradaic charge kept at the read is the net of injection during the pulse and back-flow "
                  "during the rest (SG: ~5x cancellation), so its relative difference is ~5x that of the pulse-end "
                  "charge"])
    res.wall_time_s = time.perf_counter() - t0
    return res
