"""Onen 2022 Fig. 2A protocol in 1-D on one core: 1000 pulses at +10 V then 1000 at -8.5 V (5 ns,
1 s floating rests with a read after each), cases/onen2022/fig2a.toml as shipped.

Prints the wall time of the whole run (set-up and equilibrium included), the steps, the conductance
range and the up/down step sizes, and the ratio to the target (<= 3 minutes).
Usage: python benchmarks/bench_fig2a.py [--pulses N]  (N < 2000: the first N/2 of each train, for a
quick estimate; the wall time is then also extrapolated to 2000 pulses)
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import tomllib

import tomli_w

from protonfem.solver.run import Simulation

ROOT = Path(__file__).resolve().parents[1]
CASE = ROOT / "cases" / "onen2022" / "fig2a.toml"
TARGET_WALL = 180.0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--pulses", type=int, default=2000, help="total pulses (split evenly between the trains)")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        case = CASE
        if a.pulses != 2000:
            data = tomllib.loads(CASE.read_text())
            for train in data["protocol"]["trains"]:
                train["count"] = a.pulses // 2
            case = Path(tmp) / "fig2a.toml"
            case.write_text(tomli_w.dumps(data))
        t0 = time.perf_counter()
        summary = Simulation(case, Path(tmp) / "out", progress=False).run()
        wall = time.perf_counter() - t0
    assert summary["status"] == "completed", summary["message"]
    pp = summary["per_pulse"]
    g = [summary["conductance_S"]["initial"]] + [p["conductance_S"] for p in pp]
    dg = [b - a_ for a_, b in zip(g, g[1:])]
    n_up = sum(1 for p in pp if p["amplitude_V"] > 0)
    st = summary["steps"]
    print(f"Fig. 2A protocol, 1-D, 1 core: {len(pp)} pulses ({n_up} at +10 V, {len(pp) - n_up} at -8.5 V), "
          f"{summary['mesh']['dofs']} dofs")
    print(f"  wall time        {wall:7.1f} s   target {TARGET_WALL:.0f} s  ratio {wall / TARGET_WALL:.2f}")
    if len(pp) != 2000:
        est = wall * 2000 / len(pp)
        print(f"  extrapolated to 2000 pulses: {est:.0f} s  ratio {est / TARGET_WALL:.2f}")
    print(f"  steps            {st['accepted']} accepted ({st['accepted'] / len(pp):.1f} per pulse), "
          f"{st['rejected']} rejected, {st['newton_iterations']} Newton iterations")
    print(f"  G                {g[0] * 1e9:.4g} -> max {max(g) * 1e9:.4g} -> {g[-1] * 1e9:.4g} nS; "
          f"mean dG up {sum(dg[:n_up]) / max(n_up, 1) * 1e12:.4g} pS, "
          f"down {sum(dg[n_up:]) / max(len(pp) - n_up, 1) * 1e12:.4g} pS")
    print(f"  inventory drift  {summary['conservation']['max_inventory_error']:.2g}")


if __name__ == "__main__":
    main()
