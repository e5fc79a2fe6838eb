"""Versioned device-model files (JSON): load, validate, save.

A model file is the contract between the fitting code (`postprocess/`) and the crossbar.  Every
validation failure raises :class:`ModelFileError` with ONE line naming the file, the key and what
was expected, so the CLI can print it without a traceback.

Schema version 1.1 (1.0 files read unchanged; 1.1 adds the optional "std" of a parameter and the
optional "pulse_condition" block)::

    {
      "schema_version": "1.1",
      "name": "my-device",
      "family": "soft_bounds",                       # one of families.FAMILIES
      "parameters": {"G_min": {"value": 1e-7, "unit": "S", "std": 2e-9}, ...},  # units must match
                                                     # the family; "std": 1-sigma fit uncertainty
      "device_to_device": {"dG": {"rel": 0.3}, "up_down": {"abs": 0.01}},   # optional
      "cycle_to_cycle": {"model": "gaussian", "sigma_rel": 0.3,
                         "sigma_abs": {"value": 0.0, "unit": "S"}}         # or {"model": "shot", ...}
      "energy_per_pulse": {"up": {"value": 1e-15, "unit": "J"}, "down": {...}},  # optional
      "table": {"up": {"G": {...}, "dG_mean": {...}, "dG_std": {...}}, "down": {...}},  # tabulated
      "pulse_condition": {"law": "sinh_power",       # optional: how V, width, T, d scale the step
                          "parameters": {"beta": {...}, "hop_distance": {"value": 5.6e-10, "unit": "m"}},
                          "reference": {"up": {"amplitude": {..V}, "width": {..s}}, "down": {...},
                                        "temperature": {..K}, "electrolyte_thickness": {..m}}},
      "provenance": {"source": "...", "cases": [{"case": "...", "sha256": "..."}]},
      "fit": {...}                                   # optional, free-form metrics
    }
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .families import CONDITION_LAWS, FAMILIES, Family, GaussianScatter, ShotScatter, SinhPowerCondition, Tabulated

SCHEMA_VERSION = "1.1"
SUPPORTED_MAJOR = 1


class ModelFileError(ValueError):
    """Malformed or inconsistent device-model file (one-line message)."""


@dataclass
class DeviceModel:
    name: str
    family: Family
    params: dict[str, float]
    d2d: dict[str, tuple[str, float]] = field(default_factory=dict)  # name -> ("rel"|"abs", sigma)
    scatter: GaussianScatter | ShotScatter = field(default_factory=GaussianScatter)
    energy_per_pulse: tuple[float, float] | None = None  # (up, down) J; None -> from family or n/a
    provenance: dict = field(default_factory=dict)
    fit: dict | None = None
    source_file: str | None = None
    uncertainties: dict[str, float] = field(default_factory=dict)  # name -> 1-sigma std (family units)
    condition: SinhPowerCondition | None = None  # pulse-condition scaling layer (None: fixed pulses)
    condition_params: dict[str, float] = field(default_factory=dict)
    condition_uncertainties: dict[str, float] = field(default_factory=dict)

    def mean_step_at(self, G, d, amplitude, width, temperature=None, thickness=None):
        """Mean Delta G [S] of pulses of another condition: the family's step at its reference
        pulses times the condition law's factor (needs a ``pulse_condition`` in the file)."""
        if self.condition is None:
            raise ValueError(f"model {self.name!r} has no pulse_condition: its steps hold for its reference pulses only")
        c = self.condition
        T = c.temperature if temperature is None else temperature
        th = c.electrolyte_thickness if thickness is None else thickness
        return self.family.mean_step(G, d, self.params) * c.factor(d, amplitude, width, T, th, self.condition_params)

    def pulse_energy(self):
        """(E_up, E_down) [J] per pulse and where it came from."""
        if self.energy_per_pulse is not None:
            return self.energy_per_pulse, "model file"
        e = self.family.energy_per_pulse(self.params)
        if e is not None:
            return e, "family physics (|V| x gate charge)"
        return None, "not available"

    def sample_parameters(self, n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """Per-device parameter arrays of length n with device-to-device variation."""
        out = {}
        for spec in self.family.params:
            v = float(self.params[spec.name])
            arr = np.full(n, v)
            if spec.name in self.d2d:
                kind, sig = self.d2d[spec.name]
                xi = rng.standard_normal(n)
                arr = v * (1.0 + sig * xi) if kind == "rel" else v + sig * xi
                if spec.positive:
                    # truncated: a device never gets a non-physical (<= 0) step or bound
                    arr = np.maximum(arr, 0.05 * abs(v) if v != 0 else 1e-30)
            out[spec.name] = arr
        if "G_min" in self.d2d or "G_max" in self.d2d:
            bad = out["G_max"] <= out["G_min"]
            out["G_max"][bad] = out["G_min"][bad] * (1 + 1e-6) + 1e-30
        if "up_down" in out:
            out["up_down"] = np.clip(out["up_down"], -0.95, 0.95)
        return out

    def to_dict(self) -> dict:
        d = {
            "schema_version": SCHEMA_VERSION,
            "name": self.name,
            "family": self.family.name,
            "parameters": {s.name: _with_std({"value": self.params[s.name], "unit": s.unit},
                                             self.uncertainties.get(s.name)) for s in self.family.params},
            "device_to_device": {k: {kind: sig} for k, (kind, sig) in self.d2d.items()},
            "cycle_to_cycle": self.scatter.to_dict(),
            "provenance": self.provenance,
        }
        if isinstance(self.family, Tabulated):
            d["table"] = {
                dirn: {k: {"value": list(map(float, self.family.table[dirn][k])), "unit": "S"}
                       for k in ("G", "dG_mean", "dG_std")}
                for dirn in ("up", "down")
            }
        if self.energy_per_pulse is not None:
            d["energy_per_pulse"] = {"up": {"value": self.energy_per_pulse[0], "unit": "J"},
                                     "down": {"value": self.energy_per_pulse[1], "unit": "J"}}
        if self.condition is not None:
            c = self.condition
            d["pulse_condition"] = {
                "law": c.name,
                "parameters": {s.name: _with_std({"value": self.condition_params[s.name], "unit": s.unit},
                                                 self.condition_uncertainties.get(s.name)) for s in c.params},
                "reference": c.reference_dict()}
        if self.fit is not None:
            d["fit"] = self.fit
        return d


def _with_std(q: dict, std) -> dict:
    if std is not None:
        q["std"] = float(std)
    return q


def save_model(model: DeviceModel, path: str | os.PathLike) -> None:
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(model.to_dict(), indent=2))
    os.replace(tmp, path)  # atomic: a killed write never leaves a half file


def _err(src, key, expected, got=None):
    msg = f"{src}: key '{key}': expected {expected}"
    if got is not None:
        g = repr(got)
        msg += f", got {g[:60] + '...' if len(g) > 60 else g}"
    return ModelFileError(msg)


def _quantity(src, key, obj, unit, allow_list=False):
    if not isinstance(obj, dict) or "value" not in obj or "unit" not in obj:
        raise _err(src, key, f'an object {{"value": ..., "unit": "{unit}"}}', obj)
    if obj["unit"] != unit:
        raise _err(src, key + ".unit", f"'{unit}'", obj["unit"])
    v = obj["value"]
    if allow_list:
        if not isinstance(v, list) or len(v) < 2 or not all(
                isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in v):
            raise _err(src, key + ".value", "a list of at least 2 finite numbers", v)
        return np.asarray(v, float)
    if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
        raise _err(src, key + ".value", "a finite number", v)
    return float(v)


def _std(src, key, obj):
    """The optional 1-sigma uncertainty of a quantity (same unit), or None."""
    if not isinstance(obj, dict) or "std" not in obj:
        return None
    s = obj["std"]
    if not isinstance(s, (int, float)) or isinstance(s, bool) or not (math.isfinite(s) and s >= 0):
        raise _err(src, key + ".std", "a non-negative finite number (1-sigma uncertainty in the same unit)", s)
    return float(s)


def _pulse_condition(src, pc):
    """Validate a "pulse_condition" block: (law instance, parameters, uncertainties)."""
    if not isinstance(pc, dict):
        raise _err(src, "pulse_condition", 'an object {"law", "parameters", "reference"}', pc)
    law = pc.get("law")
    if law not in CONDITION_LAWS:
        raise _err(src, "pulse_condition.law", f"one of {sorted(CONDITION_LAWS)}", law)
    cls = CONDITION_LAWS[law]
    pin = pc.get("parameters")
    if not isinstance(pin, dict):
        raise _err(src, "pulse_condition.parameters", "an object of {name: {value, unit}}", pin)
    params, stds = {}, {}
    for spec in cls.params:
        key = f"pulse_condition.parameters.{spec.name}"
        if spec.name not in pin:
            raise _err(src, key, f"a value in {spec.unit} ({spec.description}); it is missing")
        params[spec.name] = _quantity(src, key, pin[spec.name], spec.unit)
        if spec.positive and params[spec.name] <= 0:
            raise _err(src, key + ".value", "a positive number", params[spec.name])
        s = _std(src, key, pin[spec.name])
        if s is not None:
            stds[spec.name] = s
    ref = pc.get("reference")
    if not isinstance(ref, dict):
        raise _err(src, "pulse_condition.reference", "an object with up, down, temperature, electrolyte_thickness", ref)
    units = cls.reference_units
    dirs = {}
    for dirn in ("up", "down"):
        r = ref.get(dirn)
        if not isinstance(r, dict):
            raise _err(src, f"pulse_condition.reference.{dirn}", 'an object {"amplitude", "width"}', r)
        dirs[dirn] = {k: _quantity(src, f"pulse_condition.reference.{dirn}.{k}", r.get(k), units[k])
                      for k in ("amplitude", "width")}
        for k, v in dirs[dirn].items():
            if v <= 0:
                raise _err(src, f"pulse_condition.reference.{dirn}.{k}.value", "a positive number", v)
    glob = {}
    for k in ("temperature", "electrolyte_thickness"):
        glob[k] = _quantity(src, f"pulse_condition.reference.{k}", ref.get(k), units[k])
        if glob[k] <= 0:
            raise _err(src, f"pulse_condition.reference.{k}.value", "a positive number", glob[k])
    return cls(dirs["up"], dirs["down"], glob["temperature"], glob["electrolyte_thickness"]), params, stds


def model_from_dict(data, src: str = "<model>") -> DeviceModel:
    if not isinstance(data, dict):
        raise _err(src, "<root>", "a JSON object", type(data).__name__)
    ver = data.get("schema_version")
    if not isinstance(ver, str):
        raise _err(src, "schema_version", f'a version string such as "{SCHEMA_VERSION}"', ver)
    try:
        major = int(ver.split(".")[0])
    except ValueError:
        raise _err(src, "schema_version", f'"<major>.<minor>" such as "{SCHEMA_VERSION}"', ver) from None
    if major != SUPPORTED_MAJOR:
        raise _err(src, "schema_version", f"major version {SUPPORTED_MAJOR} (this protonfem reads {SCHEMA_VERSION})", ver)
    fam_name = data.get("family")
    if fam_name not in FAMILIES:
        raise _err(src, "family", f"one of {sorted(FAMILIES)}", fam_name)
    name = data.get("name", Path(src).stem)
    if not isinstance(name, str):
        raise _err(src, "name", "a string", name)

    if fam_name == "tabulated":
        table = {}
        tab = data.get("table")
        if not isinstance(tab, dict):
            raise _err(src, "table", 'an object with "up" and "down" tables (tabulated family)', tab)
        for dirn in ("up", "down"):
            t = tab.get(dirn)
            if not isinstance(t, dict):
                raise _err(src, f"table.{dirn}", 'an object with "G", "dG_mean", "dG_std"', t)
            arrs = {k: _quantity(src, f"table.{dirn}.{k}", t.get(k), "S", allow_list=True)
                    for k in ("G", "dG_mean", "dG_std")}
            if not (len(arrs["G"]) == len(arrs["dG_mean"]) == len(arrs["dG_std"])):
                raise _err(src, f"table.{dirn}", "G, dG_mean and dG_std of equal length",
                           [len(a) for a in arrs.values()])
            if np.any(np.diff(arrs["G"]) <= 0):
                raise _err(src, f"table.{dirn}.G", "strictly increasing conductance nodes")
            if np.any(arrs["dG_std"] < 0):
                raise _err(src, f"table.{dirn}.dG_std", "non-negative standard deviations")
            sign_ok = np.all(arrs["dG_mean"] >= 0) if dirn == "up" else np.all(arrs["dG_mean"] <= 0)
            if not sign_ok:
                raise _err(src, f"table.{dirn}.dG_mean", f"{'non-negative' if dirn == 'up' else 'non-positive'} steps")
            table[dirn] = arrs
        family = Tabulated(table)
    else:
        family = FAMILIES[fam_name]()

    params_in = data.get("parameters")
    if not isinstance(params_in, dict):
        raise _err(src, "parameters", "an object of {name: {value, unit}}", params_in)
    params = {}
    stds = {}
    known = set(family.param_names())
    for k in params_in:
        if k not in known:
            raise _err(src, f"parameters.{k}", f"a parameter of family '{fam_name}' ({', '.join(sorted(known))})")
    for spec in family.params:
        if spec.name not in params_in:
            if spec.default is None:
                raise _err(src, f"parameters.{spec.name}", f"a value in {spec.unit} ({spec.description}); it is missing")
            params[spec.name] = spec.default
            continue
        v = _quantity(src, f"parameters.{spec.name}", params_in[spec.name], spec.unit)
        if spec.positive and v <= 0:
            raise _err(src, f"parameters.{spec.name}.value", "a positive number", v)
        params[spec.name] = v
        s = _std(src, f"parameters.{spec.name}", params_in[spec.name])
        if s is not None:
            stds[spec.name] = s
    try:
        family.validate(params)
    except ValueError as e:
        raise ModelFileError(f"{src}: key 'parameters': {e}") from None

    d2d = {}
    dd = data.get("device_to_device", {}) or {}
    if not isinstance(dd, dict):
        raise _err(src, "device_to_device", 'an object {param: {"rel": sigma} or {"abs": sigma}}', dd)
    for k, v in dd.items():
        if k not in known:
            raise _err(src, f"device_to_device.{k}", f"a parameter of family '{fam_name}'")
        if not (isinstance(v, dict) and len(v) == 1 and next(iter(v)) in ("rel", "abs")):
            raise _err(src, f"device_to_device.{k}", '{"rel": sigma} or {"abs": sigma}', v)
        kind, sig = next(iter(v.items()))
        if not isinstance(sig, (int, float)) or isinstance(sig, bool) or not (sig >= 0 and math.isfinite(sig)):
            raise _err(src, f"device_to_device.{k}.{kind}", "a non-negative number", sig)
        d2d[k] = (kind, float(sig))

    cc = data.get("cycle_to_cycle", {"model": "gaussian", "sigma_rel": 0.0})
    if not isinstance(cc, dict) or cc.get("model") not in ("gaussian", "shot"):
        raise _err(src, "cycle_to_cycle.model", "'gaussian' or 'shot'", cc.get("model") if isinstance(cc, dict) else cc)
    if cc["model"] == "gaussian":
        srel = cc.get("sigma_rel", 0.0)
        if not isinstance(srel, (int, float)) or isinstance(srel, bool) or not (srel >= 0 and math.isfinite(srel)):
            raise _err(src, "cycle_to_cycle.sigma_rel", "a non-negative number", srel)
        sabs = _quantity(src, "cycle_to_cycle.sigma_abs", cc["sigma_abs"], "S") if "sigma_abs" in cc else 0.0
        if sabs < 0:
            raise _err(src, "cycle_to_cycle.sigma_abs.value", "a non-negative number", sabs)
        scatter = GaussianScatter(srel, sabs)
    else:
        if "dG_per_proton" in cc:
            g = _quantity(src, "cycle_to_cycle.dG_per_proton", cc["dG_per_proton"], "S")
            if g <= 0:
                raise _err(src, "cycle_to_cycle.dG_per_proton.value", "a positive number", g)
            scatter = ShotScatter(g)
        elif fam_name == "physics":
            scatter = ShotScatter(None)  # protons per pulse = |q|/e from the charge law
        else:
            raise _err(src, "cycle_to_cycle.dG_per_proton", "a value in S (conductance change per proton) for shot noise")

    energy = None
    if "energy_per_pulse" in data and data["energy_per_pulse"] is not None:
        e = data["energy_per_pulse"]
        if isinstance(e, dict) and "up" in e:
            energy = (_quantity(src, "energy_per_pulse.up", e["up"], "J"),
                      _quantity(src, "energy_per_pulse.down", e.get("down"), "J"))
        else:
            v = _quantity(src, "energy_per_pulse", e, "J")
            energy = (v, v)
        if min(energy) < 0:
            raise _err(src, "energy_per_pulse", "non-negative energies", energy)

    prov = data.get("provenance", {})
    if not isinstance(prov, dict):
        raise _err(src, "provenance", "an object (source, cases with hashes, notes)", prov)
    fit = data.get("fit")
    if fit is not None and not isinstance(fit, dict):
        raise _err(src, "fit", "an object of fit metrics", fit)
    condition, cparams, cstds = (None, {}, {})
    if data.get("pulse_condition") is not None:
        condition, cparams, cstds = _pulse_condition(src, data["pulse_condition"])
    return DeviceModel(name=name, family=family, params=params, d2d=d2d, scatter=scatter,
                       energy_per_pulse=energy, provenance=prov, fit=fit, source_file=src,
                       uncertainties=stds, condition=condition, condition_params=cparams,
                       condition_uncertainties=cstds)


def load_model(path: str | os.PathLike) -> DeviceModel:
    src = str(path)
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        raise ModelFileError(f"{src}: file not found (expected a device-model JSON file or a builtin name)") from None
    except OSError as e:
        raise ModelFileError(f"{src}: cannot read ({e.strerror})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ModelFileError(f"{src}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})") from None
    return model_from_dict(data, src)
