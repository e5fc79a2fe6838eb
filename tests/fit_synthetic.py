"""Synthetic pulse data for the fitting/export tests, generated with the crossbar's own family
functions plus known noise, and written in the three on-disk formats the loader reads (run
directory, response map, sweep)."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from protonfem.crossbar.families import E_CHARGE, FAMILIES, SinhPowerCondition
from protonfem.postprocess.pulse_data import NUMERIC_COLUMNS, TEXT_COLUMNS, PulseTable

SERIES_COLUMNS = [
    "time_s", "event", "pulse", "train", "pulse_amplitude_V", "gate_voltage_V", "gate_current_A",
    "displacement_current_A", "faradaic_current_A", "gate_charge_C", "faradaic_charge_C",
    "pulse_displacement_charge_C", "pulse_faradaic_charge_C", "pulse_displacement_energy_J",
    "pulse_faradaic_energy_J", "conductance_S", "inventory_reservoir", "inventory_electrolyte",
    "inventory_channel", "inventory_error", "gauss_error", "steps_accepted", "steps_rejected",
    "newton_iterations", "dt_s",
]
def _num(x) -> str:
    return f"{float(x):.17g}"


SOFT = {"G_min": 2e-8, "G_max": 1e-7, "dG": 4e-10, "up_down": 0.1}


def pulse_train(family: str, params: dict, *, n_up=150, n_down=150, cycles=2, sigma_abs=0.0, sigma_rel=0.0,
                seed=0, G0=None, dG_per_proton=None):
    """Alternating up/down trains from G0 (default just above G_min): arrays G_before, dG, direction
    and protons (Poisson counts when dG_per_proton is given, which then also sets the scatter)."""
    rng = np.random.default_rng(seed)
    fam = FAMILIES[family]()
    G = params["G_min"] * 1.02 if G0 is None else G0
    out = []
    for _ in range(cycles):
        for d, n in ((1.0, n_up), (-1.0, n_down)):
            for _ in range(n):
                mu = float(fam.mean_step(np.array([G]), np.array([d]), params)[0])
                if dG_per_proton:
                    nbar = abs(mu) / dG_per_proton
                    k = rng.poisson(nbar)
                    dg = mu * k / nbar
                else:
                    k = abs(mu) / 1e-12
                    dg = mu + (sigma_abs + sigma_rel * abs(mu)) * rng.standard_normal()
                out.append((G, dg, d, k))
                G += dg
    a = np.array(out)
    return a[:, 0], a[:, 1], a[:, 2], a[:, 3]


def make_table(G_before, dG, direction, *, amplitude=None, width=None, temperature=300.0, thickness=1e-8,
               protons=None, variant="", energy=None) -> PulseTable:
    n = len(dG)
    cols = {k: np.full(n, np.nan) for k in NUMERIC_COLUMNS}
    cols.update({k: np.array([""] * n, dtype=object) for k in TEXT_COLUMNS})
    cols["pulse"] = np.arange(1, n + 1, dtype=float)
    cols["G_before_S"] = np.asarray(G_before, float)
    cols["dG_S"] = np.asarray(dG, float)
    cols["G_after_S"] = cols["G_before_S"] + cols["dG_S"]
    cols["direction"] = np.asarray(direction, float)
    cols["amplitude_V"] = np.where(cols["direction"] > 0, 10.0, -8.5) if amplitude is None else np.asarray(amplitude)
    cols["width_s"] = np.full(n, 5e-9) if width is None else np.asarray(width, float)
    cols["temperature_K"] = np.broadcast_to(np.asarray(temperature, float), (n,)).copy()
    cols["electrolyte_thickness_m"] = np.broadcast_to(np.asarray(thickness, float), (n,)).copy()
    if protons is not None:
        cols["protons"] = np.asarray(protons, float)
    if energy is not None:
        cols["displacement_energy_J"] = np.where(cols["direction"] > 0, energy[0], energy[1])
        cols["faradaic_energy_J"] = np.zeros(n)
    cols["variant"] = np.array([variant] * n, dtype=object)
    return PulseTable(cols)


def response_map_rows(family: str, params: dict, law_truth: dict, *, sigma_rel=0.03, seed=0,
                      states=np.linspace(2.5e-8, 9.5e-8, 6), up_V=(6.0, 8.0, 10.0), down_V=(-5.0, -7.0, -8.5),
                      widths=(2e-9, 5e-9, 1e-8), temperature=300.0, thickness=1e-8):
    """Rows (G, direction, V, width, dG) of a response map of family x sinh-power law, with relative
    Gaussian noise.  The law's reference pulses are +10 V / -8.5 V, 5 ns."""
    rng = np.random.default_rng(seed)
    fam = FAMILIES[family]()
    law = SinhPowerCondition({"amplitude": 10.0, "width": 5e-9}, {"amplitude": 8.5, "width": 5e-9},
                             temperature, thickness)
    rows = []
    for G in states:
        for d, Vs in ((1.0, up_V), (-1.0, down_V)):
            for V in Vs:
                for w in widths:
                    mu = fam.mean_step(np.array([G]), np.array([d]), params)[0] * \
                        law.factor(np.array([d]), np.array([V]), np.array([w]), temperature, thickness, law_truth)[0]
                    rows.append((G, d, V, w, mu * (1 + sigma_rel * rng.standard_normal())))
    return np.array(rows)


# ----------------------------------------------------------------------------------------------
# On-disk formats
# ----------------------------------------------------------------------------------------------
CASE_TOML = """name = "{name}"
[geometry]
dimension = 1
electrolyte_thickness = {thickness}
channel_length = 150e-9
channel_width = 50e-9
{conditions}
[[protocol.trains]]
count = {n_up}
amplitude = 10.0
width = {width_up}
rise = 1e-10
fall = 1e-10
rest = 1.0

[[protocol.trains]]
count = {n_down}
amplitude = -8.5
width = {width_down}
rise = 1e-10
fall = 1e-10
rest = 1.0
"""


def write_run_dir(path: Path, family="soft_bounds", params=SOFT, *, n_up=40, n_down=40, seed=0, sigma_abs=5e-12,
                  width_up=5e-9, width_down=5e-9, temperature=None, thickness=1e-8, dG_per_proton=None,
                  rest_steps=0, case_in_dir=False, failed_read=None) -> Path:
    """A `protonfem run`-style directory: series.csv, summary.json and the case file it names.
    ``rest_steps`` > 0 adds `step` rows with finite conductance during each rest (retention data)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    G_b, dG, d, k = pulse_train(family, params, n_up=n_up, n_down=n_down, cycles=1, sigma_abs=sigma_abs, seed=seed,
                                dG_per_proton=dG_per_proton)
    cond = "" if temperature is None else f"[conditions]\ntemperature = {temperature}\n"
    case_text = CASE_TOML.format(name="synthetic", thickness=thickness, conditions=cond, n_up=n_up, n_down=n_down,
                                 width_up=width_up, width_down=width_down)
    case_path = (path / "case.toml") if case_in_dir else (path.parent / f"{path.name}-case.toml")
    case_path.write_text(case_text)
    rows = []
    blank = {c: "0" for c in SERIES_COLUMNS}
    rows.append(dict(blank, time_s="0", event="initial", pulse="0", train="-1", pulse_amplitude_V="0",
                     conductance_S=_num(G_b[0])))
    t = 0.0
    for i in range(len(dG)):
        V = 10.0 if d[i] > 0 else -8.5
        train = 0 if d[i] > 0 else 1
        width = width_up if d[i] > 0 else width_down
        q = (k[i] if dG_per_proton else abs(dG[i]) / 1e-12) * E_CHARGE
        common = dict(blank, pulse=str(i + 1), train=str(train), pulse_amplitude_V=_num(V),
                      pulse_displacement_charge_C=_num(1.7e3 * E_CHARGE), pulse_faradaic_charge_C=_num(q * d[i]),
                      pulse_displacement_energy_J=_num(2.5e-15 if d[i] > 0 else 2.0e-15),
                      pulse_faradaic_energy_J=_num(abs(V) * q))
        t_end = t + width + 2e-10
        rows.append(dict(common, time_s=_num(t_end), event="pulse_end", conductance_S="nan"))
        G_after = G_b[i] + dG[i]
        for s in range(rest_steps):
            ts = t_end + 10.0 ** (-3 + s)
            rows.append(dict(common, time_s=_num(ts), event="step",
                             conductance_S=_num(G_after * (1 + 1e-3 * (rest_steps - s)))))
        t = t_end + 1.0
        g_read = "nan" if failed_read == i + 1 else _num(G_after)
        rows.append(dict(common, time_s=_num(t), event="read", conductance_S=g_read))
    with open(path / "series.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, SERIES_COLUMNS)
        w.writeheader()
        w.writerows(rows)
    summary = {"case": "synthetic", "case_file": str(case_path.resolve()), "case_hash": f"hash-{path.name}",
               "status": "completed", "versions": {"protonfem": "test"}, "per_pulse": []}
    (path / "summary.json").write_text(json.dumps(summary))
    return path


def write_response_map(path: Path, rows: np.ndarray, *, failed_ids=(), temperature=300.0, thickness=1e-8) -> Path:
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    cols = ["id", "state", "G_before_S", "amplitude_V", "width_s", "temperature_K", "electrolyte_thickness_m",
            "G_after_S", "dG_S", "displacement_charge_C", "faradaic_charge_C", "protons", "displacement_energy_J",
            "faradaic_energy_J", "status"]
    with open(path / "response_map.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(cols)
        states = {g: i for i, g in enumerate(sorted(set(rows[:, 0])))}
        for i, (G, d, V, wd, dg) in enumerate(rows):
            failed = i in failed_ids
            w.writerow([i, states[G], _num(G), _num(V), _num(wd), temperature, thickness,
                        "nan" if failed else _num(G + dg), "nan" if failed else _num(dg), 1e-16,
                        _num(abs(dg) / 1e-12 * E_CHARGE), _num(abs(dg) / 1e-12), 2e-15, 1e-17,
                        "failed" if failed else "completed"])
    (path / "response_map.json").write_text(json.dumps({"case": "map", "case_hash": "hash-map",
                                                        "versions": {"protonfem": "test"}, "grid": {}}))
    return path


def write_sweep(path: Path, dGs, *, failed=(), seed=0) -> Path:
    """A sweep of run directories whose soft-bounds devices differ in dG (one variant per value)."""
    path = Path(path)
    (path / "variants").mkdir(parents=True, exist_ok=True)
    with open(path / "sweep.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["id", "status", "materials.electrolyte.diffusivity", "final_conductance_S"])
        for i, dg in enumerate(dGs):
            vid = f"v{i:03d}"
            status = "failed" if i in failed else "completed"
            w.writerow([vid, status, 1e-17 * (1 + i), 0.0])
            if status == "completed":
                write_run_dir(path / "variants" / vid, params=dict(SOFT, dG=dg), n_up=60, n_down=60, seed=seed + i,
                              sigma_abs=2e-12, case_in_dir=True)
    return path
