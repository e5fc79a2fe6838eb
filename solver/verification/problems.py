"""The verification problems of the device physics (device-physics.md §5, B1-B8), one function each.

Every problem builds a small DOLFINx problem from the laws of :mod:`protonfem.solver.physics` only
(``logistic``, ``site_fraction``, ``rest_offset``, ``hopping_flux``, ``space_charge``,
``butler_volmer``, ``sinh_enhancement``, ``arrhenius``) with the device model's discretisation
(P1 for the scaled potential ``u`` and the proton electrochemical potential ``w``, vertex/lumped
quadrature for densities and space charge, degree-``FLUX_DEGREE`` quadrature for fluxes, SNES
Newton + MUMPS), and compares a measured quantity with its analytic value. Units are the scaled
units of :mod:`protonfem.solver.scaling`: nm, 1e27 m^-3, kT/q, seconds (rates D/nm^2 in 1/s).

Each function takes ``quick`` (fewer refinements / coarser meshes / fewer steps, same tolerances)
and ``comm`` and returns a :class:`~protonfem.solver.verification.common.Result`. All of them are
collective and return identical results on every rank.
"""
from __future__ import annotations

import math
import time

import dolfinx_solver  # noqa: F401  (must precede dolfinx)
import basix.ufl
import numpy as np
import ufl
from dolfinx import default_scalar_type, fem, mesh as dmesh
from mpi4py import MPI

from protonfem.solver.physics import (arrhenius, butler_volmer, hopping_flux, logistic, rest_offset,
                                      site_fraction, sinh_enhancement, space_charge)
from protonfem.solver.scaling import EPS0, K_B, L0, Q_E, Scales

from .common import (FLUX_DEGREE, LUMPED, SOURCE_DEGREE, Check, Result, assemble, errors, fit_rate,
                     geometric, interpolate_expr, interval, newton, nodal, p1_indicator, solve, two_sided)

T_REF = 300.0
SCALES = Scales(T_REF, 1, 1.0)
GAMMA = SCALES.poisson_coupling          # ~700: q C0 L0^2 / (eps0 kT/q) at 300 K
V_T = SCALES.thermal_voltage             # 25.85 mV

#: PSG electrolyte of the reference case (cases/onen2022/reference.toml), scaled.
PSG = dict(eps=4.0, c0=0.1, cmax=1.0, rate=SCALES.rate(3.2e-17), a_half=0.5 * 0.56)


def _mixed(msh, n: int = 2):
    p1 = basix.ufl.element("Lagrange", msh.basix_cell(), 1)
    return fem.functionspace(msh, basix.ufl.mixed_element([p1] * n))


def _measures(msh, cell_tags=None, facet_tags=None):
    dx = ufl.Measure("dx", domain=msh, subdomain_data=cell_tags)
    return dict(
        dx=dx,
        dxL=ufl.Measure("dx", domain=msh, subdomain_data=cell_tags, metadata=LUMPED),
        dxF=ufl.Measure("dx", domain=msh, subdomain_data=cell_tags, metadata={"quadrature_degree": FLUX_DEGREE}),
        dxS=ufl.Measure("dx", domain=msh, subdomain_data=cell_tags, metadata={"quadrature_degree": SOURCE_DEGREE}),
        dxE=ufl.Measure("dx", domain=msh, subdomain_data=cell_tags, metadata={"quadrature_degree": 8}),
        dS=ufl.Measure("dS", domain=msh, subdomain_data=facet_tags),
    )


def _set_sub(sol, i, expr):
    """Interpolate a UFL expression into component i of a mixed function."""
    Vi, dofs = sol.function_space.sub(i).collapse()
    f = interpolate_expr(Vi, expr)
    sol.x.array[np.asarray(dofs)] = f.x.array
    sol.x.scatter_forward()


def _boundary_bc(W, i, expr, marker):
    Vi, _ = W.sub(i).collapse()
    g = interpolate_expr(Vi, expr)
    dofs = fem.locate_dofs_geometrical((W.sub(i), Vi), marker)
    return fem.dirichletbc(g, dofs, W.sub(i))


def _const_bc(W, i, value, marker):
    """Dirichlet bc of component i with a (mutable) fem.Constant value."""
    Vi, _ = W.sub(i).collapse()
    dofs = fem.locate_dofs_geometrical((W.sub(i), Vi), marker)[0]
    return fem.dirichletbc(value, dofs, W.sub(i))


def _timed(fn):
    def wrapper(*args, **kwargs):
        t0 = time.perf_counter()
        res = fn(*args, **kwargs)
        res.wall_time_s = time.perf_counter() - t0
        return res
    wrapper.__name__ = fn.__name__
    wrapper.__doc__ = fn.__doc__
    return wrapper


# =================================================================================================
# 1. Method of manufactured solutions
# =================================================================================================
#: Coefficients of the manufactured problems: PSG-like permittivity, the real Poisson coupling,
#: the real hopping half-distance (so g = sinh(x)/x spans 1.1-2.4), a fixed background, donors
#: and Boltzmann electrons (every term of ``space_charge``).
MMS = dict(eps=4.0, gamma=GAMMA, rate=1.0, cmax=1.0, e0=rest_offset(0.1, 1.0), a_half=0.28,
           cfix=0.1, nd=0.02, n0=0.02)


def _mms_exact(X, dim):
    if dim == 1:
        x = X[0]
        u = -6.0 * x + 0.6 * ufl.sin(1.5 * ufl.pi * x)
        l = -0.5 + 0.6 * ufl.cos(ufl.pi * x)
    else:
        x, y = X[0], X[1]
        u = -6.0 * x - 2.0 * y + 0.6 * ufl.sin(1.5 * ufl.pi * x) * ufl.cos(ufl.pi * y)
        l = -0.5 + 0.6 * ufl.cos(ufl.pi * x) * ufl.sin(ufl.pi * y + 0.3)
    return u, u + MMS["e0"] + l      # w = u + e0 + logit(theta): theta = S(l) in (0.25, 0.53)


def _mms_single_level(comm, dim: int, n: int) -> dict:
    p = MMS
    msh = interval(comm, n) if dim == 1 else dmesh.create_unit_square(comm, n, n)
    X = ufl.SpatialCoordinate(msh)
    u_ex, w_ex = _mms_exact(X, dim)
    W = _mixed(msh)
    sol = fem.Function(W)
    u, w = ufl.split(sol)
    v, q = ufl.TestFunctions(W)
    m = _measures(msh)

    def laws(w_, u_):
        c = p["cmax"] * site_fraction(w_, u_, p["e0"])
        rho = space_charge(c, u_, p["cfix"], p["nd"], p["n0"], 1.0)
        J = hopping_flux(w_, u_, p["rate"], p["cmax"], p["e0"], p["a_half"])
        return rho, J

    rho, J = laws(w, u)
    rho_ex, J_ex = laws(w_ex, u_ex)
    f_u = -ufl.div(p["eps"] * ufl.grad(u_ex)) - p["gamma"] * rho_ex      # -div(eps grad u) = Gamma rho + f_u
    s_w = ufl.div(J_ex)                                                  # div J = s_w (steady)
    F = (p["eps"] * ufl.inner(ufl.grad(u), ufl.grad(v)) * m["dx"] - p["gamma"] * rho * v * m["dxL"]
         - f_u * v * m["dxS"]
         - ufl.inner(J, ufl.grad(q)) * m["dxF"] - s_w * q * m["dxS"])
    fdim = msh.topology.dim - 1
    msh.topology.create_connectivity(fdim, msh.topology.dim)
    bfacets = dmesh.exterior_facet_indices(msh.topology)
    bcs = []
    for i, ex in ((0, u_ex), (1, w_ex)):
        Vi, _ = W.sub(i).collapse()
        g = interpolate_expr(Vi, ex)
        dofs = fem.locate_dofs_topological((W.sub(i), Vi), fdim, bfacets)
        bcs.append(fem.dirichletbc(g, dofs, W.sub(i)))
    # Initial guess: the exact solution's interpolant (Newton then finds the discrete solution).
    _set_sub(sol, 0, u_ex)
    _set_sub(sol, 1, w_ex)
    problem = newton(F, sol, bcs, f"mms{dim}d")
    its = solve(problem, f"MMS {dim}-D n={n}")
    uh = sol.sub(0).collapse()
    wh = sol.sub(1).collapse()
    eu = errors(uh, u_ex)
    ew = errors(wh, w_ex)
    # range of the sinh enhancement actually exercised
    V0 = fem.functionspace(msh, ("DG", 0))
    gx = interpolate_expr(V0, sinh_enhancement(p["a_half"] ** 2 * ufl.inner(ufl.grad(u_ex), ufl.grad(u_ex))))
    gmin = comm.allreduce(gx.x.array.min(initial=np.inf), op=MPI.MIN)
    gmax = comm.allreduce(gx.x.array.max(initial=-np.inf), op=MPI.MAX)
    return dict(h=1.0 / n, u_l2=eu[0], u_h1=eu[1], w_l2=ew[0], w_h1=ew[1], newton=its, g_min=gmin, g_max=gmax)


def _mms_two_region_level(comm, n: int) -> dict:
    """Two regions [0, 1] | [1, 2], w discontinuous at z = 1, Butler-Volmer interface flux."""
    L, zi = 2.0, 1.0
    r1 = dict(eps=4.0, rate=1.0, cmax=1.0, e0=rest_offset(0.1, 1.0), a_half=0.28, cfix=0.1, nd=0.0, n0=0.0)
    r2 = dict(eps=10.0, rate=2.0, cmax=2.0, e0=rest_offset(0.05, 2.0), a_half=0.0, cfix=0.0, nd=0.05, n0=0.05)
    j0, alpha = 0.5, 0.4
    msh = interval(comm, n, L)
    tdim = msh.topology.dim
    msh.topology.create_connectivity(0, 1)
    msh.topology.create_connectivity(1, 0)
    msh.topology.create_connectivity(1, 1)
    c1 = dmesh.locate_entities(msh, tdim, lambda x: x[0] <= zi + 1e-12)
    c2 = dmesh.locate_entities(msh, tdim, lambda x: x[0] >= zi - 1e-12)
    cells = np.concatenate([c1, c2])
    vals = np.concatenate([np.full(c1.size, 1, np.int32), np.full(c2.size, 2, np.int32)])
    order = np.argsort(cells)
    ct = dmesh.meshtags(msh, tdim, cells[order], vals[order])
    fi = dmesh.locate_entities(msh, 0, lambda x: np.isclose(x[0], zi))
    ft = dmesh.meshtags(msh, 0, fi, np.full(fi.size, 7, np.int32))
    m = _measures(msh, ct, ft)
    dS = m["dS"](7)

    X = ufl.SpatialCoordinate(msh)
    x = X[0]
    u_ex = -6.0 * x + 0.6 * ufl.sin(1.5 * ufl.pi * x)
    w1_ex = u_ex + r1["e0"] + (-0.5 + 0.6 * ufl.cos(ufl.pi * x))
    w2_ex = u_ex + r2["e0"] + (-1.0 + 0.5 * ufl.sin(ufl.pi * x))

    W = _mixed(msh, 3)
    sol = fem.Function(W)
    u, w1, w2 = ufl.split(sol)
    v, q1, q2 = ufl.TestFunctions(W)

    def laws(w_, u_, r):
        c = r["cmax"] * site_fraction(w_, u_, r["e0"])
        return (space_charge(c, u_, r["cfix"], r["nd"], r["n0"], 1.0),
                hopping_flux(w_, u_, r["rate"], r["cmax"], r["e0"], r["a_half"]))

    F = 0
    Js_ex = []
    for tag, r, wk, wk_ex, qk in ((1, r1, w1, w1_ex, q1), (2, r2, w2, w2_ex, q2)):
        rho, J = laws(wk, u, r)
        rho_ex, J_ex = laws(wk_ex, u_ex, r)
        Js_ex.append(J_ex)
        f_u = -ufl.div(r["eps"] * ufl.grad(u_ex)) - GAMMA * rho_ex
        s_w = ufl.div(J_ex)
        F += (r["eps"] * ufl.inner(ufl.grad(u), ufl.grad(v)) * m["dx"](tag) - GAMMA * rho * v * m["dxL"](tag)
              - f_u * v * m["dxS"](tag) - ufl.inner(J, ufl.grad(qk)) * m["dxF"](tag) - s_w * qk * m["dxS"](tag))
    # Interface: permittivity jump of the smooth manufactured u (Neumann data), and the
    # Butler-Volmer transfer j(w1 - w2) from region 1 to region 2 with the manufactured mismatch
    # g_k = J_k,ex . n1 - j_ex (n1 = +x), so that the exact solution satisfies the discrete problem.
    j_h = butler_volmer(w1("+") - w2("+"), j0, alpha)
    j_ex = butler_volmer(w1_ex("+") - w2_ex("+"), j0, alpha)
    g1 = Js_ex[0][0]("+") - j_ex
    g2 = Js_ex[1][0]("+") - j_ex
    F += -(r1["eps"] - r2["eps"]) * ufl.grad(u_ex)[0]("+") * v("+") * dS
    F += (j_h + g1) * q1("+") * dS - (j_h + g2) * q2("+") * dS

    # Dirichlet data at the outer ends; each w_k pinned to 0 where it touches none of its cells.
    bcs = [_boundary_bc(W, 0, u_ex, lambda x: np.isclose(x[0], 0.0) | np.isclose(x[0], L)),
           _boundary_bc(W, 1, w1_ex, lambda x: np.isclose(x[0], 0.0)),
           _boundary_bc(W, 2, w2_ex, lambda x: np.isclose(x[0], L))]
    for k, cells_k in ((1, c1), (2, c2)):
        _, dmap = W.sub(k).collapse()
        inside = fem.locate_dofs_topological(W.sub(k), tdim, cells_k)
        pinned = np.setdiff1d(np.asarray(dmap, dtype=np.int32), inside).astype(np.int32)
        bcs.append(fem.dirichletbc(default_scalar_type(0.0), pinned, W.sub(k)))
    _set_sub(sol, 0, u_ex)
    _set_sub(sol, 1, w1_ex)
    _set_sub(sol, 2, w2_ex)
    problem = newton(F, sol, bcs, "mms2r")
    its = solve(problem, f"MMS two-region n={n}")
    uh, w1h, w2h = (sol.sub(i).collapse() for i in range(3))
    eu = errors(uh, u_ex)
    e1 = errors(w1h, w1_ex, m["dxE"](1))
    e2 = errors(w2h, w2_ex, m["dxE"](2))
    # interface rate actually exercised
    jx = assemble(j_ex * dS, comm)
    dwx = assemble((w1_ex("+") - w2_ex("+")) * dS, comm)
    return dict(h=L / n, u_l2=eu[0], u_h1=eu[1], w_l2=math.hypot(e1[0], e2[0]), w_h1=math.hypot(e1[1], e2[1]),
                newton=its, j_interface=jx, dw_interface=dwx)


@_timed
def mms_convergence(quick: bool = False, comm=MPI.COMM_WORLD) -> Result:
    """P1 rates of the coupled steady Poisson + hopping-transport system (sinh drift on) in 1-D
    and 2-D, and of the two-region 1-D system with a Butler-Volmer interface: L2 -> 2, H1 -> 1."""
    levels = {
        "1d": [8, 16, 32, 64] if quick else [8, 16, 32, 64, 128],
        "2d": [4, 8, 16, 32] if quick else [4, 8, 16, 32, 64],
        "2region": [8, 16, 32, 64] if quick else [8, 16, 32, 64, 128],
    }
    data = {}
    data["1d"] = [_mms_single_level(comm, 1, n) for n in levels["1d"]]
    data["2d"] = [_mms_single_level(comm, 2, n) for n in levels["2d"]]
    data["2region"] = [_mms_two_region_level(comm, n) for n in levels["2region"]]
    checks, arrays = [], {}
    for case, rows in data.items():
        h = [r["h"] for r in rows]
        arrays[case] = {"h": h}
        for fld in ("u", "w"):
            for norm, expected, tol in (("l2", 2.0, 0.2), ("h1", 1.0, 0.1)):
                err = [r[f"{fld}_{norm}"] for r in rows]
                arrays[case][f"{fld}_{norm}"] = err
                checks.append(Check(f"{case} {fld} {norm.upper()} rate", fit_rate(h, err), expected, tol, "abs"))
    g = data["1d"][-1]
    g2 = data["2d"][-1]
    r2 = data["2region"][-1]
    notes = [
        f"sinh enhancement exercised: g = sinh(x)/x in [{g['g_min']:.2f}, {g['g_max']:.2f}] (1-D), "
        f"[{g2['g_min']:.2f}, {g2['g_max']:.2f}] (2-D)",
        f"two-region interface: w1 - w2 = {r2['dw_interface']:.3f} kT, Butler-Volmer j = {r2['j_interface']:.4f} "
        f"(j0 = 0.5, alpha = 0.4); permittivity 4 | 10, a/2 = 0.28 | 0 nm",
        "errors against the exact solution interpolated in P3, degree-8 quadrature; rates are least-squares "
        "slopes over all levels",
    ]
    return Result("mms", "Manufactured solutions, coupled Poisson + hopping transport (1-D, 2-D, two-region BV)",
                  checks, arrays, notes, {"levels": levels, "coefficients": MMS})


# =================================================================================================
# 2. Poisson-Boltzmann equilibria
# =================================================================================================
def _f_boltzmann(psi):
    """e^-psi - 1 + psi, cancellation-free."""
    psi = np.asarray(psi, dtype=float)
    small = np.abs(psi) < 1e-3
    out = np.expm1(-psi) + psi
    ps = psi[small] if psi.ndim else psi
    series = ps**2 / 2 - ps**3 / 6 + ps**4 / 24
    if psi.ndim:
        out[small] = series
    elif small:
        out = series
    return out


def _pb_single_exact(x, psi0, kappa):
    """Single mobile species over its own fixed background (Boltzmann): the first integral
    (du/dx)^2 = 2 kappa^2 (e^-u - 1 + u) integrated from the wall, u(0) = psi0, u(inf) = 0."""
    from scipy.integrate import solve_ivp

    s = np.sign(psi0)

    def rhs(_, y):
        return [-s * kappa * math.sqrt(max(2.0 * float(_f_boltzmann(y[0] if s * y[0] > 0 else 0.0)), 0.0))]

    sol = solve_ivp(rhs, (0.0, float(x.max())), [psi0], t_eval=np.sort(x), method="DOP853", rtol=1e-12,
                    atol=1e-14)
    out = np.empty_like(x)
    out[np.argsort(x)] = sol.y[0]
    return out


def _equilibrium_solve(comm, n, length, grading, psi0, species, name, cmax_over_c0=1e6):
    """Zero-flux equilibrium with one mobile cation over a fixed background (species = 1) or a
    symmetric cation/anion pair (species = 2), u(0) = psi0 (blocking wall), bulk at x = length
    (u = 0, w = 0). Continuation in psi0."""
    p = dict(eps=PSG["eps"], c0=PSG["c0"], cmax=PSG["c0"] * cmax_over_c0, rate=1.0)
    e0 = rest_offset(p["c0"], p["cmax"])
    msh = interval(comm, n, length, grading)
    W = _mixed(msh, 1 + species)
    sol = fem.Function(W)
    parts = ufl.split(sol)
    tests = ufl.TestFunctions(W)
    u, v = parts[0], tests[0]
    m = _measures(msh)
    cp = p["cmax"] * site_fraction(parts[1], u, e0)
    Jp = hopping_flux(parts[1], u, p["rate"], p["cmax"], e0, 0.0)
    if species == 1:
        rho = space_charge(cp, u, p["c0"], 0.0, 0.0, 1.0)
        F_t = -ufl.inner(Jp, ufl.grad(tests[1])) * m["dxF"]
    else:
        cm = p["cmax"] * site_fraction(parts[2], -u, e0)
        Jm = hopping_flux(parts[2], -u, p["rate"], p["cmax"], e0, 0.0)
        rho = space_charge(cp, u, cm, 0.0, 0.0, 1.0)          # c+ - c-
        F_t = (-ufl.inner(Jp, ufl.grad(tests[1])) - ufl.inner(Jm, ufl.grad(tests[2]))) * m["dxF"]
    F = p["eps"] * ufl.inner(ufl.grad(u), ufl.grad(v)) * m["dx"] - GAMMA * rho * v * m["dxL"] + F_t
    wall = fem.Constant(msh, default_scalar_type(0.0))
    at0 = lambda x: np.isclose(x[0], 0.0)  # noqa: E731
    atL = lambda x: np.isclose(x[0], length)  # noqa: E731
    bcs = [_const_bc(W, 0, wall, at0), _const_bc(W, 0, fem.Constant(msh, default_scalar_type(0.0)), atL)]
    for i in range(1, 1 + species):
        bcs.append(_const_bc(W, i, fem.Constant(msh, default_scalar_type(0.0)), atL))
    problem = newton(F, sol, bcs, name)
    steps = max(4, int(math.ceil(abs(psi0) / 4.0)))
    for k in range(1, steps + 1):
        wall.value = psi0 * k / steps
        solve(problem, f"{name} psi0 = {wall.value:.3g}")
    V = W.sub(0).collapse()[0]
    uh = sol.sub(0).collapse()
    chi = p1_indicator(V, 0.0)
    # consistent (variational) wall flux: int eps u' chi' - Gamma rho chi = -eps u'(0) = eps E(0)
    Ew = assemble(p["eps"] * ufl.inner(ufl.grad(u), ufl.grad(chi)) * m["dx"] - GAMMA * rho * chi * m["dxL"],
                  comm) / p["eps"]
    wh = sol.sub(1).collapse()
    x, un, wn = nodal(V, uh, wh)
    return dict(x=x, u=un, w=wn, E_wall=Ew, e0=e0, p=p, msh=msh)


@_timed
def poisson_boltzmann(quick: bool = False, comm=MPI.COMM_WORLD) -> Result:
    """Single mobile species over a fixed background at a blocking wall (accumulation): profile
    and surface field (Grahame) vs the first integral; symmetric Gouy-Chapman; depletion width."""
    c0, eps = PSG["c0"], PSG["eps"]
    kappa = math.sqrt(GAMMA * c0 / eps)          # 1/lambda_D (nm^-1), Boltzmann, one species
    lam = 1.0 / kappa
    checks, arrays, notes = [], {}, []
    n = 200 if quick else 400

    # --- accumulation, single species --------------------------------------------------------
    psi0 = -4.0
    r = _equilibrium_solve(comm, n, 20 * lam, geometric(6.0), psi0, 1, "pb1")
    u_exact = _pb_single_exact(r["x"], psi0, kappa)
    prof_err = float(np.max(np.abs(r["u"] - u_exact)) / abs(psi0))
    E_exact = np.sign(psi0) * kappa * math.sqrt(2.0 * _f_boltzmann(psi0))     # E(0) = -u'(0)
    checks.append(Check("single-species potential max|u - u_PB| / |psi0|", prof_err, 0.0, 0.01, "max"))
    checks.append(Check("single-species surface field (Grahame-type)", r["E_wall"], E_exact, 0.01, "rel", "kT/q/nm"))
    checks.append(Check("equilibrium w (zero flux) max|w|", float(np.max(np.abs(r["w"]))), 0.0, 1e-8, "max"))
    sigma = EPS0 * eps * V_T / L0 * abs(E_exact)
    notes.append(f"accumulation psi0 = {psi0} kT/q ({psi0 * V_T * 1e3:.0f} mV), c0 = 1e26 m^-3, eps_r = 4: "
                 f"lambda_D = {lam:.4f} nm, Grahame sigma = {sigma:.4g} C/m^2 "
                 f"(E_s^2 = 2 kappa^2 (e^-psi0 - 1 + psi0), single species over a fixed background)")
    arrays["accumulation"] = {"x": r["x"], "u": r["u"], "u_exact": u_exact}

    # --- symmetric two-species Gouy-Chapman ---------------------------------------------------
    psi0_gc = 4.0
    kappa2 = math.sqrt(2.0 * GAMMA * c0 / eps)
    r2 = _equilibrium_solve(comm, n, 20 / kappa2, geometric(6.0), psi0_gc, 2, "gc")
    gam = math.tanh(psi0_gc / 4.0)
    ex = np.exp(-kappa2 * r2["x"])
    u_gc = 2.0 * np.log((1.0 + gam * ex) / (1.0 - gam * ex))
    gc_err = float(np.max(np.abs(r2["u"] - u_gc)) / abs(psi0_gc))
    E_gc = math.sqrt(8.0 * GAMMA * c0 / eps) * math.sinh(psi0_gc / 2.0)
    checks.append(Check("Gouy-Chapman potential max|u - u_GC| / |psi0|", gc_err, 0.0, 0.01, "max"))
    checks.append(Check("Gouy-Chapman surface field (Grahame)", r2["E_wall"], E_gc, 0.01, "rel", "kT/q/nm"))
    arrays["gouy_chapman"] = {"x": r2["x"], "u": r2["u"], "u_exact": u_gc}

    # --- depletion width ------------------------------------------------------------------------
    Vdep = 2.0 / V_T                                            # 2 V
    Ldep = 30 * lam
    r3 = _equilibrium_solve(comm, 300 if quick else 600, Ldep, None, Vdep, 1, "dep")
    e0 = r3["e0"]
    cmax = r3["p"]["cmax"]
    # u where c = c0/2 (w = 0): logit(theta) = -u - e0
    th = 0.5 * c0 / cmax
    u_half = -e0 - math.log(th / (1.0 - th))
    xs, us = r3["x"], r3["u"]
    k = int(np.argmax(us <= u_half))                           # first node past the crossing
    x_half = float(xs[k - 1] + (u_half - us[k - 1]) * (xs[k] - xs[k - 1]) / (us[k] - us[k - 1]))
    from scipy.integrate import quad

    x_half_exact = quad(lambda s: 1.0 / (kappa * math.sqrt(2.0 * float(_f_boltzmann(s)))), u_half, Vdep,
                        limit=200, epsabs=1e-12, epsrel=1e-12)[0]
    W_dep = math.sqrt(2.0 * eps * Vdep / (GAMMA * c0))
    W_corr = math.sqrt(2.0 * eps * (Vdep - 1.0) / (GAMMA * c0))
    checks.append(Check("depletion width (c = c0/2) vs sqrt(2 eps V / q c0)", x_half, W_dep, 0.10, "rel", "nm"))
    checks.append(Check("depletion width (c = c0/2) vs exact first integral", x_half, x_half_exact, 0.01, "rel", "nm"))
    notes.append(f"depletion at V = 2 V = {Vdep:.1f} kT/q: W_depletion = {W_dep:.4f} nm, with the -kT/q correction "
                 f"sqrt(2 eps (V - kT/q)/q c0) = {W_corr:.4f} nm, exact c = c0/2 point {x_half_exact:.4f} nm "
                 f"(depletion approximation overestimates by {100 * (W_dep / x_half_exact - 1):.1f} %: the -kT/q "
                 f"term and the Debye tail, both O(sqrt(kT/qV)) relative)")
    c_nodes = cmax * 1.0 / (1.0 + np.exp(-(r3["w"] - us - e0)))
    arrays["depletion"] = {"x": xs, "u": us, "c": c_nodes, "c0": c0, "x_half": x_half, "W_dep": W_dep,
                           "x_half_exact": x_half_exact}
    return Result("poisson_boltzmann", "Poisson-Boltzmann: single species (accumulation, depletion), Gouy-Chapman",
                  checks, arrays, notes, {"lambda_D_nm": lam, "n": n, "c0": c0, "eps_r": eps})


# =================================================================================================
# 3. Linear-response charging between blocking electrodes
# =================================================================================================
def _charging_tau_exact(lam, L, D):
    """Slowest relaxation time of the linearised single-species cell with blocking electrodes:
    n_t = D (n'' - kappa^2 n); odd mode n ~ sinh(m xi), m^2 = kappa^2 - 1/(D tau);
    zero flux and u(+-L/2) = 0 give 1/(D tau) = kappa^2 tanh(m L/2) / (m L/2)."""
    from scipy.optimize import brentq

    kappa, ell = 1.0 / lam, 0.5 * L

    def fn(tau):
        m = math.sqrt(kappa**2 - 1.0 / (D * tau))
        return 1.0 / (D * tau) - kappa**2 * math.tanh(m * ell) / (m * ell)

    tau0 = lam * L / (2 * D)
    return brentq(fn, 0.5 * tau0, 2.0 * tau0, xtol=1e-14 * tau0, rtol=1e-13)


@_timed
def linear_charging(quick: bool = False, comm=MPI.COMM_WORLD) -> Result:
    """Small voltage step across a PSG slab between blocking electrodes; exponential decay of the
    displacement current: tau = lambda_D L / (2 D)."""
    eps, c0, rate = PSG["eps"], PSG["c0"], PSG["rate"]
    cmax = 100.0 * c0                                   # dilute (theta0 = 1e-3)
    e0 = rest_offset(c0, cmax)
    chi = c0 * (1.0 - c0 / cmax)                        # dc/d(w - u) at rest
    lam = math.sqrt(eps / (GAMMA * chi))
    L = 10.0                                            # the reference electrolyte thickness (nm)
    tau_est = lam * L / (2.0 * rate)
    tau_exact = _charging_tau_exact(lam, L, rate)
    dV = 0.01                                           # kT/q
    n = 200 if quick else 400
    steps_per_tau = 40 if quick else 80
    msh = interval(comm, n, L, two_sided(3.0))
    W = _mixed(msh)
    sol, sol_n = fem.Function(W), fem.Function(W)
    u, w = ufl.split(sol)
    u_n, w_n = ufl.split(sol_n)
    v, q = ufl.TestFunctions(W)
    m = _measures(msh)
    dt = fem.Constant(msh, default_scalar_type(tau_est / steps_per_tau))
    c = cmax * site_fraction(w, u, e0)
    c_n = cmax * site_fraction(w_n, u_n, e0)
    rho = space_charge(c, u, c0, 0.0, 0.0, 1.0)
    J = hopping_flux(w, u, rate, cmax, e0, PSG["a_half"])
    F = (eps * ufl.inner(ufl.grad(u), ufl.grad(v)) * m["dx"] - GAMMA * rho * v * m["dxL"]
         + (c - c_n) * q * m["dxL"] - dt * ufl.inner(J, ufl.grad(q)) * m["dxF"])
    bcs = [_const_bc(W, 0, fem.Constant(msh, default_scalar_type(dV)), lambda x: np.isclose(x[0], 0.0)),
           _const_bc(W, 0, fem.Constant(msh, default_scalar_type(0.0)), lambda x: np.isclose(x[0], L))]
    problem = newton(F, sol, bcs, "charging", {"snes_atol": 1e-13, "snes_rtol": 1e-11, "snes_stol": 1e-13})
    V = W.sub(0).collapse()[0]
    chi0 = p1_indicator(V, 0.0)
    Qform = fem.form(eps * ufl.inner(ufl.grad(u), ufl.grad(chi0)) * m["dx"] - GAMMA * rho * chi0 * m["dxL"])
    charge = lambda: comm.allreduce(fem.assemble_scalar(Qform), op=MPI.SUM)  # noqa: E731
    nsteps = 5 * steps_per_tau
    t, Q = [0.0], [charge()]
    for k in range(1, nsteps + 1):
        sol_n.x.array[:] = sol.x.array
        solve(problem, f"charging step {k}")
        t.append(k * dt.value)
        Q.append(charge())
    t, Q = np.array(t), np.array(Q)
    I = np.diff(Q) / dt.value                           # displacement current (per area, scaled)
    tI = t[1:]
    win = (tI >= 1.5 * tau_est) & (tI <= 4.0 * tau_est)
    slope = np.polyfit(np.arange(len(I))[win], np.log(np.abs(I[win])), 1)[0]
    r = math.exp(slope)                                 # backward Euler: I_k ~ r^k, r = 1/(1 + dt/tau)
    tau_fe = dt.value * r / (1.0 - r)
    tau_naive = -1.0 / np.polyfit(tI[win], np.log(np.abs(I[win])), 1)[0]
    checks = [Check("tau vs lambda_D L / (2 D)", tau_fe, tau_est, 0.10, "rel", "s"),
              Check("tau vs exact linear eigenmode", tau_fe, tau_exact, 0.02, "rel", "s")]
    notes = [f"PSG slab L = {L} nm, D = 3.2e-17 m^2/s, c0 = 1e26 m^-3 (theta0 = 1e-3), lambda_D = {lam:.4f} nm "
             f"(L/lambda_D = {L / lam:.1f}), dV = {dV} kT/q",
             "single mobile species over a fixed background between two blocking electrodes: bulk resistance "
             "L lambda_D^2/(eps D) in series with two diffuse-layer capacitances eps/lambda_D, so tau = lambda_D L/(2D) "
             "(Bazant-Thornton-Ajdari tau_c = lambda_D (L/2)/D with L/2 the half-width); the exact slowest mode "
             f"solves 1/(D tau) = kappa^2 tanh(mL/2)/(mL/2), tau_exact = {tau_exact:.5g} s "
             f"({100 * (tau_exact / tau_est - 1):+.2f} % vs lambda_D L/2D: the O(lambda_D/L) correction)",
             f"fit on t in [1.5, 4] tau of the backward-Euler decay ratio r: tau = dt r/(1 - r) "
             f"(removes the O(dt/tau) time error; plain exponential fit gives {tau_naive:.5g} s)"]
    return Result("linear_charging", "Linear-response charging between blocking electrodes", checks,
                  {"t": t, "Q": Q, "t_I": tI, "I": I, "tau_fe": tau_fe, "tau_est": tau_est, "window": [1.5, 4.0]},
                  notes, {"L_nm": L, "lambda_D_nm": lam, "dt_s": float(dt.value), "steps": nsteps, "n": n})


# =================================================================================================
# 4. Uniform-field hopping current
# =================================================================================================
def _uniform_field_flux(comm, E, a_half, c_star, cmax, rate, L=5.0, n=50):
    e0 = rest_offset(c_star, cmax)
    msh = interval(comm, n, L)
    V = fem.functionspace(msh, ("Lagrange", 1))
    X = ufl.SpatialCoordinate(msh)
    u = fem.Function(V)
    u.interpolate(lambda x: -E * x[0])                 # prescribed linear potential (field +E along x)
    w = fem.Function(V)
    q = ufl.TestFunction(V)
    m = _measures(msh)
    J = hopping_flux(w, u, rate, cmax, e0, a_half)
    F = -ufl.inner(J, ufl.grad(q)) * m["dxF"]
    logit = math.log(c_star / (cmax - c_star))
    wb = fem.Function(V)
    wb.interpolate(lambda x: logit + e0 - E * x[0])
    dofs = fem.locate_dofs_geometrical(V, lambda x: np.isclose(x[0], 0.0) | np.isclose(x[0], L))
    bc = fem.dirichletbc(wb, dofs)
    # initial guess: the boundary interpolant plus a bump (Newton has to find the uniform density)
    w.interpolate(lambda x: logit + e0 - E * x[0] + 0.5 * np.sin(np.pi * x[0] / L))
    problem = newton(F, w, [bc], "field")
    solve(problem, f"uniform field E = {E}")
    J_mean = assemble(J[0] * m["dxF"], comm) / L
    chi = p1_indicator(V, L)
    J_out = assemble(ufl.inner(J, ufl.grad(chi)) * m["dxF"], comm)       # consistent outflow J(L) at x = L
    del X
    return J_mean, J_out


@_timed
def uniform_field(quick: bool = False, comm=MPI.COMM_WORLD) -> Result:
    """Steady hopping current through a uniform field: J = 2 D c (1 - theta)/a sinh(a E/2), over
    x = aE/2 from 0.1 to 15; low-field limit equal to Nernst-Planck."""
    a_half, rate, cmax, c_star = PSG["a_half"], 1.0, 1.0, 0.1
    theta = c_star / cmax
    xs = np.logspace(-1, math.log10(15.0), 8 if quick else 15)
    Js, Jo, Jx = [], [], []
    for xv in xs:
        E = xv / a_half
        jm, jo = _uniform_field_flux(comm, E, a_half, c_star, cmax, rate)
        Js.append(jm)
        Jo.append(jo)
        Jx.append(rate * c_star * (1 - theta) * math.sinh(xv) / a_half)
    Js, Jo, Jx = map(np.array, (Js, Jo, Jx))
    rel = float(np.max(np.abs(Js / Jx - 1.0)))
    rel_out = float(np.max(np.abs(Jo / Jx - 1.0)))
    # low field: a/2 = 0.28 nm at x = 0.05 vs a = 0 (ordinary Nernst-Planck)
    E_low = 0.05 / a_half
    j_hop, _ = _uniform_field_flux(comm, E_low, a_half, c_star, cmax, rate)
    j_np, _ = _uniform_field_flux(comm, E_low, 0.0, c_star, cmax, rate)
    j_np_exact = rate * c_star * (1 - theta) * E_low
    checks = [Check("max rel. error of J vs sinh law (x = 0.1..15)", rel, 0.0, 0.01, "max"),
              Check("max rel. error of boundary outflow vs sinh law", rel_out, 0.0, 0.01, "max"),
              Check("decades of current covered (>= 4)", float(np.log10(Jx.max() / Jx.min())), 4.0, 0.0, "ge"),
              Check("low field (x = 0.05): J_hopping / J_NP - 1", abs(j_hop / j_np - 1), 0.0, 1e-3, "max"),
              Check("a = 0 flux vs Nernst-Planck D c (1-theta) E", j_np, j_np_exact, 1e-8, "rel")]
    notes = [f"slab 5 nm, c = 1e26 m^-3 at both ends (theta = {theta}), a = 0.56 nm; J in scaled units D c (1-theta) "
             f"sinh(x)/(a/2) with D/L0^2 = 1/s; SI current density = q C0 L0 J_scaled (A/m^2 per unit)",
             f"low-field deviation x^2/6 = {0.05**2 / 6:.2e} expected"]
    return Result("uniform_field", "Uniform-field hopping current (sinh law) and its Nernst-Planck limit", checks,
                  {"x": xs, "J": Js, "J_out": Jo, "J_exact": Jx, "J_np_linear": rate * c_star * (1 - theta) * xs / a_half},
                  notes, {"a_half_nm": a_half, "c": c_star, "cmax": cmax})


# =================================================================================================
# 5. Cottrell transient
# =================================================================================================
@_timed
def cottrell(quick: bool = False, comm=MPI.COMM_WORLD) -> Result:
    """a = 0, E = 0 slab; density stepped to ~0 at x = 0: i(t) = (c* - c_s) sqrt(D / (pi t))."""
    L, rate, cmax, c_star = 10.0, 1.0, 1.0, 0.01
    c_s = 1e-6 * c_star
    e0 = rest_offset(c_star, cmax)
    n = 300 if quick else 600
    msh = interval(comm, n, L, geometric(4.0 if quick else 5.0))
    V = fem.functionspace(msh, ("Lagrange", 1))
    w, w_n, w_nm1 = fem.Function(V), fem.Function(V), fem.Function(V)
    u = fem.Function(V)                                  # E = 0
    q = ufl.TestFunction(V)
    m = _measures(msh)
    dt = fem.Constant(msh, default_scalar_type(1.0))
    bdf = [fem.Constant(msh, default_scalar_type(v)) for v in (1.0, -1.0, 0.0)]
    cf = lambda ww: cmax * site_fraction(ww, u, e0)  # noqa: E731
    storage = bdf[0] * cf(w) + bdf[1] * cf(w_n) + bdf[2] * cf(w_nm1)
    J = hopping_flux(w, u, rate, cmax, e0, 0.0)
    F = storage * q * m["dxL"] - dt * ufl.inner(J, ufl.grad(q)) * m["dxF"]
    w_s = math.log(c_s / (cmax - c_s)) + e0
    dofs = fem.locate_dofs_geometrical(V, lambda x: np.isclose(x[0], 0.0))
    bc = fem.dirichletbc(default_scalar_type(w_s), dofs, V)
    w.x.array[dofs] = w_s              # initial state: c* everywhere, c_s on the boundary vertex
    problem = newton(F, w, [bc], "cottrell", {"snes_atol": 1e-16, "snes_rtol": 1e-10})
    chi = p1_indicator(V, 0.0)
    R = fem.form(storage / dt * chi * m["dxL"] - ufl.inner(J, ufl.grad(chi)) * m["dxF"])   # = J_x(0)
    t, dt_prev = 0.0, None
    t_end, dt0, growth = 2.0, 1e-7, 1.04 if quick else 1.02
    ts, flux = [], []
    while t < t_end * (1 - 1e-12):
        h = min(dt0 if dt_prev is None else dt_prev * growth, t_end - t)
        if dt_prev is None:
            coeffs = (1.0, -1.0, 0.0)
        else:
            wr = h / dt_prev
            coeffs = ((1 + 2 * wr) / (1 + wr), -(1 + wr), wr * wr / (1 + wr))
        for cst, val in zip(bdf, coeffs):
            cst.value = val
        dt.value = h
        w_nm1.x.array[:] = w_n.x.array
        w_n.x.array[:] = w.x.array
        solve(problem, f"Cottrell t = {t + h:.3g}")
        t += h
        dt_prev = h
        ts.append(t)
        flux.append(-comm.allreduce(fem.assemble_scalar(R), op=MPI.SUM))
    ts, flux = np.array(ts), np.array(flux)
    exact = (c_star - c_s) * np.sqrt(rate / (np.pi * ts))
    t1, t2 = 0.01, 1.0                                   # sqrt(D t) from L/100 to L/10
    win = (ts >= t1) & (ts <= t2)
    rel = float(np.max(np.abs(flux[win] / exact[win] - 1.0)))
    checks = [Check("max rel. error of i(t) vs Cottrell on t in [0.01, 1] s (2 decades)", rel, 0.0, 0.03, "max")]
    notes = [f"L = {L} nm, D = 1 nm^2/s (scaled rate), c* = {c_star} (1e25 m^-3), c(0) = {c_s:g} (w Dirichlet "
             f"{w_s:.2f} kT): Fick's law is exact for site-limited statistics at E = 0, so the reference is "
             "(c* - c_s) sqrt(D/(pi t)); sqrt(D t) = 0.1-1 nm << L",
             "flux = consistent (variational) reaction at the x = 0 vertex; variable-step BDF2, dt/t = "
             f"{growth - 1:.2f}"]
    return Result("cottrell", "Cottrell transient (E = 0, a = 0)", checks,
                  {"t": ts, "i": flux, "i_exact": exact, "window": [t1, t2]}, notes,
                  {"n": n, "steps": len(ts)})


# =================================================================================================
# 6. Tafel slope of the Butler-Volmer interface law
# =================================================================================================
@_timed
def tafel(quick: bool = False, comm=MPI.COMM_WORLD) -> Result:
    """j(dw) from ``butler_volmer`` assembled over an interior facet of a 2-cell mesh; Tafel slope
    ln(10) kT/(alpha q) per decade for alpha = 0.3, 0.5, 0.7; j(0) = 0."""
    msh = dmesh.create_interval(comm, 2, [0.0, 1.0])
    msh.topology.create_connectivity(0, 1)
    fi = dmesh.locate_entities(msh, 0, lambda x: np.isclose(x[0], 0.5))
    ft = dmesh.meshtags(msh, 0, fi, np.full(fi.size, 1, np.int32))
    dS = ufl.Measure("dS", domain=msh, subdomain_data=ft)(1)
    V = fem.functionspace(msh, ("Lagrange", 1))
    w1, w2 = fem.Function(V), fem.Function(V)
    alpha = fem.Constant(msh, default_scalar_type(0.5))
    j0 = 1e-3
    form = fem.form(butler_volmer(w1("+") - w2("+"), j0, alpha) * dS)
    dws = np.linspace(-20.0, 20.0, 81 if quick else 161)
    checks, arrays = [], {"dw": dws}
    for a in (0.3, 0.5, 0.7):
        alpha.value = a
        js = []
        for dw in dws:
            w1.x.array[:] = 0.5 * dw + 0.3                # an arbitrary common offset
            w2.x.array[:] = -0.5 * dw + 0.3
            js.append(comm.allreduce(fem.assemble_scalar(form), op=MPI.SUM))
        js = np.array(js)
        arrays[f"j_alpha{a}"] = js
        an = (dws >= 10.0)
        ca = (dws <= -10.0)
        s_an = np.polyfit(dws[an], np.log10(js[an]), 1)[0]       # decades per kT
        s_ca = np.polyfit(dws[ca], np.log10(-js[ca]), 1)[0]
        tafel_mV = V_T / s_an * 1e3
        checks.append(Check(f"anodic Tafel slope alpha = {a}", tafel_mV, math.log(10) * V_T / a * 1e3, 0.01,
                            "rel", "mV/dec"))
        checks.append(Check(f"cathodic Tafel slope alpha = {a}", -V_T / s_ca * 1e3,
                            math.log(10) * V_T / (1 - a) * 1e3, 0.01, "rel", "mV/dec"))
        j_zero = js[np.argmin(np.abs(dws))]
        checks.append(Check(f"|j(0)| / j0 alpha = {a}", abs(j_zero) / j0, 0.0, 1e-14, "max"))
    notes = [f"T = {T_REF} K: ln(10) kT/q = {math.log(10) * V_T * 1e3:.2f} mV; alpha = 0.5 gives "
             f"{2 * math.log(10) * V_T * 1e3:.1f} mV/decade (118 mV at 298 K); fit on |dw| in [10, 20] kT"]
    return Result("tafel", "Tafel slope of the Butler-Volmer interface law", checks, arrays, notes, {"j0": j0})


# =================================================================================================
# 7. Arrhenius
# =================================================================================================
@_timed
def arrhenius_check(quick: bool = False, comm=MPI.COMM_WORLD) -> Result:
    """arrhenius(350 K) / arrhenius(300 K) = exp(-Ea/k (1/350 - 1/300))."""
    checks, Ts = [], np.linspace(250.0, 400.0, 31)
    arrays = {"T": Ts}
    for ea in (0.2, 0.5, 0.8):
        ratio = arrhenius(1.0, ea, 350.0, 300.0) / arrhenius(1.0, ea, 300.0, 300.0)
        exact = math.exp(-ea * Q_E / K_B * (1.0 / 350.0 - 1.0 / 300.0))
        checks.append(Check(f"rate(350 K)/rate(300 K), Ea = {ea} eV", ratio, exact, 1e-6, "rel"))
        arrays[f"ratio_Ea{ea}"] = np.array([arrhenius(1.0, ea, T, 300.0) for T in Ts])
    notes = ["exact reference uses k = K_B/Q_E from scaling.py (CODATA); physics.arrhenius hard-codes "
             "k = 8.617333262e-5 eV/K (the same value to 10 digits)"]
    return Result("arrhenius", "Arrhenius scaling of activated rates", checks, arrays, notes)


# =================================================================================================
PROBLEMS = {
    "mms": mms_convergence,
    "poisson_boltzmann": poisson_boltzmann,
    "linear_charging": linear_charging,
    "uniform_field": uniform_field,
    "cottrell": cottrell,
    "tafel": tafel,
    "arrhenius": arrhenius_check,
}

__all__ = ["PROBLEMS", "mms_convergence", "poisson_boltzmann", "linear_charging", "uniform_field", "cottrell",
           "tafel", "arrhenius_check", "logistic"]
