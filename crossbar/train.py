"""Training loop: an analog network and its floating-point twin (same data order, same initial
weights), per-epoch accuracy / loss / pulses / energy, results JSON and PNG learning curves."""
from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .algorithms import MixedPrecisionTile, TransferTile
from .builtin import resolve_model
from .datasets import Dataset, load_dataset
from .energy import ReadEnergyParams, reset_read_stats, tile_read_energy, update_energy
from .network import MLP, init_weights
from .schema import DeviceModel
from .tile import AnalogTile, FloatingPointTile, IOParams, UpdateParams

ALGORITHMS = ("sgd", "tiki-taka", "ttv2", "mixed-precision")


@dataclass
class TrainConfig:
    model: str = "gokmen-vlasov"
    dataset: str = "digits"
    algorithm: str = "sgd"
    hidden: tuple = (256, 128)
    activation: str = "sigmoid"
    epochs: int = 30
    batch_size: int = 10
    lr: float = 0.1
    seed: int = 0
    io: str = "default"  # "default" (aihwkit IOParameters) or "ideal" (exact MVMs)
    out_noise: float | None = None  # overrides the IO default
    w_noise: float = 0.0  # read noise on every weight per MVM (std, weight units)
    pulse_type: str = "stochastic"
    desired_bl: int = 31
    bl_management: bool = True
    update_management: bool = True
    mapping: str = "reference"
    w_max: float = 1.0
    transfer_every: int = 1  # samples between TT reads of one row of A
    transfer_lr: float = 0.1
    tt_gamma: float = 0.0
    tt_reference: str = "symmetry"  # A's reference: "symmetry" | "calibrate" | "mid"
    mp_transfer_every: int = 1  # mini-batches between mixed-precision transfers
    baseline: bool = True
    train_limit: int | None = None  # use only the first N training samples (quick runs)
    test_limit: int | None = None
    read_energy: ReadEnergyParams = field(default_factory=ReadEnergyParams)

    def to_dict(self):
        d = asdict(self)
        d["hidden"] = list(self.hidden)
        return d


def _seeds(seed: int):
    # independent streams: init weights, data order, devices+pulses+IO noise
    ss = np.random.SeedSequence(int(seed))
    return ss.spawn(3)


def _io(cfg: TrainConfig) -> IOParams:
    if cfg.io == "ideal":
        return IOParams.ideal()
    if cfg.io != "default":
        raise ValueError(f"io: expected 'default' or 'ideal', got {cfg.io!r}")
    io = IOParams(w_noise=float(cfg.w_noise))
    if cfg.out_noise is not None:
        io.out_noise = float(cfg.out_noise)
    return io


def build_analog_network(cfg: TrainConfig, model: DeviceModel, sizes, W0s, rng) -> MLP:
    if cfg.algorithm not in ALGORITHMS:
        raise ValueError(f"algorithm: expected one of {ALGORITHMS}, got {cfg.algorithm!r}")
    up = UpdateParams(pulse_type=cfg.pulse_type, desired_bl=cfg.desired_bl, bl_management=cfg.bl_management,
                      update_management=cfg.update_management)

    def make_tile(rows, cols, reference="mid"):
        return AnalogTile(model, rows, cols, rng, io_fwd=_io(cfg), io_bwd=_io(cfg), update=up,
                          mapping=cfg.mapping, reference=reference, w_max=cfg.w_max)

    layers = []
    for W0 in W0s:
        rows, cols = W0.shape
        if cfg.algorithm == "sgd":
            t = make_tile(rows, cols)
            t.program(W0)
        elif cfg.algorithm in ("tiki-taka", "ttv2"):
            t = TransferTile(make_tile, rows, cols, W0, transfer_every=cfg.transfer_every,
                             transfer_lr=cfg.transfer_lr, gamma=cfg.tt_gamma, buffered=cfg.algorithm == "ttv2",
                             fast_reference=cfg.tt_reference)
        else:
            t = MixedPrecisionTile(make_tile, rows, cols, W0, transfer_every=cfg.mp_transfer_every)
        layers.append(t)
    return MLP(layers, cfg.activation)


def _analog_tiles(net):
    out = []
    for L in net.layers:
        out.extend(L.tiles())
    return out


def fit(net: MLP, ds: Dataset, cfg: TrainConfig, data_seed, label: str, progress=False, read_params=None):
    """Train `net` for cfg.epochs; returns a list of per-epoch metric dicts."""
    rng = np.random.default_rng(data_seed)
    Xtr, ytr, Xte, yte = ds.X_train, ds.y_train, ds.X_test, ds.y_test
    if cfg.train_limit:
        Xtr, ytr = Xtr[:cfg.train_limit], ytr[:cfg.train_limit]
    if cfg.test_limit:
        Xte, yte = Xte[:cfg.test_limit], yte[:cfg.test_limit]
    n, bs = len(Xtr), cfg.batch_size
    nb = (n + bs - 1) // bs
    tiles = _analog_tiles(net)
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=cfg.epochs * nb, desc=label, unit="batch", leave=False, dynamic_ncols=True)
    hist = []
    rp = read_params or cfg.read_energy
    for ep in range(cfg.epochs):
        for t in tiles:
            reset_read_stats(t)
        p0 = [t.pulses for t in tiles]
        t0 = time.perf_counter()
        c0 = time.process_time()
        perm = rng.permutation(n)
        loss = 0.0
        correct = 0
        for i in range(0, n, bs):
            idx = perm[i:i + bs]
            l, c = net.train_batch(Xtr[idx], ytr[idx], cfg.lr)
            loss += l
            correct += c
            if bar is not None:
                bar.update(1)
        dt = time.perf_counter() - t0
        dc = time.process_time() - c0
        test_loss, test_acc = net.evaluate(Xte, yte)
        m = {"epoch": ep + 1, "train_loss": loss / n, "train_acc": correct / n, "test_loss": float(test_loss),
             "test_acc": float(test_acc)}
        if tiles:
            pu = sum(t.pulses[0] - p[0] for t, p in zip(tiles, p0))
            pdn = sum(t.pulses[1] - p[1] for t, p in zip(tiles, p0))
            ue = [update_energy(t, t.pulses[0] - p[0], t.pulses[1] - p[1]) for t, p in zip(tiles, p0)]
            m.update({"pulses_up": int(pu), "pulses_down": int(pdn),
                      "update_energy_J": None if any(e is None for e in ue) else float(sum(ue)),
                      "read_energy_J": float(sum(tile_read_energy(t, rp) for t in tiles))})
        m["_seconds"] = dt
        m["_cpu_seconds"] = dc
        hist.append(m)
        if bar is not None:
            bar.set_postfix(epoch=ep + 1, test_acc=f"{test_acc:.4f}", loss=f"{loss / n:.4f}")
    if bar is not None:
        bar.close()
    return hist


def train(cfg: TrainConfig, progress=False, model: DeviceModel | None = None, dataset: Dataset | None = None):
    """Run the analog training and (cfg.baseline) the floating-point baseline; returns results."""
    model = model or resolve_model(cfg.model)
    ds = dataset or load_dataset(cfg.dataset)
    sizes = [ds.n_features, *cfg.hidden, ds.n_classes]
    s_init, s_data, s_dev = _seeds(cfg.seed)
    W0s = init_weights(sizes, np.random.default_rng(s_init))
    rng_dev = np.random.default_rng(s_dev)
    net = build_analog_network(cfg, model, sizes, [W.copy() for W in W0s], rng_dev)
    t0 = time.perf_counter()
    hist = fit(net, ds, cfg, s_data, f"{model.name}/{cfg.algorithm}", progress)
    t_an = time.perf_counter() - t0
    res = {"config": cfg.to_dict(), "sizes": sizes, "model": model.to_dict(),
           "pulse_energy": {"per_pulse_J": model.pulse_energy()[0], "source": model.pulse_energy()[1]},
           "analog": {"epochs": _strip(hist)}, "timing": {"analog_s": t_an}}
    n_train = len(ds.X_train[:cfg.train_limit] if cfg.train_limit else ds.X_train)
    res["timing"]["analog_samples_per_s"] = cfg.epochs * n_train / max(sum(h["_seconds"] for h in hist), 1e-12)
    res["timing"]["analog_samples_per_cpu_s"] = cfg.epochs * n_train / max(sum(h["_cpu_seconds"] for h in hist), 1e-12)
    if cfg.baseline:
        fp = MLP([FloatingPointTile(W.copy()) for W in W0s], cfg.activation)
        t0 = time.perf_counter()
        bh = fit(fp, ds, cfg, s_data, "floating point", progress)
        res["baseline"] = {"epochs": _strip(bh)}
        res["timing"]["baseline_s"] = time.perf_counter() - t0
        res["timing"]["baseline_samples_per_s"] = cfg.epochs * n_train / max(sum(h["_seconds"] for h in bh), 1e-12)
        res["timing"]["baseline_samples_per_cpu_s"] = cfg.epochs * n_train / max(sum(h["_cpu_seconds"] for h in bh), 1e-12)
    res["final"] = _final(res)
    res["environment"] = {"python": platform.python_version(), "numpy": np.__version__,
                          "compiled_kernels": _kernels_info()}
    return res


def _kernels_info():
    from . import _kernels

    if not _kernels.AVAILABLE:
        return None
    import numba

    return f"numba {numba.__version__}"


def _strip(hist):
    return [{k: v for k, v in h.items() if not k.startswith("_")} for h in hist]


def _final(res):
    a = res["analog"]["epochs"][-1]
    f = {"test_acc": a["test_acc"], "train_loss": a["train_loss"]}
    ep = res["analog"]["epochs"]
    f["pulses_total"] = sum(e.get("pulses_up", 0) + e.get("pulses_down", 0) for e in ep)
    ue = [e.get("update_energy_J") for e in ep]
    f["update_energy_per_epoch_J"] = None if any(e is None for e in ue) else float(np.mean(ue))
    f["read_energy_per_epoch_J"] = float(np.mean([e.get("read_energy_J", 0.0) for e in ep]))
    if "baseline" in res:
        f["baseline_test_acc"] = res["baseline"]["epochs"][-1]["test_acc"]
        f["gap_points"] = 100.0 * (f["baseline_test_acc"] - f["test_acc"])
    return f


def write_results(res: dict, outdir: str | os.PathLike) -> dict:
    """results.json (atomic) and learning_curves.png in outdir; returns the paths."""
    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    js = out / "results.json"
    tmp = js.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(res, indent=2))
    os.replace(tmp, js)
    png = out / "learning_curves.png"
    plot_curves(res, png)
    return {"json": str(js), "png": str(png)}


def plot_curves(res: dict, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 3, figsize=(13, 3.8))
    cfg = res["config"]
    series = [("analog", f"{res['model']['name']} / {cfg['algorithm']}", "C0")]
    if "baseline" in res:
        series.append(("baseline", "floating point", "k"))
    for key, lab, col in series:
        ep = res[key]["epochs"]
        x = [e["epoch"] for e in ep]
        ax[0].plot(x, [100 * e["test_acc"] for e in ep], color=col, label=lab)
        ax[1].plot(x, [e["train_loss"] for e in ep], color=col, label=lab)
    ep = res["analog"]["epochs"]
    x = [e["epoch"] for e in ep]
    if ep and ep[0].get("update_energy_J") is not None:
        ax[2].plot(x, [e["update_energy_J"] for e in ep], "C1", label="update (pulses)")
    if ep and "read_energy_J" in ep[0]:
        ax[2].plot(x, [e["read_energy_J"] for e in ep], "C2", label="read (estimate)")
    ax[0].set(xlabel="epoch", ylabel="test accuracy [%]", title=f"{cfg['dataset']}")
    ax[1].set(xlabel="epoch", ylabel="train NLL", yscale="log")
    ax[2].set(xlabel="epoch", ylabel="energy per epoch [J]", yscale="log", title="array energy")
    for a in ax:
        a.grid(alpha=0.3)
        a.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
