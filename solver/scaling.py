"""SI at the boundary, scaled inside: the one place where units are converted.

Inside the solver lengths are in L0 = 1 nm, densities in C0 = 1e27 m^-3 (one per nm^3), the
potential and the proton electrochemical potential in units of the thermal voltage kT/q, and
time stays in seconds (diffusivities become rates D/L0^2 in 1/s). With these scales every unknown
and every coefficient of the 10 nm / 10 V problem is O(1)-O(1e3), which keeps Newton's updates
and MUMPS's pivots well conditioned.
"""
from __future__ import annotations

from dataclasses import dataclass

Q_E = 1.602176634e-19      # C
K_B = 1.380649e-23         # J/K
EPS0 = 8.8541878128e-12    # F/m

L0 = 1e-9                  # m
C0 = 1e27                  # m^-3


@dataclass(frozen=True)
class Scales:
    temperature: float  # K
    dimension: int
    #: area (1-D, m^2) or length (2-D, m) that turns a per-area / per-length quantity into a device total
    transverse: float

    @property
    def thermal_voltage(self) -> float:
        return K_B * self.temperature / Q_E

    @property
    def poisson_coupling(self) -> float:
        """Gamma = q C0 L0^2 / (eps0 V_T): the scaled space-charge coefficient of Poisson's equation."""
        return Q_E * C0 * L0**2 / (EPS0 * self.thermal_voltage)

    def length(self, metres: float) -> float:
        return metres / L0

    def density(self, per_m3: float) -> float:
        return per_m3 / C0

    def rate(self, diffusivity: float) -> float:
        return diffusivity / L0**2

    @property
    def count(self) -> float:
        """Protons in the device per unit of the scaled integral of the density."""
        return C0 * L0**self.dimension * self.transverse

    @property
    def charge(self) -> float:
        """Coulombs per unit of the scaled Poisson flux integral (eps_r grad u . grad v dx)."""
        return EPS0 * self.thermal_voltage * L0 ** (self.dimension - 2) * self.transverse

    @property
    def field(self) -> float:
        """V/m per unit of the scaled potential gradient."""
        return self.thermal_voltage / L0
