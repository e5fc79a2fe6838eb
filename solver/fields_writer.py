"""Field output: XDMF (ParaView 5.11) and VTKHDF time series (pyvista / VTK >= 9.2).

``FieldWriter`` writes, at each ``write(t)``, every function it was given to

* ``outdir/fields.xdmf`` (+ ``fields.h5``) through :class:`dolfinx.io.XDMFFile`: mesh once, each
  function appended with its time; the XML is rewritten and the HDF5 file flushed after every
  call, so a run killed between writes leaves a readable file;
* ``outdir/fields.vtkhdf``: one VTKHDF 2.x ``UnstructuredGrid`` file with a ``Steps`` group
  (static mesh stored once, one array per field, appended per time). ``dolfinx.io.vtkhdf`` in
  0.11 cannot be used for this: it names every point array ``u``, and its cell-data writer fails
  on a second call. The mesh and values are gathered to rank 0 and written with h5py (serial
  HDF5); the file is reopened and closed at each write, and ``Steps/NSteps`` is updated last;
* ``outdir/fields_index.json``: times, field names and kinds, dimensions (replaced atomically),
  so post-processing can find what is there without HDF5.

Supported fields: scalar (or vector, gdim components) Lagrange functions, written as point data
(anything that is not P1 is interpolated to P1), and DG0 functions, written as cell data. The
writer works on internal copies, so the caller's functions (and their names) are untouched.
All methods are collective on ``comm``.
"""
from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

# h5py must be imported before DOLFINx initialises its own HDF5 library (the first XDMF write);
# imported later in the same process it fails with "ValueError: Not a datatype".
import h5py
import numpy as np
from mpi4py import MPI

import dolfinx
import dolfinx.fem
import dolfinx.io

__all__ = ["FieldWriter", "INDEX_NAME", "VTKHDF_NAME", "XDMF_NAME"]

XDMF_NAME = "fields.xdmf"
VTKHDF_NAME = "fields.vtkhdf"
INDEX_NAME = "fields_index.json"


def _is_cellwise(V) -> bool:
    """True for piecewise-constant (DG0) spaces."""
    return V.ufl_element().embedded_superdegree == 0


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class FieldWriter:
    """Write named functions at chosen times to XDMF and VTKHDF (see module docstring).

    Args:
        mesh: the mesh all functions live on.
        functions: name -> Function (the name is used in both files).
        outdir: output directory (created).
        comm: communicator (default ``mesh.comm``); every method is collective on it.
        xdmf, vtkhdf: switch either output off.
        stem: file names ``<stem>.xdmf``, ``<stem>.vtkhdf``, ``<stem>_index.json`` (a resumed run
            continues in new files next to the first ones).
    """

    def __init__(
        self,
        mesh: dolfinx.mesh.Mesh,
        functions: Mapping[str, dolfinx.fem.Function],
        outdir: str | os.PathLike,
        comm: MPI.Comm | None = None,
        *,
        xdmf: bool = True,
        vtkhdf: bool = True,
        stem: str = "fields",
    ):
        self.mesh = mesh
        self.stem = stem
        self._names = {"xdmf": XDMF_NAME, "vtkhdf": VTKHDF_NAME, "index": INDEX_NAME} if stem == "fields" else \
            {"xdmf": f"{stem}.xdmf", "vtkhdf": f"{stem}.vtkhdf", "index": f"{stem}_index.json"}
        self.comm = mesh.comm if comm is None else comm
        self.outdir = Path(outdir)
        self.functions = dict(functions)
        if not self.functions:
            raise ValueError("FieldWriter needs at least one function")
        if self.comm.rank == 0:
            self.outdir.mkdir(parents=True, exist_ok=True)
        self.comm.barrier()
        self.times: list[float] = []
        self._closed = False

        gdim = mesh.geometry.dim
        tdim = mesh.topology.dim
        self._gdim, self._tdim = gdim, tdim
        self._num_cells = mesh.topology.index_map(tdim).size_local
        self._V1 = dolfinx.fem.functionspace(mesh, ("Lagrange", 1))
        self._V0 = None
        self._V1v = None
        # writer-owned copies, named by key: (source, copy, kind) with kind "point" or "cell"
        self._fields: dict[str, tuple[dolfinx.fem.Function, dolfinx.fem.Function, str]] = {}
        for name, f in self.functions.items():
            shape = tuple(f.function_space.value_shape)
            if shape not in ((), (gdim,)):
                raise ValueError(f"field {name!r}: value shape {shape} not supported")
            if _is_cellwise(f.function_space):
                if self._V0 is None:
                    self._V0 = dolfinx.fem.functionspace(mesh, ("DG", 0))
                V = self._V0 if shape == () else dolfinx.fem.functionspace(mesh, ("DG", 0, shape))
                kind = "cell"
            else:
                if shape == ():
                    V = self._V1
                else:
                    if self._V1v is None:
                        self._V1v = dolfinx.fem.functionspace(mesh, ("Lagrange", 1, shape))
                        if not np.array_equal(self._V1v.dofmap.list, self._V1.dofmap.list):
                            raise RuntimeError("vector and scalar P1 node numberings differ")
                    V = self._V1v
                kind = "point"
            copy = dolfinx.fem.Function(V, name=name)
            self._fields[name] = (f, copy, kind)

        self._xdmf = None
        if xdmf:
            self._xdmf = dolfinx.io.XDMFFile(self.comm, str(self.outdir / self._names["xdmf"]), "w")
            self._xdmf.write_mesh(mesh)
            self._xdmf.flush()
        self._vtk_path = self.outdir / self._names["vtkhdf"] if vtkhdf else None
        if self._vtk_path is not None:
            self._init_vtkhdf()
        self._write_index()

    # ------------------------------------------------------------------------------ VTKHDF
    def _init_vtkhdf(self) -> None:
        """Gather the P1 node coordinates and owned cells to rank 0 and write the mesh."""
        V1 = self._V1
        imap = V1.dofmap.index_map
        n_own = imap.size_local
        # P1 dofs sit on the (P1) geometry nodes with the same cell-local ordering: copy the
        # exact node coordinates rather than tabulated (round-off) dof coordinates
        geom = self.mesh.geometry
        if len(geom.cmaps) == 1 and geom.cmaps[0].degree == 1:
            n_all_cells = self._num_cells + self.mesh.topology.index_map(self._tdim).num_ghosts
            xall = np.empty((imap.size_local + imap.num_ghosts, 3))
            gdofs = geom.dofmaps[0][:n_all_cells].ravel()
            xall[V1.dofmap.list[:n_all_cells].ravel()] = geom.x[gdofs]
            x = xall[:n_own]
        else:
            x = V1.tabulate_dof_coordinates()[:n_own]
        dofs = V1.dofmap.list[: self._num_cells]
        l2g = imap.local_to_global(np.arange(imap.size_local + imap.num_ghosts, dtype=np.int32))
        cell_type = self.mesh.topology.cell_type
        nv = dofs.shape[1]
        perm = np.argsort(dolfinx.cpp.io.perm_vtk(cell_type, nv))
        conn = l2g[dofs][:, perm]
        vtk_type = dolfinx.cpp.io.get_vtk_cell_type(cell_type, self._tdim)
        parts = self.comm.gather((x, conn), root=0)
        self._n_points = imap.size_global
        self._n_cells_global = self.comm.allreduce(self._num_cells, op=MPI.SUM)
        if self.comm.rank == 0:

            pts = np.concatenate([p[0] for p in parts]).astype(np.float64)
            con = np.concatenate([p[1] for p in parts]).astype(np.int64)
            assert len(pts) == self._n_points
            pts3 = np.zeros((len(pts), 3))
            pts3[:, : pts.shape[1]] = pts
            nc = len(con)
            with h5py.File(self._vtk_path, "w") as h:
                g = h.create_group("VTKHDF")
                g.attrs["Version"] = np.array([2, 2], dtype=np.int64)
                g.attrs.create("Type", np.bytes_("UnstructuredGrid"))
                g.create_dataset("NumberOfPoints", data=np.array([len(pts3)], dtype=np.int64))
                g.create_dataset("NumberOfCells", data=np.array([nc], dtype=np.int64))
                g.create_dataset("NumberOfConnectivityIds", data=np.array([con.size], dtype=np.int64))
                g.create_dataset("Points", data=pts3)
                g.create_dataset("Offsets", data=np.arange(nc + 1, dtype=np.int64) * nv)
                g.create_dataset("Connectivity", data=con.ravel())
                g.create_dataset("Types", data=np.full(nc, vtk_type, dtype=np.uint8))
                pd, cd = g.create_group("PointData"), g.create_group("CellData")
                s = g.create_group("Steps")
                s.attrs["NSteps"] = np.int64(0)
                for key in ("Values",):
                    s.create_dataset(key, shape=(0,), maxshape=(None,), dtype=np.float64)
                for key in ("PartOffsets", "NumberOfParts", "PointOffsets", "CellOffsets",
                            "ConnectivityIdOffsets"):
                    s.create_dataset(key, shape=(0,), maxshape=(None,), dtype=np.int64)
                pdo, cdo = s.create_group("PointDataOffsets"), s.create_group("CellDataOffsets")
                for name, (_, copy, kind) in self._fields.items():
                    bs = copy.function_space.dofmap.index_map_bs
                    shape = (0,) if bs == 1 else (0, 3)
                    grp, ogrp = (pd, pdo) if kind == "point" else (cd, cdo)
                    grp.create_dataset(name, shape=shape, maxshape=(None,) + shape[1:],
                                       dtype=np.float64, chunks=True)
                    ogrp.create_dataset(name, shape=(0,), maxshape=(None,), dtype=np.int64)
        self.comm.barrier()

    def _local_values(self, copy: dolfinx.fem.Function, kind: str) -> np.ndarray:
        bs = copy.function_space.dofmap.index_map_bs
        if kind == "point":
            n = copy.function_space.dofmap.index_map.size_local
            vals = copy.x.array[: n * bs]
        else:
            cell_dofs = copy.function_space.dofmap.list[: self._num_cells, 0]
            vals = copy.x.array.reshape(-1, bs)[cell_dofs].ravel()
        vals = np.asarray(vals, dtype=np.float64).reshape(-1, bs)
        if bs > 1:
            v3 = np.zeros((len(vals), 3))
            v3[:, :bs] = vals
            return v3
        return vals[:, 0]

    def _append_vtkhdf(self, t: float) -> None:
        gathered = {
            name: self.comm.gather(self._local_values(copy, kind), root=0)
            for name, (_, copy, kind) in self._fields.items()
        }
        if self.comm.rank != 0:
            return

        def append(ds, arr):
            n0 = ds.shape[0]
            ds.resize(n0 + len(arr), axis=0)
            ds[n0:] = arr

        with h5py.File(self._vtk_path, "a") as h:
            g = h["VTKHDF"]
            s = g["Steps"]
            k = int(s.attrs["NSteps"])
            for name, (_, _, kind) in self._fields.items():
                vals = np.concatenate(gathered[name])
                n = self._n_points if kind == "point" else self._n_cells_global
                assert len(vals) == n, (name, len(vals), n)
                grp, ogrp = (
                    (g["PointData"], s["PointDataOffsets"])
                    if kind == "point"
                    else (g["CellData"], s["CellDataOffsets"])
                )
                # drop anything a killed run left beyond the last complete step
                grp[name].resize(k * n, axis=0)
                ogrp[name].resize(k, axis=0)
                append(grp[name], vals)
                append(ogrp[name], np.array([k * n], dtype=np.int64))
            for key in ("Values", "PartOffsets", "NumberOfParts", "PointOffsets", "CellOffsets",
                        "ConnectivityIdOffsets"):
                s[key].resize(k, axis=0)
            append(s["Values"], np.array([t], dtype=np.float64))
            append(s["NumberOfParts"], np.array([1], dtype=np.int64))
            for key in ("PartOffsets", "PointOffsets", "CellOffsets", "ConnectivityIdOffsets"):
                append(s[key], np.array([0], dtype=np.int64))  # static mesh: stored once
            s.attrs["NSteps"] = np.int64(k + 1)

    # ------------------------------------------------------------------------------ index
    def _write_index(self) -> None:
        if self.comm.rank != 0:
            return
        index = {
            "format": "protonfem-fields-1",
            "gdim": self._gdim,
            "tdim": self._tdim,
            "cell_type": self.mesh.topology.cell_type.name,
            "num_points": int(self._V1.dofmap.index_map.size_global),
            "num_cells": int(self.mesh.topology.index_map(self._tdim).size_global),
            "times": [float(t) for t in self.times],
            "fields": {
                name: {"kind": kind, "components": int(copy.function_space.dofmap.index_map_bs)}
                for name, (_, copy, kind) in self._fields.items()
            },
            "files": {
                "xdmf": self._names["xdmf"] if self._xdmf is not None else None,
                "vtkhdf": self._names["vtkhdf"] if self._vtk_path is not None else None,
            },
        }
        _atomic_write_text(self.outdir / self._names["index"], json.dumps(index, indent=1) + "\n")

    # ------------------------------------------------------------------------------ API
    def write(self, t: float) -> None:
        """Append every function at time ``t`` to all outputs (collective)."""
        if self._closed:
            raise RuntimeError("FieldWriter is closed")
        t = float(t)
        for src, copy, _ in self._fields.values():
            copy.interpolate(src)
            copy.x.scatter_forward()
        if self._xdmf is not None:
            for _, copy, _ in self._fields.values():
                self._xdmf.write_function(copy, t)
            self._xdmf.flush()
        if self._vtk_path is not None:
            self._append_vtkhdf(t)
        self.times.append(t)
        self._write_index()
        self.comm.barrier()

    def close(self) -> None:
        """Close the files (collective); further writes raise."""
        if self._closed:
            return
        if self._xdmf is not None:
            self._xdmf.close()
            self._xdmf = None
        self._closed = True
        self.comm.barrier()

    def __enter__(self) -> FieldWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
