"""Analog tiles: forward/backward vector-matrix products through DAC/ADC with noise and bounds,
and the parallel outer-product update by coincidences of pulse trains.

Array layout: ``W[i, j]`` with i = input line (row, includes the bias row), j = output line
(column).  forward: y = x W, backward: z = d W^T, update: W += lr x^T d.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from . import _kernels
from .devices import DeviceArray
from .families import fast_normal, normal_table
from .schema import DeviceModel


@dataclass
class IOParams:
    """Peripheral model of one MVM direction (aihwkit ``IOParameters`` semantics and defaults)."""

    perfect: bool = False
    inp_bits: int = 7  # DAC: levels per polarity = 2^(bits-1) - 1
    inp_bound: float = 1.0  # DAC range after noise management
    out_bits: int = 9  # ADC
    out_bound: float = 12.0  # ADC range (weight units x normalised input)
    out_noise: float = 0.06  # additive Gaussian output noise (std, same units)
    w_noise: float = 0.0  # read noise on each weight per MVM (std, weight units)
    noise_management: str = "abs_max"  # "abs_max" | "none"
    bound_management: str = "iterative"  # "iterative" | "none"
    max_bm_rounds: int = 5

    @classmethod
    def ideal(cls):
        return cls(perfect=True)



def mvm(x, W, io: IOParams, rng: np.random.Generator, stats=None, kst=None):
    """y = x @ W through the periphery.  x: (b, rows), W: (rows, cols).

    Noise management scales each input vector by its abs-max so the DAC range is used fully; the
    output is scaled back digitally.  Iterative bound management halves the input of samples whose
    output saturated the ADC and reads them again (each re-read is counted in ``stats``).

    With ``kst`` (a tile's compiled-kernel generator state, see :mod:`._kernels`) the same model
    runs as one compiled call whose normal draws come from that generator instead of ``rng``."""
    if io.perfect:
        if stats is not None:
            stats["reads"] += x.shape[0]
            stats["x2"] += np.einsum("bi,bi->i", x, x)
        return x @ W
    if kst is not None and io.noise_management in ("abs_max", "none") \
            and io.bound_management in ("iterative", "none"):
        x2 = stats["x2"] if stats is not None else np.zeros(x.shape[1])
        y, reads = _kernels.mvm_io(
            np.ascontiguousarray(x, dtype=np.float64), W, float(io.inp_bound), float(2 ** (io.inp_bits - 1) - 1),
            float(io.out_bound), float(2 ** (io.out_bits - 1) - 1), float(io.out_noise), float(io.w_noise),
            io.noise_management == "abs_max", io.bound_management == "iterative", int(io.max_bm_rounds), kst,
            normal_table(), x2)
        if stats is not None:
            stats["reads"] += reads
        return y
    b = x.shape[0]
    if io.noise_management == "abs_max":
        s = np.abs(x).max(axis=1, keepdims=True)
        s[s == 0] = 1.0
        xin = x / s
    else:
        s = None
        xin = x
    step_in = io.inp_bound / (2 ** (io.inp_bits - 1) - 1)
    step_out = io.out_bound / (2 ** (io.out_bits - 1) - 1)

    def read(xs):
        xq = np.clip(xs, -io.inp_bound, io.inp_bound)
        xq *= 1.0 / step_in
        np.rint(xq, out=xq)
        xq *= step_in  # DAC
        y = xq @ W
        if stats is not None:
            stats["reads"] += xq.shape[0]
            stats["x2"] += np.einsum("bi,bi->i", xq, xq)
        if io.w_noise > 0:
            # independent read noise on every device of one MVM = Gaussian output noise with
            # variance w_noise^2 sum_i x_i^2 (exact in distribution, O(b cols) not O(rows cols))
            y += io.w_noise * np.sqrt(np.einsum("bi,bi->b", xq, xq))[:, None] * rng.standard_normal(y.shape)
        if io.out_noise > 0:
            y += io.out_noise * fast_normal(rng, y.size).reshape(y.shape)
        return y

    def adc(y):
        np.clip(y, -io.out_bound, io.out_bound, out=y)
        y *= 1.0 / step_out
        np.rint(y, out=y)
        y *= step_out
        return y

    y = read(xin)
    sat = None
    if io.bound_management == "iterative":
        amax = np.abs(y).max(axis=1)
        if amax.max() >= io.out_bound:
            sat = np.flatnonzero(amax >= io.out_bound)
    y = adc(y)
    if sat is not None and sat.size:
        scale = 1.0
        for r in range(io.max_bm_rounds):
            # saturated samples are read again with half the input amplitude and twice the
            # digital gain (aihwkit's iterative bound management); the last try is kept as is
            scale *= 2.0
            ys = read(xin[sat] / scale)
            ok = np.abs(ys).max(axis=1) < io.out_bound
            take = ok if r < io.max_bm_rounds - 1 else np.ones(sat.size, bool)
            y[sat[take]] = adc(ys[take]) * scale
            sat = sat[~take]
            if sat.size == 0:
                break
    if s is not None:
        y *= s
    return y


@dataclass
class UpdateParams:
    """Pulsed-update settings (aihwkit ``UpdateParameters`` semantics)."""

    pulse_type: str = "stochastic"  # "stochastic" | "deterministic"
    desired_bl: int = 31  # maximal pulse-train length
    bl_management: bool = True  # BL = min(ceil(lr max|x| max|d| / dw_min), desired_bl)
    update_management: bool = True  # balance row/column probabilities per sample


class FloatingPointTile:
    """Exact digital reference (the floating-point baseline)."""

    def __init__(self, W0):
        self.W = np.array(W0, float)
        self.stats = {"reads": 0, "x2": np.zeros(self.W.shape[0])}
        self.bstats = {"reads": 0, "x2": np.zeros(self.W.shape[1])}

    def forward(self, x, count=True):
        return x @ self.W

    def backward(self, d):
        return d @ self.W.T

    def update(self, x, d, lr):
        self.W += lr * (x.T @ d)

    def weights(self):
        return self.W

    def tiles(self):
        return []


class AnalogTile:
    """One crossbar of devices (reference-device mapping) or a differential pair of crossbars.

    ``mapping="reference"``: w = (G - G_ref)/G_unit, one device per weight.
    ``mapping="differential"``: w = (G+ - G-)/G_unit; a coincidence pulses G+ in the update's
    direction and G- in the opposite one (each carries half of the weight change)."""

    def __init__(self, model: DeviceModel, rows: int, cols: int, rng: np.random.Generator, *,
                 io_fwd: IOParams | None = None, io_bwd: IOParams | None = None,
                 update: UpdateParams | None = None, mapping: str = "reference", reference="mid",
                 w_max: float = 1.0):
        self.rows, self.cols = rows, cols
        self.rng = rng
        self.io_fwd = io_fwd or IOParams()
        self.io_bwd = io_bwd or IOParams()
        self.up = update or UpdateParams()
        self.mapping = mapping
        n = rows * cols
        if mapping == "reference":
            self.arrays = [DeviceArray(model, n, rng, w_max=w_max, reference=reference)]
        elif mapping == "differential":
            # each device of the pair sits at G_min at w = 0; G_ref = G_min, range of each = w_max
            g0 = model.params["G_min"]
            self.arrays = [DeviceArray(model, n, rng, w_max=w_max / 2, reference=np.full(n, g0)),
                           DeviceArray(model, n, rng, w_max=w_max / 2, reference=np.full(n, g0))]
            for a in self.arrays:
                a.program(np.zeros(n))
        else:
            raise ValueError(f"mapping: expected 'reference' or 'differential', got {mapping!r}")
        self.model = model
        self.dw_min = sum(a.dw_min for a in self.arrays)
        self.is_ideal = self.arrays[0].is_ideal
        # compiled pulsed update (numba) for the analytic families with Gaussian scatter; its
        # generator state is seeded from rng, so runs stay reproducible by seed
        self._kst = None  # generator state of the compiled MVM and update (None: NumPy path)
        self._kupdate = False
        if _kernels.AVAILABLE:
            self._kst = _kernels.seed_state(rng)
        if not self.is_ideal and all(_kernels.supported(a) for a in self.arrays):
            self._kupdate = True
            self._ktab = [_kernels.device_table(a) for a in self.arrays]
            self._kfam = _kernels.FAMILY_CODES[model.family.name]
            self._kcounts = np.zeros(4, dtype=np.int64)
        self._sync()
        self.stats = {"reads": 0, "x2": np.zeros(rows)}
        self.bstats = {"reads": 0, "x2": np.zeros(cols)}

    # ----------------------------------------------------------------------------------------
    def _sync(self):
        if self.mapping == "reference":
            self.W = self.arrays[0].w.reshape(self.rows, self.cols)  # a view: stays in sync
        else:
            self.W = (self.arrays[0].w - self.arrays[1].w).reshape(self.rows, self.cols)

    def program(self, W0):
        W0 = np.asarray(W0, float).ravel()
        if self.mapping == "reference":
            self.arrays[0].program(W0)
        else:
            self.arrays[0].program(np.maximum(W0, 0.0))
            self.arrays[1].program(np.maximum(-W0, 0.0))
        self._sync()

    def weights(self):
        return self.W

    def tiles(self):
        return [self]

    def forward(self, x, count=True):
        return mvm(x, self.W, self.io_fwd, self.rng, self.stats if count else None, kst=self._kst)

    def backward(self, d):
        return mvm(d, self.W.T, self.io_bwd, self.rng, self.bstats, kst=self._kst)

    @property
    def pulses(self):
        return sum(a.n_up for a in self.arrays), sum(a.n_down for a in self.arrays)

    # ----------------------------------------------------------------------------------------
    def update(self, x, d, lr):
        """Intended change: W += lr * sum_s x_s^T d_s (sample after sample)."""
        if self.is_ideal:
            dw = lr * (x.T @ d)
            if self.mapping == "reference":
                self.arrays[0].add_exact(dw)
            else:
                self.arrays[0].add_exact(0.5 * dw)
                self.arrays[1].add_exact(-0.5 * dw)
            self._sync()
            return
        if self._kupdate:
            self._compiled_update(x, d, lr)
        else:
            self.pulsed_update(x, d, lr)

    def _compiled_update(self, x, d, lr):
        """The fused numba kernel (:func:`_kernels.pulsed_update`): same trains and BL/update
        management as :meth:`_trains`; every coincidence is applied as one device pulse at the
        device's current state with its own scatter draw, sample after sample, slot after slot."""
        up = self.up
        if up.pulse_type not in ("stochastic", "deterministic"):
            raise ValueError(f"pulse_type: expected 'stochastic' or 'deterministic', got {up.pulse_type!r}")
        a0 = self.arrays[0]
        a1 = self.arrays[-1]
        sc = a0.scatter
        cnt = self._kcounts
        cnt[:] = 0
        _kernels.pulsed_update(
            np.ascontiguousarray(x, dtype=np.float64), np.ascontiguousarray(d, dtype=np.float64), float(lr),
            float(self.dw_min), int(up.desired_bl), bool(up.bl_management), bool(up.update_management),
            up.pulse_type == "stochastic", self._kst, normal_table(), self._kfam, sc.sigma_rel, sc.sigma_abs,
            len(self.arrays), self._ktab[0], a0.G, a0.w, a0.G_ref, float(a0.G_unit),
            self._ktab[-1], a1.G, a1.w, a1.G_ref, float(a1.G_unit), cnt)
        a0.n_up += int(cnt[0])
        a0.n_down += int(cnt[1])
        if len(self.arrays) == 2:
            a1.n_up += int(cnt[2])
            a1.n_down += int(cnt[3])
            self._sync()

    def _trains(self, x, d, lr):
        """Pulse trains: returns (Rs, Cs) signed float32 bit tensors of shape (b, BL, rows/cols)."""
        up = self.up
        dw = self.dw_min
        xa, da = np.abs(x), np.abs(d)
        xm, dm = xa.max(axis=1), da.max(axis=1)
        live = (xm > 0) & (dm > 0)
        if not live.any():
            return None
        m = lr * xm * dm / dw  # expected count of the strongest coincidence of each sample
        BL = int(np.clip(np.ceil(m.max()), 1, up.desired_bl)) if up.bl_management else up.desired_bl
        c = lr / (dw * BL)
        all_live = live.all()
        if not all_live:
            xm = np.where(live, xm, 1.0)
            dm = np.where(live, dm, 1.0)
        if up.update_management:
            A = np.sqrt(c * dm / xm)
            B = np.sqrt(c * xm / dm)
        else:
            A = B = np.full(len(xm), np.sqrt(c))
        p = xa * A[:, None]
        np.minimum(p, 1.0, out=p)
        q = da * B[:, None]
        np.minimum(q, 1.0, out=q)
        if not all_live:
            p[~live] = 0.0
            q[~live] = 0.0
        b = x.shape[0]
        if up.pulse_type == "stochastic":
            R = self._bits(p, BL)
            C = self._bits(q, BL)
        elif up.pulse_type == "deterministic":
            # rows fire their k_i = round(BL p_i) pulses in the first slots, columns spread their
            # m_j = round(BL q_j) pulses evenly: the overlap is ~ k_i m_j / BL = BL p_i q_j.
            t = np.arange(BL)[None, :, None]
            k = np.rint(BL * p)[:, None, :]
            R = t < k
            mj = np.rint(BL * q)[:, None, :]
            C = np.floor((t + 1) * mj / BL) > np.floor(t * mj / BL)
        else:
            raise ValueError(f"pulse_type: expected 'stochastic' or 'deterministic', got {up.pulse_type!r}")
        Ra = R if R.dtype == np.float32 else R.astype(np.float32)
        Ca = C if C.dtype == np.float32 else C.astype(np.float32)
        Rs = Ra * np.sign(x).astype(np.float32)[:, None, :]
        Cs = Ca * np.sign(d).astype(np.float32)[:, None, :]
        return Ra, Ca, Rs, Cs

    def _bits(self, p, BL):
        """Stochastic pulse trains: slot t of line i fires with probability p_i.  16-bit random
        words against a 16-bit threshold (a hardware stochastic translator); the threshold is
        stochastically rounded once per train so that its mean is exactly 65536 p (unbiased
        pulse probability; at p = 1 the cap 65535 leaves a 1.5e-5 miss rate)."""
        b, n = p.shape
        thr = p * 65536.0
        thr += self.rng.random((b, n))
        np.minimum(thr, 65535.0, out=thr)
        thr = thr.astype(np.uint16)  # truncation = floor (non-negative)
        u = np.frombuffer(self.rng.bytes(2 * b * BL * n), dtype=np.uint16).reshape(b, BL, n)
        out = np.empty((b, BL, n), dtype=np.float32)
        return np.less(u, thr[:, None, :], out=out, casting="unsafe")  # 0/1 floats for the BLAS

    def pulsed_update(self, x, d, lr):
        tr = self._trains(x, d, lr)
        if tr is None:
            return
        Ra, Ca, Rs, Cs = tr
        b, BL, rows = Rs.shape
        cols = Cs.shape[2]
        K = b * BL
        # Coincidences of all samples and slots: N_tot (all pulses) and N_net (up minus down).
        Ntot = (Ra.reshape(K, rows).T @ Ca.reshape(K, cols)).ravel()
        Nnet = (Rs.reshape(K, rows).T @ Cs.reshape(K, cols)).ravel()
        act = np.flatnonzero(Ntot > 0)  # (a bool mask: 5x faster than nonzero on floats)
        if act.size == 0:
            return
        nt = Ntot[act]
        nn = Nnet[act]
        arrays = self.arrays
        signs = (1.0, -1.0) if self.mapping == "differential" else (1.0,)
        fam = arrays[0].family
        if fam.commutative:
            # Translation-invariant steps commute: N_up pulses up and N_down down in any order give
            # the same law unless a bound is touched in between.  Devices that could reach a bound
            # go to the ordered path below; all others get their closed-form sum.
            nu = ((nt + nn) * 0.5).astype(np.float64)  # exact small integers, float for speed
            nd = nt - nu
            if len(arrays) == 1:
                unsafe = arrays[0].apply_commuting(act, nu, nd)
            else:
                safe = arrays[0].commuting_safe(act, nu, nd) & arrays[1].commuting_safe(act, nd, nu)
                arrays[0].apply_commuting(act[safe], nu[safe], nd[safe], check=False)
                arrays[1].apply_commuting(act[safe], nd[safe], nu[safe], check=False)
                unsafe = ~safe
            mixed = act[unsafe]
            if mixed.size:
                ns = self._sample_counts(Rs, Cs, mixed)
                for a, sg in zip(arrays, signs):
                    a.apply_runs_ordered(mixed, sg * ns)
            self._sync()
            return
        else:
            single = np.abs(nn) == nt  # one direction in the whole batch: order is irrelevant
            s_idx = act[single]
            for a, sg in zip(arrays, signs):
                a.apply_pulses(s_idx, nt[single].astype(np.int64), sg * np.sign(nn[single]))
            mixed = act[~single]
        if mixed.size == 0:
            self._sync()
            return
        # Hardware order: sample after sample.  Per-sample signed counts of the mixed devices.
        ns = self._sample_counts(Rs, Cs, mixed)
        if arrays[0].affine:
            for a, sg in zip(arrays, signs):
                a.apply_runs_ordered(mixed, sg * ns)
            self._sync()
            return
        for s in range(b):
            sel = np.flatnonzero(ns[s] != 0)
            if sel.size == 0:
                continue
            v = ns[s, sel]
            for a, sg in zip(arrays, signs):
                a.apply_pulses(mixed[sel], np.abs(v).astype(np.int64), sg * np.sign(v))
        self._sync()

    @staticmethod
    def _sample_counts(Rs, Cs, idx):
        """Signed coincidence counts per sample, (b, len(idx)), of the flat device indices idx."""
        b, BL, rows = Rs.shape
        cols = Cs.shape[2]
        if idx.size * BL > 0.25 * rows * cols:
            return np.matmul(Rs.transpose(0, 2, 1), Cs).reshape(b, -1)[:, idx]
        i, j = np.divmod(idx, cols)
        return np.einsum("stm,stm->sm", Rs[:, :, i], Cs[:, :, j])

    def apply_counts(self, counts):
        """Deterministic integer pulse counts per device (sign = direction): used by transfers of
        TTv2 and mixed precision.  counts: (rows, cols) integer array."""
        c = np.asarray(counts).ravel()
        idx = np.flatnonzero(c != 0)
        if idx.size == 0:
            return
        v = c[idx]
        signs = (1.0, -1.0) if self.mapping == "differential" else (1.0,)
        for a, sg in zip(self.arrays, signs):
            a.apply_pulses(idx, np.abs(v).astype(np.int64), sg * np.sign(v))
        self._sync()

    def config(self):
        return {"io_forward": asdict(self.io_fwd), "io_backward": asdict(self.io_bwd),
                "update": asdict(self.up), "mapping": self.mapping}
