"""Temporal smoothing of 3D joints: the 1-euro filter, element-wise and robust to missing joints.

Stereo depth is noisy along the viewing ray (``Z^2 / (f B)`` metres per pixel of disparity
error) and that noise is nearly independent from frame to frame, so a causal low-pass filter cuts
it. The 1-euro filter (Casiez, Roussel and Vogel, CHI 2012) is the standard choice of real-time
tracking: a first-order low-pass whose cut-off rises with the signal's speed, smooth at rest and
with little lag on fast motion. Two parameters: ``min_cutoff`` (Hz, lower = smoother) and
``beta`` (s/m, higher = less lag when moving).

Every element (joint coordinate) keeps its own state, so a joint that is missing (NaN: not
confident, gated, nobody seen) neither blocks the others nor leaves a stale state behind: it
restarts from its next observation when that comes more than ``reset_after`` seconds later.
Pure numpy; the node (:mod:`stereo_pose3d.pipeline`) and the evaluation use the same class.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["OneEuroFilter", "one_euro_sequence"]


def smoothing_factor(cutoff: np.ndarray | float, dt: np.ndarray | float) -> np.ndarray:
    """The exponential smoothing factor of a first-order low-pass at ``cutoff`` Hz, step ``dt``
    seconds: ``1 / (1 + tau / dt)`` with ``tau = 1 / (2 pi cutoff)``."""
    tau = 1.0 / (2.0 * math.pi * np.asarray(cutoff, dtype=np.float64))
    return 1.0 / (1.0 + tau / np.asarray(dt, dtype=np.float64))


class OneEuroFilter:
    """The 1-euro filter over arrays of a fixed shape, element-wise.

    Args:
        min_cutoff: cut-off frequency at rest (Hz); lower = smoother, more lag.
        beta: speed coefficient (s per unit of the signal, e.g. s/m); higher = less lag on fast
            motion.
        d_cutoff: cut-off of the speed estimate (Hz).
        reset_after: an element last observed more than this many seconds ago restarts from its
            new observation instead of being blended with the old state.

    Call with ``(x, t)``: ``x`` any fixed shape (e.g. ``(J, 3)`` metres), ``t`` seconds. NaN
    elements are missing: their state is kept and NaN returned for them. A time at or before an
    element's last one (a replayed recording) restarts that element. A new shape resets all.
    """

    def __init__(
        self,
        min_cutoff: float = 1.0,
        beta: float = 0.5,
        d_cutoff: float = 1.0,
        reset_after: float = 0.5,
    ) -> None:
        if not (min_cutoff > 0 and d_cutoff > 0 and beta >= 0 and reset_after > 0):
            raise ValueError(
                f"need min_cutoff > 0, d_cutoff > 0, beta >= 0, reset_after > 0; got "
                f"{min_cutoff}, {d_cutoff}, {beta}, {reset_after}"
            )
        self.min_cutoff, self.beta = float(min_cutoff), float(beta)
        self.d_cutoff, self.reset_after = float(d_cutoff), float(reset_after)
        self.reset()

    def reset(self) -> None:
        """Forget every element's state."""
        self._x: np.ndarray | None = None  # last estimate, NaN where never observed
        self._dx: np.ndarray | None = None  # last speed estimate (units/s)
        self._t: np.ndarray | None = None  # time of each element's last observation (s)

    def __call__(self, x: np.ndarray, t: float) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        if self._x is None or self._x.shape != x.shape:
            self._x = np.full(x.shape, np.nan)
            self._dx = np.zeros(x.shape)
            self._t = np.full(x.shape, -np.inf)
        assert self._dx is not None and self._t is not None
        observed = np.isfinite(x)
        dt = float(t) - self._t
        fresh = observed & (~np.isfinite(self._x) | (dt <= 0) | (dt > self.reset_after))
        blend = observed & ~fresh
        out = np.full(x.shape, np.nan)
        out[fresh] = x[fresh]
        self._dx[fresh] = 0.0
        if blend.any():
            step = dt[blend]
            prev = self._x[blend]
            a_d = smoothing_factor(self.d_cutoff, step)
            dx = a_d * (x[blend] - prev) / step + (1.0 - a_d) * self._dx[blend]
            a = smoothing_factor(self.min_cutoff + self.beta * np.abs(dx), step)
            out[blend] = a * x[blend] + (1.0 - a) * prev
            self._dx[blend] = dx
        self._x[observed] = out[observed]
        self._t[observed] = float(t)
        return out


def one_euro_sequence(
    points: np.ndarray,
    times: np.ndarray,
    min_cutoff: float = 1.0,
    beta: float = 0.5,
    d_cutoff: float = 1.0,
    reset_after: float = 0.5,
) -> np.ndarray:
    """Filter a sequence ``points (T, ...)`` sampled at ``times (T,)`` seconds (causal); NaN
    stays NaN."""
    f = OneEuroFilter(min_cutoff, beta, d_cutoff, reset_after)
    return np.stack([f(p, t) for p, t in zip(points, times, strict=True)])
