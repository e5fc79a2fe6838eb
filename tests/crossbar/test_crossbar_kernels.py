"""The compiled (numba) paths against the NumPy reference paths they replace."""
import numpy as np
import pytest

from protonfem.crossbar import _kernels
from protonfem.crossbar.builtin import builtin_model
from protonfem.crossbar.datasets import load_digits_dataset
from protonfem.crossbar.tile import AnalogTile, IOParams, UpdateParams, mvm
from protonfem.crossbar.train import TrainConfig, train

pytestmark = [pytest.mark.serial,
              pytest.mark.skipif(not _kernels.AVAILABLE, reason="numba not installed")]


@pytest.mark.parametrize("io", [IOParams(out_noise=0.0), IOParams(out_noise=0.0, noise_management="none"),
                                IOParams(out_noise=0.0, bound_management="none")])
def test_compiled_mvm_equals_numpy_without_noise(io):
    """Noise-free periphery (DAC, ADC, noise and iterative bound management) is deterministic:
    the compiled MVM must give the NumPy result and the same read statistics."""
    rng = np.random.default_rng(0)
    W = rng.uniform(-0.6, 0.6, (40, 9))
    x = rng.uniform(-1, 1, (30, 40))
    x[3] = 0.0
    x[:5] *= 4.0  # some saturate the ADC and are re-read
    st = _kernels.seed_state(rng)
    for Wm in (W, np.ascontiguousarray(W.T).T):  # C and F layouts (forward / backward)
        sa = {"reads": 0, "x2": np.zeros(40)}
        sb = {"reads": 0, "x2": np.zeros(40)}
        ya = mvm(x, Wm, io, rng, sa)
        yb = mvm(x, Wm, io, rng, sb, kst=st)
        assert np.allclose(ya, yb, rtol=0, atol=1e-12)
        assert sa["reads"] == sb["reads"] and np.allclose(sa["x2"], sb["x2"])


def test_compiled_mvm_noise_statistics():
    rng = np.random.default_rng(1)
    W = rng.uniform(-0.3, 0.3, (20, 7))
    x = rng.uniform(-1, 1, (4000, 20))
    st = _kernels.seed_state(rng)
    r = mvm(x, W, IOParams(out_noise=0.06), rng, kst=st) - x @ W
    # output noise 0.06 plus ADC quantisation (uniform, step 12/255) in weight units x abs-max
    assert 0.045 < r.std() < 0.09
    assert abs(r.mean()) < 0.005


@pytest.mark.parametrize("model", ["gokmen-vlasov", "soft-bounds-asym"])
def test_compiled_update_matches_numpy_path_in_distribution(model):
    """Same trains, same device law: mean and spread of the weight change over many repeats agree
    between the compiled pulse-by-pulse kernel and the NumPy closed-form path."""
    m = builtin_model(model)
    rows, cols, b, lr = 9, 6, 5, 0.1
    rng = np.random.default_rng(5)
    x = rng.uniform(-1, 1, (b, rows))
    d = rng.uniform(-0.05, 0.05, (b, cols))
    res = []
    for compiled in (True, False):
        t = AnalogTile(m, rows, cols, np.random.default_rng(2), io_fwd=IOParams.ideal())
        assert t._kupdate
        t._kupdate = compiled
        W0 = np.random.default_rng(3).uniform(-0.5, 0.5, (rows, cols))
        acc = []
        for _ in range(3000):
            t.program(W0)
            t.update(x, d, lr)
            acc.append(t.W - W0)
        res.append(np.array(acc))
    a, c = res
    se = np.sqrt(a.var(0) / len(a) + c.var(0) / len(c))
    assert np.abs((a.mean(0) - c.mean(0)) / se).max() < 5.0
    assert np.allclose(a.std(0), c.std(0), rtol=0.15, atol=1e-3)


def test_numpy_fallback_trains(monkeypatch):
    """Without numba (PROTONFEM_NO_NUMBA or no compiled kernel for the family) the NumPy path runs."""
    import protonfem.crossbar.tile as tile_mod

    monkeypatch.setattr(tile_mod._kernels, "AVAILABLE", False)
    monkeypatch.setattr(tile_mod._kernels, "supported", lambda arr: False)
    ds = load_digits_dataset()
    res = train(TrainConfig(model="gokmen-vlasov", epochs=3, lr=0.5, baseline=False),
                dataset=ds)
    assert res["analog"]["epochs"][-1]["test_acc"] > 0.5  # as test_algorithms_learn
    assert res["analog"]["epochs"][-1]["pulses_up"] > 0


def test_compiled_update_counts_every_coincidence():
    """Deterministic trains, noise-free constant step: each coincidence moves the device by exactly
    one step, sample after sample (the kernel's counts equal the trains' coincidences)."""
    NS = 1e-9
    from protonfem.crossbar.schema import model_from_dict

    m = model_from_dict({"schema_version": "1.0", "name": "t", "family": "constant_step",
                         "parameters": {"G_min": {"value": 20 * NS, "unit": "S"}, "G_max": {"value": 100 * NS, "unit": "S"},
                                        "dG": {"value": 0.8 * NS, "unit": "S"}, "up_down": {"value": 0.0, "unit": "1"}},
                         "cycle_to_cycle": {"model": "gaussian", "sigma_rel": 0.0}}, "t.json")
    rng = np.random.default_rng(0)
    t = AnalogTile(m, 7, 4, rng, update=UpdateParams(pulse_type="deterministic"), io_fwd=IOParams.ideal())
    assert t._kupdate
    x = rng.uniform(-1, 1, (3, 7))
    d = rng.uniform(-1, 1, (3, 4))
    t.program(np.zeros((7, 4)))
    _, _, Rs, Cs = t._trains(x, d, 0.2)
    net = np.einsum("sti,stj->ij", Rs, Cs)
    t.update(x, d, 0.2)
    assert np.allclose(t.W, net * t.dw_min, atol=1e-12)
    assert sum(t.pulses) == int(np.abs(np.einsum("sti,stj->sij", Rs, Cs)).sum())


@pytest.mark.parametrize("family, extra", [
    ("constant_step", {}), ("soft_bounds", {}),
    ("linear_step", {"gamma_up": 0.4, "gamma_down": 0.8}),
    ("exp_step", {"A_up": 0.2, "A_down": 0.3, "gamma_up": 1.5, "gamma_down": 2.0}),
    ("pow_step", {"gamma": 1.7})])
def test_compiled_laws_equal_family_mean_step(family, extra):
    """Noise-free devices, deterministic trains: the kernel's state after the update equals applying
    each sample's coincidences one pulse at a time with the family's own mean_step."""
    NS = 1e-9
    from protonfem.crossbar.schema import model_from_dict

    params = {"G_min": {"value": 20 * NS, "unit": "S"}, "G_max": {"value": 100 * NS, "unit": "S"},
              "dG": {"value": 1.2 * NS, "unit": "S"}, "up_down": {"value": 0.1, "unit": "1"}}
    params.update({k: {"value": v, "unit": "1"} for k, v in extra.items()})
    m = model_from_dict({"schema_version": "1.0", "name": "t", "family": family, "parameters": params,
                         "device_to_device": {"dG": {"rel": 0.2}},
                         "cycle_to_cycle": {"model": "gaussian", "sigma_rel": 0.0}}, "t.json")
    rng = np.random.default_rng(0)
    rows, cols = 6, 5
    tile = AnalogTile(m, rows, cols, rng, update=UpdateParams(pulse_type="deterministic"))
    assert tile._kupdate
    tile.program(rng.uniform(-0.8, 0.8, (rows, cols)))
    x = rng.uniform(-1, 1, (3, rows))
    d = rng.uniform(-1, 1, (3, cols))
    arr = tile.arrays[0]
    G = arr.G.reshape(rows, cols).copy()
    _, _, Rs, Cs = tile._trains(x, d, 0.4)
    counts = np.einsum("sti,stj->sij", Rs, Cs)
    tile.update(x, d, 0.4)
    p = {k: v.reshape(rows, cols) for k, v in arr.params().items()}
    for s in range(3):
        c = counts[s]
        for _ in range(int(np.abs(c).max())):
            on = np.abs(c) > 0
            G = np.where(on, np.clip(G + m.family.mean_step(G, np.sign(c), p), p["G_min"], p["G_max"]), G)
            c = c - np.sign(c)
    assert np.allclose(arr.G.reshape(rows, cols), G, rtol=1e-12, atol=1e-21)
    assert np.allclose(tile.W, (G - arr.G_ref.reshape(rows, cols)) / arr.G_unit, atol=1e-9)
