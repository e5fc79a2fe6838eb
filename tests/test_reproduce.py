"""`protonfem reproduce`: the Onen 2022 trends from the shipped cases; the sinh-law voltage per
decade at 5 nm and the thickness collapse at fixed field agree with the paper, the energy split
is within a factor of two, and the report lists every comparison."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.serial


def test_reproduce_report(tmp_path):
    """The shipped cases, with the Fig. 2A protocol cut to 20 + 20 pulses (--fig2a path)."""
    import shutil

    import tomli_w
    import tomllib

    from protonfem.cli import main

    cases = tmp_path / "cases"
    shutil.copytree(ROOT / "cases" / "onen2022", cases)
    fig2a = tomllib.loads((cases / "fig2a.toml").read_text())
    for train in fig2a["protocol"]["trains"]:
        train["count"] = 20
    fig2a["output"]["fields"] = []
    (cases / "fig2a.toml").write_text(tomli_w.dumps(fig2a))
    out = tmp_path / "out"
    assert main(["reproduce", "--cases", str(cases), "-o", str(out), "-q", "--fig2a"]) == 0
    result = json.loads((out / "reproduce.json").read_text())
    rows = {r["quantity"]: r for r in result["table"]}
    assert set(rows) == {"volts_per_decade_5nm", "width_exponent", "thickness_collapse", "up_down_ratio",
                         "up_down_ratio_first_pulses", "displacement_energy_fJ", "faradaic_energy_aJ"}
    for key in ("volts_per_decade_5nm", "thickness_collapse", "displacement_energy_fJ", "faradaic_energy_aJ"):
        assert rows[key]["agrees"], rows[key]
    # ΔG grows with the pulse width (a positive exponent of order one)
    assert 0.5 < rows["width_exponent"]["simulated"] < 2.0
    # +10 V steps are larger than -8.5 V steps at equal state (sinh law); no paper number for that
    first = rows["up_down_ratio_first_pulses"]
    assert first["simulated"] > 1.5 and first["paper"] is None and first["agrees"] is None
    # the (short) Fig. 2A protocol ran: its ratio and conductance range are reported
    assert rows["up_down_ratio"]["simulated"] > 0 and rows["up_down_ratio"]["agrees"] is not None
    m = result["measured"]
    assert m["fig2a_G_max_S"] > m["fig2a_G_initial_S"]
    text = (out / "reproduce.md").read_text()
    assert "| quantity |" in text and "Fig. 2A protocol: G" in text


def test_reproduce_needs_the_cases(tmp_path):
    from protonfem.cli import main

    assert main(["reproduce", "--cases", str(tmp_path), "-o", str(tmp_path / "o")]) == 2


def test_reproduce_fig2a_needs_its_case(tmp_path, capsys):
    import shutil

    from protonfem.cli import main

    cases = tmp_path / "cases"
    cases.mkdir()
    for name in ("fig3a.toml", "fig3b.toml", "reference.toml"):
        shutil.copy(ROOT / "cases" / "onen2022" / name, cases / name)
    assert main(["reproduce", "--cases", str(cases), "-o", str(tmp_path / "o"), "--fig2a"]) == 2
    assert "missing fig2a.toml" in capsys.readouterr().err
