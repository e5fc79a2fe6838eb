"""Logging: the run's log file (header, set-up, pulses, warnings), rank-0 vs all-rank logging,
and PETSc options given on the command line. Runs serially and under ``mpiexec -n 2``."""
from __future__ import annotations

import io
import logging
from pathlib import Path

import pytest
from mpi4py import MPI

from protonfem import cli, logs
from protonfem.solver.case import load_case
from solver_cases import short_case

COMM = MPI.COMM_WORLD


@pytest.fixture
def shared_tmp(tmp_path):
    return Path(COMM.bcast(str(tmp_path), root=0))


@pytest.fixture(autouse=True)
def _default_logging():
    yield
    logs.configure("info")  # the CLI reconfigures the process-wide logger; undo for other tests


def _tiny(path: Path, **overrides) -> Path:
    return short_case(path, dim=1, pulses_up=2, pulses_down=1, rest=1e-4, output__fields=[], **overrides)


def test_log_file_has_header_setup_and_every_pulse(shared_tmp):
    case = _tiny(shared_tmp / "logged.toml", solver__petsc_options={"ksp_type": "preonly", "ksp_max_it": 3})
    out = shared_tmp / "out"
    rc = cli.main(["run", str(case), "-o", str(out), "-q",
                   "--petsc-option", "ksp_type=gmres", "--petsc-option=-ksp_rtol=1e-12"])
    assert rc == 0
    COMM.Barrier()
    if COMM.rank != 0:
        return
    text = (out / "protonfem.log").read_text()
    header = dict(line.split(": ", 1) for line in text.splitlines()[1:9])
    assert header["version"].startswith("protonfem ")
    assert "--petsc-option ksp_type=gmres" in header["command"]
    assert len(header["case hash"]) == 64
    assert header["ranks"].startswith(f"{COMM.size} on ")
    petsc = header["PETSc options (prefix protonfem_)"]
    # the command line wins over the case file, and the case's other options stay
    assert "-ksp_type gmres" in petsc and "-ksp_type preonly" not in petsc
    assert "-ksp_max_it 3" in petsc and "-ksp_rtol 1e-12" in petsc
    # ... and the solver PETSc built really is a GMRES one
    assert "solver: SNES newtonls, KSP gmres, PC lu" in text
    assert "mesh: 1-D," in text and "equilibrium at the rest voltage" in text
    pulses = [line for line in text.splitlines() if "protonfem.run: pulse " in line]
    assert [p.split("pulse ")[1].split(" ")[0] for p in pulses] == ["1/3", "2/3", "3/3"]
    assert all("G = " in p and " rejected" in p and "Newton its" in p for p in pulses)
    assert "completed: 3 pulses" in text
    assert not (out / "protonfem.rank1.log").exists()  # rank 0 only without --log-all-ranks
    if COMM.size > 1:
        assert f"partition over {COMM.size} ranks" in text


def test_log_all_ranks_writes_one_file_per_rank(shared_tmp):
    case = _tiny(shared_tmp / "ranks.toml")
    out = shared_tmp / "out"
    assert cli.main(["run", str(case), "-o", str(out), "-q", "--log-all-ranks"]) == 0
    COMM.Barrier()
    path = out / logs.log_file_name(COMM.rank)
    text = path.read_text()
    assert text.startswith(f"==== protonfem run, rank {COMM.rank} of {COMM.size} ====")
    assert f"[rank {COMM.rank}] pulse 3/3" in text
    names = sorted(p.name for p in out.glob("protonfem*.log"))
    assert names == sorted(logs.log_file_name(r) for r in range(COMM.size))


def test_rejected_steps_are_logged_with_their_reason(shared_tmp, monkeypatch):
    from protonfem.solver import model as model_mod
    from protonfem.solver.run import Simulation

    case = short_case(shared_tmp / "flaky.toml", dim=1, pulses_up=1, pulses_down=0, rest=1e-4, output__fields=[])
    calls = {"failed": 0}
    original = model_mod.DeviceModel.solve_step

    def flaky(self, dt):
        if self.gate_voltage() > 5.0 and calls["failed"] < 2:  # two failures in the pulse
            calls["failed"] += 1
            return model_mod.StepResult(False, 1, "DIVERGED_INJECTED")
        return original(self, dt)

    monkeypatch.setattr(model_mod.DeviceModel, "solve_step", flaky)
    summary = Simulation(case, shared_tmp / "out", progress=False).run()
    assert summary["status"] == "completed"
    COMM.Barrier()
    if COMM.rank == 0:
        text = (shared_tmp / "out" / "protonfem.log").read_text()
        assert "2 Newton failures: 2x DIVERGED_INJECTED" in text


def test_bad_petsc_option_is_a_one_line_error(shared_tmp, capsys):
    case = _tiny(shared_tmp / "bad.toml")
    for bad in ("snes_monitor", "=gmres", "ksp type=gmres"):
        assert cli.main(["run", str(case), "-o", str(shared_tmp / "never"), "--petsc-option", bad]) == 2
        err = capsys.readouterr().err
        if COMM.rank == 0:
            lines = [line for line in err.splitlines() if line.strip()]
            assert len(lines) == 1 and lines[0].startswith("error: --petsc-option"), err
    assert not (shared_tmp / "never").exists()


def test_command_line_petsc_options_override_the_case(shared_tmp):
    case = load_case(_tiny(shared_tmp / "merge.toml", solver__petsc_options={"ksp_type": "cg", "pc_type": "lu"}))
    merged = cli.with_petsc_options(case, ["ksp_type=gmres", "-snes_monitor="])
    assert merged.solver.petsc_options == {"ksp_type": "gmres", "pc_type": "lu", "snes_monitor": ""}
    assert case.solver.petsc_options["ksp_type"] == "cg"  # the loaded case is left as it was
    assert logs.format_petsc_options(merged.solver.petsc_options) == "-ksp_type gmres -pc_type lu -snes_monitor"


def test_console_goes_through_rank_0_and_spares_the_progress_bar():
    stream = io.StringIO()
    logs.configure("info", stream=stream)
    log = logs.get_logger("test")
    log.info("set-up line")
    logs._settings.bar_active = True
    try:
        log.info("pulse line", extra=logs.PROGRESS)  # the bar shows it already
        log.warning("a warning")
    finally:
        logs._settings.bar_active = False
    text = stream.getvalue()
    if COMM.rank == 0:
        assert "set-up line" in text and "a warning" in text and "pulse line" not in text
    else:
        assert text == ""
    logs.configure("warning", stream=stream)
    assert logs.get_logger().getEffectiveLevel() == logging.INFO  # files still get INFO


def test_solver_subcommands_take_the_logging_options():
    sub = next(a for a in cli.build_parser()._actions if a.dest == "command")
    assert "run" in sub.choices
    for name in cli.LOGGING_COMMANDS & set(sub.choices):
        options = sub.choices[name]._option_string_actions
        for option in ("--log-level", "-v", "--verbose", "-q", "--quiet", "--log-all-ranks"):
            assert option in options, (name, option)
