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
    from protonfem.cli import main

    assert main(["reproduce", "--cases", str(ROOT / "cases" / "onen2022"), "-o", str(tmp_path), "-q"]) == 0
    result = json.loads((tmp_path / "reproduce.json").read_text())
    rows = {r["quantity"]: r for r in result["table"]}
    assert set(rows) == {"volts_per_decade_5nm", "width_exponent", "thickness_collapse", "up_down_ratio",
                         "displacement_energy_fJ", "faradaic_energy_aJ"}
    for key in ("volts_per_decade_5nm", "thickness_collapse", "displacement_energy_fJ", "faradaic_energy_aJ"):
        assert rows[key]["agrees"], rows[key]
    # ΔG grows with the pulse width (a positive exponent of order one)
    assert 0.5 < rows["width_exponent"]["simulated"] < 2.0
    assert "| quantity |" in (tmp_path / "reproduce.md").read_text()


def test_reproduce_needs_the_cases(tmp_path):
    from protonfem.cli import main

    assert main(["reproduce", "--cases", str(tmp_path), "-o", str(tmp_path / "o")]) == 2
