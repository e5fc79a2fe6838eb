"""Unit tests of the crossbar module: families, model files, devices, tiles, datasets, CLI."""
import gzip
import json

import numpy as np
import pytest

from protonfem.crossbar import families as F
from protonfem.crossbar.builtin import BUILTINS, builtin_model, resolve_model
from protonfem.crossbar.datasets import DatasetError, load_idx_dataset, read_idx
from protonfem.crossbar.devices import DeviceArray, calibrate_symmetry_point
from protonfem.crossbar.schema import ModelFileError, load_model, model_from_dict, save_model
from protonfem.crossbar.tile import AnalogTile, IOParams, UpdateParams, mvm

pytestmark = pytest.mark.serial

NS = 1e-9
P0 = {"G_min": 20 * NS, "G_max": 100 * NS, "dG": 0.4 * NS, "up_down": 0.0}


def _cs_model(sigma=0.3, d2d=None, up_down=0.0, dG=0.4 * NS, family="constant_step", extra=None, c2c=None):
    params = {"G_min": {"value": 20 * NS, "unit": "S"}, "G_max": {"value": 100 * NS, "unit": "S"},
              "dG": {"value": dG, "unit": "S"}, "up_down": {"value": up_down, "unit": "1"}}
    params.update(extra or {})
    return model_from_dict({"schema_version": "1.0", "name": "t", "family": family, "parameters": params,
                            "device_to_device": d2d or {},
                            "cycle_to_cycle": c2c or {"model": "gaussian", "sigma_rel": sigma}}, "test.json")


# -- families ---------------------------------------------------------------------------------
def test_family_laws_vectorised_and_bounded():
    G = np.linspace(20, 100, 9) * NS
    d = np.where(np.arange(9) % 2 == 0, 1.0, -1.0)
    sb = F.SoftBounds().mean_step(G, d, P0)
    assert sb.shape == G.shape
    # soft bounds: no step beyond the bound it moves toward, full step dG at mid-range
    assert F.SoftBounds().mean_step(np.array([100 * NS]), 1.0, P0)[0] == 0.0
    assert F.SoftBounds().mean_step(np.array([20 * NS]), -1.0, P0)[0] == 0.0
    assert np.isclose(F.SoftBounds().mean_step(np.array([60 * NS]), 1.0, P0)[0], 0.4 * NS)
    # power step with gamma = 1 is soft bounds
    ps = F.PowStep().mean_step(G, d, dict(P0, gamma=1.0))
    assert np.allclose(ps, sb)
    # linear step with gamma = 1 is soft bounds too
    ls = F.LinearStep().mean_step(G, d, dict(P0, gamma_up=1.0, gamma_down=1.0))
    assert np.allclose(ls, sb)
    cs = F.ConstantStep().mean_step(G, d, dict(P0, up_down=0.1))
    assert np.allclose(cs[d > 0], 0.44 * NS) and np.allclose(cs[d < 0], -0.36 * NS)
    ex = F.ExpStep().mean_step(G, d, dict(P0, A_up=0.1, A_down=0.1, gamma_up=2.0, gamma_down=2.0))
    assert np.all(ex[d > 0] >= 0) and np.all(ex[d < 0] <= 0)


def test_symmetry_point_soft_bounds_matches_formula():
    ud = np.array([-0.2, 0.0, 0.3])
    sp = F.symmetry_point(F.SoftBounds(), dict(P0, up_down=ud))
    z = 2 * (sp - 20 * NS) / (80 * NS) - 1
    assert np.allclose(z, ud, atol=1e-9)  # dG(1+ud)(1-z) = dG(1-ud)(1+z)  ->  z = ud
    assert np.isnan(F.symmetry_point(F.ConstantStep(), dict(P0, up_down=0.1)))


def test_physics_family_charge_and_state_dependence():
    p = {"G_min": 10 * NS, "G_max": 1000 * NS, "Q_max": 1e-12, "q0": 1e-16, "t0": 1e-3, "beta": 0.5,
         "V0": 0.5, "V_up": 2.0, "V_down": 2.0, "t_pulse": 1e-3, "V_ocp": 0.05, "m": 1.0}
    fam = F.Physics()
    G = np.array([100, 500, 900]) * NS
    up = fam.mean_step(G, 1.0, p)
    dn = fam.mean_step(G, -1.0, p)
    assert np.all(up > 0) and np.all(dn < 0)
    # the open-circuit potential opposes filling: the up step shrinks as the channel fills
    assert up[0] > up[1] > up[2]
    assert abs(dn[0]) < abs(dn[1]) < abs(dn[2])
    q = fam.charge(np.array([505 * NS]), 1.0, p)[0]
    assert np.isclose(q, 1e-16 * np.sinh(4.0), rtol=1e-3)  # theta = 0.5: no OCP term
    eu, ed = fam.energy_per_pulse(p)
    assert eu > 0 and ed > 0


def test_physics_model_file_with_shot_noise_trains_devices(tmp_path):
    q = lambda v, u: {"value": v, "unit": u}  # noqa: E731
    d = {"schema_version": "1.0", "name": "proton-demo", "family": "physics",
         "parameters": {"G_min": q(10 * NS, "S"), "G_max": q(1000 * NS, "S"), "Q_max": q(1e-13, "C"),
                        "q0": q(2e-17, "C"), "t0": q(1e-3, "s"), "beta": q(0.5, "1"), "V0": q(0.5, "V"),
                        "V_up": q(1.5, "V"), "V_down": q(1.5, "V"), "t_pulse": q(1e-3, "s"), "V_ocp": q(0.05, "V")},
         "cycle_to_cycle": {"model": "shot"},
         "provenance": {"source": "unit test", "cases": [{"case": "demo", "sha256": "0" * 64}]}}
    p = tmp_path / "proton.json"
    p.write_text(json.dumps(d))
    m = load_model(p)
    (eu, ed), src = m.pulse_energy()
    assert eu > 0 and "gate charge" in src
    arr = DeviceArray(m, 4000, np.random.default_rng(0))
    g0 = arr.G.copy()
    arr.apply_pulses(np.arange(4000), np.full(4000, 2), np.ones(4000))
    dG = arr.G - g0
    mu = m.family.mean_step(g0, 1.0, m.params)
    assert np.all(dG > 0)
    # two pulses of ~hundreds of protons each: relative scatter ~ 1/sqrt(2 N)
    N = m.family.quanta(g0[:1], 1.0, m.params)[0]
    assert 50 < N < 1e5
    assert np.isclose(np.std(dG / (2 * mu)), 1 / np.sqrt(2 * N), rtol=0.15)


def test_shot_noise_statistics():
    rng = np.random.default_rng(1)
    sc = F.ShotScatter(dG_per_proton=1e-12)
    mu = np.full(200000, 1e-10)  # 100 protons per pulse
    x = sc.sample(mu, rng)
    assert np.isclose(x.mean(), 1e-10, rtol=0.01)
    assert np.isclose(x.std(), 1e-10 / 10, rtol=0.02)  # Poisson: relative std 1/sqrt(N)


def test_tabulated_family_interpolates_table():
    G = [20 * NS, 60 * NS, 100 * NS]
    tab = {"up": {"G": {"value": G, "unit": "S"}, "dG_mean": {"value": [1e-9, 0.5e-9, 0.0], "unit": "S"},
                  "dG_std": {"value": [1e-10, 1e-10, 0.0], "unit": "S"}},
           "down": {"G": {"value": G, "unit": "S"}, "dG_mean": {"value": [0.0, -0.5e-9, -1e-9], "unit": "S"},
                    "dG_std": {"value": [0.0, 1e-10, 1e-10], "unit": "S"}}}
    m = model_from_dict({"schema_version": "1.0", "family": "tabulated",
                         "parameters": {"G_min": {"value": 20 * NS, "unit": "S"}, "G_max": {"value": 100 * NS, "unit": "S"}},
                         "table": tab}, "tab.json")
    mu = m.family.mean_step(np.array([40 * NS, 80 * NS]), np.array([1.0, -1.0]), m.params)
    assert np.allclose(mu, [0.75e-9, -0.75e-9])
    arr = DeviceArray(m, 1000, np.random.default_rng(0))
    g0 = arr.G.copy()
    arr.apply_pulses(np.arange(1000), np.full(1000, 3), np.ones(1000))
    assert np.all(arr.G > g0)


# -- model files ------------------------------------------------------------------------------
def test_model_roundtrip(tmp_path):
    for name in BUILTINS:
        m = builtin_model(name)
        save_model(m, tmp_path / f"{name}.json")
        m2 = load_model(tmp_path / f"{name}.json")
        assert m2.family.name == m.family.name and m2.params == m.params and m2.d2d == m.d2d


@pytest.mark.parametrize("mutate, key", [
    (lambda d: d.pop("schema_version"), "schema_version"),
    (lambda d: d.update(schema_version="2.0"), "schema_version"),
    (lambda d: d.update(family="quantum_leap"), "family"),
    (lambda d: d["parameters"]["dG"].update(unit="nS"), "parameters.dG.unit"),
    (lambda d: d["parameters"].pop("dG"), "parameters.dG"),
    (lambda d: d["parameters"]["dG"].update(value="big"), "parameters.dG.value"),
    (lambda d: d["parameters"]["dG"].update(value=-1.0), "parameters.dG.value"),
    (lambda d: d["parameters"].update(bogus={"value": 1, "unit": "1"}), "parameters.bogus"),
    (lambda d: d.update(device_to_device={"dG": {"relative": 0.3}}), "device_to_device.dG"),
    (lambda d: d.update(cycle_to_cycle={"model": "lorentz"}), "cycle_to_cycle.model"),
    (lambda d: d.update(energy_per_pulse={"value": 1e-15, "unit": "eV"}), "energy_per_pulse.unit"),
])
def test_malformed_model_file_names_file_and_key(tmp_path, mutate, key):
    d = BUILTINS["gokmen-vlasov"]()
    mutate(d)
    p = tmp_path / "bad_model.json"
    p.write_text(json.dumps(d))
    with pytest.raises(ModelFileError) as e:
        load_model(p)
    msg = str(e.value)
    assert "bad_model.json" in msg and f"'{key}'" in msg and "expected" in msg and "\n" not in msg


def test_model_file_not_json_or_missing(tmp_path):
    p = tmp_path / "m.json"
    p.write_text("{not json")
    with pytest.raises(ModelFileError, match="m.json: not valid JSON"):
        load_model(p)
    with pytest.raises(ModelFileError, match="file not found"):
        load_model(tmp_path / "nope.json")
    with pytest.raises(ModelFileError, match="not a builtin"):
        resolve_model("no-such-device")


# -- devices and tiles ------------------------------------------------------------------------
def test_device_to_device_variation_and_programming():
    m = builtin_model("gokmen-vlasov")
    arr = DeviceArray(m, 20000, np.random.default_rng(0))
    dG = arr.params()["dG"]
    assert np.isclose(dG.std() / dG.mean(), 0.3, atol=0.02)
    arr.program(np.full(20000, 0.5))
    # bounds vary too (30 % of the half range): a device whose G_max lies below the target saturates
    reach = (arr.Gmax - arr.G_ref) / arr.G_unit
    assert np.allclose(arr.w, np.minimum(0.5, reach))
    assert 0.01 < np.mean(reach < 0.5) < 0.1


@pytest.mark.parametrize("pulse_type", ["stochastic", "deterministic"])
def test_mean_pulsed_update_is_unbiased(pulse_type):
    """Mean of the pulsed update over many repetitions equals lr x^T d within its standard error."""
    rng = np.random.default_rng(3)
    m = _cs_model(sigma=0.3, dG=0.02 * 40 * NS)  # dw_min = 0.02
    rows, cols, b, lr = 12, 8, 4, 0.05
    x = rng.uniform(-1, 1, (b, rows))
    d = rng.uniform(-1, 1, (b, cols))
    target = lr * x.T @ d
    reps = 4000 if pulse_type == "stochastic" else 1
    tile = AnalogTile(m, rows, cols, rng, update=UpdateParams(pulse_type=pulse_type), io_fwd=IOParams.ideal())
    acc = np.zeros((reps, rows, cols))
    for r in range(reps):
        tile.program(np.zeros((rows, cols)))
        tile.update(x, d, lr)
        acc[r] = tile.W
    mean = acc.mean(0)
    if pulse_type == "stochastic":
        se = acc.std(0) / np.sqrt(reps)
        z = (mean - target) / se
        assert np.abs(z).max() < 5.0, np.abs(z).max()
        assert abs(z.mean()) < 5.0 / np.sqrt(z.size)  # no systematic bias across devices either
    else:
        # deterministic trains: rounding of the train lengths only, well within one step per sample
        assert np.abs(mean - target).max() < b * 2 * tile.dw_min


def test_soft_bounds_update_respects_order_and_bounds():
    m = _cs_model(sigma=0.0, family="soft_bounds", dG=0.1 * 40 * NS)
    rng = np.random.default_rng(0)
    tile = AnalogTile(m, 5, 5, rng, io_fwd=IOParams.ideal())
    tile.program(np.full((5, 5), 0.9))
    x = np.ones((10, 5))
    d = np.ones((10, 5))
    for _ in range(50):
        tile.update(x, d, 0.5)
    assert np.all(tile.W <= 1.0 + 1e-12) and np.all(tile.W > 0.9)
    # many same-direction pulses: deterministic soft bounds approach the bound geometrically
    arr = DeviceArray(m, 1, rng)
    arr.program([0.0])
    arr.apply_pulses(np.array([0]), np.array([10]), np.array([1.0]))
    assert np.isclose(arr.w[0], 1 - 0.9 ** 10)


@pytest.mark.parametrize("family", ["constant_step", "soft_bounds"])
def test_ordered_runs_follow_hardware_order(family):
    """Sample after sample: +5 pulses then -3 from just below the upper bound.  Summing first
    (+2 net) would end at the bound; the hardware order ends 3 steps below it (constant step)."""
    m = _cs_model(sigma=0.0, dG=0.02 * 40 * NS, family=family)
    arr = DeviceArray(m, 2, np.random.default_rng(0))
    arr.program([0.99, 0.0])
    ns = np.array([[5, 5], [-3, -3]])
    arr.apply_runs_ordered(np.array([0, 1]), ns)
    if family == "constant_step":
        assert np.allclose(arr.w, [1.0 - 0.06, 0.04])
    else:
        ref = DeviceArray(m, 2, np.random.default_rng(0))  # pulse by pulse
        ref.program([0.99, 0.0])
        for d, k in ((1.0, 5), (-1.0, 3)):
            for _ in range(k):
                ref.pulse_all(d)
        assert np.allclose(arr.w, ref.w, rtol=1e-12, atol=1e-12)
    assert arr.n_up == 10 and arr.n_down == 6


@pytest.mark.parametrize("family, extra", [("soft_bounds", {}),
                                           ("linear_step", {"gamma_up": {"value": 0.4, "unit": "1"},
                                                            "gamma_down": {"value": 0.8, "unit": "1"}})])
def test_affine_closed_form_matches_pulse_by_pulse(family, extra):
    """A run of n pulses in closed form has the mean and spread of n single pulses."""
    m = _cs_model(sigma=0.3, dG=0.05 * 40 * NS, family=family, extra=extra, up_down=0.2)
    N, n = 40000, 7
    a = DeviceArray(m, N, np.random.default_rng(0))
    b = DeviceArray(m, N, np.random.default_rng(1))
    assert a.affine
    for arr in (a, b):
        arr.program(np.full(N, 0.3))
    a.apply_pulses(np.arange(N), np.full(N, n), -np.ones(N))
    for _ in range(n):
        b.pulse_all(-1.0)
    assert np.isclose(a.w.mean(), b.w.mean(), atol=3 * b.w.std() / np.sqrt(N))
    assert np.isclose(a.w.std(), b.w.std(), rtol=0.03)


@pytest.mark.parametrize("mapping", ["reference", "differential"])
def test_state_dependent_update_in_hardware_order(mapping):
    """Noise-free power-step device (not affine: pulse by pulse) with deterministic trains: the tile
    must equal applying each sample's coincidences one pulse at a time, sample after sample."""
    m = _cs_model(sigma=0.0, dG=0.03 * 40 * NS, family="pow_step", extra={"gamma": {"value": 2.0, "unit": "1"}})
    rng = np.random.default_rng(0)
    rows, cols = 6, 5
    x = rng.uniform(-1, 1, (3, rows))
    d = rng.uniform(-1, 1, (3, cols))
    tile = AnalogTile(m, rows, cols, rng, update=UpdateParams(pulse_type="deterministic"), mapping=mapping)
    W0 = rng.uniform(-0.5, 0.5, (rows, cols))
    tile.program(W0)
    G0 = [a.G.copy() for a in tile.arrays]
    Ra, Ca, Rs, Cs = tile._trains(x, d, 0.3)
    counts = np.einsum("sti,stj->sij", Rs, Cs)  # signed coincidences per sample
    assert (counts > 0).any() and (counts < 0).any()
    tile.update(x, d, 0.3)
    signs = (1.0, -1.0) if mapping == "differential" else (1.0,)
    for arr, g0, sg in zip(tile.arrays, G0, signs):
        G = g0.reshape(rows, cols).copy()
        p = {k: v.reshape(rows, cols) for k, v in arr.params().items()}
        for s in range(3):
            c = counts[s]
            for _ in range(int(np.abs(c).max())):
                on = np.abs(c) > 0
                G = np.where(on, np.clip(G + m.family.mean_step(G, sg * np.sign(c), p), p["G_min"], p["G_max"]), G)
                c = c - np.sign(c)
        assert np.allclose(arr.G.reshape(rows, cols), G, rtol=0, atol=1e-20)
    assert sum(tile.pulses) == len(signs) * int(np.abs(counts).sum())


def test_symmetry_point_calibration_finds_device_sp():
    m = _cs_model(sigma=0.1, family="soft_bounds", dG=0.01 * 40 * NS, d2d={"up_down": {"abs": 0.2}})
    arr = DeviceArray(m, 500, np.random.default_rng(2))
    sp_true = F.symmetry_point(m.family, arr.params())
    sp = calibrate_symmetry_point(arr, n_pairs=600)
    assert np.abs(sp - sp_true).max() < 0.02 * 80 * NS
    assert np.allclose(arr.G_ref, sp) and arr.n_up == 500 * 600


def test_mvm_io_model():
    rng = np.random.default_rng(0)
    W = rng.uniform(-0.3, 0.3, (20, 7))
    x = rng.uniform(-1, 1, (50, 20))
    assert np.allclose(mvm(x, W, IOParams.ideal(), rng), x @ W)
    io = IOParams(out_noise=0.0)
    y = mvm(x, W, io, rng)
    assert np.abs(y - x @ W).max() < 0.05  # DAC/ADC quantisation only
    io = IOParams(out_noise=0.06)
    r = mvm(x, W, io, rng) - x @ W
    assert 0.03 < r.std() < 0.1
    # bound management: a saturating input is re-read at half amplitude and not clipped
    Wbig = np.full((20, 3), 1.0)
    xs = np.ones((2, 20))
    # (0.5 is not a DAC level: 32/63 is, so the re-read sum is 20 * 64/63)
    assert np.allclose(mvm(xs, Wbig, IOParams(out_noise=0.0), rng), 20.0 * 64 / 63, atol=0.05)
    assert np.allclose(mvm(xs, Wbig, IOParams(out_noise=0.0, bound_management="none"), rng), 12.0)


# -- datasets ---------------------------------------------------------------------------------
def _idx(path, magic, arr, gz=False):
    hdr = magic.to_bytes(4, "big") + b"".join(int(s).to_bytes(4, "big") for s in arr.shape)
    raw = hdr + arr.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(raw) if gz else raw)


def _mnist_dir(root, gz=False, n=30):
    rng = np.random.default_rng(0)
    root.mkdir()
    ext = ".gz" if gz else ""
    for pre, k in (("train", n), ("t10k", n // 2)):
        _idx(root / f"{pre}-images-idx3-ubyte{ext}", 2051, rng.integers(0, 256, (k, 28, 28)), gz)
        _idx(root / f"{pre}-labels-idx1-ubyte{ext}", 2049, rng.integers(0, 10, k), gz)
    return root


@pytest.mark.parametrize("gz", [False, True])
def test_idx_reader(tmp_path, gz):
    ds = load_idx_dataset(_mnist_dir(tmp_path / "m", gz))
    assert ds.X_train.shape == (30, 784) and ds.X_test.shape == (15, 784)
    assert ds.X_train.max() <= 1.0 and ds.y_train.max() <= 9


def test_idx_errors(tmp_path):
    root = _mnist_dir(tmp_path / "m")
    with pytest.raises(DatasetError, match="magic number 2049, expected 2051"):
        read_idx(root / "train-labels-idx1-ubyte", 2051)
    f = root / "train-images-idx3-ubyte"
    f.write_bytes(f.read_bytes()[:-5])
    with pytest.raises(DatasetError, match="train-images-idx3-ubyte: .* data bytes, expected"):
        load_idx_dataset(root)
    (root / "t10k-labels-idx1-ubyte").unlink()
    f.unlink()
    with pytest.raises(DatasetError, match="file not found"):
        load_idx_dataset(root)
    with pytest.raises(DatasetError, match="not a directory"):
        load_idx_dataset(tmp_path / "missing")
    g = tmp_path / "bad.gz"
    g.write_bytes(b"\x1f\x8bgarbage")
    with pytest.raises(DatasetError, match="bad.gz"):
        read_idx(g, 2051)


def test_tiki_taka_calibrated_reference_is_symmetry_point():
    from protonfem.crossbar.algorithms import TransferTile

    m = _cs_model(sigma=0.1, family="soft_bounds", dG=0.02 * 40 * NS, up_down=0.1, d2d={"up_down": {"abs": 0.05}})
    rng = np.random.default_rng(4)

    def make(rows, cols, reference="mid"):
        return AnalogTile(m, rows, cols, rng, reference=reference)

    W0 = rng.uniform(-0.3, 0.3, (7, 5))
    tt = TransferTile(make, 7, 5, W0, fast_reference="calibrate", calibration_pairs=300)
    a = tt.A.arrays[0]
    sp = F.symmetry_point(m.family, a.params())
    assert np.abs(a.G_ref - sp).max() < 0.05 * 80 * NS
    assert np.allclose(tt.A.W, 0.0) and np.allclose(tt.weights(), W0)
    assert tt.A.pulses[0] == 35 * 300  # calibration pulses are counted
