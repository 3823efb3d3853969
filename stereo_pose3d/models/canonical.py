"""The canonical frame: the reference (first) view's camera frame, derived from its P alone.

Both pose networks work on projection matrices expressed in this frame, and triangulate in it,
so that their outputs do not depend on the world frame the user's P's project from:

* ``P`` is first scaled so its third row has a unit-norm rotation part (P is only defined up to
  scale; this makes ``P @ X`` return metric depth as its third coordinate). The sign is kept
  (users give P's with positive depth in front of the camera, as in ``CameraInfo``).
* the reference camera's rotation ``R`` (rows ``r1, r2, r3``) comes from Gram-Schmidt on the rows
  of ``M = P[:, :3]`` from the bottom up (the RQ decomposition ``M = K R`` with ``K`` upper
  triangular, ``K[1, 1], K[2, 2] > 0``, ``R`` a proper rotation) and its centre is
  ``C = -M^-1 P[:, 3]``;
* ``W = [[R, -R C], [0, 1]]`` maps world points into the reference camera frame; every view's
  canonical projection is ``P_v W^-1`` (the reference view's becomes ``[K | 0]``).

Under a rigid change of world frame ``X' = T X`` (``P_v' = P_v T^-1``) we get ``W' = W T^-1`` and
identical canonical projections, hence identical network inputs, heatmaps and canonical 3D
points; the output ``W'^-1 X_c = T W^-1 X_c`` transforms exactly with the world.
"""

from __future__ import annotations

import torch

from stereo_pose3d.geometry import triangulate, triangulate_dlt, triangulate_dlt_iterative


def normalize_projection(P: torch.Tensor) -> torch.Tensor:
    """Scale ``P (..., 3, 4)`` so that ``|P[2, :3]| = 1`` (sign kept)."""
    return P / torch.linalg.vector_norm(P[..., 2, :3], dim=-1)[..., None, None].clamp_min(1e-12)


def canonical_frame(P_ref: torch.Tensor) -> torch.Tensor:
    """World -> reference camera rigid transform ``W (..., 4, 4)`` from ``P_ref (..., 3, 4)``."""
    P = normalize_projection(P_ref)
    M, p = P[..., :3], P[..., 3]
    r3 = M[..., 2, :]
    m2 = M[..., 1, :]
    r2 = m2 - (m2 * r3).sum(-1, keepdim=True) * r3
    r2 = r2 / torch.linalg.vector_norm(r2, dim=-1, keepdim=True).clamp_min(1e-12)
    r1 = torch.linalg.cross(r2, r3, dim=-1)
    R = torch.stack([r1, r2, r3], dim=-2)
    C = -torch.linalg.solve(M, p.unsqueeze(-1))[..., 0]
    W = torch.zeros(*P.shape[:-2], 4, 4, dtype=P.dtype, device=P.device)
    W[..., :3, :3] = R
    W[..., :3, 3] = -(R @ C.unsqueeze(-1))[..., 0]
    W[..., 3, 3] = 1.0
    return W


def rigid_inverse(W: torch.Tensor) -> torch.Tensor:
    """Inverse of rigid transforms ``(..., 4, 4)``."""
    R, t = W[..., :3, :3], W[..., :3, 3:]
    inv = torch.zeros_like(W)
    inv[..., :3, :3] = R.transpose(-1, -2)
    inv[..., :3, 3:] = -R.transpose(-1, -2) @ t
    inv[..., 3, 3] = 1.0
    return inv


def pixel_normalization(size: tuple[int, int], dtype=torch.float32, device=None) -> torch.Tensor:
    """``N (3, 3)``: pixels of an image of ``size (W, H)`` -> [-1, 1] (by the larger side)."""
    w, h = size
    s = 2.0 / max(w, h)
    return torch.tensor(
        [[s, 0.0, -s * (w - 1) / 2], [0.0, s, -s * (h - 1) / 2], [0.0, 0.0, 1.0]],
        dtype=dtype,
        device=device,
    )


def canonical_projections(
    P: torch.Tensor, image_size: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Canonical, pixel-normalised projections of all views.

    Args:
        P: ``(B, V, 3, 4)`` crop-adjusted projections (crop pixels), any scale.
        image_size: crop ``(W, H)``.

    Returns:
        ``P_c (B, V, 3, 4)`` = ``N P_v W^-1`` normalised (maps canonical-frame points to [-1, 1]
        crop coordinates), ``N (3, 3)`` and ``W_inv (B, 4, 4)`` (canonical -> world).
        Computed in float64 and returned in ``P``'s dtype (at least float32).
    """
    dtype = P.dtype if P.dtype in (torch.float32, torch.float64) else torch.float32
    P64 = normalize_projection(P.double())
    W_inv = rigid_inverse(canonical_frame(P64[:, 0]))
    N = pixel_normalization(image_size, torch.float64, P.device)
    P_c = normalize_projection(N @ P64 @ W_inv.unsqueeze(1))
    return P_c.to(dtype), N.to(dtype), W_inv.to(dtype)


def triangulate_canonical(
    joints_2d: torch.Tensor,
    P_c: torch.Tensor,
    N: torch.Tensor,
    W_inv: torch.Tensor,
    weights: torch.Tensor,
    method: str = "svd",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted DLT in the canonical frame, mapped back to the world frame of the input P's.

    Args:
        joints_2d: ``(B, V, J, 2)`` crop pixels; ``P_c``, ``N``, ``W_inv`` from
            :func:`canonical_projections`; ``weights (B, V, J)`` >= 0.

    Returns:
        ``joints_3d (B, J, 3)`` (differentiable; raw DLT result even where degenerate) and
        ``valid (B, J)`` bool (see :func:`stereo_pose3d.geometry.triangulate`).
    """
    uv = joints_2d @ N[:2, :2].T + N[:2, 2]
    solve = triangulate_dlt if method == "svd" else triangulate_dlt_iterative
    X_c = solve(uv, P_c, weights)
    with torch.no_grad():
        valid = triangulate(uv, P_c, weights, method=method).valid
    X = X_c @ W_inv[:, :3, :3].transpose(-1, -2) + W_inv[:, None, :3, 3]
    return X, valid
