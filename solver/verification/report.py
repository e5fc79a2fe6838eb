"""``protonfem verify``: run the verification problems, print and write the report.

Writes ``DIR/verification.json`` (every check and the plot arrays), ``DIR/verification.md`` (the
table) and one PNG per problem; exits 0 when every check passes, 1 otherwise. Collective under
MPI: every rank runs every problem, rank 0 prints and writes.
"""
from __future__ import annotations

import json
import math
import time
import traceback
from pathlib import Path

DEFAULT_REPORT = "results/verify"


def add_verify_parser(subparsers):
    p = subparsers.add_parser("verify", help="run the analytic verification suite (MMS rates, Poisson-Boltzmann, "
                                             "charging, sinh current, Cottrell, Tafel, Arrhenius) and write a report")
    p.add_argument("--report", default=DEFAULT_REPORT, metavar="DIR",
                   help=f"report directory (default {DEFAULT_REPORT})")
    p.add_argument("--only", nargs="+", metavar="NAME", default=None, help="run only these problems")
    p.add_argument("--quick", action="store_true", help="fewer refinements and steps (same tolerances)")
    p.set_defaults(func=run_verify)
    return p


def _problems(quick: bool) -> dict:
    from .problems import PROBLEMS

    probs = dict(PROBLEMS)
    if not quick:
        try:
            from .sg_vs_fe import sg_vs_fe  # needs sg1d.run_reference_pulse
        except ImportError:
            pass
        else:
            probs["sg_vs_fe"] = sg_vs_fe
    return probs


def _json_default(o):
    try:
        return o.tolist()          # numpy scalars and arrays
    except AttributeError:
        return str(o)


def _fmt(v) -> str:
    if isinstance(v, float):
        if v == 0.0:
            return "0"
        if not math.isfinite(v):
            return str(v)
        return f"{v:.4g}"
    return str(v)


def _tol(c) -> str:
    return {"rel": f"rel {c.tolerance:g}", "abs": f"+/- {c.tolerance:g}", "max": f"<= {c.tolerance:g}",
            "ge": f">= {c.expected:g}"}[c.kind]


def _rows(results):
    rows = []
    for r in results:
        if r.skipped:
            rows.append((r.name, "(skipped)", "", "", "", r.skipped, "SKIP"))
            continue
        for c in r.checks:
            rows.append((r.name, c.quantity, _fmt(c.measured), _fmt(c.expected), _tol(c), _fmt(c.error),
                         "PASS" if c.passed else "FAIL"))
    return rows


HEADER = ("problem", "quantity", "measured", "expected", "tolerance", "error", "")


def _markdown(results, wall) -> str:
    lines = ["# protonfem verification report", "",
             f"{sum(r.passed for r in results)}/{len(results)} problems pass; wall time {wall:.1f} s.", "",
             "| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    for row in _rows(results):
        lines.append("| " + " | ".join(str(x).replace("|", "/") for x in row) + " |")
    lines.append("")
    for r in results:
        lines.append(f"## {r.name}: {r.title}")
        lines.append("")
        lines.append(f"{'PASS' if r.passed else 'FAIL'} ({r.wall_time_s:.2f} s). ![{r.name}]({r.name}.png)")
        lines.append("")
        for n in r.notes:
            lines.append(f"- {n}")
        lines.append("")
    return "\n".join(lines)


def _print_table(results):
    rows = _rows(results)
    try:
        from rich.console import Console
        from rich.table import Table

        t = Table(title="protonfem verification")
        for h in HEADER:
            t.add_column(h)
        for row in rows:
            style = {"PASS": "green", "FAIL": "bold red", "SKIP": "yellow"}[row[-1]]
            t.add_row(*row[:-1], f"[{style}]{row[-1]}[/{style}]")
        Console(width=max(150, Console().width)).print(t)
    except ImportError:  # pragma: no cover
        widths = [max(len(str(r[i])) for r in rows + [HEADER]) for i in range(len(HEADER))]
        for row in [HEADER] + rows:
            print("  ".join(str(x).ljust(w) for x, w in zip(row, widths)))


# ------------------------------------------------------------------------------------------------
def _plot(result, path: Path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    a = result.arrays
    name = result.name
    if name == "mms":
        fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
        for ax, case in zip(axes, ("1d", "2d", "2region")):
            d = a[case]
            h = np.array(d["h"])
            for key, mk in (("u_l2", "o-"), ("u_h1", "s-"), ("w_l2", "o--"), ("w_h1", "s--")):
                rate = result.check(f"{case} {key[0]} {key[2:].upper()} rate").measured
                ax.loglog(h, d[key], mk, label=f"{key.replace('_', ' ').upper()}  rate {rate:.2f}")
            ax.loglog(h, d["u_l2"][-1] * (h / h[-1]) ** 2, "k:", lw=0.8, label="h^2")
            ax.loglog(h, d["u_h1"][-1] * (h / h[-1]) ** 1, "k-.", lw=0.8, label="h^1")
            ax.set_title(f"MMS {case}")
            ax.set_xlabel("h (nm)")
            ax.legend(fontsize=7)
        axes[0].set_ylabel("error")
    elif name == "poisson_boltzmann":
        fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
        for ax, key, title in ((axes[0], "accumulation", "single species, accumulation"),
                               (axes[1], "gouy_chapman", "symmetric Gouy-Chapman")):
            d = a[key]
            ax.plot(d["x"], d["u_exact"], "k-", label="analytic")
            ax.plot(d["x"], d["u"], "r.", ms=3, label="FE")
            ax.set_xlim(0, max(d["x"]) / 4)
            ax.set_title(title)
            ax.set_xlabel("x (nm)")
            ax.set_ylabel("u (kT/q)")
            ax.legend()
        d = a["depletion"]
        axes[2].plot(d["x"], np.array(d["c"]) / d["c0"], "r-", label="FE c/c0")
        axes[2].axvline(d["x_half"], color="r", ls=":", label=f"FE c=c0/2 at {d['x_half']:.3f} nm")
        axes[2].axvline(d["x_half_exact"], color="k", ls="--", label=f"exact {d['x_half_exact']:.3f} nm")
        axes[2].axvline(d["W_dep"], color="b", ls="-.", label=f"depletion approx. {d['W_dep']:.3f} nm")
        axes[2].set_xlim(0, 2 * d["W_dep"])
        axes[2].set_xlabel("x (nm)")
        axes[2].set_title("depletion at 2 V")
        axes[2].legend(fontsize=7)
    elif name == "linear_charging":
        fig, ax = plt.subplots(figsize=(7, 4.5))
        t, I = np.array(a["t_I"]), np.abs(np.array(a["I"]))
        tau = a["tau_est"]
        ax.semilogy(t / tau, I, "r-", label="FE displacement current")
        k = np.argmin(np.abs(t / tau - 1.5))
        ax.semilogy(t / tau, I[k] * np.exp(-(t - t[k]) / a["tau_fe"]), "k--", lw=0.8,
                    label=f"exp(-t/tau), tau_FE = {a['tau_fe']:.4g} s")
        ax.axvspan(*a["window"], color="0.9")
        ax.set_xlabel("t / (lambda_D L / 2D)")
        ax.set_ylabel("|I| (scaled)")
        ax.legend()
    elif name == "uniform_field":
        fig, ax = plt.subplots(figsize=(7, 4.5))
        ax.semilogy(a["x"], a["J_exact"], "k-", label="2Dc(1-theta)/a sinh(aE/2kT)")
        ax.semilogy(a["x"], a["J"], "ro", label="FE")
        ax.semilogy(a["x"], a["J_np_linear"], "b--", label="Nernst-Planck (a = 0)")
        ax.set_xlabel("x = q a E / 2kT")
        ax.set_ylabel("J (scaled)")
        ax.legend()
    elif name == "cottrell":
        fig, ax = plt.subplots(figsize=(7, 4.5))
        ax.loglog(a["t"], a["i_exact"], "k-", label="Cottrell")
        ax.loglog(a["t"], a["i"], "r--", label="FE")
        ax.axvspan(*a["window"], color="0.9")
        ax.set_xlabel("t (s)")
        ax.set_ylabel("flux (scaled)")
        ax.legend()
    elif name == "tafel":
        fig, ax = plt.subplots(figsize=(7, 4.5))
        dw = np.array(a["dw"])
        for key in sorted(k for k in a if k.startswith("j_alpha")):
            ax.semilogy(dw, np.abs(a[key]), label=key.replace("j_alpha", "alpha = "))
        ax.set_xlabel("w1 - w2 (kT)")
        ax.set_ylabel("|j| (scaled)")
        ax.legend()
    elif name == "arrhenius":
        fig, ax = plt.subplots(figsize=(7, 4.5))
        T = np.array(a["T"])
        for key in sorted(k for k in a if k.startswith("ratio_")):
            ax.semilogy(1000.0 / T, a[key], label=key.replace("ratio_Ea", "Ea = ") + " eV")
        ax.set_xlabel("1000 / T (1/K)")
        ax.set_ylabel("rate / rate(300 K)")
        ax.legend()
    elif name == "sg_vs_fe":
        fig, ax = plt.subplots(figsize=(7, 4.5))
        ratio = np.array(a["fe"]) / np.array(a["sg"])
        ax.bar(a["quantity"], ratio - 1.0)
        ax.axhline(0.0, color="k", lw=0.8)
        ax.set_ylabel("FE / SG - 1")
    else:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for key, val in a.items():
            if isinstance(val, (list, tuple)) and val and isinstance(val[0], (int, float)) and key != "t":
                ax.plot(a.get("t", range(len(val))), val, label=key)
        ax.legend()
    fig.suptitle(f"{result.name}: {'PASS' if result.passed else 'FAIL'}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ------------------------------------------------------------------------------------------------
def run_verify(args) -> int:
    import dolfinx_solver  # noqa: F401
    from mpi4py import MPI

    from .common import Check, Result

    comm = MPI.COMM_WORLD
    quick = bool(getattr(args, "quick", False))
    probs = _problems(quick)
    only = getattr(args, "only", None)
    if only:
        unknown = [n for n in only if n not in probs]
        if unknown:
            if comm.rank == 0:
                print(f"protonfem verify: unknown problem(s) {', '.join(unknown)}; known: {', '.join(probs)}")
            return 2
        probs = {n: probs[n] for n in only}
    out = Path(getattr(args, "report", None) or DEFAULT_REPORT)
    t0 = time.perf_counter()
    results = []
    for name, fn in probs.items():
        try:
            res = fn(quick=quick, comm=comm)
        except Exception as exc:  # a crash is a failed check, not a crashed report
            res = Result(name, name, [Check("completed without error", 0.0, 1.0, 0.0, "ge")],
                         notes=[f"{type(exc).__name__}: {exc}", traceback.format_exc(limit=3)])
        results.append(res)
        if comm.rank == 0:
            print(f"{name}: {'PASS' if res.passed else 'FAIL'} ({res.wall_time_s:.1f} s)", flush=True)
    wall = time.perf_counter() - t0
    all_ok = all(r.passed for r in results)
    if comm.rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        _print_table(results)
        doc = {"passed": all_ok, "quick": quick, "wall_time_s": wall, "ranks": comm.size,
               "problems": [r.as_dict() for r in results]}
        (out / "verification.json").write_text(json.dumps(doc, indent=1, default=_json_default))
        (out / "verification.md").write_text(_markdown(results, wall))
        for r in results:
            try:
                _plot(r, out / f"{r.name}.png")
            except Exception as exc:  # a plot must not hide the verdict
                print(f"warning: plot of {r.name} failed: {exc}")
        print(f"verification {'passed' if all_ok else 'FAILED'}: {sum(r.passed for r in results)}/{len(results)} "
              f"problems, {wall:.1f} s; report in {out}")
    return 0 if all_ok else 1
