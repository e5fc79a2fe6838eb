"""The physical laws of the device, one function each, as pure UFL (testable on any mesh).

Scaled units (see scaling.py): potentials in kT/q, densities in C0, lengths in L0 = 1 nm, rates
(D/L0^2) in 1/s. ``DeviceModel`` builds its weak forms from these functions and the verification
problems (tests/verification, ``protonfem verify``) use the same ones, so a verified law is the law
the device runs.
"""
from __future__ import annotations

import math

import ufl

#: Cap of the sinh argument: sinh(300) ~ 1e130 keeps every product finite in double precision
#: (Charon caps the argument the same way); 300 corresponds to ~15 V/nm at a = 0.56 nm.
SINH_ARGUMENT_CAP = 300.0
#: Floor of the site-occupancy factor theta (1 - theta) in the mobility. Where the protons are
#: depleted by hundreds of kT the Jacobian rows of w vanish with c and Newton/MUMPS lose w there
#: (it wanders, then the factorisation fails). The floor keeps those rows regular; its flux is
#: below 1e-12 of the rest-state flux and, being a flux, conserves the inventory exactly.
MOBILITY_FLOOR = 1e-12
#: Cap of Butler-Volmer exponents (same reason).
BV_EXPONENT_CAP = 300.0


def logistic(z):
    """1/(1+exp(-z)) without overflow in either tail (each branch is exact where it is used)."""
    ez = ufl.exp(-abs(z))
    return ufl.conditional(ufl.ge(z, 0), 1.0 / (1.0 + ez), ez / (1.0 + ez))


def site_fraction(w, u, e0):
    """theta = c / c_max of site-limited (Fermi-Dirac of order -1) statistics:
    w = ln(theta / (1 - theta)) + u + e0, so 0 < theta < 1 for any w, u."""
    return logistic(w - u - e0)


def rest_offset(c0: float, cmax: float) -> float:
    """e0 that makes w = u = 0 the state with density c0 (any units, same for both)."""
    theta0 = c0 / cmax
    return -math.log(theta0 / (1.0 - theta0))


def sinh_enhancement(x2):
    """g = sinh(x)/x as a function of x^2 (x = q a |E| / 2kT), smooth at 0 and capped."""
    x = ufl.sqrt(ufl.min_value(x2, SINH_ARGUMENT_CAP**2) + 1e-300)
    series = 1.0 + x2 / 6.0 + x2 * x2 / 120.0
    return ufl.conditional(ufl.lt(x2, 1e-4), series, ufl.sinh(x) / x)


def hopping_flux(w, u, rate, cmax, e0, a_half, theta=None):
    """Proton flux of site-limited hopping with the high-field law (scaled).

    J = -D c (1 - c/c_max) [grad w + (g - 1) grad u],  g = sinh(x)/x,  x = (a/2)|grad u|.
    Equivalently J = -D grad c - D c (1 - theta) g grad u: Fick diffusion with D, and a drift
    velocity (2 D / a) sinh(q a E / 2kT) along E (times the free-site fraction), which is
    Nernst-Planck with the Einstein mobility at low field (g -> 1). ``a_half`` = a/2 in L0 units
    (0: ordinary Nernst-Planck). ``theta``: the site fraction when it is an unknown of its own
    (regular-solution channel); by default it follows from w and u.
    """
    if theta is None:
        theta = site_fraction(w, u, e0)
    occupancy = theta * (1.0 - theta)
    x2 = a_half**2 * ufl.inner(ufl.grad(u), ufl.grad(u))
    g = sinh_enhancement(x2)
    # The floor regularises only the grad-w part: with it on the drift part, w in a depleted zone
    # would follow -(g - 1) grad u, i.e. grow like the sinh factor (1e10 at 1 V/nm).
    return -rate * cmax * ((occupancy + MOBILITY_FLOOR) * ufl.grad(w) + occupancy * (g - 1.0) * ufl.grad(u))


def space_charge(c, u, cfix, nd, n0, charged):
    """Net charge density / q (scaled): mobile protons over the fixed background where
    ``charged`` = 1, donors and Boltzmann electrons (quasi-Fermi level 0) where n0 > 0."""
    return charged * (c - cfix) + nd - n0 * ufl.exp(u)


def butler_volmer(delta_w, j0, alpha):
    """Interface proton transfer rate from side 1 to side 2 for the electrochemical-potential jump
    delta_w = w1 - w2 (kT): j = j0 [exp(alpha dw) - exp(-(1 - alpha) dw)]. Tafel slope
    ln(10) kT / (alpha q) per decade; the continuous-potential interface is the j0 -> inf limit."""
    a = ufl.max_value(ufl.min_value(alpha * delta_w, BV_EXPONENT_CAP), -BV_EXPONENT_CAP)
    b = ufl.max_value(ufl.min_value(-(1.0 - alpha) * delta_w, BV_EXPONENT_CAP), -BV_EXPONENT_CAP)
    return j0 * (ufl.exp(a) - ufl.exp(b))


def arrhenius(value_ref: float, activation_energy_ev: float, temperature: float, reference_temperature: float) -> float:
    """value(T) = value_ref exp(-Ea/k (1/T - 1/T_ref)) for every activated rate."""
    k_ev = 8.617333262e-5
    return value_ref * math.exp(-activation_energy_ev / k_ev * (1.0 / temperature - 1.0 / reference_temperature))


def regular_solution_potential(theta, omega, kappa):
    """Chemical potential (kT) of a regular solution with gradient energy, minus the ideal part's
    offset: ln(theta / (1 - theta)) + omega (1 - 2 theta), and -kappa lap(theta) enters the weak form
    as +kappa grad(theta).grad(v). omega = Omega/kT (> 2: phase separation below the critical
    temperature), kappa = gradient coefficient / (kT L0^2)."""
    return ufl.ln(theta / (1.0 - theta)) + omega * (1.0 - 2.0 * theta)
