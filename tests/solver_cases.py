"""Small variants of the reference case for tests (fast, same physics)."""
from __future__ import annotations

import tomllib
from pathlib import Path

import tomli_w

ROOT = Path(__file__).resolve().parents[1]


def reference(dim: int = 1) -> dict:
    name = {1: "reference.toml", 2: "reference_2d.toml", 3: "reference_3d.toml"}[dim]
    return tomllib.loads((ROOT / "cases" / "onen2022" / name).read_text())


#: A coarse mesh for 2-D/3-D comparison tests (partition independence, 3-D against 2-D): they
#: check the equality of two runs, not the physics, so the grading need not be converged.
COARSE_MESH = {"mesh__h_min": 5e-11, "mesh__growth": 1.5, "mesh__h_max": 2e-9,
               "mesh__lateral_h_min": 1e-8, "mesh__lateral_h_max": 5e-8, "mesh__width_h": 2.5e-8}


def short_case(path: Path, dim: int = 1, pulses_up: int = 2, pulses_down: int = 1, rest: float = 1e-3,
               **overrides) -> Path:
    """Write a short train of the reference device to ``path`` and return it."""
    data = reference(dim)
    data["name"] = path.stem
    up, down = data["protocol"]["trains"]
    up.update(count=pulses_up, rest=rest)
    down.update(count=pulses_down, rest=rest)
    data["protocol"]["trains"] = [t for t in (up, down) if t["count"] > 0]
    if dim >= 2:
        data["mesh"].update(lateral_h_min=5e-9, lateral_h_max=2.5e-8)
    for dotted, value in overrides.items():
        keys = dotted.split("__")
        d = data
        for k in keys[:-1]:
            d = d.setdefault(k, {})
        if value is None:  # None removes the key (tomli-w cannot write it)
            d.pop(keys[-1], None)
        else:
            d[keys[-1]] = value
    path.parent.mkdir(parents=True, exist_ok=True)
    # Every MPI rank writes the same bytes: write to a rank-private file and rename, so that no
    # rank ever reads a half-written case.
    import os

    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(tomli_w.dumps(data).encode())
    os.replace(tmp, path)
    return path
