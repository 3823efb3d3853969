"""Optional post-processing of 3D pose estimates, as real-time systems use to cut depth noise.

Stereo triangulation is noisy mostly along the viewing ray (depth error grows as ``Z^2 / (f B)``
per pixel of disparity error). Two cheap remedies, evaluated by ``python -m training eval``:

* **Temporal filtering** of a sequence (causal, usable live):
  :class:`OneEuroFilter` / :func:`one_euro_sequence` (Casiez et al., CHI 2012: an adaptive
  low-pass whose cut-off rises with speed; defined in :mod:`stereo_pose3d.filters`, which the
  node uses too) and :func:`kalman_cv_sequence` (a constant-velocity
  Kalman filter per coordinate; ``smooth=True`` adds the offline Rauch-Tung-Striebel pass).
* **Bone-length-consistent refinement** (:func:`refine_bone_lengths`): the pose closest to the
  observations whose bones have given lengths, as a soft constraint. The observations are the
  per-view 2D detections (reprojection error in pixels, weighted by confidence: the depth, that
  pixels constrain poorly, is what the bone lengths fix) or, without 2D, the 3D estimate itself.
  Lengths are *fixed* (e.g. the median of the training set's ground truth,
  :func:`median_bone_lengths`) or *learned* from the estimates of the sequence so far
  (:func:`sequence_bone_lengths`, causal running median).

All functions take numpy arrays in metres (3D), pixels (2D) and seconds; joints ``(..., J, 3)``.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import torch

from stereo_pose3d.filters import OneEuroFilter, one_euro_sequence

__all__ = [
    "OneEuroFilter",
    "bone_vectors",
    "kalman_cv_sequence",
    "median_bone_lengths",
    "one_euro_sequence",
    "refine_bone_lengths",
    "sequence_bone_lengths",
    "temporal_filter",
]


# --------------------------------------------------------------------------------------------
# Temporal filters
# --------------------------------------------------------------------------------------------


def temporal_filter(
    points: np.ndarray,
    times: np.ndarray,
    sequences: Sequence[np.ndarray],
    kind: str,
    params: Sequence[float],
) -> np.ndarray:
    """``points (N, J, 3)`` at ``times (N,)`` filtered sequence by sequence (``sequences``: index
    arrays in time order): ``kind`` ``"one_euro"`` (``params`` = min_cutoff Hz, beta s/m; joints
    unseen for the node's ``SMOOTHING_RESET_S`` restart, as in the node) or ``"kalman_cv"``
    (accel_std m/s^2, meas_std m). The output keeps only the joints of the input (NaN where it
    is NaN, e.g. where the Kalman filter would predict through a gap) and is NaN outside
    ``sequences``, so that variants are scored on the same joints."""
    from stereo_pose3d.pipeline import SMOOTHING_RESET_S

    out = np.full_like(points, np.nan)
    for idx in sequences:
        if kind == "one_euro":
            out[idx] = one_euro_sequence(
                points[idx], times[idx], *params, reset_after=SMOOTHING_RESET_S
            )
        elif kind == "kalman_cv":
            out[idx] = kalman_cv_sequence(points[idx], times[idx], *params)
        else:
            raise ValueError(f"unknown temporal filter {kind!r} (one_euro, kalman_cv)")
    return np.where(np.isfinite(points), out, np.nan)


def kalman_cv_sequence(
    points: np.ndarray,
    times: np.ndarray,
    accel_std: float = 5.0,
    meas_std: float | np.ndarray = 0.03,
    smooth: bool = False,
) -> np.ndarray:
    """Constant-velocity Kalman filter of ``points (T, J, 3)`` at ``times (T,)``.

    Each coordinate is an independent state ``[position, velocity]`` driven by white
    acceleration noise of ``accel_std`` m/s^2; measurements have std ``meas_std`` m (a scalar or
    ``(T, J)`` per-joint values, e.g. from confidences). A NaN measurement (missing detection)
    is predicted through with the constant-velocity model; elements never observed stay NaN.
    ``smooth=True`` runs the Rauch-Tung-Striebel smoother afterwards (offline, uses future
    frames).
    """
    points = np.asarray(points, dtype=np.float64)
    times = np.asarray(times, dtype=np.float64)
    T = points.shape[0]
    shape = points.shape[1:]
    r = np.broadcast_to(np.asarray(meas_std, dtype=np.float64), (T, *shape[:-1]))
    r = np.repeat(r[..., None] ** 2, shape[-1], axis=-1)  # (T, J, 3) variances
    q = accel_std**2
    # State per element: mean (2,) and covariance (2, 2), vectorised over the elements.
    x = np.zeros((*shape, 2))
    Pc = np.zeros((*shape, 2, 2))
    started = np.zeros(shape, dtype=bool)
    xs_pred, Ps_pred, xs, Ps, Fs = [], [], [], [], []
    out = np.full_like(points, np.nan)
    for k in range(T):
        dt = float(times[k] - times[k - 1]) if k > 0 else 0.0
        dt = max(dt, 1e-6)
        F = np.array([[1.0, dt], [0.0, 1.0]])
        Q = q * np.array([[dt**4 / 4, dt**3 / 2], [dt**3 / 2, dt**2]])
        if k > 0:
            x = x @ F.T
            Pc = F @ Pc @ F.T + Q
        xs_pred.append(x.copy())
        Ps_pred.append(Pc.copy())
        Fs.append(F)
        z = points[k]
        ok = np.isfinite(z) & np.isfinite(r[k])
        init = ok & ~started
        # First observation of an element: position = z, velocity 0 with a wide prior.
        x[init, 0], x[init, 1] = z[init], 0.0
        Pc[init] = np.array([[1.0, 0.0], [0.0, 0.0]]) * r[k][init][:, None, None] + np.array(
            [[0.0, 0.0], [0.0, 4.0]]
        )
        started |= init
        upd = ok & ~init & started
        if upd.any():
            S = Pc[upd][:, 0, 0] + r[k][upd]
            K = Pc[upd][:, :, 0] / S[:, None]  # (n, 2)
            innov = z[upd] - x[upd][:, 0]
            x[upd] = x[upd] + K * innov[:, None]
            Pc[upd] = Pc[upd] - K[:, :, None] * Pc[upd][:, 0:1, :]
        xs.append(x.copy())
        Ps.append(Pc.copy())
        out[k] = np.where(started, x[..., 0], np.nan)
    if not smooth or T < 2:
        return out
    xs_s, Ps_s = xs[-1].copy(), Ps[-1].copy()
    result = out.copy()
    for k in range(T - 2, -1, -1):
        F = Fs[k + 1]
        P_pred = Ps_pred[k + 1]
        det = P_pred[..., 0, 0] * P_pred[..., 1, 1] - P_pred[..., 0, 1] * P_pred[..., 1, 0]
        det = np.where(np.abs(det) < 1e-18, 1e-18, det)
        inv = (
            np.stack(
                [
                    np.stack([P_pred[..., 1, 1], -P_pred[..., 0, 1]], -1),
                    np.stack([-P_pred[..., 1, 0], P_pred[..., 0, 0]], -1),
                ],
                -2,
            )
            / det[..., None, None]
        )
        C = Ps[k] @ F.T @ inv
        xs_s = xs[k] + (C @ (xs_s - xs_pred[k + 1])[..., None])[..., 0]
        Ps_s = Ps[k] + C @ (Ps_s - P_pred) @ np.swapaxes(C, -1, -2)
        result[k] = np.where(np.isfinite(out[k]), xs_s[..., 0], np.nan)
    return result


# --------------------------------------------------------------------------------------------
# Bone lengths
# --------------------------------------------------------------------------------------------


def bone_vectors(points: np.ndarray, bones: Sequence[tuple[int, int]]) -> np.ndarray:
    """``points (..., J, 3)`` -> bone lengths ``(..., B)`` (same unit)."""
    points = np.asarray(points, dtype=np.float64)
    a = np.array([b[0] for b in bones])
    b = np.array([b[1] for b in bones])
    return np.linalg.norm(points[..., a, :] - points[..., b, :], axis=-1)


def median_bone_lengths(
    points: np.ndarray, bones: Sequence[tuple[int, int]], valid: np.ndarray | None = None
) -> np.ndarray:
    """Median length ``(B,)`` of each bone over poses ``(N, J, 3)`` (ignoring invalid joints)."""
    lengths = bone_vectors(points, bones)  # (N, B)
    if valid is not None:
        valid = np.asarray(valid, bool)
        ok = np.stack([valid[:, a] & valid[:, b] for a, b in bones], axis=-1)
        lengths = np.where(ok, lengths, np.nan)
    lengths = np.where(np.isfinite(lengths), lengths, np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns give NaN
        return np.nanmedian(lengths, axis=0)


def sequence_bone_lengths(
    points: np.ndarray, bones: Sequence[tuple[int, int]], causal: bool = True
) -> np.ndarray:
    """Bone lengths ``(T, B)`` learned from a sequence's own estimates ``(T, J, 3)``.

    ``causal``: frame ``t`` uses the median over frames ``0..t`` (what a live system knows);
    otherwise the median of the whole sequence for every frame.
    """
    lengths = bone_vectors(points, bones)
    lengths = np.where(np.isfinite(lengths), lengths, np.nan)
    T = lengths.shape[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns give NaN
        if not causal:
            return np.broadcast_to(np.nanmedian(lengths, axis=0), lengths.shape).copy()
        out = np.empty_like(lengths)
        for t in range(T):
            out[t] = np.nanmedian(lengths[: t + 1], axis=0)
    return out


def refine_bone_lengths(
    points: np.ndarray,
    bones: Sequence[tuple[int, int]],
    lengths: np.ndarray,
    points_2d: np.ndarray | None = None,
    projections: np.ndarray | None = None,
    confidence: np.ndarray | None = None,
    sigma_px: float = 2.0,
    sigma_3d: float = 0.03,
    sigma_bone: float = 0.01,
    iterations: int = 30,
) -> np.ndarray:
    """Poses near the observations with bone lengths near ``lengths``.

    Minimises per pose (independently, batched, float64, L-BFGS from the input pose)::

        sum_vj c_vj |proj(P_v, X_j) - u_vj|^2 / sigma_px^2      (with 2D: reprojection)
     or sum_j  c_j  |X_j - X^_j|^2 / sigma_3d^2                  (without 2D)
        + sum_b (|X_a - X_b| - L_b)^2 / sigma_bone^2

    Args:
        points: ``(N, J, 3)`` initial estimates (m); NaN poses are returned unchanged.
        bones: ``(a, b)`` joint pairs; lengths: ``(B,)`` or ``(N, B)`` m (NaN = bone ignored).
        points_2d: ``(N, V, J, 2)`` detections in the pixels of ``projections (N, V, 3, 4)``.
        confidence: ``(N, V, J)`` with 2D, ``(N, J)`` without (default ones).
        sigma_*: how much each residual is trusted (px, m, m).

    Returns:
        ``(N, J, 3)`` refined poses.
    """
    X0 = np.asarray(points, dtype=np.float64)
    N = X0.shape[0]
    out = X0.copy()
    ok = np.isfinite(X0).all(axis=(1, 2))
    if not ok.any():
        return out
    L = np.broadcast_to(np.asarray(lengths, dtype=np.float64), (N, len(bones)))[ok]
    bone_ok = torch.from_numpy(np.isfinite(L))
    L_t = torch.from_numpy(np.nan_to_num(L))
    a = torch.tensor([b[0] for b in bones])
    b = torch.tensor([b[1] for b in bones])
    X_init = torch.from_numpy(X0[ok])
    use_2d = points_2d is not None and projections is not None
    if use_2d:
        uv = torch.from_numpy(np.asarray(points_2d, dtype=np.float64)[ok])
        Pm = torch.from_numpy(np.asarray(projections, dtype=np.float64)[ok])
        shape_c = uv.shape[:-1]
    else:
        shape_c = X_init.shape[:-1]
    c = torch.ones(shape_c, dtype=torch.float64)
    if confidence is not None:
        c = torch.from_numpy(np.nan_to_num(np.asarray(confidence, dtype=np.float64)[ok]))
    if use_2d:
        finite = torch.isfinite(uv).all(-1)
        c = torch.where(finite, c, torch.zeros_like(c))
        uv = torch.nan_to_num(uv)
    X = X_init.clone().requires_grad_(True)
    opt = torch.optim.LBFGS(
        [X], lr=1.0, max_iter=iterations, line_search_fn="strong_wolfe", tolerance_grad=1e-10
    )

    def energy() -> torch.Tensor:
        opt.zero_grad()
        if use_2d:
            h = X.unsqueeze(1) @ Pm[..., :3].transpose(-1, -2) + Pm[..., None, :, 3]
            z = h[..., 2:3]
            proj = h[..., :2] / torch.where(z.abs() < 1e-6, torch.full_like(z, 1e-6), z)
            data = (c * ((proj - uv) ** 2).sum(-1)).sum() / sigma_px**2
        else:
            data = (c * ((X - X_init) ** 2).sum(-1)).sum() / sigma_3d**2
        d = torch.linalg.vector_norm(X[:, a] - X[:, b], dim=-1)
        bone = torch.where(bone_ok, (d - L_t) ** 2, torch.zeros_like(d)).sum() / sigma_bone**2
        e = data + bone
        e.backward()
        return e

    opt.step(energy)
    refined = X.detach().numpy()
    refined = np.where(np.isfinite(refined), refined, X0[ok])
    out[ok] = refined
    return out
