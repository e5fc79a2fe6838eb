"""Training algorithms on analog tiles: analog SGD (the plain :class:`AnalogTile`), Tiki-Taka v1,
TTv2 (digital H buffer) and mixed precision (digital accumulation, pulsed transfers).

All expose the tile interface used by :class:`network.MLP`: forward, backward, update, weights,
plus ``tiles()`` (the analog arrays, for pulse and read-energy accounting)."""
from __future__ import annotations

import numpy as np

from .tile import mvm


class TransferTile:
    """Tiki-Taka (Gokmen & Haensch 2020).  The gradient goes to a fast array A whose reference sits
    at each device's symmetry point, so device asymmetry acts as a decay of A toward zero instead of
    a bias on the weights.  Every ``transfer_every`` samples one row of A is read (a forward MVM
    with a one-hot input, with the tile's IO non-idealities) and written into the slow array C by
    a pulsed update of ``transfer_lr`` times the read.  The network weight is W = gamma A + C.
    ``fast_reference``: "symmetry" (each device's symmetry point from its parameters, i.e. a perfect
    calibration), "calibrate" (found by alternating pulses, :func:`devices.calibrate_symmetry_point`)
    or "mid" (no calibration: shows why Tiki-Taka needs it).

    ``buffered=True`` is TTv2 (Gokmen 2021): the reads accumulate in a digital buffer H and C only
    receives integer pulse counts trunc(H / dw_min(C)) when |H| reaches one device step; the
    remainder stays in H (a low-pass filter on A's noisy reads)."""

    def __init__(self, make_tile, rows, cols, W0, *, transfer_every=1, transfer_lr=1.0, gamma=0.0,
                 buffered=False, fast_reference="symmetry", h_threshold=1.0, calibration_pairs=300):
        if fast_reference == "calibrate":
            # as on hardware: find each device's symmetry point by alternating pulses (they are
            # counted: calibration costs energy) and use it as A's reference
            from .devices import calibrate_symmetry_point

            self.A = make_tile(rows, cols, reference="mid")
            for a in self.A.arrays:
                calibrate_symmetry_point(a, n_pairs=calibration_pairs)
            self.A.program(np.zeros((rows, cols)))
        else:
            self.A = make_tile(rows, cols, reference=fast_reference)
        self.C = make_tile(rows, cols, reference="mid")
        self.C.program(W0)
        self.rows, self.cols = rows, cols
        self.transfer_every = int(transfer_every)
        self.transfer_lr = float(transfer_lr)
        self.gamma = float(gamma)
        self.buffered = buffered
        self.h_threshold = float(h_threshold)
        self.H = np.zeros((rows, cols)) if buffered else None
        self._pending = 0
        self._row = 0
        self.transfers = 0
        self.stats = self.C.stats
        self.bstats = self.C.bstats

    def tiles(self):
        return [self.A, self.C]

    def weights(self):
        return self.C.W if self.gamma == 0 else self.gamma * self.A.W + self.C.W

    def forward(self, x, count=True):
        return mvm(x, self.weights(), self.C.io_fwd, self.C.rng, self.C.stats if count else None, kst=self.C._kst)

    def backward(self, d):
        return mvm(d, self.weights().T, self.C.io_bwd, self.C.rng, self.C.bstats, kst=self.C._kst)

    def update(self, x, d, lr):
        self.A.update(x, d, lr)
        self._pending += x.shape[0]
        k = self._pending // self.transfer_every
        if k == 0:
            return
        self._pending -= k * self.transfer_every
        rows = (self._row + np.arange(k)) % self.rows
        self._row = int((self._row + k) % self.rows)
        self.transfers += k
        e = np.zeros((k, self.rows))
        e[np.arange(k), rows] = 1.0
        y = mvm(e, self.A.W, self.A.io_fwd, self.A.rng, self.A.stats, kst=self.A._kst)  # read rows of A
        if not self.buffered:
            self.C.update(e, y, self.transfer_lr)
            return
        dwC = self.C.dw_min
        for r, yr in zip(rows, y):
            h = self.H[r] + self.transfer_lr * yr / dwC
            n = np.where(np.abs(h) >= self.h_threshold, np.trunc(h), 0.0)
            if n.any():
                cnt = np.zeros((self.rows, self.cols))
                cnt[r] = n
                self.C.apply_counts(cnt.astype(np.int64))
            self.H[r] = h - n


class MixedPrecisionTile:
    """Mixed precision (Nandakumar et al. 2020): the rank update lr x^T d accumulates in a digital
    matrix chi; every ``transfer_every`` mini-batches each device receives trunc(chi/dw_min) pulses
    (sign = direction) and chi keeps the remainder.  Forward/backward are analog."""

    def __init__(self, make_tile, rows, cols, W0, *, transfer_every=1):
        self.T = make_tile(rows, cols, reference="mid")
        self.T.program(W0)
        self.chi = np.zeros((rows, cols))
        self.transfer_every = int(transfer_every)
        self._batches = 0
        self.stats = self.T.stats
        self.bstats = self.T.bstats

    def tiles(self):
        return [self.T]

    def weights(self):
        return self.T.W

    def forward(self, x, count=True):
        return self.T.forward(x, count)

    def backward(self, d):
        return self.T.backward(d)

    def update(self, x, d, lr):
        self.chi += lr * (x.T @ d)
        self._batches += 1
        if self._batches % self.transfer_every:
            return
        if self.T.is_ideal:
            self.T.update(np.eye(self.chi.shape[0]), self.chi, 1.0)
            self.chi[:] = 0.0
            return
        n = np.trunc(self.chi / self.T.dw_min)
        if n.any():
            self.T.apply_counts(n.astype(np.int64))
            self.chi -= n * self.T.dw_min
