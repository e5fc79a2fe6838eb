"""Strong scaling of the 3-D device solve on 1 and 2 MPI ranks, with the direct and the iterative
linear solver, and memory per dof.

The case is the 3-D reference device (cases/onen2022/reference_3d.toml) on a finer mesh across the
width (``--width-h``, default 1.7 nm: ~2e5 dofs). The timed part is the start of a +10 V pulse: a
fixed sequence of backward-Euler steps of the gate's rise (the same steps on every run, so every
run does the same work and the figures compare), from the exact rest state at 0 V (u = w = 0 is the
equilibrium there, so the continuation of a normal run is skipped). Mesh building, distribution,
form compilation and solver set-up are timed apart and reported, not counted.

The script launches itself under ``mpiexec -n 1`` and ``-n 2`` (the mpiexec next to the Python
interpreter), ``--repeats`` times each (default 3), and prints medians, speed-up and parallel
efficiency against the target of 70 %, and the peak resident memory per rank over the dofs:

    python benchmarks/bench_strong_scaling.py                     # both solvers, 1 and 2 ranks
    python benchmarks/bench_strong_scaling.py --solvers iterative --repeats 5

The two cores of the development machine are shared: quote the load (``uptime``) with the figures.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGET_EFFICIENCY = 0.70
#: gate voltage of the timed backward-Euler step(s) on the 0.1 ns rise (dt = 2e-11 s each); one step
#: (~6 Newton iterations) keeps three repeats of a 2e5-dof run on 1 and 2 ranks within ~30 min here
RISE_STEPS = (2.0,)
RISE_DT = 2e-11


def worker(args) -> None:
    """One timed run (under mpiexec); rank 0 prints one JSON line."""
    sys.path.insert(0, str(ROOT / "tests"))
    from solver_cases import short_case

    from mpi4py import MPI
    from protonfem.solver.case import load_case
    from protonfem.solver.mesh import create_device_mesh
    from protonfem.solver.model import DeviceModel

    comm = MPI.COMM_WORLD
    tmp = comm.bcast(tempfile.mkdtemp() if comm.rank == 0 else None, root=0)
    path = Path(tmp) / "scaling.toml"
    if comm.rank == 0:
        short_case(path, dim=3, pulses_up=1, pulses_down=0, output__fields=[], mesh__width_h=args.width_h,
                   mesh__lateral_h_min=2e-9, mesh__lateral_h_max=1e-8, solver__linear_solver=args.solver)
    comm.Barrier()
    case = load_case(path)

    comm.Barrier()
    t0 = time.perf_counter()
    dm = create_device_mesh(case, comm)
    comm.Barrier()
    t_mesh = time.perf_counter() - t0
    model = DeviceModel(case, dm.mesh, dm.cell_tags, dm.facet_tags)
    model.set_rest_state()
    model.set_transport_scale(model.inventory_scaled())
    comm.Barrier()
    t_setup = time.perf_counter() - t0

    newton, krylov, reasons = 0, 0, []
    comm.Barrier()
    t1 = time.perf_counter()
    for volts in RISE_STEPS:
        model.set_gate_voltage(volts)
        res = model.solve_step(RISE_DT)
        reasons.append(res.reason)
        if not res.converged:
            break
        newton += res.iterations
        krylov += model.snes.getLinearSolveIterations()
        model.x_n.x.array[:] = model.x.x.array
    comm.Barrier()
    t_steps = time.perf_counter() - t1

    rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # Linux: kilobytes
    rss = comm.gather(rss_kb * 1024, root=0)
    inventory = model.inventories()
    dofs = model.W.dofmap.index_map.size_global * model.W.dofmap.index_map_bs
    if comm.rank == 0:
        print(json.dumps({
            "ranks": comm.size, "solver": args.solver, "dofs": dofs,
            "cells": dm.mesh.topology.index_map(3).size_global,
            "mesh_s": t_mesh, "setup_s": t_setup, "steps_s": t_steps,
            "converged": all(r.startswith("CONVERGED") for r in reasons) and len(reasons) == len(RISE_STEPS),
            "reasons": reasons, "newton": newton, "krylov": krylov,
            "peak_rss_max_B": max(rss), "peak_rss_sum_B": sum(rss),
            "inventory_channel": inventory["channel"],
        }), flush=True)


def launch(ranks: int, solver: str, width_h: float) -> dict:
    mpiexec = Path(sys.executable).parent / "mpiexec"
    cmd = [str(mpiexec), "-n", str(ranks), sys.executable, "-m", "mpi4py", __file__, "--worker",
           "--solver", solver, "--width-h", repr(width_h)]
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
    if out.returncode != 0 or not lines:
        raise RuntimeError(f"{' '.join(cmd)} failed ({out.returncode}):\n{out.stderr[-3000:]}")
    return json.loads(lines[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--solver", default="direct", help=argparse.SUPPRESS)
    ap.add_argument("--solvers", default="direct,iterative", help="comma-separated: direct, iterative")
    ap.add_argument("--ranks", default="1,2", help="comma-separated rank counts (the first is the baseline)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--width-h", type=float, default=1.7e-9, help="element size across the width [m]")
    args = ap.parse_args()
    if args.worker:
        worker(args)
        return
    ranks = [int(r) for r in args.ranks.split(",")]
    print(f"load average before: {os.getloadavg()}")
    for solver in args.solvers.split(","):
        med = {}
        for n in ranks:
            runs = [launch(n, solver, args.width_h) for _ in range(args.repeats)]
            r0 = runs[0]
            if not all(r["converged"] for r in runs):
                print(f"{solver}, {n} rank(s): did not converge: {r0['reasons']}")
                break
            med[n] = {k: statistics.median(r[k] for r in runs) for k in ("steps_s", "setup_s", "mesh_s")}
            mem = max(r["peak_rss_max_B"] for r in runs)
            mem_sum = max(r["peak_rss_sum_B"] for r in runs)
            print(f"{solver:9s} {n} rank(s): {r0['dofs']} dofs, {r0['cells']} cells | timed {len(RISE_STEPS)} steps "
                  f"({r0['newton']} Newton, {r0['krylov']} Krylov its): median {med[n]['steps_s']:.2f} s "
                  f"[{', '.join(f'{r['steps_s']:.2f}' for r in runs)}] | set-up {med[n]['setup_s']:.1f} s "
                  f"(mesh {med[n]['mesh_s']:.1f} s) | peak RSS {mem / 2**20:.0f} MiB/rank, "
                  f"{mem_sum / r0['dofs']:.0f} B/dof over all ranks")
        base = ranks[0]
        for n in ranks[1:]:
            if n in med and base in med:
                speedup = med[base]["steps_s"] / med[n]["steps_s"]
                eff = speedup * base / n
                print(f"{solver:9s} speed-up {base} -> {n} ranks: {speedup:.2f}, parallel efficiency {eff * 100:.0f} % "
                      f"(target {TARGET_EFFICIENCY * 100:.0f} %: {'met' if eff >= TARGET_EFFICIENCY else 'not met'})")
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
