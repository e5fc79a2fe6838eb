"""protonfem.solver: case files, the DOLFINx device model, time integration, read-out and outputs.

h5py is imported here, before any submodule loads DOLFINx: once DOLFINx (or PETSc) has initialised
its own HDF5 library in a process, a first ``import h5py`` fails with "ValueError: Not a datatype".
"""
import h5py  # noqa: F401  (import order matters, see above)
