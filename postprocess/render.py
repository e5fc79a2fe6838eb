"""Render the fields written by ``FieldWriter`` (``fields.vtkhdf``) to PNG, off-screen.

1-D meshes (a vertical stack): matplotlib profiles versus z in nm. 2-D/3-D meshes: pyvista
(EGL off-screen, no X server needed) with a scalar bar; the proton density on a log10 scale.
Imports numpy, matplotlib and pyvista only (no DOLFINx).
"""
from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

__all__ = ["render_fields", "load_fields", "FIELD_LABELS", "LOG_FIELDS"]

VTKHDF_NAME = "fields.vtkhdf"
INDEX_NAME = "fields_index.json"
DEFAULT_FIELDS = ("potential", "proton_density")
LOG_FIELDS = frozenset({"proton_density"})
FIELD_LABELS = {
    "potential": "potential [V]",
    "proton_density": "proton density [m$^{-3}$]",
    "field_magnitude": "|E| [V/m]",
}
_PV_LABELS = {
    "potential": "potential [V]",
    "proton_density": "log10 c_H [m^-3]",
    "field_magnitude": "|E| [V/m]",
}


def _fields_file(results_dir: Path) -> Path:
    results_dir = Path(results_dir)
    if not results_dir.is_dir():
        raise FileNotFoundError(f"results directory {str(results_dir)!r} does not exist")
    path = results_dir / VTKHDF_NAME
    if not path.is_file():
        present = sorted(p.name for p in results_dir.iterdir())[:20]
        raise FileNotFoundError(
            f"no field output in {str(results_dir)!r}: missing {VTKHDF_NAME!r} "
            f"(written by the solver's FieldWriter); directory holds {present}"
        )
    return path


def _pyvista():
    os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")
    import pyvista as pv

    pv.OFF_SCREEN = True
    return pv


def load_fields(results_dir: str | os.PathLike, time_index: int = -1):
    """Read one time step of ``fields.vtkhdf``: ``(grid, time, step, nsteps, index)``.

    ``grid`` is a pyvista UnstructuredGrid in metres with the fields as point/cell data; ``index``
    is the parsed ``fields_index.json`` (empty dict if absent). Negative indices count from the end.
    """
    results_dir = Path(results_dir)
    path = _fields_file(results_dir)
    index = {}
    if (results_dir / INDEX_NAME).is_file():
        index = json.loads((results_dir / INDEX_NAME).read_text())
    pv = _pyvista()
    reader = pv.get_reader(str(path))
    vtk_reader = reader.reader
    vtk_reader.UpdateInformation()
    nsteps = int(vtk_reader.GetNumberOfSteps())
    if nsteps == 0:
        raise ValueError(f"{path} holds no time step yet")
    step = time_index + nsteps if time_index < 0 else time_index
    if not 0 <= step < nsteps:
        raise IndexError(f"time_index {time_index} out of range for {nsteps} steps in {path}")
    vtk_reader.SetStep(step)
    vtk_reader.Modified()
    grid = reader.read()
    times = index.get("times") or []
    time = float(times[step]) if step < len(times) else float("nan")
    return grid, time, step, nsteps, index


def _is_1d(grid, index) -> bool:
    if "tdim" in index:
        return int(index["tdim"]) == 1
    b = np.asarray(grid.bounds)
    return bool(b[3] - b[2] == 0 and b[5] - b[4] == 0)


def _field(grid, name):
    if name in grid.point_data:
        return np.asarray(grid.point_data[name]), "point"
    if name in grid.cell_data:
        return np.asarray(grid.cell_data[name]), "cell"
    return None, None


def _safe_log10(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v, dtype=float)
    pos = v[v > 0]
    floor = pos.min() if pos.size else 1.0
    return np.log10(np.maximum(v, floor))


def _title(name: str, time: float, step: int) -> str:
    t = f"t = {time:.4g} s" if np.isfinite(time) else f"step {step}"
    return f"{name.replace('_', ' ')}, {t}"


def _render_1d(grid, name, values, kind, path, time, step):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    z = np.asarray(grid.points)[:, 0] * 1e9
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    if kind == "point":
        order = np.argsort(z)
        zz, vv = z[order], values[order]
        ax.plot(zz, vv, "-", lw=1.4)
    else:  # piecewise constant: one step per cell
        cells = grid.cells_dict
        conn = next(iter(cells.values()))
        lo, hi = z[conn].min(axis=1), z[conn].max(axis=1)
        order = np.argsort(lo)
        zz = np.column_stack([lo[order], hi[order]]).ravel()
        vv = np.repeat(values[order], 2)
        ax.plot(zz, vv, "-", lw=1.4)
    if name in LOG_FIELDS:
        if np.any(vv > 0):
            ax.set_yscale("log")
    ax.set_xlabel("z [nm]")
    ax.set_ylabel(FIELD_LABELS.get(name, name))
    ax.set_title(_title(name, time, step))
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _render_nd(pv, grid, name, values, kind, path, time, step, tdim):
    g = grid.copy()
    g.points = np.asarray(g.points) * 1e9  # nm
    label = _PV_LABELS.get(name, name)
    scalars = _safe_log10(values) if name in LOG_FIELDS else values
    if kind == "point":
        g.point_data[label] = scalars
    else:
        g.cell_data[label] = scalars
    plotter = pv.Plotter(off_screen=True, window_size=(1400, 700))
    plotter.set_background("white")
    plotter.add_mesh(
        g,
        scalars=label,
        preference=kind,
        cmap="viridis",
        show_edges=False,
        scalar_bar_args={
            "title": label,
            "color": "black",
            "vertical": True,
            "position_x": 0.86,
            "position_y": 0.15,
            "width": 0.05,
            "height": 0.7,
            "fmt": "%.3g",
            "title_font_size": 18,
            "label_font_size": 16,
        },
    )
    plotter.add_text(_title(name, time, step), font_size=12, color="black")
    if tdim <= 2:
        plotter.view_xy()
        plotter.show_bounds(xtitle="x [nm]", ytitle="z [nm]", color="black", location="outer")
        plotter.camera.tight(padding=0.35, view="xy")
        # shift the view right so that the scalar bar does not cover the device
        shift = np.array([0.08 * (g.bounds[1] - g.bounds[0]), 0.0, 0.0])
        plotter.camera.position = tuple(np.asarray(plotter.camera.position) + shift)
        plotter.camera.focal_point = tuple(np.asarray(plotter.camera.focal_point) + shift)
    else:
        plotter.view_isometric()
        plotter.show_bounds(xtitle="x [nm]", ytitle="y [nm]", ztitle="z [nm]", color="black")
    plotter.screenshot(str(path))
    plotter.close()


def render_fields(
    results_dir: str | os.PathLike,
    out_dir: str | os.PathLike | None = None,
    time_index: int = -1,
    *,
    fields: Sequence[str] = DEFAULT_FIELDS,
) -> list[Path]:
    """Render ``fields`` (default: potential and proton density) of one time step to PNG.

    Reads ``results_dir/fields.vtkhdf``; writes ``<field>_<step>.png`` to ``out_dir`` (default
    ``results_dir/plots``) and returns the paths. Raises FileNotFoundError naming the directory
    and the missing file when there are no results, KeyError if none of ``fields`` is present.
    """
    results_dir = Path(results_dir)
    grid, time, step, _nsteps, index = load_fields(results_dir, time_index)
    out = Path(out_dir) if out_dir is not None else results_dir / "plots"
    out.mkdir(parents=True, exist_ok=True)
    one_d = _is_1d(grid, index)
    tdim = int(index.get("tdim", 1 if one_d else (3 if grid.bounds[5] > grid.bounds[4] else 2)))
    pv = None if one_d else _pyvista()
    written: list[Path] = []
    missing = []
    for name in fields:
        values, kind = _field(grid, name)
        if values is None:
            missing.append(name)
            continue
        if values.ndim > 1:  # vector: render the magnitude
            values = np.linalg.norm(values, axis=1)
        path = out / f"{name}_{step:04d}.png"
        if one_d:
            _render_1d(grid, name, values, kind, path, time, step)
        else:
            _render_nd(pv, grid, name, values, kind, path, time, step, tdim)
        written.append(path)
    if not written:
        available = sorted(set(grid.point_data.keys()) | set(grid.cell_data.keys()))
        raise KeyError(f"none of {list(fields)} in {results_dir / VTKHDF_NAME}; it holds {available}")
    return written
