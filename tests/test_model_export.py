"""Model export: fitted model files round-trip and validate with clear errors, the aihwkit mapping
reproduces our update laws with hand-computed numbers, and `protonfem fit` / `export-aihwkit` /
`train --model` work end to end on synthetic result directories (no DOLFINx, no aihwkit)."""
from __future__ import annotations

import copy
import json

import numpy as np
import pytest
from fit_synthetic import SOFT, make_table, pulse_train, response_map_rows, write_response_map, write_run_dir

from protonfem.cli import main
from protonfem.crossbar.aihwkit_map import to_aihwkit
from protonfem.crossbar.builtin import builtin_model
from protonfem.crossbar.families import FAMILIES, GaussianScatter, ShotScatter
from protonfem.crossbar.schema import DeviceModel, ModelFileError, load_model, model_from_dict, save_model
from protonfem.postprocess import fit as F

pytestmark = pytest.mark.serial


def _fitted_model(condition: bool):
    if condition:
        rows = response_map_rows("soft_bounds", SOFT, {"beta": 1.2, "hop_distance": 0.56e-9}, seed=2)
        G, d, V, w, dG = rows.T
        table = make_table(G, dG, d, amplitude=V, width=w, energy=(2.5e-15, 2e-15))
    else:
        G, dG, d, k = pulse_train("soft_bounds", SOFT, dG_per_proton=4e-11, seed=1)
        table = make_table(G, dG, d, protons=k, energy=(2.5e-15, 2e-15))
    report = F.fit_compact_models(table, ["soft_bounds", "pow_step"], emit_warnings=False)
    return report, F.build_model(report, "synthetic")


@pytest.mark.parametrize("condition", [False, True])
def test_fitted_model_round_trips(tmp_path, condition):
    report, model = _fitted_model(condition)
    path = tmp_path / "m.json"
    save_model(model, path)
    loaded = load_model(path)
    assert loaded.to_dict() == json.loads(path.read_text()) == model.to_dict()
    assert loaded.params == model.params and loaded.uncertainties == model.uncertainties
    assert loaded.uncertainties.keys() == set(report.chosen.free)
    assert loaded.energy_per_pulse == pytest.approx((2.5e-15, 2e-15))
    data = json.loads(path.read_text())
    assert data["schema_version"] == "1.1"
    assert data["fit"]["metrics"]["cv_rmse_S"] > 0 and len(data["fit"]["comparison"]) == 2
    if condition:
        assert loaded.condition is not None and loaded.condition_params == model.condition_params
        assert data["pulse_condition"]["parameters"]["hop_distance"]["unit"] == "m"
        # the condition law evaluates through the loaded model: at the reference pulse the factor is 1
        G = np.array([5e-8])
        ref = loaded.condition.up
        assert loaded.mean_step_at(G, 1.0, ref["amplitude"], ref["width"]) == \
            pytest.approx(loaded.family.mean_step(G, 1.0, loaded.params))
        assert loaded.mean_step_at(G, 1.0, 8.0, ref["width"])[0] < loaded.family.mean_step(G, 1.0, loaded.params)[0]
    else:
        assert loaded.scatter.kind == "shot" and loaded.scatter.dG_per_proton == pytest.approx(4e-11, rel=0.05)
        assert data["provenance"]["source"] == "protonfem fit"


def _model_dict():
    return copy.deepcopy(_fitted_model(True)[1].to_dict())


@pytest.mark.parametrize("mutate,key", [
    (lambda d: d["parameters"]["dG"].update(std=-1.0), "parameters.dG.std"),
    (lambda d: d["parameters"]["dG"].update(std="big"), "parameters.dG.std"),
    (lambda d: d["pulse_condition"]["parameters"].pop("hop_distance"), "pulse_condition.parameters.hop_distance"),
    (lambda d: d["pulse_condition"]["parameters"]["beta"].update(unit="s"), "pulse_condition.parameters.beta.unit"),
    (lambda d: d["pulse_condition"].update(law="arrhenius"), "pulse_condition.law"),
    (lambda d: d["pulse_condition"]["reference"]["up"].pop("width"), "pulse_condition.reference.up.width"),
    (lambda d: d["pulse_condition"]["reference"]["temperature"].update(value=-3.0),
     "pulse_condition.reference.temperature.value"),
    (lambda d: d["parameters"]["G_max"].update(value=1e-9), "parameters"),
    (lambda d: d.update(schema_version="2.0"), "schema_version"),
])
def test_malformed_model_files_name_the_key(tmp_path, mutate, key):
    d = _model_dict()
    mutate(d)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(d))
    with pytest.raises(ModelFileError) as e:
        load_model(path)
    msg = str(e.value)
    assert msg.startswith(f"{path}: key '{key}'") and "\n" not in msg, msg


def test_schema_1_0_files_still_load():
    d = builtin_model("soft-bounds").to_dict()
    d["schema_version"] = "1.0"
    m = model_from_dict(d)
    assert m.condition is None and m.uncertainties == {}


# ----------------------------------------------------------------------------------------------
# aihwkit mapping
# ----------------------------------------------------------------------------------------------
def _weight(model, G, w_max=1.0):
    p = model.params
    return (G - 0.5 * (p["G_min"] + p["G_max"])) / ((p["G_max"] - p["G_min"]) / (2 * w_max))


def _model(family, params, **kw):
    return DeviceModel(name=family, family=FAMILIES[family](), params=params, **kw)


@pytest.mark.parametrize("w_max", [1.0, 0.6])
def test_soft_bounds_slope_and_dw_min(w_max):
    m = _model("soft_bounds", SOFT, d2d={"dG": ("rel", 0.3), "up_down": ("abs", 0.01)},
               scatter=GaussianScatter(sigma_rel=0.3))
    a = to_aihwkit(m, w_max=w_max)
    q = a["parameters"]
    g_unit = (1e-7 - 2e-8) / (2 * w_max)  # 4e-8 S per unit weight at w_max = 1
    assert a["device_class"] == "SoftBoundsDevice"
    assert q["dw_min"] == pytest.approx(4e-10 / g_unit)  # 0.01 at w_max = 1
    assert (q["w_min"], q["w_max"], q["up_down"]) == (-w_max, w_max, 0.1)
    # slope of the up step in weight units = -dw_min (1 + up_down) / w_max, from two states
    G = np.array([4e-8, 8e-8])
    dw = m.family.mean_step(G, 1.0, m.params) / g_unit
    slope = (dw[1] - dw[0]) / (_weight(m, G[1], w_max) - _weight(m, G[0], w_max))
    assert slope == pytest.approx(-q["dw_min"] * (1 + q["up_down"]) / w_max)
    assert (q["dw_min_dtod"], q["up_down_dtod"], q["dw_min_std"], q["mult_noise"]) == (0.3, 0.01, 0.3, True)


def test_gokmen_vlasov_reproduces_aihwkit_preset_variations():
    # GokmenVlasovPresetDevice: dw_min 0.0016 on +-1, dtod 0.3, up_down_dtod 0.01, w_min/max_dtod 0.3, c2c 0.3
    q = to_aihwkit(builtin_model("gokmen-vlasov"))["parameters"]
    assert q["dw_min"] == pytest.approx(0.0016)
    for k, v in (("dw_min_dtod", 0.3), ("up_down_dtod", 0.01), ("w_min_dtod", 0.3), ("w_max_dtod", 0.3),
                 ("dw_min_std", 0.3)):
        assert q[k] == pytest.approx(v), k
    assert "mult_noise" not in q  # additive step noise for a constant step


def test_pow_exp_and_linear_step_laws_match_aihwkit_formulas():
    """Evaluate aihwkit's documented update formulas with the exported fields and compare with the
    family functions (weights in aihwkit units, w_max = 1)."""
    G = np.linspace(2.5e-8, 9.5e-8, 7)
    pw = _model("pow_step", dict(SOFT, gamma=2.0))
    q = to_aihwkit(pw)["parameters"]
    w = _weight(pw, G)
    omega = (q["w_max"] - w) / (q["w_max"] - q["w_min"])
    g_unit = 4e-8
    np.testing.assert_allclose(q["dw_min"] * (1 + q["up_down"]) * omega ** q["pow_gamma"],
                               pw.family.mean_step(G, 1.0, pw.params) / g_unit)
    np.testing.assert_allclose(-q["dw_min"] * (1 - q["up_down"]) * (1 - omega) ** q["pow_gamma"],
                               pw.family.mean_step(G, -1.0, pw.params) / g_unit)
    assert q["dw_min"] == pytest.approx(4e-10 * 2 ** 2 / g_unit)  # 0.04 = dG 2^gamma / G_unit

    ex = _model("exp_step", dict(SOFT, A_up=0.1, A_down=0.2, gamma_up=2.0, gamma_down=1.5))
    a = to_aihwkit(ex)
    q = a["parameters"]
    z = 2 * q["a"] * _weight(ex, G) / (q["w_max"] - q["w_min"]) + q["b"]
    for d, A, gm, ud in ((1, q["A_up"], q["gamma_up"], 1 + q["up_down"]), (-1, q["A_down"], q["gamma_down"],
                                                                          1 - q["up_down"])):
        y = np.maximum(1 - A * np.exp(d * gm * z), 0)
        np.testing.assert_allclose(d * q["dw_min"] * ud * y, ex.family.mean_step(G, float(d), ex.params) / g_unit)

    ls = _model("linear_step", dict(SOFT, gamma_up=0.3, gamma_down=0.6))
    q = to_aihwkit(ls)["parameters"]
    w = _weight(ls, G)
    np.testing.assert_allclose(q["dw_min"] * (1 + q["up_down"]) * (1 - q["gamma_up"] * w / q["w_max"]),
                               ls.family.mean_step(G, 1.0, ls.params) / g_unit)


def test_physics_maps_to_piecewise_nodes():
    p = {"G_min": 1e-8, "G_max": 2.2e-7, "Q_max": 1e4 * 1.602176634e-19, "q0": 1e-22, "t0": 5e-9, "beta": 1.2,
         "V0": 0.92, "V_up": 10.0, "V_down": 8.5, "t_pulse": 5e-9, "V_ocp": 0.05, "m": 1.0}
    m = _model("physics", p, scatter=GaussianScatter(sigma_rel=0.1))
    a = to_aihwkit(m)
    q = a["parameters"]
    assert a["device_class"] == "PiecewiseStepDevice" and len(q["piecewise_up"]) == 21
    nominal = m.family.nominal_step(p)
    g_unit = (p["G_max"] - p["G_min"]) / 2
    assert q["dw_min"] == pytest.approx(nominal / g_unit)
    mid = np.array([0.5 * (p["G_min"] + p["G_max"])])
    assert q["piecewise_up"][10] == pytest.approx(abs(m.family.mean_step(mid, 1.0, p)[0]) / nominal)
    assert q["piecewise_down"][10] == pytest.approx(abs(m.family.mean_step(mid, -1.0, p)[0]) / nominal)


def test_shot_noise_maps_to_relative_step_std():
    m = _model("soft_bounds", SOFT, scatter=ShotScatter(4e-11))
    q = to_aihwkit(m)["parameters"]
    assert q["dw_min_std"] == pytest.approx(1 / np.sqrt(4e-10 / 4e-11))  # 10 protons per nominal step


# ----------------------------------------------------------------------------------------------
# Command line, end to end
# ----------------------------------------------------------------------------------------------
def test_cli_fit_writes_model_plots_and_aihwkit(tmp_path, capsys):
    run = write_run_dir(tmp_path / "run", n_up=50, n_down=50, dG_per_proton=4e-11, rest_steps=3)
    rows = response_map_rows("soft_bounds", SOFT, {"beta": 1.2, "hop_distance": 0.56e-9}, seed=3)
    rmap = write_response_map(tmp_path / "map", rows, failed_ids=(1,))
    out = tmp_path / "models" / "dev.json"
    rc = main(["fit", str(run), str(rmap), "--output", str(out), "--plots", str(tmp_path / "plots"),
               "--aihwkit", str(tmp_path / "aih.json"), "--table", str(tmp_path / "pulses.csv")])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    assert "chosen:" in cap.out and "BIC" in cap.out and "skipped 1 row" in cap.err
    m = load_model(out)
    assert m.condition is not None and {c["case"] for c in m.provenance["cases"]} == {"synthetic", "map"}
    names = sorted(p.name for p in (tmp_path / "plots").iterdir())
    assert names == ["conductance_trace.png", "dg_vs_voltage.png", "dg_vs_width.png", "model_vs_data.png",
                     "retention.png", "symmetry.png"]
    aih = json.loads((tmp_path / "aih.json").read_text())
    assert aih["source_model"] == "dev" and aih["parameters"]["dw_min"] > 0
    assert (tmp_path / "pulses.csv").read_text().count("\n") == 100 + len(rows) - 1 + 1

    # one requested family is written even when another would win
    out2 = tmp_path / "const.json"
    assert main(["fit", str(run), "-o", str(out2), "--family", "constant_step", "--cv-folds", "3"]) == 0
    assert load_model(out2).family.name == "constant_step"
    capsys.readouterr()

    # export-aihwkit from the written model, to stdout
    assert main(["export-aihwkit", str(out2), "--w-max", "0.5"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["device_class"] == "ConstantStepDevice" and printed["parameters"]["w_max"] == 0.5


def test_cli_fit_bad_input_exits_2_with_one_line(tmp_path, capsys):
    assert main(["fit", str(tmp_path / "missing"), "-o", str(tmp_path / "m.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("protonfem fit: error:") and "not a directory" in err and "\n" not in err
    run = write_run_dir(tmp_path / "run", n_up=5, n_down=5)
    (tmp_path / "run-case.toml").unlink()
    assert main(["fit", str(run), "-o", str(tmp_path / "m.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert "summary.json: case file" in err and "\n" not in err
    assert main(["fit", str(run), "-o", str(tmp_path / "m.txt")]) == 2
    assert "expected a .json model file" in capsys.readouterr().err
    bad = tmp_path / "bad.json"
    bad.write_text('{"schema_version": "1.1", "family": "soft_bounds", "parameters": {}}')
    assert main(["export-aihwkit", str(bad)]) == 2
    assert "key 'parameters.G_min'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["fit", str(run), "-o", str(tmp_path / "m.json"), "--family", "nonsense"])
    assert e.value.code == 2


def test_fitted_model_trains_on_the_crossbar(tmp_path, capsys):
    run = write_run_dir(tmp_path / "run", n_up=60, n_down=60, dG_per_proton=4e-11)
    model = tmp_path / "dev.json"
    assert main(["fit", str(run), "-o", str(model), "--family", "soft_bounds"]) == 0
    rc = main(["train", "--model", str(model), "--epochs", "1", "--train-limit", "100", "--hidden", "8",
               "--no-baseline", "--no-progress", "--output", str(tmp_path / "train")])
    assert rc == 0, capsys.readouterr().err
    res = json.loads((tmp_path / "train" / "results.json").read_text())
    assert res["model"]["family"] == "soft_bounds" and res["model"]["cycle_to_cycle"]["model"] == "shot"
    assert res["analog"]["epochs"][0]["pulses_up"] > 0


def test_tabulated_fit_exports_and_maps(tmp_path):
    G, dG, d, _ = pulse_train("soft_bounds", SOFT, sigma_abs=2e-11, seed=9, cycles=2)
    report = F.fit_compact_models(make_table(G, dG, d), ["tabulated"], emit_warnings=False)
    model = F.build_model(report, "tab")
    assert model.scatter.kind == "gaussian" and model.scatter.sigma_rel == model.scatter.sigma_abs == 0.0
    save_model(model, tmp_path / "tab.json")
    loaded = load_model(tmp_path / "tab.json")
    assert loaded.to_dict() == model.to_dict()
    np.testing.assert_allclose(loaded.family.table["up"]["dG_std"], model.family.table["up"]["dG_std"])
    a = to_aihwkit(loaded)
    assert a["device_class"] == "PiecewiseStepDevice"
    Gm = np.array([0.5 * (loaded.params["G_min"] + loaded.params["G_max"])])
    nominal = loaded.family.nominal_step(loaded.params)
    assert a["parameters"]["piecewise_up"][10] == pytest.approx(
        abs(loaded.family.mean_step(Gm, 1.0, loaded.params)[0]) / nominal)


def test_unusable_fit_is_refused_with_a_clear_error():
    # steps that run against their direction: the constant step's dG is driven onto its zero bound
    rng = np.random.default_rng(0)
    G = rng.uniform(3e-8, 9e-8, 200)
    d = np.where(np.arange(200) % 2 == 0, 1.0, -1.0)
    dG = -d * 1e-10 * (1 + 0.1 * rng.standard_normal(200))
    report = F.fit_compact_models(make_table(G, dG, d), ["constant_step"], emit_warnings=False)
    assert "dG" in report.chosen.at_bound and not report.chosen.clean
    report.chosen.params["dG"] = 0.0  # where the search box ends: a model file may not hold it
    with pytest.raises(ValueError, match=r"constant_step: fitted dG = 0 S is not positive"):
        F.build_model(report, "bad")


def test_sweep_spread_is_exported_as_device_to_device(tmp_path, capsys):
    from fit_synthetic import write_sweep

    rng = np.random.default_rng(3)
    sweep = write_sweep(tmp_path / "sweep", SOFT["dG"] * (1 + 0.25 * rng.standard_normal(5)))
    out = tmp_path / "d2d.json"
    assert main(["fit", str(sweep), "-o", str(out), "--family", "soft_bounds", "--aihwkit",
                 str(tmp_path / "a.json")]) == 0
    m = load_model(out)
    kind, sigma = m.d2d["dG"]
    fit_d2d = json.loads(out.read_text())["fit"]["device_to_device"]
    vals = np.array([v["dG"] for v in fit_d2d["variants"]])
    assert kind == "rel" and sigma == pytest.approx(vals.std(ddof=1) / vals.mean())
    assert len(fit_d2d["variants"]) == 5 and "device-to-device" in capsys.readouterr().out
    a = json.loads((tmp_path / "a.json").read_text())["parameters"]
    assert a["dw_min_dtod"] == pytest.approx(sigma)
