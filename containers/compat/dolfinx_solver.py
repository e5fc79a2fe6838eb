"""Stand-in for the ``dolfinx_solver`` module of the PyPI wheel, for a DOLFINx installed otherwise.

protonfem's solver modules ``import dolfinx_solver`` before ``dolfinx``: with the PyPI wheel
(``pip install protonfem[dolfinx]``) that import orders ``mpi4py.MPI`` ahead of the compiled
bindings. The official DOLFINx image (and conda-forge) ship DOLFINx, petsc4py and mpi4py built
together and need no such ordering, but have no ``dolfinx_solver`` module; the container recipes
copy this file into site-packages so the same imports work there. It only initialises MPI first,
which is always safe.
"""
from mpi4py import MPI  # noqa: F401

__all__: list[str] = []
