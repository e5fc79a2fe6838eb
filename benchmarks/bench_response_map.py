"""A response map of 200 probes (4 states x 5 amplitudes x 5 widths x 2 temperatures) on the 1-D
reference stack, run once on 1 MPI rank and once on 2 (the script launches both with the venv's
mpiexec, so the ratio comes from one run). Prints the wall time of each (states + probes) and of the
probe ensemble alone, the speed-up and its ratio to the target (>= 1.8 on 2 ranks).
Usage: python benchmarks/bench_response_map.py
"""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

import tomli_w

ROOT = Path(__file__).resolve().parents[1]
TARGET = 1.8


def write_case(path: Path) -> Path:
    data = tomllib.loads((ROOT / "cases" / "onen2022" / "reference.toml").read_text())
    data["name"] = "bench-response-map"
    data["mesh"].update(h_min=5e-11, h_max=2e-9, growth=1.5)  # a coarse stack: the map's cost is the count
    for train in data["protocol"]["trains"]:
        train.update(count=3, rest=1e-2)
    data["output"] = {"fields": [], "checkpoint_every": 0}
    data["response_map"] = {"states": 4, "amplitudes": [6.0, 8.0, 10.0, -6.0, -8.5],
                            "widths": [1e-9, 2e-9, 5e-9, 1e-8, 2e-8], "temperatures": [300.0, 330.0], "rest": 1e-2}
    path.write_text(tomli_w.dumps(data))
    return path


def run(ranks: int, case: Path, out: Path) -> tuple[float, dict]:
    mpiexec = Path(sys.executable).parent / "mpiexec"
    cmd = [str(mpiexec), "-n", str(ranks), sys.executable, "-m", "protonfem.cli", "response-map", str(case),
           "-o", str(out), "-q"]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    return time.perf_counter() - t0, json.loads((out / "response_map.json").read_text())


def main():
    with tempfile.TemporaryDirectory() as tmp:
        case = write_case(Path(tmp) / "map.toml")
        res = {n: run(n, case, Path(tmp) / f"n{n}") for n in (1, 2)}
    (w1, m1), (w2, m2) = res[1], res[2]
    probes = m1["probes"]
    e1, e2 = m1["wall_time_s"] - m1["states_wall_time_s"], m2["wall_time_s"] - m2["states_wall_time_s"]
    print(f"response map, {probes} probes ({m1['completed']}/{m2['completed']} completed), 1-D stack:")
    print(f"  1 rank   {w1:7.1f} s total ({m1['states_wall_time_s']:.1f} s states, {e1:.1f} s probes, "
          f"{probes / e1:.2f} probes/s)")
    print(f"  2 ranks  {w2:7.1f} s total ({m2['states_wall_time_s']:.1f} s states, {e2:.1f} s probes, "
          f"{probes / e2:.2f} probes/s)")
    print(f"  speed-up {w1 / w2:.2f} total, {e1 / e2:.2f} probes; target {TARGET}  ratio {w1 / w2 / TARGET:.2f}")
    print(f"  replay of the train from the map: max deviation {m1['replay']['max_relative_deviation'] * 100:.3g} %")


if __name__ == "__main__":
    main()
