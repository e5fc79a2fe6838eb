"""Shared pieces of the verification problems: result records, meshes, Newton, norms, fits.

Every helper is collective over the mesh communicator and returns the same numbers on every rank
(reductions are all-reduces, gathered arrays are all-gathers), so a problem's pass/fail verdict is
identical on all ranks.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import asdict, dataclass, field

import dolfinx_solver  # noqa: F401  (must precede dolfinx)
import numpy as np
import ufl
from dolfinx import fem, mesh as dmesh
from dolfinx.fem import petsc as fem_petsc
from mpi4py import MPI

#: The device model's discretisation choices (solver/model.py), repeated here on purpose: the
#: verification must exercise the same quadratures as the device model.
LUMPED = {"quadrature_rule": "vertex", "quadrature_degree": 1}
FLUX_DEGREE = 2
#: Quadrature of manufactured sources and of error integrals (smooth, exponential coefficients).
SOURCE_DEGREE = 8
ERROR_DEGREE = 8

NEWTON_OPTIONS = {
    "snes_type": "newtonls",
    "snes_linesearch_type": "basic",
    "ksp_type": "preonly",
    "pc_type": "lu",
    "pc_factor_mat_solver_type": "mumps",
    # Converged when the residual fell 1e10-fold, or below 1e-11 absolute, or the Newton update
    # is at round-off (1e-12 relative): the manufactured problems' residual rows carry Gamma ~ 700.
    "snes_rtol": 1e-10,
    "snes_atol": 1e-11,
    "snes_stol": 1e-12,
    "snes_max_it": 50,
}

_prefix_counter = itertools.count()


# ------------------------------------------------------------------------------------------------
@dataclass
class Check:
    """One measured quantity against its analytic value."""

    quantity: str
    measured: float
    expected: float
    tolerance: float
    #: "abs": |measured - expected| <= tolerance; "rel": |measured/expected - 1| <= tolerance;
    #: "max": |measured| <= tolerance (expected is the ideal value, usually 0);
    #: "ge": measured >= expected (a required minimum; tolerance unused).
    kind: str = "rel"
    unit: str = ""

    @property
    def error(self) -> float:
        if self.kind == "abs":
            return abs(self.measured - self.expected)
        if self.kind == "rel":
            return abs(self.measured / self.expected - 1.0) if self.expected != 0 else abs(self.measured)
        if self.kind == "ge":
            return max(self.expected - self.measured, 0.0)
        return abs(self.measured)

    @property
    def passed(self) -> bool:
        if self.kind == "ge":
            return bool(math.isfinite(self.measured) and self.measured >= self.expected)
        return bool(math.isfinite(self.measured) and self.error <= self.tolerance)

    def as_dict(self) -> dict:
        d = asdict(self)
        d.update(error=self.error, passed=self.passed)
        return d


@dataclass
class Result:
    """A verification problem's outcome: its checks (the first is the headline), the arrays of
    its plot, and notes (expected corrections, parameters)."""

    name: str
    title: str
    checks: list[Check]
    arrays: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    parameters: dict = field(default_factory=dict)
    wall_time_s: float = 0.0
    skipped: str = ""

    @property
    def passed(self) -> bool:
        return bool(self.skipped) or all(c.passed for c in self.checks)

    # headline fields (first check)
    @property
    def quantity(self) -> str:
        return self.checks[0].quantity if self.checks else ""

    @property
    def measured(self) -> float:
        return self.checks[0].measured if self.checks else float("nan")

    @property
    def expected(self) -> float:
        return self.checks[0].expected if self.checks else float("nan")

    @property
    def tolerance(self) -> float:
        return self.checks[0].tolerance if self.checks else float("nan")

    def check(self, quantity: str) -> Check:
        for c in self.checks:
            if c.quantity == quantity:
                return c
        raise KeyError(quantity)

    def as_dict(self) -> dict:
        return {
            "name": self.name, "title": self.title, "passed": self.passed, "skipped": self.skipped,
            "quantity": self.quantity, "measured": self.measured, "expected": self.expected,
            "tolerance": self.tolerance, "checks": [c.as_dict() for c in self.checks],
            "notes": self.notes, "parameters": _jsonable(self.parameters), "wall_time_s": self.wall_time_s,
            "arrays": {k: _jsonable(v) for k, v in self.arrays.items()},
        }


def _jsonable(v):
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, dict):
        return {k: _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, (np.floating, np.integer)):
        return v.item()
    return v


# ------------------------------------------------------------------------------------------------
def interval(comm, n: int, length: float = 1.0, grading=None):
    """1-D mesh of [0, length] with n cells; ``grading`` maps s in [0, 1] monotonically onto
    [0, 1] (applied to the vertex coordinates, so the mesh stays P1-affine)."""
    msh = dmesh.create_interval(comm, n, [0.0, length])
    if grading is not None:
        x = msh.geometry.x
        x[:, 0] = length * grading(np.clip(x[:, 0] / length, 0.0, 1.0))
    return msh


def geometric(beta: float):
    """Grading fine at s = 0: x = (exp(beta s) - 1) / (exp(beta) - 1)."""
    return lambda s: np.expm1(beta * s) / math.expm1(beta)


def two_sided(beta: float):
    """Grading fine at both ends: x = (1 + tanh(beta (2s - 1)) / tanh(beta)) / 2."""
    return lambda s: 0.5 * (1.0 + np.tanh(beta * (2.0 * s - 1.0)) / math.tanh(beta))


def newton(F, x, bcs, name: str, options: dict | None = None):
    opts = dict(NEWTON_OPTIONS)
    if options:
        opts.update(options)
    prefix = f"verify_{name}_{next(_prefix_counter)}_"
    return fem_petsc.NonlinearProblem(F, x, bcs=bcs, petsc_options_prefix=prefix, petsc_options=opts)


class NewtonFailed(RuntimeError):
    pass


def solve(problem, what: str = "") -> int:
    problem.solve()
    reason = problem.solver.getConvergedReason()
    its = problem.solver.getIterationNumber()
    if reason <= 0:
        raise NewtonFailed(f"Newton did not converge ({what}): reason {reason} after {its} iterations")
    return its


def assemble(form_ufl, comm) -> float:
    return comm.allreduce(fem.assemble_scalar(fem.form(form_ufl)), op=MPI.SUM)


def interpolate_expr(V, expr) -> fem.Function:
    f = fem.Function(V)
    f.interpolate(fem.Expression(expr, V.element.interpolation_points))
    return f


def errors(uh, u_exact_ufl, dx_measure=None) -> tuple[float, float]:
    """L2 norm and H1 seminorm of uh - u_exact, the exact solution interpolated in a degree-3
    Lagrange space (as FESTIM's error_L2), integrated with degree-8 quadrature."""
    msh = uh.function_space.mesh
    V3 = fem.functionspace(msh, ("Lagrange", 3))
    ue = interpolate_expr(V3, u_exact_ufl)
    dx = dx_measure if dx_measure is not None else ufl.Measure(
        "dx", domain=msh, metadata={"quadrature_degree": ERROR_DEGREE})
    e = uh - ue
    l2 = math.sqrt(assemble(e * e * dx, msh.comm))
    h1 = math.sqrt(assemble(ufl.inner(ufl.grad(e), ufl.grad(e)) * dx, msh.comm))
    return l2, h1


def fit_rate(h, err) -> float:
    """Least-squares slope of log(err) against log(h)."""
    return float(np.polyfit(np.log(np.asarray(h)), np.log(np.asarray(err)), 1)[0])


def nodal(V, *functions):
    """(x, values...) of a P1 space's owned dofs on every rank, sorted by x (1-D plotting)."""
    n = V.dofmap.index_map.size_local
    x = V.tabulate_dof_coordinates()[:n, 0]
    cols = [x] + [f.x.array[:n] if isinstance(f, fem.Function) else np.asarray(f)[:n] for f in functions]
    local = np.column_stack(cols)
    allrows = np.concatenate(V.mesh.comm.allgather(local), axis=0)
    order = np.argsort(allrows[:, 0], kind="stable")
    allrows = allrows[order]
    return tuple(allrows[:, i].copy() for i in range(allrows.shape[1]))


def p1_indicator(V, x0: float, tol: float = 1e-12) -> fem.Function:
    """P1 function equal to 1 at the vertex x = x0 and 0 elsewhere (consistent-flux test function)."""
    chi = fem.Function(V)
    dofs = fem.locate_dofs_geometrical(V, lambda x: np.isclose(x[0], x0, atol=tol))
    chi.x.array[dofs] = 1.0
    chi.x.scatter_forward()
    return chi
