"""The coupled Poisson / proton-transport model of the reservoir | electrolyte | channel stack.

Unknowns (P1 Lagrange on the whole device, one mixed space):

* ``u`` — electrostatic potential in units of kT/q;
* ``w`` — proton electrochemical potential in units of kT, continuous across the interfaces
  (the fast-kinetics limit of interface transfer).

The proton density is a function of the unknowns, never an unknown itself::

    c = c_max * S(w - u - e0),   S(z) = 1 / (1 + exp(-z))        (site-limited statistics)

so 0 < c < c_max holds by construction (positivity-preserving, see reference/numerics.md), and the
standard chemical potential e0 of each region (a cell-wise constant chosen so that the rest state
has the case's densities) makes the density jump across an interface at equal ``w``.

Transport (lattice-gas hopping, with the high-field law of the electrolyte)::

    dc/dt + div J = 0,   J = -D c (1 - c/c_max) [grad w + (g(E) - 1) grad u],
    g = sinh(x)/x,  x = q a |E| / 2kT                    (g = 1: ordinary Nernst-Planck)

Poisson, with the channel's electrons in equilibrium with the grounded source/drain
(Boltzmann, quasi-Fermi level 0) and the reservoir an equipotential conductor at the gate voltage::

    -div(eps_r grad u) = Gamma [ (c - c_fix) + N_D - n0 exp(u) ]

The time derivative acts on c(w, u), and c is integrated with the vertex (lumped) rule, so the
discrete proton inventory changes only by the boundary flux: zero in this closed stack. The same
lumped rule is used for the inventory that the run reports.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import dolfinx_solver  # noqa: F401  (must precede dolfinx)
import basix.ufl
import numpy as np
import ufl
from dolfinx import default_scalar_type, fem
from dolfinx.fem import petsc as fem_petsc
from mpi4py import MPI
from petsc4py import PETSc

from protonfem.meshes import tags
from .case import Case
from .scaling import Q_E, Scales

LUMPED = {"quadrature_rule": "vertex", "quadrature_degree": 1}
#: Quadrature of the flux terms: the coefficient c(1-c/cmax) is exponential in the unknowns.
FLUX_DEGREE = 2
#: Read-out integrals of sigma(c(z)): high enough that the P1 representation is integrated exactly
#: to plotting accuracy (checked against a refined quadrature in the tests).
READOUT_DEGREE = 8

DEFAULT_PETSC_OPTIONS = {
    "snes_type": "newtonls",
    # Plain Newton with step rejection is robust at 5-10 V where a backtracking line search
    # drives dt to underflow (reference/environment.md).
    "snes_linesearch_type": "basic",
    "ksp_type": "preonly",
    "pc_type": "lu",
    "pc_factor_mat_solver_type": "mumps",
    "snes_rtol": 0.0,
    "snes_atol": 0.0,
    "snes_stol": 0.0,
}


def logistic(z):
    """1/(1+exp(-z)) without overflow in either tail (both branches are exact)."""
    ez = ufl.exp(-abs(z))
    return ufl.conditional(ufl.ge(z, 0), 1.0 / (1.0 + ez), ez / (1.0 + ez))


def sinh_enhancement(x2):
    """g = sinh(x)/x as a function of x^2, smooth at 0 and capped where sinh would overflow."""
    x = ufl.sqrt(ufl.min_value(x2, 300.0**2) + 1e-300)
    series = 1.0 + x2 / 6.0 + x2 * x2 / 120.0
    return ufl.conditional(ufl.lt(x2, 1e-4), series, ufl.sinh(x) / x)


@dataclass
class StepResult:
    converged: bool
    iterations: int
    reason: str


class NewtonFailure(Exception):
    pass


class DeviceModel:
    """Function spaces, coefficients, forms and derived quantities of one device case."""

    def __init__(self, case: Case, mesh, cell_tags, facet_tags):
        self.case = case
        self.mesh = mesh
        self.comm = mesh.comm
        self.cell_tags = cell_tags
        self.facet_tags = facet_tags
        g = case.geometry
        self.dim = g.dimension
        transverse = {1: g.channel_width * g.channel_length, 2: g.channel_width, 3: 1.0}[self.dim]
        self.scales = sc = Scales(case.conditions.temperature, self.dim, transverse)

        tdim = mesh.topology.dim
        mesh.topology.create_connectivity(tdim - 1, tdim)
        cell = mesh.basix_cell()
        p1 = basix.ufl.element("Lagrange", cell, 1)
        self.W = fem.functionspace(mesh, basix.ufl.mixed_element([p1, p1]))
        self.V1 = fem.functionspace(mesh, ("Lagrange", 1))
        self.DG0 = fem.functionspace(mesh, ("DG", 0))

        self.x = fem.Function(self.W, name="state")
        self.x_n = fem.Function(self.W, name="state_previous")
        self.x_nm1 = fem.Function(self.W, name="state_before_previous")

        # ---- per-region coefficients (DG0) --------------------------------------------------
        m = case.materials
        res, ele, chn = m.reservoir, m.electrolyte, m.channel
        # The reservoir is a conductor: its permittivity only enters through Dirichlet rows.
        region = {
            tags.RESERVOIR: dict(eps=1.0, D=res.diffusivity, cmax=res.site_density, c0=res.proton_density,
                                 cfix=0.0, nd=0.0, n0=0.0, charged=0.0, a=0.0),
            tags.ELECTROLYTE: dict(eps=ele.relative_permittivity, D=ele.diffusivity, cmax=ele.site_density,
                                   c0=ele.proton_density, cfix=ele.background, nd=0.0, n0=0.0, charged=1.0,
                                   a=ele.hopping_distance),
            tags.CHANNEL: dict(eps=chn.relative_permittivity, D=chn.diffusivity, cmax=chn.site_density,
                               c0=chn.proton_density, cfix=0.0, nd=chn.donor_density,
                               n0=chn.proton_density + chn.donor_density, charged=1.0, a=0.0),
        }
        self.region_parameters = region

        def cellwise(name, key, convert):
            f = fem.Function(self.DG0, name=name)
            dofs = self.DG0.dofmap.list
            for tag, par in region.items():
                cells = cell_tags.find(tag)
                f.x.array[dofs[cells, 0]] = convert(par[key])
            f.x.scatter_forward()
            return f

        self.eps_r = cellwise("eps_r", "eps", float)
        self.rate = cellwise("D", "D", sc.rate)
        self.cmax = cellwise("c_max", "cmax", sc.density)
        # e0 = -logit(c0/cmax): the rest state w = u = 0 has the case's densities.
        self.e0 = cellwise("e0", "c0", lambda c: 0.0)
        for tag, par in region.items():
            theta0 = par["c0"] / par["cmax"]
            self.e0.x.array[self.DG0.dofmap.list[cell_tags.find(tag), 0]] = -math.log(theta0 / (1.0 - theta0))
        self.e0.x.scatter_forward()
        self.cfix = cellwise("c_fix", "cfix", sc.density)
        self.nd = cellwise("N_D", "nd", sc.density)
        self.n0 = cellwise("n0", "n0", sc.density)
        self.charged = cellwise("charged", "charged", float)
        self.a_half = cellwise("a_half", "a", lambda a: 0.5 * sc.length(a))

        # ---- forms ----------------------------------------------------------------------------
        self.dt = fem.Constant(mesh, default_scalar_type(1e-12))
        # BDF coefficients of the mass term: a0 c + a1 c_n + a2 c_nm1 (a0 + a1 + a2 = 0, so the
        # inventory is conserved exactly by either scheme); backward Euler is (1, -1, 0).
        self.bdf = [fem.Constant(mesh, default_scalar_type(v)) for v in (1.0, -1.0, 0.0)]
        self.gate = fem.Constant(mesh, default_scalar_type(0.0))  # scaled gate potential
        self.dx = ufl.Measure("dx", domain=mesh, subdomain_data=cell_tags)
        self.dx_lumped = ufl.Measure("dx", domain=mesh, subdomain_data=cell_tags, metadata=LUMPED)
        self.dx_flux = ufl.Measure("dx", domain=mesh, metadata={"quadrature_degree": FLUX_DEGREE})

        u, w = ufl.split(self.x)
        u_n, w_n = ufl.split(self.x_n)
        u_nm1, w_nm1 = ufl.split(self.x_nm1)
        v, q = ufl.TestFunctions(self.W)
        self.u_expr, self.w_expr = u, w
        c = self.concentration(w, u)
        c_n = self.concentration(w_n, u_n)
        c_nm1 = self.concentration(w_nm1, u_nm1)
        self.c_expr = c
        theta = logistic(w - u - self.e0)
        mobility = self.rate * self.cmax * theta * (1.0 - theta)
        x2 = self.a_half**2 * ufl.inner(ufl.grad(u), ufl.grad(u))
        gfac = sinh_enhancement(x2)
        flux = -mobility * (ufl.grad(w) + (gfac - 1.0) * ufl.grad(u))
        self.flux_expr = flux
        Gamma = sc.poisson_coupling
        rho = self.charge_density(c, u)
        self.rho_expr = rho

        F_u = self.eps_r * ufl.inner(ufl.grad(u), ufl.grad(v)) * self.dx - Gamma * rho * v * self.dx_lumped
        a0, a1, a2 = self.bdf
        F_w = (a0 * c + a1 * c_n + a2 * c_nm1) * q * self.dx_lumped - self.dt * ufl.inner(flux, ufl.grad(q)) * self.dx_flux
        self.F = F_u + F_w

        # ---- boundary conditions ----------------------------------------------------------------
        tdim = mesh.topology.dim
        W0, _ = self.W.sub(0).collapse()
        res_cells = cell_tags.find(tags.RESERVOIR)
        gate_dofs = fem.locate_dofs_topological(self.W.sub(0), tdim, res_cells)
        self.bcs = [fem.dirichletbc(self.gate, gate_dofs, self.W.sub(0))]
        self.contact_dofs = None
        if self.dim >= 2:
            sd_facets = np.concatenate([facet_tags.find(tags.SOURCE), facet_tags.find(tags.DRAIN)])
            self.contact_dofs = fem.locate_dofs_topological(self.W.sub(0), tdim - 1, sd_facets)
            self.bcs.append(fem.dirichletbc(default_scalar_type(0.0), self.contact_dofs, self.W.sub(0)))

        # ---- nonlinear solver ------------------------------------------------------------------
        options = dict(DEFAULT_PETSC_OPTIONS)
        options["snes_max_it"] = case.solver.newton_max_it
        options.update({k: v for k, v in case.solver.petsc_options.items()})
        self.problem = fem_petsc.NonlinearProblem(self.F, self.x, bcs=self.bcs, petsc_options_prefix="protonfem_",
                                                  petsc_options=options)
        self.snes = self.problem.solver
        self._setup_blocks()
        self.snes.setConvergenceTest(self._convergence_test)

        # ---- derived quantities (compiled once) -------------------------------------------------
        self._inventory_forms = {name: fem.form(c * self.dx_lumped(tag)) for name, tag in tags.CELL_TAGS.items()}
        chi_gate = fem.Function(self.V1)
        chi_gate.x.array[fem.locate_dofs_topological(self.V1, tdim, res_cells)] = 1.0
        self._gate_charge = fem.form(self.eps_r * ufl.inner(ufl.grad(u), ufl.grad(chi_gate)) * self.dx
                                     - Gamma * rho * chi_gate * self.dx_lumped)
        self._contact_charge = None
        if self.dim >= 2:
            chi_sd = fem.Function(self.V1)
            chi_sd.x.array[fem.locate_dofs_topological(self.V1, tdim - 1, sd_facets)] = 1.0
            self._contact_charge = fem.form(self.eps_r * ufl.inner(ufl.grad(u), ufl.grad(chi_sd)) * self.dx
                                            - Gamma * rho * chi_sd * self.dx_lumped)
        self._space_charge = fem.form(Gamma * rho * self.dx_lumped)

    # ------------------------------------------------------------------------------------------
    def concentration(self, w, u):
        return self.cmax * logistic(w - u - self.e0)

    def charge_density(self, c, u):
        # Electrons only where n0 > 0 (the channel); exp(u) stays bounded there because the
        # electrons themselves screen the field.
        return self.charged * (c - self.cfix) + self.nd - self.n0 * ufl.exp(u)

    def _setup_blocks(self):
        imap = self.W.dofmap.index_map
        n_owned = imap.size_local * self.W.dofmap.index_map_bs
        self._n_owned = n_owned
        masks = []
        for i in range(2):
            _, dofs = self.W.sub(i).collapse()
            dofs = np.asarray(dofs)
            masks.append(np.sort(dofs[dofs < n_owned]))
        self.u_dofs, self.w_dofs = masks
        self.transport_atol = 1.0
        self.potential_tol = self.case.solver.potential_tolerance
        self._last = {}

    def set_transport_scale(self, inventory_scaled: float):
        """Absolute l1 tolerance of the transport residual, relative to the proton inventory."""
        self.transport_atol = self.case.solver.transport_tolerance * inventory_scaled

    def _convergence_test(self, snes, it, norms):
        # Block-aware test: PETSc's single residual norm mixes the Poisson and transport rows, so
        # it either stalls at round-off or lets every step leak protons. We ask the transport rows
        # (protons per step) to be small against the inventory and the last update to be small.
        if it == 0:
            self._last = {"rw": math.inf}
            return 0
        F = snes.getFunction()[0].getArray(readonly=True)
        dx = snes.getSolutionUpdate().getArray(readonly=True)
        local = np.array([np.abs(F[self.w_dofs]).sum(), np.abs(dx).max(initial=0.0),
                          np.abs(F[self.u_dofs]).max(initial=0.0)])
        rw = self.comm.allreduce(local[0], op=MPI.SUM)
        upd = self.comm.allreduce(local[1], op=MPI.MAX)
        ru = self.comm.allreduce(local[2], op=MPI.MAX)
        self._last.update(rw=rw, upd=upd, ru=ru, it=it)
        if not (math.isfinite(rw) and math.isfinite(upd) and math.isfinite(ru)):
            return PETSc.SNES.ConvergedReason.DIVERGED_FNORM_NAN
        if upd <= self.potential_tol and rw <= self.transport_atol:
            return PETSc.SNES.ConvergedReason.CONVERGED_FNORM_ABS
        # Round-off floor: the update is at machine level and the transport residual no longer
        # falls; more iterations cannot help. Accepted, and the run measures the actual drift.
        if upd <= 1e-12 * max(1.0, np.abs(self.x.x.array).max(initial=1.0)) and rw <= 1e3 * self.transport_atol:
            return PETSc.SNES.ConvergedReason.CONVERGED_SNORM_RELATIVE
        if it >= snes.getTolerances()[3]:
            return PETSc.SNES.ConvergedReason.DIVERGED_MAX_IT
        return 0

    # ------------------------------------------------------------------------------------------
    def set_gate_voltage(self, volts: float):
        self.gate.value = volts / self.scales.thermal_voltage

    def set_scheme(self, ratio: float | None):
        """Backward Euler (ratio None) or variable-step BDF2 with ratio = dt_n / dt_(n-1)."""
        if ratio is None:
            coeffs = (1.0, -1.0, 0.0)
        else:
            w = ratio
            coeffs = ((1 + 2 * w) / (1 + w), -(1 + w), w * w / (1 + w))
        for c, v in zip(self.bdf, coeffs):
            c.value = v

    def solve_step(self, dt: float) -> StepResult:
        """One implicit step from x_n with the current gate; x holds the initial guess on entry."""
        self.dt.value = dt
        try:
            self.problem.solve()
        except PETSc.Error as exc:  # MUMPS raises (e.g. INFOG(1) = -3) instead of returning a reason
            return StepResult(False, self.snes.getIterationNumber(), f"linear solver error: {exc}")
        reason = self.snes.getConvergedReason()
        its = self.snes.getIterationNumber()
        if reason > 0:
            return StepResult(True, its, _reason_name(reason))
        return StepResult(False, its, _reason_name(reason))

    # ------------------------------------------------------------------------------------------
    def _sum(self, form) -> float:
        return self.comm.allreduce(fem.assemble_scalar(form), op=MPI.SUM)

    def inventories(self) -> dict[str, float]:
        """Protons in each region (device totals)."""
        return {name: self._sum(f) * self.scales.count for name, f in self._inventory_forms.items()}

    def inventory_scaled(self) -> float:
        return sum(self._sum(f) for f in self._inventory_forms.values())

    def charges(self) -> dict[str, float]:
        """Gate and source/drain charges (C) from the variational Poisson flux, and the space
        charge in electrolyte and channel. Gauss: gate + contacts + space = 0."""
        qc = self.scales.charge
        out = {"gate": self._sum(self._gate_charge) * qc,
               "contacts": self._sum(self._contact_charge) * qc if self._contact_charge is not None else 0.0,
               "space": self._sum(self._space_charge) * qc}
        return out

    def set_reservoir_reference(self):
        """The reservoir inventory against which the Faradaic (terminal) charge is counted."""
        self._reservoir_reference = self._sum(self._inventory_forms["reservoir"])

    def terminal_charge(self) -> float:
        """Charge that has entered the gate terminal: surface charge of the reservoir plus one
        electron per proton that has left it (C)."""
        n_res = self._sum(self._inventory_forms["reservoir"])
        return (self._sum(self._gate_charge) * self.scales.charge
                + Q_E * (self._reservoir_reference - n_res) * self.scales.count)

    def geometric_gate_capacitance(self) -> float:
        """eps0 eps_r A / d of the electrolyte (F): the slope guess of the floating-gate solve."""
        from .scaling import EPS0
        g = self.case.geometry
        return EPS0 * self.case.materials.electrolyte.relative_permittivity * g.channel_width * g.channel_length \
            / g.electrolyte_thickness


def _reason_name(reason: int) -> str:
    for name in dir(PETSc.SNES.ConvergedReason):
        if not name.startswith("_") and getattr(PETSc.SNES.ConvergedReason, name) == reason:
            return name
    return str(reason)
