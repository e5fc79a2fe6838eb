"""Plots of a run's series (matplotlib, no DOLFINx): conductance against pulse number."""
from __future__ import annotations

import csv
import os
from pathlib import Path


def read_series(path: Path | str) -> list[dict[str, str]]:
    """Rows of a ``series.csv`` as dicts (strings; callers convert what they use)."""
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def plot_conductance(series_csv: Path | str, png: Path | str, title: str = "") -> Path:
    """G after each pulse (the read-outs) against pulse number, with the initial state as pulse 0."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_series(series_csv)
    reads = [r for r in rows if r["event"] in ("initial", "read")]
    pulses = [int(r["pulse"]) for r in reads]
    g = [float(r["conductance_S"]) * 1e9 for r in reads]
    amps = [float(r["pulse_amplitude_V"]) for r in reads]
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    ax.plot(pulses, g, "-", color="0.6", lw=1)
    up = [(p, v) for p, v, a in zip(pulses, g, amps) if a > 0]
    down = [(p, v) for p, v, a in zip(pulses, g, amps) if a < 0]
    rest = [(p, v) for p, v, a in zip(pulses, g, amps) if a == 0]
    for pts, style, label in ((up, "o", "after + pulse"), (down, "s", "after - pulse"), (rest, "D", "initial")):
        if pts:
            ax.plot([p for p, _ in pts], [v for _, v in pts], style, ms=4, label=label)
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("pulse number")
    ax.set_ylabel("channel conductance G [nS]")
    ax.set_title(title or "Conductance read-out")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    png = Path(png)
    tmp = png.with_suffix(".tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, png)  # atomic: a killed run never leaves a half-written PNG
    return png
