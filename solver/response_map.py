"""State-sampled response maps: the conductance change of single pulses from a set of channel
states, over a grid of pulse amplitude, width and temperature, run as an MPI ensemble.

``protonfem response-map CASE`` (the case needs a ``[response_map]`` table):

1. **States.** Rank 0 runs the case's own protocol (a potentiation/depression train) once and keeps
   the full state after the read-out of ``states`` evenly spaced pulses, the initial state
   included: ``states/state<J>.npz`` (unknowns, gate voltage, conductance) and the train's
   ``train/series.csv``. A re-run with the same case reuses them.
2. **Probes.** Every (state, amplitude, width, temperature) is one ensemble task
   (:mod:`protonfem.solver.ensemble`; sub-communicators of ``group_size`` ranks, dynamic hand-out,
   finished probes skipped on a re-run): the stored state is loaded into a model built for that
   temperature (one model per temperature and process, reused), one pulse is applied and the
   device rests for ``rest`` (gate as ``protocol.rest_gate``) before the read-out.
3. **Table.** ``response_map.csv``: id, status, state, G_before_S, amplitude_V, width_s,
   temperature_K, electrolyte_thickness_m, G_after_S, dG_S, the pulse's displacement and Faradaic
   charge, protons, and the energy of each part (the input of ``protonfem fit``).
4. **Replay check.** The train is replayed from the map: starting at its initial conductance, each
   pulse adds the ΔG interpolated (in G) from the probes at the train's own amplitude, width and
   temperature. ``response_map.json`` records the largest deviation from the simulated train
   (``replay.max_relative_deviation``; the issue's bound is 2 %).

States are taken at the case's temperature; a probe at another temperature starts from the same
proton distribution (a programmed device that is then heated or cooled).
"""
from __future__ import annotations

import csv
import hashlib
import json
import math
from pathlib import Path

import numpy as np
from mpi4py import MPI

from .case import Case, CaseError, case_hash, load_case
from .ensemble import Task, TaskFailure, TaskInterrupted, run_ensemble, write_text_atomic
from .scaling import Q_E

LABEL = "response_map"
REPLAY_BOUND = 0.02


def load_response_map_case(path: Path | str) -> Case:
    case = load_case(path)
    if case.response_map is None:
        raise CaseError(f"{path}: response_map: missing table; add [response_map] with amplitudes and widths")
    return case


def probe_case(case: Case, amplitude: float, width: float, temperature: float) -> Case:
    """The case with one probe pulse as its protocol, at ``temperature``, without outputs."""
    rm = case.response_map
    base = case.protocol.trains[0]
    train = base.model_copy(update={"count": 1, "amplitude": amplitude, "width": width, "rest": rm.rest,
                                    "read_delays": []})
    protocol = case.protocol.model_copy(update={"trains": [train]})
    return case.model_copy(update={
        "protocol": protocol, "response_map": None, "sweep": None,
        "conditions": case.conditions.model_copy(update={"temperature": temperature}),
        "output": case.output.model_copy(update={"fields": [], "checkpoint_every": 0}),
    })


def tasks_of(case: Case) -> list[Task]:
    rm = case.response_map
    temps = rm.temperatures or [case.conditions.temperature]
    tasks = []
    for j in range(rm.states):
        for v in rm.amplitudes:
            for w in rm.widths:
                for T in temps:
                    tasks.append(Task(f"r{len(tasks):05d}", {"state": j, "amplitude_V": float(v), "width_s": float(w),
                                                             "temperature_K": float(T)}))
    return tasks


def _fingerprint(case_path: Path) -> str:
    return hashlib.sha256(Path(case_path).read_bytes()).hexdigest()


# ----------------------------------------------------------------------------------------------
def prepare_states(case_path: Path, case: Case, outdir: Path, comm: MPI.Comm) -> list[dict]:
    """Run the case's protocol on rank 0 and store ``states`` snapshots (collective; reused when
    present for the same case file)."""
    rm = case.response_map
    states_dir = outdir / "states"
    index_path = states_dir / "states.json"
    fp = _fingerprint(case_path)
    info = None
    if comm.rank == 0:
        if index_path.is_file():
            old = json.loads(index_path.read_text())
            if old.get("case_hash") == fp and len(old.get("states", [])) == rm.states:
                info = old
        if info is None:
            info = _run_train_for_states(case_path, case, outdir, fp)
    info = comm.bcast(info, root=0)
    if "error" in info:
        raise CaseError(f"{case_path}: response_map: the train that provides the states failed: {info['error']}")
    return info["states"]


def _run_train_for_states(case_path: Path, case: Case, outdir: Path, fp: str) -> dict:
    from .run import Simulation

    n_pulses = sum(t.count for t in case.protocol.trains)
    rm = case.response_map
    wanted = sorted(set(int(round(k)) for k in np.linspace(0, n_pulses, rm.states)))
    if len(wanted) < rm.states:
        return {"error": f"{rm.states} states need at least {rm.states - 1} pulses in the protocol, it has {n_pulses}"}
    states_dir = outdir / "states"
    states_dir.mkdir(parents=True, exist_ok=True)
    train_case = case.model_copy(update={"response_map": None, "sweep": None,
                                         "output": case.output.model_copy(update={"fields": [], "checkpoint_every": 0})})
    sim = Simulation(case_path, outdir / "train", comm=MPI.COMM_SELF, progress=False, case=train_case)
    states: list[dict] = []

    def keep(pulse_index: int, G: float):
        j = wanted.index(pulse_index)
        m = sim.model
        path = states_dir / f"state{j}.npz"
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez(tmp, x=m.x_n.x.array)
        tmp.replace(path)
        states.append({"state": j, "after_pulse": pulse_index, "G_S": G, "gate_voltage_V": sim.stepper.gate_voltage,
                       "file": path.name})

    def on_pulse(p):
        if p.index in wanted:
            keep(p.index, sim._rows[-1]["conductance_S"])

    sim.on_pulse_done = on_pulse
    original = sim._bookkeeping_reset

    def initial_state():  # the state before the first pulse (bookkeeping reset is the last set-up step)
        original()
        if 0 in wanted:
            keep(0, sim.readout.conductance())

    sim._bookkeeping_reset = initial_state
    summary = sim.run()
    if summary["status"] != "completed":
        return {"error": summary["message"] or summary["status"]}
    info = {"case_hash": fp, "states": sorted(states, key=lambda s: s["state"]),
            "train_pulses": n_pulses, "train_wall_time_s": summary["wall_time_s"]}
    write_text_atomic(states_dir / "states.json", json.dumps(info, indent=1))
    return info


# ----------------------------------------------------------------------------------------------
class Probe:
    """Ensemble worker: one probe pulse from a stored state. Keeps one model per temperature
    (the mesh and compiled forms are the expensive part of a short probe)."""

    def __init__(self, case_path: Path, case: Case, outdir: Path, states: list[dict]):
        self.case_path, self.case, self.outdir = Path(case_path), case, Path(outdir)
        self.states = {s["state"]: s for s in states}
        self._models: dict = {}

    def __call__(self, task: Task, comm: MPI.Comm, workdir: Path) -> dict:
        from .run import Simulation

        par = task.parameters
        state = self.states[par["state"]]
        pcase = probe_case(self.case, par["amplitude_V"], par["width_s"], par["temperature_K"])
        x = np.load(self.outdir / "states" / state["file"])["x"]
        models = self._models
        key = (par["temperature_K"], comm.size)

        class ProbeSimulation(Simulation):
            def _build_model(self, partitioner=None):
                if key not in models:
                    models[key] = super()._build_model(partitioner)
                return models[key]

            def _equilibrate(self):
                m = self.model
                if comm.size > 1 or x.size != m.x.x.array.size:
                    raise TaskFailure("stored states are serial 1-D arrays: run the response map with group_size 1")
                for f in (m.x, m.x_n, m.x_nm1):
                    f.x.array[:] = x
                m.set_line_search("basic")
                return 0

            def _initial_gate_voltage(self):
                return state["gate_voltage_V"]

        sim = ProbeSimulation(self.case_path, workdir, comm=comm, progress=False, case=pcase)
        summary = sim.run()
        if summary["status"] == "interrupted":
            raise TaskInterrupted(summary["message"])
        if summary["status"] != "completed":
            raise TaskFailure(summary["message"] or summary["status"])
        p = summary["per_pulse"][0]
        g0 = summary["conductance_S"]["initial"]
        return {"G_before_S": g0, "electrolyte_thickness_m": self.case.geometry.electrolyte_thickness,
                "G_after_S": p["conductance_S"], "dG_S": p["conductance_S"] - g0,
                "displacement_charge_C": p["displacement_charge_C"], "faradaic_charge_C": p["faradaic_charge_C"],
                "protons": p["faradaic_charge_C"] / Q_E, "displacement_energy_J": p["displacement_energy_J"],
                "faradaic_energy_J": p["faradaic_energy_J"], "steps_accepted": summary["steps"]["accepted"]}


# ----------------------------------------------------------------------------------------------
def replay_train(case: Case, train_series: Path, rows: list[dict]) -> dict:
    """Replay the case's train from the map: G_{k+1} = G_k + dG(G_k) interpolated from the probes
    at the train's own pulse condition; compare with the simulated train's read-outs."""
    with open(train_series, newline="") as fh:
        series = list(csv.DictReader(fh))
    g_train = [float(r["conductance_S"]) for r in series if r["event"] in ("initial", "read")]
    amps = [float(r["pulse_amplitude_V"]) for r in series if r["event"] == "read"]
    T0 = case.conditions.temperature
    curves = {}
    for train in case.protocol.trains:
        sel = [r for r in rows if r["status"] == "completed" and math.isclose(r["amplitude_V"], train.amplitude)
               and math.isclose(r["width_s"], train.width) and math.isclose(r["temperature_K"], T0)]
        if len(sel) < 2:
            return {"checked": False, "reason": f"the map has no probes at the train's {train.amplitude:g} V / "
                                                f"{train.width:g} s / {T0:g} K (add them to amplitudes and widths)"}
        sel.sort(key=lambda r: r["G_before_S"])
        curves[train.amplitude] = (np.array([r["G_before_S"] for r in sel]), np.array([r["dG_S"] for r in sel]))
    g = [g_train[0]]
    for v in amps:
        gb, dg = curves[v]
        g.append(g[-1] + float(np.interp(g[-1], gb, dg)))
    dev = [abs(a - b) / b for a, b in zip(g, g_train)]
    # The change over the train is what the map must reproduce: the deviation relative to it too.
    swing = max(g_train) - min(g_train)
    return {"checked": True, "pulses": len(amps), "max_relative_deviation": max(dev),
            "max_deviation_of_swing": max(abs(a - b) for a, b in zip(g, g_train)) / swing if swing > 0 else 0.0,
            "bound": REPLAY_BOUND, "passed": max(dev) <= REPLAY_BOUND,
            "G_replay_S": g, "G_train_S": g_train}


def run_response_map(case_path: Path | str, outdir: Path | str, comm: MPI.Comm = MPI.COMM_WORLD,
                     group_size: int | None = None, progress: bool = True) -> dict:
    """States, probes, table and replay check; returns the response_map.json contents (all ranks)."""
    from .run import _versions

    case_path, outdir = Path(case_path), Path(outdir)
    case = load_response_map_case(case_path)
    if case.geometry.dimension != 1:
        raise CaseError(f"{case_path}: geometry.dimension: response maps run one 1-D stack per rank (got "
                        f"{case.geometry.dimension}-D); sample 2-D devices with `protonfem sweep`")
    group = group_size or case.response_map.group_size
    if comm.rank == 0:
        outdir.mkdir(parents=True, exist_ok=True)
    comm.Barrier()
    import time
    t0 = time.perf_counter()
    states = prepare_states(case_path, case, outdir, comm)
    t_states = time.perf_counter() - t0
    tasks = tasks_of(case)
    metadata = {"case_file": str(case_path.resolve()), "case_hash": case_hash(case_path), "states": states,
                "grid": case.response_map.model_dump(), "simulation_versions": _versions()}
    records = run_ensemble(tasks, Probe(case_path, case, outdir, states), outdir, comm=comm, group_size=group,
                           progress=progress, label=LABEL, metadata=metadata)
    rows = [{**r["parameters"], **(r.get("figures") or {}), "status": r["status"]} for r in records]
    result = None
    if comm.rank == 0:
        replay = replay_train(case, outdir / "train" / "series.csv", rows)
        meta_path = outdir / f"{LABEL}.json"
        meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
        meta.update({"case": case.name, "grid": case.response_map.model_dump(), "states": states, "replay": replay,
                     "states_wall_time_s": t_states, "wall_time_s": time.perf_counter() - t0,
                     "probes": len(tasks), "completed": sum(r["status"] == "completed" for r in rows)})
        write_text_atomic(meta_path, json.dumps(meta, indent=1))
        result = meta
    return comm.bcast(result, root=0)
