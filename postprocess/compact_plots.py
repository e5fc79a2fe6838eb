"""Plots of pulse data and compact-model fits (matplotlib Agg, PNG; no DOLFINx).

Each function takes the tidy :class:`~.pulse_data.PulseTable` (and a :class:`~.fit.FamilyFit`
where a model is drawn) and a PNG path, and returns the path.  :func:`write_plots` writes the ones
the data support: Delta G against V needs several amplitudes in a direction, against width several
widths, retention several read-outs within one rest.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .fit import FamilyFit, FitReport
from .pulse_data import PulseTable

__all__ = ["plot_conductance_trace", "plot_symmetry", "plot_dg_vs_voltage", "plot_dg_vs_width", "plot_retention",
           "plot_model_vs_data", "write_plots", "applicable_plots"]

NS = 1e9  # S -> nS for axes
COLORS = {1: "C3", -1: "C0"}
LABELS = {1: "up (potentiating)", -1: "down (depressing)"}


def _axes(figsize=(6, 4)):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=figsize, dpi=120)
    return fig, ax


def _save(fig, path) -> Path:
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, path)  # atomic: a killed run never leaves a half-written PNG
    return path


def plot_conductance_trace(table: PulseTable, fit: FamilyFit | None, path) -> Path:
    """G after each pulse against pulse number (per source), with the model's open-loop trajectory:
    the fitted mean law applied to the same pulse sequence from the first measured state."""
    fig, ax = _axes((7, 4))
    offset = 0
    for src in dict.fromkeys(table["source"] + "|" + table["variant"]):
        sub = table.select((table["source"] + "|" + table["variant"]) == src)
        x = offset + np.arange(1, len(sub) + 1)
        for d in (1, -1):
            m = sub["direction"] == d
            ax.plot(x[m], sub["G_after_S"][m] * NS, "o", ms=2.5, color=COLORS[d], alpha=0.7,
                    label=LABELS[d] if offset == 0 else None)
        if fit is not None:
            G, traj = sub["G_before_S"][0], []
            for i in range(len(sub)):
                one = sub.select(np.arange(len(sub)) == i)
                one.columns["G_before_S"] = np.array([G])
                G = G + float(fit.predict(one)[0])
                traj.append(G)
            ax.plot(x, np.asarray(traj) * NS, "-", color="k", lw=1,
                    label=f"model ({fit.name}), open loop" if offset == 0 else None)
        offset += len(sub)
    ax.set(xlabel="pulse number", ylabel="G after pulse [nS]", title="Conductance against pulse number")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_symmetry(table: PulseTable, fit: FamilyFit | None, path) -> Path:
    """Delta G against G before the pulse, up and down (the symmetry plot), with the model at the
    reference pulses; the crossing of |up| and |down| is the symmetry point."""
    fig, ax = _axes()
    G = table["G_before_S"]
    for d in (1, -1):
        m = table["direction"] == d
        ax.plot(G[m] * NS, table["dG_S"][m] * NS, "o", ms=2.5, alpha=0.6, color=COLORS[d], label=LABELS[d])
    if fit is not None:
        grid = np.linspace(G.min(), G.max(), 200)
        for d in (1, -1):
            if (table["direction"] == d).any():
                mu = fit.family.mean_step(grid, np.full_like(grid, float(d)), fit.params)
                ax.plot(grid * NS, mu * NS, "-", color=COLORS[d], lw=1.5)
        ax.plot([], [], "k-", label=f"model ({fit.name}), reference pulses")
    ax.axhline(0, color="0.5", lw=0.8)
    ax.set(xlabel="G before pulse [nS]", ylabel="Delta G per pulse [nS]", title="Step against state (symmetry)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def _condition_means(table: PulseTable, d: int, key: str):
    """Mean and std of |Delta G| per value of ``key`` among the pulses of direction d at the other
    reference settings (values, means, stds)."""
    m = table["direction"] == d
    vals = np.abs(table[key][m])
    dG = np.abs(table["dG_S"][m])
    xs = np.unique([float(f"{v:.9g}") for v in vals])  # significant digits: widths are ~1e-9
    means = np.array([dG[np.isclose(vals, x, rtol=1e-9, atol=0.0)].mean() for x in xs])
    stds = np.array([dG[np.isclose(vals, x, rtol=1e-9, atol=0.0)].std() for x in xs])
    return xs, means, stds


def _law_curve(table: PulseTable, fit: FamilyFit, d: int, amplitude, width):
    """State-averaged model step of direction d at other amplitudes/widths: the mean of the family's
    reference-pulse steps over the measured states times the condition factor."""
    m = table["direction"] == d
    base = np.mean(np.abs(fit.family.mean_step(table["G_before_S"][m], np.full(m.sum(), float(d)), fit.params)))
    law = fit.condition
    amplitude = np.broadcast_to(amplitude, np.broadcast(amplitude, width).shape)
    width = np.broadcast_to(width, amplitude.shape)
    f = law.factor(np.full(amplitude.shape, d), amplitude, width, law.temperature, law.electrolyte_thickness,
                   fit.condition_params)
    return base * f


def _ref(fit, d):
    return fit.condition.up if d > 0 else fit.condition.down


def _plot_dg_vs_condition(table: PulseTable, fit: FamilyFit, path, vary: str, law_label: str, **axes) -> Path:
    """|Delta G| per direction against one condition (``vary``: amplitude_V or width_s), the other
    held at the direction's reference pulse, with the condition law through the points."""
    fig, ax = _axes()
    held = "width_s" if vary == "amplitude_V" else "amplitude_V"
    for d in (1, -1):
        ref = _ref(fit, d) if fit.condition is not None else None
        m = table["direction"] == d
        if ref is not None:
            m &= np.isclose(np.abs(table[held]), ref["width" if held == "width_s" else "amplitude"], rtol=1e-9, atol=0.0)
        if not m.any():
            continue
        xs, mean, std = _condition_means(table.select(m), d, vary)
        ax.errorbar(xs, mean * NS, yerr=std * NS, fmt="o", color=COLORS[d], ms=4, capsize=2, label=LABELS[d])
        if fit.condition is not None:
            x = np.geomspace(xs.min() * 0.85, xs.max() * 1.15, 100)
            V, w = (x, ref["width"]) if vary == "amplitude_V" else (ref["amplitude"], x)
            ax.plot(x, _law_curve(table.select(m), fit, d, V, w) * NS, "-", color=COLORS[d])
    if fit.condition is not None:
        ax.plot([], [], "k-", label=law_label)
    ax.set_yscale("log")
    ax.set(ylabel="|Delta G| per pulse [nS]", **axes)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_dg_vs_voltage(table: PulseTable, fit: FamilyFit, path) -> Path:
    """|Delta G| against |V| (semilog) per direction at the reference width, with the sinh law."""
    label = ""
    if fit.condition is not None:
        a = fit.condition_params["hop_distance"]
        label = f"sinh law: a = {a * 1e9:.3g} nm, V0 = {fit.condition.v0(fit.condition_params):.3g} V"
    return _plot_dg_vs_condition(table, fit, path, "amplitude_V", label, xlabel="|pulse amplitude| [V]",
                                 title="Step against amplitude")


def plot_dg_vs_width(table: PulseTable, fit: FamilyFit, path) -> Path:
    """|Delta G| against pulse width (log-log) per direction at the reference amplitude, with the
    power law and its exponent."""
    label = ""
    if fit.condition is not None:
        b, s = fit.condition_params["beta"], fit.condition_std.get("beta")
        label = f"power law: beta = {b:.3g}" + (f" +- {s:.2g}" if s is not None else "")
    return _plot_dg_vs_condition(table, fit, path, "width_s", label, xlabel="pulse width [s]", xscale="log",
                                 title="Step against pulse width")


def _rests_with_readings(rest: dict) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Rests (keyed by the programming pulse they follow) with at least two finite read-outs."""
    out = {}
    for p in np.unique(rest["pulse"]):
        m = rest["pulse"] == p
        if m.sum() >= 2:
            out[int(p)] = (rest["time_s"][m], rest["G_S"][m])
    return out


def plot_retention(table: PulseTable, path) -> Path:
    """G against time since the programming pulse over the open-circuit rests (read/step rows with
    a finite conductance, through zero-amplitude read pulses), relative to each rest's first read-out."""
    fig, ax = _axes()
    for src, rest in table.rests.items():
        for p, (t, g) in _rests_with_readings(rest).items():
            t0 = rest["pulse_end_s"].get(p, t[0])
            dt = np.maximum(t - t0, 1e-30)
            ax.plot(dt, g / g[0], "-o", ms=2, lw=1, label=f"{Path(src).name}, after pulse {p}")
    ax.set_xscale("log")
    ax.set(xlabel="time since pulse end [s]", ylabel="G / G(first read-out)", title="Retention")
    ax.grid(alpha=0.3, which="both")
    if len(ax.lines) <= 10:
        ax.legend(fontsize=7)
    return _save(fig, path)


def plot_model_vs_data(table: PulseTable, fit: FamilyFit, path) -> Path:
    """Predicted against measured Delta G for every pulse, with the 1:1 line."""
    fig, ax = _axes((5, 5))
    pred = fit.predict(table)
    for d in (1, -1):
        m = table["direction"] == d
        ax.plot(table["dG_S"][m] * NS, pred[m] * NS, "o", ms=2.5, alpha=0.6, color=COLORS[d], label=LABELS[d])
    lim = np.array([min(table["dG_S"].min(), pred.min()), max(table["dG_S"].max(), pred.max())]) * NS
    ax.plot(lim, lim, "k--", lw=1, label="1:1")
    ax.set(xlabel="measured Delta G [nS]", ylabel=f"model Delta G [nS] ({fit.name})",
           title=f"Model against data: RMSE {fit.rmse * NS:.3g} nS, R^2 {fit.r2:.4f}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def applicable_plots(table: PulseTable, fit: FamilyFit) -> list[str]:
    """Names of the plots the data support."""
    names = ["conductance_trace", "symmetry", "model_vs_data"]
    keys = table.condition_keys()
    for d in (1, -1):
        kd = [k for k in keys if k[0] == d]
        if len({k[1] for k in kd}) > 1 and "dg_vs_voltage" not in names:
            names.append("dg_vs_voltage")
        if len({k[2] for k in kd}) > 1 and "dg_vs_width" not in names:
            names.append("dg_vs_width")
    if any(_rests_with_readings(r) for r in table.rests.values()):
        names.append("retention")
    return names


def write_plots(report: FitReport, outdir) -> list[Path]:
    """Every applicable plot of a fit report as ``outdir/<name>.png``."""
    outdir = Path(outdir)
    t, f = report.table, report.chosen
    makers = {
        "conductance_trace": lambda p: plot_conductance_trace(t, f, p),
        "symmetry": lambda p: plot_symmetry(t, f, p),
        "model_vs_data": lambda p: plot_model_vs_data(t, f, p),
        "dg_vs_voltage": lambda p: plot_dg_vs_voltage(t, f, p),
        "dg_vs_width": lambda p: plot_dg_vs_width(t, f, p),
        "retention": lambda p: plot_retention(t, p),
    }
    return [makers[n](outdir / f"{n}.png") for n in applicable_plots(t, f)]
