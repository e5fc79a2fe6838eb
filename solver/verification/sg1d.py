"""Independent 1-D Scharfetter-Gummel finite-volume solver of the protonic stack.

Same physics as :mod:`protonfem.solver.model` (see its docstring), different numerics, and no
DOLFINx/PETSc: NumPy, SciPy and the pure-Python parts of protonfem (case, protocol, scaling
constants, mesh grading) only. It exists to check the FE solution.

Unknowns per node i: the scaled potential ``u`` and the proton electrochemical potential ``w`` (kT
units, continuous across the interfaces). The proton density is a function of them, per region::

    c = c_max S(l),   l = w - u - e0,   S(l) = 1/(1+exp(-l)),   e0 = -logit(c0/c_max)

Space: the nodes of the FE mesh (:func:`protonfem.meshes.stack_points`), interfaces are nodes; the
control volume of a node is its dual cell, split into one half-element per adjacent element, each
with its own region's parameters (so the density jumps across an interface at equal ``w``). Storage
and space charge are integrated half-cell by half-cell at the node ("lumped"), which makes the
Poisson rows identical to the FE's P1 + vertex-quadrature rows in 1-D.

Edge flux (the scheme to check against Galerkin FE). With the activity ``a = theta/(1-theta) =
exp(l)`` the site-limited, sinh-enhanced flux is exactly::

    J = -D c (1-theta) [w' + (g-1) u'] = -D c_max (1-theta)^2 [a' + a psi'],   psi' = g u'

On an edge (one region, length h) the drift potential difference is taken from the edge field,
``dpsi = g(x) du = (2h/a_hop) sinh(a_hop du / 2h)`` (``du`` for a_hop = 0), and the activity part is
integrated exactly along the edge at constant drift (Scharfetter-Gummel exponential fitting)::

    J_ij = (D c_max / h) * beta_ij * [B(dpsi) a_i - B(-dpsi) a_j],      B(x) = x/(e^x - 1)

with the blocking factor ``beta = (1-theta)^2`` averaged with the upwind weights of the same
exponential fitting, ``beta_ij = S(-dpsi) beta_i + S(dpsi) beta_j`` (= B(dpsi)/(B(dpsi)+B(-dpsi))
weighting). Properties: (i) the discrete equilibrium a_j = a_i exp(-dpsi), i.e. w_i = w_j at g = 1, has
zero flux exactly, whatever beta; (ii) dilute limit (beta -> 1): the classical SG flux; (iii)
drift limit |dpsi| >> 1: the upwind flux D c_max |psi'| theta_up (1 - theta_up); (iv) diffusion
limit: -D c_max (theta_j - theta_i)/h to second order. It is stable for any |dpsi| (the Bernoulli
function is evaluated without overflow; 10 V on 10 nm gives |dpsi| ~ 1e3-1e5 per edge).

Time: variable-step BDF2 (backward Euler for the first step after every breakpoint), full Newton
on (u, w) with the analytic sparse Jacobian (scipy.sparse, spsolve), step rejection on Newton
failure, local-error control against a polynomial predictor (on u, w in kT, and on the protons
held by each control volume: the kT norm alone misses the slow decay of a few injected protons
during a rest, which is what the read-out charge measures), exact landing on every waveform
breakpoint with a restart at ``dt_initial``. The storage term is a linear combination of the
half-cell densities and the fluxes telescope, so the proton inventory changes only by the Newton
residual (kept below ``transport_tolerance`` x inventory per step).

Units inside: nm, 1e27 m^-3, kT/q, seconds (the FE's :mod:`protonfem.solver.scaling`).
"""
from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp
from scipy.sparse.linalg import spsolve

from protonfem.meshes.grading import stack_points
from protonfem.solver.case import Case, Conductivity, load_case
from protonfem.solver.protocol import Waveform
from protonfem.solver.scaling import C0, EPS0, K_B, L0, Q_E

__all__ = ["ScharfetterGummel1D", "SGFailure", "run_reference_pulse", "bernoulli", "conductivity"]

REGIONS = ("channel", "electrolyte", "reservoir")
#: sinh argument beyond which the drift potential continues linearly (the FE caps g at x = 300)
X_CAP = 300.0
#: exponent clip of the activity exp(l) (never reached by a physical state; protects Newton iterates)
L_CLIP = 600.0


class SGFailure(RuntimeError):
    """The SG time integration cannot proceed."""


# ----------------------------------------------------------------------------------------------
def logistic(x):
    """1/(1+exp(-x)) without overflow."""
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def bernoulli(x):
    """B(x) = x/(exp(x)-1) and B'(x), for any real x (no overflow, exact limits)."""
    x = np.asarray(x, dtype=float)
    small = np.abs(x) < 1e-4
    xs = np.where(small, 1.0, x)
    with np.errstate(over="ignore", invalid="ignore"):
        em1 = np.expm1(np.minimum(xs, 745.0))
        b = np.where(np.isinf(em1), 0.0, xs / em1)
    x0 = np.where(small, x, 0.0)
    b = np.where(small, 1.0 - 0.5 * x0 + x0 * x0 / 12.0 - x0**4 / 720.0, b)
    db = np.where(small, -0.5 + x0 / 6.0 - x0**3 / 180.0, b * (1.0 - b - xs) / xs)
    return b, db


def conductivity(law: Conductivity, c):
    """sigma [S/m] of the channel for proton densities c [m^-3] (same laws as the FE read-out)."""
    c = np.asarray(c, dtype=float)
    if law.law == "power":
        return law.reference_conductivity * (c / law.reference_density) ** law.exponent
    if law.law == "exponential":
        return law.reference_conductivity * np.exp(np.minimum((c - law.reference_density) / law.density_scale, 700.0))
    return np.exp(np.interp(np.log(c), np.log(law.densities), np.log(law.conductivities)))


def _diffusivity(mat, temperature: float) -> float:
    """Diffusivity of a material at the case temperature [m^2/s] (Arrhenius where given)."""
    if hasattr(mat, "diffusivity_at"):
        return float(mat.diffusivity_at(temperature))
    ea = getattr(mat, "activation_energy", 0.0) or 0.0
    t_ref = getattr(mat, "reference_temperature", temperature)
    k_ev = 8.617333262e-5
    return float(mat.diffusivity) * math.exp(-ea / k_ev * (1.0 / temperature - 1.0 / t_ref))


# ----------------------------------------------------------------------------------------------
class ScharfetterGummel1D:
    """1-D SG finite-volume model of one case (its geometry, materials, mesh and protocol).

    Keyword options (defaults in brackets): ``z`` node coordinates in metres [the FE mesh nodes];
    ``lte_tolerance`` local error per step in kT units [1e-3]; ``dt_initial`` [case]; ``dt_max``
    [case]; ``growth`` largest step growth [2]; ``bdf2`` [True]; ``newton_max_it`` [30];
    ``transport_tolerance`` [case]; ``potential_tolerance`` [case]; ``inventory_tolerance`` local
    error per step of the protons held by the control volumes, device total [1e-3 protons].
    """

    def __init__(self, case: Case | str | Path, *, z: np.ndarray | None = None, lte_tolerance: float = 1e-3,
                 dt_initial: float | None = None, dt_max: float | None = None, growth: float = 2.0,
                 bdf2: bool = True, newton_max_it: int | None = None, transport_tolerance: float | None = None,
                 potential_tolerance: float | None = None, max_change: float = 2.0,
                 inventory_tolerance: float = 1e-3):
        if not isinstance(case, Case):
            case = load_case(case)
        self.case = case
        g, m, s = case.geometry, case.materials, case.solver
        self.V_T = K_B * case.conditions.temperature / Q_E
        self.Gamma = Q_E * C0 * L0**2 / (EPS0 * self.V_T)
        self.area = g.channel_width * g.channel_length
        self.count = C0 * L0 * self.area  # protons per scaled (nm * 1e27 m^-3) inventory unit

        # ---- nodes and elements -----------------------------------------------------------
        layers = g.layers()
        if z is None:
            z, brk = stack_points(layers, case.mesh.h_min, case.mesh.h_max, case.mesh.growth)
        else:
            z = np.asarray(z, dtype=float)
            bz = np.concatenate([[0.0], np.cumsum([t for _, t in layers])])
            brk = np.array([int(np.argmin(np.abs(z - b))) for b in bz])
            if not np.allclose(z[brk], bz, rtol=0, atol=1e-15):
                raise ValueError("the given nodes must contain every layer boundary")
        self.z_m = z
        self.z = z / L0
        self.break_index = brk
        self.n = n = len(z)
        self.h = np.diff(self.z)
        ne = n - 1
        region = np.empty(ne, dtype=int)
        names = [name for name, _ in layers]
        for k, name in enumerate(names):
            region[brk[k]:brk[k + 1]] = REGIONS.index(name)
        self.region = region

        res, ele, chn = m.reservoir, m.electrolyte, m.channel
        self._check_supported(case)
        T = case.conditions.temperature
        par = {
            "reservoir": dict(eps=1.0, D=_diffusivity(res, T), cmax=res.site_density, c0=res.proton_density,
                              cfix=0.0, nd=0.0, n0=0.0, charged=0.0, a=0.0),
            "electrolyte": dict(eps=ele.relative_permittivity, D=_diffusivity(ele, T), cmax=ele.site_density,
                                c0=ele.proton_density, cfix=ele.background, nd=0.0, n0=0.0, charged=1.0,
                                a=ele.hopping_distance),
            "channel": dict(eps=chn.relative_permittivity, D=_diffusivity(chn, T), cmax=chn.site_density,
                            c0=chn.proton_density, cfix=0.0, nd=chn.donor_density,
                            n0=chn.proton_density + chn.donor_density, charged=1.0, a=0.0),
        }

        def per_edge(fn):
            return np.array([fn(par[REGIONS[r]]) for r in region], dtype=float)

        self.eps = per_edge(lambda p: p["eps"])
        self.rate = per_edge(lambda p: p["D"] / L0**2)
        self.cmax = per_edge(lambda p: p["cmax"] / C0)
        self.e0 = per_edge(lambda p: -math.log((p["c0"] / p["cmax"]) / (1.0 - p["c0"] / p["cmax"])))
        self.cfix = per_edge(lambda p: p["cfix"] / C0)
        self.nd = per_edge(lambda p: p["nd"] / C0)
        self.n0 = per_edge(lambda p: p["n0"] / C0)
        self.charged = per_edge(lambda p: p["charged"])
        self.a_half = per_edge(lambda p: 0.5 * p["a"] / L0)
        self.K = self.rate * self.cmax / self.h
        self.params = par

        # Dirichlet nodes: every reservoir node (the reservoir/electrolyte interface included).
        is_res = np.zeros(n, dtype=bool)
        for e in np.nonzero(region == REGIONS.index("reservoir"))[0]:
            is_res[e] = is_res[e + 1] = True
        self.gate_nodes = is_res

        # ---- sparse pattern (interleaved unknowns: u_i -> 2i, w_i -> 2i+1) ---------------------
        i = np.arange(ne)
        j = i + 1
        U, W = 2 * np.arange(n), 2 * np.arange(n) + 1
        rows, cols = [], []
        # edge blocks: rows (u_i, u_j, w_i, w_j) x cols (u_i, u_j, w_i, w_j)
        loc_rows = [U[i], U[j], W[i], W[j]]
        loc_cols = [U[i], U[j], W[i], W[j]]
        for r in loc_rows:
            for c in loc_cols:
                rows.append(r)
                cols.append(c)
        self._rows = np.concatenate(rows)
        self._cols = np.concatenate(cols)
        self._dir_rows = U[is_res]
        keep = ~np.isin(self._rows, self._dir_rows)
        self._keep = keep
        self._rows_k = np.concatenate([self._rows[keep], self._dir_rows])
        self._cols_k = np.concatenate([self._cols[keep], self._dir_rows])
        self.N = 2 * n

        # ---- time stepping settings ------------------------------------------------------------
        self.lte_tolerance = lte_tolerance
        self.inventory_tolerance = inventory_tolerance
        self.dt_initial = dt_initial if dt_initial is not None else s.dt_initial
        self.dt_max = dt_max if dt_max is not None else s.dt_max
        self.dt_min = s.dt_min
        self.growth = growth
        self.bdf2 = bdf2
        self.max_change = max_change
        self.newton_max_it = newton_max_it if newton_max_it is not None else s.newton_max_it
        self.transport_tolerance = transport_tolerance if transport_tolerance is not None else s.transport_tolerance
        self.potential_tolerance = potential_tolerance if potential_tolerance is not None else s.potential_tolerance

        self.waveform = Waveform(case.protocol)
        self.x = np.zeros(self.N)
        self.t = 0.0
        self.stats = dict(accepted=0, rejected=0, newton_iterations=0)
        self._equilibrated = False
        self._next_pulse = 0
        self._restart()

    @staticmethod
    def _check_supported(case: Case):
        """The SG check covers the closed stack with continuous interfaces, constant (Arrhenius)
        diffusivities and a gate held at rest_voltage between pulses; anything else is refused."""
        m = case.materials
        problems = []
        if getattr(m.reservoir, "kind", "finite") != "finite":
            problems.append("materials.reservoir.kind must be 'finite'")
        if getattr(m.channel, "diffusivity_table", None) is not None:
            problems.append("materials.channel.diffusivity_table is not modelled")
        ifs = getattr(case, "interfaces", None)
        if ifs is not None:
            for name in ("reservoir_electrolyte", "electrolyte_channel"):
                if getattr(getattr(ifs, name), "kinetics", "continuous") != "continuous":
                    problems.append(f"interfaces.{name}.kinetics must be 'continuous'")
        if getattr(case.protocol, "rest_gate", "held") != "held":
            problems.append("protocol.rest_gate must be 'held' (the SG model holds the gate at rest_voltage)")
        if case.geometry.dimension != 1:
            problems.append("geometry.dimension must be 1")
        if problems:
            raise NotImplementedError("SG 1-D check: " + "; ".join(problems))

    # ------------------------------------------------------------------------------------------
    # densities and inventories
    def _half_densities(self, x):
        """c at both ends of every element, with the element's region parameters: (c_left, c_right)."""
        u, w = x[0::2], x[1::2]
        cl = self.cmax * logistic(w[:-1] - u[:-1] - self.e0)
        cr = self.cmax * logistic(w[1:] - u[1:] - self.e0)
        return cl, cr

    def _storage(self, x):
        """Lumped proton content of every node's control volume (scaled units)."""
        cl, cr = self._half_densities(x)
        m = np.zeros(self.n)
        m[:-1] += 0.5 * self.h * cl
        m[1:] += 0.5 * self.h * cr
        return m

    def inventories(self, x=None) -> dict[str, float]:
        """Protons per region (device totals: per-area value times channel width x length)."""
        x = self.x if x is None else x
        cl, cr = self._half_densities(x)
        per_edge = 0.5 * self.h * (cl + cr)
        return {name: float(per_edge[self.region == k].sum()) * self.count for k, name in enumerate(REGIONS)}

    def _inventory_scaled(self, x) -> float:
        cl, cr = self._half_densities(x)
        return float((0.5 * self.h * (cl + cr)).sum())

    def density(self, x=None):
        """Proton density [m^-3] at the nodes, (below, above) each node: two arrays of length n
        (an interface node has two values; the outer ends repeat their only value)."""
        x = self.x if x is None else x
        cl, cr = self._half_densities(x)
        below = np.concatenate([[cl[0]], cr]) * C0
        above = np.concatenate([cl, [cr[-1]]]) * C0
        return below, above

    def conductance(self, x=None) -> float:
        """G = (W/L) * integral of sigma(c(z)) over the channel, c from the linear u, w on each
        channel element (Gauss-Legendre, 6 points per element)."""
        x = self.x if x is None else x
        u, w = x[0::2], x[1::2]
        gp, gw = np.polynomial.legendre.leggauss(6)
        s = 0.5 * (gp + 1.0)
        ch = np.nonzero(self.region == REGIONS.index("channel"))[0]
        ui, uj, wi, wj = u[ch, None], u[ch + 1, None], w[ch, None], w[ch + 1, None]
        l = (wi + s * (wj - wi)) - (ui + s * (uj - ui)) - self.e0[ch, None]
        c = self.cmax[ch, None] * logistic(l) * C0
        sig = conductivity(self.case.materials.channel.conductivity, c)
        integral = float((sig * (0.5 * gw) * (self.h[ch, None] * L0)).sum())
        g = self.case.geometry
        return integral * g.channel_width / g.channel_length

    # ------------------------------------------------------------------------------------------
    # residual and Jacobian
    def _edge_flux(self, x):
        """SG fluxes J_e (from node i to node i+1, scaled units) and dJ/d(u_i, u_j, w_i, w_j)."""
        u, w = x[0::2], x[1::2]
        ui, uj, wi, wj = u[:-1], u[1:], w[:-1], w[1:]
        li = np.minimum(wi - ui - self.e0, L_CLIP)
        lj = np.minimum(wj - uj - self.e0, L_CLIP)
        du = uj - ui
        # drift potential difference dpsi = g(x) du = (h/a_half) sinh(a_half |du|/h) sign(du)
        ah = self.a_half
        hop = ah > 0
        xarg = np.where(hop, ah * np.abs(du) / self.h, 0.0)
        xc = np.minimum(xarg, X_CAP)
        scale = np.where(hop, self.h / np.where(hop, ah, 1.0), 1.0)
        sh = np.sinh(xc) + np.cosh(xc) * (xarg - xc)  # C1 linear continuation beyond the cap
        dpsi = np.where(hop, np.sign(du) * scale * sh, du)
        dpsi_ddu = np.where(hop, np.cosh(xc), 1.0)

        Bp, dBp = bernoulli(dpsi)
        Bm, dBm = bernoulli(-dpsi)
        ai, aj = np.exp(li), np.exp(lj)
        thi, thj = logistic(li), logistic(lj)
        bi, bj = logistic(-li) ** 2, logistic(-lj) ** 2
        sp_, sm_ = logistic(dpsi), logistic(-dpsi)
        beta = sm_ * bi + sp_ * bj
        # A = B(dpsi) a_i - B(-dpsi) a_j, evaluated from differences so that it carries no
        # round-off of the absolute levels of w and u (the reservoir's D c/h is ~1e11 1/s, and w,
        # u are O(400) during a pulse): with s = l_i - l_j - dpsi = (u_j - u_i) - (w_j - w_i) - dpsi
        # (the discrete -[w' + (g-1) u'] h), A = a_j B(-dpsi) expm1(s) = -a_i B(dpsi) expm1(-s).
        sdrive = du - (wj - wi) - dpsi
        with np.errstate(over="ignore", invalid="ignore"):
            A = np.where(sdrive <= 0.0, aj * Bm * np.expm1(np.minimum(sdrive, 0.0)),
                         -ai * Bp * np.expm1(-np.maximum(sdrive, 0.0)))
        K = self.K
        J = K * A * beta
        dJ_dli = K * (Bp * ai * beta + A * sm_ * (-2.0 * bi * thi))
        dJ_dlj = K * (-Bm * aj * beta + A * sp_ * (-2.0 * bj * thj))
        dJ_dpsi = K * ((dBp * ai + dBm * aj) * beta + A * sp_ * sm_ * (bj - bi))
        d_ui = -dJ_dli - dJ_dpsi * dpsi_ddu
        d_uj = -dJ_dlj + dJ_dpsi * dpsi_ddu
        return J, (d_ui, d_uj, dJ_dli, dJ_dlj)

    def _assemble(self, x, gate, dt, alpha0, hist_storage):
        """Residual F(x) and Jacobian of one implicit step:

        Poisson (node i, not a gate node): sum_e eps_e (u_i - u_j)/h_e - Gamma sum_half rho h/2
        transport: alpha0 * storage(x) + hist_storage + dt * (J_out - J_in)
        gate nodes: u_i - gate.
        """
        n = self.n
        u, w = x[0::2], x[1::2]
        h, eps = self.h, self.eps
        F = np.zeros(self.N)
        # --- Poisson ----------------------------------------------------------------------------
        du = u[1:] - u[:-1]
        flux_u = eps * du / h
        Fu = np.zeros(n)
        Fu[:-1] -= flux_u
        Fu[1:] += flux_u
        # space charge per half-cell
        li = w[:-1] - u[:-1] - self.e0
        lj = w[1:] - u[1:] - self.e0
        thi, thj = logistic(li), logistic(lj)
        ci, cj = self.cmax * thi, self.cmax * thj
        dci = self.cmax * thi * (1.0 - thi)  # dc/dw = -dc/du
        dcj = self.cmax * thj * (1.0 - thj)
        eui = self.n0 * np.exp(np.minimum(u[:-1], 700.0))
        euj = self.n0 * np.exp(np.minimum(u[1:], 700.0))
        rho_i = self.charged * (ci - self.cfix) + self.nd - eui
        rho_j = self.charged * (cj - self.cfix) + self.nd - euj
        G2 = self.Gamma * 0.5 * h
        Fu[:-1] -= G2 * rho_i
        Fu[1:] -= G2 * rho_j
        # --- transport --------------------------------------------------------------------------
        J, (dJ_ui, dJ_uj, dJ_wi, dJ_wj) = self._edge_flux(x)
        Fw = np.zeros(n)
        Fw[:-1] += alpha0 * 0.5 * h * ci + dt * J
        Fw[1:] += alpha0 * 0.5 * h * cj - dt * J
        Fw += hist_storage
        F[0::2] = Fu
        F[1::2] = Fw
        F[2 * np.nonzero(self.gate_nodes)[0]] = u[self.gate_nodes] - gate

        # --- Jacobian blocks per edge, rows (u_i, u_j, w_i, w_j) x cols (u_i, u_j, w_i, w_j) ----
        k = eps / h
        zero = np.zeros_like(h)
        # Poisson row u_i
        Pui = [k - G2 * (-self.charged * dci - eui), -k, -G2 * self.charged * dci, zero]
        Puj = [-k, k - G2 * (-self.charged * dcj - euj), zero, -G2 * self.charged * dcj]
        # transport rows
        s_i = alpha0 * 0.5 * h * dci
        s_j = alpha0 * 0.5 * h * dcj
        Twi = [-s_i + dt * dJ_ui, dt * dJ_uj, s_i + dt * dJ_wi, dt * dJ_wj]
        Twj = [-dt * dJ_ui, -s_j - dt * dJ_uj, -dt * dJ_wi, s_j - dt * dJ_wj]
        data = np.concatenate(Pui + Puj + Twi + Twj)
        data = np.concatenate([data[self._keep], np.ones(len(self._dir_rows))])
        Jm = sp.csc_matrix((data, (self._rows_k, self._cols_k)), shape=(self.N, self.N))
        return F, Jm

    def _newton(self, x0, gate, dt, alpha0, hist_storage, atol):
        x = x0.copy()
        x[2 * np.nonzero(self.gate_nodes)[0]] = gate
        upd = math.inf
        for it in range(self.newton_max_it + 1):
            F, Jm = self._assemble(x, gate, dt, alpha0, hist_storage)
            rw = float(np.abs(F[1::2]).sum())
            if not (np.isfinite(rw) and np.all(np.isfinite(F))):
                return None, it, "nan residual"
            if it > 0:
                if upd <= self.potential_tolerance and rw <= atol:
                    return x, it, "converged"
                if upd <= 1e-12 * max(1.0, float(np.abs(x).max())) and rw <= 1e3 * atol:
                    return x, it, "converged (round-off floor)"
            if it == self.newton_max_it:
                break
            with np.errstate(all="ignore"):
                dx = spsolve(Jm, -F)
            if not np.all(np.isfinite(dx)):
                return None, it, "singular Jacobian"
            x += dx
            upd = float(np.abs(dx).max())
        return None, self.newton_max_it, f"no convergence (update {upd:.3g}, transport residual {rw:.3g})"

    # ------------------------------------------------------------------------------------------
    # time stepping
    def _restart(self):
        self.dt = self.dt_initial
        self._hist: list[tuple[np.ndarray, float]] = []  # [(x_{n-1}, dt_{n-1}), (x_{n-2}, dt_{n-2})]

    def _step(self, t_new, dt):
        """One implicit step to t_new; returns (converged x or None, order, reason)."""
        gate = self.waveform.voltage(t_new) / self.V_T
        x_n = self.x
        m_n = self._storage(x_n)
        if self.bdf2 and self._hist:
            x1, dt1 = self._hist[0]
            om = dt / dt1
            a0 = (1.0 + 2.0 * om) / (1.0 + om)
            a1 = -(1.0 + om)
            a2 = om * om / (1.0 + om)
            hist = a1 * m_n + a2 * self._storage(x1)
            order = 2
        else:
            a0, hist, order = 1.0, -m_n, 1
        if self._hist:
            x1, dt1 = self._hist[0]
            guess = x_n + (dt / dt1) * (x_n - x1)
        else:
            guess = x_n
        x, its, reason = self._newton(guess, gate, dt, a0, hist, self._atol)
        self.stats["newton_iterations"] += its
        return x, order, reason

    def _error_factor(self, x, dt):
        """(accept, dt factor) from the local-error estimate of the converged step."""
        tol = self.lte_tolerance
        if not self._hist:
            change = float(np.abs(x - self.x).max())
            if change > 4 * self.max_change:
                return False, max(0.1, self.max_change / change)
            return True, min(self.growth, self.max_change / max(change, 1e-300))
        x1, dt1 = self._hist[0]
        if len(self._hist) == 1 or not self.bdf2:
            c0_, c1_, c2_ = 0.0, -dt / dt1, 1.0 + dt / dt1
            fac = dt / (dt + dt1)
            p = 2.0
        else:
            x2, dt2 = self._hist[1]
            # quadratic through (t-dt1-dt2, x2), (t-dt1, x1), (t, x_n), evaluated at t+dt
            t0, t1, t2, tn = -(dt1 + dt2), -dt1, 0.0, dt
            L0_ = (tn - t1) * (tn - t2) / ((t0 - t1) * (t0 - t2))
            L1_ = (tn - t0) * (tn - t2) / ((t1 - t0) * (t1 - t2))
            L2_ = (tn - t0) * (tn - t1) / ((t2 - t0) * (t2 - t1))
            c0_, c1_, c2_ = L0_, L1_, L2_
            fac = dt / (dt + dt1 + dt2)
            p = 3.0
        hx = [h[0] for h in self._hist] + [None]
        pred = c0_ * (hx[1] if c0_ else 0.0) + c1_ * x1 + c2_ * self.x
        err = float(np.abs(x - pred).max()) * fac
        # The same estimate on the protons held by every control volume (device totals): the
        # sup-norm in kT alone is blind to the slow decay of a few injected protons during a rest
        # (w changes of 1e-4 kT), which is exactly what the read-out charge measures.
        ms = [self._storage(h) for h in hx[:-1]]
        m_pred = c0_ * (ms[1] if c0_ else 0.0) + c1_ * ms[0] + c2_ * self._storage(self.x)
        err_q = float(np.abs(self._storage(x) - m_pred).sum()) * self.count * fac
        ratio = min(tol / max(err, 1e-300), self.inventory_tolerance / max(err_q, 1e-300))
        if ratio < 0.5:
            return False, max(0.2, 0.9 * ratio ** (1.0 / p))
        return True, min(self.growth, 0.9 * ratio ** (1.0 / p))

    def advance_to(self, t_target: float, on_step=None):
        """Integrate from self.t to exactly t_target (no breakpoint inside: the caller's job)."""
        while self.t < t_target * (1 - 1e-15) and t_target - self.t > 1e-30:
            remaining = t_target - self.t
            dt = min(self.dt, self.dt_max, remaining)
            if remaining - dt < 0.05 * dt:
                dt = remaining
            t_new = t_target if dt == remaining else self.t + dt
            x, order, reason = self._step(t_new, dt)
            if x is None:
                accept, factor = False, 0.25
            else:
                accept, factor = self._error_factor(x, dt)
            if not accept:
                self.stats["rejected"] += 1
                self.dt = dt * factor
                if self.dt < self.dt_min:
                    raise SGFailure(f"SG: time step below dt_min at t = {self.t:.6g} s ({reason})")
                continue
            self._hist = [(self.x, dt)] + self._hist[:1]
            self.x = x
            self.t = t_new
            self.stats["accepted"] += 1
            self.dt = dt * max(factor, 0.2)
            inv = self._inventory_scaled(x)
            self._max_inv_err = max(self._max_inv_err, abs(inv - self._inv0) / self._inv0)
            if on_step is not None:
                on_step(self)
        self.t = t_target

    # ------------------------------------------------------------------------------------------
    def equilibrate(self) -> np.ndarray:
        """Equilibrium at the rest voltage, as the FE does it: start from u = w = 0 (the exact rest
        state of the case's densities at 0 V), ramp the gate over 1 ns, then implicit steps of
        growing size until nothing changes. Resets the clock to t = 0."""
        V = self.case.protocol.rest_voltage
        self.x = np.zeros(self.N)
        self._inv0 = self._inventory_scaled(self.x)
        self._atol = self.transport_tolerance * self._inv0
        self._max_inv_err = 0.0
        saved = self.waveform
        self.t = 0.0

        class _Ramp:
            def voltage(self_, t):
                return V * min(1.0, t / 1e-9)

        self.waveform = _Ramp()
        try:
            self._restart()
            self.advance_to(1e-9)
            dt = 1e-9
            for _ in range(300):
                m_n = self._storage(self.x)
                x, its, reason = self._newton(self.x, V / self.V_T, dt, 1.0, -m_n, self._atol)
                if x is None:
                    dt *= 0.25
                    if dt < self.dt_min:
                        raise SGFailure(f"SG equilibrium at {V:g} V did not converge ({reason})")
                    continue
                change = float(np.abs(x - self.x).max())
                self.x = x
                if change < 1e-10 and dt >= 1e3:
                    break
                dt *= 4.0
            else:
                raise SGFailure(f"SG equilibrium at {V:g} V not reached")
        finally:
            self.waveform = saved
        self.t = 0.0
        self._restart()
        self.stats = dict(accepted=0, rejected=0, newton_iterations=0)
        self._inv0 = self._inventory_scaled(self.x)
        self._atol = self.transport_tolerance * self._inv0
        self._max_inv_err = 0.0
        self._equilibrated = True
        self._next_pulse = 0
        return self.x.copy()

    def run_pulse(self, pulse_index: int = 0) -> dict:
        """Integrate the protocol through pulse ``pulse_index`` (0-based; earlier pulses are run
        first) and its rest; return the pulse's figures."""
        if not self._equilibrated:
            self.equilibrate()
        pulses = self.waveform.pulses
        if not 0 <= pulse_index < len(pulses):
            raise IndexError(f"pulse {pulse_index} not in the protocol ({len(pulses)} pulses)")
        if pulse_index < self._next_pulse:
            raise ValueError(f"pulse {pulse_index} already run; build a new solver")
        t0 = time.perf_counter()
        out = None
        while self._next_pulse <= pulse_index:
            p = pulses[self._next_pulse]
            steps0 = dict(self.stats)
            inv_start = self.inventories()
            G_start = self.conductance()
            for tt in p.edges[1:]:
                self._restart()
                self.advance_to(tt)
            inv_end = self.inventories()
            self._restart()
            self.advance_to(p.read_time)
            inv_read = self.inventories()
            self._restart()
            out = {
                "pulse": p.index, "amplitude_V": p.amplitude,
                "faradaic_charge_pulse_end_C": Q_E * (inv_start["reservoir"] - inv_end["reservoir"]),
                "faradaic_charge_read_C": Q_E * (inv_start["reservoir"] - inv_read["reservoir"]),
                "inventories_start": inv_start, "inventories_pulse_end": inv_end, "inventories_read": inv_read,
                "conductance_start_S": G_start, "conductance_read_S": self.conductance(),
                "steps": {k: self.stats[k] - steps0[k] for k in self.stats},
                "inventory_error": self._max_inv_err,
                "nodes": self.n,
            }
            self._next_pulse += 1
        out["wall_time_s"] = time.perf_counter() - t0
        return out


def run_reference_pulse(case_path: str | Path, pulse_index: int = 0, **options) -> dict:
    """Equilibrate the case and run its pulse ``pulse_index`` (default the first) with its rest."""
    t0 = time.perf_counter()
    sg = ScharfetterGummel1D(case_path, **options)
    sg.equilibrate()
    out = sg.run_pulse(pulse_index)
    out["wall_time_s"] = time.perf_counter() - t0
    return out
