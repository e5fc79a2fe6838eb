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
            m.set_gate_voltage(self.voltage(t_new))
            if self._dt_prev is not None:
                x[:] = x_n + (dt / self._dt_prev) * (x_n - self._prev)
            else:
                x[:] = x_n
            res = m.solve_step(dt)
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
                        f"(gate {self.voltage(self.t):.4g} V); last Newton result: {res.reason}"
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
            self.stats.accepted += 1
            self.dt = dt * max(factor, 0.2)
            if after_step is not None:
                after_step(self.t, dt)
            if stop_requested is not None and stop_requested():
                return
        self.t = t_target


def _residual_note(model: DeviceModel) -> str:
    last = model._last
    if not last:
        return ""
    return (f"(transport residual {last.get('rw', float('nan')):.3g} vs tolerance {model.transport_atol:.3g}, "
            f"last update {last.get('upd', float('nan')):.3g})")
