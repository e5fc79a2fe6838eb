"""A run stopped with SIGTERM or Ctrl-C (SIGINT) leaves every file readable and consistent."""
from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time

import h5py
import pytest

from solver_cases import short_case

pytestmark = pytest.mark.serial


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_leaves_consistent_outputs(tmp_path, sig):
    case = short_case(tmp_path / "long.toml", dim=1, pulses_up=200, pulses_down=0, rest=1e-2,
                      output__field_every=1)
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "protonfem.cli", "run", str(case), "-o", str(out), "-q"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    series = out / "series.csv"
    deadline = time.time() + 240
    while time.time() < deadline:
        if series.exists() and series.read_text().count("\nread,") + series.read_text().count(",read,") >= 3:
            break
        if proc.poll() is not None:
            pytest.fail(f"run ended early: {proc.communicate()}")
        time.sleep(0.2)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "interrupted"
    with open(series, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert rows and all(None not in r.values() and len(r) == len(rows[0]) for r in rows)
    assert 3 <= summary["pulses_completed"] < 200
    assert sum(r["event"] == "read" for r in rows) == summary["pulses_completed"]
    assert max(float(r["inventory_error"]) for r in rows) < 1e-10
    with h5py.File(out / "fields.vtkhdf", "r", locking=False) as f:
        assert int(f["VTKHDF/Steps"].attrs["NSteps"]) >= 3
    with h5py.File(out / "fields.h5", "r", locking=False) as f:
        assert len(f["Function"]["potential"].keys()) >= 3
    assert (out / "conductance.png").exists()
