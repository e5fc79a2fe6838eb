"""``protonfem reproduce``: the trends of Onen et al., Science 2022, simulated with one parameter
set (``cases/onen2022/reference.toml``'s materials) and compared with the paper's numbers.

* Fig. 3A (``fig3a.toml``, 5 nm PSG, a response map from the equilibrium state): the voltage per
  decade of ΔG at the high-field end (paper: ΔG ∝ sinh(qaV/2kTd), a = 0.56 nm, i.e. 1.06 V per
  decade at 5 nm) and the width exponent β of ΔG ∝ t^β (paper: 1.2).
* Fig. 3B (``fig3b.toml``, a sweep of PSG thickness at one field): ΔG per pulse should collapse
  onto one value when V/d is fixed.
* Fig. 2A (``fig2a.toml``, the paper's 1000 pulses at +10 V then 1000 at -8.5 V, about 2.5 min
  on one core; run with ``fig2a=True`` / ``--fig2a``): the ratio of the mean up and down steps
  over the whole protocol (the paper's trace is nearly symmetric), and the conductance range.
* Energy and the first steps (``reference.toml``, 10 pulses at +10 V then 10 at -8.5 V from the
  equilibrium state): the energy per pulse of gate charging (~2.5 fJ) and of proton transfer
  (~15 aJ), and the up/down ratio of those first steps (the asymmetry at equal state; the paper
  gives no number for it).

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
    "up_down_ratio": (1.0, 1.0, "Fig. 2A protocol: mean dG of the 1000 +10 V pulses over the magnitude of that of "
                                "the 1000 -8.5 V pulses (the paper's trace is nearly symmetric)"),
    "up_down_ratio_first_pulses": (None, None, "the same for the first 10 + 10 pulses from equilibrium (the "
                                               "asymmetry at equal state: sinh law, +10 V against -8.5 V)"),
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


def _up_down_ratio(summary: dict) -> float:
    pp = summary["per_pulse"]
    g = [summary["conductance_S"]["initial"]] + [p["conductance_S"] for p in pp]
    up = [b - a for a, b, p in zip(g, g[1:], pp) if p["amplitude_V"] > 0]
    down = [b - a for a, b, p in zip(g, g[1:], pp) if p["amplitude_V"] < 0]
    return float(np.mean(up) / abs(np.mean(down)))


def fig2a_trends(summary: dict) -> dict:
    """Symmetry and range of the Fig. 2A protocol."""
    g = summary["conductance_S"]
    return {"up_down_ratio": _up_down_ratio(summary), "fig2a_G_initial_S": g["initial"], "fig2a_G_max_S": g["max"],
            "fig2a_G_final_S": g["final"], "fig2a_wall_time_s": summary["wall_time_s"]}


def train_trends(summary: dict) -> dict:
    pp = summary["per_pulse"]
    ups = [p for p in pp if p["amplitude_V"] > 0]
    return {"up_down_ratio_first_pulses": _up_down_ratio(summary),
            "displacement_energy_fJ": float(np.mean([p["displacement_energy_J"] for p in ups])) * 1e15,
            "faradaic_energy_aJ": float(np.mean([p["faradaic_energy_J"] for p in ups])) * 1e18,
            "protons_per_up_pulse": float(np.mean([p["faradaic_charge_C"] for p in ups])) / 1.602176634e-19}


def reproduce(cases_dir: Path, outdir: Path, comm: MPI.Comm = MPI.COMM_WORLD, progress: bool = True,
              fig2a: bool = False) -> dict:
    """Run the cases, write ``reproduce.json`` / ``reproduce.md`` in ``outdir`` and return the
    result (on every rank). ``fig2a``: also run the full Fig. 2A protocol (on rank 0, ~2.5 min);
    without it the Fig. 2A symmetry row says "not run"."""
    from .response_map import run_response_map
    from .run import Simulation
    from .stepping import SolverFailure
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
        if fig2a:
            full = Simulation(cases_dir / "fig2a.toml", outdir / "fig2a", comm=MPI.COMM_SELF, progress=progress).run()
            if full["status"] != "completed":
                raise SolverFailure(f"{cases_dir / 'fig2a.toml'}: {full['status']}: {full['message']} "
                                    f"(its results so far are in {outdir / 'fig2a'})")
            measured.update(fig2a_trends(full))
    comm.Barrier()
    result = None
    if comm.rank == 0:
        measured.update(fig3a_trends(outdir / "fig3a"))
        measured.update(fig3b_trends(outdir / "fig3b"))
        measured.update(train_trends(summary))
        table = []
        for key, (paper, tol, meaning) in PAPER.items():
            value = measured.get(key)
            agrees = None if value is None or paper is None else abs(value - paper) <= tol
            table.append({"quantity": key, "meaning": meaning, "simulated": value, "paper": paper, "tolerance": tol,
                          "agrees": agrees})
        result = {"parameter_set": str((cases_dir / "reference.toml").resolve()),
                  "parameter_set_hash": case_hash(cases_dir / "reference.toml"), "table": table, "measured": measured}
        (outdir / "reproduce.json").write_text(json.dumps(result, indent=1))
        lines = ["# Onen et al. 2022: simulated trends against the paper", "",
                 f"One parameter set: `{result['parameter_set']}` (sha256 {result['parameter_set_hash'][:12]}...).", "",
                 "| quantity | simulated | paper | tolerance | agrees |", "|---|---|---|---|---|"]
        for row in table:
            lines.append(f"| {row['meaning']} | {_cell(row['simulated'], 'not run (--fig2a)')} | {_cell(row['paper'])} | "
                         f"{'+- ' + format(row['tolerance'], 'g') if row['tolerance'] is not None else '-'} | "
                         f"{_verdict(row['agrees'])} |")
        if "fig2a_G_max_S" in measured:
            lines += ["", f"Fig. 2A protocol: G {measured['fig2a_G_initial_S'] * 1e9:.4g} nS -> "
                          f"{measured['fig2a_G_max_S'] * 1e9:.4g} nS after the +10 V train -> "
                          f"{measured['fig2a_G_final_S'] * 1e9:.4g} nS after the -8.5 V train "
                          f"({measured['fig2a_wall_time_s']:.0f} s on one core)."]
        (outdir / "reproduce.md").write_text("\n".join(lines) + "\n")
    return comm.bcast(result, root=0)


def _cell(value, missing: str = "-") -> str:
    return missing if value is None else format(value, ".3g")


def _verdict(agrees) -> str:
    """yes / NO against the paper, - where the paper has no number or the quantity was not run."""
    return "-" if agrees is None else ("yes" if agrees else "NO")
