"""`protonfem train`: train an MLP on simulated crossbars of a compact device model.

The lead wires :func:`add_train_parser` / :func:`run_train` into the `protonfem` console script.
Errors in inputs (model files, datasets, options) print one line and return a non-zero code."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .builtin import BUILTINS


def _hidden(s: str):
    try:
        v = tuple(int(t) for t in s.split(",") if t.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated layer sizes such as 256,128, got {s!r}") from None
    if not v or min(v) < 1:
        raise argparse.ArgumentTypeError(f"expected positive layer sizes such as 256,128, got {s!r}")
    return v


def add_train_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "train", help="train a network on simulated crossbars of a compact device model",
        description="Train an MLP on analog crossbar tiles driven by a compact device model, beside a "
                    "floating-point baseline with identical data order and initial weights.")
    p.add_argument("--model", required=True,
                   help=f"device model: a JSON model file (models/X.json) or a builtin ({', '.join(BUILTINS)})")
    p.add_argument("--dataset", default="digits", help="digits | mnist:PATH | fashion:PATH (folder of IDX files)")
    p.add_argument("--algorithm", default="sgd", choices=["sgd", "tiki-taka", "ttv2", "mixed-precision"])
    p.add_argument("--hidden", type=_hidden, default=(256, 128), help="hidden layer sizes (default 256,128)")
    p.add_argument("--activation", default="sigmoid", choices=["sigmoid", "relu", "tanh"])
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=10)
    p.add_argument("--lr", type=float, default=0.1, help="learning rate on the batch-mean loss (default 0.1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--io", default="default", choices=["default", "ideal"],
                   help="peripheral model: aihwkit-like DAC/ADC/noise/bounds (default) or exact MVMs")
    p.add_argument("--out-noise", type=float, default=None, help="override the additive output noise (std)")
    p.add_argument("--w-noise", type=float, default=0.0, help="read noise on G per MVM (std in weight units)")
    p.add_argument("--pulse-type", default="stochastic", choices=["stochastic", "deterministic"])
    p.add_argument("--bl", type=int, default=31, help="maximal pulse-train length (default 31)")
    p.add_argument("--no-bl-management", action="store_true", help="always use the full train length")
    p.add_argument("--no-update-management", action="store_true", help="do not balance row/column probabilities")
    p.add_argument("--mapping", default="reference", choices=["reference", "differential"])
    p.add_argument("--transfer-every", type=int, default=1, help="Tiki-Taka: samples per row transfer")
    p.add_argument("--transfer-lr", type=float, default=0.1,
                   help="Tiki-Taka/TTv2: C (or H) receives transfer_lr x the read of A (default 0.1)")
    p.add_argument("--tt-gamma", type=float, default=0.0, help="Tiki-Taka: weight of A in W = gamma A + C")
    p.add_argument("--tt-reference", default="symmetry", choices=["symmetry", "calibrate", "mid"],
                   help="Tiki-Taka: reference of the fast array A (default: each device's symmetry point)")
    p.add_argument("--mp-transfer-every", type=int, default=1, help="mixed precision: batches per transfer")
    p.add_argument("--train-limit", type=int, default=None, help="use only the first N training samples")
    p.add_argument("--no-baseline", action="store_true", help="skip the floating-point baseline")
    p.add_argument("--output", default=None,
                   help="output folder (default results/train/<model>-<dataset>-<algorithm>-seed<N>/)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run_train)


def run_train(args) -> int:
    from .datasets import DatasetError, load_dataset
    from .schema import ModelFileError
    from .train import TrainConfig, train, write_results
    from .builtin import resolve_model

    try:
        if args.epochs < 1 or args.batch_size < 1 or args.bl < 1:
            raise ValueError("--epochs, --batch-size and --bl must be positive integers")
        if not args.lr > 0:
            raise ValueError(f"--lr must be positive, got {args.lr}")
        model = resolve_model(args.model)
        ds = load_dataset(args.dataset)
        cfg = TrainConfig(model=args.model, dataset=args.dataset, algorithm=args.algorithm, hidden=args.hidden,
                          activation=args.activation, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                          seed=args.seed, io=args.io, out_noise=args.out_noise, w_noise=args.w_noise,
                          pulse_type=args.pulse_type,
                          desired_bl=args.bl, bl_management=not args.no_bl_management,
                          update_management=not args.no_update_management, mapping=args.mapping,
                          transfer_every=args.transfer_every, transfer_lr=args.transfer_lr, tt_gamma=args.tt_gamma,
                          tt_reference=args.tt_reference,
                          mp_transfer_every=args.mp_transfer_every, baseline=not args.no_baseline,
                          train_limit=args.train_limit)
        res = train(cfg, progress=not args.no_progress, model=model, dataset=ds)
        ds_tag = args.dataset.split(":")[0]
        out = args.output or str(Path("results") / "train" / f"{model.name}-{ds_tag}-{args.algorithm}-seed{args.seed}")
        paths = write_results(res, out)
    except (ModelFileError, DatasetError, ValueError, OSError) as e:
        print(f"protonfem train: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("protonfem train: interrupted", file=sys.stderr)
        return 130
    _report(res, paths)
    return 0


def _report(res, paths):
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:  # pragma: no cover - rich is a dependency
        Console = None
    rows = []
    base = res.get("baseline", {}).get("epochs", [])
    for k, e in enumerate(res["analog"]["epochs"]):
        b = base[k]["test_acc"] if k < len(base) else None
        ue = e.get("update_energy_J")
        rows.append((str(e["epoch"]), f"{e['train_loss']:.4f}", f"{100 * e['test_acc']:.2f}",
                     "-" if b is None else f"{100 * b:.2f}", f"{e.get('pulses_up', 0) + e.get('pulses_down', 0):.3g}",
                     "n/a" if ue is None else f"{ue:.3g}", f"{e.get('read_energy_J', 0.0):.3g}"))
    head = ("epoch", "train NLL", "test acc %", "FP acc %", "pulses", "update E [J]", "read E [J]")
    if Console is not None:
        t = Table(*head, title=f"{res['model']['name']} / {res['config']['algorithm']} on {res['config']['dataset']}")
        for r in rows:
            t.add_row(*r)
        Console().print(t)
    else:
        print("\t".join(head))
        for r in rows:
            print("\t".join(r))
    f = res["final"]
    gap = f.get("gap_points")
    print(f"final test accuracy {100 * f['test_acc']:.2f} %"
          + (f" (floating point {100 * f['baseline_test_acc']:.2f} %, gap {gap:+.2f} points)" if gap is not None else ""))
    print(f"results: {paths['json']}\ncurves:  {paths['png']}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="protonfem")
    sub = parser.add_subparsers(dest="command", required=True)
    add_train_parser(sub)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
