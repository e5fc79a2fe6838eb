"""The coupled Poisson / proton-transport model of the reservoir | electrolyte | channel stack.

Unknowns (P1 Lagrange on the whole device, one mixed space):

* ``u`` — electrostatic potential in units of kT/q;
* ``w`` — proton electrochemical potential in units of kT. Regions joined by a ``continuous``
  interface (the fast-kinetics limit) share one continuous w field; a ``butler_volmer`` interface
  separates two fields, coupled by the interface rate through an interior-facet integral. Each
  field lives on the whole mesh but is pinned (Dirichlet 0) on the dofs that touch none of its
  regions' cells, which keeps standard assembly and the parallel layout unchanged.

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
from . import physics
from .physics import logistic, sinh_enhancement  # noqa: F401  (re-exported for callers)
from .scaling import C0, L0, Q_E, Scales

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

#: ``solver.linear_solver = "iterative"``: flexible GMRES preconditioned by a Schur-complement field
#: split. The transport fields (w) come first and are eliminated: their block is a lumped mass
#: c'(w) plus dt times a (drift-)diffusion operator, close to its diagonal over the short steps of
#: a pulse, so block Jacobi with ILU(0) on each rank's part is enough (measured: ~8 Krylov
#: iterations per Newton step with an exact potential solve; GAMG on this block needed ~100). What
#: is left is the potential's Schur complement, approximated by
#: A_uu - A_uw diag(A_ww)^-1 A_wu ("selfp": Poisson with the channel electrons' screening but not
#: the protons', which cannot follow within a step) and solved by smoothed-aggregation multigrid
#: (GAMG; this PETSc has no hypre). A plain block Gauss-Seidel split needs ~200 Krylov iterations
#: per Newton step here: the space-charge coupling Gamma c' between u and w (Gamma ~ 700 in the
#: scaled units) is as large as the Laplacian on the 0.02 nm interface elements. The split needs
#: the dof indices of each sub-space, so it is built in :meth:`DeviceModel._setup_fieldsplit`.
#: FGMRES because multigrid with Chebyshev smoothers is a slightly nonlinear preconditioner. The
#: relative tolerance sits below Newton's own stopping test, so an inexact solve costs Newton
#: iterations, never accuracy; ``snes_max_linear_solve_fail`` = 1 turns a KSP that does not
#: converge into a failed Newton step, which the stepper rejects like a MUMPS failure.
ITERATIVE_PETSC_OPTIONS = {
    "ksp_type": "fgmres",
    "ksp_gmres_restart": 100,
    "ksp_rtol": 1e-10,
    "ksp_atol": 1e-30,
    "ksp_max_it": 400,
    "pc_type": "fieldsplit",
    "pc_fieldsplit_type": "schur",
    "pc_fieldsplit_schur_fact_type": "full",
    "pc_fieldsplit_schur_precondition": "selfp",
    "fieldsplit_w_ksp_type": "preonly",
    "fieldsplit_w_pc_type": "bjacobi",
    "fieldsplit_w_sub_pc_type": "ilu",
    "fieldsplit_u_ksp_type": "preonly",
    "fieldsplit_u_pc_type": "gamg",
    "fieldsplit_u_pc_gamg_threshold": 0.05,
    "snes_max_linear_solve_fail": 1,
}


@dataclass
class StepResult:
    converged: bool
    iterations: int
    reason: str


class NewtonFailure(Exception):
    pass


class DeviceModel:
    """Function spaces, coefficients, forms and derived quantities of one device case."""

    #: models built with the iterative linear solver in this process (each gets its own prefix)
    _iterative_count = 0

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
        T = case.conditions.temperature
        m = case.materials
        res, ele, chn = m.reservoir, m.electrolyte, m.channel

        # ---- proton fields: regions joined by continuous interfaces share one w ------------------
        links = {("reservoir", "electrolyte"): case.interfaces.reservoir_electrolyte,
                 ("electrolyte", "channel"): case.interfaces.electrolyte_channel}
        group_of = {"reservoir": 0, "electrolyte": 1, "channel": 2}
        for (r1, r2), itf in links.items():
            if itf.kinetics == "continuous":
                old, new = group_of[r2], group_of[r1]
                group_of = {k: (new if g == old else g) for k, g in group_of.items()}
        ids = sorted(set(group_of.values()))
        self.group_of = {k: ids.index(g) for k, g in group_of.items()}  # region name -> field index
        self.n_groups = len(ids)

        # A regular-solution channel carries its site fraction as an unknown of its own (the
        # density is then no longer an explicit function of w): one more field, live on the channel.
        self.phase_field = chn.regular_solution is not None
        cell = mesh.basix_cell()
        p1 = basix.ufl.element("Lagrange", cell, 1)
        self.n_fields = 1 + self.n_groups + (1 if self.phase_field else 0)
        self.W = fem.functionspace(mesh, basix.ufl.mixed_element([p1] * self.n_fields))
        self.V1 = fem.functionspace(mesh, ("Lagrange", 1))
        self.DG0 = fem.functionspace(mesh, ("DG", 0))

        self.x = fem.Function(self.W, name="state")
        self.x_n = fem.Function(self.W, name="state_previous")
        self.x_nm1 = fem.Function(self.W, name="state_before_previous")

        # ---- per-region coefficients (DG0) --------------------------------------------------
        d_res = physics.arrhenius(res.diffusivity, res.activation_energy, T, res.reference_temperature)
        d_ele = ele.diffusivity_at(T)
        d_chn = physics.arrhenius(chn.diffusivity, chn.activation_energy, T, chn.reference_temperature)
        # The reservoir is a conductor: its permittivity only enters through Dirichlet rows.
        region = {
            tags.RESERVOIR: dict(name="reservoir", eps=1.0, D=d_res, cmax=res.site_density, c0=res.proton_density,
                                 cfix=0.0, nd=0.0, n0=0.0, charged=0.0, a=0.0),
            tags.ELECTROLYTE: dict(name="electrolyte", eps=ele.relative_permittivity, D=d_ele, cmax=ele.site_density,
                                   c0=ele.proton_density, cfix=ele.background, nd=0.0, n0=0.0, charged=1.0,
                                   a=ele.hopping_distance),
            tags.CHANNEL: dict(name="channel", eps=chn.relative_permittivity, D=d_chn, cmax=chn.site_density,
                               c0=chn.proton_density, cfix=0.0, nd=chn.donor_density,
                               n0=chn.proton_density + chn.donor_density, charged=1.0, a=0.0),
        }
        for par in region.values():
            par["e0"] = physics.rest_offset(par["c0"], par["cmax"])
        self.region_parameters = region
        dofs0 = self.DG0.dofmap.list

        def cellwise(name, values: dict):
            f = fem.Function(self.DG0, name=name)
            for tag, val in values.items():
                f.x.array[dofs0[cell_tags.find(tag), 0]] = val
            f.x.scatter_forward()
            return f

        def per_region(key, convert=float):
            return {tag: convert(par[key]) for tag, par in region.items()}

        self.eps_r = cellwise("eps_r", per_region("eps"))
        self.rate = cellwise("D", per_region("D", sc.rate))
        self.cmax = cellwise("c_max", per_region("cmax", sc.density))
        self.e0 = cellwise("e0", per_region("e0"))
        self.cfix = cellwise("c_fix", per_region("cfix", sc.density))
        self.nd = cellwise("N_D", per_region("nd", sc.density))
        self.n0 = cellwise("n0", per_region("n0", sc.density))
        self.charged = cellwise("charged", per_region("charged"))
        self.a_half = cellwise("a_half", per_region("a", lambda a: 0.5 * sc.length(a)))
        indicators = [cellwise(f"in_group_{g}", {tag: float(self.group_of[par["name"]] == g)
                                                for tag, par in region.items()}) for g in range(self.n_groups)]

        # ---- forms ----------------------------------------------------------------------------
        self.dt = fem.Constant(mesh, default_scalar_type(1e-12))
        # BDF coefficients of the mass term: a0 c + a1 c_n + a2 c_nm1 (a0 + a1 + a2 = 0, so the
        # inventory is conserved exactly by either scheme); backward Euler is (1, -1, 0).
        self.bdf = [fem.Constant(mesh, default_scalar_type(v)) for v in (1.0, -1.0, 0.0)]
        self.gate = fem.Constant(mesh, default_scalar_type(0.0))  # scaled gate potential
        self._gate_scaled = 0.0  # its value (see _set_gate)
        self.dx = ufl.Measure("dx", domain=mesh, subdomain_data=cell_tags)
        self.dx_lumped = ufl.Measure("dx", domain=mesh, subdomain_data=cell_tags, metadata=LUMPED)
        self.dx_flux = ufl.Measure("dx", domain=mesh, metadata={"quadrature_degree": FLUX_DEGREE})
        self.dS = ufl.Measure("dS", domain=mesh, subdomain_data=facet_tags)

        def cell_field(fields):
            # On every cell exactly one indicator is 1: the field of the cell's group.
            return sum(ind * f for ind, f in zip(indicators, fields))

        parts = ufl.split(self.x)
        parts_n = ufl.split(self.x_n)
        parts_nm1 = ufl.split(self.x_nm1)
        tests = ufl.TestFunctions(self.W)
        G = self.n_groups
        u, ws = parts[0], parts[1:1 + G]
        u_n, u_nm1 = parts_n[0], parts_nm1[0]
        v, qs = tests[0], tests[1:1 + G]
        w = cell_field(ws)
        q = cell_field(qs)
        self.u_expr, self.w_expr = u, w
        in_channel = cellwise("in_channel", {tag: float(tag == tags.CHANNEL) for tag in region})
        theta_field = None
        if self.phase_field:
            theta_field, theta_n, theta_nm1 = parts[-1], parts_n[-1], parts_nm1[-1]
            # density from the site-fraction unknown on the channel, from w and u elsewhere
            def dens(wf, uf, th):
                return (1.0 - in_channel) * self.concentration(wf, uf) + in_channel * self.cmax * th
            c = dens(w, u, theta_field)
            c_n = dens(cell_field(parts_n[1:1 + G]), u_n, theta_n)
            c_nm1 = dens(cell_field(parts_nm1[1:1 + G]), u_nm1, theta_nm1)
        else:
            c = self.concentration(w, u)
            c_n = self.concentration(cell_field(parts_n[1:1 + G]), u_n)
            c_nm1 = self.concentration(cell_field(parts_nm1[1:1 + G]), u_nm1)
        self.c_expr = c
        if chn.diffusivity_table is not None:
            # D(c) in the channel: log-log table scaled so that D(c_rest) = diffusivity.
            tab = chn.diffusivity_table
            lc = [math.log(d) for d in tab.densities]
            ld = [math.log(x) for x in tab.diffusivities]
            xc = ufl.ln(C0 * c)
            expr = ufl.as_ufl(ld[-1])
            for i in range(len(lc) - 2, -1, -1):
                seg = ld[i] + (ld[i + 1] - ld[i]) * (xc - lc[i]) / (lc[i + 1] - lc[i])
                expr = ufl.conditional(ufl.lt(xc, lc[i + 1]), seg, expr)
            expr = ufl.conditional(ufl.lt(xc, lc[0]), ld[0], expr)
            import numpy as _np
            d_rest = float(_np.exp(_np.interp(math.log(chn.proton_density), lc, ld)))
            rate = self.rate * (1.0 - in_channel + in_channel * ufl.exp(expr) / d_rest)
        else:
            rate = self.rate
        theta_all = None
        if self.phase_field:
            theta_all = (1.0 - in_channel) * physics.site_fraction(w, u, self.e0) + in_channel * theta_field
        flux = physics.hopping_flux(w, u, rate, self.cmax, self.e0, self.a_half, theta=theta_all)
        Gamma = sc.poisson_coupling
        rho = self.charge_density(c, u)

        F_u = self.eps_r * ufl.inner(ufl.grad(u), ufl.grad(v)) * self.dx - Gamma * rho * v * self.dx_lumped
        a0, a1, a2 = self.bdf
        F_w = (a0 * c + a1 * c_n + a2 * c_nm1) * q * self.dx_lumped - self.dt * ufl.inner(flux, ufl.grad(q)) * self.dx_flux
        if self.phase_field:
            # w - u = mu_chem / kT + e0 on the channel (Cahn-Hilliard in the electrochemical
            # potential; the gradient term is the weak form of -kappa lap(theta)).
            rs = chn.regular_solution
            kT_ev = 8.617333262e-5 * T
            omega = rs.interaction_energy / kT_ev
            kappa = rs.gradient_coefficient / (kT_ev * L0**2)
            th0 = chn.proton_density / chn.site_density
            e0_rs = -float(math.log(th0 / (1 - th0))) - omega * (1 - 2 * th0)
            self._channel_theta0 = th0
            phi = tests[-1]
            dxc = self.dx_lumped(tags.CHANNEL)
            F_w += ((w - u - e0_rs - physics.regular_solution_potential(theta_field, omega, kappa)) * phi * dxc
                    - kappa * ufl.inner(ufl.grad(theta_field), ufl.grad(phi)) * self.dx(tags.CHANNEL))

        # ---- Butler-Volmer interfaces: j from the upper region (1) to the lower one (2) ----------
        self._interface_rates = {}
        for (r1, r2), itf in links.items():
            g1, g2 = self.group_of[r1], self.group_of[r2]
            if g1 == g2:
                continue
            p1_, p2_ = region[tags.CELL_TAGS[r1]], region[tags.CELL_TAGS[r2]]
            j0 = physics.arrhenius(itf.exchange_rate, itf.activation_energy, T, itf.reference_temperature)
            j0 = j0 / (C0 * L0)  # protons m^-2 s^-1 -> scaled (C0 L0 per second)
            w1, w2, uu = ws[g1]("+"), ws[g2]("+"), u("+")
            alpha = itf.transfer_coefficient
            if itf.occupancy_dependent:
                th1 = physics.site_fraction(w1, uu, p1_["e0"])
                th2 = physics.site_fraction(w2, uu, p2_["e0"])
                if self.phase_field and r2 == "channel":
                    th2 = theta_field("+")
                t1r, t2r = p1_["c0"] / p1_["cmax"], p2_["c0"] / p2_["cmax"]
                j0 = j0 * (th1 / t1r) ** (1 - alpha) * (th2 / t2r) ** alpha * ((1 - th2) / (1 - t2r)) ** (1 - alpha)
            j = physics.butler_volmer(w1 - w2, j0, alpha)
            tag = tags.INTERFACE_TAGS[frozenset((r1, r2))]
            self._interface_rates[f"{r1}_{r2}"] = (j, tag)
            F_w += self.dt * j * (qs[g1]("+") - qs[g2]("+")) * self.dS(tag)
        self.F = F_u + F_w

        # ---- boundary conditions ----------------------------------------------------------------
        res_cells = cell_tags.find(tags.RESERVOIR)
        gate_dofs = fem.locate_dofs_topological(self.W.sub(0), tdim, res_cells)
        self.bcs = [fem.dirichletbc(self.gate, gate_dofs, self.W.sub(0))]
        # What each Dirichlet condition does when the gate voltage moves by one scaled unit: 1 on
        # the gate-valued dofs, 0 elsewhere (the bordered floating-gate Newton step lifts these).
        self._gate_unit = fem.Constant(mesh, default_scalar_type(1.0))
        self._bcs_gate_unit = [fem.dirichletbc(self._gate_unit, gate_dofs, self.W.sub(0))]
        self._gate_valued_dofs = gate_dofs
        self.contact_dofs = None
        if self.dim >= 2:
            sd_facets = np.concatenate([facet_tags.find(tags.SOURCE), facet_tags.find(tags.DRAIN)])
            self.contact_dofs = fem.locate_dofs_topological(self.W.sub(0), tdim - 1, sd_facets)
            self.bcs.append(fem.dirichletbc(default_scalar_type(0.0), self.contact_dofs, self.W.sub(0)))
            self._bcs_gate_unit.append(fem.dirichletbc(default_scalar_type(0.0), self.contact_dofs, self.W.sub(0)))
        for g in range(self.n_groups):
            sub = self.W.sub(1 + g)
            cells = np.concatenate([cell_tags.find(tags.CELL_TAGS[r]) for r, gg in self.group_of.items() if gg == g])
            active = fem.locate_dofs_topological(sub, tdim, cells)
            idle = np.setdiff1d(_collapsed_map(sub).astype(np.int32), active)
            self.bcs.append(fem.dirichletbc(default_scalar_type(0.0), idle, sub))
            self._bcs_gate_unit.append(fem.dirichletbc(default_scalar_type(0.0), idle, sub))
        if self.phase_field:
            sub = self.W.sub(self.n_fields - 1)
            active = fem.locate_dofs_topological(sub, tdim, cell_tags.find(tags.CHANNEL))
            idle = np.setdiff1d(_collapsed_map(sub).astype(np.int32), active)
            self.bcs.append(fem.dirichletbc(default_scalar_type(self._channel_theta0), idle, sub))
            self._bcs_gate_unit.append(fem.dirichletbc(default_scalar_type(0.0), idle, sub))
            self._theta_dofs = _collapsed_map(sub)
        self.fixed_reservoir = res.kind == "fixed_potential"
        if self.fixed_reservoir:
            # Ideal reservoir: hydrogen chemical potential w - u fixed at its rest value (0), so
            # w follows the gate on every reservoir dof.
            sub = self.W.sub(1 + self.group_of["reservoir"])
            res_w = fem.locate_dofs_topological(sub, tdim, res_cells)
            self.bcs.append(fem.dirichletbc(self.gate, res_w, sub))
            self._bcs_gate_unit.append(fem.dirichletbc(self._gate_unit, res_w, sub))
            self._gate_valued_dofs = np.concatenate([gate_dofs, res_w])

        # ---- nonlinear solver ------------------------------------------------------------------
        options = dict(DEFAULT_PETSC_OPTIONS)
        options["snes_max_it"] = case.solver.newton_max_it
        iterative = case.solver.linear_solver == "iterative"
        if iterative:
            options.update(ITERATIVE_PETSC_OPTIONS)
            options.pop("pc_factor_mat_solver_type")
        elif mesh.comm.size == 1 and self.dim == 1:
            # A 1-D stack is a banded system of a few hundred unknowns: PETSc's own LU with a
            # bandwidth-reducing ordering factors it several times faster than MUMPS, whose fixed
            # per-call overhead dominates at this size (the 1-D benchmark: 0.50 s -> 0.39 s).
            options["pc_factor_mat_solver_type"] = "petsc"
            options["pc_factor_mat_ordering_type"] = "rcm"
        options.update({k: v for k, v in case.solver.petsc_options.items()})
        if not iterative:
            self.problem = fem_petsc.NonlinearProblem(self.F, self.x, bcs=self.bcs, petsc_options_prefix="protonfem_",
                                                      petsc_options=options)
        else:
            # The field split's sub-solvers read their options when the preconditioner is first set
            # up (inside the first solve), after NonlinearProblem has deleted the options it was
            # given: they stay in PETSc's database, under a prefix of this model's own so that
            # two models in one process never read each other's settings.
            DeviceModel._iterative_count += 1
            prefix = f"protonfem_it{DeviceModel._iterative_count}_"
            self.problem = fem_petsc.NonlinearProblem(self.F, self.x, bcs=self.bcs, petsc_options_prefix=prefix)
            self._petsc_prefix = prefix
            self._petsc_options = options
        self.snes = self.problem.solver
        self._max_it = self.snes.getTolerances()[3]  # after the options: snes_max_it may be overridden
        self._setup_blocks()
        if iterative:
            self._setup_fieldsplit()
        self.snes.setConvergenceTest(self._convergence_test)
        self.snes.setLineSearchPreCheck(self._limit_update)
        self.snes.setFunction(self._assemble_residual, self.problem.b)
        self.snes.setJacobian(self._assemble_jacobian, self.problem.A, self.problem.P_mat)

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
        self._interface_forms = {name: fem.form(j * self.dS(tag)) for name, (j, tag) in self._interface_rates.items()}
        # Protons in the reservoir, as far as the gate's Faradaic charge is concerned. A finite
        # reservoir holds its own count. An ideal (fixed-potential) one is pinned at its rest
        # density, so what it supplies shows up only in the rest of the stack: its count is a
        # constant (the reservoir offset, set with the reference) less the electrolyte and channel.
        if self.fixed_reservoir:
            reservoir_count = -c * (self.dx_lumped(tags.ELECTROLYTE) + self.dx_lumped(tags.CHANNEL))
        else:
            reservoir_count = c * self.dx_lumped(tags.RESERVOIR)
        self._reservoir_count_form = fem.form(reservoir_count)
        self._reservoir_offset = 0.0
        # Terminal charge in units of scales.charge, less a constant (the reservoir reference):
        # surface charge minus one electron per proton in the reservoir. Its gradient borders
        # the Newton system of a floating gate (see _border_floating).
        per_proton = Q_E * sc.count / sc.charge
        terminal = (self.eps_r * ufl.inner(ufl.grad(u), ufl.grad(chi_gate)) * self.dx
                    - Gamma * rho * chi_gate * self.dx_lumped - per_proton * reservoir_count)
        self._terminal_form = fem.form(terminal)
        self._terminal_gradient_form = fem.form(ufl.derivative(terminal, self.x, ufl.TestFunction(self.W)))
        self._terminal_gradient = fem_petsc.create_vector(self.W)
        self._gate_sensitivity_rhs = fem_petsc.create_vector(self.W)
        self._gate_sensitivity = fem_petsc.create_vector(self.W)
        #: None: the gate voltage is prescribed; (target, tolerance) of the scaled terminal
        #: functional: the gate floats and Newton solves for its voltage as well
        self._floating: tuple[float, float] | None = None

    # ------------------------------------------------------------------------------------------
    def concentration(self, w, u):
        return self.cmax * physics.site_fraction(w, u, self.e0)

    def charge_density(self, c, u):
        # Electrons only where n0 > 0 (the channel); exp(u) stays bounded there because the
        # electrons themselves screen the field.
        return physics.space_charge(c, u, self.cfix, self.nd, self.n0, self.charged)

    def interface_rates(self) -> dict[str, float]:
        """Proton transfer rate through each Butler-Volmer interface, downward (protons/s)."""
        return {name: self._sum(f) * self.scales.count for name, f in self._interface_forms.items()}

    def _setup_blocks(self):
        imap = self.W.dofmap.index_map
        n_owned = imap.size_local * self.W.dofmap.index_map_bs
        self._n_owned = n_owned
        masks = []
        for i in range(1 + self.n_groups):
            dofs = _collapsed_map(self.W.sub(i))
            masks.append(np.sort(dofs[dofs < n_owned]))
        self.u_dofs = masks[0]
        self.w_dofs = np.sort(np.concatenate(masks[1:]))
        if self.phase_field:
            th = _collapsed_map(self.W.sub(self.n_fields - 1))
            self._theta_owned = np.sort(th[th < n_owned])
        self._setup_error_weights()
        self.transport_atol = 1.0
        self.potential_tol = self.case.solver.potential_tolerance
        self._last = {}
        self._border_failed = False
        self._reservoir_reference = 0.0  # set_reservoir_reference() at the start of the protocol

    def _setup_fieldsplit(self):
        """Field split of the iterative linear solver: "u" (the potential) and "w" (every
        transport field: the proton fields and a channel site fraction), as global PETSc indices
        of the owned dofs of each sub-space."""
        imap = self.W.dofmap.index_map
        offset = imap.local_range[0] * self.W.dofmap.index_map_bs
        n = self._n_owned

        def index_set(subs):
            local = np.sort(np.concatenate([_collapsed_map(self.W.sub(i)) for i in subs]))
            owned = local[local < n] + offset
            return PETSc.IS().createGeneral(owned.astype(PETSc.IntType), comm=self.comm)

        self._split_sets = (index_set([0]), index_set(range(1, self.n_fields)))
        opts = PETSc.Options()
        for key, value in self._petsc_options.items():
            opts[self._petsc_prefix + key] = value
        self.direct_fallbacks = 0
        self._use_iterative()

    def _use_iterative(self):
        pc = self.snes.getKSP().getPC()
        pc.setType("fieldsplit")
        pc.setFieldSplitIS(("w", self._split_sets[1]), ("u", self._split_sets[0]))
        self.snes.setFromOptions()  # the rest of the configuration, from this model's options

    def _use_direct(self):
        ksp = self.snes.getKSP()
        ksp.setType("preonly")
        ksp.getPC().setType("lu")
        ksp.getPC().setFactorSolverType("mumps")

    def linear_solver_report(self) -> str:
        """The KSP's last convergence reason and iteration count (why a Newton step failed)."""
        ksp = self.snes.getKSP()
        return f"KSP {_ksp_reason_name(ksp.getConvergedReason())} after {ksp.getIterationNumber()} iterations"

    def _setup_error_weights(self):
        """Per-dof data for :meth:`error_weights`: for every w dof, the u dof at the same vertex and
        the statistics (e0, c_max, rest density) of a region it belongs to."""
        tdim = self.mesh.topology.dim
        self._u_map = _collapsed_map(self.W.sub(0))
        n = self.x.x.array.size
        self._w_index, self._w_u, self._w_e0, self._w_cmax, self._w_c0 = [], [], [], [], []
        for g in range(self.n_groups):
            sub = self.W.sub(1 + g)
            g_map = _collapsed_map(sub)
            # collapsed P1 sub-spaces of one mixed element share their dof numbering
            where = np.full(n, -1, dtype=np.int64)
            where[g_map] = np.arange(g_map.size)
            for tag, par in self.region_parameters.items():
                if self.group_of[par["name"]] != g:
                    continue
                dofs = fem.locate_dofs_topological(sub, tdim, self.cell_tags.find(tag))
                self._w_index.append(dofs)
                self._w_u.append(self._u_map[where[dofs]])
                k = dofs.size
                self._w_e0.append(np.full(k, par["e0"]))
                self._w_cmax.append(np.full(k, par["cmax"] / C0))
                self._w_c0.append(np.full(k, par["c0"] / C0))
        cat = np.concatenate
        self._w_index, self._w_u = cat(self._w_index), cat(self._w_u)
        self._w_e0, self._w_cmax, self._w_c0 = cat(self._w_e0), cat(self._w_cmax), cat(self._w_c0)

    def error_weights(self, x: np.ndarray) -> np.ndarray:
        """Weights of the time-error and Newton-update norms: 1 for the potential; for w,
        s / (s + 1e-3 s_rest) with s = theta (1 - theta) the sensitivity of the density to w.

        Where the sites are nearly empty (depletion) or full (pile-up), w no longer moves any
        charge or mass (its Jacobian row vanishes with s) and may wander; it must not drive the
        step size or Newton's stopping test. Pinned (idle) dofs of a field get weight 0.
        """
        wgt = np.zeros_like(x)
        wgt[self._u_map] = 1.0
        z = x[self._w_index] - x[self._w_u] - self._w_e0
        theta = np.exp(-np.logaddexp(0.0, -z))  # logistic without overflow
        # dc/dw = c_max theta (1 - theta): w matters where it moves protons, not where the sites
        # are empty (depletion) or full (site-limited pile-up).
        sens = theta * (1.0 - theta)
        theta0 = self._w_c0 / self._w_cmax
        sens0 = theta0 * (1.0 - theta0)
        wgt[self._w_index] = sens / (sens + 1e-3 * sens0)
        if self.phase_field:
            wgt[self._theta_dofs] = 10.0  # 0.1 in site fraction counts like 1 kT
        return wgt

    def set_transport_scale(self, inventory_scaled: float):
        """Absolute l1 tolerance of the transport residual, relative to the proton inventory."""
        self.transport_atol = self.case.solver.transport_tolerance * inventory_scaled

    #: Largest change of any scaled unknown (kT/q) in one Newton iteration. Device simulators limit
    #: the potential update the same way: a w dof whose row has nearly vanished (sites empty or
    #: full) would otherwise receive an update of 1e10 or more and wreck the next iterate.
    NEWTON_STEP_LIMIT = 20.0

    def _assemble_residual(self, snes, x, b):
        """The residual at ``x``, with ``x - g`` on the Dirichlet rows.

        DOLFINx's own callback always lifts the Dirichlet values into the other rows (b +=
        J[:, bc] (g - x_bc)), which costs a second packing and assembly of the Jacobian form. The
        term is needed where the iterate misses a boundary value (the first iterate of a step
        whose gate voltage moved, so that Newton's first update already carries the interior's
        response), and is zero once Newton has met them: its Dirichlet rows are x - g = 0. Only
        the gate-valued conditions can be missed (the others hold constants that the iterates
        keep), so the lifting is done where one of those is off by more than round-off; the test
        is local, as is the lifting itself."""
        x.ghostUpdate(addv=PETSc.InsertMode.INSERT, mode=PETSc.ScatterMode.FORWARD)
        fem_petsc.assign(x, self.x)
        with b.localForm() as loc:
            loc.set(0.0)
        fem_petsc.assemble_vector(b, self.problem.F)
        gate = self._gate_scaled
        # (a miss at round-off, from x - (x - g), lifts nothing that matters)
        if np.any(np.abs(self.x.x.array[self._gate_valued_dofs] - gate) > 1e-12 * max(1.0, abs(gate))):
            fem_petsc.apply_lifting(b, [self.problem.J], bcs=[self.bcs], x0=[x], alpha=-1.0)
        b.ghostUpdate(addv=PETSc.InsertMode.ADD, mode=PETSc.ScatterMode.REVERSE)
        fem_petsc.set_bc(b, self.bcs, x0=x, alpha=-1.0)
        b.ghostUpdate(addv=PETSc.InsertMode.INSERT, mode=PETSc.ScatterMode.FORWARD)

    #: Weighted Newton update (kT/q) below which the next iteration reuses the Jacobian and its
    #: factorization. A chord step from a Jacobian that close contracts the residual about as
    #: much as a full Newton step, so iterations still stop far inside the transport tolerance:
    #: at 1e-2 they stopped just inside it, and the inventory drift of the Fig. 2A run grew from
    #: 2e-11 to 2e-10 (10x over 40 pulses); at 1e-4 it is unchanged.
    JACOBIAN_REUSE_UPDATE = 1e-4

    def _assemble_jacobian(self, snes, x, J, P):
        """DOLFINx's Jacobian assembly, skipped when the last update of this solve was small
        (PETSc then keeps the factorization: the matrix's state has not changed)."""
        last = self._last
        if last.get("it", 0) >= 1 and last.get("upd", math.inf) <= self.JACOBIAN_REUSE_UPDATE:
            return
        fem_petsc.assemble_jacobian(snes, x, J, P, self.x, self.problem.J, self.problem.preconditioner, self.bcs)

    def set_floating(self, target: float | None, tolerance: float = 0.0):
        """Float the gate: Newton solves for its voltage together with the state, holding the
        terminal charge (:meth:`terminal_charge`) at ``target`` within ``tolerance`` (both C).
        None: the voltage is prescribed again (:meth:`set_gate_voltage`)."""
        if target is None:
            self._floating = None
            return
        sc = self.scales
        reference = Q_E * (self._reservoir_reference - self._reservoir_offset) * sc.count
        self._floating = ((target - reference) / sc.charge, tolerance / sc.charge)

    def gate_voltage(self) -> float:
        """The gate voltage of the present iterate (V): the solved one after a floating step."""
        return self._gate_scaled * self.scales.thermal_voltage

    def _border_floating(self, y):
        """Bordered Newton step of a floating gate (the gate voltage V is one more unknown, the
        terminal charge T(x) its equation).

        SNES has just solved J y = F at the present V (x_new = x - y). With s = dx/dV, the
        response of the solution to the gate's Dirichlet value (J s = the lifted unit condition,
        one more solve with the same factorization), the step x - y + dV s meets the linearised
        charge condition T + grad T . (dV s - y) = target for dV = (grad T . y - (T - target)) /
        grad T . s. A floating step thus costs one Newton solve (a secant iteration on V over
        whole solves costs two or three)."""
        target, tolerance = self._floating
        rhs, sens, grad = self._gate_sensitivity_rhs, self._gate_sensitivity, self._terminal_gradient
        if not self._border_ready:
            # s and grad T at the first iterate serve the whole solve: later corrections are
            # small, a slightly stale border only slows their convergence from quadratic, and
            # the charge condition itself is tested exactly at every iterate.
            with grad.localForm() as loc:
                loc.set(0.0)
            fem_petsc.assemble_vector(grad, self._terminal_gradient_form)
            grad.ghostUpdate(addv=PETSc.InsertMode.ADD, mode=PETSc.ScatterMode.REVERSE)
            with rhs.localForm() as loc:
                loc.set(0.0)
            fem_petsc.apply_lifting(rhs, [self.problem.J], bcs=[self._bcs_gate_unit], alpha=1.0)
            rhs.ghostUpdate(addv=PETSc.InsertMode.ADD, mode=PETSc.ScatterMode.REVERSE)
            fem_petsc.set_bc(rhs, self._bcs_gate_unit)
            ksp = self.snes.getKSP()
            ksp.solve(rhs, sens)
            if ksp.getConvergedReason() < 0:
                self._border_failed = True
                y.set(math.nan)  # the convergence test then stops the step
                return
            self._grad_sens = grad.dot(sens)
            self._border_ready = True
        # T at this iterate: the convergence test has just evaluated it
        mismatch = self._terminal_value - target
        grad_y = grad.dot(y)
        if abs(mismatch - grad_y) <= 0.1 * tolerance:
            # The charge already holds and this step keeps it: leave V alone. (T carries the
            # reservoir's whole inventory, so its round-off would otherwise move V, and with it
            # the update, by ~1e-11 forever: the iteration never reached its round-off floor.)
            return
        dv = (grad_y - mismatch) / self._grad_sens
        y.axpy(-dv, sens)
        self._set_gate(self._gate_scaled + dv)

    def _limit_update(self, x, y):
        if self._floating is not None:
            self._border_floating(y)
        arr = y.getArray()
        np.clip(arr, -self.NEWTON_STEP_LIMIT, self.NEWTON_STEP_LIMIT, out=arr)
        if self.phase_field:
            # keep the site fraction inside (0, 1): at most 90 % of the way to either bound
            # (PETSc updates x - y)
            th = self._theta_owned
            xa = x.getArray(readonly=True)[th]
            arr[th] = np.clip(arr[th], -0.9 * (1.0 - xa), 0.9 * xa)

    def _convergence_test(self, snes, it, norms):
        # Block-aware test: PETSc's single residual norm mixes the Poisson and transport rows, so
        # it either stalls at round-off or lets every step leak protons. We ask the transport rows
        # (protons per step) to be small against the inventory and the last update to be small.
        if self._floating is not None:
            # the terminal charge of this iterate (the bordered update needs it too)
            self._terminal_value = self._sum(self._terminal_form)
        if it == 0:
            self._last = {"rw": math.inf}
            self._rw_previous = math.inf
            self._update_weights = None
            self._border_ready = False
            return 0
        F = snes.getFunction()[0].getArray(readonly=True)
        # The update of w where protons are depleted moves no charge or mass: weigh it out (the
        # same weights as the time-error norm, from the first iterate of the solve: they only
        # decide which dofs count).
        n = self._n_owned
        x = self.x.x.array
        if self._update_weights is None:
            self._update_weights = self.error_weights(x)[:n]
        dx = snes.getSolutionUpdate().getArray(readonly=True) * self._update_weights
        local = np.array([np.abs(F[self.w_dofs]).sum(), np.abs(dx).max(initial=0.0),
                          np.abs(F[self.u_dofs]).max(initial=0.0), np.abs(x[:n]).max(initial=1.0)])
        if self.comm.size > 1:
            maxes = np.empty(3)
            self.comm.Allreduce(local[1:], maxes, op=MPI.MAX)
            local = np.array([self.comm.allreduce(local[0], op=MPI.SUM), *maxes])
        rw, upd, ru, x_scale = (float(v) for v in local)
        self._last.update(rw=rw, upd=upd, ru=ru, it=it)
        if not (math.isfinite(rw) and math.isfinite(upd) and math.isfinite(ru)):
            return PETSc.SNES.ConvergedReason.DIVERGED_FNORM_NAN
        if self._floating is not None:
            # a floating gate: its terminal charge is one more equation
            target, tolerance = self._floating
            mismatch = abs(self._terminal_value - target)
            self._last["charge"], self._last["charge_tolerance"] = mismatch, tolerance
            if mismatch > tolerance:
                return PETSc.SNES.ConvergedReason.DIVERGED_MAX_IT if it >= self._max_it else 0
        if upd <= self.potential_tol and rw <= self.transport_atol:
            return PETSc.SNES.ConvergedReason.CONVERGED_FNORM_ABS
        # Round-off floor: the update is at machine level and the transport residual no longer
        # falls; more iterations cannot help. Long steps lift the floor of the residual's l1 norm
        # (opposing drift and diffusion fluxes, each far larger than their difference, cancel in
        # every row), so a residual that has stopped falling is accepted up to 1e5 times the
        # tolerance. Its l1 norm is not the inventory error (the fluxes cancel in the sum), and
        # every run measures the actual drift.
        rw_previous, self._rw_previous = self._rw_previous, rw
        if upd <= 1e-12 * max(1.0, x_scale) and (
                rw <= 1e3 * self.transport_atol or (rw <= 1e5 * self.transport_atol and rw >= 0.5 * rw_previous)):
            return PETSc.SNES.ConvergedReason.CONVERGED_SNORM_RELATIVE
        if it >= self._max_it:
            return PETSc.SNES.ConvergedReason.DIVERGED_MAX_IT
        return 0

    # ------------------------------------------------------------------------------------------
    def set_gate_voltage(self, volts: float):
        self._set_gate(volts / self.scales.thermal_voltage)

    def _set_gate(self, scaled: float):
        # a float copy: reading Constant.value back costs microseconds, and the residual asks
        # for it at every evaluation
        self.gate.value = scaled
        self._gate_scaled = scaled

    def set_rest_state(self):
        """u = w = 0 (the case's rest densities); a channel site-fraction field at its rest value."""
        for f in (self.x, self.x_n, self.x_nm1):
            f.x.array[:] = 0.0
            if self.phase_field:
                f.x.array[self._theta_dofs] = self._channel_theta0

    def set_line_search(self, kind: str):
        """'basic' (plain Newton, the default: robust at 5-10 V with step rejection) or 'bt'
        (backtracking, the stepper's escalation after repeated failures)."""
        self.snes.getLineSearch().setType(kind)

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
        """One implicit step from x_n with the current gate; x holds the initial guess on entry.

        With the iterative linear solver, a step whose Krylov solve fails is retried once with
        MUMPS from the same initial guess (counted in ``direct_fallbacks``); the field-split
        preconditioner does not converge on the long steps of rests and of the initial
        continuation (README, "Domain decomposition and 3-D"). Only if that fails too does the
        step fail, and the stepper rejects it as any other."""
        if self.case.solver.linear_solver == "iterative":
            guess, gate = self.x.x.array.copy(), self._gate_scaled
            self._border_failed = False
            result = self._solve_step(dt)
            linear_failure = self._border_failed or result.reason.startswith(
                _reason_name(PETSc.SNES.ConvergedReason.DIVERGED_LINEAR_SOLVE))
            if result.converged or not linear_failure:
                return result
            self.x.x.array[:] = guess
            self._set_gate(gate)
            self.direct_fallbacks += 1
            self._use_direct()
            try:
                fallback = self._solve_step(dt)
            finally:
                self._use_iterative()
            return StepResult(fallback.converged, result.iterations + fallback.iterations,
                              f"{fallback.reason} (direct, after {result.reason})")
        return self._solve_step(dt)

    def _solve_step(self, dt: float) -> StepResult:
        self.dt.value = dt
        guess, gate = self.x.x.array.copy(), self._gate_scaled
        try:
            self.problem.solve()
            failed_linear = self.snes.getConvergedReason() == PETSc.SNES.ConvergedReason.DIVERGED_LINEAR_SOLVE
            error = None
        except PETSc.Error as exc:  # MUMPS raises (e.g. INFOG(1) = -3) instead of returning a reason
            failed_linear, error = True, exc
        pc = self.snes.getKSP().getPC()
        if failed_linear and pc.getType() == "lu" and pc.getFactorSolverType() == "petsc":
            # PETSc's own LU does not pivot; a zero pivot on a hard step is no reason to shrink
            # the step: factor with MUMPS from now on and retry.
            pc.reset()
            pc.setType("lu")
            pc.setFactorSolverType("mumps")
            self.x.x.array[:] = guess
            self._set_gate(gate)
            return self.solve_step(dt)
        if error is not None:
            return StepResult(False, self.snes.getIterationNumber(), f"linear solver error: {error}")
        reason = self.snes.getConvergedReason()
        its = self.snes.getIterationNumber()
        if reason > 0:
            return StepResult(True, its, _reason_name(reason))
        if reason == PETSc.SNES.ConvergedReason.DIVERGED_LINEAR_SOLVE:
            return StepResult(False, its, f"{_reason_name(reason)} ({self.linear_solver_report()})")
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
        """The reservoir inventory against which the Faradaic (terminal) charge is counted (an
        ideal reservoir: its count is set to its pinned inventory here, see _reservoir_count_form)."""
        if self.fixed_reservoir:
            self._reservoir_offset = sum(self._sum(f) for f in self._inventory_forms.values())
        self._reservoir_reference = self._sum(self._reservoir_count_form) + self._reservoir_offset

    def gate_state(self) -> tuple[float, float]:
        """(surface charge of the gate [C], protons in the reservoir [device total]): the two
        parts of the gate current, with one reduction."""
        local = np.array([fem.assemble_scalar(self._gate_charge), fem.assemble_scalar(self._reservoir_count_form)])
        if self.comm.size > 1:
            local = self.comm.allreduce(local, op=MPI.SUM)
        return float(local[0]) * self.scales.charge, (float(local[1]) + self._reservoir_offset) * self.scales.count

    def terminal_charge(self, state: np.ndarray | None = None) -> float:
        """Charge that has entered the gate terminal: surface charge of the reservoir plus one
        electron per proton that has left it (C); of the present iterate, or of ``state`` (an
        array of the unknowns, for instance a predictor) at the present gate voltage."""
        if state is not None:
            saved = self.x.x.array.copy()
            self.x.x.array[:] = state
        try:
            terminal = self._sum(self._terminal_form)  # one form: see _terminal_form
        finally:
            if state is not None:
                self.x.x.array[:] = saved
        return terminal * self.scales.charge + Q_E * (self._reservoir_reference - self._reservoir_offset) * self.scales.count

    def geometric_gate_capacitance(self) -> float:
        """eps0 eps_r A / d of the electrolyte (F): the slope guess of the floating-gate solve."""
        from .scaling import EPS0
        g = self.case.geometry
        return EPS0 * self.case.materials.electrolyte.relative_permittivity * g.channel_width * g.channel_length \
            / g.electrolyte_thickness


def _collapsed_map(sub) -> np.ndarray:
    """Indices in the parent mixed space of a sub-space's dofs (local, ghosts included)."""
    _, maps = sub.collapse()  # DOLFINx 0.11 returns the map wrapped in a list
    return np.asarray(maps[0] if isinstance(maps, list) else maps, dtype=np.int64)


def _enum_names(enum) -> dict[int, str]:
    """Value -> name of a petsc4py enum class (the first of aliased names, as PETSc prints it)."""
    names: dict[int, str] = {}
    for name in dir(enum):
        if not name.startswith("_"):
            names.setdefault(getattr(enum, name), name)
    return names


_SNES_REASONS = _enum_names(PETSc.SNES.ConvergedReason)
_KSP_REASONS = _enum_names(PETSc.KSP.ConvergedReason)


def _reason_name(reason: int) -> str:
    return _SNES_REASONS.get(reason, str(reason))


def _ksp_reason_name(reason: int) -> str:
    return _KSP_REASONS.get(reason, str(reason))
