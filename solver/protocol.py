"""Gate waveforms built from a case's pulse trains.

The waveform is data: a list of :class:`Pulse` records whose edges are time-step breakpoints, so
the integrator lands exactly on every corner of the trapezoid (and restarts with a small step
there), and whose rest ends are the read-out events.
"""
from __future__ import annotations

import bisect
from dataclasses import dataclass

from .case import Protocol


@dataclass(frozen=True)
class Pulse:
    index: int          # 1-based over the whole protocol
    train: int          # 0-based train index
    amplitude: float    # V
    start: float        # s, rise begins
    rise: float
    width: float
    fall: float
    rest: float
    read_delays: tuple[float, ...] = ()

    @property
    def rest_reads(self) -> tuple[float, ...]:
        """Times of the extra read-outs during the rest."""
        return tuple(self.end + d for d in self.read_delays)

    @property
    def plateau_start(self) -> float:
        return self.start + self.rise

    @property
    def plateau_end(self) -> float:
        return self.plateau_start + self.width

    @property
    def end(self) -> float:
        """End of the fall: the pulse proper is over."""
        return self.plateau_end + self.fall

    @property
    def read_time(self) -> float:
        """End of the rest: the conductance read-out and the next pulse's start."""
        return self.end + self.rest

    @property
    def edges(self) -> tuple[float, float, float, float]:
        return (self.start, self.plateau_start, self.plateau_end, self.end)

    # Pulse-local times (s after ``start``). The integrator runs on these: after a few tens of
    # seconds of protocol, absolute times resolve only ~1e-14 s (one ulp at t = 82 s is 1.4e-14 s),
    # coarser than the femtosecond steps a 10 V rise can need.
    @property
    def local_edges(self) -> tuple[float, float, float, float]:
        return (0.0, self.rise, self.rise + self.width, self.rise + self.width + self.fall)

    @property
    def local_rest_reads(self) -> tuple[float, ...]:
        return tuple(self.local_edges[3] + d for d in self.read_delays)

    @property
    def local_read_time(self) -> float:
        return self.local_edges[3] + self.rest

    def local_voltage(self, tau: float, v_start: float, base: float) -> float:
        """Gate voltage ``tau`` seconds after the start, rising from ``v_start`` (the gate's
        voltage when the driver reconnects) and falling back to ``base``."""
        _, top, fall_start, end = self.local_edges
        if tau < top:
            return v_start + (self.amplitude - v_start) * tau / self.rise
        if tau <= fall_start:
            return self.amplitude
        if tau < end:
            return self.amplitude + (base - self.amplitude) * (tau - fall_start) / self.fall
        return base


class Waveform:
    """Piecewise-linear gate voltage V(t) of a whole protocol."""

    def __init__(self, protocol: Protocol, t0: float = 0.0):
        self.base = protocol.rest_voltage
        self.pulses: list[Pulse] = []
        t = t0
        index = 1
        for k, train in enumerate(protocol.trains):
            for _ in range(train.count):
                p = Pulse(index, k, train.amplitude, t, train.rise, train.width, train.fall, train.rest,
                          tuple(sorted(train.read_delays)))
                self.pulses.append(p)
                t = p.read_time
                index += 1
        self.t_end = t
        self._starts = [p.start for p in self.pulses]

    def pulse_at(self, t: float) -> Pulse | None:
        """The pulse whose [start, read_time) contains t."""
        i = bisect.bisect_right(self._starts, t) - 1
        if i < 0:
            return None
        return self.pulses[i]

    def voltage(self, t: float) -> float:
        p = self.pulse_at(t)
        if p is None:
            return self.base
        return p.local_voltage(t - p.start, self.base, self.base)

    def breakpoints(self, extra: list[float] = ()) -> list[float]:
        """Every time the integrator must hit exactly, sorted and unique."""
        pts = set()
        for p in self.pulses:
            pts.update(p.edges)
            pts.update(p.rest_reads)
            pts.add(p.read_time)
        pts.update(t for t in extra if 0.0 <= t <= self.t_end)
        return sorted(pts)
