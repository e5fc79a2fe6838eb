"""Run a case: equilibrium initial state, the pulse protocol, read-outs, and every output file.

Outputs in the results directory (all written so that a killed run leaves them readable):

* ``series.csv`` — one row per event (initial state, pulse end, read-out); each row is one
  ``write`` followed by flush+fsync, so the file is always a consistent CSV;
* ``summary.json`` — figures and provenance, replaced atomically after every pulse;
* ``fields.xdmf`` (+ ``.h5``) for ParaView and ``fields.vtkhdf`` for pyvista, flushed per write;
* ``conductance.png`` — G against pulse number (atomic replace).

SIGINT/SIGTERM set a flag that every rank checks after each accepted step (one collective), so all
ranks stop at the same step and close their files together.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import signal
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import dolfinx_solver  # noqa: F401
from .fields_writer import FieldWriter  # first: it imports h5py before DOLFINx touches HDF5
import dolfinx
import numpy as np
import ufl
from dolfinx import fem
from mpi4py import MPI

from protonfem import __version__
from .case import Case, case_hash, load_case
from .mesh import create_device_mesh
from .model import DeviceModel
from .protocol import Waveform
from .readout import ConductanceReadout
from .scaling import C0, L0, Q_E
from .stepping import SolverFailure, TimeStepper

SERIES_COLUMNS = [
    "time_s", "event", "pulse", "train", "pulse_amplitude_V", "gate_voltage_V",
    "gate_current_A", "displacement_current_A", "faradaic_current_A",
    "gate_charge_C", "faradaic_charge_C",
    "pulse_displacement_charge_C", "pulse_faradaic_charge_C",
    "pulse_displacement_energy_J", "pulse_faradaic_energy_J",
    "conductance_S",
    "inventory_reservoir", "inventory_electrolyte", "inventory_channel",
    "inventory_error", "gauss_error",
    "steps_accepted", "steps_rejected", "newton_iterations", "dt_s",
]
#: Relative drift of the proton inventory above which a run warns (the tests assert it).
INVENTORY_LIMIT = 1e-10


class RunInterrupted(Exception):
    pass


def write_json_atomic(path: Path, obj) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as fh:
        json.dump(obj, fh, indent=2, sort_keys=False)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


class SeriesWriter:
    """Rank-0 CSV writer; every row is complete on disk before the next step."""

    def __init__(self, path: Path, comm):
        self.comm = comm
        self.fh = None
        if comm.rank == 0:
            self.fh = open(path, "w", newline="")
            self._write_line(",".join(SERIES_COLUMNS))

    def _write_line(self, line: str):
        self.fh.write(line + "\n")
        self.fh.flush()
        os.fsync(self.fh.fileno())

    def write(self, row: dict):
        if self.fh is None:
            return
        vals = []
        for k in SERIES_COLUMNS:
            v = row.get(k, "")
            vals.append(f"{v:.12g}" if isinstance(v, float) else str(v))
        self._write_line(",".join(vals))

    def close(self):
        if self.fh is not None:
            self.fh.close()
            self.fh = None


@contextlib.contextmanager
def _si_geometry(mesh):
    """Written files carry SI coordinates (metres); the solver's mesh is in L0 units."""
    mesh.geometry.x[:] *= L0
    try:
        yield
    finally:
        mesh.geometry.x[:] /= L0


def _versions() -> dict:
    import mpi4py
    import petsc4py
    import scipy

    return {"protonfem": __version__, "dolfinx": dolfinx.__version__, "petsc4py": petsc4py.__version__,
            "mpi4py": mpi4py.__version__, "numpy": np.__version__, "scipy": scipy.__version__,
            "python": platform.python_version(), "mpi": MPI.Get_library_version().splitlines()[0].strip()}


class Simulation:
    """One run of a case file; ``run()`` returns the summary dictionary."""

    def __init__(self, case_path: Path | str, output: Path | str | None = None, comm=MPI.COMM_WORLD,
                 progress: bool = True, case: Case | None = None):
        self.case_path = Path(case_path)
        self.case = case if case is not None else load_case(self.case_path)
        self.comm = comm
        self.outdir = Path(output) if output is not None else Path("results") / self.case.name
        self.progress = progress and comm.rank == 0
        self._stop = False

    # ------------------------------------------------------------------------------------------
    def _handle_signal(self, signum, frame):
        self._stop = True

    def _stop_requested(self) -> bool:
        return self.comm.allreduce(self._stop, op=MPI.LOR)

    # ------------------------------------------------------------------------------------------
    def _setup(self):
        case, comm = self.case, self.comm
        if comm.rank == 0:
            self.outdir.mkdir(parents=True, exist_ok=True)
        comm.Barrier()
        dm = create_device_mesh(case, comm)
        self.model = m = DeviceModel(case, dm.mesh, dm.cell_tags, dm.facet_tags)
        self.readout = ConductanceReadout(m)
        self.waveform = Waveform(case.protocol)
        self.stepper = TimeStepper(m, case.solver, self.waveform.voltage)
        # output functions
        V1, DG0 = m.V1, m.DG0
        sc = m.scales
        self._out_funcs = {}
        self._out_exprs = {}
        pts1 = V1.element.interpolation_points
        pts0 = DG0.element.interpolation_points
        if "potential" in case.output.fields:
            self._out_funcs["potential"] = fem.Function(V1, name="potential")
            self._out_exprs["potential"] = fem.Expression(m.u_expr * sc.thermal_voltage, pts1)
        if "proton_density" in case.output.fields:
            self._out_funcs["proton_density"] = fem.Function(V1, name="proton_density")
            self._out_exprs["proton_density"] = fem.Expression(m.c_expr * C0, pts1)
        if "field_magnitude" in case.output.fields:
            self._out_funcs["field_magnitude"] = fem.Function(DG0, name="field_magnitude")
            gu = ufl.grad(m.u_expr)
            self._out_exprs["field_magnitude"] = fem.Expression(ufl.sqrt(ufl.inner(gu, gu)) * sc.field, pts0)
        self.writer = None
        if self._out_funcs:
            with _si_geometry(m.mesh):
                self.writer = FieldWriter(m.mesh, self._out_funcs, self.outdir, comm)
        self.series = SeriesWriter(self.outdir / "series.csv", comm)

    def _write_fields(self, t: float):
        if self.writer is None:
            return
        for name, f in self._out_funcs.items():
            f.interpolate(self._out_exprs[name])
        with _si_geometry(self.model.mesh):
            self.writer.write(t)
        self._fields_written += 1

    def _wants_fields(self, event: str, pulse: int) -> bool:
        out = self.case.output
        if event not in out.field_events:
            return False
        return event == "initial" or pulse % out.field_every == 0 or pulse == len(self.waveform.pulses)

    # ------------------------------------------------------------------------------------------
    def _equilibrate(self):
        """Equilibrium at the rest voltage by pseudo-transient continuation of the same closed,
        conservative system: implicit steps of growing size until nothing changes."""
        m = self.model
        V = self.case.protocol.rest_voltage
        m.set_rest_state()
        s = self.case.solver
        # Ramp the gate from 0 V (the exact rest state of the case's densities) to the rest voltage.
        stepper = TimeStepper(m, s, lambda t: V * min(1.0, t / 1e-9))
        steps = 0
        stepper.advance_to(1e-9)
        dt = 1e-9
        t = 1e-9
        for _ in range(200):
            m.set_gate_voltage(V)
            m.x.x.array[:] = m.x_n.x.array
            res = m.solve_step(dt)
            steps += 1
            if not res.converged:
                m.x.x.array[:] = m.x_n.x.array
                dt *= 0.25
                if dt < s.dt_min:
                    raise SolverFailure(f"equilibrium initial state at {V:g} V did not converge ({res.reason}); "
                                        "try a smaller mesh.h_min or solver.dt_initial")
                continue
            change = stepper._gmax(m.x.x.array - m.x_n.x.array)
            m.x_n.x.array[:] = m.x.x.array
            t += dt
            if change < 1e-10 and dt >= 1e3:
                break
            dt *= 4.0
        else:
            raise SolverFailure(f"equilibrium initial state at {V:g} V not reached after {steps} steps")
        m.x.x.array[:] = m.x_n.x.array
        return steps + stepper.stats.accepted

    # ------------------------------------------------------------------------------------------
    def _bookkeeping_reset(self):
        m = self.model
        self._inv0 = m.inventories()
        self._N0 = sum(self._inv0.values())
        ch = m.charges()
        self._Qg = ch["gate"]
        self._Nres = self._inv0["reservoir"]
        self._Qfar = 0.0
        self._I = (0.0, 0.0)
        self._pulse_acc = dict(qd=0.0, qf=0.0, ed=0.0, ef=0.0)

    def _after_step(self, t: float, dt: float):
        m = self.model
        Qg = m.charges()["gate"]
        Nres = m._sum(m._inventory_forms["reservoir"]) * m.scales.count
        dQd = Qg - self._Qg
        dQf = Q_E * (self._Nres - Nres)  # each proton leaving the Pd sends one electron out of the gate
        V = self.stepper.gate_voltage
        self._pulse_acc["qd"] += dQd
        self._pulse_acc["qf"] += dQf
        # Energy drawn from the gate driver: charge it returns on the falling edge is not
        # recovered by a voltage source, so only V*dQ > 0 counts (the CV^2 overhead of the paper).
        self._pulse_acc["ed"] += max(V * dQd, 0.0)
        self._pulse_acc["ef"] += max(V * dQf, 0.0)
        self._I = (dQd / dt, dQf / dt)
        self._Qg, self._Nres = Qg, Nres
        self._Qfar += dQf
        if self.case.output.series_every_step:
            self._row(t, "step", self._current_pulse, conductance=float("nan"))

    def _row(self, t: float, event: str, pulse, conductance: float) -> dict:
        m = self.model
        inv = m.inventories()
        ch = m.charges()
        N = sum(inv.values())
        inv_err = abs(N - self._N0) / self._N0
        gauss_err = abs(ch["gate"] + ch["contacts"] + ch["space"]) / max(abs(ch["gate"]) + abs(ch["contacts"]), Q_E)
        self._max_inv_err = max(self._max_inv_err, inv_err)
        self._max_gauss_err = max(self._max_gauss_err, gauss_err)
        st = self.stepper.stats
        p = pulse
        row = {
            "time_s": t, "event": event, "pulse": p.index if p else 0, "train": p.train if p else -1,
            "pulse_amplitude_V": float(p.amplitude) if p else 0.0, "gate_voltage_V": float(self.stepper.gate_voltage),
            "gate_current_A": self._I[0] + self._I[1], "displacement_current_A": self._I[0], "faradaic_current_A": self._I[1],
            "gate_charge_C": ch["gate"], "faradaic_charge_C": self._Qfar,
            "pulse_displacement_charge_C": self._pulse_acc["qd"], "pulse_faradaic_charge_C": self._pulse_acc["qf"],
            "pulse_displacement_energy_J": self._pulse_acc["ed"], "pulse_faradaic_energy_J": self._pulse_acc["ef"],
            "conductance_S": conductance,
            "inventory_reservoir": inv["reservoir"], "inventory_electrolyte": inv["electrolyte"],
            "inventory_channel": inv["channel"], "inventory_error": inv_err, "gauss_error": gauss_err,
            "steps_accepted": st.accepted, "steps_rejected": st.rejected, "newton_iterations": st.newton_iterations,
            "dt_s": self.stepper.dt,
        }
        self.series.write(row)
        self._rows.append(row)
        return row

    # ------------------------------------------------------------------------------------------
    def _summary(self, status: str, message: str = "") -> dict:
        reads = [r for r in self._rows if r["event"] in ("initial", "read")]
        g = [r["conductance_S"] for r in reads]
        pulses = [r for r in self._rows if r["event"] == "read"]
        m = getattr(self, "model", None)
        return {
            "case": self.case.name, "case_file": str(self.case_path.resolve()), "case_hash": self._hash,
            "status": status, "message": message,
            "started_utc": self._started, "wall_time_s": time.perf_counter() - self._t0,
            "ranks": self.comm.size, "versions": self._versions,
            "host": platform.node(),
            "mesh": {"dimension": self.case.geometry.dimension,
                     "cells": m.mesh.topology.index_map(m.mesh.topology.dim).size_global if m else None,
                     "dofs": m.W.dofmap.index_map.size_global * m.W.dofmap.index_map_bs if m else None},
            "pulses_total": len(self.waveform.pulses) if hasattr(self, "waveform") else None,
            "pulses_completed": len(pulses),
            "time_s": self.stepper.t if hasattr(self, "stepper") else 0.0,
            "steps": {"accepted": self.stepper.stats.accepted, "rejected": self.stepper.stats.rejected,
                      "newton_iterations": self.stepper.stats.newton_iterations,
                      "equilibration": getattr(self, "_eq_steps", 0)} if hasattr(self, "stepper") else {},
            "linear_solver": {"kind": self.case.solver.linear_solver,
                              "direct_fallbacks": getattr(m, "direct_fallbacks", 0) if m else 0},
            "conservation": {"max_inventory_error": self._max_inv_err, "max_gauss_error": self._max_gauss_err,
                             "inventory_limit": INVENTORY_LIMIT},
            "conductance_S": {"initial": g[0] if g else None, "final": g[-1] if g else None,
                              "min": min(g) if g else None, "max": max(g) if g else None},
            "per_pulse": [{"pulse": r["pulse"], "amplitude_V": r["pulse_amplitude_V"], "conductance_S": r["conductance_S"],
                           "displacement_charge_C": r["pulse_displacement_charge_C"],
                           "faradaic_charge_C": r["pulse_faradaic_charge_C"],
                           "displacement_energy_J": r["pulse_displacement_energy_J"],
                           "faradaic_energy_J": r["pulse_faradaic_energy_J"]} for r in pulses],
            "outputs": {"series": "series.csv", "fields_xdmf": "fields.xdmf", "fields_vtkhdf": "fields.vtkhdf",
                        "plot": "conductance.png"},
        }

    def _write_summary(self, status: str, message: str = ""):
        if self.comm.rank == 0:
            write_json_atomic(self.outdir / "summary.json", self._summary(status, message))

    def _plot(self):
        if self.comm.rank == 0:
            from protonfem.postprocess.plots import plot_conductance
            plot_conductance(self.outdir / "series.csv", self.outdir / "conductance.png", title=self.case.name)

    # ------------------------------------------------------------------------------------------
    def run(self) -> dict:
        self._t0 = time.perf_counter()
        self._started = datetime.now(timezone.utc).isoformat(timespec="seconds")
        self._hash = case_hash(self.case_path) if self.case_path.is_file() else None
        self._versions = _versions()
        self._rows: list[dict] = []
        self._max_inv_err = 0.0
        self._max_gauss_err = 0.0
        self._fields_written = 0
        self._current_pulse = None
        old = {}
        status, message = "running", ""
        try:
            self._setup()
            # Installed after set-up: initialising PETSc/MPI may install C-level handlers of their own.
            if threading_main():
                for sig in (signal.SIGINT, signal.SIGTERM):
                    old[sig] = signal.signal(sig, self._handle_signal)
            self._write_summary("running")
            self._eq_steps = self._equilibrate()
            self.stepper.t = 0.0
            self.stepper.gate_voltage = self.case.protocol.rest_voltage
            self.model.set_reservoir_reference()
            self.model.set_transport_scale(self.model.inventory_scaled())
            self._bookkeeping_reset()
            self._row(0.0, "initial", None, self.readout.conductance())
            if self._wants_fields("initial", 0):
                self._write_fields(0.0)
            self._run_protocol()
            status = "completed"
        except RunInterrupted:
            status, message = "interrupted", "stopped by signal; everything written so far is complete"
        except SolverFailure as exc:
            status, message = "failed", str(exc)
        finally:
            for sig, h in old.items():
                signal.signal(sig, h)
            if getattr(self, "writer", None) is not None:
                self.writer.close()
            if getattr(self, "series", None) is not None:
                self.series.close()
            if self._rows:
                self._plot()
            if hasattr(self, "waveform"):
                self._write_summary(status if status != "running" else "failed",
                                    message or ("" if status != "running" else "aborted by an exception"))
        summary = self._summary(status, message)
        if status == "completed" and self._max_inv_err > INVENTORY_LIMIT and self.comm.rank == 0:
            print(f"warning: proton inventory drifted by {self._max_inv_err:.3g} (limit {INVENTORY_LIMIT:g})",
                  file=sys.stderr)
        return summary

    def _pulse_voltage(self, p, v_start: float):
        wf = self.waveform

        def voltage(t: float) -> float:
            if p.start <= t < p.plateau_start:
                return v_start + (p.amplitude - v_start) * (t - p.start) / p.rise
            return wf.voltage(t)

        return voltage

    def _run_protocol(self):
        st = self.stepper
        pulses = self.waveform.pulses
        extra = sorted(self.case.output.field_times)
        bar = None
        if self.progress:
            from tqdm import tqdm
            bar = tqdm(total=len(pulses), desc=self.case.name, unit="pulse", file=sys.stderr,
                       dynamic_ncols=True, leave=True)
        try:
            for p in pulses:
                self._current_pulse = p
                self._pulse_acc = dict(qd=0.0, qf=0.0, ed=0.0, ef=0.0)
                stops = [(tt, "edge") for tt in p.edges[1:]]
                stops += [(tt, "field") for tt in extra if p.start < tt < p.read_time]
                stops += [(p.read_time, "read")]
                stops.sort()
                st.restart(p.rise)  # the pulse's rise starts here: dV/dt jumps
                # The driver reconnects at the gate's present (possibly floating) voltage and ramps.
                st.voltage = self._pulse_voltage(p, st.gate_voltage)
                st.floating_charge = None
                for tt, kind in stops:
                    st.advance_to(tt, self._after_step, self._stop_requested)
                    if self._stop:
                        raise RunInterrupted()
                    if kind == "field":
                        self._write_fields(tt)
                    elif kind == "edge":
                        # corner of the trapezoid: restart first-order, sized for the next segment
                        nxt = next((t2 for t2, _ in stops if t2 > tt), p.read_time)
                        st.restart(nxt - tt)
                        if tt == p.end:
                            if self.case.protocol.rest_gate == "floating":
                                st.floating_charge = self.model.terminal_charge()
                            self._row(tt, "pulse_end", p, float("nan"))
                            if self._wants_fields("pulse_end", p.index):
                                self._write_fields(tt)
                    else:  # read-out at the end of the rest
                        self._row(tt, "read", p, self.readout.conductance())
                        if self._wants_fields("rest_end", p.index):
                            self._write_fields(tt)
                self._write_summary("running")
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix_str(f"G={self._rows[-1]['conductance_S'] * 1e9:.4g} nS")
        finally:
            if bar is not None:
                bar.close()


def threading_main() -> bool:
    import threading
    return threading.current_thread() is threading.main_thread()
