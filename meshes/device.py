"""gmsh builders of the device meshes: a 1-D vertical stack, a 2-D structured cross-section and a
3-D structured device (the cross-section extruded across the channel width).

Both builders fill the *current* gmsh model (the caller owns ``gmsh.initialize()`` /
``gmsh.finalize()``; in parallel only the model rank builds, then
``dolfinx.io.gmsh.model_to_mesh(gmsh.model, comm, 0, gdim=...)`` distributes it).

The meshes are written directly as gmsh *discrete* entities (points, curves, surfaces with their
boundaries) holding nodes at computed coordinates and structured elements, instead of asking the
gmsh mesher to reproduce them through transfinite ``Progression``/``Bump`` laws. This gives exact
control of the grading (first element h_min at every interface and electrode, geometric growth,
cap), exactly conforming layers, and the same node distribution in 1-D and 2-D. The model is
already meshed on return: do **not** call ``gmsh.model.mesh.generate`` on it.

Coordinates are in metres. The vertical coordinate (``x`` of a 1-D mesh, ``y`` of a 2-D mesh, ``z``
of a 3-D mesh) runs from 0 at the bottom of the stack upward; in 2-D and 3-D the lateral coordinate
``x`` runs over ``[0, length]`` (source at x = 0, drain at x = length), and in 3-D ``y`` runs over
the channel width ``[0, width]``.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import gmsh
import numpy as np

from . import tags
from .grading import _check_layers, graded_points, stack_breaks, stack_points

__all__ = ["MeshInfo", "build_stack_1d", "build_cross_section_2d", "build_device_3d", "write_mesh"]

_POINT, _LINE, _QUAD, _HEX = 15, 1, 3, 5  # gmsh element types


@dataclass
class MeshInfo:
    """What a builder put in the gmsh model (all on the building rank)."""

    dim: int
    layers: list[tuple[str, float]]
    breaks: np.ndarray  # layer boundaries along the vertical coordinate [m]
    z: np.ndarray  # vertical node coordinates [m]
    x: np.ndarray | None = None  # lateral node coordinates [m] (2-D and 3-D)
    y: np.ndarray | None = None  # node coordinates across the width [m] (3-D only)
    num_nodes: int = 0
    num_cells: int = 0
    cell_tags: dict[str, int] = field(default_factory=dict)  # region name -> tag present
    facet_tags: dict[str, int] = field(default_factory=dict)  # facet name -> tag present


def _require_empty_model() -> None:
    if not gmsh.isInitialized():
        raise RuntimeError("gmsh is not initialized: call gmsh.initialize() first")
    if gmsh.model.getEntities():
        raise RuntimeError(
            "the current gmsh model is not empty; call gmsh.model.add(name) or gmsh.clear() first "
            "(node tags must be 1..N for dolfinx.io.gmsh.model_to_mesh)"
        )


def _add_groups(dim: int, groups: dict[str, list[int]], table: dict[str, int]) -> dict[str, int]:
    present = {}
    for name, ents in groups.items():
        if ents:
            gmsh.model.addPhysicalGroup(dim, sorted(set(ents)), tag=table[name], name=name)
            present[name] = table[name]
    return present


def _facet_groups_for_breaks(layers: list[tuple[str, float]], break_entities: list[int]):
    """Map the horizontal boundaries of a stack (one entity per break) to facet tag names."""
    groups: dict[str, list[int]] = {name: [] for name in tags.FACET_TAGS}
    n = len(layers)
    groups["bottom"].append(break_entities[0])
    groups["gate"].append(break_entities[n])
    for b in range(1, n):
        t = tags.interface_tag(layers[b - 1][0], layers[b][0])
        if t is not None:
            groups[tags.FACET_NAMES[t]].append(break_entities[b])
    return groups


def build_stack_1d(
    layers: Sequence[tuple[str, float]], *, h_min: float, h_max: float, growth: float
) -> MeshInfo:
    """1-D stack of ``layers`` ((name, thickness [m]) bottom to top) on the line x in [0, sum t].

    Each layer is graded with :func:`graded_points` (h_min at both ends, growth toward the
    centre, capped at h_max). Cell groups: one per layer name present (tags.CELL_TAGS); point
    groups: ``bottom`` at x = 0, ``gate`` at the top, and the interface tag of each adjacent pair
    that has one (reservoir/electrolyte, electrolyte/channel). Populates the current gmsh model.
    """
    layers = _check_layers(layers)
    _require_empty_model()
    z, bidx = stack_points(layers, h_min, h_max, growth)
    breaks = z[bidx]
    n = len(layers)

    # points: entity b+1 at break b, each holding one node and one point element
    elem = 1
    for b in range(n + 1):
        gmsh.model.addDiscreteEntity(0, b + 1)
        node = int(bidx[b]) + 1
        gmsh.model.mesh.addNodes(0, b + 1, [node], [breaks[b], 0.0, 0.0])
        gmsh.model.mesh.addElementsByType(b + 1, _POINT, [elem], [node])
        elem += 1
    # curves: entity l+1 for layer l
    cell_groups: dict[str, list[int]] = {name: [] for name in tags.CELL_TAGS}
    for l, (name, _) in enumerate(layers):
        gmsh.model.addDiscreteEntity(1, l + 1, [l + 1, l + 2])
        i0, i1 = int(bidx[l]), int(bidx[l + 1])
        inner = np.arange(i0 + 1, i1)
        if len(inner):
            xyz = np.zeros((len(inner), 3))
            xyz[:, 0] = z[inner]
            gmsh.model.mesh.addNodes(1, l + 1, (inner + 1).tolist(), xyz.ravel().tolist())
        nodes = np.arange(i0, i1 + 1) + 1
        conn = np.column_stack([nodes[:-1], nodes[1:]]).ravel()
        ne = i1 - i0
        gmsh.model.mesh.addElementsByType(l + 1, _LINE, list(range(elem, elem + ne)), conn.tolist())
        elem += ne
        cell_groups[name].append(l + 1)

    present_cells = _add_groups(1, cell_groups, tags.CELL_TAGS)
    present_facets = _add_groups(
        0, _facet_groups_for_breaks(layers, list(range(1, n + 2))), tags.FACET_TAGS
    )
    return MeshInfo(
        dim=1,
        layers=layers,
        breaks=breaks,
        z=z,
        num_nodes=len(z),
        num_cells=len(z) - 1,
        cell_tags=present_cells,
        facet_tags=present_facets,
    )


def build_cross_section_2d(
    layers: Sequence[tuple[str, float]],
    length: float,
    *,
    h_min: float,
    h_max: float,
    growth: float,
    h_lateral_min: float,
    h_lateral_max: float,
    lateral_growth: float | None = None,
) -> MeshInfo:
    """2-D cross-section: structured quadrilaterals on [0, length] x [0, sum t].

    Vertical node distribution as in :func:`build_stack_1d` (identical nodes), lateral one graded
    toward x = 0 (source) and x = length (drain) from ``h_lateral_min`` to ``h_lateral_max`` with
    ``lateral_growth`` (default: ``growth``). All layers span the full width and share nodes
    (conforming). Surface groups per layer; curve groups: bottom (y = 0), gate (top), interfaces,
    source/drain (channel's x = 0 / x = length edges) and sides (the lateral edges of the
    electrolyte and reservoir). Populates the current gmsh model.
    """
    layers = _check_layers(layers)
    _require_empty_model()
    if not length > 0:
        raise ValueError(f"length must be positive, got {length}")
    z, bidx = stack_points(layers, h_min, h_max, growth)
    breaks = z[bidx]
    x = graded_points(
        0.0, length, h_lateral_min, h_lateral_max, growth if lateral_growth is None else lateral_growth
    )
    n = len(layers)
    nx, ny = len(x) - 1, len(z) - 1

    def nid(i, j):  # node tag of grid node (row i along y, column j along x), 1-based
        return i * (nx + 1) + j + 1

    def add_nodes(dim, tag, ii, jj):
        ii, jj = np.broadcast_arrays(np.asarray(ii), np.asarray(jj))
        ii, jj = ii.ravel(), jj.ravel()
        if len(ii) == 0:
            return
        xyz = np.column_stack([x[jj], z[ii], np.zeros(len(ii))])
        gmsh.model.mesh.addNodes(dim, tag, nid(ii, jj).tolist(), xyz.ravel().tolist())

    elem = [1]

    def add_elems(dim, tag, etype, conn):
        ne = len(conn)
        gmsh.model.mesh.addElementsByType(
            tag, etype, list(range(elem[0], elem[0] + ne)), np.asarray(conn).ravel().tolist()
        )
        elem[0] += ne

    # points: (break b, side s) -> 1 + 2b + s, s = 0 at x = 0, s = 1 at x = length
    def pt(b, s):
        return 1 + 2 * b + s

    for b in range(n + 1):
        for s, j in ((0, 0), (1, nx)):
            gmsh.model.addDiscreteEntity(0, pt(b, s))
            add_nodes(0, pt(b, s), [bidx[b]], [j])

    # horizontal curves: break b -> 1 + b, oriented in +x
    def hc(b):
        return 1 + b

    jj = np.arange(nx + 1)
    for b in range(n + 1):
        gmsh.model.addDiscreteEntity(1, hc(b), [pt(b, 0), pt(b, 1)])
        add_nodes(1, hc(b), bidx[b], jj[1:-1])
        row = nid(bidx[b], jj)
        add_elems(1, hc(b), _LINE, np.column_stack([row[:-1], row[1:]]))

    # vertical curves: layer l, side s -> n + 2 + 2l + s, oriented in +y
    def vc(l, s):
        return n + 2 + 2 * l + s

    for l in range(n):
        ii = np.arange(bidx[l], bidx[l + 1] + 1)
        for s, j in ((0, 0), (1, nx)):
            gmsh.model.addDiscreteEntity(1, vc(l, s), [pt(l, s), pt(l + 1, s)])
            add_nodes(1, vc(l, s), ii[1:-1], j)
            col = nid(ii, j)
            add_elems(1, vc(l, s), _LINE, np.column_stack([col[:-1], col[1:]]))

    # surfaces: layer l -> l + 1, boundary loop bottom, right, top (reversed), left (reversed)
    cell_groups: dict[str, list[int]] = {name: [] for name in tags.CELL_TAGS}
    facet_groups = _facet_groups_for_breaks(layers, [hc(b) for b in range(n + 1)])
    for l, (name, _) in enumerate(layers):
        gmsh.model.addDiscreteEntity(2, l + 1, [hc(l), vc(l, 1), -hc(l + 1), -vc(l, 0)])
        i0, i1 = int(bidx[l]), int(bidx[l + 1])
        I, J = np.meshgrid(np.arange(i0 + 1, i1), np.arange(1, nx), indexing="ij")
        add_nodes(2, l + 1, I, J)
        I, J = np.meshgrid(np.arange(i0, i1), np.arange(nx), indexing="ij")
        I, J = I.ravel(), J.ravel()
        quads = np.column_stack([nid(I, J), nid(I, J + 1), nid(I + 1, J + 1), nid(I + 1, J)])
        add_elems(2, l + 1, _QUAD, quads)
        cell_groups[name].append(l + 1)
        lateral = ("source", "drain") if name == "channel" else ("sides", "sides")
        facet_groups[lateral[0]].append(vc(l, 0))
        facet_groups[lateral[1]].append(vc(l, 1))

    present_cells = _add_groups(2, cell_groups, tags.CELL_TAGS)
    present_facets = _add_groups(1, facet_groups, tags.FACET_TAGS)
    return MeshInfo(
        dim=2,
        layers=layers,
        breaks=breaks,
        z=z,
        x=x,
        num_nodes=(nx + 1) * (ny + 1),
        num_cells=nx * ny,
        cell_tags=present_cells,
        facet_tags=present_facets,
    )


def build_device_3d(
    layers: Sequence[tuple[str, float]],
    length: float,
    width: float,
    *,
    h_min: float,
    h_max: float,
    growth: float,
    h_lateral_min: float,
    h_lateral_max: float,
    h_width: float,
    lateral_growth: float | None = None,
) -> MeshInfo:
    """3-D device: structured hexahedra on [0, length] x [0, width] x [0, sum t].

    The 2-D cross-section of :func:`build_cross_section_2d` (identical vertical and lateral nodes:
    graded to h_min at every interface and electrode, toward source and drain laterally) repeated
    at uniform steps of at most ``h_width`` across the width. A structured extrusion keeps the
    0.02 nm vertical grading, which an unstructured tetrahedral mesher cannot reach at a sane
    element count. All layers span the full footprint and share nodes (conforming). Volume groups
    per layer; surface groups: bottom (z = 0), gate (top), interfaces, source/drain (channel's x = 0
    / x = length faces), sides (those faces of electrolyte and reservoir) and flanks (the y = 0 and
    y = width faces of every layer). Populates the current gmsh model.

    Only volumes are gmsh entities holding nodes (each node once, in the lowest layer touching it);
    the tagged surfaces are discrete entities holding only their quadrilateral elements.
    ``dolfinx.io.gmsh.model_to_mesh`` reads nodes globally and elements per physical group, so
    nothing else is needed.
    """
    layers = _check_layers(layers)
    _require_empty_model()
    if not length > 0 or not width > 0:
        raise ValueError(f"length and width must be positive, got {length}, {width}")
    if not h_width > 0:
        raise ValueError(f"h_width must be positive, got {h_width}")
    z, bidx = stack_points(layers, h_min, h_max, growth)
    breaks = z[bidx]
    x = graded_points(
        0.0, length, h_lateral_min, h_lateral_max, growth if lateral_growth is None else lateral_growth
    )
    ny = max(1, int(np.ceil(width / h_width - 1e-9)))
    y = np.linspace(0.0, width, ny + 1)
    n = len(layers)
    nx, nz = len(x) - 1, len(z) - 1

    def nid(k, i, j):  # node tag of grid node (k along z, i along y, j along x), 1-based
        return (k * (ny + 1) + i) * (nx + 1) + j + 1

    elem = [1]

    def add_elems(tag, etype, conn):
        conn = np.asarray(conn)
        ne = len(conn)
        gmsh.model.mesh.addElementsByType(
            tag, etype, list(range(elem[0], elem[0] + ne)), conn.ravel().tolist()
        )
        elem[0] += ne

    # volumes: layer l -> l + 1, owning the node planes bidx[l] .. bidx[l+1]-1 (the top layer also
    # top plane); every node exists before any element refers to it
    for l in range(n):
        gmsh.model.addDiscreteEntity(3, l + 1)
        k_last = int(bidx[l + 1]) if l == n - 1 else int(bidx[l + 1]) - 1
        K, I, J = np.meshgrid(np.arange(int(bidx[l]), k_last + 1), np.arange(ny + 1), np.arange(nx + 1),
                              indexing="ij")
        K, I, J = K.ravel(), I.ravel(), J.ravel()
        xyz = np.column_stack([x[J], y[I], z[K]])
        gmsh.model.mesh.addNodes(3, l + 1, nid(K, I, J).tolist(), xyz.ravel().tolist())
    cell_groups: dict[str, list[int]] = {name: [] for name in tags.CELL_TAGS}
    for l, (name, _) in enumerate(layers):
        K, I, J = np.meshgrid(np.arange(int(bidx[l]), int(bidx[l + 1])), np.arange(ny), np.arange(nx),
                              indexing="ij")
        K, I, J = K.ravel(), I.ravel(), J.ravel()
        # gmsh hexahedron: bottom face counter-clockwise, then the top face above it
        hexes = np.column_stack([nid(K, I, J), nid(K, I, J + 1), nid(K, I + 1, J + 1), nid(K, I + 1, J),
                                 nid(K + 1, I, J), nid(K + 1, I, J + 1), nid(K + 1, I + 1, J + 1),
                                 nid(K + 1, I + 1, J)])
        add_elems(l + 1, _HEX, hexes)
        cell_groups[name].append(l + 1)

    surface = [0]

    def add_surface(quads) -> int:
        surface[0] += 1
        gmsh.model.addDiscreteEntity(2, surface[0])
        add_elems(surface[0], _QUAD, quads)
        return surface[0]

    # horizontal surfaces, one per break
    I, J = np.meshgrid(np.arange(ny), np.arange(nx), indexing="ij")
    I, J = I.ravel(), J.ravel()
    horizontal = []
    for b in range(n + 1):
        k = int(bidx[b])
        horizontal.append(add_surface(np.column_stack([nid(k, I, J), nid(k, I, J + 1), nid(k, I + 1, J + 1),
                                                       nid(k, I + 1, J)])))
    facet_groups = _facet_groups_for_breaks(layers, horizontal)
    # vertical surfaces per layer: x = 0 and x = length (source/drain or sides), y = 0 and y = width
    for l, (name, _) in enumerate(layers):
        ks = np.arange(int(bidx[l]), int(bidx[l + 1]))
        K, I = np.meshgrid(ks, np.arange(ny), indexing="ij")
        K, I = K.ravel(), I.ravel()
        lateral = ("source", "drain") if name == "channel" else ("sides", "sides")
        for side, j in zip(lateral, (0, nx)):
            facet_groups[side].append(add_surface(
                np.column_stack([nid(K, I, j), nid(K, I + 1, j), nid(K + 1, I + 1, j), nid(K + 1, I, j)])))
        K, J = np.meshgrid(ks, np.arange(nx), indexing="ij")
        K, J = K.ravel(), J.ravel()
        for i in (0, ny):
            facet_groups["flanks"].append(add_surface(
                np.column_stack([nid(K, i, J), nid(K, i, J + 1), nid(K + 1, i, J + 1), nid(K + 1, i, J)])))

    present_cells = _add_groups(3, cell_groups, tags.CELL_TAGS)
    present_facets = _add_groups(2, facet_groups, tags.FACET_TAGS)
    return MeshInfo(
        dim=3,
        layers=layers,
        breaks=breaks,
        z=z,
        x=x,
        y=y,
        num_nodes=(nx + 1) * (ny + 1) * (nz + 1),
        num_cells=nx * ny * nz,
        cell_tags=present_cells,
        facet_tags=present_facets,
    )


def write_mesh(path: str | Path, *, vtu: bool = True) -> list[Path]:
    """Write the current gmsh model to ``<path>.msh`` (format 4.1) and, if ``vtu``, a meshio
    conversion ``<path>.vtu`` (cell data ``gmsh:physical`` holds the tags) for inspection.

    ``path`` may be given with or without the ``.msh`` suffix. Call on the building rank only.
    Returns the files written.
    """
    path = Path(path)
    msh = path if path.suffix == ".msh" else path.with_name(path.name + ".msh")
    msh.parent.mkdir(parents=True, exist_ok=True)
    gmsh.write(str(msh))
    out = [msh]
    if vtu:
        import meshio

        m = meshio.read(msh)
        # keep only the highest-dimensional cells (the mesh proper) with their region tags
        dim_of = {"vertex": 0, "line": 1, "triangle": 2, "quad": 2, "tetra": 3, "hexahedron": 3}
        top = max(dim_of.get(c.type, 0) for c in m.cells)
        keep = [k for k, c in enumerate(m.cells) if dim_of.get(c.type, 0) == top]
        cells = [m.cells[k] for k in keep]
        data = {}
        if "gmsh:physical" in m.cell_data:
            data["region"] = [np.asarray(m.cell_data["gmsh:physical"][k]) for k in keep]
        vtu_path = msh.with_suffix(".vtu")
        meshio.write(vtu_path, meshio.Mesh(m.points, cells, cell_data=data))
        out.append(vtu_path)
    return out
