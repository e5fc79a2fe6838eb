"""Rendering (postprocess/render.py, paraview_render.py, cli_view.py) from FieldWriter output."""
import argparse
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.serial

NM = 1e-9


def _png_ok(path: Path):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", path
    assert len(data) > 5_000, path  # more than an empty canvas


@pytest.fixture(scope="module", params=[1, 2], ids=["1d", "2d"])
def results(request, tmp_path_factory):
    """A small device mesh (meshes/) with fields written by FieldWriter at two times."""
    pytest.importorskip("dolfinx_solver")
    import dolfinx
    import dolfinx.io.gmsh
    import gmsh
    from mpi4py import MPI

    from protonfem.meshes import build_cross_section_2d, build_stack_1d
    from protonfem.solver.fields_writer import FieldWriter

    dim = request.param
    layers = [("channel", 20 * NM), ("electrolyte", 10 * NM), ("reservoir", 20 * NM)]
    kw = dict(h_min=0.05 * NM, h_max=2 * NM, growth=1.3)
    gmsh.initialize()
    try:
        gmsh.option.setNumber("General.Terminal", 0)
        if dim == 1:
            build_stack_1d(layers, **kw)
        else:
            build_cross_section_2d(layers, 150 * NM, h_lateral_min=2 * NM, h_lateral_max=10 * NM, **kw)
        mesh = dolfinx.io.gmsh.model_to_mesh(gmsh.model, MPI.COMM_SELF, 0, gdim=dim).mesh
    finally:
        gmsh.finalize()
    V = dolfinx.fem.functionspace(mesh, ("Lagrange", 1))
    W = dolfinx.fem.functionspace(mesh, ("DG", 0))
    phi, c, e = dolfinx.fem.Function(V), dolfinx.fem.Function(V), dolfinx.fem.Function(W)
    z = dim - 1
    out = tmp_path_factory.mktemp(f"results{dim}")
    with FieldWriter(mesh, {"potential": phi, "proton_density": c, "field_magnitude": e}, out,
                     MPI.COMM_SELF) as w:
        for t in (0.0, 1e-8):
            phi.interpolate(lambda x: 5.0 * x[z] / (50 * NM) + t * 1e7 * x[0] / (150 * NM))
            c.interpolate(lambda x: 1e20 + 1e26 * np.exp(-(((x[z] - 25 * NM) / (3 * NM)) ** 2)))
            e.interpolate(lambda x: 1e8 + 0.0 * x[0])
            w.write(t)
    return dim, out


def test_render_fields(results, tmp_path):
    from protonfem.postprocess.render import render_fields

    dim, res = results
    paths = render_fields(res, tmp_path / "png")
    assert [p.name for p in paths] == ["potential_0001.png", "proton_density_0001.png"]
    for p in paths:
        _png_ok(p)
    paths = render_fields(res, tmp_path / "png", time_index=0, fields=["field_magnitude"])
    assert [p.name for p in paths] == ["field_magnitude_0000.png"]
    _png_ok(paths[0])


def test_render_default_outdir(results):
    from protonfem.postprocess.render import render_fields

    _, res = results
    paths = render_fields(res)
    assert all(p.parent == res / "plots" for p in paths)


def test_missing_results_error(tmp_path):
    from protonfem.postprocess.render import render_fields

    with pytest.raises(FileNotFoundError, match="fields.vtkhdf") as exc:
        render_fields(tmp_path)
    assert str(tmp_path) in str(exc.value)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        render_fields(tmp_path / "nope")


def test_render_bad_index_and_fields(results, tmp_path):
    from protonfem.postprocess.render import render_fields

    _, res = results
    with pytest.raises(IndexError):
        render_fields(res, tmp_path, time_index=5)
    with pytest.raises(KeyError, match="holds"):
        render_fields(res, tmp_path, fields=["temperature"])


def test_cli_view(results, tmp_path, capsys):
    from protonfem.postprocess.cli_view import add_view_parser, run_view

    parser = argparse.ArgumentParser(prog="protonfem")
    add_view_parser(parser.add_subparsers(dest="command"))
    _, res = results
    args = parser.parse_args(["view", str(res), "-o", str(tmp_path / "v")])
    assert args.func is run_view
    assert run_view(args) == 0
    assert len(list((tmp_path / "v").glob("*.png"))) == 2
    args = parser.parse_args(["view", str(tmp_path / "empty")])
    assert run_view(args) == 2
    assert "does not exist" in capsys.readouterr().err


def test_postprocess_imports_without_dolfinx(tmp_path):
    code = (
        "import sys\n"
        "import protonfem.postprocess.render, protonfem.postprocess.cli_view\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('dolfinx', 'petsc4py', 'ufl')]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.skipif(
    shutil.which("pvbatch") is None or shutil.which("xvfb-run") is None,
    reason="ParaView route needs pvbatch and xvfb-run on PATH (apt-get install paraview xvfb)",
)
def test_paraview_render(results, tmp_path):
    from protonfem.postprocess.cli_view import run_paraview

    _, res = results
    out = tmp_path / "pv"
    proc = run_paraview(res, out)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    names = sorted(p.name for p in out.glob("*.png"))
    assert names == ["potential_0001.png", "proton_density_0001.png"]
    for p in out.glob("*.png"):
        _png_ok(p)
    # missing results: clean error, exit status 2
    proc = run_paraview(tmp_path / "none", out)
    assert proc.returncode == 2 and "fields.xdmf" in proc.stderr
