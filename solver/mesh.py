"""From a case's geometry to a distributed DOLFINx mesh with region and boundary tags.

The gmsh model is built once, on rank 0, and distributed by ``dolfinx.io.gmsh.model_to_mesh``.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import dolfinx_solver  # noqa: F401  (must precede dolfinx)
import gmsh
from dolfinx.io import gmsh as dgmsh
from mpi4py import MPI

from protonfem.meshes import tags
from .case import Case
from .scaling import L0


@dataclass
class DeviceMesh:
    mesh: object
    cell_tags: object
    facet_tags: object


def _build_gmsh_model(case: Case) -> None:
    from protonfem.meshes import build_cross_section_2d, build_device_3d, build_stack_1d

    g, m = case.geometry, case.mesh
    if g.dimension == 1:
        build_stack_1d(g.layers(), h_min=m.h_min, h_max=m.h_max, growth=m.growth)
    elif g.dimension == 2:
        build_cross_section_2d(g.layers(), g.channel_length, h_min=m.h_min, h_max=m.h_max, growth=m.growth,
                               h_lateral_min=m.lateral_h_min, h_lateral_max=m.lateral_h_max)
    else:
        build_device_3d(g.layers(), g.channel_length, g.channel_width, h_min=m.h_min, h_max=m.h_max,
                        growth=m.growth, h_lateral_min=m.lateral_h_min, h_lateral_max=m.lateral_h_max,
                        h_width=m.width_h)


def create_device_mesh(case: Case, comm: MPI.Comm = MPI.COMM_WORLD, write_msh: Path | None = None,
                       partitioner=None) -> DeviceMesh:
    """Build the case's mesh on rank 0 and distribute it over ``comm`` (with DOLFINx's default
    partitioner, or ``partitioner``: a resumed run reuses its checkpoint's partition)."""
    initialized_here = not gmsh.isInitialized()
    if initialized_here:
        gmsh.initialize(interruptible=False)
    gmsh.option.setNumber("General.Terminal", 0)
    try:
        if comm.rank == 0:
            gmsh.model.add(case.name or "device")
            _build_gmsh_model(case)
            if write_msh is not None:
                from protonfem.meshes import write_mesh
                write_mesh(write_msh)
        data = dgmsh.model_to_mesh(gmsh.model, comm, 0, gdim=case.geometry.dimension, partitioner=partitioner)
    finally:
        if comm.rank == 0:
            gmsh.model.remove()
        if initialized_here:
            gmsh.finalize()
    mesh = data.mesh
    # The solver works in scaled lengths (L0 = 1 nm, see scaling.py): the gmsh model is in metres.
    mesh.geometry.x[:] /= L0
    # Every cell must belong to one region: the coefficients are set per region.
    ct = data.cell_tags
    n_local = mesh.topology.index_map(mesh.topology.dim).size_local
    tagged = set(int(c) for c in ct.indices[ct.indices < n_local])
    if len(tagged) != n_local:
        raise RuntimeError("mesh builder left cells without a region tag")
    unknown = set(int(v) for v in ct.values) - set(tags.CELL_TAGS.values())
    if unknown:
        raise RuntimeError(f"mesh carries unknown region tags {sorted(unknown)}")
    return DeviceMesh(mesh, ct, data.facet_tags)
