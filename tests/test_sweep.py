"""Parameter sweeps: [sweep] expansion and its one-line errors, the `protonfem sweep` command, and a
real sweep of four tiny 1-D variants whose merged table must equal the variants' own summaries
(serially and under ``mpiexec -n 2``, one rank per variant)."""
from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mpi4py import MPI

from protonfem.solver.case import CaseError, load_case, parse_case
from protonfem.solver.sweep import default_group_size, estimated_dofs, expand_sweep, load_sweep, run_sweep
from solver_cases import reference, short_case

COMM = MPI.COMM_WORLD
ROOT = Path(__file__).resolve().parents[1]
Q_E = 1.602176634e-19


@pytest.fixture
def shared_tmp(tmp_path):
    return Path(COMM.bcast(str(tmp_path), root=0))


def with_sweep(parameters: dict, **table) -> dict:
    data = reference(1)
    data["sweep"] = {**table, "parameters": parameters}
    return data


def sweep_error(data: dict) -> str:
    with pytest.raises(CaseError) as info:
        expand_sweep(data, "dev.toml")
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith("dev.toml: ")
    return msg


# ---------------------------------------------------------------------------------------------
def test_grid_expands_every_combination_first_key_slowest():
    variants = expand_sweep(with_sweep({"geometry.electrolyte_thickness": [8e-9, 12e-9],
                                        "protocol.trains.1.amplitude": [-7.0, -8.0, -9.0]}), "dev.toml")
    assert [v.id for v in variants] == [f"v{i:04d}" for i in range(6)]
    assert [tuple(v.parameters.values()) for v in variants] == [
        (8e-9, -7.0), (8e-9, -8.0), (8e-9, -9.0), (12e-9, -7.0), (12e-9, -8.0), (12e-9, -9.0)]
    v = variants[4]
    assert v.case.geometry.electrolyte_thickness == 12e-9
    assert v.case.protocol.trains[1].amplitude == -8.0 and v.case.protocol.trains[0].amplitude == 10.0
    assert v.case.name == "onen2022-reference-v0004" and v.case.sweep is None
    assert len({v.fingerprint for v in variants}) == 6
    # the same table gives the same ids and fingerprints (resumable)
    again = expand_sweep(with_sweep({"geometry.electrolyte_thickness": [8e-9, 12e-9],
                                     "protocol.trains.1.amplitude": [-7.0, -8.0, -9.0]}), "dev.toml")
    assert [(v.id, v.fingerprint) for v in again] == [(v.id, v.fingerprint) for v in variants]


def test_zip_pairs_values_and_creates_missing_tables():
    data = with_sweep({"conditions.temperature": [280.0, 320.0], "solver.lte_tolerance": [0.05, 0.1],
                       "interfaces.electrolyte_channel.transfer_coefficient": [0.3, 0.7]}, mode="zip")
    data.pop("conditions")  # tables the file leaves out are created
    assert "interfaces" not in data
    variants = expand_sweep(data, "dev.toml")
    assert [(v.case.conditions.temperature, v.case.solver.lte_tolerance,
             v.case.interfaces.electrolyte_channel.transfer_coefficient) for v in variants] == [(280.0, 0.05, 0.3),
                                                                                             (320.0, 0.1, 0.7)]


def test_sweep_table_is_accepted_by_a_plain_case_load(tmp_path):
    case = parse_case(with_sweep({"conditions.temperature": [300.0, 310.0]}, group_size=1), "dev.toml")
    assert case.sweep.mode == "grid" and case.sweep.group_size == 1
    assert case.conditions.temperature == 300.0  # `protonfem run` runs the case as written


@pytest.mark.parametrize("parameters, table, expected", [
    ({"geometry.electrolyte_thicknes": [1e-8]}, {},
     'sweep.parameters."geometry.electrolyte_thicknes": variant v0000 (geometry.electrolyte_thicknes = 1e-08): '
     "geometry.electrolyte_thicknes: unknown key"),
    ({"geometry.electrolyte_thickness": [1e-8, -1e-9]}, {},
     'sweep.parameters."geometry.electrolyte_thickness": variant v0001 (geometry.electrolyte_thickness = -1e-09): '
     "geometry.electrolyte_thickness: input should be greater than 0"),
    ({"protocol.trains.0.amplitude": [10.0, 200.0]}, {},
     'sweep.parameters."protocol.trains.0.amplitude": variant v0001 (protocol.trains.0.amplitude = 200.0): '
     "protocol.trains.amplitude: gives 20 V/nm"),
    ({"mesh.h_min": [1e-11], "geometry.channel_thickness": [2e-8, 3e-11]}, {},
     'sweep.parameters."mesh.h_min": variant v0001 (mesh.h_min = 1e-11, geometry.channel_thickness = 3e-11): mesh.h_min: '),
    ({"protocol.trains.2.amplitude": [1.0]}, {},
     'sweep.parameters."protocol.trains.2.amplitude": variant v0000 (protocol.trains.2.amplitude = 1.0): '
     "index 2 out of range: protocol.trains has 2 entries"),
    ({"protocol.trains.width": [1e-9]}, {}, "protocol.trains is a list: use an index (0 to 1), not 'width'"),
    ({"geometry.dimension.x": [1]}, {}, "geometry.dimension is a value, not a table or list"),
    ({"conditions.temperature": [300.0], "protocol.read_voltage": [0.1, 0.2]}, {"mode": "zip"},
     "sweep: mode 'zip' needs lists of equal length (got conditions.temperature: 1, protocol.read_voltage: 2)"),
    ({"conditions.temperature": []}, {}, "sweep.parameters.conditions.temperature: list should have at least 1 item"),
    ({}, {}, "sweep.parameters: dictionary should have at least 1 item"),
    ({"conditions.temperature": [300.0]}, {"group": 2}, "sweep.group: unknown key"),
    ({"conditions.temperature": [300.0]}, {"mode": "random"}, "sweep.mode: input should be 'grid' or 'zip'"),
    ({"sweep.mode": ["zip"]}, {}, "must be a dotted key of the case outside [sweep]"),
])
def test_bad_sweeps_give_one_line_errors(parameters, table, expected):
    assert expected in sweep_error(with_sweep(parameters, **table))


SHIPPED_SWEEPS = sorted(p for p in (ROOT / "cases").rglob("*.toml") if "\n[sweep]" in p.read_text())


def test_shipped_sweeps_expand():
    assert SHIPPED_SWEEPS
    for path in SHIPPED_SWEEPS:
        base, variants = load_sweep(path)
        assert base.sweep is not None and len(variants) >= 2
        assert all(v.case.sweep is None and v.case.name.startswith(base.name) for v in variants)


def test_a_case_without_sweep_table_cannot_be_swept():
    assert "dev.toml: sweep: missing table" in sweep_error(reference(1))


def test_default_group_size_follows_the_mesh():
    one_d = load_case(ROOT / "cases/onen2022/reference.toml")
    assert default_group_size(one_d, 8) == 1
    two_d = load_case(ROOT / "cases/onen2022/reference_2d.toml")
    assert default_group_size(two_d, 8) == 1  # 6.75 k dofs: splitting costs more than it gains
    # a 2-D mesh of 162 k dofs (270 vertical x 601 lateral vertices, 2 fields): ~5 ranks wanted, capped by
    # the world size and lowered to a divisor of it
    fine = two_d.mesh.model_copy(update={"lateral_h_min": 2.5e-10, "lateral_h_max": 2.5e-10})
    big = two_d.model_copy(update={"mesh": fine})
    assert estimated_dofs(big) == 162_270
    assert [default_group_size(big, world) for world in (1, 2, 4, 6, 8, 10)] == [1, 2, 4, 3, 4, 5]


# ---------------------------------------------------------------------------------------------
def tiny_sweep_case(path: Path) -> Path:
    """Four ~1 s variants: one up and one down pulse, 1 us rests, a coarse mesh, no field output.
    Written by rank 0 only (atomically, by short_case), read by all after the barrier."""
    if COMM.rank == 0:
        short_case(path, dim=1, pulses_up=1, pulses_down=1, rest=1e-6, output__fields=[],
                   mesh__h_min=1e-10, mesh__h_max=2e-9,
                   sweep__parameters={"protocol.trains.0.amplitude": [8.0, 10.0],
                                      "materials.electrolyte.proton_density": [5e25, 1e26]})
    COMM.Barrier()
    return path


@pytest.mark.parametrize("group_size", sorted({1, COMM.size}))
def test_sweep_table_matches_the_variant_summaries_and_resumes(shared_tmp, group_size):
    case_path = tiny_sweep_case(shared_tmp / "tiny.toml")
    _, variants = load_sweep(case_path)
    out = shared_tmp / "out"
    records = run_sweep(case_path, variants, out, group_size=group_size, progress=False)
    assert [r["status"] for r in records] == ["completed"] * 4, [r["message"] for r in records]
    COMM.Barrier()
    with open(out / "sweep.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["id"] for r in rows] == ["v0000", "v0001", "v0002", "v0003"]
    for row, variant in zip(rows, variants):
        summary = json.loads((out / "variants" / row["id"] / "summary.json").read_text())
        assert summary["status"] == "completed" and summary["case"] == f"tiny-{row['id']}"
        assert summary["ranks"] == group_size
        assert (out / "variants" / row["id"] / "series.csv").is_file()
        up, down = summary["per_pulse"]
        # the variant ran with its parameters ...
        assert up["amplitude_V"] == float(row["protocol.trains.0.amplitude"]) == variant.parameters["protocol.trains.0.amplitude"]
        assert float(row["materials.electrolyte.proton_density"]) == variant.parameters["materials.electrolyte.proton_density"]
        # ... and the table holds its figures (floats written exactly)
        g = summary["conductance_S"]
        assert float(row["G_initial_S"]) == g["initial"] and float(row["G_final_S"]) == g["final"]
        assert float(row["dG_up_mean_S"]) == pytest.approx(up["conductance_S"] - g["initial"], rel=1e-12)
        assert float(row["dG_down_mean_S"]) == pytest.approx(down["conductance_S"] - up["conductance_S"], rel=1e-12)
        assert float(row["protons_up_mean"]) == pytest.approx(up["faradaic_charge_C"] / Q_E, rel=1e-12)
        assert float(row["faradaic_charge_down_mean_C"]) == down["faradaic_charge_C"]
        assert float(row["displacement_energy_mean_J"]) == pytest.approx(
            (up["displacement_energy_J"] + down["displacement_energy_J"]) / 2, rel=1e-12)
        assert int(row["steps_accepted"]) == summary["steps"]["accepted"]
        assert float(row["max_inventory_error"]) == summary["conservation"]["max_inventory_error"] < 1e-10
        assert int(row["pulses_up"]) == 1 and int(row["pulses_down"]) == 1
    # physics sanity across the table: a +10 V pulse moves more protons than +8 V, more glass protons more
    protons = {(float(r["protocol.trains.0.amplitude"]), float(r["materials.electrolyte.proton_density"])):
               float(r["protons_up_mean"]) for r in rows}
    assert protons[(10.0, 1e26)] > protons[(8.0, 1e26)] > 0 and protons[(10.0, 1e26)] > protons[(10.0, 5e25)]
    prov = json.loads((out / "sweep.json").read_text())
    assert prov["counts"]["completed"] == 4 and prov["metadata"]["case_hash"] and prov["ranks"] == COMM.size
    assert prov["metadata"]["simulation_versions"]["dolfinx"]

    # Resumable: nothing left to run, nothing rewritten.
    mtimes = [os.stat(out / "variants" / v.id / "result.json").st_mtime_ns for v in variants]
    again = run_sweep(case_path, variants, out, group_size=group_size, progress=False)
    assert all(r["reused"] and r["status"] == "completed" for r in again)
    assert [os.stat(out / "variants" / v.id / "result.json").st_mtime_ns for v in variants] == mtimes


@pytest.mark.serial
def test_sweep_command_lists_variants_and_refuses_bad_input(tmp_path):
    case_path = tiny_sweep_case(tmp_path / "tiny.toml")
    cli = [sys.executable, "-m", "protonfem.cli"]
    proc = subprocess.run([*cli, "sweep", str(case_path), "--list"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].split() == ["id", "protocol.trains.0.amplitude", "materials.electrolyte.proton_density"]
    assert lines[1:] == ["v0000  8.0  5e+25", "v0001  8.0  1e+26", "v0002  10.0  5e+25", "v0003  10.0  1e+26"]

    bad = tmp_path / "bad.toml"
    bad.write_text(case_path.read_text().replace('"materials.electrolyte.proton_density"', '"materials.electrolyte.proton_densty"'))
    proc = subprocess.run([*cli, "sweep", str(bad)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f'error: {bad}: sweep.parameters."materials.electrolyte.proton_densty": variant v0000 '
        "(protocol.trains.0.amplitude = 8.0, materials.electrolyte.proton_densty = 5e+25): "
        "materials.electrolyte.proton_densty: unknown key (check the spelling; see `protonfem validate --describe`)"]

    proc = subprocess.run([*cli, "sweep", str(case_path), "--group-size", "2"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "--group-size: must divide the 1 MPI rank(s), got 2" in proc.stderr

    proc = subprocess.run([*cli, "validate", str(case_path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr  # a case with a [sweep] table is still a valid case


@pytest.mark.serial
def test_interrupted_sweep_resumes_where_it_stopped(tmp_path):
    case_path = short_case(tmp_path / "eight.toml", dim=1, pulses_up=1, pulses_down=1, rest=1e-6, output__fields=[],
                           mesh__h_min=1e-10, mesh__h_max=2e-9,
                           sweep__mode="zip", sweep__parameters={"conditions.temperature": [290.0 + 2 * i for i in range(8)]})
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "protonfem.cli", "sweep", str(case_path), "-o", str(out), "-q"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while len(list(out.glob("variants/*/result.json"))) < 2:
        if proc.poll() is not None or time.time() > deadline:
            pytest.fail(f"sweep ended or stalled before the signal: {proc.communicate()}")
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    with open(out / "sweep.csv", newline="") as fh:
        status = {r["id"]: r["status"] for r in csv.DictReader(fh)}
    finished = {i for i, s in status.items() if s == "completed"}
    assert len(status) == 8 and 2 <= len(finished) < 8
    assert set(status.values()) <= {"completed", "interrupted", "pending"}

    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert f"8 completed ({len(finished)} from an earlier run), 0 failed" in proc.stdout
