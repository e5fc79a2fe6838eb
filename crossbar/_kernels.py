"""Compiled (numba) kernels: the pulsed update (one fused pass per mini-batch that draws the
pulse trains and applies every coincidence as one device pulse, sample after sample, slot after
slot, as the hardware does) and the MVM through the periphery (:func:`mvm_io`).

Random numbers come from a per-tile xoshiro256** generator whose state (a small uint64 array) is
seeded from the tile's ``numpy.random.Generator``: runs stay bit-reproducible for a given seed and
independent of any global random state.  Gaussian cycle-to-cycle draws use the same 16-bit
inverse-CDF table as :func:`families.fast_normal`.

``AVAILABLE`` is False when numba cannot be imported; the tiles then use the NumPy path.
"""
from __future__ import annotations

import os

import numpy as np

try:  # pragma: no cover - exercised by the environment, not by a test
    if os.environ.get("PROTONFEM_NO_NUMBA"):
        raise ImportError("disabled by PROTONFEM_NO_NUMBA")
    from numba import njit

    AVAILABLE = True
except ImportError:  # pragma: no cover
    AVAILABLE = False

# family codes of the compiled device laws (Gaussian scatter only)
FAMILY_CODES = {"constant_step": 0, "soft_bounds": 1, "linear_step": 2, "exp_step": 3, "pow_step": 4}
# per-device table row: G_min, G_max, dG(1+ud), dG(1-ud), then the family's shape parameters


def device_table(arr) -> np.ndarray:
    """(n, 4..8) contiguous per-device coefficients of a DeviceArray for the compiled laws."""
    p = arr.params()
    n = arr.n
    ud = p["up_down"]
    name = arr.family.name
    extra = {"linear_step": ("gamma_up", "gamma_down"), "exp_step": ("A_up", "A_down", "gamma_up", "gamma_down"),
             "pow_step": ("gamma",)}.get(name, ())
    cols = [p["G_min"], p["G_max"], p["dG"] * (1.0 + ud), p["dG"] * (1.0 - ud)]
    cols += [p[k] for k in extra]  # only the columns the law reads: the table is streamed per pulse
    return np.ascontiguousarray(np.stack([np.broadcast_to(np.asarray(c, float), (n,)) for c in cols], axis=1))


def supported(arr) -> bool:
    """True when the compiled kernel implements this DeviceArray's law and scatter exactly."""
    from .families import FAMILIES, GaussianScatter

    name = arr.family.name
    return (AVAILABLE and name in FAMILY_CODES and type(arr.family) is FAMILIES[name]
            and isinstance(arr.scatter, GaussianScatter))


def seed_state(rng: np.random.Generator) -> np.ndarray:
    """xoshiro256** state (4 words), seeded from rng."""
    st = np.zeros(4, dtype=np.uint64)
    st[:4] = rng.integers(1, 2 ** 63 - 1, size=4, dtype=np.int64).astype(np.uint64)
    return st


if AVAILABLE:
    @njit(inline="always")
    def _rotl(x, k):
        return (x << np.uint64(k)) | (x >> np.uint64(64 - k))

    @njit(inline="always")
    def _mean_step(fam, T, k, g, up):
        gmin = T[k, 0]
        gmax = T[k, 1]
        if fam == 0:  # constant step
            return T[k, 2] if up else -T[k, 3]
        if fam == 4:  # power step
            span = gmax - gmin
            if up:
                om = min(max((gmax - g) / span, 0.0), 1.0)
                return T[k, 2] * (2.0 * om) ** T[k, 4]
            om = min(max((g - gmin) / span, 0.0), 1.0)
            return -T[k, 3] * (2.0 * om) ** T[k, 4]
        z = 2.0 * (g - gmin) / (gmax - gmin) - 1.0
        if fam == 1:  # soft bounds
            if up:
                return T[k, 2] * max(1.0 - z, 0.0)
            return -T[k, 3] * max(1.0 + z, 0.0)
        if fam == 2:  # linear step
            if up:
                return T[k, 2] * max(1.0 - T[k, 4] * z, 0.0)
            return -T[k, 3] * max(1.0 + T[k, 5] * z, 0.0)
        # exp step
        if up:
            return T[k, 2] * max(1.0 - T[k, 4] * np.exp(T[k, 6] * z), 0.0)
        return -T[k, 3] * max(1.0 - T[k, 5] * np.exp(-T[k, 7] * z), 0.0)

    @njit(inline="always")
    def _xo(s0, s1, s2, s3):
        """xoshiro256** on a state held in locals: (output, new state)."""
        res = _rotl(s1 * np.uint64(5), 7) * np.uint64(9)
        t = s1 << np.uint64(17)
        s2 ^= s0
        s3 ^= s1
        s1 ^= s2
        s0 ^= s3
        s2 ^= t
        s3 = _rotl(s3, 45)
        return res, s0, s1, s2, s3

    @njit(cache=True)
    def pulsed_update(x, d, lr, dw, desired_bl, bl_man, upd_man, stochastic, st, ntab, fam, sr, sa,
                      npair, T0, G0, w0, Gref0, unit0, T1, G1, w1, Gref1, unit1, counts):
        """Stochastic (or deterministic) pulse trains of a mini-batch and their coincidences.

        x: (b, rows), d: (b, cols); W += lr sum_s x_s^T d_s is the intended change.  BL and the
        row/column probabilities follow aihwkit's BL and update management (as the NumPy path).
        Every coincidence of row i and column j in slot t of sample s is one pulse of device
        k = i*cols + j in direction sign(x_si d_sj) (the pair's second device, npair = 2, gets the
        opposite direction), applied in order: sample after sample, slot after slot, each at the
        device's current state with its own scatter draw.
        counts[0:4] += (up, down) pulses of device array 0, then of array 1.

        (The generator state lives in locals inside the loops and the helpers are pure scalar
        functions: array writes through inlined helpers compile to much slower loops.)"""
        b, rows = x.shape
        cols = d.shape[1]
        xm = np.zeros(b)
        dm = np.zeros(b)
        mmax = 0.0
        anylive = False
        for s in range(b):
            for i in range(rows):
                a = abs(x[s, i])
                if a > xm[s]:
                    xm[s] = a
            for j in range(cols):
                a = abs(d[s, j])
                if a > dm[s]:
                    dm[s] = a
            if xm[s] > 0.0 and dm[s] > 0.0:
                anylive = True
                m = lr * xm[s] * dm[s] / dw
                if m > mmax:
                    mmax = m
        if not anylive:
            return
        if bl_man:
            BL = min(max(np.int64(np.ceil(mmax)), 1), desired_bl)
        else:
            BL = desired_bl
        c = lr / (dw * BL)
        nl = max(rows, cols)
        lists = np.empty((2, BL, nl), np.int32)  # [0]: rows firing in slot t, [1]: columns
        lcnt = np.zeros((2, BL), np.int64)
        noisy = sr != 0.0 or sa != 0.0
        iu0 = 1.0 / unit0
        iu1 = 1.0 / unit1
        buf = np.empty(64, np.float64)
        s0 = st[0]
        s1 = st[1]
        s2 = st[2]
        s3 = st[3]
        nu0 = 0
        nd0 = 0
        for s in range(b):
            if not (xm[s] > 0.0 and dm[s] > 0.0):
                continue
            if upd_man:
                A = np.sqrt(c * dm[s] / xm[s])
                B = np.sqrt(c * xm[s] / dm[s])
            else:
                A = np.sqrt(c)
                B = A
            lcnt[:, :] = 0
            # ---- pulse trains: slot lists of the firing rows (side 0) and columns (side 1)
            for side in range(2):
                n = rows if side == 0 else cols
                scale = A if side == 0 else B
                for i in range(n):
                    v = x[s, i] if side == 0 else d[s, i]
                    a = abs(v)
                    if a == 0.0:
                        continue
                    p = min(a * scale, 1.0)
                    if stochastic:
                        # 16-bit stochastic translator; the threshold is stochastically rounded
                        # once per train so that its mean is exactly 65536 p
                        r, s0, s1, s2, s3 = _xo(s0, s1, s2, s3)
                        u = np.float64(r >> np.uint64(11)) * (1.0 / 9007199254740992.0)
                        th = np.uint64(min(p * 65536.0 + u, 65535.0))
                        if th == 0:
                            continue
                        word = np.uint64(0)
                        left = 0
                        for t in range(BL):
                            if left == 0:
                                word, s0, s1, s2, s3 = _xo(s0, s1, s2, s3)
                                left = 4
                            fire = (word & np.uint64(0xFFFF)) < th
                            word = word >> np.uint64(16)
                            left -= 1
                            if fire:
                                lists[side, t, lcnt[side, t]] = i
                                lcnt[side, t] += 1
                    else:
                        # rows fire in the first round(BL p) slots, columns spread round(BL q)
                        mm = np.rint(BL * p)
                        for t in range(BL):
                            if side == 0:
                                fire = t < mm
                            else:
                                fire = np.floor((t + 1) * mm / BL) > np.floor(t * mm / BL)
                            if fire:
                                lists[side, t, lcnt[side, t]] = i
                                lcnt[side, t] += 1
            # ---- scatter draws of this sample's pulses (one per device pulse), in bulk
            npul = 0
            for t in range(BL):
                npul += lcnt[0, t] * lcnt[1, t]
            if npul == 0:
                continue
            if noisy:
                nd = npul * npair
                if buf.shape[0] < nd:
                    buf = np.empty(2 * nd, np.float64)
                q = 0
                while q < nd:
                    r, s0, s1, s2, s3 = _xo(s0, s1, s2, s3)
                    for h in range(4):
                        if q < nd:
                            buf[q] = ntab[np.int64(r & np.uint64(0xFFFF))]
                            r = r >> np.uint64(16)
                            q += 1
            # ---- the pulses, slot after slot
            q = 0
            for t in range(BL):
                nc = lcnt[1, t]
                if nc == 0:
                    continue
                for ia in range(lcnt[0, t]):
                    i = lists[0, t, ia]
                    xp = x[s, i] > 0.0
                    base = i * cols
                    for jb in range(nc):
                        j = lists[1, t, jb]
                        up = xp == (d[s, j] > 0.0)
                        k = base + j
                        g = G0[k]
                        mu = _mean_step(fam, T0, k, g, up)
                        g += mu
                        if noisy:
                            g += (sr * abs(mu) + sa) * buf[q]
                            q += 1
                        g = min(max(g, T0[k, 0]), T0[k, 1])
                        G0[k] = g
                        w0[k] = (g - Gref0[k]) * iu0
                        if up:
                            nu0 += 1
                        else:
                            nd0 += 1
                        if npair == 2:
                            g = G1[k]
                            mu = _mean_step(fam, T1, k, g, not up)
                            g += mu
                            if noisy:
                                g += (sr * abs(mu) + sa) * buf[q]
                                q += 1
                            g = min(max(g, T1[k, 0]), T1[k, 1])
                            G1[k] = g
                            w1[k] = (g - Gref1[k]) * iu1
        st[0] = s0
        st[1] = s1
        st[2] = s2
        st[3] = s3
        counts[0] += nu0
        counts[1] += nd0
        if npair == 2:
            counts[2] += nd0
            counts[3] += nu0

    @njit(inline="always")
    def _dac(v, ib, inv_step, step):
        v = min(max(v, -ib), ib)
        return np.rint(v * inv_step) * step

    @njit(inline="always")
    def _adc(v, ob, inv_step, step):
        v = min(max(v, -ob), ob)
        return np.rint(v * inv_step) * step

    @njit(cache=True)
    def mvm_io(x, W, inp_bound, inp_steps, out_bound, out_steps, out_noise, w_noise, abs_max, iterative,
               max_rounds, st, ntab, x2):
        """y = x @ W through the periphery, as :func:`tile.mvm` (aihwkit IOParameters semantics):
        abs-max noise management, DAC, additive output noise (and optional per-read weight noise as
        its exact Gaussian equivalent), ADC, iterative bound management (a saturated sample is read
        again at half amplitude and twice the digital gain, up to max_rounds times, the last try
        kept).  Normal draws come from the tile's generator st.  x2[i] += sum of squared DAC inputs
        of line i over every read; returns (y, number of reads)."""
        b, n_in = x.shape
        n_out = W.shape[1]
        step_in = inp_bound / inp_steps
        is_in = 1.0 / step_in
        step_out = out_bound / out_steps
        is_out = 1.0 / step_out
        sc = np.ones(b)
        xin = np.empty((b, n_in))
        xq = np.empty((b, n_in))
        for s in range(b):
            if abs_max:
                m = 0.0
                for i in range(n_in):
                    a = abs(x[s, i])
                    if a > m:
                        m = a
                if m == 0.0:
                    m = 1.0
                sc[s] = m
            for i in range(n_in):
                v = x[s, i] / sc[s] if abs_max else x[s, i]
                xin[s, i] = v
                q = _dac(v, inp_bound, is_in, step_in)
                xq[s, i] = q
                x2[i] += q * q
        y = np.dot(xq, W)
        s0 = st[0]
        s1 = st[1]
        s2 = st[2]
        s3 = st[3]
        reads = b
        noisy = out_noise > 0.0 or w_noise > 0.0
        sat = np.zeros(b, np.bool_)
        nsat = 0
        for s in range(b):
            wn = 0.0
            if w_noise > 0.0:
                acc = 0.0
                for i in range(n_in):
                    acc += xq[s, i] * xq[s, i]
                wn = w_noise * np.sqrt(acc)
            amax = 0.0
            left = 0
            r = np.uint64(0)
            for j in range(n_out):
                v = y[s, j]
                if noisy:
                    for which in range(2):
                        amp = wn if which == 0 else out_noise
                        if amp > 0.0:
                            if left == 0:
                                r, s0, s1, s2, s3 = _xo(s0, s1, s2, s3)
                                left = 4
                            v += amp * ntab[np.int64(r & np.uint64(0xFFFF))]
                            r = r >> np.uint64(16)
                            left -= 1
                a = abs(v)
                if a > amax:
                    amax = a
                y[s, j] = _adc(v, out_bound, is_out, step_out)
            if iterative and amax >= out_bound:
                sat[s] = True
                nsat += 1
        if nsat > 0:
            xs = np.empty(n_in)
            ys = np.empty(n_out)
            for s in range(b):
                if not sat[s]:
                    continue
                scale = 1.0
                for rr in range(max_rounds):
                    scale *= 2.0
                    acc = 0.0
                    for i in range(n_in):
                        q = _dac(xin[s, i] / scale, inp_bound, is_in, step_in)
                        xs[i] = q
                        x2[i] += q * q
                        acc += q * q
                    reads += 1
                    wn = w_noise * np.sqrt(acc)
                    for j in range(n_out):
                        ys[j] = 0.0
                    for i in range(n_in):
                        q = xs[i]
                        if q != 0.0:
                            for j in range(n_out):
                                ys[j] += q * W[i, j]
                    amax = 0.0
                    left = 0
                    r = np.uint64(0)
                    for j in range(n_out):
                        v = ys[j]
                        if noisy:
                            for which in range(2):
                                amp = wn if which == 0 else out_noise
                                if amp > 0.0:
                                    if left == 0:
                                        r, s0, s1, s2, s3 = _xo(s0, s1, s2, s3)
                                        left = 4
                                    v += amp * ntab[np.int64(r & np.uint64(0xFFFF))]
                                    r = r >> np.uint64(16)
                                    left -= 1
                        ys[j] = v
                        a = abs(v)
                        if a > amax:
                            amax = a
                    if amax < out_bound or rr == max_rounds - 1:
                        for j in range(n_out):
                            y[s, j] = _adc(ys[j], out_bound, is_out, step_out) * scale
                        break
        st[0] = s0
        st[1] = s1
        st[2] = s2
        st[3] = s3
        if abs_max:
            for s in range(b):
                for j in range(n_out):
                    y[s, j] *= sc[s]
        return y, reads
