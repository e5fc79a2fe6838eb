"""Adaptive implicit time stepping with breakpoints and step rejection.

Backward Euler (L-stable) on the lumped, conservative system. The step size follows a local-error
estimate: the distance between the converged solution and a linear predictor through the two
previous states, which is O(dt^2) for this first-order scheme. Every breakpoint (pulse edge,
read-out, requested output time) is hit exactly, and integration restarts there with
``dt_initial`` because the waveform's derivative jumps. A step whose Newton iteration fails, or
whose error estimate is too large, is rejected: the state is restored and the step retried with a
smaller dt, down to ``dt_min``; below that the run stops with :class:`SolverFailure`, saying what
failed and what to try.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
from mpi4py import MPI

from .case import SolverSettings
from .model import DeviceModel


class SolverFailure(RuntimeError):
    """The time integration cannot proceed; the message says what failed and what to try."""


@dataclass
class StepStats:
    accepted: int = 0
    rejected: int = 0
    newton_iterations: int = 0
    last_reason: str = ""
    history: list = field(default_factory=list)


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
        self.t = 0.0
        self.dt = settings.dt_initial
        self.stats = StepStats()
        self._prev = model.x_n.x.array.copy()  # state before x_n (predictor history)
        self._dt_prev: float | None = None
        self.comm = model.comm

    def _gmax(self, arr: np.ndarray) -> float:
        n = self.model._n_owned
        return self.comm.allreduce(float(np.abs(arr[:n]).max(initial=0.0)), op=MPI.MAX)

    def restart(self):
        """Forget the predictor history: the next step starts small and first-order."""
        self._dt_prev = None
        self.dt = self.s.dt_initial

    def advance_to(self, t_target: float, after_step: Callable[[float, float], None] | None = None,
                   stop_requested: Callable[[], bool] | None = None) -> None:
        """Integrate from ``self.t`` to exactly ``t_target``."""
        m = self.model
        x, x_n = m.x.x.array, m.x_n.x.array
        while self.t < t_target * (1 - 1e-15) and t_target - self.t > 1e-30:
            remaining = t_target - self.t
            dt = min(self.dt, self.s.dt_max, remaining)
            if remaining - dt < 0.05 * dt:  # do not leave a sliver before the breakpoint
                dt = remaining
            t_new = t_target if dt == remaining else self.t + dt
            if self._dt_prev is not None:
                guess = x_n + (dt / self._dt_prev) * (x_n - self._prev)
            else:
                guess = x_n.copy()
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
                if self._dt_prev is not None:
                    pred = x_n + (dt / self._dt_prev) * (x_n - self._prev)
                    err = self._gmax(x - pred) * dt / (dt + self._dt_prev)
                    ratio = self.s.lte_tolerance / max(err, 1e-300)
                    if ratio < 0.5:  # estimated error more than twice the tolerance
                        accept = False
                        factor = max(0.2, 0.9 * math.sqrt(ratio))
                    else:
                        factor = min(self.s.growth, 0.9 * math.sqrt(ratio))
                else:
                    change = self._gmax(x - x_n)
                    if change > 4 * self.s.max_change:
                        accept = False
                        factor = max(0.1, self.s.max_change / change)
                    else:
                        factor = min(self.s.growth, self.s.max_change / max(change, 1e-300))
            if not accept:
                self.stats.rejected += 1
                x[:] = x_n
                self.dt = dt * factor
                if self.dt < self.s.dt_min:
                    raise SolverFailure(
                        f"time step fell below dt_min = {self.s.dt_min:g} s at t = {self.t:.6g} s "
                        f"(gate {self.gate_voltage:.4g} V{', floating' if self.floating_charge is not None else ''}); last Newton result: {res.reason}"
                        f"{' ' + _residual_note(m) if not res.converged else ''}. "
                        "Try: a smaller solver.dt_initial, a finer mesh (mesh.h_min) at the interfaces, "
                        "longer pulse rise/fall times, or solver.newton_max_it larger; "
                        "PETSc options (solver.petsc_options) such as snes_monitor show the iteration.")
                continue
            # accepted
            self._prev[:] = x_n
            x_n[:] = x
            self._dt_prev = dt
            self.t = t_new
            self.gate_voltage = v_new
            self.stats.accepted += 1
            self.dt = dt * max(factor, 0.2)
            if after_step is not None:
                after_step(self.t, dt)
            if stop_requested is not None and stop_requested():
                return
        self.t = t_target


    def _solve_floating(self, dt: float, guess: np.ndarray):
        """Open-circuit gate: find the gate voltage at which the terminal charge is unchanged.

        Secant iteration on V around the implicit step (each evaluation is a full Newton solve
        from the same x_n); the first slope is the geometric gate capacitance, which is within a
        few per cent of the true one because the PSG is thin against the screening lengths.
        """
        m = self.model
        target = self.floating_charge
        tol = 1e-9 * self.gate_capacitance * m.scales.thermal_voltage + 1e-12 * abs(target)
        v0 = self.gate_voltage
        slope = self.gate_capacitance
        x = m.x.x.array
        q_prev = v_prev = None
        res = None
        for _ in range(12):
            m.set_gate_voltage(v0)
            x[:] = guess
            res = m.solve_step(dt)
            if not res.converged:
                return res, v0
            q = m.terminal_charge()
            if abs(q - target) <= tol:
                return res, v0
            if q_prev is not None and abs(v0 - v_prev) > 0:
                slope = (q - q_prev) / (v0 - v_prev) or slope
            q_prev, v_prev = q, v0
            guess = x.copy()
            v0 = v0 + (target - q) / slope
        from .model import StepResult
        return StepResult(False, res.iterations if res else 0, "floating-gate charge not matched"), v0


def _residual_note(model: DeviceModel) -> str:
    last = model._last
    if not last:
        return ""
    return (f"(transport residual {last.get('rw', float('nan')):.3g} vs tolerance {model.transport_atol:.3g}, "
            f"last update {last.get('upd', float('nan')):.3g})")
