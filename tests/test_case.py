"""Case files: the shipped cases validate; every malformed file gets its one-line error."""
import subprocess
import sys
from pathlib import Path

import pytest

from protonfem.solver.case import CaseError, load_case, parse_case
from protonfem.solver.protocol import Waveform

ROOT = Path(__file__).resolve().parents[1]
MALFORMED = sorted((ROOT / "tests" / "cases" / "malformed").glob("*.toml"))
SHIPPED = sorted((ROOT / "cases").rglob("*.toml"))


def expected(path: Path) -> str:
    first = path.read_text().splitlines()[0]
    assert first.startswith("# expect: ")
    return first[len("# expect: "):]


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_cases_validate(path):
    case = load_case(path)
    assert case.name
    for _, thickness in case.geometry.layers():
        assert thickness > 0


def test_at_least_ten_malformed_files():
    assert len(MALFORMED) >= 10


@pytest.mark.parametrize("path", MALFORMED, ids=lambda p: p.stem)
def test_malformed_case_one_line_error(path):
    with pytest.raises(CaseError) as info:
        load_case(path)
    msg = str(info.value)
    assert "\n" not in msg
    assert msg.startswith(str(path) + ": ")
    assert expected(path) in msg


@pytest.mark.serial
@pytest.mark.parametrize("path", MALFORMED[:4] + MALFORMED[-2:], ids=lambda p: p.stem)
def test_validate_cli_exits_nonzero_without_traceback(path):
    proc = subprocess.run([sys.executable, "-m", "protonfem.cli", "validate", str(path)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    lines = [l for l in proc.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and expected(path) in lines[0]


@pytest.mark.serial
def test_validate_cli_accepts_reference():
    proc = subprocess.run([sys.executable, "-m", "protonfem.cli", "validate",
                           str(ROOT / "cases/onen2022/reference.toml")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "ok" in proc.stdout


def test_missing_file_is_a_case_error(tmp_path):
    with pytest.raises(CaseError, match="no such case file"):
        load_case(tmp_path / "absent.toml")


def test_name_defaults_to_file_stem(tmp_path):
    text = (ROOT / "cases/onen2022/reference.toml").read_text().replace('name = "onen2022-reference"\n', "")
    p = tmp_path / "mydevice.toml"
    p.write_text(text)
    assert load_case(p).name == "mydevice"


def test_table_law_must_increase():
    import tomllib
    data = tomllib.loads((ROOT / "cases/onen2022/reference.toml").read_text())
    data["materials"]["channel"]["conductivity"] = {"law": "table", "densities": [2e25, 1e25], "conductivities": [1.0, 2.0]}
    with pytest.raises(CaseError, match="strictly increasing"):
        parse_case(data, "x.toml")


def test_waveform_edges_and_voltage():
    case = load_case(ROOT / "cases/onen2022/reference.toml")
    wf = Waveform(case.protocol)
    assert len(wf.pulses) == 20
    p = wf.pulses[0]
    assert wf.voltage(p.start) == pytest.approx(0.0)
    assert wf.voltage(p.start + p.rise / 2) == pytest.approx(5.0)
    assert wf.voltage(p.plateau_start + p.width / 2) == pytest.approx(10.0)
    assert wf.voltage(p.plateau_end + p.fall / 2) == pytest.approx(5.0)
    assert wf.voltage(p.end + 0.5) == pytest.approx(0.0)
    q = wf.pulses[10]
    assert q.amplitude == -8.5 and q.start == pytest.approx(10 * p.read_time)
    bps = wf.breakpoints([0.3])
    assert bps == sorted(set(bps)) and 0.3 in bps
    assert all(t in bps for pl in wf.pulses for t in pl.edges)
