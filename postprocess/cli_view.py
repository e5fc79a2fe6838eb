"""``protonfem view RESULTS``: render fields to PNG (pyvista/matplotlib, or ParaView's pvbatch).

The lead's CLI calls ``add_view_parser(subparsers)`` and dispatches to ``run_view(args)``.
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

__all__ = ["add_view_parser", "run_view", "paraview_command", "run_paraview"]

PARAVIEW_SCRIPT = Path(__file__).with_name("paraview_render.py")


def add_view_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "view",
        help="render fields (potential, proton density) of a results directory to PNG",
        description="Render the fields written by a run (fields.vtkhdf, or fields.xdmf with "
        "--engine paraview) to PNG images, off-screen.",
    )
    p.add_argument("results", type=Path, help="results directory of a run")
    p.add_argument("-o", "--output", type=Path, default=None,
                   help="directory for the PNGs (default: RESULTS/plots)")
    p.add_argument("-t", "--time-index", type=int, default=-1,
                   help="output step to render; negative counts from the end (default: last)")
    p.add_argument("--fields", nargs="+", default=["potential", "proton_density"],
                   help="fields to render (pyvista engine)")
    p.add_argument("--engine", choices=["pyvista", "paraview"], default="pyvista",
                   help="pyvista/matplotlib (default) or ParaView's pvbatch under xvfb-run")
    p.set_defaults(func=run_view)
    return p


def paraview_command(results: Path, out_dir: Path, time_index: int = -1) -> list[str]:
    """The pvbatch command line (wrapped in ``xvfb-run -a`` when available)."""
    cmd = ["pvbatch", str(PARAVIEW_SCRIPT), str(results), str(out_dir), str(time_index)]
    if shutil.which("xvfb-run"):
        cmd = ["xvfb-run", "-a"] + cmd
    return cmd


def run_paraview(results: Path, out_dir: Path, time_index: int = -1, attempts: int = 3,
                 timeout: float = 300.0) -> subprocess.CompletedProcess:
    """Run the pvbatch script, retrying when the virtual X server was not ready.

    ``xvfb-run -a`` can hand pvbatch a display whose previous server (from a run a moment earlier)
    is still shutting down: pvbatch then aborts with "bad X server connection". That is a
    start-up race, not a rendering failure, so it is retried after a short pause.
    """
    import time

    proc = None
    for attempt in range(attempts):
        proc = subprocess.run(paraview_command(results, out_dir, time_index), capture_output=True, text=True,
                              timeout=timeout)
        output = proc.stdout + proc.stderr
        if proc.returncode == 0 or "X server" not in output:
            return proc
        time.sleep(1.0 + attempt)
    return proc


def run_view(args) -> int:
    results = Path(args.results)
    out_dir = Path(args.output) if args.output is not None else results / "plots"
    if args.engine == "paraview":
        if shutil.which("pvbatch") is None:
            print("protonfem view: pvbatch not found (apt-get install paraview xvfb)", file=sys.stderr)
            return 2
        proc = run_paraview(results, out_dir, args.time_index)
        sys.stdout.write(proc.stdout)
        sys.stderr.write(proc.stderr)
        return proc.returncode
    from .render import render_fields

    try:
        paths = render_fields(results, out_dir, args.time_index, fields=args.fields)
    except (FileNotFoundError, KeyError, IndexError, ValueError) as exc:
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"protonfem view: {msg}", file=sys.stderr)
        return 2
    for path in paths:
        print(path)
    return 0
