"""Run a case: equilibrium initial state, the pulse protocol, read-outs, and every output file.

Outputs in the results directory (all written so that a killed run leaves them readable):

* ``series.csv`` — one row per event (initial state, pulse end, read-out); each row is one
  ``write`` followed by flush+fsync, so the file is always a consistent CSV;
* ``summary.json`` — figures and provenance, replaced atomically after every pulse;
* ``fields.xdmf`` (+ ``.h5``) for ParaView and ``fields.vtkhdf`` for pyvista, flushed per write;
* ``conductance.png`` — G against pulse number (atomic replace).

``protonfem.log`` (and ``protonfem.rank<N>.log`` with ``--log-all-ranks``) records the set-up,
equilibrium, every pulse and every warning, after a header with the command line, case hash,
ranks, hosts and the PETSc options in effect (see :mod:`protonfem.logs`).

SIGINT/SIGTERM set a flag that every rank checks after each accepted step (one collective), so all
ranks stop at the same step and close their files together.
"""
from __future__ import annotations

import collections
import contextlib
import dataclasses
import json
import math
import os
import platform
import signal
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

from protonfem import __version__, logs
from .case import Case, case_hash, load_case
from .checkpoint import Checkpointer, CheckpointError, cell_partition, partitioner_from
from .mesh import create_device_mesh
from .model import DEFAULT_PETSC_OPTIONS, DeviceModel
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
#: Seconds between rewrites of summary.json while a run goes on (it is always written at the end).
SUMMARY_INTERVAL_S = 5.0

log = logs.get_logger("run")


class RunInterrupted(Exception):
    pass


def write_json_atomic(path: Path, obj) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as fh:
        fh.write(json.dumps(obj, indent=2, sort_keys=False))
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


class SeriesWriter:
    """Rank-0 CSV writer. Every row reaches the operating system before the next step (a killed
    run keeps it); the file is synced to the disk at most once a second (:data:`SYNC_INTERVAL_S`:
    two syncs per pulse were ~1 % of a 1-D train), and on :meth:`sync` and :meth:`close`."""

    SYNC_INTERVAL_S = 1.0

    def __init__(self, path: Path, comm, keep_rows: int | None = None):
        """A new file; or, with ``keep_rows`` (resuming), the existing one cut back to its header
        and first ``keep_rows`` rows (replaced atomically), then appended to."""
        self.comm = comm
        self.fh = None
        self.kept: list[dict] = []
        self._synced = -math.inf
        if comm.rank == 0:
            if keep_rows is None:
                self.fh = open(path, "w", newline="")
                self._write_line(",".join(SERIES_COLUMNS))
            else:
                lines = path.read_text().splitlines(keepends=True) if path.is_file() else []
                if len(lines) < keep_rows + 1 or lines[0].rstrip("\n") != ",".join(SERIES_COLUMNS):
                    raise CheckpointError(f"{path}: has {max(len(lines) - 1, 0)} rows, the checkpoint needs the "
                                          f"first {keep_rows}; the results directory does not belong to this checkpoint")
                tmp = path.with_name(path.name + ".tmp")
                with open(tmp, "w", newline="") as fh:
                    fh.writelines(lines[:keep_rows + 1])
                    fh.flush()
                    os.fsync(fh.fileno())
                os.replace(tmp, path)
                self.kept = [_parse_row(line) for line in lines[1:keep_rows + 1]]
                self.fh = open(path, "a", newline="")
        if keep_rows is not None:
            self.kept = comm.bcast(self.kept, root=0)

    def _write_line(self, line: str):
        self.fh.write(line + "\n")
        self.fh.flush()
        now = time.monotonic()
        if now - self._synced >= self.SYNC_INTERVAL_S:
            os.fsync(self.fh.fileno())
            self._synced = now

    def sync(self):
        if self.fh is not None:
            self.fh.flush()
            os.fsync(self.fh.fileno())
            self._synced = time.monotonic()

    def write(self, row: dict):
        if self.fh is None:
            return
        vals = []
        for k in SERIES_COLUMNS:
            v = row.get(k, "")
            if k == "time_s":
                # exact (shortest round-trip): 12 digits cannot tell a 5 ns pulse's edges apart
                # a few thousand seconds into a protocol
                vals.append(repr(float(v)))
            else:
                vals.append(f"{v:.12g}" if isinstance(v, float) else str(v))
        self._write_line(",".join(vals))

    def close(self):
        if self.fh is not None:
            self.sync()
            self.fh.close()
            self.fh = None


def _parse_row(line: str) -> dict:
    """A series.csv line back into the row dictionary it was written from (numbers as floats,
    the integer columns as ints)."""
    row = {}
    for key, text in zip(SERIES_COLUMNS, line.rstrip("\n").split(",")):
        if key == "event" or text == "":
            row[key] = text
        elif key in ("pulse", "train", "steps_accepted", "steps_rejected", "newton_iterations"):
            row[key] = int(text)
        else:
            row[key] = float(text)
    return row


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
                 progress: bool = True, case: Case | None = None, resume: bool = False):
        self.case_path = Path(case_path)
        self.resume = resume
        #: called with each Pulse after its read-out (a response map samples the states of a train)
        self.on_pulse_done = None
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
        self._checkpointer = Checkpointer(self.outdir, comm)
        partitioner = None
        self._resume_state = None
        if self.resume:
            self._resume_state = st = self._checkpointer.read_state()
            if st["case_hash"] != self._hash:
                raise CheckpointError(f"{self.outdir}: the checkpoint belongs to another version of the case file "
                                      f"(hash {st['case_hash'][:12]}..., {self.case_path} has {str(self._hash)[:12]}...); "
                                      "run it afresh without --resume")
            if st["protonfem"] != __version__:
                raise CheckpointError(f"{self.outdir}: checkpoint written by protonfem {st['protonfem']}, "
                                      f"this is {__version__}; run the case afresh")
            if comm.size > 1:
                partitioner = partitioner_from(self._checkpointer.read_partition())
        self.model, self.readout = self._build_model(partitioner)
        m = self.model
        self.waveform = Waveform(case.protocol)
        self.stepper = TimeStepper(m, case.solver, self.waveform.voltage)
        self._log_setup()
        self._watch_newton_failures()
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
        resumes = self._resume_state["resumes"] + 1 if self._resume_state else 0
        if self._out_funcs:
            # a resumed run continues its fields in new files next to the first ones
            stem = "fields" if not resumes else f"fields_resume{resumes}"
            with _si_geometry(m.mesh):
                self.writer = FieldWriter(m.mesh, self._out_funcs, self.outdir, comm, stem=stem)
        self._resumes = resumes
        keep = self._resume_state["series_rows"] if self._resume_state else None
        self.series = SeriesWriter(self.outdir / "series.csv", comm, keep_rows=keep)

    def _build_model(self, partitioner=None) -> tuple[DeviceModel, ConductanceReadout]:
        """Mesh, model and read-out of the case (a response map reuses them across probes)."""
        dm = create_device_mesh(self.case, self.comm, partitioner=partitioner)
        model = DeviceModel(self.case, dm.mesh, dm.cell_tags, dm.facet_tags)
        return model, ConductanceReadout(model)

    def _initial_gate_voltage(self) -> float:
        """Gate voltage of the initial state (a response map's probe starts from a stored state)."""
        return self.case.protocol.rest_voltage

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
        self._Nres = m.gate_state()[1]  # the reservoir's count for the Faradaic charge (see gate_state)
        self._Qfar = 0.0
        self._I = (0.0, 0.0)
        self._pulse_acc = dict(qd=0.0, qf=0.0, ed=0.0, ef=0.0)

    def _after_step(self, t: float, dt: float):
        m = self.model
        Qg, Nres = m.gate_state()
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
        # An ideal reservoir is open: the protons it supplied (the Faradaic charge) are not drift.
        supplied = self._Qfar / Q_E if self.model.fixed_reservoir else 0.0
        inv_err = abs(N - self._N0 - supplied) / self._N0
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
            "started_utc": self._started, "wall_time_s": time.perf_counter() - self._t0 + self._wall_before,
            "resumed": self._resumes if hasattr(self, "_resumes") else 0,
            "ranks": self.comm.size, "versions": self._versions,
            "host": platform.node(),
            "mesh": {"dimension": self.case.geometry.dimension,
                     "cells": m.mesh.topology.index_map(m.mesh.topology.dim).size_global if m else None,
                     "dofs": m.W.dofmap.index_map.size_global * m.W.dofmap.index_map_bs if m else None},
            "pulses_total": len(self.waveform.pulses) if hasattr(self, "waveform") else None,
            "pulses_completed": len(pulses),
            "time_s": self.stepper.time if hasattr(self, "stepper") else 0.0,
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
        self._summary_written = time.perf_counter()

    def _plot(self):
        if self.comm.rank == 0:
            from protonfem.postprocess.plots import plot_conductance
            plot_conductance(self.outdir / "series.csv", self.outdir / "conductance.png", title=self.case.name)

    # ------------------------------------------------------------------------------------------
    def petsc_options(self) -> dict:
        """The options the model hands PETSc: its defaults, then the case's (and the command
        line's, which the CLI has merged into the case)."""
        options = dict(DEFAULT_PETSC_OPTIONS)
        options["snes_max_it"] = self.case.solver.newton_max_it
        options.update(self.case.solver.petsc_options)
        return options

    def _log_header(self) -> dict:
        env = logs.environment_petsc_options()
        return {
            "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "version": f"protonfem {__version__} (DOLFINx {dolfinx.__version__}, "
                       f"{' '.join(MPI.Get_library_version().split()[:3])})",
            "command": logs.command_line(),
            "case": f"{self.case.name} ({self.case_path})",
            "case hash": case_hash(self.case_path) if self.case_path.is_file() else "-",
            "ranks": f"{self.comm.size} on {logs.hosts_summary(self.comm)}",
            "PETSc options (prefix protonfem_)": logs.format_petsc_options(self.petsc_options()),
            "PETSC_OPTIONS (environment)": env or "-",
        }

    def run(self) -> dict:
        """Run the case with its log file open in the results directory; returns the summary."""
        if self.comm.rank == 0:
            self.outdir.mkdir(parents=True, exist_ok=True)
        self.comm.Barrier()
        with logs.run_log_file(self.outdir, self.comm, self._log_header()):
            return self._run_logged()

    def _run_logged(self) -> dict:
        self._t0 = time.perf_counter()
        self._summary_written = -math.inf
        self._wall_before = 0.0  # wall time of the runs this one resumes
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
            if self._resume_state is not None:
                start = self._restore(self._resume_state)
                log.info("resumed from the checkpoint after pulse %d (t = %.6g s); series.csv cut back to "
                         "its %d rows", start, self.stepper.time, len(self._rows))
            else:
                start = 0
                self._eq_steps = self._equilibrate()
                log.info("equilibrium at the rest voltage %g V: %d steps", self.case.protocol.rest_voltage,
                         self._eq_steps)
                self.stepper.set_origin(0.0)
                self.stepper.gate_voltage = self._initial_gate_voltage()
                self.model.set_gate_voltage(self.stepper.gate_voltage)
                # At equilibrium nothing limits the step: the first pulse edge then starts like every
                # later one, at an eighth of its segment (and the error control shrinks it if needed).
                self.stepper.dt = self.case.solver.dt_max
                self.model.set_reservoir_reference()
                self.model.set_transport_scale(self.model.inventory_scaled())
                self._bookkeeping_reset()
                row = self._row(0.0, "initial", None, self.readout.conductance())
                log.info("initial conductance %.6g nS; %d pulses to run", row["conductance_S"] * 1e9,
                         len(self.waveform.pulses))
                if self._wants_fields("initial", 0):
                    self._write_fields(0.0)
            self._run_protocol(start)
            status = "completed"
        except RunInterrupted:
            status, message = "interrupted", "stopped by signal; everything written so far is complete"
            log.warning("interrupted by a signal after %d pulses; everything written so far is complete",
                        sum(r["event"] == "read" for r in self._rows))
        except SolverFailure as exc:
            status, message = "failed", str(exc)
            log.error("solve failed: %s", exc)
        except CheckpointError as exc:
            status, message = "failed", str(exc)
            log.error("cannot resume: %s", exc)
        except BaseException:
            log.exception("run aborted by an unexpected error")
            raise
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
        if status == "completed" and self._max_inv_err > INVENTORY_LIMIT:
            log.warning("proton inventory drifted by %.3g (limit %g)", self._max_inv_err, INVENTORY_LIMIT)
        if status == "completed":
            log.info("completed: %d pulses, %d steps (%d rejected), %d Newton iterations, max inventory "
                     "drift %.3g, %.1f s", summary["pulses_completed"], summary["steps"]["accepted"],
                     summary["steps"]["rejected"], summary["steps"]["newton_iterations"], self._max_inv_err,
                     summary["wall_time_s"])
        return summary

    def _pulse_voltage(self, p, v_start: float):
        """The gate voltage of pulse ``p`` against pulse-local time (the stepper's clock)."""
        base = self.waveform.base
        return lambda tau: p.local_voltage(tau, v_start, base)

    def _run_protocol(self, start: int = 0):
        """Run the pulses after the first ``start`` (a resumed run's checkpoint)."""
        st = self.stepper
        pulses = self.waveform.pulses
        extra = sorted(self.case.output.field_times)
        every = self.case.output.checkpoint_every
        with logs.progress_bar(self.progress, total=len(pulses), desc=self.case.name, unit="pulse") as bar:
            if bar is not None and start:
                bar.update(start)
            for p in pulses[start:]:
                before = dataclasses.replace(st.stats)
                self._newton_failures.clear()
                self._current_pulse = p
                self._pulse_acc = dict(qd=0.0, qf=0.0, ed=0.0, ef=0.0)
                # The stepper counts time from the pulse's start (see TimeStepper.set_origin); stops
                # are (pulse-local time, absolute time for the record, kind).
                st.set_origin(p.start)
                local_edges = p.local_edges
                stops = [(lt, at, "edge") for lt, at in zip(local_edges[1:], p.edges[1:])]
                stops += [(tt - p.start, tt, "field") for tt in extra if p.start < tt < p.read_time]
                stops += [(lt, at, "rest_read") for lt, at in zip(p.local_rest_reads, p.rest_reads)]
                stops += [(p.local_read_time, p.read_time, "read")]
                stops.sort()
                st.restart(p.rise)  # the pulse's rise starts here: dV/dt jumps
                # The driver reconnects at the gate's present (possibly floating) voltage and ramps.
                st.voltage = self._pulse_voltage(p, st.gate_voltage)
                st.floating_charge = None
                for lt, tt, kind in stops:
                    st.advance_to(lt, self._after_step, self._stop_requested)
                    if self._stop:
                        raise RunInterrupted()
                    if kind == "field":
                        self._write_fields(tt)
                    elif kind == "rest_read":  # retention: the conductance during the rest
                        self._row(tt, "rest_read", p, self.readout.conductance())
                    elif kind == "edge":
                        # corner of the trapezoid: restart first-order, sized for the next segment
                        nxt = next((t2 for t2, _, _ in stops if t2 > lt), p.local_read_time)
                        st.restart(nxt - lt)
                        if lt == local_edges[3]:
                            if self.case.protocol.rest_gate == "floating":
                                st.floating_charge = self.model.terminal_charge()
                            self._row(tt, "pulse_end", p, float("nan"))
                            if self._wants_fields("pulse_end", p.index):
                                self._write_fields(tt)
                    else:  # read-out at the end of the rest
                        self._row(tt, "read", p, self.readout.conductance())
                        if self._wants_fields("rest_end", p.index):
                            self._write_fields(tt)
                # The running summary repeats every pulse's record: rewriting it after each of
                # thousands of pulses cost more than the pulses (quadratic); series.csv has
                # every row as it comes, and the final summary is always written.
                if time.perf_counter() - self._summary_written >= SUMMARY_INTERVAL_S:
                    self._write_summary("running")
                if self.on_pulse_done is not None:
                    self.on_pulse_done(p)
                if every and p.index % every == 0 and p.index < len(pulses):
                    self._save_checkpoint(p.index)
                self._log_pulse(p, len(pulses), before)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix_str(f"G={self._rows[-1]['conductance_S'] * 1e9:.4g} nS")

    # ------------------------------------------------------------------------------------------
    def _save_checkpoint(self, pulses_done: int):
        """Everything the rest of the run depends on, at the boundary after pulse ``pulses_done``
        (see checkpoint.py); a run resumed from it writes the same series as one never stopped."""
        m, st = self.model, self.stepper
        self.series.sync()  # the rows the checkpoint counts are on disk before it is
        arrays = {"x_n": m.x_n.x.array, "x_nm1": m.x_nm1.x.array, "x_nm2": st._x_nm2,
                  "dof_globals": self._dof_globals()}
        state = {
            "case_hash": self._hash, "protonfem": __version__, "pulses_done": pulses_done,
            "series_rows": len(self._rows), "resumes": self._resumes,
            "stepper": {"t": st.time, "dt": st.dt, "steps": list(st._steps), "v_history": list(st._v_history),
                        "gate_voltage": st.gate_voltage, "floating_charge": st.floating_charge,
                        "terminal_charge_n": st._terminal_charge_n,
                        "accepted": st.stats.accepted, "rejected": st.stats.rejected,
                        "newton_iterations": st.stats.newton_iterations, "last_reason": st.stats.last_reason},
            "model": {"transport_atol": m.transport_atol, "reservoir_reference": m._reservoir_reference,
                      "reservoir_offset": m._reservoir_offset},
            "run": {"inv0": self._inv0, "N0": self._N0, "Qg": self._Qg, "Nres": self._Nres, "Qfar": self._Qfar,
                    "I": list(self._I), "max_inv_err": self._max_inv_err, "max_gauss_err": self._max_gauss_err,
                    "fields_written": self._fields_written, "eq_steps": self._eq_steps,
                    "wall_time_s": time.perf_counter() - self._t0 + self._wall_before},
        }
        partition = cell_partition(m.mesh, self.comm) if self.comm.size > 1 else None
        self._checkpointer.save(arrays, state, partition)
        log.debug("checkpoint after pulse %d", pulses_done)

    def _dof_globals(self) -> np.ndarray:
        imap = self.model.W.dofmap.index_map
        return imap.local_to_global(np.arange(imap.size_local + imap.num_ghosts, dtype=np.int32))

    def _restore(self, state: dict) -> int:
        m, st = self.model, self.stepper
        arrays = self._checkpointer.read_arrays()
        if not np.array_equal(arrays["dof_globals"], self._dof_globals()):
            raise CheckpointError(f"{self.outdir}: this run numbers its unknowns differently from the checkpoint "
                                  "(another mesh or partition); run the case afresh")
        for f, key in ((m.x, "x_n"), (m.x_n, "x_n"), (m.x_nm1, "x_nm1")):
            f.x.array[:] = arrays[key]
        st._x_nm2[:] = arrays["x_nm2"]
        s = state["stepper"]
        st.set_origin(s["t"])
        st.dt, st._steps, st._v_history = s["dt"], list(s["steps"]), list(s["v_history"])
        st.gate_voltage, st.floating_charge = s["gate_voltage"], s["floating_charge"]
        st._terminal_charge_n = s["terminal_charge_n"]
        st.stats.accepted, st.stats.rejected = s["accepted"], s["rejected"]
        st.stats.newton_iterations, st.stats.last_reason = s["newton_iterations"], s["last_reason"]
        m.set_gate_voltage(st.gate_voltage)
        m.transport_atol = state["model"]["transport_atol"]
        m._reservoir_reference = state["model"]["reservoir_reference"]
        m._reservoir_offset = state["model"].get("reservoir_offset", 0.0)
        r = state["run"]
        self._inv0, self._N0, self._Qg, self._Nres, self._Qfar = r["inv0"], r["N0"], r["Qg"], r["Nres"], r["Qfar"]
        self._I = tuple(r["I"])
        self._max_inv_err, self._max_gauss_err = r["max_inv_err"], r["max_gauss_err"]
        self._fields_written, self._eq_steps = r["fields_written"], r["eq_steps"]
        self._wall_before = r["wall_time_s"]
        self._rows = list(self.series.kept)
        return state["pulses_done"]

    # ------------------------------------------------------------------------------------------
    def _log_setup(self):
        """Mesh size, how it is split over the ranks, and the solver PETSc actually set up."""
        m, comm = self.model, self.comm
        tdim = m.mesh.topology.dim
        cells = m.mesh.topology.index_map(tdim)
        dofs = m.W.dofmap.index_map
        bs = m.W.dofmap.index_map_bs
        owned = comm.gather((cells.size_local, dofs.size_local * bs), root=0)
        log.info("mesh: %d-D, %d cells, %d dofs (%d fields)", self.case.geometry.dimension, cells.size_global,
                 dofs.size_global * bs, m.n_fields)
        if comm.size > 1 and comm.rank == 0:
            log.info("partition over %d ranks: cells per rank %s; dofs per rank %s", comm.size,
                     _spread([c for c, _ in owned]), _spread([d for _, d in owned]))
        log.debug("rank %d owns %d cells and %d dofs", comm.rank, cells.size_local, dofs.size_local * bs)
        ksp = m.snes.getKSP()
        pc = ksp.getPC()
        try:
            factor = f" ({pc.getFactorSolverType()})" if pc.getType() in ("lu", "cholesky") else ""
        except Exception:  # noqa: BLE001 - only for the log line
            factor = ""
        log.info("solver: SNES %s, KSP %s, PC %s%s", m.snes.getType(), ksp.getType(), pc.getType(), factor)

    def _watch_newton_failures(self):
        """Count failed Newton solves by reason, per pulse. The time stepper rejects and retries
        them on its own (stepping.py); wrapping the model's solve at this one boundary lets the
        log say why steps were rejected without the stepper knowing about logging."""
        self._newton_failures = collections.Counter()
        # the class's method, not the instance attribute: a model reused by another run (response
        # map probes) must not collect one wrapper per run
        solve = DeviceModel.solve_step.__get__(self.model)

        def solve_step(dt: float):
            res = solve(dt)
            if not res.converged:
                self._newton_failures[res.reason] += 1
                if res.reason.startswith("linear solver error"):
                    log.warning("step of %.3g s rejected: %s", dt, res.reason)
                else:
                    log.debug("step of %.3g s rejected after %d Newton iterations: %s", dt, res.iterations,
                              res.reason)
            return res

        self.model.solve_step = solve_step

    def _log_pulse(self, p, n_pulses: int, before):
        st = self.stepper.stats
        read = self._rows[-1]
        rejected = st.rejected - before.rejected
        why = ""
        if rejected:
            newton = sum(self._newton_failures.values())
            reasons = ", ".join(f"{n}x {r}" for r, n in self._newton_failures.most_common(3))
            why = f" ({newton} Newton failures{': ' + reasons if reasons else ''}, " \
                  f"{rejected - newton} by the error estimate)" if newton else " (by the error estimate)"
        log.info("pulse %d/%d (train %d, %+g V): G = %.6g nS, %d steps, %d rejected%s, %d Newton its, "
                 "inventory drift %.2g", p.index, n_pulses, p.train, p.amplitude, read["conductance_S"] * 1e9,
                 st.accepted - before.accepted, rejected, why, st.newton_iterations - before.newton_iterations,
                 read["inventory_error"], extra=logs.PROGRESS)


def _spread(values: list[int]) -> str:
    """All values for a few ranks, min/mean/max for many."""
    if len(values) <= 8:
        return " ".join(map(str, values))
    return f"min {min(values)}, mean {sum(values) / len(values):.0f}, max {max(values)}"


def threading_main() -> bool:
    import threading
    return threading.current_thread() is threading.main_thread()
