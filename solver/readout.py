"""Channel conductance from the channel's conductivity law over the proton distribution.

1-D stack: G = (W/L) * integral of sigma(c(z)) over the channel thickness (the exact integral of the
FE representation, by high-order quadrature). 2-D/3-D: a source-drain conduction solve,
-div(sigma grad psi) = 0 in the channel with psi = 1 at the source and 0 at the drain, insulating
elsewhere; G is the source current (the variational flux) per volt times the out-of-plane width.
"""
from __future__ import annotations

import dolfinx_solver  # noqa: F401
import numpy as np
import ufl
from dolfinx import default_scalar_type, fem
from dolfinx.fem import petsc as fem_petsc
from mpi4py import MPI

from protonfem.meshes import tags
from .case import Conductivity
from .model import READOUT_DEGREE, DeviceModel
from .scaling import C0, L0


def conductivity_expr(law: Conductivity, c_si):
    """UFL expression of sigma [S/m] for a proton density expression ``c_si`` [m^-3]."""
    if law.law == "power":
        return law.reference_conductivity * (c_si / law.reference_density) ** law.exponent
    if law.law == "exponential":
        # Capped exponent: a wild Newton iterate must not overflow the read-out.
        arg = ufl.min_value((c_si - law.reference_density) / law.density_scale, 700.0)
        return law.reference_conductivity * ufl.exp(arg)
    # table: piecewise-linear in log(c)-log(sigma), constant beyond the ends
    lc = [float(np.log(d)) for d in law.densities]
    ls = [float(np.log(s)) for s in law.conductivities]
    x = ufl.ln(c_si)
    expr = ufl.as_ufl(ls[-1])
    for i in range(len(lc) - 2, -1, -1):
        seg = ls[i] + (ls[i + 1] - ls[i]) * (x - lc[i]) / (lc[i + 1] - lc[i])
        expr = ufl.conditional(ufl.lt(x, lc[i + 1]), seg, expr)
    expr = ufl.conditional(ufl.lt(x, lc[0]), ls[0], expr)
    return ufl.exp(expr)


def conductivity_numpy(law: Conductivity, c: np.ndarray) -> np.ndarray:
    """The same law on arrays (tests, post-processing)."""
    c = np.asarray(c, dtype=float)
    if law.law == "power":
        return law.reference_conductivity * (c / law.reference_density) ** law.exponent
    if law.law == "exponential":
        return law.reference_conductivity * np.exp(np.minimum((c - law.reference_density) / law.density_scale, 700.0))
    return np.exp(np.interp(np.log(c), np.log(law.densities), np.log(law.conductivities)))


class ConductanceReadout:
    def __init__(self, model: DeviceModel):
        self.model = model
        case = model.case
        g = case.geometry
        sigma = conductivity_expr(case.materials.channel.conductivity, C0 * model.c_expr)
        self.sigma = sigma
        dx_ch = ufl.Measure("dx", domain=model.mesh, subdomain_data=model.cell_tags,
                            metadata={"quadrature_degree": READOUT_DEGREE})(tags.CHANNEL)
        if model.dim == 1:
            self._form = fem.form(sigma * dx_ch)
            self._factor = L0 * g.channel_width / g.channel_length
            return
        # Conduction solve on the channel; dofs that touch no channel cell are pinned (their rows
        # would otherwise be empty because sigma only lives on the channel).
        mesh = model.mesh
        tdim = mesh.topology.dim
        V = model.V1
        self.psi = fem.Function(V, name="read_potential")
        ch_cells = model.cell_tags.find(tags.CHANNEL)
        ch_dofs = fem.locate_dofs_topological(V, tdim, ch_cells)
        n_all = V.dofmap.index_map.size_local + V.dofmap.index_map.num_ghosts
        outside = np.setdiff1d(np.arange(n_all, dtype=np.int32), ch_dofs)
        src = fem.locate_dofs_topological(V, tdim - 1, model.facet_tags.find(tags.SOURCE))
        drn = fem.locate_dofs_topological(V, tdim - 1, model.facet_tags.find(tags.DRAIN))
        one = default_scalar_type(1.0)
        zero = default_scalar_type(0.0)
        bcs = [fem.dirichletbc(one, src, V), fem.dirichletbc(zero, drn, V), fem.dirichletbc(zero, outside, V)]
        # Integrated over every cell with sigma masked to the channel, so that the sparsity pattern
        # holds the diagonal of the pinned dofs (an integral over the channel cells alone would
        # leave those rows empty and the Dirichlet diagonal could not be inserted).
        in_channel = fem.Function(model.DG0)
        in_channel.x.array[model.DG0.dofmap.list[ch_cells, 0]] = 1.0
        in_channel.x.scatter_forward()
        dx_all = ufl.Measure("dx", domain=mesh, metadata={"quadrature_degree": READOUT_DEGREE})
        p, v = ufl.TrialFunction(V), ufl.TestFunction(V)
        a = in_channel * sigma * ufl.inner(ufl.grad(p), ufl.grad(v)) * dx_all
        L = fem.Constant(mesh, zero) * v * dx_all
        self._problem = fem_petsc.LinearProblem(
            a, L, u=self.psi, bcs=bcs, petsc_options_prefix="protonfem_read_",
            petsc_options={"ksp_type": "preonly", "pc_type": "lu", "pc_factor_mat_solver_type": "mumps"})
        chi = fem.Function(V)
        chi.x.array[src] = 1.0
        self._form = fem.form(sigma * ufl.inner(ufl.grad(self.psi), ufl.grad(chi)) * dx_ch)
        self._factor = g.channel_width * L0 ** (model.dim - 2) if model.dim == 2 else L0
        # 2-D: flux per unit depth [S/m * (scaled length)^0] times the width; 3-D: times L0.

    def conductance(self) -> float:
        """Channel conductance G [S] of the current state."""
        if self.model.dim > 1:
            self._problem.solve()
        val = self.model.comm.allreduce(fem.assemble_scalar(self._form), op=MPI.SUM)
        return val * self._factor
