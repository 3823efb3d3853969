"""Image preparation shared by training and inference: letterbox, person crops, crop-adjusted P.

Use the same functions in training and in the estimator, so that crops (and the P's the network
is conditioned on) are cut identically.

* :func:`letterbox` -- a full frame into the locator's input (aspect kept, centred, zero padded)
  and the affine ``A`` mapping full-frame pixels to locator pixels.
* :func:`stereo_boxes` -- the two views' boxes made consistent: same side, and for a rectified pair
  the same rows (epipolar lines are image rows).
* :func:`crop_regions` -- what the estimator crops for person boxes: :func:`stereo_boxes` padded
  by ``crop_scale`` with a minimum side. Training should crop the dataset's ``box`` with it too.
* :func:`make_crop` / :func:`crop_views` -- the square crop of a region (with scale / in-plane
  rotation augmentation) and its crop-adjusted projection ``A @ P``.
* :func:`transform_boxes` -- boxes through an axis-aligned affine (e.g. the letterbox's ``A``, to
  get the locator's training boxes from the dataset's).
* :func:`normalize_image` -- uint8 HxWx3 RGB -> float tensor (3, H, W) with ImageNet mean/std.

Horizontal flip augmentation: flipping a crop (``A_flip = [[-1, 0, w - 1], [0, 1, 0], [0, 0, 1]]``)
makes ``A_flip A P`` a mirrored camera (negative determinant). Mirror the world as well, so
cameras stay proper: ``P' = A_flip A P S``, ``X' = S X`` with ``S = diag(-1, 1, 1, 1)``, and permute
the joints with ``Skeleton.flip_permutation``; for a stereo pair also swap the two views (the left
camera becomes the right one).
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
import torch

from stereo_pose3d.geometry import crop_transform, transform_projection


def letterbox(image: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Resize ``image (H, W, 3)`` to fit ``size (w, h)`` keeping the aspect ratio, centred on a
    black canvas.

    Returns:
        ``(h, w, 3)`` image and ``A (3, 3)`` full-frame pixels -> letterboxed pixels.
    """
    out_w, out_h = size
    H, W = image.shape[:2]
    s = min(out_w / W, out_h / H)
    new_w, new_h = max(1, round(W * s)), max(1, round(H * s))
    resized = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_AREA)
    canvas = np.zeros((out_h, out_w, image.shape[2]), dtype=image.dtype)
    x0, y0 = (out_w - new_w) // 2, (out_h - new_h) // 2
    canvas[y0 : y0 + new_h, x0 : x0 + new_w] = resized
    sx, sy = new_w / W, new_h / H
    # cv2.resize maps pixel centres: x' = (x + 0.5) * sx - 0.5.
    A = np.array([[sx, 0.0, 0.5 * sx - 0.5 + x0], [0.0, sy, 0.5 * sy - 0.5 + y0], [0.0, 0.0, 1.0]])
    return canvas, A


def is_rectified_pair(P: np.ndarray, tol: float = 1e-3) -> bool:
    """True if the views of ``P (V, 3, 4)`` share their second and third rows (same image rows)."""
    P = np.asarray(P, dtype=np.float64)
    ref = P[0, 1:] / np.linalg.norm(P[0, 2, :3])
    for Pv in P[1:]:
        rows = Pv[1:] / np.linalg.norm(Pv[2, :3])
        if not np.allclose(rows, ref, atol=tol * max(1.0, np.abs(ref).max())):
            return False
    return True


def stereo_boxes(boxes: np.ndarray, rectified: bool) -> np.ndarray:
    """Consistent square boxes for all views.

    Args:
        boxes: ``(V, 4)`` xyxy per view (e.g. the locator's).
        rectified: views share image rows (:func:`is_rectified_pair`).

    Returns:
        ``(V, 4)`` squares of one common side (the largest box side over the views), centred on
        each view's box; for a rectified pair the vertical centre is the views' mean, so both
        crops cover the same rows.
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    side = max(float(np.max(boxes[:, 2:] - boxes[:, :2])), 1.0)
    cx = (boxes[:, 0] + boxes[:, 2]) / 2
    cy = (boxes[:, 1] + boxes[:, 3]) / 2
    if rectified:
        cy = np.full_like(cy, cy.mean())
    half = side / 2
    return np.stack([cx - half, cy - half, cx + half, cy + half], axis=1)


def crop_regions(
    boxes: np.ndarray,
    P: np.ndarray,
    image_height: int,
    crop_scale: float = 1.25,
    min_box_fraction: float = 0.08,
) -> np.ndarray:
    """Square crop regions ``(V, 4)`` for person ``boxes (V, 4)`` seen by cameras ``P (V, 3, 4)``.

    One side for all views: ``max(crop_scale * largest box side, min_box_fraction * image
    height)``; centred on each box, on common rows for a rectified pair.
    """
    squares = stereo_boxes(boxes, is_rectified_pair(P))
    side = max((squares[0, 2] - squares[0, 0]) * crop_scale, min_box_fraction * image_height)
    centre = (squares[:, :2] + squares[:, 2:]) / 2
    return np.concatenate([centre - side / 2, centre + side / 2], axis=1)


def transform_boxes(A: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """xyxy ``boxes (..., 4)`` through an axis-aligned affine ``A (3, 3)`` (scale + shift)."""
    boxes = np.asarray(boxes, dtype=np.float64)
    corners = boxes.reshape(*boxes.shape[:-1], 2, 2) @ A[:2, :2].T + A[:2, 2]
    return corners.reshape(boxes.shape)


def box_from_joints(joints_2d: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """Tight xyxy box ``(4,)`` around ``joints_2d (J, 2)`` (only ``mask`` ones if given)."""
    pts = np.asarray(joints_2d, dtype=np.float64)
    if mask is not None and np.any(mask):
        pts = pts[np.asarray(mask, dtype=bool)]
    return np.concatenate([pts.min(axis=0), pts.max(axis=0)])


def make_crop(
    image: np.ndarray,
    P: np.ndarray,
    box: Sequence[float] | np.ndarray,
    out_size: tuple[int, int],
    scale: float = 1.0,
    rotation_deg: float = 0.0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cut the square crop around ``box`` and adjust the projection.

    Args:
        image: ``(H, W, 3)`` full frame; ``P`` its ``(3, 4)`` projection; ``box`` xyxy pixels.
        out_size: crop ``(w, h)``; ``scale`` side multiplier (padding around the box, or scale
            augmentation); ``rotation_deg`` in-plane rotation augmentation.

    Returns:
        crop ``(h, w, 3)`` (bilinear, black outside the image), ``P_crop (3, 4) = A @ P`` and
        ``A (3, 3)`` full-frame pixels -> crop pixels (``np.linalg.inv(A)`` maps back).
    """
    A = crop_transform(np.asarray(box, dtype=np.float64), out_size, rotation_deg, scale)
    crop = cv2.warpAffine(
        image, A[:2], tuple(out_size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT
    )
    return crop, transform_projection(A, np.asarray(P, dtype=np.float64)), A


def crop_views(
    images: Sequence[np.ndarray],
    P: np.ndarray,
    regions: np.ndarray,
    out_size: tuple[int, int],
    scale: float | Sequence[float] = 1.0,
    rotation_deg: float | Sequence[float] = 0.0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`make_crop` for every view: ``crops (V, h, w, 3)``, ``P_crop (V, 3, 4)``,
    ``A (V, 3, 3)``; ``scale`` / ``rotation_deg`` per view or shared."""
    V = len(images)
    scales = np.broadcast_to(np.asarray(scale, dtype=np.float64), (V,))
    angles = np.broadcast_to(np.asarray(rotation_deg, dtype=np.float64), (V,))
    out = [
        make_crop(images[v], P[v], regions[v], out_size, float(scales[v]), float(angles[v]))
        for v in range(V)
    ]
    return tuple(np.stack(x) for x in zip(*out, strict=True))  # type: ignore[return-value]


def normalize_image(image: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 ``(H, W, 3)`` RGB -> float32 ``(3, H, W)``, ``(x / 255 - mean) / std``."""
    x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div_(255.0)
    mean_t = torch.tensor(mean, dtype=torch.float32)[:, None, None]
    std_t = torch.tensor(std, dtype=torch.float32)[:, None, None]
    return (x - mean_t) / std_t
