"""Fit compact-model families to pulse data: parameters with uncertainties, goodness of fit,
cross-validation, model comparison, cycle-to-cycle scatter and device-to-device spread.

The families are those of :mod:`protonfem.crossbar.families` - the very functions the crossbar
evaluates - so a fitted parameter means the same thing in both places.  What this module adds is
the statistics around them:

* least squares (``scipy.optimize.least_squares``, trust-region reflective with bounds) of the
  mean step Delta G(G_before, direction; condition) against the measured Delta G of every pulse;
* 1-sigma uncertainties from the Jacobian at the optimum, cov = s^2 (J^T J)^-1 with
  s^2 = SSR / (n - k) (the residual variance), reported in the parameter's own unit;
* RMSE, R^2, AIC = n ln(SSR/n) + 2k, BIC = n ln(SSR/n) + k ln n, and the cross-validated RMSE:
  leave-one-condition-out over the (amplitude, width, T, thickness) groups when the data holds
  several conditions of a direction, k-fold over pulses otherwise;
* warnings (:class:`FitWarning`) when R^2 is low, when a parameter sits on a bound of the search
  box, or when parameters are not identifiable from the data (singular J^T J).

Pulse conditions.  When the data varies amplitude, width, temperature or electrolyte thickness
within a direction (a response map, a sweep), the state family is wrapped in the condition layer
:class:`~protonfem.crossbar.families.SinhPowerCondition`, Delta G = mean_step(G, dir) *
S(V,t,T,d)/S(reference), S = t^beta sinh(q a |V|/(2kTd)), and beta and the hop distance a are fitted
with the state parameters (only those the data can determine: beta needs several widths, a needs
several amplitudes, temperatures or thicknesses; the others stay at the paper's beta = 1.2,
a = 0.56 nm and are reported as fixed).  The ``physics`` family carries its own sinh/power law and
gets each pulse's amplitude and width directly.
"""
from __future__ import annotations

import math
import warnings
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from protonfem.crossbar.families import (E_CHARGE, FAMILIES, K_BOLTZMANN, Family, GaussianScatter, ShotScatter,
                                         SinhPowerCondition)

from .pulse_data import PulseTable

__all__ = ["FITTABLE_FAMILIES", "FitWarning", "FamilyFit", "ScatterFit", "FitReport", "fit_family",
           "fit_families", "cross_validate", "choose_best", "comparison_rows", "format_comparison", "fit_scatter",
           "device_to_device", "energy_per_pulse", "fit_compact_models", "build_model", "HOP_DISTANCE_PAPER",
           "BETA_PAPER"]

#: Families a fit can determine from pulse data, simplest first: the order breaks BIC ties.
FITTABLE_FAMILIES = ("constant_step", "soft_bounds", "linear_step", "pow_step", "exp_step", "physics", "tabulated")
TABLE_PULSES_PER_NODE = 15   # tabulated: pulses per bin of the state
TABLE_MAX_NODES = 12
HOP_DISTANCE_PAPER = 0.56e-9  # m, Onen et al. 2022, Fig. 3 [P]
BETA_PAPER = 1.2              # pulse-width exponent of the same fit [P]
#: Families whose BIC differs by less than this are "not distinguishable" (Kass & Raftery 1995):
#: the one with fewer free parameters (then the earlier in FITTABLE_FAMILIES) is chosen.
BIC_TIE = 2.0
R2_WARN = 0.9


class FitWarning(UserWarning):
    """A fit that is poor, constrained by a bound, or not identifiable."""


# ----------------------------------------------------------------------------------------------
# Data summaries
# ----------------------------------------------------------------------------------------------
def _mode(values):
    return Counter(values).most_common(1)[0][0]


@dataclass
class _DataStats:
    G_lo: float
    G_hi: float
    ref: dict            # direction (+1/-1) -> (|V|, width) of its most common pulse
    T_ref: float
    d_ref: float
    width_varies: bool   # several widths within a direction
    drive_varies: bool   # several |V|/(T d) within a direction
    at_ref: np.ndarray   # rows at their direction's reference condition (and T_ref, d_ref)
    dG_per_proton: float | None

    @property
    def span(self):
        return self.G_hi - self.G_lo


def _stats(table: PulseTable) -> _DataStats:
    G = np.concatenate([table["G_before_S"], table["G_after_S"]])
    keys = table.condition_keys()
    T_ref = _mode([k[3] for k in keys])
    d_ref = _mode([k[4] for k in keys])
    ref, width_varies, drive_varies = {}, False, False
    for d in (1, -1):
        kd = [k for k in keys if k[0] == d]
        if not kd:
            continue
        # the most common pulse; ties go to the larger amplitude, then the longer pulse
        counts = Counter((k[1], k[2]) for k in kd)
        ref[d] = max(counts, key=lambda c: (counts[c], c[0], c[1]))
        width_varies |= len({k[2] for k in kd}) > 1
        drive_varies |= len({round(k[1] / (k[3] * k[4]), 3) for k in kd}) > 1
    at_ref = np.array([k[0] in ref and (k[1], k[2]) == ref[k[0]] and k[3] == T_ref and k[4] == d_ref for k in keys])
    p = table["protons"]
    ok = np.isfinite(p) & (p > 0) & np.isfinite(table["dG_S"])
    dgpp = float(np.median(np.abs(table["dG_S"][ok]) / p[ok])) if ok.sum() >= 1 else None
    if dgpp is not None and not (dgpp > 0 and math.isfinite(dgpp)):
        dgpp = None
    return _DataStats(float(np.min(G)), float(np.max(G)), ref, T_ref, d_ref, width_varies, drive_varies,
                      at_ref, dgpp)


# ----------------------------------------------------------------------------------------------
# Fit set-up per family: which parameters are free, their start values and search box
# ----------------------------------------------------------------------------------------------
@dataclass
class _Setup:
    fixed: dict                      # name -> value (SI), not fitted
    start: list[dict]                # one or more start points: name -> value (SI) of the free ones
    lower: dict
    upper: dict
    notes: list[str] = field(default_factory=list)

    @property
    def free(self) -> list[str]:
        return list(self.start[0])


def _direction_means(table, st):
    """Mean |Delta G| per direction over the reference-condition pulses (all pulses if none)."""
    out = {}
    for d in (1, -1):
        m = (table["direction"] == d) & st.at_ref
        if not m.any():
            m = table["direction"] == d
        out[d] = float(np.mean(np.abs(table["dG_S"][m]))) if m.any() else None
    return out


def _soft_start(table, st, mu):
    """Soft-bounds start values from straight lines |Delta G| vs G per direction (their roots are the
    bounds), falling back to a window twice the data range when a line points the wrong way."""
    G, dG, dirn = table["G_before_S"], np.abs(table["dG_S"]), table["direction"]
    gmin, gmax = st.G_lo - 0.5 * st.span, st.G_hi + 0.5 * st.span
    for d in (1, -1):
        m = (dirn == d) & st.at_ref
        if m.sum() >= 3 and np.ptp(G[m]) > 0:
            slope, icpt = np.polyfit(G[m], dG[m], 1)
            if d > 0 and slope < 0 and -icpt / slope > st.G_hi:
                gmax = -icpt / slope
            if d < 0 and slope > 0 and -icpt / slope < st.G_lo:
                gmin = -icpt / slope
    gmin = max(gmin, 1e-3 * st.G_lo if st.G_lo > 0 else 1e-3 * st.span)
    half = 0.5 * (gmax - gmin)

    def eff(d):  # mean step divided by the mean soft-bounds shape factor of the pulses
        m = (dirn == d) & st.at_ref
        if not m.any() or mu[d] is None:
            return None
        z = 2 * (G[m] - gmin) / (gmax - gmin) - 1
        shape = (1 - z) if d > 0 else (1 + z)
        return mu[d] / max(float(np.mean(shape)), 1e-3)

    up, dn = eff(1), eff(-1)
    return gmin, gmax, half, up, dn


def _step_start(up, dn):
    """dG and up_down from the effective up and down steps (either may be missing)."""
    if up is None and dn is None:
        return 1.0, 0.0
    if up is None or dn is None:
        return (up if dn is None else dn), 0.0
    dG = 0.5 * (up + dn)
    return dG, float(np.clip((up - dn) / (up + dn), -0.9, 0.9))


def _setup(name: str, table: PulseTable, st: _DataStats) -> _Setup:
    mu = _direction_means(table, st)
    bounds_fixed = {"G_min": st.G_lo, "G_max": st.G_hi}
    dG0, ud0 = _step_start(mu[1], mu[-1])
    dG_box = (0.0, math.inf)
    ud_box = (-0.99, 0.99)
    if name == "constant_step":
        return _Setup(dict(bounds_fixed), [{"dG": dG0, "up_down": ud0}], {"dG": dG_box[0], "up_down": ud_box[0]},
                      {"dG": dG_box[1], "up_down": ud_box[1]},
                      ["G_min, G_max fixed at the observed conductance range (hard bounds)"])
    if name == "linear_step":
        free = {"dG": dG0, "up_down": ud0, "gamma_up": 0.0, "gamma_down": 0.0}
        return _Setup(dict(bounds_fixed), [free],
                      {"dG": 0.0, "up_down": -0.99, "gamma_up": -20.0, "gamma_down": -20.0},
                      {"dG": math.inf, "up_down": 0.99, "gamma_up": 20.0, "gamma_down": 20.0},
                      ["G_min, G_max fixed at the observed conductance range: they only set the z scale "
                       "of gamma (free bounds would be degenerate with gamma)"])
    if name == "exp_step":
        starts = [{"dG": dG0, "up_down": ud0, "A_up": a, "A_down": a, "gamma_up": g, "gamma_down": g}
                  for a, g in ((0.1, 1.0), (0.3, 2.0), (0.01, 4.0))]
        return _Setup(dict(bounds_fixed), starts,
                      {"dG": 0.0, "up_down": -0.99, "A_up": -10.0, "A_down": -10.0, "gamma_up": -30.0,
                       "gamma_down": -30.0},
                      {"dG": math.inf, "up_down": 0.99, "A_up": 10.0, "A_down": 10.0, "gamma_up": 30.0,
                       "gamma_down": 30.0},
                      ["G_min, G_max fixed at the observed conductance range (set the z scale of A, gamma)"])
    if name in ("soft_bounds", "pow_step"):
        gmin, gmax, half, up, dn = _soft_start(table, st, mu)
        dGs, uds = _step_start(up, dn)
        free = {"G_min": gmin, "G_max": gmax, "dG": dGs, "up_down": uds}
        # the bounds may lie inside the observed range by half of it (noisy read-outs overshoot them)
        lo = {"G_min": 1e-6 * max(st.G_lo, 1e-30), "G_max": st.G_hi - 0.5 * st.span, "dG": 0.0, "up_down": -0.99}
        hi = {"G_min": st.G_lo + 0.5 * st.span, "G_max": 1e3 * st.G_hi, "dG": math.inf, "up_down": 0.99}
        starts = [free]
        if name == "pow_step":
            starts = [dict(free, gamma=g) for g in (1.0, 0.5, 2.0)]
            lo["gamma"], hi["gamma"] = 0.05, 20.0
        return _Setup({}, starts, lo, hi)
    if name == "physics":
        return _physics_setup(table, st, mu)
    raise ValueError(f"family {name!r} cannot be fitted (fittable: {', '.join(FITTABLE_FAMILIES)})")


def _physics_setup(table, st, mu) -> _Setup:
    notes = []
    V_up = st.ref.get(1, (None, None))[0] or st.ref.get(-1)[0]
    V_dn = st.ref.get(-1, (None, None))[0] or V_up
    t_ref = (st.ref.get(1) or st.ref.get(-1))[1]
    V0_paper = 2 * K_BOLTZMANN * st.T_ref * st.d_ref / (E_CHARGE * HOP_DISTANCE_PAPER)
    gmin = max(st.G_lo - 0.05 * st.span, 0.5 * st.G_lo)
    gmax = st.G_hi + 0.05 * st.span
    span = gmax - gmin
    if st.dG_per_proton:
        Q_max = span * E_CHARGE / st.dG_per_proton
        notes.append("Q_max fixed so that one proton moves the measured Delta G per proton: "
                     "Q_max = (G_max - G_min) e / (dG/proton)")
    else:
        Q_max = 1e4 * E_CHARGE
        notes.append("no proton counts in the data: Q_max fixed at 1e4 protons (the ~1e4 protons of the full "
                     "20x range estimated in the reference sheet); only q0/Q_max is determined")
    fixed = {"Q_max": Q_max, "t0": t_ref, "V_up": V_up, "V_down": V_dn, "t_pulse": t_ref, "m": 1.0}
    mean_step = np.nanmean([v for v in mu.values() if v is not None])
    q_ref = mean_step * Q_max / span
    free = {"G_min": gmin, "G_max": gmax, "V_ocp": 0.05}
    # as for soft bounds: noisy read-outs may overshoot the bounds (states beyond them are clipped)
    lo = {"G_min": 1e-6 * max(st.G_lo, 1e-30), "G_max": st.G_hi - 0.5 * st.span, "V_ocp": -5.0}
    hi = {"G_min": st.G_lo + 0.5 * st.span, "G_max": 1e3 * st.G_hi, "V_ocp": 5.0}
    if st.drive_varies:
        free["V0"], lo["V0"], hi["V0"] = V0_paper, 1e-3, 100.0
    else:
        fixed["V0"] = V0_paper
        notes.append(f"V0 fixed at 2kTd/(q a) = {V0_paper:.4g} V with a = 0.56 nm (one amplitude per direction)")
    if st.width_varies:
        free["beta"], lo["beta"], hi["beta"] = BETA_PAPER, 0.05, 5.0
    else:
        fixed["beta"] = BETA_PAPER
        notes.append("beta fixed at 1.2 (one pulse width)")
    V0 = free.get("V0", fixed.get("V0"))
    free["q0"] = q_ref / math.sinh(min(0.5 * (V_up + V_dn) / V0, 700.0))
    lo["q0"], hi["q0"] = 0.0, math.inf
    # the open-circuit term makes the landscape multi-modal: start from weak and strong back-pull,
    # and from a lower bound well below the data
    starts = [dict(free, V_ocp=v, G_min=g) for v in (0.05, 0.3, 1.0)
              for g in (gmin, max(st.G_lo - 0.5 * st.span, 0.2 * st.G_lo))]
    return _Setup(fixed, starts, lo, hi, notes)


def _condition_setup(st: _DataStats):
    """The condition layer when pulse conditions vary within a direction: (law, fixed, start, lo, hi, notes)."""
    if not (st.width_varies or st.drive_varies):
        return None
    up = st.ref.get(1) or st.ref.get(-1)
    dn = st.ref.get(-1) or st.ref.get(1)
    law = SinhPowerCondition({"amplitude": up[0], "width": up[1]}, {"amplitude": dn[0], "width": dn[1]},
                             st.T_ref, st.d_ref)
    fixed, start, lo, hi, notes = {}, {}, {}, {}, []
    if st.width_varies:
        start["beta"], lo["beta"], hi["beta"] = BETA_PAPER, -5.0, 10.0
    else:
        fixed["beta"] = BETA_PAPER
        notes.append("beta fixed at 1.2 (one pulse width per direction)")
    if st.drive_varies:
        start["hop_distance"], lo["hop_distance"], hi["hop_distance"] = HOP_DISTANCE_PAPER, 1e-12, 1e-8
    else:
        fixed["hop_distance"] = HOP_DISTANCE_PAPER
        notes.append("hop distance fixed at 0.56 nm (one amplitude, temperature and thickness per direction)")
    return law, fixed, start, lo, hi, notes


def _condition_weights(table: PulseTable) -> np.ndarray:
    """Least-squares weight of each pulse: 1 / (mean |Delta G| of its condition group).

    A response map spans orders of magnitude in Delta G (sinh in V); unweighted residuals would let
    the largest-amplitude group decide every parameter.  Weighting each condition by its typical
    step measures residuals relative to it (noise std proportional to the group's mean step); with
    one condition per direction this only balances up against down pulses."""
    keys = table.condition_keys()
    dG = np.abs(table["dG_S"])
    means = {}
    for k in set(keys):
        m = np.array([kk == k for kk in keys])
        means[k] = float(np.mean(dG[m]))
    scale = np.array([means[k] for k in keys])
    fallback = float(np.mean(dG)) if np.mean(dG) > 0 else 1.0
    scale = np.where(scale > 0, scale, fallback)
    return 1.0 / scale


# ----------------------------------------------------------------------------------------------
# Prediction
# ----------------------------------------------------------------------------------------------
def _predict(family: Family, params: dict, law, cparams: dict, table: PulseTable, st_ref: dict | None = None):
    """Mean Delta G of every pulse of the table under a family (+ condition law)."""
    G, d = table["G_before_S"], table["direction"]
    if family.name == "physics":
        p = dict(params)
        # the physics law takes each pulse's own condition; V0 = 2kTd/(q a) scales with T d
        p["V_up"] = np.abs(table["amplitude_V"])
        p["V_down"] = np.abs(table["amplitude_V"])
        p["t_pulse"] = table["width_s"]
        if st_ref is not None:
            p["V0"] = params["V0"] * table["temperature_K"] * table["electrolyte_thickness_m"] / \
                (st_ref["T"] * st_ref["d"])
        return family.mean_step(G, d, p)
    mu = family.mean_step(G, d, params)
    if law is not None:
        mu = mu * law.factor(d, table["amplitude_V"], table["width_s"], table["temperature_K"],
                             table["electrolyte_thickness_m"], cparams)
    return mu


# ----------------------------------------------------------------------------------------------
# Fit results
# ----------------------------------------------------------------------------------------------
@dataclass
class FamilyFit:
    """One family fitted to one table.  Parameters in SI units (those of ``Family.params``)."""

    family: Family
    params: dict[str, float]
    std: dict[str, float]                 # 1-sigma of the free parameters (inf: not identifiable)
    free: list[str]
    condition: SinhPowerCondition | None
    condition_params: dict[str, float]
    condition_std: dict[str, float]
    condition_free: list[str]
    n: int
    ssr: float
    rmse: float
    r2: float
    r2_within_direction: float
    aic: float
    bic: float
    predicted: np.ndarray
    residuals: np.ndarray
    success: bool
    message: str
    reference: dict                       # T [K], d [m] of the reference condition
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    at_bound: list[str] = field(default_factory=list)       # free parameters stopped on a search bound
    unidentified: list[str] = field(default_factory=list)   # free parameters the data do not determine
    table_nodes: int = 0                  # tabulated: the bin means, fitted numbers beyond `free`
    cv_rmse: float = math.nan
    cv_scheme: str = ""

    @property
    def name(self) -> str:
        return self.family.name

    @property
    def k(self) -> int:
        return len(self.free) + len(self.condition_free) + self.table_nodes

    @property
    def clean(self) -> bool:
        """Converged, every free parameter inside its search box and determined by the data."""
        return self.success and not self.at_bound and not self.unidentified

    def predict(self, table: PulseTable) -> np.ndarray:
        return _predict(self.family, self.params, self.condition, self.condition_params, table, self.reference)

    def parameter_rows(self) -> list[dict]:
        """name, value, std, unit, fixed for the family's and the condition law's parameters."""
        rows = []
        for spec in self.family.params:
            rows.append({"name": spec.name, "value": self.params[spec.name], "std": self.std.get(spec.name),
                         "unit": spec.unit, "fixed": spec.name not in self.free})
        if self.condition is not None:
            for spec in self.condition.params:
                rows.append({"name": spec.name, "value": self.condition_params[spec.name],
                             "std": self.condition_std.get(spec.name), "unit": spec.unit,
                             "fixed": spec.name not in self.condition_free, "law": self.condition.name})
        return rows

    def metrics(self) -> dict:
        return {"n_pulses": self.n, "n_free_parameters": self.k, "rmse_S": self.rmse, "r2": self.r2,
                "r2_within_direction": self.r2_within_direction, "cv_rmse_S": _finite_or_none(self.cv_rmse),
                "cv_scheme": self.cv_scheme, "aic": self.aic, "bic": self.bic}


def _finite_or_none(x):
    return float(x) if x is not None and math.isfinite(x) else None


def _scales(names, start, units, Gs):
    """Search-space scale of each free parameter: its start magnitude (so the optimiser sees O(1)
    numbers whether a conductance is 1e-8 S or a hop distance 5e-10 m)."""
    out = []
    for n in names:
        v = abs(start[n])
        out.append(v if v > 0 else (Gs if units[n] == "S" else 1.0))
    return np.asarray(out)


def fit_family(table: PulseTable, family_name: str, *, emit_warnings: bool = True, r2_warn: float = R2_WARN,
               warm_start: "FamilyFit | None" = None) -> FamilyFit:
    """Least-squares fit of one family (with the condition layer when conditions vary).

    ``warm_start``: a fit of the same family (e.g. to all the data) whose free parameters replace
    the start points; cross-validation uses it so each fold needs one short descent."""
    from scipy.optimize import least_squares  # here: `protonfem --help` should not pay for SciPy

    if family_name not in FITTABLE_FAMILIES:
        raise ValueError(f"family {family_name!r} cannot be fitted (fittable: {', '.join(FITTABLE_FAMILIES)})")
    if len(table) < 2:
        raise ValueError(f"{len(table)} pulse(s): too few to fit")
    st = _stats(table)
    if family_name == "tabulated":
        return _fit_tabulated(table, st, emit_warnings, r2_warn)
    family = FAMILIES[family_name]()
    setup = _setup(family_name, table, st)
    law, cfixed, cstart, clo, chi, cnotes = (None, {}, {}, {}, {}, [])
    if family_name != "physics":
        cs = _condition_setup(st)
        if cs is not None:
            law, cfixed, cstart, clo, chi, cnotes = cs
    units = {s.name: s.unit for s in family.params}
    if law is not None:
        units.update({s.name: s.unit for s in law.params})
    if warm_start is not None and warm_start.name == family_name:
        setup.start = [{k: warm_start.params.get(k, v) for k, v in setup.start[0].items()}]
        cstart = {k: warm_start.condition_params.get(k, v) for k, v in cstart.items()}
    names = setup.free + list(cstart)
    Gs = max(abs(st.G_hi), abs(st.G_lo), 1e-300)
    dG = table["dG_S"]
    n = len(table)
    ref = {"T": st.T_ref, "d": st.d_ref}
    wgt = _condition_weights(table)

    def unpack(x, scale):
        v = dict(zip(names, x * scale))
        p = dict(setup.fixed)
        p.update({k: v[k] for k in setup.free})
        cp = dict(cfixed)
        cp.update({k: v[k] for k in cstart})
        return p, cp

    best = None
    for start in setup.start:
        s0 = dict(start, **cstart)
        scale = _scales(names, s0, units, Gs)
        x0 = np.array([s0[k] for k in names]) / scale
        lb = np.array([{**setup.lower, **clo}[k] for k in names]) / scale
        ub = np.array([{**setup.upper, **chi}[k] for k in names]) / scale
        x0 = np.clip(x0, lb, ub)

        def resid(x, scale=scale):
            p, cp = unpack(x, scale)
            with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
                r = (_predict(family, p, law, cp, table, ref) - dG) * wgt
            return np.where(np.isfinite(r), r, 1e3)

        try:
            nfev = (15 if warm_start else 100) * (len(names) + 1)  # a warm start is near its optimum
            res = least_squares(resid, x0, bounds=(lb, ub), method="trf", max_nfev=nfev, x_scale=1.0)
        except ValueError as e:
            res = None
            msg = str(e)
        if res is not None and (best is None or res.cost < best[0].cost):
            best = (res, scale, lb, ub)
    if best is None:
        raise ValueError(f"{family_name}: least squares failed ({msg})")
    res, scale, lb, ub = best
    p, cp = unpack(res.x, scale)
    with np.errstate(over="ignore", invalid="ignore"):
        pred = _predict(family, p, law, cp, table, ref)
    k = len(names)
    warn, notes = [], list(setup.notes) + cnotes
    at_bound, unidentified = [], []
    # uncertainties: cov = s^2 (J^T J)^-1 with s^2 = SSR/(n-k), from the Jacobian at the optimum
    std_x = np.full(k, math.inf)
    J = res.jac
    if n > k and k:
        s2 = float(np.sum(res.fun ** 2)) / (n - k)
        JTJ = J.T @ J
        col = np.sqrt(np.diag(JTJ))
        ident = col > 1e-12 * max(col.max(), 1e-300)
        if ident.any():
            sub = JTJ[np.ix_(ident, ident)]
            w, V = np.linalg.eigh(sub)
            if w.min() > 1e-12 * w.max():
                cov = s2 * (V / w) @ V.T
                std_x[ident] = np.sqrt(np.maximum(np.diag(cov), 0.0))
            else:
                # ill-conditioned: the parameters along the null direction are not separately determined
                cov = s2 * np.linalg.pinv(sub, rcond=1e-12)
                std_x[ident] = np.sqrt(np.maximum(np.diag(cov), 0.0))
                null = V[:, 0]
                involved = [n_ for n_, on in zip([nm for nm, i in zip(names, ident) if i], np.abs(null) > 0.1) if on]
                warn.append(f"{family_name}: parameters {', '.join(involved)} are not separately identifiable from "
                            "these data (J^T J singular); their uncertainties are not meaningful")
                for nm in involved:
                    std_x[names.index(nm)] = math.inf
                unidentified += involved
        for nm, i in zip(names, ident):
            if not i:
                warn.append(f"{family_name}: parameter {nm} does not affect the fit (no data constrain it)")
                unidentified.append(nm)
    elif n <= k:
        warn.append(f"{family_name}: {n} pulses for {k} free parameters: no uncertainties")
    std = {nm: float(sx * sc) for nm, sx, sc in zip(names, std_x, scale)}
    for nm, x, lo_, hi_ in zip(names, res.x, lb, ub):
        width = (hi_ - lo_) if math.isfinite(hi_ - lo_) else max(1.0, abs(lo_))
        for side, b in (("lower", lo_), ("upper", hi_)):
            if math.isfinite(b) and abs(x - b) <= 1e-6 * width + 1e-9 * abs(b):
                at_bound.append(nm)
                warn.append(f"{family_name}: parameter {nm} = {x * scale[names.index(nm)]:.4g} sits on its {side} "
                            "search bound: the data push it beyond, its uncertainty is not meaningful")
    if not res.success:
        warn.append(f"{family_name}: the optimiser stopped without converging ({res.message})")
    fit = FamilyFit(family=family, params={s.name: float(p[s.name]) for s in family.params},
                    std={nm: std[nm] for nm in setup.free}, free=list(setup.free), condition=law,
                    condition_params={k_: float(v) for k_, v in cp.items()} if law is not None else {},
                    condition_std={nm: std[nm] for nm in cstart}, condition_free=list(cstart),
                    **_goodness(table, pred, wgt, k), predicted=pred, residuals=dG - pred,
                    success=bool(res.success), message=str(res.message), reference=ref, warnings=warn, notes=notes,
                    at_bound=at_bound, unidentified=unidentified)
    return _finish(fit, r2_warn, emit_warnings)


def _goodness(table: PulseTable, pred: np.ndarray, wgt: np.ndarray, k: int) -> dict:
    """n, SSR, RMSE, R^2 (overall and within each direction), AIC and BIC of k fitted numbers; the
    information criteria from the weighted residuals (the likelihood the fit maximised)."""
    dG = table["dG_S"]
    n = len(dG)
    r = dG - pred
    ssr = float(np.sum(r ** 2))
    msr = max(float(np.sum((r * wgt) ** 2)) / n, 1e-300)
    sst = float(np.sum((dG - dG.mean()) ** 2))
    sst_dir = sum(float(np.sum((dG[m] - dG[m].mean()) ** 2))
                  for m in (table["direction"] > 0, table["direction"] < 0) if m.any())
    return {"n": n, "ssr": ssr, "rmse": math.sqrt(ssr / n), "r2": 1.0 - ssr / sst if sst > 0 else math.nan,
            "r2_within_direction": 1.0 - ssr / sst_dir if sst_dir > 0 else math.nan,
            "aic": n * math.log(msr) + 2 * k, "bic": n * math.log(msr) + k * math.log(n)}


def _finish(fit: FamilyFit, r2_warn: float, emit_warnings: bool) -> FamilyFit:
    if not (fit.r2 >= r2_warn):
        fit.warnings.append(f"{fit.name}: poor fit, R^2 = {fit.r2:.3f} < {r2_warn}")
    if emit_warnings:
        for w in fit.warnings:
            warnings.warn(w, FitWarning, stacklevel=3)
    return fit


def _detrended_std(G, dG) -> float:
    """Scatter of the steps in one bin about a straight line through them: the step's own trend
    across the bin is state dependence, already in the neighbouring nodes, not pulse-to-pulse noise."""
    if len(G) >= 4 and np.ptp(G) > 0:
        r = dG - np.polyval(np.polyfit(G, dG, 1), G)
        return float(np.sqrt(np.sum(r ** 2) / (len(G) - 2)))
    return float(dG.std(ddof=1)) if len(G) > 1 else 0.0


def _fit_tabulated(table: PulseTable, st: _DataStats, emit_warnings: bool, r2_warn: float) -> FamilyFit:
    """The ``tabulated`` family from data: per direction, Delta G against G in equal-count bins of the
    state (mean per bin at the bin's mean state, and the detrended standard deviation).  The table's std is the
    measured pulse-to-pulse scatter; every bin mean counts as a fitted number in AIC/BIC."""
    if st.width_varies or st.drive_varies:
        raise ValueError("tabulated needs one pulse condition per direction (the table holds the reference pulses)")
    tab, k = {}, 0
    for d, key in ((1, "up"), (-1, "down")):
        m = table["direction"] == d
        if m.sum() < 4:
            raise ValueError(f"tabulated needs at least 4 {key} pulses, got {int(m.sum())}")
        G, dG = table["G_before_S"][m], table["dG_S"][m]
        order = np.argsort(G, kind="stable")
        bins = [b for b in np.array_split(order, int(np.clip(m.sum() // TABLE_PULSES_PER_NODE, 2, TABLE_MAX_NODES)))]
        nodes = [(float(G[b].mean()), float(dG[b].mean()), _detrended_std(G[b], dG[b])) for b in bins]
        nodes = [nd for i, nd in enumerate(nodes) if i == 0 or nd[0] > nodes[i - 1][0]]  # strictly increasing G
        if len(nodes) < 2:
            raise ValueError(f"tabulated: the {key} pulses span a single state")
        Gn, mean, std = (np.array(c) for c in zip(*nodes))
        mean = np.maximum(mean, 0.0) if d > 0 else np.minimum(mean, 0.0)  # a step never reverses sign
        tab[key] = {"G": Gn, "dG_mean": mean, "dG_std": std}
        k += len(Gn)
    family = FAMILIES["tabulated"](tab)
    params = {"G_min": st.G_lo, "G_max": st.G_hi, "dG_scale": 1.0}
    pred = family.mean_step(table["G_before_S"], table["direction"], params)
    fit = FamilyFit(family=family, params=params, std={}, free=[], condition=None, condition_params={},
                    condition_std={}, condition_free=[], **_goodness(table, pred, _condition_weights(table), k),
                    predicted=pred, residuals=table["dG_S"] - pred, success=True, message="binned means",
                    reference={"T": st.T_ref, "d": st.d_ref}, table_nodes=k,
                    notes=[f"{len(tab['up']['G'])} up and {len(tab['down']['G'])} down nodes, equal-count bins of "
                           "the state; std per node is the measured scatter"])
    return _finish(fit, r2_warn, emit_warnings)


# ----------------------------------------------------------------------------------------------
# Cross-validation and comparison
# ----------------------------------------------------------------------------------------------
def _cv_folds(table: PulseTable, folds: int, seed: int):
    """(scheme, list of held-out masks).  Leave one condition out when some direction has several
    conditions (each held-out condition keeps at least one other of its direction for training);
    k-fold over pulses otherwise."""
    keys = table.condition_keys()
    by_dir = {d: sorted({k for k in keys if k[0] == d}) for d in (1, -1)}
    groups = [g for d in (1, -1) if len(by_dir[d]) > 1 for g in by_dir[d]]
    if groups:
        return "leave-one-condition-out", [np.array([k == g for k in keys]) for g in groups]
    n = len(table)
    k = max(2, min(folds, n // 2))
    order = np.random.default_rng(seed).permutation(n)
    masks = []
    for i in range(k):
        m = np.zeros(n, bool)
        m[order[i::k]] = True
        masks.append(m)
    return f"{k}-fold over pulses", masks


def cross_validate(table: PulseTable, family_name: str, *, folds: int = 5, seed: int = 0,
                   warm_start: FamilyFit | None = None) -> tuple[float, str]:
    """Cross-validated RMSE [S] of a family and the scheme used (see :func:`_cv_folds`)."""
    scheme, masks = _cv_folds(table, folds, seed)
    sq, count = 0.0, 0
    for test in masks:
        train = ~test
        if train.sum() < 3 or not test.any():
            continue
        try:
            f = fit_family(table.select(train), family_name, emit_warnings=False, warm_start=warm_start)
        except ValueError:
            continue
        sub = table.select(test)
        with np.errstate(over="ignore", invalid="ignore"):
            r = f.predict(sub) - sub["dG_S"]
        sq += float(np.sum(r ** 2))
        count += len(r)
    return (math.sqrt(sq / count) if count else math.nan), scheme


def fit_families(table: PulseTable, families=None, *, cv: bool = True, folds: int = 5, seed: int = 0,
                 emit_warnings: bool = True) -> list[FamilyFit]:
    """Fit each family (default: every fittable one); failures are reported as warnings and left out."""
    out = []
    for name in families or FITTABLE_FAMILIES:
        try:
            f = fit_family(table, name, emit_warnings=emit_warnings)
        except ValueError as e:
            # a family the data cannot support is only news when it was asked for
            if emit_warnings and (families or name != "tabulated"):
                warnings.warn(f"{name}: not fitted ({e})", FitWarning, stacklevel=2)
            continue
        if cv:
            f.cv_rmse, f.cv_scheme = cross_validate(table, name, folds=folds, seed=seed, warm_start=f)
        out.append(f)
    return out


def choose_best(fits: list[FamilyFit]) -> FamilyFit:
    """Lowest BIC among the clean fits (converged, no parameter on a search bound or undetermined;
    all fits when none is clean); families within :data:`BIC_TIE` of it count as equally good and
    the one with the fewest free parameters (then the simplest in :data:`FITTABLE_FAMILIES`) is
    taken."""
    if not fits:
        raise ValueError("no successful fit to choose from")
    ok = [f for f in fits if math.isfinite(f.bic) and f.clean] or [f for f in fits if math.isfinite(f.bic)] or fits
    bmin = min(f.bic for f in ok)
    near = [f for f in ok if f.bic <= bmin + BIC_TIE]
    return min(near, key=lambda f: (f.k, FITTABLE_FAMILIES.index(f.name)))


def comparison_rows(fits: list[FamilyFit]) -> list[dict]:
    bmin = min((f.bic for f in fits), default=0.0)
    return [{"family": f.name, "n_params": f.k, "rmse_S": f.rmse, "r2": f.r2,
             "r2_within_direction": f.r2_within_direction, "cv_rmse_S": _finite_or_none(f.cv_rmse),
             "aic": f.aic, "bic": f.bic, "delta_bic": f.bic - bmin, "warnings": len(f.warnings)} for f in fits]


def format_comparison(fits: list[FamilyFit], chosen: FamilyFit | None = None) -> str:
    """The model-comparison table as plain text."""
    # R^2 dir: R^2 about each direction's mean step, i.e. how much of the state dependence is explained
    head = (f"{'family':<14}{'k':>3}{'RMSE [S]':>12}{'R^2':>9}{'R^2 dir':>9}{'CV-RMSE [S]':>13}{'AIC':>11}"
            f"{'BIC':>11}{'dBIC':>8}")
    lines = [head, "-" * len(head)]
    for r in comparison_rows(fits):
        cv = "n/a" if r["cv_rmse_S"] is None else f"{r['cv_rmse_S']:.4g}"
        mark = " *" if chosen is not None and r["family"] == chosen.name else ""
        lines.append(f"{r['family']:<14}{r['n_params']:>3}{r['rmse_S']:>12.4g}{r['r2']:>9.4f}"
                     f"{r['r2_within_direction']:>9.4f}{cv:>13}"
                     f"{r['aic']:>11.1f}{r['bic']:>11.1f}{r['delta_bic']:>8.1f}{mark}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# Cycle-to-cycle scatter
# ----------------------------------------------------------------------------------------------
@dataclass
class ScatterFit:
    """Candidate c2c models with their Gaussian log-likelihood of the fit residuals."""

    sigma_abs: float
    loglik_abs: float
    sigma_rel: float
    loglik_rel: float
    dG_per_proton: float | None
    mean_protons: float | None
    loglik_shot: float | None

    def best_gaussian(self) -> GaussianScatter:
        if self.loglik_rel > self.loglik_abs:
            return GaussianScatter(sigma_rel=self.sigma_rel)
        return GaussianScatter(sigma_abs=self.sigma_abs)

    def choose(self, policy: str = "auto"):
        """``gaussian``: the Gaussian of higher likelihood (relative or absolute); ``shot``: Poisson
        in the protons per pulse (needs proton counts); ``none``: no scatter; ``auto``: shot when the
        data carry proton counts - the device solver is deterministic, so its residuals measure model
        error, and the Poisson statistics of the few protons a pulse moves are the physical
        pulse-to-pulse scatter - else the better Gaussian."""
        if policy == "none":
            return GaussianScatter()
        if policy == "shot" or (policy == "auto" and self.dG_per_proton):
            if not self.dG_per_proton:
                raise ValueError("shot-noise scatter needs proton counts (faradaic charge) in the data")
            return ShotScatter(self.dG_per_proton)
        if policy in ("gaussian", "auto"):
            return self.best_gaussian()
        raise ValueError(f"scatter policy {policy!r}: expected auto, gaussian, shot or none")

    def to_dict(self) -> dict:
        return {"gaussian_abs": {"sigma_abs_S": self.sigma_abs, "loglik": self.loglik_abs},
                "gaussian_rel": {"sigma_rel": self.sigma_rel, "loglik": self.loglik_rel},
                "shot": None if self.dG_per_proton is None else
                {"dG_per_proton_S": self.dG_per_proton, "mean_protons_per_pulse": self.mean_protons,
                 "relative_std_at_mean": 1.0 / math.sqrt(self.mean_protons) if self.mean_protons else None,
                 "loglik": self.loglik_shot}}


def _gauss_loglik(r, sigma):
    sigma = np.maximum(sigma, 1e-300)
    return float(np.sum(-0.5 * (r / sigma) ** 2 - np.log(sigma) - 0.5 * math.log(2 * math.pi)))


def fit_scatter(table: PulseTable, fit: FamilyFit) -> ScatterFit:
    """Gaussian (absolute and relative, maximum likelihood) and shot-noise candidates from the
    residuals of a fit; Delta G per proton is the median of |Delta G| / protons over the pulses."""
    r = fit.residuals
    mu = np.abs(fit.predicted)
    s_abs = float(np.sqrt(np.mean(r ** 2)))
    ok = mu > 0
    s_rel = float(np.sqrt(np.mean((r[ok] / mu[ok]) ** 2))) if ok.any() else math.inf
    ll_abs = _gauss_loglik(r, s_abs)
    ll_rel = _gauss_loglik(r[ok], s_rel * mu[ok]) if ok.all() else -math.inf
    st = _stats(table)
    dgpp = st.dG_per_proton
    mean_p = ll_shot = None
    if dgpp:
        # Poisson: N ~ Poisson(|mu|/dgpp), Delta G = mu N / N_bar -> std = sqrt(|mu| dgpp)
        ll_shot = _gauss_loglik(r, np.sqrt(mu * dgpp))
        mean_p = float(np.mean(mu) / dgpp)
    return ScatterFit(s_abs, ll_abs, s_rel, ll_rel, dgpp, mean_p, ll_shot)


# ----------------------------------------------------------------------------------------------
# Device-to-device spread, energy
# ----------------------------------------------------------------------------------------------
def device_to_device(table: PulseTable, family_name: str, sweep_rows: list[dict] | None = None) -> dict | None:
    """Fit the family to each sweep variant separately; the spread of each free parameter across
    variants is its device-to-device distribution (relative for positive parameters, absolute for
    signed ones).  None when fewer than two variants are present."""
    variants = [v for v in dict.fromkeys(table["variant"]) if v != ""]
    if len(variants) < 2:
        return None
    swept = {str(r["id"]): {k: v for k, v in r.items() if k not in ("id", "status")} for r in (sweep_rows or [])}
    per, values = [], {}
    for v in variants:
        try:
            f = fit_family(table.select(table["variant"] == v), family_name, emit_warnings=False)
        except ValueError as e:
            warnings.warn(f"variant {v}: {family_name} not fitted ({e})", FitWarning, stacklevel=2)
            continue
        row = {"variant": v, "swept": swept.get(v, {}), "rmse_S": f.rmse, "r2": f.r2}
        for nm in f.free:
            row[nm] = f.params[nm]
            values.setdefault(nm, []).append(f.params[nm])
        per.append(row)
    if len(per) < 2:
        return None
    fam = FAMILIES[family_name]()
    stats, d2d = {}, {}
    for nm, vals in values.items():
        a = np.asarray(vals)
        mean, std = float(a.mean()), float(a.std(ddof=1))
        positive = fam.spec(nm).positive
        rel = std / abs(mean) if mean != 0 else math.inf
        stats[nm] = {"mean": mean, "std": std, "relative_std": rel if math.isfinite(rel) else None,
                     "kind": "rel" if positive else "abs", "n": len(a)}
        if positive and math.isfinite(rel):
            d2d[nm] = ("rel", rel)
        elif not positive:
            d2d[nm] = ("abs", std)
    return {"family": family_name, "variants": per, "statistics": stats, "d2d": d2d}


def energy_per_pulse(table: PulseTable, fit: FamilyFit | None = None) -> tuple[float, float] | None:
    """Mean gate energy per pulse (displacement + Faradaic) [J] of up and down pulses at the
    reference condition; None when the data carry no energies.  A direction without data takes the
    other's value."""
    st = _stats(table)
    e = table["displacement_energy_J"] + np.nan_to_num(table["faradaic_energy_J"])
    out = {}
    for d in (1, -1):
        m = (table["direction"] == d) & st.at_ref & np.isfinite(e)
        out[d] = float(np.mean(e[m])) if m.any() else None
    if out[1] is None and out[-1] is None:
        return None
    return (out[1] if out[1] is not None else out[-1], out[-1] if out[-1] is not None else out[1])


# ----------------------------------------------------------------------------------------------
# Whole pipeline
# ----------------------------------------------------------------------------------------------
@dataclass
class FitReport:
    table: PulseTable
    fits: list[FamilyFit]
    chosen: FamilyFit
    scatter: ScatterFit
    d2d: dict | None
    energy: tuple[float, float] | None

    def comparison(self) -> str:
        return format_comparison(self.fits, self.chosen)

    def warnings(self) -> list[str]:
        return [w for f in self.fits for w in f.warnings]


def fit_compact_models(table: PulseTable, families=None, *, folds: int = 5, seed: int = 0,
                       sweep_rows: list[dict] | None = None, emit_warnings: bool = True) -> FitReport:
    """Fit, cross-validate and compare the families; scatter, d2d spread and energy of the best.
    With one requested family that family is the chosen one."""
    fits = fit_families(table, families, folds=folds, seed=seed, emit_warnings=emit_warnings)
    if not fits:
        raise ValueError("no family could be fitted to these data")
    chosen = fits[0] if families and len(families) == 1 else choose_best(fits)
    return FitReport(table, fits, chosen, fit_scatter(table, chosen),
                     device_to_device(table, chosen.name, sweep_rows), energy_per_pulse(table, chosen))


def build_model(report: FitReport, name: str, *, fit: FamilyFit | None = None, scatter: str = "auto"):
    """The :class:`~protonfem.crossbar.schema.DeviceModel` of a fit (the chosen one by default):
    parameters with uncertainties, condition law, c2c and d2d spreads, energy, provenance, metrics."""
    from datetime import datetime, timezone

    from protonfem import __version__
    from protonfem.crossbar.schema import DeviceModel

    f = fit or report.chosen
    params = dict(f.params)
    # the model file must load: a positive parameter driven to 0 by the search box is no model
    for spec in f.family.params:
        if spec.positive and not params[spec.name] > 0:
            raise ValueError(f"{f.name}: fitted {spec.name} = {params[spec.name]:.4g} {spec.unit} is not positive; "
                             "these data do not support this family (choose another with --family)")
    try:
        f.family.validate(params)
    except ValueError as e:
        raise ValueError(f"{f.name}: fitted parameters are not a valid model ({e})") from None
    sc = report.scatter if f is report.chosen else fit_scatter(report.table, f)
    d2d = report.d2d if f is report.chosen else device_to_device(report.table, f.name)
    sources = report.table.sources
    cases = {}
    for s in sources:
        if s.get("case_hash"):
            cases[s["case_hash"]] = {"case": s.get("case"), "sha256": s["case_hash"]}
    keys = Counter(report.table.condition_keys())
    fit_block = {
        "family": f.name,
        "metrics": f.metrics(),
        "parameters": f.parameter_rows(),
        "comparison": comparison_rows(report.fits),
        "selection": f"lowest BIC among clean fits; families within {BIC_TIE} of it are equally good and the one "
                     "with fewer free parameters is taken" if fit is None else "requested",
        "warnings": list(f.warnings),
        "notes": list(f.notes),
        "cycle_to_cycle_candidates": sc.to_dict(),
        "device_to_device": None if d2d is None else {k: v for k, v in d2d.items() if k != "d2d"},
        "conditions": [{"direction": k[0], "amplitude_V": k[1], "width_s": k[2], "temperature_K": k[3],
                        "electrolyte_thickness_m": k[4], "pulses": c} for k, c in sorted(keys.items())],
    }
    return DeviceModel(
        name=name, family=f.family, params=params,
        d2d={k: v for k, v in (d2d or {}).get("d2d", {}).items()},
        # a table carries its measured scatter per node; auto adds none on top
        scatter=GaussianScatter() if f.name == "tabulated" and scatter == "auto" else sc.choose(scatter),
        energy_per_pulse=report.energy,
        provenance={"source": "protonfem fit", "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                    "protonfem_version": __version__, "cases": list(cases.values()),
                    "inputs": [{k: v for k, v in s.items()} for s in sources],
                    "units": "SI: S, C, V, s, m, K, J"},
        fit=_jsonable(fit_block),
        uncertainties={k: v for k, v in f.std.items() if math.isfinite(v)},
        condition=f.condition, condition_params=dict(f.condition_params),
        condition_uncertainties={k: v for k, v in f.condition_std.items() if math.isfinite(v)})


def _jsonable(obj):
    """Floats that JSON can carry (inf/NaN -> None), recursively."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    return obj
