"""Device-physics options of the case file, each run end to end through the solver."""
from __future__ import annotations

import csv
from pathlib import Path

import pytest
from mpi4py import MPI

from protonfem.solver.run import Simulation
from solver_cases import short_case

COMM = MPI.COMM_WORLD


@pytest.fixture
def shared_tmp(tmp_path):
    return Path(COMM.bcast(str(tmp_path), root=0))


def _run(path: Path, out: Path) -> tuple[dict, list[dict]]:
    summary = Simulation(path, out, progress=False).run()
    assert summary["status"] == "completed", summary["message"]
    COMM.Barrier()
    with open(out / "series.csv", newline="") as fh:
        return summary, list(csv.DictReader(fh))


def _channel_uptake_at_pulse_end(rows):
    return float(rows[1]["inventory_channel"]) - float(rows[0]["inventory_channel"])


def test_butler_volmer_interface_limits_and_recovers_the_continuous_case(shared_tmp):
    """Slow kinetics at PSG/WO3 hold the protons back during the pulse; fast kinetics give the
    continuous-electrochemical-potential result (its defining limit)."""
    base = dict(dim=1, pulses_up=1, pulses_down=0, rest=1e-3, output__fields=[])
    _, cont = _run(short_case(shared_tmp / "cont.toml", **base), shared_tmp / "cont")
    uptake = {}
    for j0 in (1e20, 1e28):
        summary, rows = _run(short_case(shared_tmp / f"bv{j0:g}.toml", interfaces__electrolyte_channel__kinetics="butler_volmer",
                                        interfaces__electrolyte_channel__exchange_rate=j0, **base),
                             shared_tmp / f"bv{j0:g}")
        assert summary["conservation"]["max_inventory_error"] < 1e-10
        uptake[j0] = _channel_uptake_at_pulse_end(rows)
    ref = _channel_uptake_at_pulse_end(cont)
    assert ref > 1.0  # protons per pulse into a 50 x 150 nm channel
    assert uptake[1e28] == pytest.approx(ref, rel=0.01)
    assert 0 < uptake[1e20] < 0.01 * ref


def test_butler_volmer_runs_in_2d(shared_tmp):
    path = short_case(shared_tmp / "bv2d.toml", dim=2, pulses_up=1, pulses_down=0, rest=1e-4, output__fields=[],
                      interfaces__reservoir_electrolyte__kinetics="butler_volmer",
                      interfaces__reservoir_electrolyte__exchange_rate=1e24)
    summary, rows = _run(path, shared_tmp / "bv2d")
    assert summary["conservation"]["max_inventory_error"] < 1e-10
    assert float(rows[-1]["pulse_faradaic_charge_C"]) > 0


def test_temperature_activates_transport(shared_tmp):
    """Arrhenius: with an activation energy, a hotter device moves more protons per pulse; the
    electrolyte's hopping parameters give D0 = a^2 nu exp(-W/kT) at every temperature."""
    q = {}
    for T in (300.0, 320.0):
        path = short_case(shared_tmp / f"T{T:g}.toml", dim=1, pulses_up=1, pulses_down=0, rest=1e-3, output__fields=[],
                          conditions__temperature=T, materials__electrolyte__diffusivity=None,
                          materials__electrolyte__attempt_frequency=1e13, materials__electrolyte__barrier=0.654)
        summary, _ = _run(path, shared_tmp / f"T{T:g}")
        q[T] = summary["per_pulse"][0]["faradaic_charge_C"]
    # D0 = a^2 nu exp(-W/kT) with W = 0.654 eV matches the reference D0 = 3.2e-17 m^2/s at 300 K
    # and grows 4.8x by 320 K; the sinh factor falls a little (x ~ 1/T).
    assert q[320.0] > 2 * q[300.0]


def test_fixed_potential_reservoir_supplies_protons(shared_tmp):
    """An ideal reservoir stays at its rest density; the protons that entered the stack are the
    Faradaic charge, which a floating rest then holds as part of the terminal charge."""
    q = 1.602176634e-19
    path = short_case(shared_tmp / "fixed.toml", dim=1, pulses_up=1, pulses_down=0, rest=1e-3, output__fields=[],
                      materials__reservoir__kind="fixed_potential")
    summary, rows = _run(path, shared_tmp / "fixed")
    res = [float(r["inventory_reservoir"]) for r in rows]
    assert max(res) == pytest.approx(min(res), rel=1e-12)
    gained = sum(float(rows[-1][k]) - float(rows[0][k]) for k in ("inventory_electrolyte", "inventory_channel"))
    assert gained > 1.0
    # (an absolute tolerance far below one proton: approx() against a zero would pass anything)
    assert summary["per_pulse"][0]["faradaic_charge_C"] == pytest.approx(gained * q, rel=1e-6, abs=1e-3 * q)
    assert float(rows[-1]["faradaic_charge_C"]) == pytest.approx(gained * q, rel=1e-6, abs=1e-3 * q)
    # the supplied protons are not inventory drift
    assert summary["conservation"]["max_inventory_error"] < 1e-10
    end, read = rows[1], rows[2]
    assert end["event"] == "pulse_end" and read["event"] == "read"
    terminal = [float(r["gate_charge_C"]) + float(r["faradaic_charge_C"]) for r in (end, read)]
    assert abs(terminal[1] - terminal[0]) < 1e-3 * q  # held over the floating rest
    assert abs(float(read["faradaic_charge_C"]) - float(end["faradaic_charge_C"])) > 0.01 * q  # protons moved


def test_concentration_dependent_channel_diffusivity(shared_tmp):
    """A D(c) table equal to the constant diffusivity reproduces the constant case; a steep one
    changes how the inserted protons spread into the channel during the rest."""
    import numpy as np

    base = dict(dim=1, pulses_up=1, pulses_down=0, rest=0.1, output__fields=[])
    states = {}
    for name, table in (("const", None),
                        ("flat", {"densities": [1e24, 1e28], "diffusivities": [1e-15, 1e-15]}),
                        ("steep", {"densities": [1e25, 1e27], "diffusivities": [1e-13, 1e-17]})):
        extra = {} if table is None else {"materials__channel__diffusivity_table": table}
        sim = Simulation(short_case(shared_tmp / f"d{name}.toml", **base, **extra), shared_tmp / f"d{name}",
                         progress=False)
        assert sim.run()["status"] == "completed"
        states[name] = sim.model.x.x.array.copy()
    scale = np.abs(states["const"]).max()
    assert np.abs(states["flat"] - states["const"]).max() < 1e-8 * scale
    # the inserted protons are ~1e-4 of the channel's content, so the whole state moves by ~1e-2 kT;
    # a diffusivity 100x faster at low content and 100x slower at high content changes it by >1e-4 of that
    assert np.abs(states["steep"] - states["const"]).max() > 1e-4 * scale


@pytest.mark.serial  # ~4600 steps of spinodal decomposition: minutes when a 1-D mesh is split over ranks
def test_regular_solution_channel_phase_separates(shared_tmp):
    """A regular-solution channel inside its spinodal splits into proton-poor and proton-rich phases
    after a pulse perturbs it (the filament picture of Li, Shen, del Alamo, Bazant 2025); the ideal
    channel at the same filling stays uniform. With the screening electrons' own entropy the
    effective spinodal at x = 0.25 needs Omega > 4.7 kT: 0.2 eV (7.7 kT) is inside, and conservation
    holds through the decomposition."""
    import numpy as np
    from dolfinx import fem

    from protonfem.meshes import tags

    spread = {}
    for omega in (0.0, 0.2):
        path = short_case(shared_tmp / f"rs{omega}.toml", dim=1, pulses_up=1, pulses_down=0, rest=0.2,
                          output__fields=[], materials__channel__proton_density=4e27,
                          materials__channel__conductivity__reference_density=4e27,
                          materials__channel__regular_solution={"interaction_energy": omega,
                                                                "gradient_coefficient": 1e-20})
        sim = Simulation(path, shared_tmp / f"rs{omega}", progress=False)
        summary = sim.run()
        assert summary["status"] == "completed", summary["message"]
        assert summary["conservation"]["max_inventory_error"] < 1e-10
        m = sim.model
        dofs = fem.locate_dofs_topological(m.W.sub(m.n_fields - 1), m.mesh.topology.dim,
                                           m.cell_tags.find(tags.CHANNEL))
        theta = m.x.x.array[dofs]
        spread[omega] = (COMM.allreduce(theta.max(initial=0.0), op=MPI.MAX)
                         - COMM.allreduce(theta.min(initial=1.0), op=MPI.MIN))
    assert spread[0.0] < 1e-3
    assert spread[0.2] > 0.8
