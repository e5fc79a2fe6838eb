"""Pulse events of device runs, response maps and sweeps as ONE tidy table (NumPy, no DOLFINx).

Three inputs, one output:

* a run directory (``protonfem run``): ``series.csv`` (one ``read`` row per pulse, after its rest)
  plus ``summary.json`` and the case file it names (pulse width per train, temperature,
  electrolyte thickness);
* a response-map directory: ``response_map.csv`` (one row per state and pulse condition) and
  ``response_map.json`` (provenance);
* a sweep directory (``protonfem sweep``): ``sweep.csv`` and ``variants/<id>/`` run directories,
  each a device of the population (the ``variant`` column keeps them apart).

Every row of the :class:`PulseTable` is one pulse: the state before and after, the condition, the
charge and energy the gate drew, and where it came from.  Anything missing or malformed raises
:class:`PulseDataError` with one line naming the file and what is missing; rows that cannot be used
(failed map points, a read-out that is not finite) are skipped with a :class:`PulseDataWarning`.
"""
from __future__ import annotations

import csv
import json
import math
import tomllib
import warnings
from pathlib import Path

import numpy as np

from protonfem.crossbar.families import E_CHARGE

__all__ = ["PulseTable", "PulseDataError", "PulseDataWarning", "load_pulse_data", "load_run", "load_response_map",
           "load_sweep", "load_rests", "input_kind", "NUMERIC_COLUMNS", "TEXT_COLUMNS"]

#: Numeric columns of the tidy table (SI units, NaN where the source has no value).
NUMERIC_COLUMNS = (
    "pulse",                      # pulse index in its run (1-based) or the response-map row id
    "G_before_S", "G_after_S", "dG_S",
    "direction",                  # +1 potentiating (V > 0), -1 depressing (V < 0)
    "amplitude_V", "width_s", "temperature_K", "electrolyte_thickness_m",
    "displacement_charge_C", "faradaic_charge_C",
    "protons",                    # |Faradaic charge| / e: protons moved through the gate stack
    "displacement_energy_J", "faradaic_energy_J",
    "time_s",                     # time of the read-out (runs); NaN for response maps
)
#: Text columns: the input directory, its case hash, the sweep variant id ('' outside sweeps), state label.
TEXT_COLUMNS = ("source", "case_hash", "variant", "state")

DEFAULT_TEMPERATURE_K = 300.0  # the case schema's default when [conditions] temperature is absent


class PulseDataError(ValueError):
    """An input directory or file that cannot be read as pulse data (one-line message)."""


class PulseDataWarning(UserWarning):
    """Rows skipped or values assumed while loading."""


class PulseTable:
    """Columns of equal length (NumPy arrays), one row per pulse, plus the provenance of the inputs.

    ``sources`` lists one dict per input directory: ``path``, ``kind`` (run, response_map, sweep),
    ``case``, ``case_hash``, ``versions``; ``rests`` holds the conductance read-outs over time of
    run directories (for retention plots), keyed by source path."""

    def __init__(self, columns: dict[str, np.ndarray], sources: list[dict] | None = None,
                 rests: dict[str, dict] | None = None):
        n = {len(v) for v in columns.values()}
        if len(n) > 1:
            raise ValueError(f"columns of unequal length: {sorted(n)}")
        self.columns = {k: np.asarray(columns[k], dtype=object if k in TEXT_COLUMNS else float)
                        for k in NUMERIC_COLUMNS + TEXT_COLUMNS}
        self.sources = sources or []
        self.rests = rests or {}

    def __len__(self) -> int:
        return len(self.columns["dG_S"])

    def __getitem__(self, name: str) -> np.ndarray:
        return self.columns[name]

    def select(self, mask) -> "PulseTable":
        mask = np.asarray(mask)
        return PulseTable({k: v[mask] for k, v in self.columns.items()}, self.sources, self.rests)

    @staticmethod
    def concat(tables: list["PulseTable"]) -> "PulseTable":
        cols = {k: np.concatenate([t.columns[k] for t in tables]) for k in NUMERIC_COLUMNS + TEXT_COLUMNS}
        sources = [s for t in tables for s in t.sources]
        rests = {k: v for t in tables for k, v in t.rests.items()}
        return PulseTable(cols, sources, rests)

    def condition_keys(self) -> list[tuple]:
        """Per row: (direction, |V|, width, T, d) rounded so equal conditions compare equal."""
        return [(int(d), round(abs(v), 9), float(f"{w:.9g}"), float(f"{t:.9g}"), float(f"{th:.9g}"))
                for d, v, w, t, th in zip(self["direction"], self["amplitude_V"], self["width_s"],
                                          self["temperature_K"], self["electrolyte_thickness_m"])]

    def to_csv(self, path) -> None:
        names = TEXT_COLUMNS + NUMERIC_COLUMNS
        with open(path, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(names)
            for i in range(len(self)):
                w.writerow([self.columns[k][i] if k in TEXT_COLUMNS else f"{self.columns[k][i]:.12g}" for k in names])


# ----------------------------------------------------------------------------------------------
def _float(x) -> float:
    try:
        return float(x)
    except (TypeError, ValueError):
        return math.nan


def _read_csv(path: Path, required: tuple[str, ...]) -> list[dict]:
    try:
        with open(path, newline="") as fh:
            reader = csv.DictReader(fh)
            header = reader.fieldnames or []
            rows = list(reader)
    except FileNotFoundError:
        raise PulseDataError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise PulseDataError(f"{path}: cannot read as CSV ({e})") from None
    missing = [c for c in required if c not in header]
    if missing:
        raise PulseDataError(f"{path}: missing column(s) {', '.join(missing)}")
    return rows


def _read_json(path: Path, required: bool = True) -> dict:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        if required:
            raise PulseDataError(f"{path}: file not found") from None
        return {}
    except json.JSONDecodeError as e:
        raise PulseDataError(f"{path}: not valid JSON (line {e.lineno}: {e.msg})") from None
    if not isinstance(data, dict):
        raise PulseDataError(f"{path}: expected a JSON object")
    return data


INPUT_FILES = {"sweep.csv": "sweep", "response_map.csv": "response_map", "series.csv": "run"}


def _as_dir(path) -> Path:
    """A directory, also when given as the path of its main file (results/x/series.csv)."""
    path = Path(path)
    return path.parent if path.is_file() and path.name in INPUT_FILES else path


def input_kind(path: Path) -> str:
    """'run', 'response_map' or 'sweep' from the files a directory holds."""
    path = _as_dir(path)
    if not path.is_dir():
        raise PulseDataError(f"{path}: not a directory (expected a run, response-map or sweep directory)")
    for name, kind in INPUT_FILES.items():
        if (path / name).is_file():
            return kind
    raise PulseDataError(f"{path}: holds none of series.csv (run), response_map.csv (response map), "
                         "sweep.csv (sweep)")


# ----------------------------------------------------------------------------------------------
# Run directories
# ----------------------------------------------------------------------------------------------
SERIES_REQUIRED = ("time_s", "event", "pulse", "train", "pulse_amplitude_V", "conductance_S")


def _case_file(run_dir: Path, summary: dict) -> Path:
    """The case file a run came from: summary.json's case_file, else the same name or a single
    .toml inside the run directory (results copied off the machine that ran them)."""
    named = summary.get("case_file")
    cands = []
    if isinstance(named, str) and named:
        cands += [Path(named), run_dir / Path(named).name]
    tomls = sorted(run_dir.glob("*.toml"))
    if len(tomls) == 1:
        cands.append(tomls[0])
    for c in cands:
        if c.is_file():
            return c
    what = f"case file {named!r} (summary.json case_file) not found" if named else \
        "summary.json has no case_file and the directory holds no single .toml"
    raise PulseDataError(f"{run_dir / 'summary.json'}: {what}; needed for the pulse width, temperature and "
                         "electrolyte thickness")


def _run_conditions(run_dir: Path, summary: dict) -> dict:
    """Pulse widths per train, temperature and electrolyte thickness of a run.

    summary.json is read first ("protocol": {"trains": [...]}, "conditions", "geometry", the way a
    summary may carry them); what it lacks comes from the case file (TOML)."""
    out: dict = {}
    proto = summary.get("protocol") if isinstance(summary.get("protocol"), dict) else {}
    trains = proto.get("trains") if isinstance(proto.get("trains"), list) else None
    if trains and all(isinstance(t, dict) and "width" in t for t in trains):
        out["widths"] = [_float(t["width"]) for t in trains]
    cond = summary.get("conditions") if isinstance(summary.get("conditions"), dict) else {}
    geom = summary.get("geometry") if isinstance(summary.get("geometry"), dict) else {}
    if "temperature" in cond:
        out["temperature"] = _float(cond["temperature"])
    if "electrolyte_thickness" in geom:
        out["thickness"] = _float(geom["electrolyte_thickness"])
    if {"widths", "temperature", "thickness"} <= out.keys():
        return out
    path = _case_file(run_dir, summary)
    try:
        case = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise PulseDataError(f"{path}: cannot read the case file ({e})") from None
    if "widths" not in out:
        tr = case.get("protocol", {}).get("trains")
        if not isinstance(tr, list) or not tr:
            raise PulseDataError(f"{path}: missing [[protocol.trains]] (needed for the pulse widths)")
        for k, t in enumerate(tr):
            if not isinstance(t, dict) or "width" not in t:
                raise PulseDataError(f"{path}: [[protocol.trains]] number {k + 1} has no width")
        out["widths"] = [_float(t["width"]) for t in tr]
    if "temperature" not in out:
        out["temperature"] = _float(case.get("conditions", {}).get("temperature", DEFAULT_TEMPERATURE_K))
    if "thickness" not in out:
        th = case.get("geometry", {}).get("electrolyte_thickness")
        if th is None:
            raise PulseDataError(f"{path}: missing [geometry] electrolyte_thickness")
        out["thickness"] = _float(th)
    return out


def _provenance(path: Path, kind: str, meta: dict) -> dict:
    return {"path": str(path), "kind": kind, "case": meta.get("case"), "case_hash": meta.get("case_hash"),
            "versions": meta.get("versions") if isinstance(meta.get("versions"), dict) else {}}


def load_run(run_dir, variant: str = "") -> PulseTable:
    """The pulses of one ``protonfem run`` output directory."""
    run_dir = Path(run_dir)
    series = run_dir / "series.csv"
    rows = _read_csv(series, SERIES_REQUIRED)
    summary = _read_json(run_dir / "summary.json", required=False)
    if not summary:
        raise PulseDataError(f"{run_dir / 'summary.json'}: file not found or empty (needed for the case file: "
                             "pulse width, temperature, electrolyte thickness)")
    cond = _run_conditions(run_dir, summary)
    widths = cond["widths"]
    chash = str(summary.get("case_hash") or "")
    reads = [r for r in rows if r["event"] in ("initial", "read")]
    cols: dict[str, list] = {k: [] for k in NUMERIC_COLUMNS + TEXT_COLUMNS}
    g_prev = math.nan
    skipped = rests = 0
    for r in reads:
        g = _float(r["conductance_S"])
        if r["event"] == "initial":
            g_prev = g
            continue
        train = int(_float(r["train"]))
        if not 0 <= train < len(widths):
            raise PulseDataError(f"{series}: pulse {r['pulse']} belongs to train {train}, but the case has "
                                 f"{len(widths)} train(s)")
        if not (math.isfinite(g) and math.isfinite(g_prev)):
            skipped += 1
            g_prev = g
            continue
        V = _float(r["pulse_amplitude_V"])
        if V == 0.0:  # a zero-amplitude "pulse" is a read-out during a rest, not a programming pulse
            rests += 1
            g_prev = g
            continue
        qf = _float(r.get("pulse_faradaic_charge_C"))
        vals = {
            "pulse": _float(r["pulse"]), "G_before_S": g_prev, "G_after_S": g, "dG_S": g - g_prev,
            "direction": 1.0 if V > 0 else -1.0, "amplitude_V": V, "width_s": widths[train],
            "temperature_K": cond["temperature"], "electrolyte_thickness_m": cond["thickness"],
            "displacement_charge_C": _float(r.get("pulse_displacement_charge_C")), "faradaic_charge_C": qf,
            "protons": abs(qf) / E_CHARGE, "displacement_energy_J": _float(r.get("pulse_displacement_energy_J")),
            "faradaic_energy_J": _float(r.get("pulse_faradaic_energy_J")), "time_s": _float(r["time_s"]),
            "source": str(run_dir), "case_hash": chash, "variant": variant, "state": "",
        }
        for k, v in vals.items():
            cols[k].append(v)
        g_prev = g
    if skipped:
        warnings.warn(f"{series}: skipped {skipped} pulse(s) whose read-out (or the one before) is not finite",
                      PulseDataWarning, stacklevel=2)
    if rests:
        warnings.warn(f"{series}: {rests} zero-amplitude pulse(s) are rests, kept for retention only",
                      PulseDataWarning, stacklevel=2)
    if not cols["dG_S"]:
        raise PulseDataError(f"{series}: no pulse with finite read-outs before and after (need 'initial' and "
                             "'read' rows)")
    return PulseTable(cols, [_provenance(run_dir, "run", summary)], {str(run_dir): load_rests(run_dir, rows)})


def load_rests(run_dir, rows: list[dict] | None = None) -> dict:
    """Finite conductance read-outs against time (events initial/read/step), each keyed by the last
    programming pulse (non-zero amplitude) before it: the raw material of a retention plot.  A rest
    is the open-circuit time after that pulse, through any zero-amplitude "pulses" (a protocol's way
    of reading at intervals over a long rest) until the next programming pulse."""
    if rows is None:
        rows = _read_csv(Path(run_dir) / "series.csv", SERIES_REQUIRED)
    t, g, p, ends = [], [], [], {0: 0.0}
    last = 0
    for r in rows:
        if r["event"] == "pulse_end" and _float(r["pulse_amplitude_V"]) != 0.0:
            last = int(_float(r["pulse"]))
            ends[last] = _float(r["time_s"])
        if r["event"] in ("initial", "read", "rest_read", "step"):
            gv = _float(r["conductance_S"])
            if math.isfinite(gv):
                t.append(_float(r["time_s"]))
                g.append(gv)
                p.append(last)
    return {"time_s": np.asarray(t), "G_S": np.asarray(g), "pulse": np.asarray(p, int), "pulse_end_s": ends}


# ----------------------------------------------------------------------------------------------
# Response maps
# ----------------------------------------------------------------------------------------------
MAP_REQUIRED = ("id", "state", "G_before_S", "amplitude_V", "width_s", "temperature_K", "electrolyte_thickness_m",
                "G_after_S", "dG_S", "status")


def load_response_map(map_dir, variant: str = "") -> PulseTable:
    """The completed rows of a response-map directory (failed rows are skipped with a warning)."""
    map_dir = Path(map_dir)
    path = map_dir / "response_map.csv"
    rows = _read_csv(path, MAP_REQUIRED)
    meta = _read_json(map_dir / "response_map.json", required=False)
    chash = str(meta.get("case_hash") or "")
    cols: dict[str, list] = {k: [] for k in NUMERIC_COLUMNS + TEXT_COLUMNS}
    failed = [r["id"] for r in rows if r["status"] != "completed"]
    if failed:
        warnings.warn(f"{path}: skipped {len(failed)} row(s) whose status is not 'completed' "
                      f"(ids {', '.join(failed[:5])}{', ...' if len(failed) > 5 else ''})",
                      PulseDataWarning, stacklevel=2)
    bad = 0
    for r in rows:
        if r["status"] != "completed":
            continue
        gb, ga, V = _float(r["G_before_S"]), _float(r["G_after_S"]), _float(r["amplitude_V"])
        dg = _float(r["dG_S"])
        if not math.isfinite(dg):
            dg = ga - gb
        if not (math.isfinite(gb) and math.isfinite(dg) and math.isfinite(V) and V != 0):
            bad += 1
            continue
        qf = _float(r.get("faradaic_charge_C"))
        protons = _float(r.get("protons"))
        if not math.isfinite(protons):
            protons = abs(qf) / E_CHARGE
        vals = {
            "pulse": _float(r["id"]), "G_before_S": gb, "G_after_S": gb + dg, "dG_S": dg,
            "direction": 1.0 if V > 0 else -1.0, "amplitude_V": V, "width_s": _float(r["width_s"]),
            "temperature_K": _float(r["temperature_K"]), "electrolyte_thickness_m": _float(r["electrolyte_thickness_m"]),
            "displacement_charge_C": _float(r.get("displacement_charge_C")), "faradaic_charge_C": qf,
            "protons": protons, "displacement_energy_J": _float(r.get("displacement_energy_J")),
            "faradaic_energy_J": _float(r.get("faradaic_energy_J")), "time_s": math.nan,
            "source": str(map_dir), "case_hash": chash, "variant": variant, "state": str(r["state"]),
        }
        for k, v in vals.items():
            cols[k].append(v)
    if bad:
        warnings.warn(f"{path}: skipped {bad} completed row(s) with a non-finite state, step or zero amplitude",
                      PulseDataWarning, stacklevel=2)
    for k in ("width_s", "temperature_K", "electrolyte_thickness_m"):
        v = np.asarray(cols[k], float)
        if np.any(~np.isfinite(v) | (v <= 0)):
            raise PulseDataError(f"{path}: column {k} needs positive finite values in every completed row")
    if not cols["dG_S"]:
        raise PulseDataError(f"{path}: no completed row")
    return PulseTable(cols, [_provenance(map_dir, "response_map", meta)])


# ----------------------------------------------------------------------------------------------
# Sweeps
# ----------------------------------------------------------------------------------------------
def load_sweep(sweep_dir) -> tuple[PulseTable, list[dict]]:
    """All completed variants of a sweep (the ``variant`` column names each) and the sweep.csv rows
    (swept values per variant id)."""
    sweep_dir = Path(sweep_dir)
    path = sweep_dir / "sweep.csv"
    rows = _read_csv(path, ("id", "status"))
    tables, used, skipped = [], [], []
    for r in rows:
        vid = str(r["id"])
        vdir = sweep_dir / "variants" / vid
        if r["status"] != "completed":
            skipped.append(f"{vid} (status {r['status']})")
            continue
        if not vdir.is_dir():
            skipped.append(f"{vid} (no {vdir})")
            continue
        kind = input_kind(vdir)
        t = load_run(vdir, variant=vid) if kind == "run" else load_response_map(vdir, variant=vid)
        tables.append(t)
        used.append(dict(r))
    if skipped:
        warnings.warn(f"{path}: skipped variant(s) {', '.join(skipped[:5])}{', ...' if len(skipped) > 5 else ''}",
                      PulseDataWarning, stacklevel=2)
    if not tables:
        raise PulseDataError(f"{path}: no completed variant with a directory under {sweep_dir / 'variants'}")
    table = PulseTable.concat(tables)
    meta = _read_json(sweep_dir / "sweep.json", required=False)
    table.sources.insert(0, _provenance(sweep_dir, "sweep", meta))
    return table, used


def load_pulse_data(paths) -> tuple[PulseTable, list[dict]]:
    """One table from any mix of run, response-map and sweep directories; also the sweep rows
    (empty without a sweep).  Variant ids of several sweeps are prefixed with their directory."""
    paths = [_as_dir(p) for p in paths]
    if not paths:
        raise PulseDataError("no input directory given")
    tables, sweep_rows = [], []
    n_sweeps = sum(input_kind(p) == "sweep" for p in paths)
    for p in paths:
        kind = input_kind(p)
        if kind == "run":
            tables.append(load_run(p))
        elif kind == "response_map":
            tables.append(load_response_map(p))
        else:
            t, rows = load_sweep(p)
            if n_sweeps > 1:
                t.columns["variant"] = np.array([f"{p.name}/{v}" for v in t["variant"]], dtype=object)
                rows = [dict(r, id=f"{p.name}/{r['id']}") for r in rows]
            tables.append(t)
            sweep_rows += rows
    return PulseTable.concat(tables), sweep_rows
