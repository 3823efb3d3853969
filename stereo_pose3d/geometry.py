"""Stereo geometry: cameras from CameraInfo, projection, crops and DLT triangulation.

Pure numpy / torch, no ROS import. Conventions follow ``sensor_msgs/CameraInfo``:

* ``K (3, 3)`` intrinsics of the raw (distorted) image, ``D`` its distortion coefficients
  (``plumb_bob``: k1, k2, p1, p2, k3; ``rational_polynomial``: k1, k2, p1, p2, k3, k4, k5, k6).
* ``R (3, 3)`` rectification rotation: raw camera frame -> rectified frame.
* ``P (3, 4)`` projection of the rectified image. For a stereo pair both P's project from the
  LEFT camera's rectified frame (metres; x right, y down, z forward); the right camera has
  ``P[0, 3] = -fx * B`` with baseline ``B`` in metres.

Triangulation works on batches of any leading shape with ``V >= 2`` views:
``points_2d (..., V, J, 2)``, ``projections (..., V, 3, 4)``, ``weights (..., V, J)`` ->
``(..., J, 3)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import torch

__all__ = [
    "CalibrationError",
    "CameraModel",
    "Triangulation",
    "crop_transform",
    "distort_points",
    "epipolar_distance",
    "fundamental_matrix",
    "project",
    "reprojection_error",
    "stereo_baseline",
    "transform_points",
    "transform_projection",
    "triangulate",
    "triangulate_dlt",
    "triangulate_dlt_iterative",
    "undistort_points",
]

DISTORTION_MODELS = ("plumb_bob", "rational_polynomial", "equidistant", "")


class CalibrationError(ValueError):
    """A camera calibration that cannot be used (uncalibrated, NaN, inconsistent sizes)."""


# --------------------------------------------------------------------------------------------
# Cameras
# --------------------------------------------------------------------------------------------


def _matrix(values: Any, shape: tuple[int, int], name: str) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.size != shape[0] * shape[1]:
        raise CalibrationError(f"{name} has {array.size} values, expected {shape[0] * shape[1]}")
    return array.reshape(shape)


@dataclass
class CameraModel:
    """One camera of a (possibly rectified) stereo pair, as described by ``CameraInfo``.

    Attributes:
        width, height: image size in pixels.
        K: (3, 3) intrinsics of the raw image.
        D: (n,) distortion coefficients of the raw image (empty or zeros: none).
        distortion_model: ``"plumb_bob"``, ``"rational_polynomial"`` or ``""``.
        R: (3, 3) rectification rotation (raw camera frame -> rectified frame).
        P: (3, 4) projection of the rectified image from the left rectified frame.
        frame_id: optical frame of the image.
    """

    width: int
    height: int
    K: np.ndarray
    D: np.ndarray = field(default_factory=lambda: np.zeros(0))
    distortion_model: str = "plumb_bob"
    R: np.ndarray = field(default_factory=lambda: np.eye(3))
    P: np.ndarray | None = None
    frame_id: str = ""

    def __post_init__(self) -> None:
        self.K = _matrix(self.K, (3, 3), "K")
        self.D = np.asarray(self.D, dtype=np.float64).reshape(-1)
        self.R = _matrix(self.R, (3, 3), "R")
        if self.P is None or not np.any(np.asarray(self.P)):
            # CameraInfo with an all-zero P (monocular drivers): the raw K with no translation.
            self.P = np.hstack([self.K, np.zeros((3, 1))])
        self.P = _matrix(self.P, (3, 4), "P")

    @classmethod
    def from_camera_info(cls, msg: Any) -> CameraModel:
        """Build from a ``sensor_msgs/CameraInfo`` (ROS 2 field names; duck-typed, e.g. a dict
        wrapped in ``types.SimpleNamespace`` works too)."""
        header = getattr(msg, "header", None)
        return cls(
            width=int(msg.width),
            height=int(msg.height),
            K=np.asarray(msg.k, dtype=np.float64),
            D=np.asarray(msg.d, dtype=np.float64),
            distortion_model=str(msg.distortion_model or ""),
            R=np.asarray(msg.r, dtype=np.float64) if np.any(msg.r) else np.eye(3),
            P=np.asarray(msg.p, dtype=np.float64),
            frame_id=str(getattr(header, "frame_id", "")) if header is not None else "",
        )

    @property
    def is_calibrated(self) -> bool:
        """False for the all-zero K that uncalibrated drivers publish (or a zero focal length)."""
        return bool(self.K[0, 0] != 0.0 and self.K[1, 1] != 0.0 and self.P[2, 2] != 0.0)

    @property
    def has_distortion(self) -> bool:
        return bool(self.D.size and np.any(self.D != 0.0))

    @property
    def is_rectified(self) -> bool:
        """True when raw pixels are rectified pixels (no distortion, R = I, P[:3, :3] = K)."""
        return (
            not self.has_distortion
            and np.allclose(self.R, np.eye(3))
            and np.allclose(self.P[:, :3], self.K)
        )

    def validate(self) -> None:
        """Raise :class:`CalibrationError` with a readable reason if the camera is unusable."""
        if self.width <= 0 or self.height <= 0:
            raise CalibrationError(f"image size {self.width}x{self.height} is empty")
        for name, value in (("K", self.K), ("D", self.D), ("R", self.R), ("P", self.P)):
            if not np.all(np.isfinite(value)):
                raise CalibrationError(f"{name} contains NaN or inf")
        if not self.is_calibrated:
            raise CalibrationError("camera is uncalibrated (K or P has zero focal length)")
        if self.distortion_model not in DISTORTION_MODELS:
            raise CalibrationError(f"unsupported distortion model {self.distortion_model!r}")
        if abs(np.linalg.det(self.R) - 1.0) > 1e-3:
            raise CalibrationError("R is not a rotation matrix")

    def rectify_points(self, uv: np.ndarray) -> np.ndarray:
        """Raw (distorted) pixels ``(N, 2)`` -> rectified pixels ``(N, 2)`` of this camera's P."""
        if self.is_rectified:
            return np.asarray(uv, dtype=np.float64).reshape(-1, 2).copy()
        return undistort_points(uv, self.K, self.D, self.distortion_model, R=self.R, P=self.P)

    def to_camera_info_dict(self) -> dict[str, Any]:
        """Fields of a ``sensor_msgs/CameraInfo`` (flat lists), for building messages."""
        return {
            "width": int(self.width),
            "height": int(self.height),
            "distortion_model": self.distortion_model,
            "d": self.D.tolist(),
            "k": self.K.reshape(-1).tolist(),
            "r": self.R.reshape(-1).tolist(),
            "p": self.P.reshape(-1).tolist(),
            "frame_id": self.frame_id,
        }


def stereo_baseline(P_right: np.ndarray) -> float:
    """Baseline in metres from the right camera's projection (``P[0, 3] = -fx * B``)."""
    P_right = np.asarray(P_right, dtype=np.float64).reshape(3, 4)
    if P_right[0, 0] == 0.0:
        raise CalibrationError("right P has zero focal length")
    return float(-P_right[0, 3] / P_right[0, 0])


def fundamental_matrix(P_first: np.ndarray, P_second: np.ndarray) -> np.ndarray:
    """``F (3, 3)`` of two projections ``(3, 4)``: ``x2^T F x1 = 0`` for the images ``x1, x2``
    (homogeneous px) of any 3D point (Hartley & Zisserman, eq. 9.1: ``F = [e2]_x P2 P1^+`` with
    ``e2 = P2 C1``, ``C1`` the first camera's centre). Scaled to unit Frobenius norm."""
    P1 = np.asarray(P_first, dtype=np.float64).reshape(3, 4)
    P2 = np.asarray(P_second, dtype=np.float64).reshape(3, 4)
    centre = np.linalg.svd(P1)[2][-1]  # null vector of P1
    e2 = P2 @ centre
    skew = np.array([[0.0, -e2[2], e2[1]], [e2[2], 0.0, -e2[0]], [-e2[1], e2[0], 0.0]])
    F = skew @ P2 @ np.linalg.pinv(P1)
    return F / np.linalg.norm(F)


def epipolar_distance(points_2d: np.ndarray, P: np.ndarray) -> np.ndarray:
    """Symmetric epipolar distance (px) of point pairs ``points_2d (2, N, 2)`` in two views with
    projections ``P (2, 3, 4)``: the mean of each point's distance to the epipolar line of the
    other. 0 for the two images of one 3D point; ``|v_left - v_right|`` for a rectified pair.
    NaN where a point is not finite."""
    uv = np.asarray(points_2d, dtype=np.float64)
    F = fundamental_matrix(P[0], P[1])
    x1 = np.concatenate([uv[0], np.ones_like(uv[0, :, :1])], axis=-1)
    x2 = np.concatenate([uv[1], np.ones_like(uv[1, :, :1])], axis=-1)
    lines_2 = x1 @ F.T  # epipolar lines in the second image (F x1)
    lines_1 = x2 @ F  # in the first (F^T x2)
    residual = np.abs((x2 * lines_2).sum(axis=-1))
    with np.errstate(all="ignore"):
        d2 = residual / np.hypot(lines_2[:, 0], lines_2[:, 1])
        d1 = residual / np.hypot(lines_1[:, 0], lines_1[:, 1])
    return 0.5 * (d1 + d2)


# --------------------------------------------------------------------------------------------
# Distortion
# --------------------------------------------------------------------------------------------


def _split_coefficients(D: np.ndarray, model: str) -> tuple[np.ndarray, float, float]:
    """Radial numerator/denominator coefficients (k1..k6) and tangential (p1, p2)."""
    d = np.zeros(8)
    D = np.asarray(D, dtype=np.float64).reshape(-1)
    if model not in ("plumb_bob", "rational_polynomial", ""):
        raise CalibrationError(f"unsupported distortion model {model!r}")
    n = min(D.size, 8)
    d[:n] = D[:n]
    k = np.array([d[0], d[1], d[4], d[5], d[6], d[7]])  # k1 k2 k3 k4 k5 k6
    return k, float(d[2]), float(d[3])


def _distort_normalized(xy: np.ndarray, D: np.ndarray, model: str) -> np.ndarray:
    k, p1, p2 = _split_coefficients(D, model)
    x, y = xy[..., 0], xy[..., 1]
    r2 = x * x + y * y
    radial = (1 + k[0] * r2 + k[1] * r2**2 + k[2] * r2**3) / (
        1 + k[3] * r2 + k[4] * r2**2 + k[5] * r2**3
    )
    xd = x * radial + 2 * p1 * x * y + p2 * (r2 + 2 * x * x)
    yd = y * radial + p1 * (r2 + 2 * y * y) + 2 * p2 * x * y
    return np.stack([xd, yd], axis=-1)


def distort_points(
    xy_normalized: np.ndarray, K: np.ndarray, D: np.ndarray, distortion_model: str = "plumb_bob"
) -> np.ndarray:
    """Normalised image coordinates ``(N, 2)`` (x/z, y/z) -> distorted pixels ``(N, 2)``."""
    xy = np.asarray(xy_normalized, dtype=np.float64).reshape(-1, 2)
    xyd = _distort_normalized(xy, D, distortion_model)
    K = np.asarray(K, dtype=np.float64).reshape(3, 3)
    homogeneous = np.hstack([xyd, np.ones((len(xyd), 1))]) @ K.T
    return homogeneous[:, :2] / homogeneous[:, 2:3]


def undistort_points(
    uv: np.ndarray,
    K: np.ndarray,
    D: np.ndarray,
    distortion_model: str = "plumb_bob",
    R: np.ndarray | None = None,
    P: np.ndarray | None = None,
    iterations: int = 20,
) -> np.ndarray:
    """Distorted pixels ``(N, 2)`` -> undistorted points, with ``cv2.undistortPoints`` semantics.

    Without ``P`` the result is in normalised coordinates (after ``R``); with ``P`` it is in the
    pixels of ``P``. The inverse of the distortion uses the same fixed-point iteration as OpenCV.
    """
    uv = np.asarray(uv, dtype=np.float64).reshape(-1, 2)
    K = np.asarray(K, dtype=np.float64).reshape(3, 3)
    k, p1, p2 = _split_coefficients(D, distortion_model)
    x0 = (uv[:, 0] - K[0, 2] - K[0, 1] * (uv[:, 1] - K[1, 2]) / K[1, 1]) / K[0, 0]
    y0 = (uv[:, 1] - K[1, 2]) / K[1, 1]
    x, y = x0.copy(), y0.copy()
    for _ in range(iterations):
        r2 = x * x + y * y
        icdist = (1 + k[3] * r2 + k[4] * r2**2 + k[5] * r2**3) / (
            1 + k[0] * r2 + k[1] * r2**2 + k[2] * r2**3
        )
        dx = 2 * p1 * x * y + p2 * (r2 + 2 * x * x)
        dy = p1 * (r2 + 2 * y * y) + 2 * p2 * x * y
        x = (x0 - dx) * icdist
        y = (y0 - dy) * icdist
    rays = np.stack([x, y, np.ones_like(x)], axis=1)
    if R is not None:
        rays = rays @ np.asarray(R, dtype=np.float64).reshape(3, 3).T
    if P is not None:
        rays = rays @ np.asarray(P, dtype=np.float64).reshape(3, 4)[:, :3].T
    return rays[:, :2] / rays[:, 2:3]


# --------------------------------------------------------------------------------------------
# Crops
# --------------------------------------------------------------------------------------------


def crop_transform(
    box_xyxy: np.ndarray | list[float],
    out_size: tuple[int, int] = (256, 256),
    rotation_deg: float = 0.0,
    scale: float = 1.0,
) -> np.ndarray:
    """Affine ``A (3, 3)`` mapping full-image pixels to the pixels of a square person crop.

    The crop is centred on the box, its side is ``max(box width, box height) * scale`` pixels,
    rotated by ``rotation_deg`` (counter-clockwise in the image), resampled to ``out_size (w, h)``.
    Use ``cv2.warpAffine(image, A[:2], out_size)`` to cut it and ``transform_projection(A, P)``
    for the crop's projection matrix.
    """
    x1, y1, x2, y2 = (float(v) for v in np.asarray(box_xyxy, dtype=np.float64).reshape(4))
    side = max(x2 - x1, y2 - y1, 1e-6) * float(scale)
    cx, cy = 0.5 * (x1 + x2), 0.5 * (y1 + y2)
    out_w, out_h = out_size
    s = min(out_w, out_h) / side
    a = math.radians(rotation_deg)
    cos_a, sin_a = math.cos(a) * s, math.sin(a) * s
    # Rotate about the box centre (image y points down, so +angle turns content counter-clockwise).
    A = np.array(
        [
            [cos_a, sin_a, 0.0],
            [-sin_a, cos_a, 0.0],
            [0.0, 0.0, 1.0],
        ]
    )
    A[0, 2] = out_w / 2.0 - (A[0, 0] * cx + A[0, 1] * cy)
    A[1, 2] = out_h / 2.0 - (A[1, 0] * cx + A[1, 1] * cy)
    return A


def transform_projection(A: np.ndarray | torch.Tensor, P: np.ndarray | torch.Tensor):
    """Projection of a transformed image: ``A (..., 3, 3) @ P (..., 3, 4)``."""
    return A @ P


def transform_points(A: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """Apply a 3x3 pixel transform to points ``(..., 2)``."""
    A = np.asarray(A, dtype=np.float64)
    uv = np.asarray(uv, dtype=np.float64)
    out = uv @ A[:2, :2].T + A[:2, 2]
    if not np.allclose(A[2], [0.0, 0.0, 1.0]):  # projective
        w = uv @ A[2, :2] + A[2, 2]
        out = (uv @ A[:2, :2].T + A[:2, 2]) / w[..., None]
    return out


# --------------------------------------------------------------------------------------------
# Projection
# --------------------------------------------------------------------------------------------


def project(points_3d, projection):
    """Project ``points_3d (..., J, 3)`` with ``projection (..., 3, 4)`` -> pixels ``(..., J, 2)``.

    Works for numpy arrays and torch tensors; leading dimensions broadcast, e.g.
    ``(B, 1, J, 3)`` with ``(B, V, 3, 4)`` gives ``(B, V, J, 2)``. Points on the camera plane
    (z = 0) give inf, as the geometry says.
    """
    if isinstance(points_3d, torch.Tensor) or isinstance(projection, torch.Tensor):
        points_3d = torch.as_tensor(points_3d)
        projection = torch.as_tensor(projection, dtype=points_3d.dtype, device=points_3d.device)
        homogeneous = (
            points_3d @ projection[..., :3].transpose(-1, -2) + projection[..., None, :, 3]
        )
        return homogeneous[..., :2] / homogeneous[..., 2:3]
    points_3d = np.asarray(points_3d, dtype=np.float64)
    projection = np.asarray(projection, dtype=np.float64)
    homogeneous = points_3d @ np.swapaxes(projection[..., :3], -1, -2) + projection[..., None, :, 3]
    with np.errstate(divide="ignore", invalid="ignore"):
        return homogeneous[..., :2] / homogeneous[..., 2:3]


def reprojection_error(points_3d, points_2d, projections):
    """Pixel distance ``(..., V, J)`` between ``project(points_3d (..., J, 3))`` in each view
    ``projections (..., V, 3, 4)`` and observed ``points_2d (..., V, J, 2)``."""
    if isinstance(points_3d, torch.Tensor):
        reprojected = project(points_3d.unsqueeze(-3), projections)
        return torch.linalg.vector_norm(reprojected - points_2d, dim=-1)
    reprojected = project(np.asarray(points_3d)[..., None, :, :], projections)
    return np.linalg.norm(reprojected - np.asarray(points_2d), axis=-1)


# --------------------------------------------------------------------------------------------
# Triangulation
# --------------------------------------------------------------------------------------------


class Triangulation(NamedTuple):
    """Result of :func:`triangulate`: ``points (..., J, 3)`` and ``valid (..., J)`` flags."""

    points: torch.Tensor
    valid: torch.Tensor


def _check_shapes(points_2d: torch.Tensor, projections: torch.Tensor, weights) -> None:
    if points_2d.shape[-1] != 2 or points_2d.dim() < 3:
        raise ValueError(f"points_2d must be (..., V, J, 2), got {tuple(points_2d.shape)}")
    if projections.shape[-2:] != (3, 4):
        raise ValueError(f"projections must be (..., V, 3, 4), got {tuple(projections.shape)}")
    if points_2d.shape[-3] < 2:
        raise ValueError(f"triangulation needs at least 2 views, got {points_2d.shape[-3]}")
    if projections.shape[-3] != points_2d.shape[-3]:
        raise ValueError(
            f"{points_2d.shape[-3]} views of points but {projections.shape[-3]} projections"
        )
    if weights is not None and weights.shape[-2:] != points_2d.shape[-3:-1]:
        raise ValueError(
            f"weights must be (..., V, J) = {tuple(points_2d.shape[-3:-1])}, "
            f"got {tuple(weights.shape)}"
        )


def _dlt_system(points_2d, projections, weights) -> torch.Tensor:
    """The stacked DLT matrix ``A (..., J, 2V, 4)`` with rows ``w (x P3 - P1)``, ``w (y P3 - P2)``.

    No row normalisation, so without weights it is exactly the system ``cv2.triangulatePoints``
    solves.
    """
    projections = projections.to(points_2d.dtype)
    P = projections.unsqueeze(-3)  # (..., V, 1, 3, 4)
    x = points_2d[..., 0:1]  # (..., V, J, 1)
    y = points_2d[..., 1:2]
    rows_x = x * P[..., 2, :] - P[..., 0, :]  # (..., V, J, 4)
    rows_y = y * P[..., 2, :] - P[..., 1, :]
    if weights is not None:
        w = weights.to(points_2d.dtype).unsqueeze(-1)
        rows_x, rows_y = rows_x * w, rows_y * w
    A = torch.stack([rows_x, rows_y], dim=-2)  # (..., V, J, 2, 4)
    A = A.movedim(-4, -3)  # (..., J, V, 2, 4)
    return A.reshape(*A.shape[:-3], -1, 4)


def _dehomogenize(h: torch.Tensor) -> torch.Tensor:
    """Homogeneous ``(..., 4)`` -> ``(..., 3)``, with w clamped away from zero (keeps it finite)."""
    w = h[..., 3:4]
    eps = torch.finfo(h.dtype).eps * 1e3
    w_safe = torch.where(w.abs() < eps, torch.where(w < 0, -eps, eps), w)
    return h[..., :3] / w_safe


def triangulate_dlt(points_2d, projections, weights=None) -> torch.Tensor:
    """Weighted linear (DLT) triangulation by SVD.

    Args:
        points_2d: (..., V, J, 2) pixels.
        projections: (..., V, 3, 4).
        weights: (..., V, J) non-negative confidences, or None for all ones.

    Returns:
        (..., J, 3) points in the frame the projections project from. Differentiable.
        Degenerate joints stay finite; use :func:`triangulate` for validity flags.
    """
    points_2d = torch.as_tensor(points_2d)
    projections = torch.as_tensor(projections, device=points_2d.device)
    weights = None if weights is None else torch.as_tensor(weights, device=points_2d.device)
    _check_shapes(points_2d, projections, weights)
    A = _dlt_system(points_2d, projections, weights)
    _, _, Vh = torch.linalg.svd(A, full_matrices=False)
    return _dehomogenize(Vh[..., -1, :])


def triangulate_dlt_iterative(
    points_2d, projections, weights=None, iterations: int = 3, shift: float = 1e-6
) -> torch.Tensor:
    """Differentiable DLT by shifted inverse iteration (in the spirit of DiffDLT).

    Solves ``(A^T A + eps I) b_{k+1} = b_k`` a few times and normalises, starting from the
    inhomogeneous least-squares solution (w = 1), a deterministic start that is already close to
    the SVD answer. Only batched 4x4 solves: fast on GPUs where batched SVD is slow. ``A`` is
    scaled to unit Frobenius norm per joint first (this does not change the solution), so
    ``shift`` is relative.

    Same shapes and semantics as :func:`triangulate_dlt`.
    """
    points_2d = torch.as_tensor(points_2d)
    projections = torch.as_tensor(projections, device=points_2d.device)
    weights = None if weights is None else torch.as_tensor(weights, device=points_2d.device)
    _check_shapes(points_2d, projections, weights)
    A = _dlt_system(points_2d, projections, weights)
    scale = torch.linalg.matrix_norm(A).clamp_min(torch.finfo(A.dtype).tiny)
    A = A / scale[..., None, None]
    AtA = A.transpose(-1, -2) @ A  # (..., J, 4, 4)
    eye = torch.eye(4, dtype=A.dtype, device=A.device)
    # Start: least squares with w = 1, i.e. A[:, :3] X = -A[:, 3] (regularised, always solvable).
    M = AtA[..., :3, :3] + shift * eye[:3, :3]
    X0 = torch.linalg.solve(M, -AtA[..., :3, 3:4])[..., 0]
    b = torch.cat([X0, torch.ones_like(X0[..., :1])], dim=-1)
    b = b / torch.linalg.vector_norm(b, dim=-1, keepdim=True)
    shifted = AtA + shift * eye
    for _ in range(iterations):
        b = torch.linalg.solve(shifted, b.unsqueeze(-1))[..., 0]
        b = b / torch.linalg.vector_norm(b, dim=-1, keepdim=True).clamp_min(
            torch.finfo(A.dtype).tiny
        )
    return _dehomogenize(b)


def triangulate(
    points_2d,
    projections,
    weights=None,
    method: str = "svd",
    min_weight: float = 1e-6,
    min_angle_deg: float = 0.01,
) -> Triangulation:
    """Triangulate with validity flags.

    A joint is invalid when fewer than two views have weight above ``min_weight``, when the
    rays of the two most confident views are (nearly) parallel (angle below ``min_angle_deg``),
    when the point lands behind any weighted camera, or when the result is not finite. Invalid
    joints get finite coordinates (zeros), never NaN.

    Returns:
        Triangulation(points (..., J, 3), valid (..., J) bool).
    """
    points_2d = torch.as_tensor(points_2d)
    projections = torch.as_tensor(projections, device=points_2d.device).to(points_2d.dtype)
    if weights is None:
        weights_t = torch.ones(points_2d.shape[:-1], dtype=points_2d.dtype, device=points_2d.device)
    else:
        weights_t = torch.as_tensor(weights, device=points_2d.device).to(points_2d.dtype)
    weights_t = torch.nan_to_num(weights_t, nan=0.0).clamp_min(0.0)
    finite_2d = torch.isfinite(points_2d).all(dim=-1)  # (..., V, J)
    weights_t = torch.where(finite_2d, weights_t, torch.zeros_like(weights_t))
    clean_2d = torch.where(finite_2d.unsqueeze(-1), points_2d, torch.zeros_like(points_2d))
    if method == "svd":
        points = triangulate_dlt(clean_2d, projections, weights_t)
    elif method == "iterative":
        points = triangulate_dlt_iterative(clean_2d, projections, weights_t)
    else:
        raise ValueError(f"unknown triangulation method {method!r} (svd | iterative)")

    used = weights_t > min_weight  # (..., V, J)
    valid = used.sum(dim=-2) >= 2
    # Depth of the point in every used view (third row of P applied to the point) must be > 0.
    homogeneous = torch.cat([points, torch.ones_like(points[..., :1])], dim=-1)  # (..., J, 4)
    depth = homogeneous.unsqueeze(-3) @ projections[..., 2, :].unsqueeze(-1)  # (..., V, J, 1)
    depth = depth[..., 0] * torch.sign(torch.linalg.det(projections[..., :3])).unsqueeze(-1)
    valid &= ~((depth <= 0) & used).any(dim=-2)
    valid &= _ray_angle_ok(clean_2d, projections, weights_t, min_angle_deg)
    valid &= torch.isfinite(points).all(dim=-1)
    points = torch.where(valid.unsqueeze(-1), points, torch.zeros_like(points))
    return Triangulation(points, valid)


def _ray_angle_ok(points_2d, projections, weights, min_angle_deg: float) -> torch.Tensor:
    """True where the rays of the two most confident views meet at more than ``min_angle_deg``."""
    top = weights.topk(2, dim=-2).indices  # (..., 2, J)
    M = projections[..., :3]  # (..., V, 3, 3)
    # Ray direction in the common frame: M^-1 [u, v, 1]; ill-conditioned M -> treat as invalid.
    homogeneous = torch.cat([points_2d, torch.ones_like(points_2d[..., :1])], dim=-1)
    det_ok = torch.linalg.det(M).abs() > 1e-12
    M_safe = torch.where(det_ok[..., None, None], M, torch.eye(3, dtype=M.dtype, device=M.device))
    rays = torch.linalg.solve(M_safe.unsqueeze(-3), homogeneous.unsqueeze(-1))[..., 0]
    rays = rays / torch.linalg.vector_norm(rays, dim=-1, keepdim=True).clamp_min(1e-12)
    r1 = torch.take_along_dim(rays, top[..., 0:1, :, None], dim=-3)[..., 0, :, :]
    r2 = torch.take_along_dim(rays, top[..., 1:2, :, None], dim=-3)[..., 0, :, :]
    cos = (r1 * r2).sum(-1).abs().clamp(max=1.0)
    angle_ok = cos < math.cos(math.radians(min_angle_deg))
    det_ok_j = torch.take_along_dim(det_ok.unsqueeze(-1).expand_as(weights), top, dim=-2).all(-2)
    return angle_ok & det_ok_j
