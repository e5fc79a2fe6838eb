"""Checkpoints of a running case, for ``protonfem run CASE --resume``.

A checkpoint is taken after a pulse's read-out, every ``output.checkpoint_every`` pulses, in
``RESULTS/checkpoint/``:

* ``rank<R>.<SEQ>.npz`` — every rank's own dof arrays (the solution and the time-stepping history,
  ghosts included) and the global numbers of those dofs;
* ``partition.npy`` — the rank that owns each cell, indexed by the cell's position in the mesh
  builder's output, so a resumed run distributes the mesh exactly as the checkpointed one did
  (DOLFINx's own checkpointing package, adios4dolfinx, does not work with the wheel used here);
* ``checkpoint.json`` — the sequence number of the newest complete set, the scalar state of the
  run (time, step-size history, floating-gate state, bookkeeping of charges and energies), the
  number of series rows written, the case hash and the rank count. Written by rank 0 last and
  atomically: a run killed while the rank files are being written resumes from the previous set.

Every file is written to a temporary name, flushed, fsynced and renamed, so SIGKILL at any
moment leaves a consistent checkpoint. Resuming needs the same case file, the same number of
ranks and the same protonfem version; anything else is refused with a clear message.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from mpi4py import MPI

CHECKPOINT_DIR = "checkpoint"
META_NAME = "checkpoint.json"
PARTITION_NAME = "partition.npy"
FORMAT_VERSION = 1


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used; the message says why and what to do."""


def _fsync_replace(tmp: Path, final: Path) -> None:
    with open(tmp, "rb+") as fh:
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, final)


def _write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        np.savez(fh, **arrays)
    _fsync_replace(tmp, path)


def cell_partition(mesh, comm: MPI.Comm) -> np.ndarray | None:
    """On rank 0: the owning rank of every cell, indexed by the cell's original (builder) index;
    None on the other ranks."""
    tdim = mesh.topology.dim
    n_owned = mesh.topology.index_map(tdim).size_local
    original = np.asarray(mesh.topology.original_cell_index[:n_owned], dtype=np.int64)
    gathered = comm.gather(original, root=0)
    if comm.rank != 0:
        return None
    n = sum(a.size for a in gathered)
    owner = np.full(n, -1, dtype=np.int32)
    for rank, idx in enumerate(gathered):
        owner[idx] = rank
    if (owner < 0).any():
        raise CheckpointError("cannot record the mesh partition: original cell indices are not a permutation")
    return owner


def partitioner_from(owner: np.ndarray):
    """A DOLFINx cell partitioner that sends every cell to the rank recorded in ``owner``
    (the mesh builder hands all cells to rank 0, in their original order)."""
    from dolfinx import graph

    def partition(comm, n_parts, cell_types, cells):
        from dolfinx.cpp.mesh import cell_num_vertices

        # cells: one flat array of vertex indices per cell type (a single type here)
        n_local = sum(np.asarray(c).size // cell_num_vertices(t) for c, t in zip(cells, cell_types))
        offset = comm.exscan(n_local) or 0
        dest = owner[offset:offset + n_local].astype(np.int32)
        if dest.size != n_local or (dest >= n_parts).any():
            raise CheckpointError("the checkpoint's mesh partition does not match this mesh")
        adj = graph.adjacencylist(dest, np.arange(n_local + 1, dtype=np.int32))
        return getattr(adj, "_cpp_object", adj)  # the C++ list, not its Python wrapper

    return partition


class Checkpointer:
    """Writes and reads the checkpoints of one results directory (collective on ``comm``)."""

    def __init__(self, outdir: Path, comm: MPI.Comm):
        self.dir = Path(outdir) / CHECKPOINT_DIR
        self.comm = comm
        self.seq = 0

    # ------------------------------------------------------------------------------------------
    def save(self, arrays: dict[str, np.ndarray], state: dict, partition: np.ndarray | None) -> None:
        """Write one complete checkpoint. ``arrays``: this rank's dof arrays; ``state``: the
        JSON-serialisable scalar state (the same on every rank; rank 0 writes it)."""
        comm = self.comm
        if comm.rank == 0:
            self.dir.mkdir(parents=True, exist_ok=True)
            if partition is not None and not (self.dir / PARTITION_NAME).is_file():
                tmp = self.dir / (PARTITION_NAME + ".tmp")
                with open(tmp, "wb") as fh:
                    np.save(fh, partition)
                _fsync_replace(tmp, self.dir / PARTITION_NAME)
        comm.Barrier()
        seq = self.seq + 1
        _write_npz(self.dir / f"rank{comm.rank}.{seq}.npz", arrays)
        comm.Barrier()  # every rank's file is on disk before the metadata names the set
        if comm.rank == 0:
            meta = {"format": FORMAT_VERSION, "seq": seq, "ranks": comm.size, **state}
            tmp = self.dir / (META_NAME + ".tmp")
            with open(tmp, "w") as fh:
                json.dump(meta, fh, indent=1)
            _fsync_replace(tmp, self.dir / META_NAME)
        comm.Barrier()
        old = self.dir / f"rank{comm.rank}.{self.seq}.npz"
        if self.seq and old.exists():
            old.unlink()
        self.seq = seq

    # ------------------------------------------------------------------------------------------
    def exists(self) -> bool:
        return (self.dir / META_NAME).is_file()

    def read_state(self) -> dict:
        path = self.dir / META_NAME
        if not path.is_file():
            raise CheckpointError(f"{self.dir.parent}: no checkpoint to resume from ({path} is missing); "
                                  "run without --resume, or raise output.checkpoint_every above 0")
        try:
            meta = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise CheckpointError(f"{path}: unreadable checkpoint metadata ({exc})") from None
        if meta.get("format") != FORMAT_VERSION:
            raise CheckpointError(f"{path}: checkpoint format {meta.get('format')!r}, this version reads {FORMAT_VERSION}")
        if meta["ranks"] != self.comm.size:
            raise CheckpointError(f"{path}: written by {meta['ranks']} MPI rank(s); resume with "
                                  f"mpiexec -n {meta['ranks']} (this run has {self.comm.size})")
        self.seq = int(meta["seq"])
        return meta

    def read_partition(self) -> np.ndarray:
        path = self.dir / PARTITION_NAME
        if not path.is_file():
            raise CheckpointError(f"{path}: missing; the checkpoint is incomplete")
        return np.load(path)

    def read_arrays(self) -> dict[str, np.ndarray]:
        path = self.dir / f"rank{self.comm.rank}.{self.seq}.npz"
        if not path.is_file():
            raise CheckpointError(f"{path}: missing; the checkpoint is incomplete")
        with np.load(path) as data:
            return {k: data[k].copy() for k in data.files}
