"""Training throughput of the crossbar module on digits, 64-256-128-10, batch 10, one thread.

Prints samples/s for the floating-point baseline, analog SGD on the Gokmen-Vlasov constant-step
device and Tiki-Taka v1 on the asymmetric soft-bounds device, their ratio to the targets (10 000
and 5 000 samples/s), and the final test accuracies.

Method: before the measured runs, one short warm-up training (one epoch on 200 samples) per
configuration compiles the numba kernels (or loads them from numba's on-disk cache) so JIT time
does not land in the measured loop; its wall time is printed as "warm-up".  Then:

* ``steady samples/s`` - training loop only (forward, backward and update of every mini-batch),
  summed over all epochs; test-set evaluation excluded (what the targets refer to);
* ``e2e samples/s`` - epochs x training samples / wall time of the whole fit (training plus the
  per-epoch test-set evaluation; network construction and the warm-up excluded, printed apart);
* ``cpu samples/s`` - the training-loop figure over this process's CPU time instead of wall time
  (useful on a shared machine, where wall time also counts other processes' time slices).

    OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 NUMBA_NUM_THREADS=1 .venv/bin/python benchmarks/bench_crossbar_throughput.py
"""
import os

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ.setdefault(_v, "1")  # one thread, before numpy loads its BLAS

import argparse  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

from protonfem.crossbar.datasets import load_digits_dataset  # noqa: E402
from protonfem.crossbar.train import TrainConfig, train  # noqa: E402

TARGETS = {"sgd": 10_000.0, "tiki-taka": 5_000.0}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--lr", type=float, default=0.1)
    a = ap.parse_args()
    ds = load_digits_dataset()
    n = len(ds.X_train)
    print(f"digits: {n} train / {len(ds.X_test)} test, 64-256-128-10 sigmoid, batch 10, "
          f"lr {a.lr}, {a.epochs} epochs, seed {a.seed}, OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}, "
          f"numba {_kernels_version()}")
    rows = []
    for algo, model in (("sgd", "gokmen-vlasov"), ("tiki-taka", "soft-bounds-asym")):
        t0 = time.perf_counter()
        train(TrainConfig(model=model, algorithm=algo, epochs=1, train_limit=200, lr=a.lr, seed=a.seed,
                          baseline=False), dataset=ds)
        warm = time.perf_counter() - t0
        cfg = TrainConfig(model=model, algorithm=algo, epochs=a.epochs, lr=a.lr, seed=a.seed, baseline=algo == "sgd")
        t0 = time.perf_counter()
        res = train(cfg, dataset=ds)
        wall = time.perf_counter() - t0
        tm = res["timing"]
        if algo == "sgd":
            rows.append(("floating point", "-", tm["baseline_samples_per_s"], a.epochs * n / tm["baseline_s"],
                         tm["baseline_samples_per_cpu_s"], None, res["final"]["baseline_test_acc"]))
        rows.append((f"analog {algo}", model, tm["analog_samples_per_s"], a.epochs * n / tm["analog_s"],
                     tm["analog_samples_per_cpu_s"], TARGETS[algo], res["final"]["test_acc"]))
        print(f"  ({algo}: warm-up {warm:.1f} s (JIT compile or cache load), {wall:.1f} s wall for train(), "
              f"{res['final']['pulses_total'] / a.epochs / n:.0f} pulses/sample)")
    print(f"\n{'run':<18}{'device':<18}{'steady /s':>10}{'e2e /s':>9}{'cpu /s':>9}{'target':>8}{'ratio':>7}"
          f"{'test acc %':>11}")
    for name, dev, sps, e2e, cps, tgt, acc in rows:
        print(f"{name:<18}{dev:<18}{sps:>10.0f}{e2e:>9.0f}{cps:>9.0f}{'' if tgt is None else f'{tgt:.0f}':>8}"
              f"{'' if tgt is None else f'{sps / tgt:.2f}':>7}{100 * acc:>11.2f}")
    print(f"numpy {np.__version__}; ratio = steady samples/s / target")


def _kernels_version():
    from protonfem.crossbar import _kernels

    if not _kernels.AVAILABLE:
        return "not available (NumPy path)"
    import numba

    return numba.__version__


if __name__ == "__main__":
    main()
