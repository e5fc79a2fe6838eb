"""Case files: TOML mapped one to one onto typed, validated objects.

Units: every quantity in a case file is SI (metres, seconds, volts, kelvin, m^-3, m^2/s, S/m); the
unit of each key is in its ``Field`` description (``protonfem validate CASE --describe`` prints
them). Non-dimensionalisation happens once, in :mod:`protonfem.solver.scaling`.

Every error a user can make in a file is turned into one line naming the file, the key and what
was expected (:class:`CaseError`), never a traceback.
"""
from __future__ import annotations

import hashlib
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

Positive = Annotated[float, Field(gt=0)]
NonNegative = Annotated[float, Field(ge=0)]


class CaseError(Exception):
    """A case file that cannot be used; the message is one line: ``file: key: what was expected``."""


class _Strict(BaseModel):
    # Unknown keys are errors (a typo must not silently fall back to a default);
    # ints are accepted for floats but strings are not coerced to numbers.
    model_config = ConfigDict(extra="forbid", strict=False, frozen=True, allow_inf_nan=False)


LayerName = Literal["channel", "electrolyte", "reservoir"]


class Geometry(_Strict):
    dimension: Literal[1, 2, 3] = Field(1, description="spatial dimension of the model: 1 (vertical stack), 2 (cross-section), 3 (device: the cross-section across the channel width)")
    channel_thickness: Positive = Field(description="WO3 channel thickness [m]")
    electrolyte_thickness: Positive = Field(description="PSG electrolyte thickness [m]")
    reservoir_thickness: Positive = Field(description="Pd/H reservoir (gate) thickness [m]")
    channel_length: Positive = Field(description="source-drain distance [m]")
    channel_width: Positive = Field(description="channel width, out of the modelled plane [m]")

    def layers(self) -> list[tuple[str, float]]:
        """The stack from bottom (substrate side) to top (gate contact)."""
        return [
            ("channel", self.channel_thickness),
            ("electrolyte", self.electrolyte_thickness),
            ("reservoir", self.reservoir_thickness),
        ]

    @property
    def total_thickness(self) -> float:
        return self.channel_thickness + self.electrolyte_thickness + self.reservoir_thickness


class MeshSettings(_Strict):
    h_min: Positive = Field(2e-11, description="element size at every interface and electrode, across the layers [m]")
    h_max: Positive = Field(1e-9, description="largest element size across the layers [m]")
    growth: Annotated[float, Field(gt=1.0, le=2.0)] = Field(1.25, description="geometric growth ratio of neighbouring elements [-]")
    lateral_h_min: Positive = Field(2e-9, description="lateral element size at the source and drain (2-D) [m]")
    lateral_h_max: Positive = Field(1e-8, description="largest lateral element size (2-D) [m]")
    width_h: Positive = Field(1e-8, description="element size across the channel width, uniform (3-D) [m]")

    @model_validator(mode="after")
    def _ordered(self):
        if self.h_min > self.h_max:
            raise ValueError(f"h_min ({self.h_min:g} m) must not exceed h_max ({self.h_max:g} m)")
        if self.lateral_h_min > self.lateral_h_max:
            raise ValueError(f"lateral_h_min ({self.lateral_h_min:g} m) must not exceed lateral_h_max ({self.lateral_h_max:g} m)")
        return self


class Conditions(_Strict):
    temperature: Annotated[float, Field(gt=0, le=2000)] = Field(300.0, description="device temperature [K]")


class Activated(_Strict):
    """Arrhenius temperature dependence of a material's diffusivity."""

    activation_energy: NonNegative = Field(0.0, description="activation energy of the diffusivity [eV]; the diffusivity given is its value at reference_temperature")
    reference_temperature: Annotated[float, Field(gt=0)] = Field(300.0, description="temperature at which the diffusivity is given [K]")


class Reservoir(Activated):
    """Pd/H gate: an electronic conductor (equipotential at the gate voltage) holding hydrogen that
    it exchanges with the electrolyte: a finite amount (closed stack), or an ideal reservoir at a
    fixed hydrogen chemical potential (the protons it supplies are counted through the flux)."""

    kind: Literal["finite", "fixed_potential"] = Field("finite", description="'finite': a closed, conserved hydrogen inventory; 'fixed_potential': ideal reservoir at the rest chemical potential")
    site_density: Positive = Field(description="interstitial H sites (Pd atoms) [m^-3]")
    proton_density: Positive = Field(description="hydrogen density at rest [m^-3]")
    diffusivity: Positive = Field(description="H diffusivity in the metal [m^2/s]")


class Electrolyte(Activated):
    """Proton-conducting glass: mobile protons over an immobile negative background.

    Low-field diffusivity either given directly (``diffusivity``, with an optional Arrhenius
    ``activation_energy``) or from the hopping parameters, D0 = a^2 nu exp(-W/kT)
    (``attempt_frequency`` and ``barrier``), so that the sinh law's prefactor 2 a nu exp(-W/kT)
    and the low-field mobility stay consistent (Einstein relation) at every temperature.
    """

    relative_permittivity: Positive = Field(description="relative permittivity [-]")
    site_density: Positive = Field(description="proton sites (upper bound of the mobile density) [m^-3]")
    proton_density: Positive = Field(description="mobile proton density at rest [m^-3]")
    fixed_charge_density: NonNegative | None = Field(None, description="immobile negative background, in elementary charges [m^-3]; default: equal to proton_density (neutral glass)")
    diffusivity: Positive | None = Field(None, description="low-field proton diffusivity D0 at reference_temperature [m^2/s] (or give attempt_frequency and barrier)")
    hopping_distance: NonNegative = Field(0.0, description="hop distance a of the sinh high-field law [m]; 0 gives ordinary Nernst-Planck drift")
    attempt_frequency: Positive | None = Field(None, description="hop attempt frequency nu [1/s] (with barrier, instead of diffusivity)")
    barrier: NonNegative | None = Field(None, description="hop barrier W [eV] (with attempt_frequency, instead of diffusivity)")

    @model_validator(mode="after")
    def _one_diffusivity(self):
        hop = (self.attempt_frequency is not None, self.barrier is not None)
        if self.diffusivity is not None and any(hop):
            raise ValueError("give either diffusivity or attempt_frequency and barrier, not both")
        if self.diffusivity is None:
            if not all(hop):
                raise ValueError("needs diffusivity, or attempt_frequency and barrier")
            if self.hopping_distance == 0:
                raise ValueError("attempt_frequency and barrier need hopping_distance > 0")
            if self.activation_energy:
                raise ValueError("activation_energy is implied by barrier; do not give both")
        return self

    def diffusivity_at(self, temperature: float) -> float:
        """Low-field diffusivity at ``temperature`` [m^2/s]."""
        import math
        if self.diffusivity is None:
            k_ev = 8.617333262e-5
            return self.hopping_distance**2 * self.attempt_frequency * math.exp(-self.barrier / (k_ev * temperature))
        return _arrhenius(self.diffusivity, self.activation_energy, temperature, self.reference_temperature)

    @property
    def background(self) -> float:
        return self.proton_density if self.fixed_charge_density is None else self.fixed_charge_density


class Conductivity(_Strict):
    """Electronic conductivity of the channel as a function of its proton density c."""

    law: Literal["power", "exponential", "table"] = Field(description="power: s_ref (c/c_ref)^p; exponential: s_ref exp((c-c_ref)/c_scale); table: log-log interpolation")
    reference_conductivity: Positive | None = Field(None, description="s_ref [S/m] (power, exponential)")
    reference_density: Positive | None = Field(None, description="c_ref [m^-3] (power, exponential)")
    exponent: Positive | None = Field(None, description="p [-] (power)")
    density_scale: Positive | None = Field(None, description="c_scale [m^-3] (exponential)")
    densities: list[Positive] | None = Field(None, description="table abscissae, increasing [m^-3] (table)")
    conductivities: list[Positive] | None = Field(None, description="table values [S/m] (table)")

    @model_validator(mode="after")
    def _law_parameters(self):
        needed = {
            "power": ("reference_conductivity", "reference_density", "exponent"),
            "exponential": ("reference_conductivity", "reference_density", "density_scale"),
            "table": ("densities", "conductivities"),
        }[self.law]
        for key in needed:
            if getattr(self, key) is None:
                raise ValueError(f"law '{self.law}' needs key '{key}'")
        unused = [k for k in ("reference_conductivity", "reference_density", "exponent", "density_scale", "densities", "conductivities")
                  if k not in needed and getattr(self, k) is not None]
        if unused:
            raise ValueError(f"law '{self.law}' does not use key(s) {', '.join(unused)}")
        if self.law == "table":
            d, s = self.densities, self.conductivities
            if len(d) != len(s) or len(d) < 2:
                raise ValueError("densities and conductivities must be lists of equal length >= 2")
            if any(b <= a for a, b in zip(d, d[1:])):
                raise ValueError("densities must be strictly increasing")
        return self


class DiffusivityTable(_Strict):
    """Concentration-dependent diffusivity D(c), log-log interpolated, constant beyond the ends
    (H in WO3: ~1e-13 m^2/s at low content falling to ~1e-15 m^2/s at high content)."""

    densities: list[Positive] = Field(min_length=2, description="proton densities, increasing [m^-3]")
    diffusivities: list[Positive] = Field(min_length=2, description="diffusivities at those densities and reference_temperature [m^2/s]")

    @model_validator(mode="after")
    def _shape(self):
        if len(self.densities) != len(self.diffusivities):
            raise ValueError("densities and diffusivities must have equal length")
        if any(b <= a for a, b in zip(self.densities, self.densities[1:])):
            raise ValueError("densities must be strictly increasing")
        return self


class RegularSolution(_Strict):
    """Phase-separating channel (Li, Shen, del Alamo, Bazant 2025): chemical potential
    kT ln(x/(1-x)) + Omega (1 - 2x) - kappa lap(x) of the site fraction x."""

    interaction_energy: NonNegative = Field(description="regular-solution interaction Omega [eV]; above 2kT the channel phase-separates")
    gradient_coefficient: Positive = Field(description="gradient-energy coefficient kappa [eV m^2]; sets the interface width sqrt(kappa/Omega)")


class Channel(Activated):
    """WO3 channel: inserted protons, electrons in equilibrium with the grounded source/drain."""

    relative_permittivity: Positive = Field(description="relative permittivity [-]")
    site_density: Positive = Field(description="proton sites (W atoms) [m^-3]")
    proton_density: Positive = Field(description="inserted proton density at rest [m^-3]")
    diffusivity: Positive = Field(description="proton diffusivity at reference_temperature [m^2/s] (at the rest density when diffusivity_table is given, which then scales it)")
    diffusivity_table: DiffusivityTable | None = Field(None, description="concentration-dependent diffusivity D(c)")
    donor_density: NonNegative = Field(0.0, description="immobile positive background (e.g. oxygen vacancies) compensated by electrons [m^-3]")
    regular_solution: RegularSolution | None = Field(None, description="phase-separating (regular-solution + gradient-energy) chemical potential; default ideal")
    conductivity: Conductivity


class Interface(_Strict):
    """Proton transfer across an interface: continuous electrochemical potential (fast kinetics),
    or Butler-Volmer kinetics j = j0 [exp(alpha dw) - exp(-(1 - alpha) dw)], dw the jump of the
    proton electrochemical potential in kT, j0 optionally scaled with the site occupancies."""

    kinetics: Literal["continuous", "butler_volmer"] = Field("continuous", description="'continuous' (the fast-kinetics limit) or 'butler_volmer'")
    exchange_rate: Positive | None = Field(None, description="exchange rate j0 at rest and reference_temperature [protons m^-2 s^-1] (butler_volmer)")
    transfer_coefficient: Annotated[float, Field(gt=0, lt=1)] = Field(0.5, description="alpha [-] (butler_volmer)")
    occupancy_dependent: bool = Field(True, description="scale j0 by (theta1/theta1_rest)^(1-alpha) (theta2/theta2_rest)^alpha ((1-theta2)/(1-theta2_rest))^(1-alpha): no transfer out of empty or into full sites")
    activation_energy: NonNegative = Field(0.0, description="activation energy of j0 [eV]")
    reference_temperature: Annotated[float, Field(gt=0)] = Field(300.0, description="temperature at which exchange_rate is given [K]")

    @model_validator(mode="after")
    def _rate(self):
        if self.kinetics == "butler_volmer" and self.exchange_rate is None:
            raise ValueError("kinetics 'butler_volmer' needs exchange_rate")
        if self.kinetics == "continuous" and self.exchange_rate is not None:
            raise ValueError("exchange_rate is only used with kinetics = 'butler_volmer'")
        return self


class Interfaces(_Strict):
    reservoir_electrolyte: Interface = Interface()
    electrolyte_channel: Interface = Interface()


class Materials(_Strict):
    reservoir: Reservoir
    electrolyte: Electrolyte
    channel: Channel


class PulseTrain(_Strict):
    """`count` identical trapezoidal gate pulses, each followed by a rest and a read-out."""

    count: Annotated[int, Field(ge=1, strict=True)] = Field(description="number of pulses [-]")
    amplitude: float = Field(description="gate voltage during the pulse plateau [V]")
    width: Positive = Field(description="plateau duration [s]")
    rise: Positive = Field(1e-10, description="linear rise time [s]")
    fall: Positive = Field(1e-10, description="linear fall time [s]")
    rest: Positive = Field(description="time from the end of the fall to the read-out and the next pulse [s]")
    read_delays: list[Positive] = Field(default_factory=list, description="extra read-outs during each rest, at these delays after the fall (retention curves; series event 'rest_read') [s]")

    @model_validator(mode="after")
    def _reads_inside_rest(self):
        if any(d >= self.rest for d in self.read_delays):
            raise ValueError(f"read_delays must be shorter than rest ({self.rest:g} s), got {self.read_delays}")
        return self


class Protocol(_Strict):
    rest_voltage: float = Field(0.0, description="gate voltage of the equilibrium initial state, at the end of every fall, and held during rests when rest_gate = 'held' [V]")
    rest_gate: Literal["floating", "held"] = Field("floating", description="gate during rests and read-outs: 'floating' (open circuit, I_G = 0, as the device is read) or 'held' at rest_voltage")
    read_voltage: Positive = Field(0.1, description="source-drain voltage of the conductance read-out [V]")
    trains: list[PulseTrain] = Field(min_length=1, description="pulse trains, run in order")


class SolverSettings(_Strict):
    scheme: Literal["bdf2", "bdf1"] = Field("bdf2", description="time integrator: variable-step BDF2 (backward Euler after each restart) or backward Euler throughout")
    dt_initial: Positive = Field(1e-13, description="first time step after each pulse edge [s]")
    dt_min: Positive = Field(1e-20, description="smallest time step before the run gives up [s]")
    dt_max: Positive = Field(1.0, description="largest time step [s]; long open-circuit rests (retention) may raise it")
    max_change: Positive = Field(10.0, description="target change of the scaled unknowns (in kT/q) in the first step after a breakpoint [-]")
    lte_tolerance: Positive = Field(0.5, description="estimated local error per step of the scaled unknowns (in kT/q), from the polynomial predictor [-]; the estimate is pessimistic: at the default the injected charge is within 0.3 % of a 50x tighter run")
    charge_tolerance: Positive = Field(3e-3, description="estimated local error per step of the charge through the gate terminal as protons (the Faradaic charge; device totals) [protons]; follows the back-flow of a held rest, which the kT norm misses")
    growth: Annotated[float, Field(gt=1.0, le=10.0)] = Field(2.4, description="largest step growth factor [-]; variable-step BDF2 is zero-stable for ratios below 1 + sqrt(2)")
    newton_max_it: Annotated[int, Field(ge=1, le=200, strict=True)] = Field(30, description="Newton iterations before a step is rejected [-]")
    transport_tolerance: Annotated[float, Field(gt=0, le=1e-3)] = Field(1e-13, description="l1 transport residual per step, relative to the proton inventory [-]")
    potential_tolerance: Annotated[float, Field(gt=0, le=1.0)] = Field(1e-6, description="sup-norm of the last Newton update of the scaled unknowns (kT/q) [-]; Newton converges quadratically, so the iterate it accepts is far closer")
    linear_solver: Literal["direct", "iterative"] = Field("direct", description="Newton's linear solver: 'direct' (MUMPS LU; robust, best up to ~1e5 dofs in 3-D) or 'iterative' (FGMRES with a field-split preconditioner, algebraic multigrid on the potential; for large 3-D meshes)")
    petsc_options: dict[str, str | int | float | bool] = Field(default_factory=dict, description="PETSc options passed through to the SNES/KSP (without prefix); they override the linear_solver defaults")

    @model_validator(mode="after")
    def _ordered(self):
        if not self.dt_min <= self.dt_initial <= self.dt_max:
            raise ValueError(f"need dt_min <= dt_initial <= dt_max (got {self.dt_min:g}, {self.dt_initial:g}, {self.dt_max:g} s)")
        return self


FieldName = Literal["potential", "proton_density", "field_magnitude"]
FieldEvent = Literal["initial", "pulse_end", "rest_end"]


class OutputSettings(_Strict):
    fields: list[FieldName] = Field(default_factory=lambda: ["potential", "proton_density", "field_magnitude"], description="fields written for ParaView")
    field_events: list[FieldEvent] = Field(default_factory=lambda: ["initial", "pulse_end", "rest_end"], description="when fields are written")
    field_every: Annotated[int, Field(ge=1, strict=True)] = Field(1, description="write fields at every n-th pulse [-]")
    field_times: list[NonNegative] = Field(default_factory=list, description="extra absolute times at which fields are written (become time-step breakpoints) [s]")
    series_every_step: bool = Field(False, description="write a series row after every accepted step, not only at pulse ends and reads")
    checkpoint_every: Annotated[int, Field(ge=0, strict=True)] = Field(10, description="write a checkpoint (RESULTS/checkpoint/) after every n-th pulse, for `protonfem run --resume`; 0: none [-]")


class Sweep(_Strict):
    """A parameter sweep over the case (``protonfem sweep``): each variant is the case as written
    with some keys replaced. ``protonfem run`` ignores this table and runs the case as written."""

    mode: Literal["grid", "zip"] = Field("grid", description="'grid': every combination of the values (the first key varies slowest); 'zip': the i-th values of all keys together")
    group_size: Annotated[int, Field(ge=1, strict=True)] | None = Field(None, description="MPI ranks per variant; default from the mesh size (1-D: 1)")
    parameters: dict[str, Annotated[list[Any], Field(min_length=1)]] = Field(min_length=1, description="dotted case key (list entries by index, e.g. \"protocol.trains.0.amplitude\") -> list of values")

    @model_validator(mode="after")
    def _keys_and_lengths(self):
        for key in self.parameters:
            if key.startswith("sweep") or any(not part.strip() for part in key.split(".")):
                raise ValueError(f"parameter key {key!r} must be a dotted key of the case outside [sweep], "
                                 "e.g. \"geometry.electrolyte_thickness\"")
        lengths = {key: len(values) for key, values in self.parameters.items()}
        if self.mode == "zip" and len(set(lengths.values())) > 1:
            shown = ", ".join(f"{k}: {n}" for k, n in lengths.items())
            raise ValueError(f"mode 'zip' needs lists of equal length (got {shown})")
        return self


class ResponseMapSettings(_Strict):
    """State-sampled response map (``protonfem response-map``): single probe pulses, each started
    from one of ``states`` channel states that the case's own protocol passes through, over the grid
    amplitudes x widths x temperatures."""

    states: Annotated[int, Field(ge=2, strict=True)] = Field(6, description="channel states sampled evenly along the case's protocol, its initial state included [-]")
    amplitudes: list[float] = Field(min_length=1, description="probe pulse plateau voltages [V]")
    widths: list[Positive] = Field(min_length=1, description="probe pulse widths [s]")
    temperatures: list[Annotated[float, Field(gt=0, le=2000)]] = Field(default_factory=list, description="probe temperatures [K]; default: conditions.temperature")
    rest: Positive = Field(1.0, description="rest after each probe before its read-out, gate as protocol.rest_gate [s]")
    group_size: Annotated[int, Field(ge=1, strict=True)] = Field(1, description="MPI ranks per probe [-]")


class Case(_Strict):
    name: str | None = Field(None, description="case name (default: the file name without .toml)")
    description: str = ""
    geometry: Geometry
    mesh: MeshSettings = MeshSettings()
    conditions: Conditions = Conditions()
    materials: Materials
    interfaces: Interfaces = Interfaces()
    protocol: Protocol
    solver: SolverSettings = SolverSettings()
    output: OutputSettings = OutputSettings()
    sweep: Sweep | None = Field(None, description="parameter sweep for `protonfem sweep`; ignored by `protonfem run`")
    response_map: ResponseMapSettings | None = Field(None, description="state-sampled response map for `protonfem response-map`; ignored by `protonfem run`")

    @model_validator(mode="after")
    def _physically_possible(self):
        m = self.materials
        for region, mat in (("reservoir", m.reservoir), ("electrolyte", m.electrolyte), ("channel", m.channel)):
            if mat.proton_density >= mat.site_density:
                raise _KeyedError(f"materials.{region}.proton_density",
                                  f"must be below site_density ({mat.site_density:g} m^-3), got {mat.proton_density:g}")
        bg = m.electrolyte.background
        if bg >= m.electrolyte.site_density:
            raise _KeyedError("materials.electrolyte.fixed_charge_density",
                              f"must be below site_density ({m.electrolyte.site_density:g} m^-3), got {bg:g}")
        if self.mesh.h_min * 4 > min(t for _, t in self.geometry.layers()):
            raise _KeyedError("mesh.h_min", f"must be at most a quarter of the thinnest layer "
                                           f"({min(t for _, t in self.geometry.layers()):g} m), got {self.mesh.h_min:g}")
        # The 1 V/nm regime is the point of the device, but fields far beyond the glass's
        # breakdown (8-15 MV/cm) mean a typo in a voltage or a thickness.
        vmax = max(abs(t.amplitude) for t in self.protocol.trains)
        field = vmax / self.geometry.electrolyte_thickness
        if field > 1e10:
            raise _KeyedError("protocol.trains.amplitude", f"gives {field / 1e9:.3g} V/nm across the electrolyte; "
                                                           "expected below 10 V/nm (PSG breaks down at 0.8-1.5 V/nm)")
        if m.electrolyte.hopping_distance > self.geometry.electrolyte_thickness:
            raise _KeyedError("materials.electrolyte.hopping_distance",
                              f"must be smaller than electrolyte_thickness ({self.geometry.electrolyte_thickness:g} m)")
        return self


def _arrhenius(value: float, ea_ev: float, temperature: float, reference: float) -> float:
    import math
    k_ev = 8.617333262e-5
    return value * math.exp(-ea_ev / k_ev * (1.0 / temperature - 1.0 / reference))


class _KeyedError(ValueError):
    """A cross-field check that knows which key to blame."""

    def __init__(self, key: str, message: str):
        super().__init__(message)
        self.key = key


# ----------------------------------------------------------------------
def _format_location(loc: tuple) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


def _format_error(path: Path, err: dict) -> str:
    loc = _format_location(tuple(p for p in err["loc"] if p not in ("function-after",)))
    kind = err["type"]
    given = err.get("input")
    if kind == "missing":
        return f"{path}: {loc}: missing required key"
    if kind == "extra_forbidden":
        return f"{path}: {loc}: unknown key (check the spelling; see `protonfem validate --describe`)"
    msg = err["msg"]
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
    if err.get("ctx", {}).get("error") is not None and isinstance(err["ctx"]["error"], _KeyedError):
        e = err["ctx"]["error"]
        return f"{path}: {e.key}: {e}"
    msg = msg[0].lower() + msg[1:]
    if isinstance(given, dict):  # a table-level check: the message already names the values
        return f"{path}: {loc}: {msg}"
    shown = repr(given)
    if len(shown) > 60:
        shown = shown[:57] + "..."
    return f"{path}: {loc}: {msg} (got {shown})"


def parse_case(data: dict, path: Path | str = "<case>") -> Case:
    """Validate a parsed TOML mapping; raise :class:`CaseError` with one line on the first problem."""
    path = Path(path)
    try:
        case = Case.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors()
        first = _format_error(path, errors[0])
        more = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
        raise CaseError(first + more) from None
    if case.name is None:
        case = case.model_copy(update={"name": path.stem})
    return case


def read_case_data(path: Path | str) -> dict:
    """The parsed but unvalidated TOML mapping of a case file (sweeps edit it before validation)."""
    path = Path(path)
    if not path.is_file():
        raise CaseError(f"{path}: no such case file")
    try:
        return tomllib.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError:
        raise CaseError(f"{path}: not UTF-8 text; expected a TOML case file") from None
    except tomllib.TOMLDecodeError as exc:
        raise CaseError(f"{path}: invalid TOML: {exc}") from None


def load_case(path: Path | str) -> Case:
    """Read and validate a case file."""
    return parse_case(read_case_data(path), path)


def case_hash(path: Path | str) -> str:
    """SHA-256 of the case file's bytes, recorded in every output for provenance."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def describe() -> str:
    """A table of every key with its unit and meaning, for ``protonfem validate --describe``."""
    lines = []

    def walk(model: type[BaseModel], prefix: str):
        for name, info in model.model_fields.items():
            ann = info.annotation
            sub = None
            for cand in (ann, *getattr(ann, "__args__", ())):
                if isinstance(cand, type) and issubclass(cand, BaseModel):
                    sub = cand
                    break
                for inner in getattr(cand, "__args__", ()):
                    if isinstance(inner, type) and issubclass(inner, BaseModel):
                        sub = inner
            key = f"{prefix}{name}"
            if sub is not None:
                walk(sub, key + ("[]." if "list" in str(ann) else "."))
            else:
                req = "required" if info.is_required() else f"default {info.get_default(call_default_factory=True)!r}"
                lines.append(f"{key:48s} {info.description or ''}  ({req})")

    walk(Case, "")
    return "\n".join(lines)
