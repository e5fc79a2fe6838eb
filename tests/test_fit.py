"""Compact-model fitting: parameter recovery within the stated uncertainties, model selection,
cross-validation, warnings, scatter and device-to-device spread, and the pulse-data loader.

All data are synthetic, generated with the crossbar's own family functions plus known noise."""
from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from fit_synthetic import (SOFT, make_table, pulse_train, response_map_rows, write_response_map, write_run_dir,
                           write_sweep)

from protonfem.postprocess import fit as F
from protonfem.postprocess.pulse_data import PulseDataError, PulseDataWarning, input_kind, load_pulse_data, load_run

pytestmark = pytest.mark.serial


def _within(fit, truth, n_sigma=3.0):
    """Every free parameter of the fit lies within n_sigma of the truth."""
    bad = []
    for name in fit.free:
        s = fit.std[name]
        if not (math.isfinite(s) and abs(fit.params[name] - truth[name]) < n_sigma * s):
            bad.append(f"{name}: fit {fit.params[name]:.5g} +- {s:.3g}, true {truth[name]:.5g}")
    return bad


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_soft_bounds_recovered_within_three_sigma(seed):
    G, dG, d, _ = pulse_train("soft_bounds", SOFT, sigma_abs=2e-11, seed=seed)
    fit = F.fit_family(make_table(G, dG, d), "soft_bounds", emit_warnings=False)
    assert set(fit.free) == {"G_min", "G_max", "dG", "up_down"}
    assert _within(fit, SOFT) == []
    assert fit.r2 > 0.99 and not fit.warnings
    # the uncertainties are informative, not inflated: dG is known to better than 1 %
    assert fit.std["dG"] < 0.01 * SOFT["dG"]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pow_step_recovered_within_three_sigma(seed):
    truth = dict(SOFT, gamma=2.0, up_down=-0.2)
    G, dG, d, _ = pulse_train("pow_step", truth, sigma_abs=1e-11, seed=seed, n_up=200, n_down=200)
    fit = F.fit_family(make_table(G, dG, d), "pow_step", emit_warnings=False)
    assert _within(fit, truth) == []


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_condition_law_recovered_from_response_map(seed):
    truth = {"beta": 1.2, "hop_distance": 0.56e-9}
    rows = response_map_rows("soft_bounds", SOFT, truth, sigma_rel=0.03, seed=seed)
    G, d, V, w, dG = rows.T
    fit = F.fit_family(make_table(G, dG, d, amplitude=V, width=w), "soft_bounds", emit_warnings=False)
    assert fit.condition is not None and set(fit.condition_free) == {"beta", "hop_distance"}
    # reference pulses: the most common condition, ties to the largest amplitude and the longest pulse
    assert fit.condition.up == {"amplitude": 10.0, "width": 1e-8}
    for name, val in truth.items():
        assert abs(fit.condition_params[name] - val) < 3 * fit.condition_std[name], name
    # the state law at the reference pulses equals the truth scaled by the law's factor
    law, fp = fit.condition, fit.condition_params
    for direction in (1.0, -1.0):
        ref = law.up if direction > 0 else law.down
        Gs = np.linspace(3e-8, 9e-8, 5)
        true = F.FAMILIES["soft_bounds"]().mean_step(Gs, direction, SOFT) * \
            F.SinhPowerCondition({"amplitude": 10, "width": 5e-9}, {"amplitude": 8.5, "width": 5e-9}, 300, 1e-8
                                 ).factor(np.full(5, direction), ref["amplitude"], ref["width"], 300, 1e-8, truth)
        got = fit.family.mean_step(Gs, direction, fit.params)
        np.testing.assert_allclose(got, true, rtol=0.05)
    assert fp["hop_distance"] > 0


def test_constant_step_recovered():
    truth = {"G_min": 2e-8, "G_max": 1e-7, "dG": 3e-10, "up_down": 0.25}
    G, dG, d, _ = pulse_train("constant_step", truth, sigma_abs=5e-11, n_up=100, n_down=100, seed=4,
                              G0=5e-8)
    fit = F.fit_family(make_table(G, dG, d), "constant_step", emit_warnings=False)
    assert _within(fit, truth) == []
    assert fit.params["G_min"] == pytest.approx(min(G.min(), (G + dG).min()))  # fixed at the data range


@pytest.mark.parametrize("family,params", [
    ("soft_bounds", SOFT),
    ("pow_step", dict(SOFT, gamma=2.5)),
    ("constant_step", {"G_min": 2e-8, "G_max": 1e-7, "dG": 3e-10, "up_down": 0.0}),
    ("exp_step", dict(SOFT, dG=6e-10, A_up=0.02, A_down=0.02, gamma_up=3.5, gamma_down=3.5)),
])
def test_comparison_picks_the_true_family(family, params):
    G0 = 5e-8 if family == "constant_step" else None
    G, dG, d, _ = pulse_train(family, params, sigma_abs=1e-11, seed=7, G0=G0)
    fits = F.fit_families(make_table(G, dG, d), cv=False, emit_warnings=False)
    best = F.choose_best(fits)
    assert best.name == family, F.format_comparison(fits, best)


def test_cross_validation_schemes_and_values():
    G, dG, d, _ = pulse_train("soft_bounds", SOFT, sigma_abs=2e-11, seed=3)
    t = make_table(G, dG, d)
    cv_soft, scheme = F.cross_validate(t, "soft_bounds", folds=4)
    assert scheme == "4-fold over pulses"
    assert cv_soft == pytest.approx(2e-11, rel=0.15)  # out-of-sample error ~ the noise
    cv_const, _ = F.cross_validate(t, "constant_step", folds=4)
    assert cv_const > 3 * cv_soft
    # folds partition the pulses
    _, masks = F._cv_folds(t, 4, 0)
    assert np.array_equal(np.sum(masks, axis=0), np.ones(len(t)))

    rows = response_map_rows("soft_bounds", SOFT, {"beta": 1.2, "hop_distance": 0.56e-9}, seed=1)
    Gm, dm, V, w, dGm = rows.T
    tm = make_table(Gm, dGm, dm, amplitude=V, width=w)
    cv, scheme = F.cross_validate(tm, "soft_bounds")
    assert scheme == "leave-one-condition-out"
    assert len(F._cv_folds(tm, 5, 0)[1]) == 18  # 9 (V, width) conditions per direction
    # predicting an unseen condition through the fitted law stays close to the in-sample error
    fit = F.fit_family(tm, "soft_bounds", emit_warnings=False)
    assert cv < 2.5 * fit.rmse


def test_poor_fit_warning_fires_and_not_for_good_fits():
    rng = np.random.default_rng(0)
    n = 300
    G = rng.uniform(3e-8, 9e-8, n)
    d = np.where(rng.random(n) < 0.5, 1.0, -1.0)
    dG = 1e-10 * rng.standard_normal(n)  # steps unrelated to the direction: nothing to explain
    with pytest.warns(F.FitWarning, match="poor fit"):
        F.fit_family(make_table(G, dG, d), "constant_step")
    G2, dG2, d2, _ = pulse_train("soft_bounds", SOFT, sigma_abs=1e-11)
    with warnings.catch_warnings():
        warnings.simplefilter("error", F.FitWarning)
        F.fit_family(make_table(G2, dG2, d2), "soft_bounds")


def test_bound_and_identifiability_warnings():
    # down steps that do not shrink toward G_min: soft bounds would need G_min < 0, so it stops on the
    # lower end of its search box (just above 0)
    rng = np.random.default_rng(0)
    G = rng.uniform(3e-8, 9e-8, 200)
    d = np.where(np.arange(200) % 2 == 0, 1.0, -1.0)
    dG = np.where(d > 0, SOFT["dG"] * (1e-7 - G) / 4e-8, -3e-10) + 1e-12 * rng.standard_normal(200)
    fit = F.fit_family(make_table(G, dG, d), "soft_bounds", emit_warnings=False)
    assert any("G_min" in w and "sits on its lower search bound" in w for w in fit.warnings), fit.warnings
    truth = {"G_min": 2e-8, "G_max": 1e-7, "dG": 3e-10, "up_down": 0.0}
    G, dG, d, _ = pulse_train("constant_step", truth, sigma_abs=1e-12, G0=5e-8, n_up=50, n_down=50)
    # only up pulses: dG and up_down enter as the product dG(1+up_down) -> not identifiable
    up = d > 0
    fit = F.fit_family(make_table(G[up], dG[up], d[up]), "constant_step", emit_warnings=False)
    assert any("not separately identifiable" in w for w in fit.warnings), fit.warnings


def test_scatter_models_chosen_by_likelihood():
    G, dG, d, _ = pulse_train("soft_bounds", SOFT, sigma_rel=0.2, seed=5)
    t = make_table(G, dG, d)
    fit = F.fit_family(t, "soft_bounds", emit_warnings=False)
    sc = F.fit_scatter(t, fit)
    assert sc.loglik_rel > sc.loglik_abs
    g = sc.choose("auto")
    assert g.kind == "gaussian" and g.sigma_rel == pytest.approx(0.2, rel=0.15) and g.sigma_abs == 0
    G, dG, d, _ = pulse_train("soft_bounds", SOFT, sigma_abs=2e-11, seed=5)
    t = make_table(G, dG, d)
    sc = F.fit_scatter(t, F.fit_family(t, "soft_bounds", emit_warnings=False))
    assert sc.loglik_abs > sc.loglik_rel
    assert sc.choose("gaussian").sigma_abs == pytest.approx(2e-11, rel=0.1)
    with pytest.raises(ValueError, match="proton counts"):
        sc.choose("shot")


def test_shot_noise_from_proton_counts():
    dgpp = 4e-11  # ~10 protons per 0.4 nS step, the order of the reference sheet's estimate
    G, dG, d, k = pulse_train("soft_bounds", SOFT, dG_per_proton=dgpp, seed=2)
    t = make_table(G, dG, d, protons=k)
    fit = F.fit_family(t, "soft_bounds", emit_warnings=False)
    sc = F.fit_scatter(t, fit)
    assert sc.dG_per_proton == pytest.approx(dgpp, rel=0.05)
    shot = sc.choose("auto")
    assert shot.kind == "shot" and shot.dG_per_proton == sc.dG_per_proton
    # Poisson residuals: the shot model explains them better than a relative Gaussian
    assert sc.loglik_shot > sc.loglik_rel


def test_device_to_device_from_sweep(tmp_path):
    rng = np.random.default_rng(11)
    dGs = SOFT["dG"] * (1 + 0.2 * rng.standard_normal(6))
    sweep = write_sweep(tmp_path / "sweep", dGs, failed=(5,))
    with pytest.warns(PulseDataWarning, match="v005"):
        table, rows = load_pulse_data([sweep])
    assert sorted(set(table["variant"])) == [f"v{i:03d}" for i in range(5)]
    res = F.device_to_device(table, "soft_bounds", rows)
    used = dGs[:5]
    true_rel = used.std(ddof=1) / used.mean()
    assert res["d2d"]["dG"][0] == "rel"
    assert res["d2d"]["dG"][1] == pytest.approx(true_rel, rel=0.1)
    assert res["d2d"]["up_down"][0] == "abs"
    assert res["variants"][0]["swept"]["materials.electrolyte.diffusivity"] == "1e-17"


# ----------------------------------------------------------------------------------------------
# Loader
# ----------------------------------------------------------------------------------------------
def test_load_run_directory(tmp_path):
    run = write_run_dir(tmp_path / "run", n_up=10, n_down=8, width_up=5e-9, width_down=8e-9, thickness=5e-9)
    assert input_kind(run) == "run" == input_kind(run / "series.csv")
    t = load_run(run)
    assert len(t) == 18
    np.testing.assert_allclose(t["G_after_S"][:-1], t["G_before_S"][1:])
    np.testing.assert_allclose(t["dG_S"], t["G_after_S"] - t["G_before_S"])
    assert set(t["direction"][:10]) == {1.0} and set(t["direction"][10:]) == {-1.0}
    assert set(t["width_s"][:10]) == {5e-9} and set(t["width_s"][10:]) == {8e-9}  # per train, from the case
    assert set(t["temperature_K"]) == {300.0}  # the case schema's default
    assert set(t["electrolyte_thickness_m"]) == {5e-9}
    assert t.sources[0]["case_hash"] == "hash-run" and t["protons"][0] > 0
    assert F.energy_per_pulse(t) == pytest.approx((2.5e-15 + 10 * t["faradaic_charge_C"][:10].mean(),
                                                   2.0e-15 + 8.5 * abs(t["faradaic_charge_C"][10:]).mean()), rel=1e-6)


def test_load_run_width_from_summary_and_skipped_reads(tmp_path):
    import json

    run = write_run_dir(tmp_path / "run", n_up=5, n_down=5, failed_read=3, temperature=320.0)
    s = json.loads((run / "summary.json").read_text())
    s["protocol"] = {"trains": [{"width": 7e-9}, {"width": 9e-9}]}
    (run / "summary.json").write_text(json.dumps(s))
    with pytest.warns(PulseDataWarning, match="skipped 2 pulse"):
        t = load_run(run)
    assert len(t) == 8 and set(t["width_s"]) == {7e-9, 9e-9}
    assert set(t["temperature_K"]) == {320.0}


def test_load_run_errors_name_the_file(tmp_path):
    run = write_run_dir(tmp_path / "run", n_up=3, n_down=3)
    (tmp_path / "run-case.toml").unlink()
    with pytest.raises(PulseDataError, match=r"summary\.json: case file .* not found"):
        load_run(run)
    run2 = write_run_dir(tmp_path / "run2", n_up=3, n_down=3)
    text = (tmp_path / "run2-case.toml").read_text().replace("electrolyte_thickness = 1e-08\n", "")
    (tmp_path / "run2-case.toml").write_text(text)
    with pytest.raises(PulseDataError, match=r"run2-case\.toml: missing \[geometry\] electrolyte_thickness"):
        load_run(run2)
    (run2 / "series.csv").write_text("time_s,event\n0,initial\n")
    with pytest.raises(PulseDataError, match=r"series\.csv: missing column\(s\) pulse, train"):
        load_run(run2)
    with pytest.raises(PulseDataError, match="holds none of series.csv"):
        input_kind(tmp_path)


def test_load_response_map_skips_failed_rows(tmp_path):
    rows = response_map_rows("soft_bounds", SOFT, {"beta": 1.2, "hop_distance": 0.56e-9})
    m = write_response_map(tmp_path / "map", rows, failed_ids=(0, 5))
    with pytest.warns(PulseDataWarning, match="skipped 2 row"):
        t, sweep_rows = load_pulse_data([m])
    assert len(t) == len(rows) - 2 and sweep_rows == []
    np.testing.assert_allclose(t["dG_S"], rows[[i for i in range(len(rows)) if i not in (0, 5)], 4])
    assert set(t["state"]) == {str(i) for i in range(6)}
    assert t.sources[0]["kind"] == "response_map" and t.sources[0]["case_hash"] == "hash-map"
    np.testing.assert_allclose(t["protons"], np.abs(t["dG_S"]) / 1e-12)


def test_tabulated_from_binned_data():
    G, dG, d, _ = pulse_train("soft_bounds", SOFT, sigma_abs=2e-11, seed=8, cycles=3)
    t = make_table(G, dG, d)
    fit = F.fit_family(t, "tabulated", emit_warnings=False)
    tab = fit.family.table
    assert fit.k == len(tab["up"]["G"]) + len(tab["down"]["G"]) == 2 * F.TABLE_MAX_NODES
    for key, sign in (("up", 1.0), ("down", -1.0)):
        Gn = tab[key]["G"]
        assert np.all(np.diff(Gn) > 0)
        # bin means follow the true law (curvature-free, so the mean at the mean state is exact)
        truth = F.FAMILIES["soft_bounds"]().mean_step(Gn, sign, SOFT)
        count = 3 * 150 / F.TABLE_MAX_NODES
        assert np.all(np.abs(tab[key]["dG_mean"] - truth) < 4 * 2e-11 / np.sqrt(count))
        assert np.median(tab[key]["dG_std"]) == pytest.approx(2e-11, rel=0.25)
    # the parametric law it came from is preferred: 24 bin means cost more BIC than 4 parameters
    best = F.choose_best(F.fit_families(t, ["soft_bounds", "tabulated"], cv=False, emit_warnings=False))
    assert best.name == "soft_bounds"
    rows = response_map_rows("soft_bounds", SOFT, {"beta": 1.2, "hop_distance": 0.56e-9})
    Gm, dm, V, w, dGm = rows.T
    with pytest.raises(ValueError, match="one pulse condition per direction"):
        F.fit_family(make_table(Gm, dGm, dm, amplitude=V, width=w), "tabulated")
    with warnings.catch_warnings():
        warnings.simplefilter("error", F.FitWarning)  # skipped silently when not asked for
        names = [f.name for f in F.fit_families(make_table(Gm, dGm, dm, amplitude=V, width=w), ["soft_bounds"],
                                                cv=False)]
    assert names == ["soft_bounds"]


def test_zero_amplitude_pulses_are_rests_for_retention(tmp_path):
    import csv

    from protonfem.postprocess.compact_plots import applicable_plots

    run = write_run_dir(tmp_path / "run", n_up=5, n_down=5)
    case = tmp_path / "run-case.toml"
    case.write_text(case.read_text() + "\n[[protocol.trains]]\ncount = 3\namplitude = 0.0\nwidth = 5e-9\n"
                    "rise = 1e-10\nfall = 1e-10\nrest = 100.0\n")
    with open(run / "series.csv") as fh:
        rows = list(csv.DictReader(fh))
    last = rows[-1]
    G_last, t_last = float(last["conductance_S"]), float(last["time_s"])
    for i in range(3):  # the state relaxes by 1 % per read over a long open-circuit rest
        rows.append(dict(last, event="read", pulse=str(11 + i), train="2", pulse_amplitude_V="0",
                         time_s=str(t_last + 100.0 * (i + 1)), conductance_S=str(G_last * (1 - 0.01 * (i + 1)))))
    with open(run / "series.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    with pytest.warns(PulseDataWarning, match="3 zero-amplitude"):
        t = load_run(run)
    assert len(t) == 10 and set(t["direction"]) == {1.0, -1.0}
    rest = t.rests[str(run)]
    m = rest["pulse"] == 10  # the reads after the last programming pulse, through the three rests
    np.testing.assert_allclose(rest["G_S"][m], G_last * np.array([1, 0.99, 0.98, 0.97]))
    fit = F.fit_family(t, "soft_bounds", emit_warnings=False)
    assert "retention" in applicable_plots(t, fit)


@pytest.mark.parametrize("seed", [0, 1])
def test_physics_recovered_within_three_sigma(seed):
    from protonfem.crossbar.families import E_CHARGE, K_BOLTZMANN

    # the quantities a single-condition fit holds fixed take their documented values: V0 from
    # a = 0.56 nm, beta = 1.2, t0 = the pulse width, m = 1, Q_max = 1e4 protons (no proton counts)
    V0 = 2 * K_BOLTZMANN * 300 * 1e-8 / (E_CHARGE * F.HOP_DISTANCE_PAPER)
    truth = {"G_min": 1e-8, "G_max": 2.2e-7, "Q_max": 1e4 * E_CHARGE, "q0": 3e-22, "t0": 5e-9, "beta": 1.2,
             "V0": V0, "V_up": 10.0, "V_down": 8.5, "t_pulse": 5e-9, "V_ocp": 0.3, "m": 1.0}
    G, dG, d, _ = pulse_train("physics", truth, sigma_abs=5e-12, seed=seed, n_up=300, n_down=300, G0=3e-8)
    fit = F.fit_family(make_table(G, dG, d), "physics", emit_warnings=False)
    assert set(fit.free) == {"G_min", "G_max", "V_ocp", "q0"}
    assert {k: fit.params[k] for k in ("V0", "beta", "Q_max", "V_up", "V_down")} == pytest.approx(
        {k: truth[k] for k in ("V0", "beta", "Q_max", "V_up", "V_down")})
    assert _within(fit, truth) == []


def test_hop_distance_from_thickness_and_temperature_alone():
    """One amplitude and width per direction, but several electrolyte thicknesses and temperatures:
    the sinh law's V0 = 2kTd/(q a) still pins a (the paper's Fig. 3B idea), beta stays fixed."""
    from protonfem.crossbar.families import SinhPowerCondition

    truth = {"beta": 1.2, "hop_distance": 0.5e-9}
    law = SinhPowerCondition({"amplitude": 10.0, "width": 5e-9}, {"amplitude": 8.5, "width": 5e-9}, 300.0, 1e-8)
    rng = np.random.default_rng(4)
    rows = []
    for G in np.linspace(3e-8, 9e-8, 5):
        for d, V in ((1.0, 10.0), (-1.0, -8.5)):
            for thk in (5e-9, 7.5e-9, 1e-8):
                for T in (300.0, 350.0):
                    mu = F.FAMILIES["soft_bounds"]().mean_step(np.array([G]), d, SOFT)[0] * \
                        law.factor(np.array([d]), V, 5e-9, T, thk, truth)[0]
                    rows.append((G, d, V, T, thk, mu * (1 + 0.02 * rng.standard_normal())))
    G, d, V, T, thk, dG = np.array(rows).T
    fit = F.fit_family(make_table(G, dG, d, amplitude=V, temperature=T, thickness=thk), "soft_bounds",
                       emit_warnings=False)
    assert fit.condition_free == ["hop_distance"] and fit.condition_params["beta"] == F.BETA_PAPER
    assert abs(fit.condition_params["hop_distance"] - 0.5e-9) < 3 * fit.condition_std["hop_distance"]
    assert fit.condition.v0(fit.condition_params, 300.0, 1e-8) == pytest.approx(
        2 * 1.380649e-23 * 300 * 1e-8 / (1.602176634e-19 * 0.5e-9), rel=0.02)
