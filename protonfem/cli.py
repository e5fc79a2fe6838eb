"""The ``protonfem`` command.

Sub-commands import their heavy dependencies lazily: ``validate``, ``fit``, ``export-aihwkit``,
``train`` and ``view`` work without DOLFINx; ``mesh``, ``run`` and ``sweep`` need it
(``pip install protonfem[dolfinx]`` or a conda /
Docker DOLFINx).

Errors a user can fix (a bad case file, a missing results directory, a failed solve) print one
line and exit non-zero; tracebacks are for bugs.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from protonfem import __version__, logs

EXIT_BAD_INPUT = 2
EXIT_FAILED = 3
EXIT_INTERRUPTED = 130


def _rank() -> int:
    try:
        from mpi4py import MPI
    except ImportError:
        return 0
    return MPI.COMM_WORLD.rank


def _say(msg: str, err: bool = False):
    if _rank() == 0:
        print(msg, file=sys.stderr if err else sys.stdout, flush=True)


# ---------------------------------------------------------------------------------------------
def cmd_validate(args) -> int:
    from protonfem.solver.case import CaseError, describe, load_case

    if args.describe:
        print(describe())
        if not args.cases:
            return 0
    if not args.cases:
        _say("protonfem validate: give at least one CASE file (or --describe)", err=True)
        return EXIT_BAD_INPUT
    status = 0
    for path in args.cases:
        try:
            case = load_case(path)
        except CaseError as exc:
            _say(f"error: {exc}", err=True)
            status = EXIT_BAD_INPUT
            continue
        pulses = sum(t.count for t in case.protocol.trains)
        _say(f"{path}: ok ({case.name}: {case.geometry.dimension}-D, {pulses} pulses, T = {case.conditions.temperature:g} K)")
    return status


def cmd_mesh(args) -> int:
    from protonfem.solver.case import CaseError, load_case

    try:
        case = load_case(args.case)
    except CaseError as exc:
        _say(f"error: {exc}", err=True)
        return EXIT_BAD_INPUT
    import dolfinx_solver  # noqa: F401
    from mpi4py import MPI

    from protonfem.solver.mesh import create_device_mesh

    out = Path(args.output) if args.output else Path("results") / case.name
    if MPI.COMM_WORLD.rank == 0:
        out.mkdir(parents=True, exist_ok=True)
    msh = out / "mesh.msh"
    try:
        dm = create_device_mesh(case, MPI.COMM_WORLD, write_msh=msh)
    except CaseError as exc:
        _say(f"error: {exc}", err=True)
        return EXIT_BAD_INPUT
    mesh = dm.mesh
    tdim = mesh.topology.dim
    cells = mesh.topology.index_map(tdim).size_global
    verts = mesh.topology.index_map(0).size_global
    _say(f"{msh}: {cells} cells, {verts} vertices, {tdim}-D, on {MPI.COMM_WORLD.size} rank(s) "
         f"(also {msh.with_suffix('.vtu').name} for ParaView)")
    return 0


def cmd_run(args) -> int:
    from protonfem.solver.case import CaseError, load_case

    try:
        case = load_case(args.case)
    except CaseError as exc:
        _say(f"error: {exc}", err=True)
        return EXIT_BAD_INPUT
    if args.petsc_option:
        try:
            case = with_petsc_options(case, args.petsc_option)
        except ValueError as exc:
            _say(f"error: {exc}", err=True)
            return EXIT_BAD_INPUT
    from protonfem.solver.run import Simulation

    if args.resume:
        from protonfem.solver.checkpoint import CHECKPOINT_DIR, META_NAME
        out = Path(args.output) if args.output else Path("results") / case.name
        if not (out / CHECKPOINT_DIR / META_NAME).is_file():
            _say(f"error: --resume: no checkpoint in {out} ({CHECKPOINT_DIR}/{META_NAME} is missing); "
                 "run without --resume (checkpoints are written every output.checkpoint_every pulses)", err=True)
            return EXIT_BAD_INPUT
    if case.sweep is not None:
        _say(f"note: {args.case} has a [sweep] table; `protonfem run` runs the case as written "
             "(use `protonfem sweep` for the variants)", err=True)
    try:
        sim = Simulation(args.case, args.output, progress=not args.quiet, case=case, resume=args.resume)
        summary = sim.run()
    except CaseError as exc:
        _say(f"error: {exc}", err=True)
        return EXIT_BAD_INPUT
    out = sim.outdir
    g = summary["conductance_S"]
    cons = summary["conservation"]
    if summary["status"] == "completed":
        _say(f"{case.name}: {summary['pulses_completed']} pulses, G {g['initial'] * 1e9:.5g} -> {g['final'] * 1e9:.5g} nS, "
             f"inventory drift {cons['max_inventory_error']:.2g}, {summary['steps']['accepted']} steps, "
             f"{summary['wall_time_s']:.1f} s on {summary['ranks']} rank(s); results in {out}")
        return 0
    if summary["status"] == "interrupted":
        _say(f"{case.name}: interrupted after {summary['pulses_completed']} pulses; results so far in {out}", err=True)
        return EXIT_INTERRUPTED
    _say(f"error: {case.name}: solve failed: {summary['message']} (results so far in {out})", err=True)
    return EXIT_FAILED


def with_petsc_options(case, texts: list[str]):
    """The case with ``--petsc-option KEY=VALUE`` merged over ``solver.petsc_options`` (the
    command line wins), so the options reach the solver by the case's own route."""
    options = dict(case.solver.petsc_options)
    for text in texts:
        key, value = logs.parse_petsc_option(text)
        options[key] = value
    return case.model_copy(update={"solver": case.solver.model_copy(update={"petsc_options": options})})


# ---------------------------------------------------------------------------------------------
#: Sub-commands that log through protonfem.logs (the others print their own output) and so take
#: the logging options; a sub-command added to the parser under one of these names gets them.
LOGGING_COMMANDS = {"run", "sweep"}


def add_logging_options(parser: argparse.ArgumentParser) -> None:
    """--log-level, -v/--verbose, --log-all-ranks (and -q/--quiet where the command has none)."""
    g = parser.add_argument_group("logging")
    g.add_argument("--log-level", choices=logs.LEVELS, default=None,
                   help="console log level (default info; the run's log file records at least info)")
    if "-v" not in parser._option_string_actions:
        g.add_argument("-v", "--verbose", action="store_true", help="same as --log-level debug")
    if "-q" not in parser._option_string_actions:
        g.add_argument("-q", "--quiet", action="store_true", help="same as --log-level warning")
    g.add_argument("--log-all-ranks", action="store_true",
                   help="log from every MPI rank, each line prefixed with its rank (one log file per rank)")


def console_level(args) -> str:
    if getattr(args, "log_level", None):
        return args.log_level
    if getattr(args, "verbose", False):
        return "debug"
    if getattr(args, "quiet", False):
        return "warning"
    return "info"


def cmd_response_map(args) -> int:
    from protonfem.solver.case import CaseError
    from protonfem.solver.response_map import load_response_map_case

    try:
        case = load_response_map_case(args.case)
    except CaseError as exc:
        _say(f"error: {exc}", err=True)
        return EXIT_BAD_INPUT
    from mpi4py import MPI

    from protonfem.solver.response_map import run_response_map, tasks_of

    world = MPI.COMM_WORLD.size
    group = args.group_size or case.response_map.group_size
    if group < 1 or world % group:
        _say(f"error: {args.case}: group size must divide the {world} MPI rank(s), got {group}", err=True)
        return EXIT_BAD_INPUT
    out = Path(args.output) if args.output else Path("results") / f"{case.name}-response-map"
    _say(f"{case.name}: {len(tasks_of(case))} probes ({case.response_map.states} states), "
         f"{world // group} group(s) of {group} rank(s); output {out}")
    try:
        meta = run_response_map(args.case, out, group_size=group, progress=not args.quiet)
    except CaseError as exc:
        _say(f"error: {exc}", err=True)
        return EXIT_BAD_INPUT
    rp = meta["replay"]
    _say(f"{case.name}: {meta['completed']}/{meta['probes']} probes completed in {meta['wall_time_s']:.1f} s "
         f"(states {meta['states_wall_time_s']:.1f} s); table {out / 'response_map.csv'}")
    if rp["checked"]:
        _say(f"replay of the train from the map: max deviation {rp['max_relative_deviation'] * 100:.3g} % of G "
             f"({rp['max_deviation_of_swing'] * 100:.3g} % of the swing), bound {rp['bound'] * 100:g} %: "
             f"{'passed' if rp['passed'] else 'FAILED'}")
    else:
        _say(f"replay check skipped: {rp['reason']}")
    return 0 if meta["completed"] == meta["probes"] else EXIT_FAILED


def cmd_reproduce(args) -> int:
    from protonfem.solver.case import CaseError

    needed = ("fig3a.toml", "fig3b.toml", "reference.toml") + (("fig2a.toml",) if args.fig2a else ())
    missing = [n for n in needed if not (args.cases / n).is_file()]
    if missing:
        _say(f"error: --cases {args.cases}: missing {', '.join(missing)}", err=True)
        return EXIT_BAD_INPUT
    from protonfem.solver.reproduce import reproduce
    from protonfem.solver.stepping import SolverFailure

    try:
        result = reproduce(args.cases, args.output, progress=not args.quiet, fig2a=args.fig2a)
    except CaseError as exc:
        _say(f"error: {exc}", err=True)
        return EXIT_BAD_INPUT
    except SolverFailure as exc:
        _say(f"error: solve failed: {exc}", err=True)
        return EXIT_FAILED
    for row in result["table"]:
        simulated = "  not run" if row["simulated"] is None else format(row["simulated"], "9.3g")
        paper = "     -" if row["paper"] is None else f"{row['paper']:6g} +- {row['tolerance']:g}"
        verdict = {None: "-", True: "agrees", False: "DIFFERS"}[row["agrees"]]
        _say(f"{row['quantity']:26s} simulated {simulated}   paper {paper}   {verdict}")
    _say(f"report: {args.output / 'reproduce.md'}")
    return 0


def cmd_sweep(args) -> int:
    from protonfem.solver.case import CaseError
    from protonfem.solver.sweep import SWEEP_LABEL, default_group_size, estimated_dofs, load_sweep

    try:
        case, variants = load_sweep(args.case)
    except CaseError as exc:
        _say(f"error: {exc}", err=True)
        return EXIT_BAD_INPUT
    if args.list:
        keys = list(variants[0].parameters)
        _say("  ".join(["id", *keys]))
        for v in variants:
            _say("  ".join([v.id, *(f"{v.parameters[k]!r}" for k in keys)]))
        return 0
    from mpi4py import MPI

    world = MPI.COMM_WORLD.size
    group_size = args.group_size if args.group_size is not None else case.sweep.group_size
    how = "given"
    if group_size is None:
        group_size = default_group_size(case, world)
        how = f"chosen for ~{estimated_dofs(case)} dofs" if case.geometry.dimension > 1 else "1-D stack"
    if group_size < 1 or world % group_size:
        source = "--group-size" if args.group_size is not None else "sweep.group_size"
        _say(f"error: {args.case}: {source}: must divide the {world} MPI rank(s), got {group_size}", err=True)
        return EXIT_BAD_INPUT
    out = Path(args.output) if args.output else Path("results") / f"{case.name}-{SWEEP_LABEL}"
    _say(f"{case.name}: {len(variants)} variants ({case.sweep.mode} over {', '.join(variants[0].parameters)}), "
         f"group size {group_size} ({how}), {world // group_size} group(s) on {world} rank(s); output {out}")
    from protonfem.solver.sweep import run_sweep

    records = run_sweep(args.case, variants, out, group_size, progress=not args.quiet)
    counts = {s: sum(r["status"] == s for r in records) for s in ("completed", "failed", "interrupted", "pending")}
    reused = sum(r["reused"] for r in records)
    _say(f"{case.name}: {counts['completed']} completed ({reused} from an earlier run), {counts['failed']} failed, "
         f"{counts['interrupted'] + counts['pending']} not finished; table {out / (SWEEP_LABEL + '.csv')}")
    for r in records:
        if r["status"] == "failed":
            _say(f"  {r['id']} failed: {r['message']}", err=True)
    if counts["interrupted"] or counts["pending"]:
        return EXIT_INTERRUPTED
    return EXIT_FAILED if counts["failed"] else 0


# ---------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="protonfem", description="protonfem: protonic programmable resistors from "
                                "field equations (DOLFINx) to compact models and crossbar training")
    p.add_argument("--version", action="version", version=f"protonfem {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    v = sub.add_parser("validate", help="check case files without running them")
    v.add_argument("cases", nargs="*", type=Path, metavar="CASE")
    v.add_argument("--describe", action="store_true", help="list every case-file key with its unit")
    v.set_defaults(func=cmd_validate)

    m = sub.add_parser("mesh", help="build and write the mesh of a case (mesh.msh, mesh.vtu)")
    m.add_argument("case", type=Path, metavar="CASE")
    m.add_argument("-o", "--output", type=Path, default=None, help="directory (default results/<case>)")
    m.set_defaults(func=cmd_mesh)

    r = sub.add_parser("run", help="run a case (under mpiexec -n N for domain decomposition)")
    r.add_argument("case", type=Path, metavar="CASE")
    r.add_argument("-o", "--output", type=Path, default=None, help="results directory (default results/<case>)")
    r.add_argument("--resume", action="store_true", help="continue from the results directory's last checkpoint (output.checkpoint_every); "
                        "the series then matches an uninterrupted run")
    r.add_argument("-q", "--quiet", action="store_true",
                   help="no progress bar, only warnings and errors on the console (the log file is complete)")
    r.add_argument("--petsc-option", action="append", default=[], metavar="KEY=VALUE",
                   help="PETSc option for the nonlinear/linear solver, without prefix or dash, over the case's "
                        "solver.petsc_options; repeatable; a flag as KEY= (e.g. --petsc-option snes_monitor=)")
    r.set_defaults(func=cmd_run)

    sw = sub.add_parser("sweep", help="run the case's [sweep] variants as an MPI ensemble (resumable)")
    sw.add_argument("case", type=Path, metavar="CASE")
    sw.add_argument("-o", "--output", type=Path, default=None,
                    help="directory (default results/<case>-sweep): variants/<id>/, sweep.csv, sweep.json")
    sw.add_argument("-k", "--group-size", type=int, default=None,
                    help="MPI ranks per variant (default: sweep.group_size, else from the mesh size; 1-D: 1)")
    sw.add_argument("--list", action="store_true", help="list the variants and their parameters, run nothing")
    sw.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    sw.set_defaults(func=cmd_sweep)

    rm = sub.add_parser("response-map", help="single-pulse responses from sampled channel states over "
                        "(amplitude, width, temperature), as an MPI ensemble (resumable)")
    rm.add_argument("case", type=Path, metavar="CASE")
    rm.add_argument("-o", "--output", type=Path, default=None,
                    help="directory (default results/<case>-response-map): response_map.csv/.json, states/, variants/")
    rm.add_argument("-k", "--group-size", type=int, default=None, help="MPI ranks per probe (1-D: 1)")
    rm.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    rm.set_defaults(func=cmd_response_map)

    rp = sub.add_parser("reproduce", help="simulate the trends of Onen et al. 2022 (Fig. 2A, 3A, 3B, energy) with "
                        "one parameter set and compare with the paper's numbers (reproduce.md)")
    rp.add_argument("--cases", type=Path, default=Path("cases/onen2022"), help="directory of the onen2022 cases")
    rp.add_argument("-o", "--output", type=Path, default=Path("results/reproduce"), help="output directory")
    rp.add_argument("--fig2a", action="store_true", help="also run the full Fig. 2A protocol (fig2a.toml: 1000 + "
                    "1000 pulses, ~2.5 min on one core) for the up/down symmetry over the paper's protocol")
    rp.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    rp.set_defaults(func=cmd_reproduce)

    from protonfem.postprocess.cli_view import add_view_parser
    add_view_parser(sub)
    from protonfem.postprocess.cli_fit import add_export_aihwkit_parser, add_fit_parser
    add_fit_parser(sub)
    add_export_aihwkit_parser(sub)
    from protonfem.solver.verification.report import add_verify_parser
    add_verify_parser(sub)
    try:
        from protonfem.crossbar.cli import add_train_parser, run_train
    except ImportError:  # pragma: no cover - crossbar is part of the distribution
        pass
    else:
        add_train_parser(sub)
        sub.choices["train"].set_defaults(func=run_train)
    for name in LOGGING_COMMANDS & set(sub.choices):
        add_logging_options(sub.choices[name])
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logs.configure(console_level(args), all_ranks=getattr(args, "log_all_ranks", False),
                   command=list(argv) if argv is not None else sys.argv[1:])
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        _say("interrupted", err=True)
        return EXIT_INTERRUPTED


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
