"""``protonfem fit RESULT_DIR... --output models/NAME.json`` and ``protonfem export-aihwkit MODEL.json``.

The console script calls :func:`add_fit_parser` / :func:`add_export_aihwkit_parser`; heavy imports
(SciPy, matplotlib) happen inside the commands.  Bad input (missing files, malformed data, an
unknown family, a model file that does not validate) prints one line and exits with code 2.
"""
from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

__all__ = ["add_fit_parser", "run_fit", "add_export_aihwkit_parser", "run_export_aihwkit"]

EXIT_BAD_INPUT = 2


def add_fit_parser(subparsers) -> argparse.ArgumentParser:
    from protonfem.postprocess.fit import FITTABLE_FAMILIES  # light: NumPy/SciPy only

    p = subparsers.add_parser(
        "fit", help="fit compact device models to runs, response maps or sweeps and export a model file",
        description="Fit the compact-model families to the pulses of run, response-map and sweep directories, "
                    "print the model comparison and write the chosen (or requested) family as a model file "
                    "that `protonfem train --model` reads.")
    p.add_argument("results", nargs="+", type=Path, metavar="RESULT_DIR",
                   help="run directories (series.csv), response maps (response_map.csv), sweeps (sweep.csv)")
    p.add_argument("-o", "--output", type=Path, required=True, help="model file to write (models/NAME.json)")
    p.add_argument("--family", action="append", choices=FITTABLE_FAMILIES, default=None,
                   help="fit only this family (repeat for several; the best of them is written)")
    p.add_argument("--name", default=None, help="model name (default: the output file's stem)")
    p.add_argument("--scatter", choices=["auto", "gaussian", "shot", "none"], default="auto",
                   help="cycle-to-cycle model: auto = shot noise when the data count protons, else the Gaussian "
                        "(relative or absolute) of higher likelihood")
    p.add_argument("--cv-folds", type=int, default=5, help="folds of the k-fold cross-validation (default 5)")
    p.add_argument("--seed", type=int, default=0, help="seed of the fold assignment")
    p.add_argument("--plots", type=Path, default=None, metavar="DIR", help="write the applicable PNG plots here")
    p.add_argument("--aihwkit", type=Path, default=None, metavar="OUT.json",
                   help="also write the aihwkit-style device parameters")
    p.add_argument("--w-max", type=float, default=1.0, help="weight bound the G window maps to (aihwkit export)")
    p.add_argument("--table", type=Path, default=None, metavar="CSV", help="also write the tidy pulse table")
    p.set_defaults(func=run_fit)
    return p


def _err(msg: str) -> int:
    print(f"protonfem fit: error: {msg}", file=sys.stderr)
    return EXIT_BAD_INPUT


def run_fit(args) -> int:
    from protonfem.crossbar.schema import ModelFileError, load_model, save_model

    from .fit import build_model, fit_compact_models
    from .pulse_data import PulseDataError, load_pulse_data

    if args.cv_folds < 2:
        return _err(f"--cv-folds must be at least 2, got {args.cv_folds}")
    if not args.w_max > 0:
        return _err(f"--w-max must be positive, got {args.w_max}")
    if args.output.suffix != ".json":
        return _err(f"--output {args.output}: expected a .json model file")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            table, sweep_rows = load_pulse_data(args.results)
            report = fit_compact_models(table, args.family, folds=args.cv_folds, seed=args.seed,
                                        sweep_rows=sweep_rows)
            model = build_model(report, args.name or args.output.stem, scatter=args.scatter,
                                fit=report.chosen if args.family and len(args.family) == 1 else None)
        except (PulseDataError, ValueError) as e:
            for w in caught:
                print(f"warning: {w.message}", file=sys.stderr)
            return _err(str(e))
    for w in caught:
        print(f"warning: {w.message}", file=sys.stderr)
    try:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        save_model(model, args.output)
        load_model(args.output)  # what the crossbar will read must validate
        if args.table is not None:
            table.to_csv(args.table)
        plots = []
        if args.plots is not None:
            from .compact_plots import write_plots

            plots = write_plots(report, args.plots)
        if args.aihwkit is not None:
            _write_aihwkit(model, args.aihwkit, args.w_max)
    except (OSError, ModelFileError, ValueError) as e:
        return _err(str(e))
    _report(report, model, args, plots)
    return 0


def _report(report, model, args, plots):
    f = report.chosen
    print(f"{len(report.table)} pulses from {len(args.results)} input(s); model comparison "
          f"(CV: {f.cv_scheme or 'none'}; * chosen):")
    print(report.comparison())
    rule = "requested" if args.family and len(args.family) == 1 else \
        "lowest BIC among clean fits, ties within 2 to fewer parameters"
    print(f"\nchosen: {f.name} ({rule})")
    for r in f.parameter_rows():
        std = "fixed" if r["fixed"] else ("n/a" if r["std"] is None else f"+- {r['std']:.3g}")
        print(f"  {r['name']:<13} = {r['value']:<12.5g} {r['unit']:<3} {std}")
    sc = model.scatter.to_dict()
    print(f"  cycle-to-cycle: {json.dumps(sc)}")
    if model.d2d:
        print("  device-to-device: " + ", ".join(f"{k} {kind} {s:.3g}" for k, (kind, s) in model.d2d.items()))
    if model.energy_per_pulse:
        print(f"  energy per pulse: up {model.energy_per_pulse[0]:.4g} J, down {model.energy_per_pulse[1]:.4g} J")
    print(f"model:  {args.output}")
    if args.aihwkit is not None:
        print(f"aihwkit: {args.aihwkit}")
    for p in plots:
        print(f"plot:   {p}")


def _write_aihwkit(model, path: Path, w_max: float) -> None:
    import os

    from protonfem.crossbar.aihwkit_map import to_aihwkit

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(to_aihwkit(model, w_max=w_max), indent=2))
    os.replace(tmp, path)


def add_export_aihwkit_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "export-aihwkit", help="map a device model file onto aihwkit-style device parameters (JSON)",
        description="Write the aihwkit device class and fields (dw_min, w_min/w_max, up_down, gamma_*, *_dtod, "
                    "dw_min_std) of a model file or builtin, weights normalised so [G_min, G_max] -> [-w_max, w_max].")
    p.add_argument("model", help="model JSON file or builtin name")
    p.add_argument("-o", "--output", type=Path, default=None, help="output JSON (default: print to stdout)")
    p.add_argument("--w-max", type=float, default=1.0, help="weight bound the G window maps to (default 1)")
    p.set_defaults(func=run_export_aihwkit)
    return p


def run_export_aihwkit(args) -> int:
    from protonfem.crossbar.aihwkit_map import to_aihwkit
    from protonfem.crossbar.builtin import resolve_model
    from protonfem.crossbar.schema import ModelFileError

    try:
        model = resolve_model(args.model)
        if args.output is None:
            print(json.dumps(to_aihwkit(model, w_max=args.w_max), indent=2))
        else:
            _write_aihwkit(model, args.output, args.w_max)
            print(f"aihwkit parameters of {model.name}: {args.output}")
    except (ModelFileError, ValueError, OSError) as e:
        print(f"protonfem export-aihwkit: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return 0
