"""An array of devices: per-device parameters (device-to-device variation), per-pulse scatter
(cycle-to-cycle), state G [S] and its weight mapping, vectorised over the whole array."""
from __future__ import annotations

import numpy as np

from .families import IdealFamily, fast_normal, sample_step, symmetry_point
from .schema import DeviceModel


class DeviceArray:
    """Flat array of n = rows*cols devices of one compact model.

    Weight mapping (reference device): w = (G - G_ref) / G_unit with
    G_unit = (G_max - G_min) / (2 w_max) of the *nominal* model, so the nominal conductance range
    maps onto [-w_max, w_max] around mid-range.  ``reference`` chooses G_ref:

    * ``"mid"``: (G_min+G_max)/2 of the nominal model (one shared reference conductance);
    * ``"symmetry"``: each device's own symmetry point (what a calibration finds, see
      :func:`calibrate_symmetry_point`); needed by Tiki-Taka's fast array;
    * an array of n conductances.
    """

    def __init__(self, model: DeviceModel, n: int, rng: np.random.Generator, *, w_max: float = 1.0,
                 reference="mid"):
        self.model = model
        self.family = model.family
        self.scatter = model.scatter
        self.n = int(n)
        self.rng = rng
        self.names = self.family.param_names()
        p = model.sample_parameters(self.n, rng)
        self.P = np.stack([p[k] for k in self.names]) if self.names else np.zeros((0, self.n))
        self.Gmin = self.P[self.names.index("G_min")]
        self.Gmax = self.P[self.names.index("G_max")]
        g0, g1 = model.params["G_min"], model.params["G_max"]
        self.w_max = float(w_max)
        self.G_unit = (g1 - g0) / (2.0 * self.w_max)
        self.set_reference(reference)
        self.G = self.G_ref.copy()
        self.w = np.zeros(self.n)
        self.is_ideal = isinstance(self.family, IdealFamily)
        # nominal mean step in weight units: the pulse-train planner's Delta w_min
        self.dw_min = (0.0 if self.is_ideal else self.family.nominal_step(model.params) / self.G_unit)
        self.n_up = 0
        self.n_down = 0
        self.affine = self._detect_affine()

    def _detect_affine(self) -> bool:
        """True when every device's mean step is affine in G for both directions (soft bounds,
        linear step with gamma <= 1, ...) and the scatter is Gaussian: then n same-direction pulses
        have a closed form.  Checked numerically on five states per device, so it holds for any
        family, including user-defined ones, without per-family code."""
        from .families import GaussianScatter, Tabulated

        if self.is_ideal or self.family.commutative or isinstance(self.family, Tabulated) \
                or not isinstance(self.scatter, GaussianScatter):
            return False
        p = self.params()
        span = self.Gmax - self.Gmin
        coef = []
        for d in (1.0, -1.0):
            dd = np.full(self.n, d)
            m0 = self.family.mean_step(self.Gmin.copy(), dd, p)
            m1 = self.family.mean_step(self.Gmax.copy(), dd, p)
            beta = (m1 - m0) / span
            alpha = m0 - beta * self.Gmin
            for f in (0.25, 0.5, 0.75):
                G = self.Gmin + f * span
                if not np.allclose(self.family.mean_step(G, dd, p), alpha + beta * G, rtol=1e-9,
                                   atol=1e-9 * np.abs(m0).max() + 1e-300):
                    return False
            coef += [alpha, beta]
        if np.any(1.0 + coef[1] <= 0) or np.any(1.0 + coef[3] <= 0):
            return False  # a step larger than the whole range: no geometric closed form
        # one row per device: alpha_u, beta_u, alpha_d, beta_d, G_min, G_max, ln(1+beta_u), ln(1+beta_d)
        self._aff = np.ascontiguousarray(np.stack(coef + [self.Gmin, self.Gmax, np.log1p(coef[1]),
                                                          np.log1p(coef[3])], axis=1))
        return True

    def _affine_runs(self, G0, n, up, T):
        """n same-direction pulses of an affine law mu(G) = alpha + beta G from G0, in closed form.

        Mean: exact (G_n = c^n G0 + alpha (1 - c^n)/(1 - c), c = 1 + beta).  Scatter: a pulse's
        deviation propagates through the affine map with factor c, so the run's deviation is the
        Gaussian sum_k c^(n-1-k) s_k xi_k with s_k = sigma_rel |mu_k| + sigma_abs on the mean path
        (|mu_k| = |mu_0| c^k): exact up to the O(sigma |beta|) state dependence of the noise
        amplitude along the random path.  Bounds are enforced at the end of the run."""
        a = np.where(up, T[0], T[2])
        b = np.where(up, T[1], T[3])
        c = 1.0 + b
        cn = np.exp(n * np.where(up, T[6], T[7]))  # c^n
        small = np.abs(b) < 1e-12
        geo = np.where(small, n, (1.0 - cn) / np.where(small, 1.0, -b))  # sum_{k<n} c^k
        mu0 = np.abs(a + b * G0)
        Gn = cn * G0 + a * geo
        sc = self.scatter
        if sc.sigma_rel or sc.sigma_abs:
            cm1 = cn / c  # c^(n-1)
            var = (sc.sigma_rel * mu0) ** 2 * n * cm1 ** 2
            if sc.sigma_abs:
                c2 = c * c
                geo2 = np.where(small, n, (1.0 - cn * cn) / np.where(small, 1.0, 1.0 - c2))
                var = var + 2 * sc.sigma_rel * sc.sigma_abs * mu0 * cm1 * geo + sc.sigma_abs ** 2 * geo2
            Gn = Gn + np.sqrt(var) * fast_normal(self.rng, Gn.size).reshape(Gn.shape)
        return np.clip(Gn, T[4], T[5])

    def _affine_ordered(self, G, n, up, T):
        """Runs of samples 1..b in order (n, up: (b, m)); the same closed form as
        :meth:`_affine_runs`, with the run coefficients of all samples computed at once and only
        the state recursion looped (the noise amplitude uses each run's actual start state)."""
        a = np.where(up, T[0], T[2])
        b = np.where(up, T[1], T[3])
        c = 1.0 + b
        cn = np.exp(n * np.where(up, T[6], T[7]))  # c^n
        small = np.abs(b) < 1e-12
        geo = np.where(small, n, (1.0 - cn) / np.where(small, 1.0, -b))
        D = a * geo
        sc = self.scatter
        noisy = bool(sc.sigma_rel or sc.sigma_abs)
        if noisy:
            xi = fast_normal(self.rng, n.size).reshape(n.shape)
            cm1 = cn / c
            K = sc.sigma_rel * np.sqrt(n) * cm1 * xi  # times |mu_0| of the run
            if sc.sigma_abs:
                geo2 = np.where(small, n, (1.0 - cn * cn) / np.where(small, 1.0, 1.0 - c * c))
                B2 = 2 * sc.sigma_rel * sc.sigma_abs * cm1 * geo
                C2 = sc.sigma_abs ** 2 * geo2
        lo, hi = T[4], T[5]
        for s in range(n.shape[0]):
            Gn = cn[s] * G + D[s]
            if noisy:
                mu0 = np.abs(a[s] + b[s] * G)
                if sc.sigma_abs:
                    Gn += np.sqrt((sc.sigma_rel * mu0) ** 2 * n[s] * cm1[s] ** 2 + mu0 * B2[s] + C2[s]) * xi[s]
                else:
                    Gn += mu0 * K[s]
            G = np.clip(Gn, lo, hi)
        return G

    # -- mapping -----------------------------------------------------------------------------
    def params(self, sl=slice(None)) -> dict:
        return {k: self.P[i, sl] for i, k in enumerate(self.names)}

    def set_reference(self, reference):
        g0, g1 = self.model.params["G_min"], self.model.params["G_max"]
        if isinstance(reference, str) and reference == "mid":
            self.G_ref = np.full(self.n, 0.5 * (g0 + g1))
        elif isinstance(reference, str) and reference == "symmetry":
            sp = symmetry_point(self.family, self.params())
            self.G_ref = np.where(np.isfinite(sp), sp, 0.5 * (self.Gmin + self.Gmax))
        else:
            ref = np.asarray(reference, float)
            self.G_ref = np.broadcast_to(ref, (self.n,)).copy()
        if hasattr(self, "w"):
            self.w[:] = (self.G - self.G_ref) / self.G_unit  # in place: tiles hold views of w

    def program(self, w):
        """Ideal write of target weights (initialisation); clipped to each device's range."""
        self.G = np.clip(self.G_ref + np.ravel(w) * self.G_unit, self.Gmin, self.Gmax)
        self.w[:] = (self.G - self.G_ref) / self.G_unit

    def add_exact(self, dw):
        """Floating-point update for the ideal family (no pulses), within the device's range."""
        self.G = np.clip(self.G + np.ravel(dw) * self.G_unit, self.Gmin, self.Gmax)
        self.w[:] = (self.G - self.G_ref) / self.G_unit

    # -- pulses -------------------------------------------------------------------------------
    def _table(self):
        """Per-device coefficients of a translation-invariant family (cached), one row per device
        so one fancy-index gathers everything: mean up/down step, per-pulse variance up/down,
        bound-reach margins up/down, G_min, G_max."""
        if getattr(self, "_tab", None) is None:
            Gm = 0.5 * (self.Gmin + self.Gmax)
            su = self.family.mean_step(Gm, np.ones(self.n), self.params())
            sd = self.family.mean_step(Gm, -np.ones(self.n), self.params())
            sc = self.scatter
            if sc.kind == "gaussian":
                vu = (sc.sigma_rel * np.abs(su) + sc.sigma_abs) ** 2
                vd = (sc.sigma_rel * np.abs(sd) + sc.sigma_abs) ** 2
                # n pulses reach at most n|mu| + 6 sqrt(n var) <= n (|mu| + 6 std)
                mu_ = np.abs(su) + 6.0 * np.sqrt(vu)
                md_ = np.abs(sd) + 6.0 * np.sqrt(vd)
            else:
                vu = vd = np.zeros(self.n)
                mu_, md_ = 1.5 * np.abs(su), 1.5 * np.abs(sd)
            # one row per device (8 contiguous coefficients): a single np.take gathers all of them
            self._tab = np.ascontiguousarray(np.stack([su, sd, vu, vd, mu_, md_, self.Gmin, self.Gmax], axis=1))
        return self._tab

    def commuting_safe(self, idx, nu, nd):
        """True where nu up and nd down pulses cannot reach a bound in any order (so the order of
        the pulses does not matter and :meth:`apply_commuting` is exact)."""
        T = np.take(self._table(), idx, axis=0)
        G0 = self.G.take(idx)
        return (G0 + nu * T[:, 4] < T[:, 7]) & (G0 - nd * T[:, 5] > T[:, 6])

    def apply_commuting(self, idx, nu, nd, check=True):
        """nu up and nd down pulses per device of a translation-invariant family, in closed form:
        mean nu mu_up + nd mu_down; scatter = the sum of the nu + nd independent pulse draws.
        With ``check`` the devices that could reach a bound are left untouched and returned as a
        boolean mask (the caller applies them in hardware order)."""
        if idx.size == 0:
            return np.zeros(0, bool)
        T = np.take(self._table(), idx, axis=0)
        G0 = self.G.take(idx)
        sc = self.scatter
        if sc.kind == "gaussian":
            dG = nu * T[:, 0]
            dG += nd * T[:, 1]
            if sc.sigma_rel or sc.sigma_abs:
                v = nu * T[:, 2]
                v += nd * T[:, 3]
                np.sqrt(v, out=v)
                v *= fast_normal(self.rng, idx.size)
                dG += v
        else:
            dG = sc.sample_n(T[:, 0], nu, self.rng) + sc.sample_n(T[:, 1], nd, self.rng)
        Gn = G0 + dG
        unsafe = None
        if check:
            unsafe = (nu * T[:, 4] >= T[:, 7] - G0) | (nd * T[:, 5] >= G0 - T[:, 6])
            if unsafe.any():
                Gn[unsafe] = G0[unsafe]
                self.n_up -= int(round(nu[unsafe].sum()))
                self.n_down -= int(round(nd[unsafe].sum()))
        self.G[idx] = Gn
        Gn -= self.G_ref.take(idx)
        Gn *= 1.0 / self.G_unit
        self.w[idx] = Gn
        self.n_up += int(round(nu.sum()))
        self.n_down += int(round(nd.sum()))
        return unsafe

    def apply_runs_ordered(self, idx, ns):
        """Hardware order for a translation-invariant or affine family: ns (b, m) signed pulse
        counts of devices idx in samples 1..b.  Each sample's same-direction run is applied in
        closed form and the bounds are enforced after every run (for a translation: exact for
        monotone runs, a run that reaches a bound ends on it)."""
        up = ns > 0
        n = np.abs(ns)
        if self.affine:
            G = self._affine_ordered(self.G[idx], n, up, np.take(self._aff, idx, axis=0).T)
            self.G[idx] = G
            self.w[idx] = (G - self.G_ref[idx]) / self.G_unit
            nu = int(n[up].sum())
            self.n_up += nu
            self.n_down += int(n.sum()) - nu
            return
        T = np.take(self._table(), idx, axis=0)
        sc = self.scatter
        if sc.kind == "gaussian":
            mu = np.where(up, T[:, 0], T[:, 1])
            var = np.where(up, T[:, 2], T[:, 3])
            inc = n * mu + np.sqrt(n * var) * self.rng.standard_normal(ns.shape)
        else:
            inc = np.where(up, sc.sample_n(T[:, 0], n, self.rng), sc.sample_n(T[:, 1], n, self.rng))
        G = self.G[idx]
        lo, hi = T[:, 6], T[:, 7]
        for s in range(ns.shape[0]):
            G = np.clip(G + inc[s], lo, hi)
        self.G[idx] = G
        self.w[idx] = (G - self.G_ref[idx]) / self.G_unit
        nu = int(n[up].sum())
        self.n_up += nu
        self.n_down += int(n.sum()) - nu

    def apply_pulses(self, idx, n, d):
        """Apply n[k] same-direction pulses (d[k] = +1/-1) to device idx[k] (idx unique).

        Each pulse is one draw of the compact model at the device's current state.  Translation-
        invariant families compose n pulses in closed form (exact: the sum of n independent
        Gaussian / Poisson steps), unless the run could touch a bound, where clipping makes the
        order matter; those devices, and all state-dependent families, go pulse by pulse."""
        idx = np.asarray(idx)
        if idx.size == 0:
            return
        n = np.asarray(n, dtype=np.int64)
        d = np.asarray(d, dtype=np.float64)
        up = d > 0
        nu = int(n[up].sum())
        self.n_up += nu
        self.n_down += int(n.sum()) - nu
        if self.affine:
            T = np.take(self._aff, idx, axis=0).T
            G = self._affine_runs(self.G[idx], n, d > 0, T)
            self.G[idx] = G
            self.w[idx] = (G - self.G_ref[idx]) / self.G_unit
            return
        if self.family.commutative:
            G0 = self.G[idx]
            pd = self.params(idx)
            mu = self.family.mean_step(G0, d, pd)
            reach = G0 + n * mu * self.scatter.margin(n)
            safe = (reach < pd["G_max"]) & (reach > pd["G_min"])
            Gn = G0 + self.scatter.sample_n(mu, n, self.rng)
            if not safe.all():
                s = ~safe
                Gn[s] = self._rounds(G0[s], n[s], d[s], idx[s])
            self.G[idx] = Gn
        else:
            self.G[idx] = self._rounds(self.G[idx], n, d, idx)
        self.w[idx] = (self.G[idx] - self.G_ref[idx]) / self.G_unit

    def _rounds(self, G, n, d, idx):
        """Pulse by pulse: round k applies the k-th pulse to every device with n >= k.  Devices are
        sorted by count so each round's set is a prefix (views, no fancy indexing)."""
        order = np.argsort(-n, kind="stable")
        n = n[order]
        G = G[order].copy()
        d = d[order]
        P = self.P[:, idx[order]]
        nmax = int(n[0])
        m = np.searchsorted(-n, -np.arange(1, nmax + 1), side="right")
        fam, sc, rng = self.family, self.scatter, self.rng
        gmin, gmax = P[self.names.index("G_min")], P[self.names.index("G_max")]
        for k in range(nmax):
            mk = m[k]
            g = G[:mk]
            pd = {name: P[i, :mk] for i, name in enumerate(self.names)}
            G[:mk] = np.clip(g + sample_step(fam, sc, g, d[:mk], pd, rng), gmin[:mk], gmax[:mk])
        out = np.empty_like(G)
        out[order] = G
        return out

    def pulse_all(self, d: float, count: int = 1):
        """Apply `count` pulses of direction d to every device (characterisation, calibration)."""
        idx = np.arange(self.n)
        for _ in range(count):
            self.G = np.clip(self.G + sample_step(self.family, self.scatter, self.G, np.full(self.n, d),
                                                  self.params(), self.rng), self.Gmin, self.Gmax)
            self.n_up += self.n if d > 0 else 0
            self.n_down += self.n if d < 0 else 0
        self.w[idx] = (self.G - self.G_ref) / self.G_unit


def calibrate_symmetry_point(arr: DeviceArray, n_pairs: int = 500, set_reference: bool = True):
    """Symmetry-point calibration as on hardware: alternate up/down pulses on every device until
    each settles where its up and down steps balance; returns G_sp per device (mean over the
    last 10 % of pairs, which averages the cycle-to-cycle jitter) and optionally uses it as the
    reference conductance.  Pulses are counted (they cost energy)."""
    acc = np.zeros(arr.n)
    tail = max(1, n_pairs // 10)
    for k in range(n_pairs):
        arr.pulse_all(+1.0)
        arr.pulse_all(-1.0)
        if k >= n_pairs - tail:
            acc += arr.G
    sp = acc / tail
    if set_reference:
        arr.set_reference(sp)
    return sp
