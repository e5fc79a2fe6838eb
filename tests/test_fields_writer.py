"""FieldWriter (solver/fields_writer.py): XDMF + VTKHDF output, read back with h5py."""
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

dolfinx_solver = pytest.importorskip("dolfinx_solver")  # before dolfinx / petsc4py
import dolfinx  # noqa: E402
import h5py  # noqa: E402
from mpi4py import MPI  # noqa: E402

from protonfem.solver.fields_writer import FieldWriter  # noqa: E402

TIMES = [0.0, 0.5, 2.0]


def potential(x, t):
    return x[0] + 2.0 * x[1] + t


def density(x, t):
    return 10.0 ** (20.0 + 3.0 * x[0] + x[1] + t)


def magnitude(x, t):
    return 1.0 + x[0] * (1.0 + x[1]) + t


@pytest.fixture
def outdir(tmp_path):
    return Path(MPI.COMM_WORLD.bcast(str(tmp_path), root=0)) / "results"


def _mesh(dim):
    comm = MPI.COMM_WORLD
    if dim == 1:
        return dolfinx.mesh.create_interval(comm, 12, [0.0, 1.0])
    return dolfinx.mesh.create_unit_square(comm, 6, 5, dolfinx.mesh.CellType.quadrilateral)


def _write(mesh, outdir, magnitude_space):
    V = dolfinx.fem.functionspace(mesh, ("Lagrange", 1))
    M = dolfinx.fem.functionspace(mesh, magnitude_space)
    phi, c, e = dolfinx.fem.Function(V), dolfinx.fem.Function(V), dolfinx.fem.Function(M)
    phi.name = "caller_name"
    funcs = {"potential": phi, "proton_density": c, "field_magnitude": e}
    with FieldWriter(mesh, funcs, outdir, mesh.comm) as writer:
        for t in TIMES:
            phi.interpolate(lambda x: potential(x, t))
            c.interpolate(lambda x: density(x, t))
            e.interpolate(lambda x: magnitude(x, t))
            writer.write(t)
    assert phi.name == "caller_name"  # the caller's functions are untouched
    return funcs


def _pad(x):
    return np.column_stack([x[:, 0], x[:, 1] if x.shape[1] > 1 else np.zeros(len(x))])


def _check_vtkhdf(path, cell_data_field):
    with h5py.File(path, "r") as h:
        g = h["VTKHDF"]
        assert g.attrs["Type"] == b"UnstructuredGrid"
        s = g["Steps"]
        assert int(s.attrs["NSteps"]) == len(TIMES)
        np.testing.assert_array_equal(s["Values"][:], TIMES)
        pts = g["Points"][:]
        n = int(g["NumberOfPoints"][0])
        nc = int(g["NumberOfCells"][0])
        conn = g["Connectivity"][:].reshape(nc, -1)
        centroids = pts[conn].mean(axis=1)
        x = _pad(pts).T
        xc = _pad(centroids).T
        for k, t in enumerate(TIMES):
            o = int(s["PointDataOffsets/potential"][k])
            np.testing.assert_allclose(g["PointData/potential"][o : o + n], potential(x, t), atol=1e-12)
            o = int(s["PointDataOffsets/proton_density"][k])
            np.testing.assert_allclose(g["PointData/proton_density"][o : o + n], density(x, t), rtol=1e-12)
            if cell_data_field:
                o = int(s["CellDataOffsets/field_magnitude"][k])
                vals = g["CellData/field_magnitude"][o : o + nc]
                # DG0 interpolation evaluates at the cell midpoint (= centroid for these cells)
                np.testing.assert_allclose(vals, magnitude(xc, t), rtol=1e-12)
            else:
                o = int(s["PointDataOffsets/field_magnitude"][k])
                np.testing.assert_allclose(g["PointData/field_magnitude"][o : o + n], magnitude(x, t), rtol=1e-12)
        return n, nc


def _check_xdmf(outdir, cell_data_field):
    xml = (outdir / "fields.xdmf").read_text()
    for name in ("potential", "proton_density", "field_magnitude"):
        assert f'Attribute Name="{name}"' in xml
    assert ('Center="Cell"' in xml) == cell_data_field
    with h5py.File(outdir / "fields.h5", "r") as h:
        geo = h["Mesh/mesh/geometry"][:]
        top = h["Mesh/mesh/topology"][:]
        x = _pad(geo).T
        xc = _pad(geo[top].mean(axis=1)).T
        fn = h["Function"]
        for name, f, at in (("potential", potential, x), ("proton_density", density, x),
                            ("field_magnitude", magnitude, xc if cell_data_field else x)):
            steps = sorted(fn[name].keys(), key=lambda k: float(k.replace("_", ".")))
            assert len(steps) == len(TIMES)
            for key, t in zip(steps, TIMES):
                np.testing.assert_allclose(fn[name][key][:, 0], f(at, t), rtol=1e-12, atol=1e-12)
        return len(geo), len(top)


@pytest.mark.parametrize("dim", [1, 2])
@pytest.mark.parametrize("magnitude_space", [("DG", 0), ("Lagrange", 1)], ids=["DG0", "P1"])
def test_field_writer(dim, magnitude_space, outdir):
    mesh = _mesh(dim)
    _write(mesh, outdir, magnitude_space)
    comm = mesh.comm
    comm.barrier()
    cell_data = magnitude_space[1] == 0
    for f in ("fields.xdmf", "fields.h5", "fields.vtkhdf", "fields_index.json"):
        assert (outdir / f).is_file(), f
    n, nc = _check_vtkhdf(outdir / "fields.vtkhdf", cell_data)
    assert n == mesh.geometry.index_map().size_global
    assert nc == mesh.topology.index_map(dim).size_global
    nx, ncx = _check_xdmf(outdir, cell_data)
    assert (nx, ncx) == (n, nc)
    index = json.loads((outdir / "fields_index.json").read_text())
    assert index["times"] == TIMES and index["tdim"] == dim
    assert index["fields"]["field_magnitude"]["kind"] == ("cell" if cell_data else "point")
    comm.barrier()


@pytest.mark.serial
def test_pyvista_reads_all_steps(outdir):
    pv = pytest.importorskip("pyvista")
    _write(_mesh(2), outdir, ("DG", 0))
    reader = pv.get_reader(str(outdir / "fields.vtkhdf"))
    for k, t in enumerate(TIMES):
        reader.reader.SetStep(k)
        reader.reader.Modified()
        grid = reader.read()
        np.testing.assert_allclose(grid.point_data["potential"], potential(_pad(grid.points).T, t), atol=1e-12)
        assert "field_magnitude" in grid.cell_data


@pytest.mark.serial
def test_killed_run_leaves_readable_files(tmp_path):
    """A run killed (SIGKILL) after two writes, without close(), leaves both files readable."""
    script = textwrap.dedent(
        f"""
        import os, signal
        import dolfinx_solver
        import dolfinx
        from mpi4py import MPI
        from protonfem.solver.fields_writer import FieldWriter
        mesh = dolfinx.mesh.create_unit_square(MPI.COMM_WORLD, 4, 4)
        u = dolfinx.fem.Function(dolfinx.fem.functionspace(mesh, ("Lagrange", 1)))
        w = FieldWriter(mesh, {{"potential": u}}, {str(tmp_path)!r}, MPI.COMM_WORLD)
        for t in (0.0, 1.0):
            u.x.array[:] = t
            w.write(t)
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert proc.returncode == -9, proc.stderr
    with h5py.File(tmp_path / "fields.h5", "r") as h:
        assert sorted(h["Function/potential"].keys()) == ["0", "1"]
        assert np.all(h["Function/potential/1"][:] == 1.0)
    assert (tmp_path / "fields.xdmf").read_text().count("<Time Value") == 2
    with h5py.File(tmp_path / "fields.vtkhdf", "r") as h:
        assert int(h["VTKHDF/Steps"].attrs["NSteps"]) == 2


def test_write_after_close_raises(outdir):
    mesh = _mesh(1)
    u = dolfinx.fem.Function(dolfinx.fem.functionspace(mesh, ("Lagrange", 1)))
    w = FieldWriter(mesh, {"potential": u}, outdir, mesh.comm)
    w.close()
    w.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        w.write(0.0)
