"""Response maps: probes from states sampled along a train, as an ensemble on 1 or 2 ranks; the
train replayed from the map reproduces the simulated train within 2 %; the table feeds
`protonfem fit`; a case without [response_map] gets a clear error."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import tomli_w
import tomllib
from mpi4py import MPI

from protonfem.solver.case import CaseError
from solver_cases import short_case

COMM = MPI.COMM_WORLD


@pytest.fixture
def shared_tmp(tmp_path):
    return Path(COMM.bcast(str(tmp_path), root=0))


def _map_case(path: Path) -> Path:
    case = short_case(path, pulses_up=4, pulses_down=2, rest=1e-3, output__fields=[], output__checkpoint_every=0,
                      mesh__h_min=5e-11, mesh__h_max=2e-9, mesh__growth=1.5)
    data = tomllib.loads(case.read_text())
    data["response_map"] = {"states": 3, "amplitudes": [10.0, -8.5, 8.0], "widths": [5e-9, 2e-9], "rest": 1e-3}
    COMM.Barrier()
    if COMM.rank == 0:
        path.write_text(tomli_w.dumps(data))
    COMM.Barrier()
    return path


def test_response_map_replays_the_train(shared_tmp):
    from protonfem.solver.response_map import run_response_map

    case = _map_case(shared_tmp / "map.toml")
    out = shared_tmp / "map"
    meta = run_response_map(case, out, progress=False)
    assert meta["completed"] == meta["probes"] == 3 * 3 * 2
    replay = meta["replay"]
    assert replay["checked"] and replay["pulses"] == 6
    assert replay["max_relative_deviation"] < 0.02
    COMM.Barrier()
    rows = list(csv.DictReader(open(out / "response_map.csv")))
    assert len(rows) == 18
    states = {int(r["state"]): float(r["G_before_S"]) for r in rows}
    train = json.loads((out / "states" / "states.json").read_text())["states"]
    # a probe starts exactly at its stored state's conductance
    for s in train:
        assert states[s["state"]] == pytest.approx(s["G_S"], rel=1e-9)
    # potentiation raises G, depression lowers it; a wider/higher pulse moves more charge
    by = {(int(r["state"]), float(r["amplitude_V"]), float(r["width_s"])): r for r in rows}
    for j in range(3):
        assert float(by[j, 10.0, 5e-9]["dG_S"]) > float(by[j, 8.0, 5e-9]["dG_S"]) > 0
        assert float(by[j, 10.0, 5e-9]["dG_S"]) > float(by[j, 10.0, 2e-9]["dG_S"])
        assert float(by[j, -8.5, 5e-9]["dG_S"]) < float(by[j, 8.0, 5e-9]["dG_S"])
    # from the relaxed initial state a depressing pulse lowers G (later states, 1 ms after their
    # last pulse, still drift up while they relax: that drift is part of every probe's dG)
    assert float(by[0, -8.5, 5e-9]["dG_S"]) < 0
    # a re-run reuses every probe and the states
    meta2 = run_response_map(case, out, progress=False)
    assert meta2["completed"] == 18
    COMM.Barrier()
    if COMM.rank == 0:
        results = json.loads((out / "response_map.json").read_text())
        assert results["replay"]["passed"]


@pytest.mark.serial
def test_fit_reads_the_map(tmp_path):
    from protonfem.cli import main
    from protonfem.solver.response_map import run_response_map

    case = _map_case(tmp_path / "map.toml")
    run_response_map(case, tmp_path / "map", progress=False)
    assert main(["fit", str(tmp_path / "map"), "-o", str(tmp_path / "model.json")]) == 0
    model = json.loads((tmp_path / "model.json").read_text())
    assert model["family"]


@pytest.mark.serial
def test_case_without_map_table(tmp_path):
    from protonfem.solver.response_map import load_response_map_case

    case = short_case(tmp_path / "plain.toml")
    with pytest.raises(CaseError, match=r"plain.toml: response_map: missing table"):
        load_response_map_case(case)
