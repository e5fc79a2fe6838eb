"""The verification problems of the device physics (protonfem verify) at the issue's tolerances.

Every problem is collective (runs under ``mpiexec -n 2`` too, identical verdict on all ranks).
The quick variants are used: fewer refinements / steps, same tolerances.
"""
import dolfinx_solver  # noqa: F401
import json
import math
import tempfile
from argparse import Namespace
from pathlib import Path

import pytest
from mpi4py import MPI

from protonfem.solver.verification import problems as P
from protonfem.solver.verification.common import Check

COMM = MPI.COMM_WORLD


def _assert_all(res):
    failed = [c.as_dict() for c in res.checks if not c.passed]
    assert not failed, failed
    assert res.passed


@pytest.fixture(scope="module")
def mms():
    return P.mms_convergence(quick=True, comm=COMM)


@pytest.mark.parametrize("case", ["1d", "2d", "2region"])
@pytest.mark.parametrize("field", ["u", "w"])
def test_mms_rates(mms, case, field):
    """P1: L2 rate 2 +/- 0.2, H1 rate 1 +/- 0.1, coupled Poisson + sinh-drift hopping transport
    (1-D, 2-D) and the two-region system with a Butler-Volmer interface flux."""
    l2 = mms.check(f"{case} {field} L2 rate").measured
    h1 = mms.check(f"{case} {field} H1 rate").measured
    assert abs(l2 - 2.0) <= 0.2, l2
    assert abs(h1 - 1.0) <= 0.1, h1
    # errors decrease monotonically
    for key in (f"{field}_l2", f"{field}_h1"):
        e = mms.arrays[case][key]
        assert all(b < a for a, b in zip(e, e[1:]))


def test_mms_exercises_sinh_drift(mms):
    note = mms.notes[0]
    assert "g = sinh(x)/x" in note
    _assert_all(mms)


def test_poisson_boltzmann():
    res = P.poisson_boltzmann(quick=True, comm=COMM)
    assert res.check("single-species potential max|u - u_PB| / |psi0|").measured <= 0.01
    assert res.check("single-species surface field (Grahame-type)").error <= 0.01
    assert res.check("Gouy-Chapman surface field (Grahame)").error <= 0.01
    assert res.check("depletion width (c = c0/2) vs sqrt(2 eps V / q c0)").error <= 0.10
    assert res.check("depletion width (c = c0/2) vs exact first integral").error <= 0.01
    _assert_all(res)


def test_linear_charging():
    res = P.linear_charging(quick=True, comm=COMM)
    c = res.check("tau vs lambda_D L / (2 D)")
    assert c.error <= 0.10, c
    _assert_all(res)


def test_uniform_field():
    res = P.uniform_field(quick=True, comm=COMM)
    assert res.check("max rel. error of J vs sinh law (x = 0.1..15)").measured <= 0.01
    assert res.check("decades of current covered (>= 4)").measured >= 4.0
    assert res.check("low field (x = 0.05): J_hopping / J_NP - 1").measured <= 1e-3
    _assert_all(res)


def test_cottrell():
    res = P.cottrell(quick=True, comm=COMM)
    t1, t2 = res.arrays["window"]
    assert t2 / t1 >= 100.0
    assert res.measured <= 0.03
    _assert_all(res)


def test_tafel():
    res = P.tafel(quick=True, comm=COMM)
    for a in (0.3, 0.5, 0.7):
        c = res.check(f"anodic Tafel slope alpha = {a}")
        assert c.error <= 0.01
        assert math.isclose(c.expected, math.log(10) * P.V_T / a * 1e3)
    assert math.isclose(res.check("anodic Tafel slope alpha = 0.5").expected, 119.05, rel_tol=1e-3)
    _assert_all(res)


def test_arrhenius():
    res = P.arrhenius_check(quick=True, comm=COMM)
    _assert_all(res)


def test_check_kinds():
    assert Check("x", 1.05, 1.0, 0.1, "rel").passed
    assert not Check("x", 1.2, 1.0, 0.1, "rel").passed
    assert Check("x", 2.1, 2.0, 0.2, "abs").passed
    assert not Check("x", float("nan"), 2.0, 0.2, "abs").passed
    assert Check("x", 5.0, 4.0, 0.0, "ge").passed and not Check("x", 3.0, 4.0, 0.0, "ge").passed


@pytest.mark.serial
def test_run_verify_quick_writes_report():
    from protonfem.solver.verification.report import run_verify

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "verify"
        rc = run_verify(Namespace(report=str(out), only=["tafel", "arrhenius", "uniform_field"], quick=True))
        assert rc == 0
        doc = json.loads((out / "verification.json").read_text())
        assert doc["passed"] and [p["name"] for p in doc["problems"]] == ["tafel", "arrhenius", "uniform_field"]
        assert "| problem |" in (out / "verification.md").read_text()
        for name in ("tafel", "arrhenius", "uniform_field"):
            assert (out / f"{name}.png").stat().st_size > 1000
        assert run_verify(Namespace(report=str(out), only=["nope"], quick=True)) == 2


@pytest.mark.serial
def test_run_verify_quick_all_problems():
    """The whole quick suite through the CLI entry: exit code 0 and one PNG per problem."""
    import argparse

    from protonfem.solver.verification.report import add_verify_parser

    ap = argparse.ArgumentParser()
    add_verify_parser(ap.add_subparsers(dest="cmd"))
    with tempfile.TemporaryDirectory() as tmp:
        args = ap.parse_args(["verify", "--quick", "--report", tmp])
        assert args.func(args) == 0
        doc = json.loads((Path(tmp) / "verification.json").read_text())
        names = [p["name"] for p in doc["problems"]]
        assert names == list(P.PROBLEMS)
        for name in names:
            assert (Path(tmp) / f"{name}.png").exists()
