"""Graded 1-D node distributions (pure numpy).

The device layers are a few nm thick while the interfaces and blocking electrodes need ~0.02 nm
elements, so each layer is meshed with an element size that starts at ``h_min`` at *both* ends
(every layer end is either an interface or an outer electrode), grows geometrically toward the
layer centre and is capped at ``h_max``.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .tags import CELL_TAGS

__all__ = ["graded_sizes", "graded_points", "stack_breaks", "stack_points"]


def _symmetric_sizes(n: int, ratio: float, h_min: float, h_max: float) -> np.ndarray:
    """Element sizes h_min*ratio**k (k = distance in elements to the nearer end), capped at h_max."""
    i = np.arange(n)
    k = np.minimum(i, n - 1 - i).astype(float)
    if ratio > 1.0:
        # cap the exponent so that ratio**k never overflows (the cap at h_max applies anyway)
        kcap = np.ceil(np.log(h_max / h_min) / np.log(ratio)) + 1.0
        k = np.minimum(k, kcap)
    return np.minimum(h_min * ratio**k, h_max)


def graded_sizes(length: float, h_min: float, h_max: float, growth: float) -> np.ndarray:
    """Element sizes of a symmetric graded subdivision of an interval of the given length.

    The first and the last element are exactly ``h_min``; neighbouring sizes differ by a ratio
    ``r <= growth`` (the same r over the whole interval, chosen so that the sizes add up to
    ``length`` with the fewest elements), and no element exceeds ``h_max``. Degenerate cases: an
    interval shorter than ~2*h_min gets one or two equal elements; if no ratio in [1, growth] fits
    the minimal element count (only for intervals of a few h_min), uniform elements slightly below
    h_min are used.
    """
    length = float(length)
    if not length > 0.0:
        raise ValueError(f"interval length must be positive, got {length}")
    if not h_min > 0.0:
        raise ValueError(f"h_min must be positive, got {h_min}")
    if h_max < h_min:
        raise ValueError(f"h_max ({h_max}) must be >= h_min ({h_min})")
    if growth < 1.0:
        raise ValueError(f"growth must be >= 1, got {growth}")

    def total(n: int, r: float) -> float:
        return float(_symmetric_sizes(n, r, h_min, h_max).sum())

    if length <= h_min * (1.0 + 1e-12):
        return np.array([length])
    # fewest elements n such that the sizes with the full growth ratio cover the interval
    hi = int(np.ceil(length / h_min)) + 1  # total(hi, growth) >= hi*h_min >= length
    if growth > 1.0:
        # elements at index distance >= k_cap from both ends have size h_max
        k_cap = int(np.ceil(np.log(h_max / h_min) / np.log(growth)))
        hi = min(hi, 2 * k_cap + int(np.ceil(length / h_max)) + 1)
    lo = 1
    while lo < hi:
        mid = (lo + hi) // 2
        if total(mid, growth) >= length:
            hi = mid
        else:
            lo = mid + 1
    n = lo
    if n * h_min >= length or growth == 1.0:
        sizes = np.full(n, length / n)
    else:
        # total(n, 1) = n*h_min < length <= total(n, growth): bisect for the ratio
        r_lo, r_hi = 1.0, float(growth)
        for _ in range(200):
            r_mid = 0.5 * (r_lo + r_hi)
            if total(n, r_mid) < length:
                r_lo = r_mid
            else:
                r_hi = r_mid
            if r_hi - r_lo <= 1e-15 * r_hi:
                break
        sizes = _symmetric_sizes(n, r_hi, h_min, h_max)
        # remove the bisection residual (relative ~1e-15) from the interior elements only
        if n > 2:
            excess = sizes.sum() - length
            interior = sizes[1:-1]
            sizes[1:-1] = interior * (1.0 - excess / interior.sum())
    return sizes


def graded_points(z0: float, z1: float, h_min: float, h_max: float, growth: float) -> np.ndarray:
    """Node coordinates from ``z0`` to ``z1`` (both included, increasing) graded toward both ends.

    See :func:`graded_sizes`: first and last element ``h_min``, geometric growth by at most
    ``growth`` toward the centre, capped at ``h_max``. The end points are exactly ``z0`` and ``z1``.
    """
    z0, z1 = float(z0), float(z1)
    if not z1 > z0:
        raise ValueError(f"need z1 > z0, got z0={z0}, z1={z1}")
    sizes = graded_sizes(z1 - z0, h_min, h_max, growth)
    n = len(sizes)
    z = np.empty(n + 1)
    # accumulate from both ends so that the first and the last element are exact to round-off
    m = n // 2
    z[: m + 1] = z0 + np.concatenate([[0.0], np.cumsum(sizes[:m])])
    z[m + 1 :] = z1 - np.concatenate([[0.0], np.cumsum(sizes[m + 1 :][::-1])])[::-1]
    z[0], z[-1] = z0, z1
    return z


def _check_layers(layers: Sequence[tuple[str, float]]) -> list[tuple[str, float]]:
    out = []
    if len(layers) == 0:
        raise ValueError("need at least one layer")
    for item in layers:
        name, thickness = item
        if name not in CELL_TAGS:
            raise ValueError(f"unknown layer {name!r}; expected one of {sorted(CELL_TAGS)}")
        if not float(thickness) > 0.0:
            raise ValueError(f"layer {name!r} has non-positive thickness {thickness}")
        out.append((str(name), float(thickness)))
    return out


def stack_breaks(layers: Sequence[tuple[str, float]]) -> np.ndarray:
    """Layer boundaries z_0 = 0 < z_1 < ... < z_n for layers given bottom to top."""
    layers = _check_layers(layers)
    return np.concatenate([[0.0], np.cumsum([t for _, t in layers])])


def stack_points(
    layers: Sequence[tuple[str, float]], h_min: float, h_max: float, growth: float
) -> tuple[np.ndarray, np.ndarray]:
    """Graded nodes of a whole stack: ``(z, break_index)``.

    ``z`` holds all node coordinates bottom to top (layer boundaries included once) and
    ``break_index[b]`` is the position in ``z`` of layer boundary b (0 = bottom, n = top).
    """
    breaks = stack_breaks(layers)
    parts = [np.array([breaks[0]])]
    break_index = [0]
    for b in range(len(breaks) - 1):
        zl = graded_points(breaks[b], breaks[b + 1], h_min, h_max, growth)
        parts.append(zl[1:])
        break_index.append(break_index[-1] + len(zl) - 1)
    return np.concatenate(parts), np.asarray(break_index, dtype=np.int64)
