"""Gaussian heatmap targets (Simple Baselines style) and the crop <-> heatmap pixel mapping.

Convention (the same as ``stereo_pose3d.models.heatmaps``, which the models decode with): integer
coordinates are pixel centres; a heatmap of size ``(w, h)`` for a crop of size ``(W, H)`` has stride
``s = (W / w, H / h)`` and heatmap cell ``u`` covers crop pixels ``[s u - 0.5, s u + s - 0.5]``, so
``uv_crop = s * uv_heatmap + (s - 1) / 2`` (:func:`heatmap_to_crop`, inverse
:func:`crop_to_heatmap`). (Simple Baselines itself uses ``uv_crop = s * uv_heatmap``, a shift of
1.5 crop pixels at stride 4.)

Each joint's target is an unnormalised Gaussian (peak 1) with standard deviation ``sigma`` heatmap
pixels, truncated at ``3 sigma``. With ``subpixel=True`` (default) the Gaussian is centred at the
exact sub-pixel location; ``subpixel=False`` rounds the centre to the nearest heatmap cell as the
Simple Baselines code does (targets then are biased by up to half a cell, which matters for
soft-argmax decoders). A joint gets weight 0 when it is not visible or its
truncated Gaussian does not overlap the heatmap at all (the Simple Baselines rule).
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "crop_to_heatmap",
    "gaussian_heatmaps",
    "heatmap_argmax",
    "heatmap_stride",
    "heatmap_to_crop",
]


def heatmap_stride(
    image_size: tuple[int, int], heatmap_size: tuple[int, int]
) -> tuple[float, float]:
    """Stride ``(s_x, s_y)`` from crop size ``(W, H)`` and heatmap size ``(w, h)``."""
    return image_size[0] / heatmap_size[0], image_size[1] / heatmap_size[1]


def crop_to_heatmap(
    uv: np.ndarray, image_size: tuple[int, int], heatmap_size: tuple[int, int]
) -> np.ndarray:
    """Crop pixels ``(..., 2)`` -> heatmap pixels ``(..., 2)``."""
    s = np.array(heatmap_stride(image_size, heatmap_size))
    return (np.asarray(uv, dtype=np.float64) - (s - 1.0) / 2.0) / s


def heatmap_to_crop(uv_heatmap, image_size: tuple[int, int], heatmap_size: tuple[int, int]):
    """Heatmap pixels ``(..., 2)`` -> crop pixels (numpy array or torch tensor alike)."""
    s = np.array(heatmap_stride(image_size, heatmap_size))
    if hasattr(uv_heatmap, "new_tensor"):  # torch
        st = uv_heatmap.new_tensor(s)
        return uv_heatmap * st + (st - 1.0) / 2.0
    return np.asarray(uv_heatmap, dtype=np.float64) * s + (s - 1.0) / 2.0


def gaussian_heatmaps(
    joints_2d: np.ndarray,
    visibility: np.ndarray | None = None,
    image_size: tuple[int, int] = (256, 256),
    heatmap_size: tuple[int, int] = (64, 64),
    sigma: float = 2.0,
    subpixel: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian targets for one crop.

    Args:
        joints_2d: (J, 2) joint positions in crop pixels.
        visibility: (J,) bool/0-1; None means all visible. Non-finite joints count as invisible.
        image_size: crop size (W, H) in pixels.
        heatmap_size: heatmap size (w, h); Simple Baselines uses a quarter of the crop.
        sigma: Gaussian standard deviation in heatmap pixels.
        subpixel: centre at the exact location (True) or at the rounded pixel (Simple Baselines).

    Returns:
        heatmaps (J, h, w) float32 in [0, 1] and weights (J,) float32 in {0, 1}.
    """
    joints = np.asarray(joints_2d, dtype=np.float64).reshape(-1, 2)
    num_joints = joints.shape[0]
    vis = np.ones(num_joints, bool) if visibility is None else np.asarray(visibility) > 0
    vis = vis.reshape(num_joints) & np.isfinite(joints).all(axis=1)
    w, h = heatmap_size
    centre = crop_to_heatmap(np.where(np.isfinite(joints), joints, 0.0), image_size, heatmap_size)
    if not subpixel:
        centre = np.floor(centre + 0.5)
    radius = 3.0 * sigma
    # Simple Baselines: weight 0 when the truncated window misses the heatmap entirely.
    inside = (
        (centre[:, 0] + radius >= 0)
        & (centre[:, 1] + radius >= 0)
        & (centre[:, 0] - radius <= w - 1)
        & (centre[:, 1] - radius <= h - 1)
    )
    weight = (vis & inside).astype(np.float32)
    xs = np.arange(w, dtype=np.float64)[None, :] - centre[:, 0:1]  # (J, w)
    ys = np.arange(h, dtype=np.float64)[None, :] - centre[:, 1:2]  # (J, h)
    gx = np.where(np.abs(xs) <= radius, np.exp(-(xs**2) / (2 * sigma**2)), 0.0)
    gy = np.where(np.abs(ys) <= radius, np.exp(-(ys**2) / (2 * sigma**2)), 0.0)
    heatmaps = gy[:, :, None] * gx[:, None, :] * weight[:, None, None]
    return heatmaps.astype(np.float32), weight


def heatmap_argmax(heatmaps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Integer argmax of heatmaps ``(..., J, h, w)`` -> (heatmap pixels ``(..., J, 2)``, peak values
    ``(..., J)``). Use :func:`heatmap_to_crop` to go back to crop pixels."""
    heatmaps = np.asarray(heatmaps)
    h, w = heatmaps.shape[-2:]
    flat = heatmaps.reshape(*heatmaps.shape[:-2], h * w)
    index = flat.argmax(axis=-1)
    peak = np.take_along_axis(flat, index[..., None], axis=-1)[..., 0]
    uv = np.stack([index % w, index // w], axis=-1).astype(np.float64)
    return uv, peak
