"""One +10 V / 5 ns pulse and a 1 s floating rest on the 2-D reference cross-section (default mesh,
converged to 1 % in tests/verification/test_mesh_convergence.py).

Run serially and on 2 ranks; prints wall time of the pulse + rest, steps, dofs, and the ratio
against the target (<= 30 s on 2 ranks) and the prototype (76-134 s serial at 54 k dofs):
    python benchmarks/bench_pulse_2d.py
    mpiexec -n 2 python -m mpi4py benchmarks/bench_pulse_2d.py
"""
from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from mpi4py import MPI

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from solver_cases import short_case  # noqa: E402

from protonfem.solver.run import Simulation  # noqa: E402

TARGET_2RANKS = 30.0
PROTOTYPE_SERIAL = (76.0, 134.0)


class TimedSimulation(Simulation):
    def _run_protocol(self, start: int = 0):
        self.comm.Barrier()
        t0 = time.perf_counter()
        super()._run_protocol(start)
        self.comm.Barrier()
        self.protocol_wall = time.perf_counter() - t0


def main():
    comm = MPI.COMM_WORLD
    tmp = comm.bcast(tempfile.mkdtemp() if comm.rank == 0 else None, root=0)
    root = Path(__file__).resolve().parents[1]
    import tomllib

    import tomli_w
    data = tomllib.loads((root / "cases/onen2022/reference_2d.toml").read_text())
    first = data["protocol"]["trains"][0]
    first.update(count=1, rest=1.0)
    data["protocol"]["trains"] = [first]
    data["output"]["fields"] = []
    case = Path(tmp) / "bench2d.toml"
    if comm.rank == 0:
        case.write_text(tomli_w.dumps(data))
    comm.Barrier()
    sim = TimedSimulation(case, Path(tmp) / "out", progress=False)
    summary = sim.run()
    assert summary["status"] == "completed", summary["message"]
    if comm.rank == 0:
        st = summary["steps"]
        print(f"2-D reference cross-section: {summary['mesh']['cells']} cells, {summary['mesh']['dofs']} dofs, "
              f"{comm.size} rank(s)")
        print(f"  pulse + 1 s rest: {sim.protocol_wall:.1f} s wall, {st['accepted']} accepted / {st['rejected']} rejected "
              f"steps, {st['newton_iterations']} Newton iterations")
        print(f"  ratio to the 2-rank target ({TARGET_2RANKS:.0f} s): {sim.protocol_wall / TARGET_2RANKS:.2f}; "
              f"to the serial prototype ({PROTOTYPE_SERIAL[0]:.0f}-{PROTOTYPE_SERIAL[1]:.0f} s): "
              f"{sim.protocol_wall / PROTOTYPE_SERIAL[0]:.2f}-{sim.protocol_wall / PROTOTYPE_SERIAL[1]:.2f}")
        q = summary["per_pulse"][0]["faradaic_charge_C"]
        print(f"  Faradaic charge kept: {q / 1.602176634e-19:.3f} protons; G {summary['conductance_S']['initial'] * 1e9:.4f} -> "
              f"{summary['conductance_S']['final'] * 1e9:.4f} nS; inventory drift {summary['conservation']['max_inventory_error']:.2g}")


if __name__ == "__main__":
    main()
