"""``protonfem reproduce``: the trends of Onen et al., Science 2022, simulated with one parameter
set (``cases/onen2022/reference.toml``'s materials) and compared with the paper's numbers.

* Fig. 3A (``fig3a.toml``, 5 nm PSG, a response map from the equilibrium state): the voltage per
  decade of ΔG at the high-field end (paper: ΔG ∝ sinh(qaV/2kTd), a = 0.56 nm, i.e. 1.06 V per
  decade at 5 nm) and the width exponent β of ΔG ∝ t^β (paper: 1.2).
* Fig. 3B (``fig3b.toml``, a sweep of PSG thickness at one field): ΔG per pulse should collapse
  onto one value when V/d is fixed.
* Fig. 2A / energy (``reference.toml``, 10 pulses at +10 V then 10 at -8.5 V): the up/down step
  ratio (the paper's trace is nearly symmetric) and the energy per pulse of gate charging
  (~2.5 fJ) and of proton transfer (~15 aJ).

Writes ``reproduce.json`` and ``reproduce.md`` (quantity, simulated, paper, tolerance, verdict).
"""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
from mpi4py import MPI

from .case import case_hash

PAPER = {
    "volts_per_decade_5nm": (1.06, 0.3, "V per decade of dG at 5 nm, high-field end (sinh law, a = 0.56 nm)"),
    "width_exponent": (1.2, 0.3, "beta in dG ~ t^beta at the highest amplitude"),
    "thickness_collapse": (1.0, 1.0, "max/min of dG per pulse over 5-15 nm at 0.8 V/nm (1 = collapse)"),
    "up_down_ratio": (1.0, 1.0, "mean dG of +10 V pulses / |mean dG of -8.5 V pulses| (Fig. 2A nearly symmetric)"),
    "displacement_energy_fJ": (2.5, 1.25, "energy to charge the gate per +10 V pulse [fJ]"),
    "faradaic_energy_aJ": (15.0, 7.5, "proton-transfer energy per +10 V pulse [aJ]"),
}


def _fit_slope(x, y) -> float:
    return float(np.polyfit(np.asarray(x, float), np.asarray(y, float), 1)[0])


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def fig3a_trends(map_dir: Path) -> dict:
    rows = [r for r in _rows(map_dir / "response_map.csv") if r["status"] == "completed" and int(r["state"]) == 0]
    amps = sorted({float(r["amplitude_V"]) for r in rows})
    widths = sorted({float(r["width_s"]) for r in rows})
    dg = {(float(r["amplitude_V"]), float(r["width_s"])): float(r["dG_S"]) for r in rows}
    w_ref = min(widths, key=lambda w: abs(w - 5e-9))
    top = amps[-3:]
    slope = _fit_slope(top, [math.log10(dg[v, w_ref]) for v in top])
    v_top = amps[-1]
    beta = _fit_slope([math.log(w) for w in widths], [math.log(dg[v_top, w]) for w in widths])
    return {"volts_per_decade_5nm": 1.0 / slope, "width_exponent": beta,
            "dG_vs_V_at_5ns": {str(v): dg[v, w_ref] for v in amps},
            "dG_vs_width_at_top_V": {str(w): dg[v_top, w] for w in widths}}


def fig3b_trends(sweep_dir: Path) -> dict:
    rows = [r for r in _rows(sweep_dir / "sweep.csv") if r["status"] == "completed"]
    d = {float(r["geometry.electrolyte_thickness"]): float(r["dG_up_mean_S"]) for r in rows}
    values = list(d.values())
    return {"thickness_collapse": max(values) / min(values), "dG_by_thickness": {str(k): v for k, v in sorted(d.items())}}


def train_trends(summary: dict) -> dict:
    pp = summary["per_pulse"]
    g = [summary["conductance_S"]["initial"]] + [p["conductance_S"] for p in pp]
    up = [b - a for a, b, p in zip(g, g[1:], pp) if p["amplitude_V"] > 0]
    down = [b - a for a, b, p in zip(g, g[1:], pp) if p["amplitude_V"] < 0]
    ups = [p for p in pp if p["amplitude_V"] > 0]
    return {"up_down_ratio": float(np.mean(up) / abs(np.mean(down))),
            "displacement_energy_fJ": float(np.mean([p["displacement_energy_J"] for p in ups])) * 1e15,
            "faradaic_energy_aJ": float(np.mean([p["faradaic_energy_J"] for p in ups])) * 1e18,
            "protons_per_up_pulse": float(np.mean([p["faradaic_charge_C"] for p in ups])) / 1.602176634e-19}


def reproduce(cases_dir: Path, outdir: Path, comm: MPI.Comm = MPI.COMM_WORLD, progress: bool = True) -> dict:
    from .response_map import run_response_map
    from .run import Simulation
    from .sweep import load_sweep, run_sweep

    cases_dir, outdir = Path(cases_dir), Path(outdir)
    measured: dict = {}
    run_response_map(cases_dir / "fig3a.toml", outdir / "fig3a", comm=comm, progress=progress)
    _, variants = load_sweep(cases_dir / "fig3b.toml")
    run_sweep(cases_dir / "fig3b.toml", variants, outdir / "fig3b", 1, comm=comm, progress=progress)
    summary = None
    if comm.rank == 0:
        summary = Simulation(cases_dir / "reference.toml", outdir / "fig2a-train", comm=MPI.COMM_SELF,
                             progress=False).run()
    comm.Barrier()
    result = None
    if comm.rank == 0:
        measured.update(fig3a_trends(outdir / "fig3a"))
        measured.update(fig3b_trends(outdir / "fig3b"))
        measured.update(train_trends(summary))
        table = []
        for key, (paper, tol, meaning) in PAPER.items():
            value = measured[key]
            table.append({"quantity": key, "meaning": meaning, "simulated": value, "paper": paper, "tolerance": tol,
                          "agrees": abs(value - paper) <= tol})
        result = {"parameter_set": str((cases_dir / "reference.toml").resolve()),
                  "parameter_set_hash": case_hash(cases_dir / "reference.toml"), "table": table, "measured": measured}
        (outdir / "reproduce.json").write_text(json.dumps(result, indent=1))
        lines = ["# Onen et al. 2022: simulated trends against the paper", "",
                 f"One parameter set: `{result['parameter_set']}` (sha256 {result['parameter_set_hash'][:12]}...).", "",
                 "| quantity | simulated | paper | tolerance | agrees |", "|---|---|---|---|---|"]
        for row in table:
            lines.append(f"| {row['meaning']} | {row['simulated']:.3g} | {row['paper']:g} | +- {row['tolerance']:g} | "
                         f"{'yes' if row['agrees'] else 'NO'} |")
        (outdir / "reproduce.md").write_text("\n".join(lines) + "\n")
    return comm.bcast(result, root=0)
