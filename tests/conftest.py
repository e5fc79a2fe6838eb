"""Shared pytest set-up: MPI-aware markers and teardown.

Tests marked ``serial`` run only when pytest is not under ``mpiexec -n N`` with N > 1 (they either
do not use MPI at all, like the crossbar module, or compare against a serial run themselves).
"""
import gc

import pytest


def _world_size() -> int:
    try:
        from mpi4py import MPI
    except ImportError:
        return 1
    return MPI.COMM_WORLD.size


def pytest_collection_modifyitems(config, items):
    if _world_size() > 1:
        skip = pytest.mark.skip(reason="serial-only test skipped under mpiexec")
        for item in items:
            if "serial" in item.keywords:
                item.add_marker(skip)


@pytest.fixture(autouse=True)
def _collective_teardown():
    # DOLFINx/PETSc destructors can be collective: collect on every rank together.
    yield
    gc.collect()
    if _world_size() > 1:
        from mpi4py import MPI

        MPI.COMM_WORLD.Barrier()
