"""Tests of the gmsh device meshes (meshes/): grading, tags, measures, DOLFINx conversion."""
import numpy as np
import pytest

from protonfem.meshes import graded_points, graded_sizes, stack_points, tags

NM = 1e-9
REF_LAYERS = [("channel", 20 * NM), ("electrolyte", 10 * NM), ("reservoir", 20 * NM)]
REF = dict(h_min=0.02 * NM, h_max=1.0 * NM, growth=1.25)
REF_2D = dict(REF, h_lateral_min=1.0 * NM, h_lateral_max=5.0 * NM)
L_2D = 150 * NM


def _check_grading(z, h_min, h_max, growth, rtol=0.05):
    h = np.diff(z)
    assert np.all(h > 0)
    assert h[0] == pytest.approx(h_min, rel=rtol)
    assert h[-1] == pytest.approx(h_min, rel=rtol)
    assert h.max() <= h_max * (1 + 1e-9)
    ratio = np.maximum(h[1:] / h[:-1], h[:-1] / h[1:])
    assert ratio.max() <= growth * (1 + 1e-9)


@pytest.mark.parametrize(
    "z0,z1,h_min,h_max,growth",
    [
        (0.0, 20 * NM, 0.02 * NM, 1 * NM, 1.25),
        (20 * NM, 30 * NM, 0.02 * NM, 1 * NM, 1.25),
        (0.0, 10 * NM, 0.02 * NM, 0.2 * NM, 1.1),
        (0.0, 150 * NM, 1 * NM, 5 * NM, 1.25),
        (0.0, 1.0, 1e-6, 0.1, 1.05),
        (0.0, 1 * NM, 0.02 * NM, 1 * NM, 1.25),  # never reaches h_max
        (0.0, 10 * NM, 0.5 * NM, 0.5 * NM, 1.25),  # uniform
    ],
)
def test_graded_points(z0, z1, h_min, h_max, growth):
    z = graded_points(z0, z1, h_min, h_max, growth)
    assert z[0] == z0 and z[-1] == z1
    _check_grading(z, h_min, h_max, growth)
    h = np.diff(z)
    # the first elements grow geometrically: symmetric about the centre
    np.testing.assert_allclose(h, h[::-1], rtol=1e-9)


def test_graded_points_fewest_elements():
    # with the full growth ratio one element fewer would not reach the length
    z = graded_points(0.0, 20 * NM, 0.02 * NM, 1 * NM, 1.25)
    h = np.diff(z)
    ratio = h[1] / h[0]
    assert 1.0 < ratio <= 1.25
    assert len(h) < 60


def test_graded_points_degenerate():
    assert len(graded_points(0.0, 0.01 * NM, 0.02 * NM, 1 * NM, 1.25)) == 2
    with pytest.raises(ValueError):
        graded_points(1.0, 0.0, 0.1, 1.0, 1.2)
    with pytest.raises(ValueError):
        graded_sizes(1.0, 0.1, 0.01, 1.2)


def test_stack_points():
    z, bidx = stack_points(REF_LAYERS, **REF)
    np.testing.assert_allclose(z[bidx], [0, 20 * NM, 30 * NM, 50 * NM], rtol=0, atol=1e-25)
    for b in range(len(bidx) - 1):
        _check_grading(z[bidx[b] : bidx[b + 1] + 1], **REF)


# ------------------------------------------------------------------------------- gmsh models
gmsh = pytest.importorskip("gmsh")


@pytest.fixture
def gmsh_session():
    gmsh.initialize()
    gmsh.option.setNumber("General.Terminal", 0)
    gmsh.model.add("test")
    yield gmsh
    gmsh.finalize()


def _groups(dim):
    return {tag: gmsh.model.getPhysicalName(d, tag) for d, tag in gmsh.model.getPhysicalGroups(dim)}


def _group_nodes(dim, tag):
    nodes, coords = gmsh.model.mesh.getNodesForPhysicalGroup(dim, tag)
    return coords.reshape(-1, 3)


@pytest.mark.serial
@pytest.mark.parametrize(
    "layers,expected_facets",
    [
        (REF_LAYERS, {11, 12, 21, 22}),
        ([("electrolyte", 10 * NM)], {11, 12}),
        ([("channel", 20 * NM), ("electrolyte", 10 * NM)], {11, 12, 22}),
        ([("electrolyte", 10 * NM), ("reservoir", 20 * NM)], {11, 12, 21}),
    ],
)
def test_stack_1d(gmsh_session, layers, expected_facets):
    from protonfem.meshes import build_stack_1d

    info = build_stack_1d(layers, **REF)
    cells = _groups(1)
    assert cells == {tags.CELL_TAGS[n]: n for n, _ in layers}
    facets = _groups(0)
    assert set(facets) == expected_facets
    assert all(tags.FACET_TAGS[name] == t for t, name in facets.items())
    total = sum(t for _, t in layers)
    assert _group_nodes(0, tags.BOTTOM)[:, 0] == pytest.approx([0.0], abs=1e-30)
    assert _group_nodes(0, tags.GATE)[:, 0] == pytest.approx([total], rel=1e-14)
    # region lengths exact, grading per region
    z0 = 0.0
    for name, t in layers:
        x = np.sort(_group_nodes(1, tags.CELL_TAGS[name])[:, 0])
        assert x[0] == pytest.approx(z0, abs=1e-24)
        assert x[-1] - x[0] == pytest.approx(t, rel=1e-13)
        _check_grading(x, **REF)
        z0 += t
    _, etags, _ = gmsh.model.mesh.getElements(1)
    assert sum(len(e) for e in etags) == info.num_cells == info.num_nodes - 1
    assert len(gmsh.model.mesh.getNodes()[0]) == info.num_nodes


@pytest.mark.serial
def test_cross_section_2d(gmsh_session):
    from protonfem.meshes import build_cross_section_2d

    info = build_cross_section_2d(REF_LAYERS, L_2D, **REF_2D)
    assert set(_groups(2)) == {1, 2, 3}
    assert set(_groups(1)) == {11, 12, 13, 14, 15, 21, 22}
    nx, ny = len(info.x) - 1, len(info.z) - 1
    assert info.num_nodes == (nx + 1) * (ny + 1) == len(gmsh.model.mesh.getNodes()[0])
    types, etags, _ = gmsh.model.mesh.getElements(2)
    assert list(types) == [3] and len(etags[0]) == info.num_cells == nx * ny
    # same vertical distribution as the 1-D stack, lateral grading toward source and drain
    z1d, _ = stack_points(REF_LAYERS, **REF)
    np.testing.assert_array_equal(info.z, z1d)
    _check_grading(info.x, REF_2D["h_lateral_min"], REF_2D["h_lateral_max"], REF["growth"])
    # boundary curves lie where they should
    top = 50 * NM
    assert np.allclose(_group_nodes(1, tags.BOTTOM)[:, 1], 0.0)
    assert np.allclose(_group_nodes(1, tags.GATE)[:, 1], top, rtol=1e-14)
    assert np.allclose(_group_nodes(1, tags.ELECTROLYTE_CHANNEL)[:, 1], 20 * NM, rtol=1e-14)
    assert np.allclose(_group_nodes(1, tags.RESERVOIR_ELECTROLYTE)[:, 1], 30 * NM, rtol=1e-14)
    src = _group_nodes(1, tags.SOURCE)
    assert np.allclose(src[:, 0], 0.0) and src[:, 1].min() == 0.0
    assert src[:, 1].max() == pytest.approx(20 * NM, rel=1e-14)
    drn = _group_nodes(1, tags.DRAIN)
    assert np.allclose(drn[:, 0], L_2D, rtol=1e-14) and drn[:, 1].max() == pytest.approx(20 * NM)
    sides = _group_nodes(1, tags.SIDES)
    assert sides[:, 1].min() == pytest.approx(20 * NM) and sides[:, 1].max() == pytest.approx(top)
    # cell areas: quads are axis-aligned rectangles; total area per region exact
    for name, t in REF_LAYERS:
        xy = _group_nodes(2, tags.CELL_TAGS[name])
        assert xy[:, 1].max() - xy[:, 1].min() == pytest.approx(t, rel=1e-13)
        assert xy[:, 0].max() - xy[:, 0].min() == pytest.approx(L_2D, rel=1e-14)


REF_3D = dict(REF, h_lateral_min=5.0 * NM, h_lateral_max=25.0 * NM, h_width=12.5 * NM)
W_3D = 50 * NM


@pytest.mark.serial
def test_device_3d(gmsh_session):
    """The 3-D device is the 2-D cross-section (same nodes) repeated across the width."""
    from protonfem.meshes import build_cross_section_2d, build_device_3d

    info = build_device_3d(REF_LAYERS, L_2D, W_3D, **REF_3D)
    assert set(_groups(3)) == {1, 2, 3}
    assert set(_groups(2)) == {11, 12, 13, 14, 15, 16, 21, 22}
    nx, ny, nz = len(info.x) - 1, len(info.y) - 1, len(info.z) - 1
    assert ny == 4 and np.allclose(np.diff(info.y), 12.5 * NM)
    assert info.num_nodes == (nx + 1) * (ny + 1) * (nz + 1) == len(gmsh.model.mesh.getNodes()[0])
    types, etags, _ = gmsh.model.mesh.getElements(3)
    assert list(types) == [5] and len(etags[0]) == info.num_cells == nx * ny * nz
    gmsh.model.add("two")
    info2 = build_cross_section_2d(REF_LAYERS, L_2D, **{k: v for k, v in REF_3D.items() if k != "h_width"})
    np.testing.assert_array_equal(info.z, info2.z)
    np.testing.assert_array_equal(info.x, info2.x)
    gmsh.model.setCurrent("test")
    top = 50 * NM
    assert np.allclose(_group_nodes(2, tags.GATE)[:, 2], top, rtol=1e-14)
    assert np.allclose(_group_nodes(2, tags.BOTTOM)[:, 2], 0.0)
    assert np.allclose(_group_nodes(2, tags.ELECTROLYTE_CHANNEL)[:, 2], 20 * NM, rtol=1e-14)
    src, drn = _group_nodes(2, tags.SOURCE), _group_nodes(2, tags.DRAIN)
    assert np.allclose(src[:, 0], 0.0) and np.allclose(drn[:, 0], L_2D, rtol=1e-14)
    assert src[:, 2].max() == pytest.approx(20 * NM, rel=1e-14) and src[:, 1].max() == pytest.approx(W_3D)
    flanks = _group_nodes(2, tags.FLANKS)
    assert set(np.round(flanks[:, 1] / NM, 9)) == {0.0, 50.0}
    assert flanks[:, 2].max() == pytest.approx(top)


@pytest.mark.serial
def test_reference_counts(gmsh_session, capsys):
    """Node/cell counts of the reference meshes (reported; bounds keep them reasonable)."""
    from protonfem.meshes import build_cross_section_2d, build_device_3d, build_stack_1d

    info1 = build_stack_1d(REF_LAYERS, **REF)
    gmsh.model.add("two")
    info2 = build_cross_section_2d(REF_LAYERS, L_2D, **REF_2D)
    with capsys.disabled():
        print(
            f"\n1-D 20/10/20 nm, h_min 0.02 nm, growth 1.25, h_max 1 nm: "
            f"{info1.num_nodes} nodes, {info1.num_cells} cells"
            f"\n2-D L=150 nm, lateral 1..5 nm: {len(info2.x)} x {len(info2.z)} = "
            f"{info2.num_nodes} nodes, {info2.num_cells} quads"
        )
    assert 100 < info1.num_nodes < 200
    assert info2.num_nodes == len(info2.x) * info1.num_nodes
    assert 3_000 < info2.num_nodes < 10_000


@pytest.mark.serial
def test_write_mesh(gmsh_session, tmp_path):
    meshio = pytest.importorskip("meshio")
    from protonfem.meshes import build_cross_section_2d, write_mesh

    info = build_cross_section_2d(REF_LAYERS, L_2D, **REF_2D)
    files = write_mesh(tmp_path / "device")
    assert [f.name for f in files] == ["device.msh", "device.vtu"]
    m = meshio.read(files[1])
    assert len(m.points) == info.num_nodes
    assert sum(len(c.data) for c in m.cells) == info.num_cells
    assert set(np.unique(np.concatenate(m.cell_data["region"]))) == {1, 2, 3}


def test_builders_refuse_nonempty_model(gmsh_session):
    from protonfem.meshes import build_stack_1d

    build_stack_1d([("electrolyte", 10 * NM)], **REF)
    with pytest.raises(RuntimeError, match="not empty"):
        build_stack_1d([("electrolyte", 10 * NM)], **REF)
    with pytest.raises(ValueError, match="unknown layer"):
        gmsh.model.add("other")
        build_stack_1d([("substrate", 10 * NM)], **REF)


# ----------------------------------------------------------------------------- DOLFINx conversion
@pytest.mark.parametrize("dim", [1, 2, 3])
def test_model_to_mesh(dim):
    """Build on rank 0, distribute with model_to_mesh, check global counts and tagged measures."""
    dolfinx_solver = pytest.importorskip("dolfinx_solver")  # noqa: F841  (before dolfinx)
    import dolfinx
    import dolfinx.io.gmsh
    import ufl
    from mpi4py import MPI

    from protonfem.meshes import build_cross_section_2d, build_device_3d, build_stack_1d

    comm = MPI.COMM_WORLD
    gmsh.initialize()
    try:
        gmsh.option.setNumber("General.Terminal", 0)
        info = None
        if comm.rank == 0:
            gmsh.model.add("dev")
            if dim == 1:
                info = build_stack_1d(REF_LAYERS, **REF)
            elif dim == 2:
                info = build_cross_section_2d(REF_LAYERS, L_2D, **REF_2D)
            else:
                info = build_device_3d(REF_LAYERS, L_2D, W_3D, **REF_3D)
        info = comm.bcast(info, root=0)
        md = dolfinx.io.gmsh.model_to_mesh(gmsh.model, comm, 0, gdim=dim)
    finally:
        gmsh.finalize()
    msh, ct, ft = md.mesh, md.cell_tags, md.facet_tags
    tdim = msh.topology.dim
    assert tdim == dim
    imap = msh.topology.index_map(tdim)
    assert imap.size_global == info.num_cells
    assert msh.geometry.index_map().size_global == info.num_nodes

    def total(form):
        return comm.allreduce(dolfinx.fem.assemble_scalar(dolfinx.fem.form(form)), op=MPI.SUM)

    one = dolfinx.fem.Constant(msh, 1.0)
    dx = ufl.Measure("dx", msh, subdomain_data=ct)
    ds = ufl.Measure("ds", msh, subdomain_data=ft)
    dS = ufl.Measure("dS", msh, subdomain_data=ft)
    width = {1: 1.0, 2: L_2D, 3: L_2D * W_3D}[dim]  # the footprint: length in 2-D, area in 3-D
    depth = 1.0 if dim < 3 else W_3D
    for name, t in REF_LAYERS:
        assert total(one * dx(tags.CELL_TAGS[name])) == pytest.approx(t * width, rel=1e-12)
    assert total(one * dx) == pytest.approx(50 * NM * width, rel=1e-12)
    assert total(one * ds(tags.GATE)) == pytest.approx(width, rel=1e-12)
    assert total(one * ds(tags.BOTTOM)) == pytest.approx(width, rel=1e-12)
    for t in (tags.RESERVOIR_ELECTROLYTE, tags.ELECTROLYTE_CHANNEL):
        assert total(one("+") * dS(t)) == pytest.approx(width, rel=1e-12)
    if dim >= 2:
        assert total(one * ds(tags.SOURCE)) == pytest.approx(20 * NM * depth, rel=1e-12)
        assert total(one * ds(tags.DRAIN)) == pytest.approx(20 * NM * depth, rel=1e-12)
        assert total(one * ds(tags.SIDES)) == pytest.approx(2 * 30 * NM * depth, rel=1e-12)
    if dim == 3:
        assert total(one * ds(tags.FLANKS)) == pytest.approx(2 * 50 * NM * L_2D, rel=1e-12)
    # every tagged facet value is a known tag; the physical-group table is on every rank
    local = set(np.unique(ft.values).tolist())
    all_tags = set().union(*comm.allgather(local))
    expected = {11, 12, 21, 22} | ({13, 14, 15} if dim >= 2 else set()) | ({16} if dim == 3 else set())
    assert all_tags == expected
    assert md.physical_groups["electrolyte"].tag == tags.ELECTROLYTE
