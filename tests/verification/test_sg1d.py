"""The independent 1-D Scharfetter-Gummel solver: its own checks, and the FE solver against it.

The SG solver (protonfem.solver.verification.sg1d) shares no numerics with the FE code: finite
volumes with exponentially fitted edge fluxes, its own Newton and BDF2 stepping, no DOLFINx. Both
solve one +10 V / 5 ns pulse of the reference device followed by a 1 s rest with the gate held at
0 V; the Faradaic charge (protons that left the Pd reservoir) must agree within 1 % at the end of
the pulse and at the read-out.
"""
from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest

from protonfem.meshes import stack_points
from protonfem.solver.case import load_case
from protonfem.solver.scaling import Q_E
from protonfem.solver.verification.sg1d import ScharfetterGummel1D, bernoulli, run_reference_pulse
from solver_cases import short_case

#: one +10 V pulse and a 1 s rest of the reference device, gate held at rest_voltage in the rest
REST = 1.0
HELD = {"protocol__rest_gate": "held"}


def _case(tmp_path: Path, name: str = "one_pulse", **overrides) -> Path:
    return short_case(tmp_path / f"{name}.toml", dim=1, pulses_up=1, pulses_down=0, rest=REST,
                      **{**HELD, **overrides})


@pytest.fixture(scope="module")
def sg_reference(tmp_path_factory):
    path = _case(tmp_path_factory.mktemp("sg"))
    return run_reference_pulse(path)


# ----------------------------------------------------------------------------------------------
def test_bernoulli_function_is_exact_and_finite():
    x = np.array([-1e6, -800.0, -30.0, -1.0, -1e-6, 0.0, 1e-6, 1.0, 30.0, 800.0, 1e6])
    b, db = bernoulli(x)
    assert np.all(np.isfinite(b)) and np.all(np.isfinite(db))
    ref = np.array([xi / math.expm1(xi) if 0 < abs(xi) < 700 else (1.0 if xi == 0 else max(-xi, 0.0)) for xi in x])
    assert np.allclose(b, ref, rtol=1e-12, atol=1e-300)
    # B(-x) = B(x) + x and the derivative
    assert np.allclose(bernoulli(-x[2:-2])[0], b[2:-2] + x[2:-2], rtol=1e-12)
    xm = x[2:-2]
    fd = (bernoulli(xm + 1e-6)[0] - bernoulli(xm - 1e-6)[0]) / 2e-6
    assert np.allclose(db[2:-2], fd, rtol=1e-6, atol=1e-9)


def test_jacobian_matches_finite_differences(tmp_path):
    sg = ScharfetterGummel1D(_case(tmp_path), z=stack_points(load_case(_case(tmp_path)).geometry.layers(),
                                                             2e-10, 2e-9, 1.5)[0])
    rng = np.random.default_rng(1)
    x = rng.normal(scale=0.5, size=sg.N)
    x[0::2] += np.linspace(0.0, 40.0, sg.n)  # strong field, hopping regime in the electrolyte
    hist = rng.normal(size=sg.n)
    F, J = sg._assemble(x, 40.0, 1e-9, 1.5, hist)
    J = J.toarray()
    Jfd = np.empty_like(J)
    for k in range(sg.N):
        e = np.zeros(sg.N)
        e[k] = 1e-6
        Jfd[:, k] = (sg._assemble(x + e, 40.0, 1e-9, 1.5, hist)[0] - sg._assemble(x - e, 40.0, 1e-9, 1.5, hist)[0]) / 2e-6
    scale = np.abs(J).max(axis=1, keepdims=True) + 1e-9 * np.abs(J).max()
    assert np.max(np.abs(J - Jfd) / scale) < 1e-5


def test_equilibrium_at_zero_volts_is_the_rest_state(tmp_path):
    case = load_case(_case(tmp_path))
    sg = ScharfetterGummel1D(case)
    x = sg.equilibrate()
    assert np.abs(x).max() < 1e-12  # u = w = 0 everywhere
    g, m = case.geometry, case.materials
    area = g.channel_width * g.channel_length
    inv = sg.inventories()
    assert inv["reservoir"] == pytest.approx(m.reservoir.proton_density * g.reservoir_thickness * area, rel=1e-12)
    assert inv["electrolyte"] == pytest.approx(m.electrolyte.proton_density * g.electrolyte_thickness * area, rel=1e-12)
    assert inv["channel"] == pytest.approx(m.channel.proton_density * g.channel_thickness * area, rel=1e-12)
    law = m.channel.conductivity
    assert sg.conductance() == pytest.approx(law.reference_conductivity * g.channel_thickness * g.channel_width
                                             / g.channel_length, rel=1e-12)
    # and it stays there: 1 s at 0 V moves nothing
    sg.waveform = type("ZeroVolts", (), {"voltage": staticmethod(lambda t: 0.0)})()
    sg.advance_to(1.0)
    assert np.abs(sg.x).max() < 1e-10


def test_pulse_conserves_protons_and_injects(sg_reference):
    r = sg_reference
    assert r["inventory_error"] < 1e-12
    for key in ("inventories_pulse_end", "inventories_read"):
        assert sum(r[key].values()) == pytest.approx(sum(r["inventories_start"].values()), rel=1e-12)
    q_pe, q_read = r["faradaic_charge_pulse_end_C"], r["faradaic_charge_read_C"]
    # ~9 protons leave the Pd during the +10 V pulse; most return during the held 0 V rest
    assert 5 * Q_E < q_pe < 15 * Q_E
    assert 0 < q_read < q_pe
    # the protons still out of the reservoir are in the channel, which conducts better
    gained = r["inventories_read"]["channel"] - r["inventories_start"]["channel"]
    assert gained > 0
    assert r["conductance_read_S"] > r["conductance_start_S"]
    assert r["wall_time_s"] < 60


def test_mesh_and_time_self_convergence(tmp_path, sg_reference):
    """Injected charge on the FE mesh (h_min 0.02 nm) against a mesh twice as fine everywhere,
    and against a 10x tighter local-error tolerance."""
    path = _case(tmp_path)
    case = load_case(path)
    z_fine, _ = stack_points(case.geometry.layers(), 1e-11, 5e-10, 1.12)
    fine = ScharfetterGummel1D(case, z=z_fine)
    assert fine.n > 1.8 * ScharfetterGummel1D(case).n
    fine.equilibrate()
    rf = fine.run_pulse(0)
    tight = run_reference_pulse(path, inventory_tolerance=1e-4, lte_tolerance=1e-4)
    base = sg_reference
    for key in ("faradaic_charge_pulse_end_C", "faradaic_charge_read_C"):
        assert rf[key] == pytest.approx(base[key], rel=2e-3), key
        assert tight[key] == pytest.approx(base[key], rel=3e-3), key


# ----------------------------------------------------------------------------------------------
def _fe(path: Path, out: Path) -> dict:
    pytest.importorskip("dolfinx")
    from protonfem.solver.run import Simulation

    summary = Simulation(path, out, progress=False).run()
    assert summary["status"] == "completed", summary["message"]
    with open(out / "series.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    pulse_end = [r for r in rows if r["event"] == "pulse_end"]
    assert len(pulse_end) == 1
    return {"faradaic_charge_pulse_end_C": float(pulse_end[0]["pulse_faradaic_charge_C"]),
            "faradaic_charge_read_C": summary["per_pulse"][0]["faradaic_charge_C"],
            "conductance_read_S": summary["per_pulse"][0]["conductance_S"]}


def _compare(fe: dict, sg: dict) -> dict:
    return {k: (fe[k] - sg[k]) / sg[k] for k in ("faradaic_charge_pulse_end_C", "faradaic_charge_read_C")}


@pytest.mark.serial
def test_fe_matches_sg_on_reference_pulse(tmp_path, sg_reference):
    """The reference case (solver settings as shipped), one +10 V / 5 ns pulse, 1 s held rest."""
    fe = _fe(_case(tmp_path), tmp_path / "fe")
    rel = _compare(fe, sg_reference)
    msg = (f"FE {fe['faradaic_charge_pulse_end_C']:.5e} / {fe['faradaic_charge_read_C']:.5e} C, "
           f"SG {sg_reference['faradaic_charge_pulse_end_C']:.5e} / {sg_reference['faradaic_charge_read_C']:.5e} C "
           f"(pulse end / read), relative {rel}")
    assert abs(rel["faradaic_charge_pulse_end_C"]) < 0.01, msg
    assert abs(rel["faradaic_charge_read_C"]) < 0.01, msg


@pytest.mark.serial
def test_fe_matches_sg_with_resolved_rest(tmp_path, sg_reference):
    """Same, with the FE rest resolved in time (dt_max = 1 ms): separates the FE's spatial
    discretisation (checked here) from its time-step control over the rest."""
    fe = _fe(_case(tmp_path, solver__dt_max=1e-3), tmp_path / "fe")
    rel = _compare(fe, sg_reference)
    assert abs(rel["faradaic_charge_pulse_end_C"]) < 0.01, rel
    assert abs(rel["faradaic_charge_read_C"]) < 0.01, rel
    assert fe["conductance_read_S"] == pytest.approx(sg_reference["conductance_read_S"], rel=1e-3)
