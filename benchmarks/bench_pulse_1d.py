"""One +10 V / 5 ns pulse and a 1 s rest on the 1-D reference stack, one core.

Prints accepted/rejected steps, Newton iterations and wall time of the pulse + rest (set-up and
equilibrium excluded), and their ratios against the targets (<= 60 accepted steps, <= 0.15 s)
and the throw-away backward-Euler prototype (~100 steps, ~0.2 s for the pulse + only a 1 us rest).
Usage: python benchmarks/bench_pulse_1d.py [--repeat N] [solver overrides as key=value ...]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from solver_cases import short_case  # noqa: E402

from protonfem.solver.run import Simulation  # noqa: E402

TARGET_STEPS, TARGET_WALL = 60, 0.15
PROTOTYPE_STEPS, PROTOTYPE_WALL = 100, 0.2


class TimedSimulation(Simulation):
    def _run_protocol(self, start: int = 0):
        t0 = time.perf_counter()
        s0 = self.stepper.stats.accepted
        super()._run_protocol(start)
        self.protocol_wall = time.perf_counter() - t0
        self.protocol_steps = self.stepper.stats.accepted - s0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("overrides", nargs="*", help="e.g. solver__lte_tolerance=0.1")
    a = ap.parse_args()
    over = {}
    for kv in a.overrides:
        k, v = kv.split("=")
        over[k] = float(v) if v.replace(".", "").replace("e-", "").replace("e", "").isdigit() else v
    walls, res = [], None
    with tempfile.TemporaryDirectory() as tmp:
        case = short_case(Path(tmp) / "bench.toml", dim=1, pulses_up=1, pulses_down=0, rest=1.0,
                          output__fields=[], **over)
        for _ in range(a.repeat):
            sim = TimedSimulation(case, Path(tmp) / "out", progress=False)
            summary = sim.run()
            assert summary["status"] == "completed", summary["message"]
            walls.append(sim.protocol_wall)
            res = (sim, summary)
    sim, summary = res
    st = summary["steps"]
    wall = statistics.median(walls)
    q = summary["per_pulse"][0]["faradaic_charge_C"]
    print(f"pulse + 1 s rest (1-D reference stack, {summary['mesh']['dofs']} dofs):")
    print(f"  accepted steps   {sim.protocol_steps:6d}   target {TARGET_STEPS}  ratio {sim.protocol_steps / TARGET_STEPS:.2f}"
          f"   prototype ~{PROTOTYPE_STEPS}  ratio {sim.protocol_steps / PROTOTYPE_STEPS:.2f}")
    print(f"  rejected steps   {st['rejected']:6d}   Newton iterations {st['newton_iterations']}")
    print(f"  wall time        {wall:6.3f} s (median of {len(walls)})   target {TARGET_WALL} s  ratio {wall / TARGET_WALL:.2f}"
          f"   prototype ~{PROTOTYPE_WALL} s  ratio {wall / PROTOTYPE_WALL:.2f}")
    print(f"  Faradaic charge kept at the read: {q:.6g} C = {q / 1.602176634e-19:.3f} protons;"
          f" inventory drift {summary['conservation']['max_inventory_error']:.2g}")


if __name__ == "__main__":
    main()
