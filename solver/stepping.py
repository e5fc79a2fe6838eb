"""Adaptive implicit time stepping with breakpoints and step rejection.

Variable-step BDF2 on the lumped, conservative system (``scheme = "bdf1"``: backward Euler
throughout), with a backward-Euler step after every restart. The step size follows a local-error
estimate: the distance between the converged solution and a polynomial predictor through the
previous states (linear after one step, quadratic after two), times the scheme's error constant. Every breakpoint (pulse edge,
read-out, requested output time) is hit exactly, and integration restarts there with
``dt_initial`` because the waveform's derivative jumps. A step whose Newton iteration fails, or
whose error estimate is too large, is rejected: the state is restored and the step retried with a
smaller dt (after 3 failures in a row with backward Euler from the last state, after 6 also with a
backtracking Newton line search), down to ``dt_min``; below that the run stops with :class:`SolverFailure`, saying what
failed and what to try.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
from mpi4py import MPI

from .case import SolverSettings
from .model import DeviceModel
from .scaling import Q_E


#: Relative part of the terminal-charge tolerance, against the charge the step moved: a pulse
#: edge charges the gate by thousands of protons, whose shape need not be followed to 1e-3 proton.
CHARGE_RTOL = 1e-3


class SolverFailure(RuntimeError):
    """The time integration cannot proceed; the message says what failed and what to try."""


@dataclass
class StepStats:
    accepted: int = 0
    rejected: int = 0
    newton_iterations: int = 0
    last_reason: str = ""


class TimeStepper:
    def __init__(self, model: DeviceModel, settings: SolverSettings, voltage: Callable[[float], float]):
        self.model = model
        self.s = settings
        self.voltage = voltage
        #: gate voltage of the last accepted step (the unknown of a floating gate)
        self.gate_voltage = voltage(0.0)
        #: None: the gate follows ``voltage``; a float: the gate floats and its terminal charge
        #: (surface charge + q * protons that left the reservoir) is held at this value.
        self.floating_charge: float | None = None
        self.gate_capacitance = model.geometric_gate_capacitance()
        #: Time is kept as origin + t: ``t`` (what ``voltage`` and ``advance_to`` take) counts from
        #: ``origin``, which the driver moves to each pulse's start, so a femtosecond step stays
        #: resolvable however long the protocol has run (see :meth:`set_origin`).
        self.origin = 0.0
        self.t = 0.0
        self.dt = settings.dt_initial
        self.stats = StepStats()
        self.comm = model.comm
        # History since the last restart: x_nm1 (a Function: BDF2 uses it) and the one before.
        self._x_nm2 = model.x_n.x.array.copy()
        self._steps: list[float] = []  # accepted step sizes since the last restart, newest last
        self._v_history: list[float] = []  # gate voltages of the last two accepted steps (floating)
        self._rejects_in_row = 0
        # terminal charge of the last accepted state, and of the step being judged
        self._terminal_charge_n: float | None = None
        self._terminal_charge_candidate: float | None = None

    @property
    def time(self) -> float:
        """Absolute time [s] of the last accepted state."""
        return self.origin + self.t

    def set_origin(self, t_abs: float) -> None:
        """Count time from ``t_abs``, the absolute time of the present state.

        One ulp of a double at t = 82 s is 1.4e-14 s: a protocol clock that had run for a minute
        could not represent the femtosecond steps of a 10 V rise (the steps vanished in rounding,
        the voltage advanced in 1e-3 V jumps, and the error control stalled)."""
        self.origin, self.t = t_abs, 0.0

    def _gmax(self, arr: np.ndarray) -> float:
        n = self.model._n_owned
        return self.comm.allreduce(float(np.abs(arr[:n]).max(initial=0.0)), op=MPI.MAX)

    def restart(self, segment: float | None = None):
        """Forget the history at a corner of the waveform: the next step is backward Euler (older
        states would pollute the BDF2 formula across the jump in dV/dt). The state itself is
        continuous there, so the step keeps its size, capped at an eighth of the coming segment
        (``segment`` [s]) and at least ``dt_initial``; without ``segment``, it restarts at
        ``dt_initial``."""
        self._steps = []
        self._v_history = []
        if segment is None:
            self.dt = self.s.dt_initial
        else:
            self.dt = max(self.s.dt_initial, min(self.dt, segment / 8.0))

    def _predict(self, dt: float) -> np.ndarray | None:
        """Polynomial extrapolation through the stored states (linear after one step, quadratic
        after two); None right after a restart."""
        m = self.model
        x_n, x_nm1 = m.x_n.x.array, m.x_nm1.x.array
        h = self._steps
        if not h:
            return None
        if len(h) == 1:
            return x_n + (dt / h[-1]) * (x_n - x_nm1)
        # Newton form through (t_n, x_n), (t_n - h1, x_nm1), (t_n - h1 - h2, x_nm2)
        h1, h2 = h[-1], h[-2]
        d1 = (x_n - x_nm1) / h1
        d2 = (x_nm1 - self._x_nm2) / h2
        dd = (d1 - d2) / (h1 + h2)
        return x_n + dt * d1 + dt * (dt + h1) * dd

    def _error_ratio(self, x: np.ndarray, pred: np.ndarray | None, dt: float, bdf2: bool) -> tuple[float, int]:
        """(tolerance / estimated local error, order of the estimate) for the step just solved.

        Two norms, the stricter wins: the scaled unknowns in kT/q (weighted where they carry
        protons), and the charge through the gate terminal in protons (``charge_tolerance``),
        which follows the back-flow of a held rest: a fraction of a proton over a second.
        """
        m = self.model
        weights = m.error_weights(x)
        if pred is None:
            # First step after a restart: no history, so limit the change of the unknowns.
            change = self._gmax(weights * (x - m.x_n.x.array))
            return self.s.max_change / max(change, 1e-300), 1
        diff = self._gmax(weights * (x - pred)) / self.s.lte_tolerance
        if self.floating_charge is None:
            # Error of the charge through the gate terminal (what a held rest's back-flow keeps
            # or loses, a fraction of a proton that no kT norm sees). A floating gate holds it
            # fixed by construction.
            q_new = m.terminal_charge()
            dq = abs(q_new - m.terminal_charge(pred)) / Q_E
            if self._terminal_charge_n is None:
                self._terminal_charge_n = m.terminal_charge(m.x_n.x.array)
            moved = abs(q_new - self._terminal_charge_n) / Q_E
            self._terminal_charge_candidate = q_new
            diff = max(diff, dq / (self.s.charge_tolerance + CHARGE_RTOL * moved))
        h = self._steps
        if bdf2 and len(h) >= 2:
            # BDF2 error constant 2/9 against the quadratic predictor's h^3 x^(3) (exact for equal
            # steps): err ~ (2/9) |x - P| * 6 dt^2 / ((dt + h1)(dt + h1 + h2)).
            h1, h2 = h[-1], h[-2]
            err = (2.0 / 9.0) * diff * 6.0 * dt * dt / ((dt + h1) * (dt + h1 + h2))
            return 1.0 / max(err, 1e-300), 2
        # backward Euler against the linear predictor: err ~ dt / (dt + h1) |x - P|
        err = diff * dt / (dt + h[-1])
        return 1.0 / max(err, 1e-300), 1

    def advance_to(self, t_target: float, after_step: Callable[[float, float], None] | None = None,
                   stop_requested: Callable[[], bool] | None = None) -> None:
        """Integrate from ``self.t`` to exactly ``t_target`` (both counted from ``origin``);
        ``after_step`` gets the absolute time and the step of every accepted step."""
        m = self.model
        x, x_n, x_nm1 = m.x.x.array, m.x_n.x.array, m.x_nm1.x.array
        while self.t < t_target * (1 - 1e-15) and t_target - self.t > 1e-30:
            remaining = t_target - self.t
            dt = min(self.dt, self.s.dt_max, remaining)
            if remaining - dt < 0.05 * dt:  # do not leave a sliver before the breakpoint
                dt = remaining
            t_new = t_target if dt == remaining else self.t + dt
            # Escalation after repeated failures: first drop to backward Euler from the last state
            # (no extrapolated guess), then also let Newton backtrack.
            if self._rejects_in_row == 3:
                self._steps = []
            if self._rejects_in_row == 6:
                m.set_line_search("bt")
            # BDF2 once there is one accepted step since the last restart.
            bdf2 = self.s.scheme == "bdf2" and len(self._steps) >= 1
            m.set_scheme(dt / self._steps[-1] if bdf2 else None)
            pred = self._predict(dt)
            self._terminal_charge_candidate = None
            guess = pred if pred is not None else x_n.copy()
            if self.floating_charge is None:
                v_new = self.voltage(t_new)
                m.set_gate_voltage(v_new)
                x[:] = guess
                res = m.solve_step(dt)
            else:
                res, v_new = self._solve_floating(dt, guess)
            self.stats.newton_iterations += res.iterations
            self.stats.last_reason = res.reason
            accept = res.converged
            factor = 0.25
            if accept:
                ratio, order = self._error_ratio(x, pred, dt, bdf2)
                if ratio < 0.5:  # estimated error more than twice the tolerance
                    accept = False
                    factor = max(0.2, 0.9 * ratio ** (1.0 / (order + 1)))
                else:
                    # Growth with exponent 1/p, not the textbook 1/(p+1). In a relaxation that is
                    # uniform in log-time (a rest after a pulse) the error goes as (dt/t)^(p+1),
                    # and t grows with every step: the textbook rule then settles at a tenth of
                    # the tolerance with dt ~ t, ~3.5 steps per decade. 1/p lets dt reach the
                    # growth cap there (~2.6 steps per decade); shrinking keeps 1/(p+1).
                    factor = min(self.s.growth, 0.9 * ratio ** (1.0 / order))
            if not accept:
                self.stats.rejected += 1
                self._rejects_in_row += 1
                x[:] = x_n
                self.dt = dt * factor
                if self.dt < self.s.dt_min:
                    raise SolverFailure(
                        f"time step fell below dt_min = {self.s.dt_min:g} s at t = {self.time:.9g} s "
                        f"(gate {self.gate_voltage:.4g} V{', floating' if self.floating_charge is not None else ''}); "
                        f"last Newton result: {res.reason}"
                        f"{' ' + _residual_note(m) if not res.converged else ''}. "
                        "Try: a smaller solver.dt_initial, a finer mesh (mesh.h_min) at the interfaces, "
                        "longer pulse rise/fall times, or solver.newton_max_it larger; "
                        "PETSc options (solver.petsc_options) such as snes_monitor show the iteration.")
                continue
            # accepted: shift the history, undo any escalation
            if self._rejects_in_row >= 6:
                m.set_line_search("basic")
            self._rejects_in_row = 0
            self._x_nm2[:] = x_nm1
            x_nm1[:] = x_n
            x_n[:] = x
            self._terminal_charge_n = self._terminal_charge_candidate
            self._steps.append(dt)
            del self._steps[:-2]
            self.t = t_new
            self.gate_voltage = v_new
            self._v_history = (self._v_history + [v_new])[-2:]
            self.stats.accepted += 1
            self.dt = dt * max(factor, 0.2)
            if after_step is not None:
                after_step(self.origin + self.t, dt)
            if stop_requested is not None and stop_requested():
                return
        self.t = t_target

    def _solve_floating(self, dt: float, guess: np.ndarray):
        """Open-circuit gate: one Newton solve for the state and the gate voltage together, the
        terminal charge held at ``floating_charge`` (DeviceModel.set_floating: a bordered Newton
        step). Tolerance 1e-4 of C kT/q, a few ten-thousandths of an elementary charge on the
        reference device; the target is fixed, so mismatches do not accumulate from step to step.
        The first voltage is extrapolated from the last two steps."""
        m = self.model
        v0 = self.gate_voltage
        hv = self._v_history
        if len(hv) == 2 and len(self._steps) >= 1:
            v0 = hv[-1] + dt / self._steps[-1] * (hv[-1] - hv[-2])
        m.set_gate_voltage(v0)
        m.x.x.array[:] = guess
        m.set_floating(self.floating_charge, 1e-4 * self.gate_capacitance * m.scales.thermal_voltage)
        try:
            res = m.solve_step(dt)
        finally:
            m.set_floating(None)
        return res, m.gate_voltage()


def _residual_note(model: DeviceModel) -> str:
    last = model._last
    if not last:
        return ""
    charge = (f", floating-gate charge off by {last['charge'] * model.scales.charge / Q_E:.3g} protons, "
              f"tolerance {last['charge_tolerance'] * model.scales.charge / Q_E:.3g}" if "charge" in last else "")
    return (f"(transport residual {last.get('rw', float('nan')):.3g} vs tolerance {model.transport_atol:.3g}, "
            f"last update {last.get('upd', float('nan')):.3g}{charge})")
