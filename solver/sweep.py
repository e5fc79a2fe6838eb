"""Parameter sweeps: a case's ``[sweep]`` table expanded into validated variants, run as an MPI
ensemble (:mod:`protonfem.solver.ensemble`), one device simulation per variant.

```toml
[sweep]
mode = "grid"            # every combination ("zip": the i-th values together)
group_size = 1           # optional: MPI ranks per variant
[sweep.parameters]
"geometry.electrolyte_thickness" = [5e-9, 10e-9]
"protocol.trains.0.amplitude" = [8.0, 10.0]     # list entries by index
```

A variant is the case file's data with those keys replaced (tables missing from the file are
created), validated like any case, so a bad key or value is a one-line :class:`CaseError` that
names the file, ``sweep.parameters."<key>"`` and the variant. Variant ids (``v0000``, ``v0001``,
...) follow the expansion order, so they are stable while the ``[sweep]`` table is; each result
also stores its parameters and a hash of the variant's full data, and a re-run reuses a result
only if both still match.

Nothing here needs DOLFINx until a variant runs.
"""
from __future__ import annotations

import copy
import hashlib
import itertools
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

from mpi4py import MPI

from .case import Case, CaseError, case_hash, parse_case, read_case_data
from .ensemble import Task, TaskFailure, TaskInterrupted, run_ensemble
from .scaling import Q_E

#: About one rank per this many unknowns when a 2-D/3-D variant is split over a group: below it,
#: communication outweighs the solve (README: the 6.75 k-dof cross-section gains little from 2 ranks).
DOFS_PER_RANK = 30_000
SWEEP_LABEL = "sweep"


@dataclass(frozen=True)
class Variant:
    id: str
    parameters: dict      # sweep key -> value of this variant
    case: Case            # validated, without the [sweep] table
    fingerprint: str      # SHA-256 of the variant's full case data

    def task(self) -> Task:
        return Task(self.id, self.parameters, self.fingerprint)


def _describe(parameters: dict) -> str:
    return ", ".join(f"{k} = {v!r}" for k, v in parameters.items())


def _set_key(data: dict, key: str, value) -> None:
    """Replace the value at dotted ``key`` (integer parts index lists); raise ValueError saying
    why the key cannot be set."""
    parts = key.split(".")
    node = data
    for depth, part in enumerate(parts):
        where = ".".join(parts[:depth]) or "the case"
        last = depth == len(parts) - 1
        if isinstance(node, list):
            if not part.isdigit():
                raise ValueError(f"{where} is a list: use an index (0 to {len(node) - 1}), not {part!r}")
            index = int(part)
            if index >= len(node):
                raise ValueError(f"index {index} out of range: {where} has {len(node)} entries")
            if last:
                node[index] = value
            else:
                node = node[index]
        elif isinstance(node, dict):
            if last:
                node[part] = value
            else:
                node = node.setdefault(part, {})  # an optional table the file leaves out
        else:
            raise ValueError(f"{where} is a value, not a table or list")


def _blamed_key(message: str, keys: list[str]) -> str | None:
    """The sweep key a case error is about: its location (``a.b[0].c`` or ``a.b.c``) equals a
    key, lies inside it, or is a table the key lies in, ignoring list indices."""
    location = message.split(": ", 1)[0]
    location = re.sub(r"\[(\d+)\]", r".\1", location)
    strip = lambda k: re.sub(r"\.\d+(?=\.|$)", "", k)  # noqa: E731
    for key in keys:
        for a, b in ((location, key), (strip(location), strip(key))):
            if a == b or a.startswith(b + ".") or b.startswith(a + "."):
                return key
    return None


def expand_sweep(data: dict, path: Path | str) -> list[Variant]:
    """The variants of a case's ``[sweep]`` table, each validated; :class:`CaseError` otherwise."""
    path = Path(path)
    base = parse_case(data, path)  # the base case and the [sweep] table itself are valid
    if base.sweep is None:
        raise CaseError(f"{path}: sweep: missing table; a sweep needs [sweep.parameters] "
                        "(see `protonfem validate --describe`)")
    sweep = base.sweep
    keys = list(sweep.parameters)
    columns = [sweep.parameters[k] for k in keys]
    combos = list(itertools.product(*columns)) if sweep.mode == "grid" else list(zip(*columns))
    width = max(4, len(str(len(combos) - 1)))
    template = {k: v for k, v in data.items() if k != "sweep"}
    variants = []
    for n, values in enumerate(combos):
        vid = f"v{n:0{width}d}"
        parameters = dict(zip(keys, values))
        variant_data = copy.deepcopy(template)
        variant_data["name"] = f"{base.name}-{vid}"
        for key, value in parameters.items():
            try:
                _set_key(variant_data, key, value)
            except ValueError as exc:
                raise CaseError(f"{path}: sweep.parameters.\"{key}\": variant {vid} ({_describe(parameters)}): {exc}") from None
        try:
            case = parse_case(variant_data, path)
        except CaseError as exc:
            what = str(exc).removeprefix(f"{path}: ")
            key = _blamed_key(what, keys)
            where = f"sweep.parameters.\"{key}\"" if key else "sweep.parameters"
            raise CaseError(f"{path}: {where}: variant {vid} ({_describe(parameters)}): {what}") from None
        fingerprint = hashlib.sha256(json.dumps(variant_data, sort_keys=True, default=str).encode()).hexdigest()
        variants.append(Variant(vid, parameters, case, fingerprint))
    return variants


def load_sweep(path: Path | str) -> tuple[Case, list[Variant]]:
    """Read a case file with a ``[sweep]`` table: the base case and its variants."""
    data = read_case_data(path)
    variants = expand_sweep(data, path)
    return parse_case(data, path), variants


# ---------------------------------------------------------------------------------------------
def estimated_dofs(case: Case) -> int:
    """Unknowns of the case's mesh without building it: graded vertices (the builders' own node
    distributions) times the fields of the device model (potential, one proton field per group of
    regions joined by continuous interfaces, the channel's phase field if any)."""
    from protonfem.meshes import graded_points, stack_points

    g, m = case.geometry, case.mesh
    z, _ = stack_points(g.layers(), m.h_min, m.h_max, m.growth)
    vertices = len(z)
    lateral_extents = (g.channel_length, g.channel_width)[:g.dimension - 1]
    for extent in lateral_extents:  # structured, graded toward the contacts like the 2-D builder
        vertices *= len(graded_points(0.0, extent, m.lateral_h_min, m.lateral_h_max, m.growth))
    itf = case.interfaces
    proton_fields = 1 + sum(i.kinetics == "butler_volmer" for i in (itf.reservoir_electrolyte, itf.electrolyte_channel))
    phase_field = case.materials.channel.regular_solution is not None
    return vertices * (1 + proton_fields + phase_field)


def default_group_size(case: Case, world_size: int) -> int:
    """Ranks per variant: 1 for a 1-D stack (a stack split over ranks is communication-bound);
    otherwise about one rank per :data:`DOFS_PER_RANK` unknowns, at most the world size and a
    divisor of it."""
    if case.geometry.dimension == 1:
        return 1
    size = min(max(1, round(estimated_dofs(case) / DOFS_PER_RANK)), world_size)
    while world_size % size:
        size -= 1
    return size


# ---------------------------------------------------------------------------------------------
def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def variant_figures(summary: dict) -> dict:
    """The per-variant columns of ``sweep.csv`` from a run's summary. Up/down: pulses of positive
    / negative amplitude; ΔG of a pulse is its read-out minus the one before (the initial state
    for the first)."""
    g = summary.get("conductance_S") or {}
    pulses = summary.get("per_pulse") or []
    before = [g.get("initial")] + [p["conductance_S"] for p in pulses[:-1]]
    up = [(p, b) for p, b in zip(pulses, before) if p["amplitude_V"] > 0]
    down = [(p, b) for p, b in zip(pulses, before) if p["amplitude_V"] < 0]

    def mean(selection, key):
        return _mean([p[key] for p, _ in selection])

    steps = summary.get("steps") or {}
    return {
        "G_initial_S": g.get("initial"), "G_final_S": g.get("final"),
        "pulses_up": len(up), "dG_up_mean_S": _mean([p["conductance_S"] - b for p, b in up]),
        "pulses_down": len(down), "dG_down_mean_S": _mean([p["conductance_S"] - b for p, b in down]),
        "faradaic_charge_up_mean_C": mean(up, "faradaic_charge_C"),
        "protons_up_mean": mean(up, "faradaic_charge_C") / Q_E,
        "faradaic_charge_down_mean_C": mean(down, "faradaic_charge_C"),
        "protons_down_mean": mean(down, "faradaic_charge_C") / Q_E,
        "displacement_energy_mean_J": _mean([p["displacement_energy_J"] for p in pulses]),
        "faradaic_energy_mean_J": _mean([p["faradaic_energy_J"] for p in pulses]),
        "steps_accepted": steps.get("accepted"), "steps_rejected": steps.get("rejected"),
        "max_inventory_error": (summary.get("conservation") or {}).get("max_inventory_error"),
        "dofs": (summary.get("mesh") or {}).get("dofs"),
        "simulation_wall_time_s": summary.get("wall_time_s"),
    }


class SimulateVariant:
    """Ensemble worker: one device simulation of a variant on its group's communicator, into the
    variant's directory (series.csv, summary.json, ... as a plain run writes them)."""

    def __init__(self, case_path: Path | str, variants: list[Variant]):
        self.case_path = Path(case_path)
        self.cases = {v.id: v.case for v in variants}

    def __call__(self, task: Task, comm: MPI.Comm, workdir: Path) -> dict:
        from .run import Simulation

        summary = Simulation(self.case_path, workdir, comm=comm, progress=False, case=self.cases[task.id]).run()
        figures = variant_figures(summary)
        if summary["status"] == "interrupted":
            raise TaskInterrupted(summary["message"])
        if summary["status"] != "completed":
            raise TaskFailure(summary["message"] or summary["status"], figures)
        return figures


def run_sweep(case_path: Path | str, variants: list[Variant], outdir: Path | str, group_size: int,
              comm: MPI.Comm = MPI.COMM_WORLD, progress: bool = True) -> list[dict]:
    """Run the variants as an ensemble into ``outdir``; returns the ensemble's records."""
    from .run import _versions

    case_path = Path(case_path)
    metadata = {"case_file": str(case_path.resolve()), "case_hash": case_hash(case_path),
                "variants": len(variants), "swept_keys": list(variants[0].parameters) if variants else [],
                "simulation_versions": _versions()}
    return run_ensemble([v.task() for v in variants], SimulateVariant(case_path, variants), Path(outdir),
                        comm=comm, group_size=group_size, progress=progress, label=SWEEP_LABEL, metadata=metadata)
