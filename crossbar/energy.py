"""Energy accounting: update energy from the pulses applied and the model's energy per pulse,
read energy from the MVMs (device conduction during the read pulse, optional converter energy)."""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


@dataclass
class ReadEnergyParams:
    V_read: float = 0.2  # V, full-scale read amplitude on an input line (assumption)
    t_read: float = 10e-9  # s, read-pulse duration (assumption)
    E_dac: float = 0.0  # J per input conversion (0: not counted unless given)
    E_adc: float = 0.0  # J per output conversion

    def to_dict(self):
        return asdict(self)


def tile_read_energy(tile, rp: ReadEnergyParams) -> float:
    """Read energy of one analog tile since its stats were last reset.

    A normalised input x on line i drives V_read*x for t_read: energy V_read^2 x^2 G_ij t_read in
    every device of the line, plus its reference device (reference mapping) or both devices of
    the pair (differential).  Sum_samples x_i^2 is accumulated per line by the MVM, so the array
    energy is V_read^2 t_read sum_i (sum_s x_si^2) (sum_j G_ij) with the conductances at the time
    of accounting (once per epoch: the weights move slowly)."""
    rows, cols = tile.rows, tile.cols
    Gsum = np.zeros((rows, cols))
    for a in tile.arrays:
        Gsum += a.G.reshape(rows, cols)
        if tile.mapping == "reference":
            Gsum += a.G_ref.reshape(rows, cols)
    e = rp.V_read ** 2 * rp.t_read * (tile.stats["x2"] @ Gsum.sum(1) + tile.bstats["x2"] @ Gsum.sum(0))
    conv = tile.stats["reads"] * (rows * rp.E_dac + cols * rp.E_adc) + \
        tile.bstats["reads"] * (cols * rp.E_dac + rows * rp.E_adc)
    return float(e + conv)


def reset_read_stats(tile):
    tile.stats["reads"] = 0
    tile.stats["x2"][:] = 0.0
    tile.bstats["reads"] = 0
    tile.bstats["x2"][:] = 0.0


def update_energy(tile, n_up: int, n_down: int):
    """J for n_up/n_down pulses on this tile's model, or None when the model has no pulse energy."""
    e, _ = tile.model.pulse_energy()
    if e is None:
        return None
    return float(n_up * e[0] + n_down * e[1])
