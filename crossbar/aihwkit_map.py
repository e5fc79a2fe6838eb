"""Map a device model onto aihwkit-style pulsed-device parameters (plain dicts; aihwkit not needed).

Weight mapping (the same as :class:`~protonfem.crossbar.devices.DeviceArray` with a mid-range
reference): w = (G - G_ref) / G_unit, G_ref = (G_min + G_max)/2, G_unit = (G_max - G_min)/(2 w_max),
so the model's conductance window [G_min, G_max] becomes [-w_max, w_max] and the normalised state of
the families, z = 2(G - G_min)/(G_max - G_min) - 1, is w / w_max.

Family -> aihwkit class (fields beyond w_min = -w_max, w_max):

* constant_step -> ConstantStepDevice: dw_min = dG/G_unit, up_down.
* soft_bounds -> SoftBoundsDevice: dw_min = dG/G_unit (the step at w = 0), up_down; the up step's
  slope is -dw_min (1 + up_down)/w_max.
* linear_step -> LinearStepDevice: dw_min, up_down, gamma_up, gamma_down (aihwkit's step
  dw_min (1 - gamma_up w/b_max) is the same law).
* exp_step -> ExpStepDevice: dw_min, up_down, A_up, A_down, gamma_up, gamma_down, a = 1, b = 0
  (aihwkit's z = 2a w/(b_max - b_min) + b then equals ours).
* pow_step -> PowStepDevice: dw_min = dG 2^gamma/G_unit (aihwkit scales omega^gamma, ours
  (2 omega)^gamma), pow_gamma = gamma, pow_up_down = 0.
* physics, tabulated -> PiecewiseStepDevice: dw_min = nominal step/G_unit; piecewise_up/down =
  |mean step| on 21 equally spaced nodes from w_min to w_max over the nominal step (the up/down
  asymmetry is in the node values).

Variation: ``dw_min_dtod`` = relative d2d of dG (of dG_scale, q0 for tabulated, physics); ``up_down_dtod`` = absolute d2d of up_down;
``w_min_dtod``/``w_max_dtod`` = d2d of G_min/G_max in units of the bound (aihwkit gives them relative
to w_min, w_max); ``gamma_up_dtod``/``gamma_down_dtod`` absolute (linear step); ``pow_gamma_dtod``
relative.  Cycle-to-cycle: a Gaussian sigma_rel is ``dw_min_std`` with multiplicative noise
(``mult_noise`` on the linear-step family); a pure sigma_abs is ``dw_min_std = sigma_abs/dG`` with
additive noise; shot noise has no aihwkit counterpart and is approximated at the nominal step by its
relative std 1/sqrt(N), N = dG/dG_per_proton protons per pulse.
"""
from __future__ import annotations

import math

import numpy as np

from .families import GaussianScatter, ShotScatter
from .schema import DeviceModel

__all__ = ["to_aihwkit", "AIHWKIT_CLASSES", "PIECEWISE_NODES"]

AIHWKIT_CLASSES = {
    "constant_step": "ConstantStepDevice",
    "soft_bounds": "SoftBoundsDevice",
    "linear_step": "LinearStepDevice",
    "exp_step": "ExpStepDevice",
    "pow_step": "PowStepDevice",
    "physics": "PiecewiseStepDevice",
    "tabulated": "PiecewiseStepDevice",
}
PIECEWISE_NODES = 21  # aihwkit's GPU kernels take fewer than 64 nodes


def _c2c(model: DeviceModel, nominal_dG: float) -> tuple[dict, list[str]]:
    sc, notes = model.scatter, []
    if isinstance(sc, ShotScatter):
        if sc.dG_per_proton:
            n = nominal_dG / sc.dG_per_proton
        else:  # physics family: protons per pulse from its charge law at mid-range
            mid = 0.5 * (model.params["G_min"] + model.params["G_max"])
            n = 0.5 * sum(float(model.family.quanta(np.array([mid]), np.array([d]), model.params)[0])
                          for d in (1.0, -1.0))
        std = 1.0 / math.sqrt(max(n, 1e-12))
        notes.append(f"shot noise approximated by a Gaussian of relative std 1/sqrt(N) = {std:.4g} at the nominal "
                     f"step (N = {n:.4g} protons per pulse); aihwkit has no Poisson step noise")
        return {"dw_min_std": std, "mult_noise": True}, notes
    if isinstance(sc, GaussianScatter):
        if sc.sigma_abs and not sc.sigma_rel:
            return {"dw_min_std": sc.sigma_abs / nominal_dG, "mult_noise": False}, notes
        if sc.sigma_abs:
            notes.append("sigma_abs dropped: aihwkit noise is either multiplicative or additive")
        return {"dw_min_std": sc.sigma_rel, "mult_noise": True}, notes
    return {"dw_min_std": 0.0}, notes


def to_aihwkit(model: DeviceModel, w_max: float = 1.0) -> dict:
    """aihwkit device class and fields of a model, as a plain dict::

        {"device_class": "SoftBoundsDevice", "parameters": {...aihwkit field names...},
         "weight_mapping": {"G_ref_S", "G_unit_S", "w_max"}, "notes": [...]}
    """
    if not w_max > 0:
        raise ValueError(f"w_max must be positive, got {w_max}")
    fam = model.family.name
    if fam not in AIHWKIT_CLASSES:
        raise ValueError(f"family {fam!r} has no aihwkit counterpart (mappable: {', '.join(AIHWKIT_CLASSES)})")
    p = model.params
    g_unit = (p["G_max"] - p["G_min"]) / (2.0 * w_max)
    g_ref = 0.5 * (p["G_min"] + p["G_max"])
    notes: list[str] = []
    out = {"w_min": -w_max, "w_max": w_max}
    if fam == "pow_step":
        nominal = p["dG"]
        out.update(dw_min=p["dG"] * 2.0 ** p["gamma"] / g_unit, up_down=p["up_down"], pow_gamma=p["gamma"],
                   pow_up_down=0.0)
    elif fam in ("physics", "tabulated"):
        nominal = model.family.nominal_step(p)
        G = np.linspace(p["G_min"], p["G_max"], PIECEWISE_NODES)
        up = np.abs(model.family.mean_step(G, np.ones_like(G), p)) / nominal
        dn = np.abs(model.family.mean_step(G, -np.ones_like(G), p)) / nominal
        out.update(dw_min=nominal / g_unit, up_down=0.0, piecewise_up=[float(v) for v in up],
                   piecewise_down=[float(v) for v in dn])
        notes.append(f"{fam} sampled on {PIECEWISE_NODES} nodes at the reference pulses; up/down asymmetry "
                     "is in the node values")
    else:
        nominal = p["dG"]
        out.update(dw_min=p["dG"] / g_unit, up_down=p["up_down"])
        if fam == "linear_step":
            out.update(gamma_up=p["gamma_up"], gamma_down=p["gamma_down"])
            if p["gamma_up"] < 0 or p["gamma_down"] < 0:
                out["allow_increasing"] = True
        elif fam == "exp_step":
            out.update(A_up=p["A_up"], A_down=p["A_down"], gamma_up=p["gamma_up"], gamma_down=p["gamma_down"],
                       a=1.0, b=0.0)
    # device-to-device variation, in aihwkit's units
    dtod = {"dw_min_dtod": 0.0, "up_down_dtod": 0.0, "w_min_dtod": 0.0, "w_max_dtod": 0.0}
    for name, (kind, sig) in model.d2d.items():
        val = p[name]
        rel = sig if kind == "rel" else (sig / abs(val) if val else math.inf)
        absolute = sig if kind == "abs" else sig * abs(val)
        if name in ("dG", "dG_scale", "q0"):
            dtod["dw_min_dtod"] = rel
        elif name == "up_down":
            dtod["up_down_dtod"] = absolute
        elif name == "G_min":
            dtod["w_min_dtod"] = absolute / g_unit / w_max
        elif name == "G_max":
            dtod["w_max_dtod"] = absolute / g_unit / w_max
        elif name in ("gamma_up", "gamma_down") and fam == "linear_step":
            dtod[f"{name}_dtod"] = absolute
        elif name == "gamma" and fam == "pow_step":
            dtod["pow_gamma_dtod"] = rel
        else:
            notes.append(f"d2d of {name} has no aihwkit field; left out")
    out.update(dtod)
    c2c, cnotes = _c2c(model, nominal)
    out.update(c2c)
    notes += cnotes
    if fam == "constant_step":
        out.pop("mult_noise", None)  # the constant step's noise is additive in aihwkit, the same at any w
    return {"device_class": AIHWKIT_CLASSES[fam], "parameters": out,
            "weight_mapping": {"G_ref_S": g_ref, "G_unit_S": g_unit, "w_max": w_max,
                               "w": "(G - G_ref_S) / G_unit_S"},
            "source_model": model.name, "notes": notes}
