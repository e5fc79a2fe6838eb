"""Built-in reference devices (no solver needed), from the public literature.

Step sizes are aihwkit's preset values (weights normalised to [-1, 1] unless stated) converted to
conductance on a nominal range [G_min, G_max]; the training results depend only on the ratios
(number of states, asymmetry, variation), the absolute conductance only sets energies.
Sources are recorded in each model's ``provenance``; values marked "recalled" should be checked
against the paper before they are quoted."""
from __future__ import annotations

from .schema import DeviceModel, ModelFileError, model_from_dict

NS = 1e-9


def _q(v, unit):
    return {"value": v, "unit": unit}


def _base(name, family, params, *, d2d=None, c2c=None, energy=None, provenance=None):
    d = {"schema_version": "1.0", "name": name, "family": family,
         "parameters": params, "device_to_device": d2d or {},
         "cycle_to_cycle": c2c or {"model": "gaussian", "sigma_rel": 0.0},
         "provenance": provenance or {}}
    if energy is not None:
        d["energy_per_pulse"] = _q(energy, "J")
    return d


# Nominal conductance window of the parametric references: 20..100 nS, mid-range 60 nS (about the
# ~24 MOhm average device resistance of Gokmen & Vlasov's system estimate).  G_unit = 40 nS per
# unit weight with the default w_max = 1.
G0, G1 = 20 * NS, 100 * NS
GU = (G1 - G0) / 2
# G&V: 1 V, 1 ns update pulses -> E = V^2 G t at mid-range
E_GV = 1.0 ** 2 * 60 * NS * 1e-9


def _ideal():
    return _base("ideal", "ideal", {"G_min": _q(G0, "S"), "G_max": _q(G1, "S")},
                 provenance={"source": "aihwkit IdealDevice: floating-point update; only IO non-idealities",
                             "notes": "no pulses, so no update energy"})


def _gokmen_vlasov():
    return _base(
        "gokmen-vlasov", "constant_step",
        {"G_min": _q(G0, "S"), "G_max": _q(G1, "S"), "dG": _q(0.0016 * GU, "S"), "up_down": _q(0.0, "1")},
        d2d={"dG": {"rel": 0.3}, "up_down": {"abs": 0.01}, "G_min": {"abs": 0.3 * GU}, "G_max": {"abs": 0.3 * GU}},
        c2c={"model": "gaussian", "sigma_rel": 0.3},
        energy=E_GV,
        provenance={
            "source": "Gokmen & Vlasov, Front. Neurosci. 10:333 (2016), doi:10.3389/fnins.2016.00333, Table 1; "
                      "encoded as aihwkit GokmenVlasovPresetDevice (dw_min 0.0016 on +-1: ~1250 states, "
                      "dtod 0.3, c2c 0.3, up_down_dtod 0.01, bound dtod 0.3)",
            "energy": "V^2 G t with 1 V, 1 ns pulses at 60 nS (G&V system targets, recalled - verify)"})


def _soft_bounds():
    return _base(
        "soft-bounds", "soft_bounds",
        {"G_min": _q(G0, "S"), "G_max": _q(G1, "S"), "dG": _q(0.001 / 0.6 * GU, "S"), "up_down": _q(0.0, "1")},
        d2d={"dG": {"rel": 0.3}, "up_down": {"abs": 0.01}},
        c2c={"model": "gaussian", "sigma_rel": 0.3},
        energy=E_GV,
        provenance={"source": "aihwkit SoftBoundsDevice defaults (dw_min 0.001 on +-0.6, dtod 0.3, c2c 0.3, "
                              "up_down_dtod 0.01), rescaled to +-1",
                    "energy": "same pulse as gokmen-vlasov (assumption)"})


def _soft_bounds_asym():
    # Soft-bounds device with a 10 % up/down imbalance (spread 5 % from device to device) and
    # ~200 steps across the range: every device's symmetry point sits near w = +0.1 instead of the
    # reference, so SGD pulls all weights there and fails; Tiki-Taka, whose fast array is
    # referenced at each device's symmetry point, was designed for exactly this
    # (Gokmen & Haensch 2020).
    return _base(
        "soft-bounds-asym", "soft_bounds",
        {"G_min": _q(G0, "S"), "G_max": _q(G1, "S"), "dG": _q(0.01 * GU, "S"), "up_down": _q(0.1, "1")},
        d2d={"dG": {"rel": 0.3}, "up_down": {"abs": 0.05}},
        c2c={"model": "gaussian", "sigma_rel": 0.3},
        energy=E_GV,
        provenance={"source": "soft-bounds law of aihwkit SoftBoundsDevice with dw_min 0.01, up_down 0.1, "
                              "up_down_dtod 0.05, dtod 0.3, c2c 0.3: the asymmetric-device regime of "
                              "Gokmen & Haensch, Front. Neurosci. 14:103 (2020), doi:10.3389/fnins.2020.00103",
                    "energy": "same pulse as gokmen-vlasov (assumption)"})


def _li_ecram():
    return _base(
        "li-ecram", "linear_step",
        {"G_min": _q(G0, "S"), "G_max": _q(G1, "S"), "dG": _q(0.002 * GU, "S"), "up_down": _q(0.0, "1"),
         "gamma_up": _q(0.115, "1"), "gamma_down": _q(0.509, "1")},
        d2d={"dG": {"rel": 0.1}},
        c2c={"model": "gaussian", "sigma_rel": 0.3},
        provenance={"source": "Li-ECRAM, Tang et al., IEDM 2018, as aihwkit EcRamPresetDevice (LinearStep, dw_min "
                              "0.002, gamma_up 0.115, gamma_down 0.509, dtod 0.1, c2c 0.3 multiplicative)",
                    "notes": "aihwkit's asymmetric range w in [-0.83, 1.17] is mapped to the symmetric window; "
                             "conductance scale nominal; no energy per pulse in the source used"})


def _mo_ecram():
    return _base(
        "mo-ecram", "linear_step",
        {"G_min": _q(G0, "S"), "G_max": _q(G1, "S"), "dG": _q(2.8e-4 * GU, "S"), "up_down": _q(0.0, "1"),
         "gamma_up": _q(0.415, "1"), "gamma_down": _q(0.734, "1")},
        d2d={"dG": {"rel": 0.3}},
        c2c={"model": "gaussian", "sigma_rel": 2.0},
        provenance={"source": "metal-oxide ECRAM, Kim et al., IEDM 2019, as aihwkit EcRamMOPresetDevice (LinearStep, "
                              "dw_min 2.8e-4, gamma_up 0.415, gamma_down 0.734, c2c 2.0)",
                    "notes": "dtod 0.3 is aihwkit's PulsedDevice default; conductance scale nominal; no energy "
                             "per pulse in the source used"})


BUILTINS = {
    "ideal": _ideal,
    "gokmen-vlasov": _gokmen_vlasov,
    "soft-bounds": _soft_bounds,
    "soft-bounds-asym": _soft_bounds_asym,
    "li-ecram": _li_ecram,
    "mo-ecram": _mo_ecram,
}


def builtin_model(name: str) -> DeviceModel:
    if name not in BUILTINS:
        raise ModelFileError(f"--model {name!r}: not a builtin ({', '.join(BUILTINS)}) and not a .json file")
    return model_from_dict(BUILTINS[name](), f"builtin:{name}")


def resolve_model(spec: str) -> DeviceModel:
    """A builtin name or a path to a model JSON file."""
    from .schema import load_model

    if spec in BUILTINS:
        return builtin_model(spec)
    if spec.endswith(".json") or "/" in spec or "\\" in spec:
        return load_model(spec)
    return builtin_model(spec)
