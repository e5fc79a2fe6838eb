"""End-to-end solver runs: conservation, Gauss's law, read-out, outputs, serial-vs-parallel."""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import h5py
import numpy as np
import pytest
from mpi4py import MPI

from protonfem.solver.case import load_case
from protonfem.solver.run import SERIES_COLUMNS, Simulation
from solver_cases import COARSE_MESH, short_case

COMM = MPI.COMM_WORLD


@pytest.fixture
def shared_tmp(tmp_path):
    return Path(COMM.bcast(str(tmp_path), root=0))


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_closed_stack_conserves_protons_and_charge(shared_tmp):
    case = short_case(shared_tmp / "cons.toml", dim=1, pulses_up=2, pulses_down=2)
    out = shared_tmp / "out"
    summary = Simulation(case, out, progress=False).run()
    assert summary["status"] == "completed", summary["message"]
    assert summary["pulses_completed"] == 4
    # Inventory conserved to 1e-10 relative at every event of every pulse, as written to series.csv.
    COMM.Barrier()
    rows = _rows(out / "series.csv")
    assert list(rows[0].keys()) == SERIES_COLUMNS
    assert [r["event"] for r in rows[:3]] == ["initial", "pulse_end", "read"]
    errs = [float(r["inventory_error"]) for r in rows]
    assert max(errs) < 1e-10
    assert max(float(r["gauss_error"]) for r in rows) < 1e-8
    # The +10 V pulse moves protons out of the reservoir into the stack, and -8.5 V takes them back.
    up = [float(r["pulse_faradaic_charge_C"]) for r in rows if r["event"] == "read" and float(r["pulse_amplitude_V"]) > 0]
    down = [float(r["pulse_faradaic_charge_C"]) for r in rows if r["event"] == "read" and float(r["pulse_amplitude_V"]) < 0]
    assert all(q > 0 for q in up) and all(q < 0 for q in down)
    # Displacement energy of a 10 V edge into ~27 aF of 10 nm PSG is of order C V^2 / 2 ~ 1.4 fJ.
    e_disp = [float(r["pulse_displacement_energy_J"]) for r in rows if r["event"] == "read"][0]
    assert 0.3e-15 < e_disp < 5e-15
    g = [float(r["conductance_S"]) for r in rows if r["event"] in ("initial", "read")]
    assert g[1] > g[0] and g[-1] < g[2]
    summ = json.loads((out / "summary.json").read_text())
    assert summ["status"] == "completed" and summ["ranks"] == COMM.size
    assert summ["case_hash"] and summ["versions"]["dolfinx"]
    assert (out / "conductance.png").stat().st_size > 1000
    assert (out / "fields.xdmf").exists() and (out / "fields.vtkhdf").exists()


def test_rest_state_conductance_is_the_exact_integral(shared_tmp):
    """At rest the channel is uniform: G = sigma_ref * t_ch * W / L exactly (88 MOhm device)."""
    from protonfem.solver.mesh import create_device_mesh
    from protonfem.solver.model import DeviceModel
    from protonfem.solver.readout import ConductanceReadout

    for dim in (1, 2, 3):
        path = short_case(shared_tmp / f"g{dim}.toml", dim=dim)
        case = load_case(path)
        dm = create_device_mesh(case, COMM)
        model = DeviceModel(case, dm.mesh, dm.cell_tags, dm.facet_tags)
        g = ConductanceReadout(model).conductance()
        law = case.materials.channel.conductivity
        expected = law.reference_conductivity * case.geometry.channel_thickness * case.geometry.channel_width / case.geometry.channel_length
        assert g == pytest.approx(expected, rel=1e-9)
        assert expected == pytest.approx(1 / 88e6, rel=0.01)


def test_failed_solve_reports_and_keeps_results(shared_tmp):
    # A dt_min above every usable step makes the first rejected step fatal.
    case = short_case(shared_tmp / "fail.toml", dim=1, solver__dt_min=1e-10, solver__dt_initial=1e-10,
                      solver__newton_max_it=2)
    out = shared_tmp / "fail_out"
    summary = Simulation(case, out, progress=False).run()
    assert summary["status"] == "failed"
    assert "dt_min" in summary["message"] and "Try:" in summary["message"]
    COMM.Barrier()
    summ = json.loads((out / "summary.json").read_text())
    assert summ["status"] == "failed"
    rows = _rows(out / "series.csv")
    assert rows[0]["event"] == "initial"


def _assert_same_runs(out_a: Path, sum_a: dict, out_b: Path, sum_b: dict, rel: float):
    """Same conductance series, Faradaic charges and region inventories, event by event."""
    for a, b in zip(sum_a["per_pulse"], sum_b["per_pulse"], strict=True):
        assert a["conductance_S"] == pytest.approx(b["conductance_S"], rel=rel)
        assert a["faradaic_charge_C"] == pytest.approx(b["faradaic_charge_C"], rel=rel, abs=1e-30)
    COMM.Barrier()
    ra, rb = _rows(out_a / "series.csv"), _rows(out_b / "series.csv")
    assert len(ra) == len(rb)
    for a, b in zip(ra, rb):
        for key in ("inventory_reservoir", "inventory_electrolyte", "inventory_channel", "conductance_S"):
            x, y = float(a[key]), float(b[key])
            if math.isnan(x):
                assert math.isnan(y)
            else:
                assert x == pytest.approx(y, rel=rel)


def _parallel_against_serial(case: Path, tmp: Path):
    par = Simulation(case, tmp / "par", progress=False).run()
    ser = None
    if COMM.rank == 0:
        ser = Simulation(case, tmp / "ser", comm=MPI.COMM_SELF, progress=False).run()
    ser = COMM.bcast(ser, root=0)
    assert par["status"] == ser["status"] == "completed", (par["message"], ser["message"])
    assert par["ranks"] == 2 and ser["ranks"] == 1
    _assert_same_runs(tmp / "par", par, tmp / "ser", ser, rel=1e-8)


@pytest.mark.skipif(COMM.size != 2, reason="compares a 2-rank run against a serial one; run under mpiexec -n 2")
def test_2d_parallel_equals_serial(shared_tmp):
    case = short_case(shared_tmp / "par2d.toml", dim=2, pulses_up=1, pulses_down=1, rest=1e-4)
    _parallel_against_serial(case, shared_tmp)


@pytest.mark.slow
@pytest.mark.skipif(COMM.size != 2, reason="compares a 2-rank run against a serial one; run under mpiexec -n 2")
@pytest.mark.parametrize("linear_solver", ["direct", "iterative"])
def test_3d_parallel_equals_serial(shared_tmp, linear_solver):
    """Partition independence in 3-D, with MUMPS and with the field-split Krylov solver (whose
    block-Jacobi/ILU and multigrid preconditioners do depend on the partition: the converged
    Newton solution must not). One pulse and a short rest on a coarse mesh (~2 k dofs): the
    iterative run is the slow one (its rest's long steps fall back to MUMPS)."""
    case = short_case(shared_tmp / f"par3d_{linear_solver}.toml", dim=3, pulses_up=1, pulses_down=0, rest=1e-4,
                      output__fields=[], solver__linear_solver=linear_solver, **COARSE_MESH)
    _parallel_against_serial(case, shared_tmp)


@pytest.mark.serial
def test_3d_equals_2d_across_a_uniform_width(shared_tmp):
    """The reference device is uniform across its width (contacts and gate span it, the flanks are
    insulating), so the 3-D run must reproduce the 2-D cross-section times the width: conductance,
    charges and inventories. The charge-based step control is switched off (its per-vertex shares
    differ between the meshes), so both runs take the same steps."""
    runs = {}
    for dim in (2, 3):
        case = short_case(shared_tmp / f"w{dim}.toml", dim=dim, pulses_up=1, pulses_down=0, rest=1e-4,
                          output__fields=[], solver__charge_tolerance=1e6, **COARSE_MESH)
        runs[dim] = (shared_tmp / f"w{dim}", Simulation(case, shared_tmp / f"w{dim}", progress=False).run())
        assert runs[dim][1]["status"] == "completed", runs[dim][1]["message"]
    assert runs[3][1]["steps"] == runs[2][1]["steps"]
    _assert_same_runs(*runs[3], *runs[2], rel=1e-8)


def test_floating_gate_rest_holds_terminal_charge_and_retains_protons(shared_tmp):
    """Open-circuit rests (I_G = 0, as the device is read) keep the injected protons; a gate held at
    0 V lets most of them flow back (reference/environment.md)."""
    results = {}
    for mode in ("floating", "held"):
        case = short_case(shared_tmp / f"{mode}.toml", dim=1, pulses_up=1, pulses_down=0, rest=1.0,
                          protocol__rest_gate=mode)
        out = shared_tmp / f"out_{mode}"
        summary = Simulation(case, out, progress=False).run()
        assert summary["status"] == "completed", summary["message"]
        COMM.Barrier()
        rows = _rows(out / "series.csv")
        end, read = rows[1], rows[2]
        assert end["event"] == "pulse_end" and read["event"] == "read"
        results[mode] = (rows[0], end, read)
    initial, end, read = results["floating"]
    # terminal charge = gate surface charge + Faradaic charge is unchanged over the floating rest
    q_end = float(end["gate_charge_C"]) + float(end["faradaic_charge_C"])
    q_read = float(read["gate_charge_C"]) + float(read["faradaic_charge_C"])
    # the floating-gate solve matches it to 1e-4 C kT/q: a few ten-thousandths of a proton here
    assert abs(q_read - q_end) < 1e-3 * 1.602176634e-19
    assert float(read["gate_voltage_V"]) != 0.0
    kept_float = float(read["pulse_faradaic_charge_C"]) / float(end["pulse_faradaic_charge_C"])
    _, end_h, read_h = results["held"]
    kept_held = float(read_h["pulse_faradaic_charge_C"]) / float(end_h["pulse_faradaic_charge_C"])
    assert kept_float > 0.9 and kept_held < 0.5


def test_stepper_escalates_after_repeated_failures(shared_tmp, monkeypatch):
    """Three failed Newton solves in a row switch to backward Euler from the last state; six
    switch Newton to a backtracking line search, undone after the next accepted step."""
    from protonfem.solver import model as model_mod

    case = short_case(shared_tmp / "esc.toml", dim=1, pulses_up=1, pulses_down=0, rest=1e-6, output__fields=[])
    calls = {"n": 0, "line_searches": []}
    original_solve = model_mod.DeviceModel.solve_step
    original_ls = model_mod.DeviceModel.set_line_search

    def flaky(self, dt):
        calls["n"] += 1
        if 40 <= calls["n"] < 47:  # seven failures in a row in the middle of the pulse
            return model_mod.StepResult(False, 1, "injected failure")
        return original_solve(self, dt)

    def record(self, kind):
        calls["line_searches"].append(kind)
        return original_ls(self, kind)

    monkeypatch.setattr(model_mod.DeviceModel, "solve_step", flaky)
    monkeypatch.setattr(model_mod.DeviceModel, "set_line_search", record)
    summary = Simulation(case, shared_tmp / "esc", progress=False).run()
    assert summary["status"] == "completed", summary["message"]
    assert summary["steps"]["rejected"] >= 7
    assert calls["line_searches"] == ["bt", "basic"]


def test_iterative_solver_failure_falls_back_to_mumps(shared_tmp):
    """A Krylov solve that cannot converge (the case's petsc_options override the iterative
    defaults: one iteration) is reported as a failed linear solve and the step retried with MUMPS,
    so the run completes with the direct run's results."""
    runs = {}
    for kind, options in (("direct", {}), ("iterative", {"ksp_max_it": 1})):
        case = short_case(shared_tmp / f"ls_{kind}.toml", dim=1, pulses_up=1, pulses_down=0, rest=1e-6,
                          output__fields=[], solver__linear_solver=kind, solver__petsc_options=options)
        runs[kind] = Simulation(case, shared_tmp / f"ls_{kind}", progress=False).run()
        assert runs[kind]["status"] == "completed", runs[kind]["message"]
    assert runs["direct"]["linear_solver"] == {"kind": "direct", "direct_fallbacks": 0}
    assert runs["iterative"]["linear_solver"]["direct_fallbacks"] > 0
    assert runs["iterative"]["steps"] == runs["direct"]["steps"]
    for a, b in zip(runs["iterative"]["per_pulse"], runs["direct"]["per_pulse"], strict=True):
        assert a["conductance_S"] == pytest.approx(b["conductance_S"], rel=1e-10)


def test_linear_solver_failure_is_reported(shared_tmp):
    """With both the Krylov solve and its MUMPS retry failing, the step fails with the KSP's
    reason in its message (the stepper then rejects it)."""
    from protonfem.solver.case import load_case
    from protonfem.solver.mesh import create_device_mesh
    from protonfem.solver.model import DeviceModel

    case = load_case(short_case(shared_tmp / "ls_fail.toml", dim=1, solver__linear_solver="iterative",
                                solver__petsc_options={"ksp_max_it": 1}))
    dm = create_device_mesh(case, COMM)
    model = DeviceModel(case, dm.mesh, dm.cell_tags, dm.facet_tags)
    model.set_rest_state()
    model.set_transport_scale(model.inventory_scaled())
    model.set_gate_voltage(10.0)
    model._use_direct = lambda: None  # the retry keeps the failing Krylov configuration
    result = model.solve_step(1e-11)
    assert not result.converged
    assert "DIVERGED_LINEAR_SOLVE" in result.reason and "KSP DIVERGED_MAX_IT after 1 iterations" in result.reason
    assert model.direct_fallbacks == 1


@pytest.mark.serial
def test_late_protocol_time_integrates_like_an_early_one(shared_tmp, monkeypatch):
    """The stepper counts time from each pulse's start. With an absolute clock, a pulse 1e4 s into
    a protocol (one ulp = 1.8e-12 s there) could not take the femtosecond steps of a 10 V rise:
    steps vanished in rounding and the run stalled (found as a potentiation train that froze
    after ~80 one-second pulses). The same pulse must give the same steps and conductance."""
    from protonfem.solver import run as run_mod
    from protonfem.solver.protocol import Waveform

    results = {}
    for t0 in (0.0, 1e4):
        monkeypatch.setattr(run_mod, "Waveform", lambda protocol, t0=t0: Waveform(protocol, t0=t0))
        case = short_case(shared_tmp / f"late{t0:g}.toml", dim=1, pulses_up=1, pulses_down=1, rest=1.0,
                          output__fields=[])
        summary = Simulation(case, shared_tmp / f"late{t0:g}", progress=False).run()
        assert summary["status"] == "completed", summary["message"]
        rows = _rows(shared_tmp / f"late{t0:g}" / "series.csv")
        results[t0] = (summary["steps"], [(r["event"], r["conductance_S"], r["gate_voltage_V"]) for r in rows],
                       float(rows[-1]["time_s"]))
    assert results[1e4][0] == results[0.0][0]
    assert results[1e4][1] == results[0.0][1]
    assert results[1e4][2] == pytest.approx(1e4 + results[0.0][2], rel=1e-15)


@pytest.mark.slow
@pytest.mark.serial
def test_long_potentiation_train_keeps_its_step_count(shared_tmp):
    """100 pulses of +10 V / 5 ns, each with a 1 s floating rest: every pulse takes about as
    many steps as the first (none stalls as the channel fills or the protocol clock grows)."""
    case = short_case(shared_tmp / "long.toml", dim=1, pulses_up=100, pulses_down=0, rest=1.0,
                      output__fields=[])
    out = shared_tmp / "long"
    summary = Simulation(case, out, progress=False).run()
    assert summary["status"] == "completed", summary["message"]
    reads = [r for r in _rows(out / "series.csv") if r["event"] == "read"]
    steps = np.diff([0] + [int(r["steps_accepted"]) + int(r["steps_rejected"]) for r in reads])
    assert len(steps) == 100
    assert steps.max() <= 1.5 * steps[:10].mean(), steps
    g = [float(r["conductance_S"]) for r in reads]
    assert all(b > a for a, b in zip(g, g[1:]))  # potentiation all the way
