"""Stereo rigs for the synthetic scenes: rectified pinhole pairs and raw (verged, distorted) pairs.

Camera frames follow ROS optical conventions (x right, y down, z forward, metres). A
:class:`CameraView` is what one camera renders: its (raw) intrinsics ``K``, plumb_bob distortion
``D`` (zeros for a rectified camera), world -> camera rotation ``R_cw`` and centre ``C`` (world).
A :class:`StereoRig` adds the CameraInfo calibration of the pair: rectification rotations ``R`` and
projections ``P`` that map the LEFT rectified frame to each view's rectified pixels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import cv2
import numpy as np

BODY_MARGIN_M = 0.15  # body surface extends up to ~0.15 m beyond the joints (feet, head, hands)
MIN_DEPTH_M = 0.5


def distort_plumb_bob(xy: np.ndarray, K: np.ndarray, D: np.ndarray) -> np.ndarray:
    """Normalised points ``(N, 2)`` -> distorted pixels ``(N, 2)`` (plumb_bob ``k1, k2, p1, p2,
    k3``; the same model as ``stereo_pose3d.geometry.distort_points``, without importing torch
    into the generator's workers; the tests check they agree)."""
    k1, k2, p1, p2, k3 = (float(v) for v in np.asarray(D, dtype=np.float64).reshape(-1)[:5])
    x, y = xy[:, 0], xy[:, 1]
    r2 = x * x + y * y
    radial = 1 + k1 * r2 + k2 * r2 * r2 + k3 * r2 * r2 * r2
    xd = x * radial + 2 * p1 * x * y + p2 * (r2 + 2 * x * x)
    yd = y * radial + p1 * (r2 + 2 * y * y) + 2 * p2 * x * y
    return np.stack([K[0, 0] * xd + K[0, 1] * yd + K[0, 2], K[1, 1] * yd + K[1, 2]], axis=1)


def rotation_matrix(axis: str, angle: float) -> np.ndarray:
    """Right-handed rotation by ``angle`` (rad) about ``"x"``, ``"y"`` or ``"z"``."""
    c, s = math.cos(angle), math.sin(angle)
    if axis == "x":
        return np.array([[1.0, 0, 0], [0, c, -s], [0, s, c]])
    if axis == "y":
        return np.array([[c, 0, s], [0, 1.0, 0], [-s, 0, c]])
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]])


def look_at(center: np.ndarray, target: np.ndarray, roll: float = 0.0) -> np.ndarray:
    """World -> camera rotation ``R_cw (3, 3)`` of an optical frame at ``center`` looking at
    ``target`` with the world z axis up, rolled by ``roll`` rad about the optical axis."""
    z = np.asarray(target, dtype=np.float64) - np.asarray(center, dtype=np.float64)
    z /= np.linalg.norm(z)
    x = np.cross(z, [0.0, 0.0, 1.0])
    if np.linalg.norm(x) < 1e-6:  # looking straight up or down
        x = np.cross(z, [1.0, 0.0, 0.0])
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    return rotation_matrix("z", roll).T @ np.stack([x, y, z])


@dataclass
class CameraView:
    """One rendered camera. ``K (3, 3)``, ``D (5,)`` plumb_bob, ``R_cw (3, 3)``, ``C (3,)``."""

    width: int
    height: int
    K: np.ndarray
    D: np.ndarray
    R_cw: np.ndarray
    C: np.ndarray
    _grid: np.ndarray | None = field(default=None, repr=False, compare=False)

    @property
    def distorted(self) -> bool:
        return bool(np.any(self.D != 0.0))

    def to_camera(self, X: np.ndarray) -> np.ndarray:
        """World points ``(..., 3)`` -> this camera's frame ``(..., 3)``."""
        return (np.asarray(X, dtype=np.float64) - self.C) @ self.R_cw.T

    def project_pinhole(self, X: np.ndarray) -> np.ndarray:
        """World points ``(N, 3)`` -> undistorted pixels ``(N, 2)`` of ``K`` (no distortion)."""
        x = self.to_camera(X)
        uv = x[..., :2] / x[..., 2:3]
        return uv @ self.K[:2, :2].T + self.K[:2, 2]

    def project(self, X: np.ndarray) -> np.ndarray:
        """World points ``(N, 3)`` -> pixels ``(N, 2)`` of the stored (possibly distorted) image."""
        if not self.distorted:
            return self.project_pinhole(X)
        x = self.to_camera(X).reshape(-1, 3)
        return distort_plumb_bob(x[:, :2] / x[:, 2:3], self.K, self.D)

    def pinhole_pixels(self) -> np.ndarray:
        """``(H, W, 2) float32``: for each stored pixel, its undistorted pixel in ``K``."""
        grid = self.normalized_grid()
        K = self.K.astype(np.float32)
        return np.einsum("hwi,ji->hwj", grid, K[:2, :2]) + K[:2, 2]

    def normalized_grid(self) -> np.ndarray:
        """``(H, W, 2) float32`` undistorted normalised coordinates (x/z, y/z) of every pixel."""
        if self._grid is None:
            self._grid = _normalized_grid(self.width, self.height, self.K, self.D)
        return self._grid

    def translated(self, delta: np.ndarray) -> CameraView:
        """The same camera moved by ``delta (3,)`` m (world); shares the pixel grid."""
        view = replace(self, C=self.C + np.asarray(delta, dtype=np.float64))
        view._grid = self._grid
        return view


def _normalized_grid(width: int, height: int, K: np.ndarray, D: np.ndarray) -> np.ndarray:
    u, v = np.meshgrid(np.arange(width, dtype=np.float32), np.arange(height, dtype=np.float32))
    if not np.any(D != 0.0):
        x = (u - K[0, 2] - K[0, 1] * (v - K[1, 2]) / K[1, 1]) / K[0, 0]
        y = (v - K[1, 2]) / K[1, 1]
        return np.stack([x, y], axis=-1).astype(np.float32)
    # Undistort a coarse grid (every 4 px, iterated to convergence) and interpolate: the map is
    # smooth, so this matches a per-pixel undistortion to ~1e-4 px at 1/16 of the cost.
    step = 4
    cu = np.arange(0, width - 1 + step, step, dtype=np.float64)
    cv = np.arange(0, height - 1 + step, step, dtype=np.float64)
    gu, gv = np.meshgrid(cu, cv)
    pts = np.stack([gu, gv], axis=-1).reshape(-1, 1, 2)
    criteria = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 40, 1e-12)
    coarse = cv2.undistortPointsIter(pts, K, D, None, None, criteria).reshape(len(cv), len(cu), 2)
    coarse = coarse.astype(np.float32)
    mx = (u / step).astype(np.float32)
    my = (v / step).astype(np.float32)
    return cv2.remap(coarse, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


@dataclass
class StereoRig:
    """A stereo pair and its calibration (CameraInfo semantics, see stereo_pose3d.geometry)."""

    left: CameraView
    right: CameraView
    rectified: bool
    R_left: np.ndarray  # raw left -> left rectified frame
    R_right: np.ndarray
    P_left: np.ndarray  # (3, 4) left rectified frame -> left rectified pixels
    P_right: np.ndarray  # (3, 4) left rectified frame -> right rectified pixels

    @property
    def views(self) -> tuple[CameraView, CameraView]:
        return (self.left, self.right)

    @property
    def baseline(self) -> float:
        return float(-self.P_right[0, 3] / self.P_right[0, 0])

    @property
    def T_world_to_cam(self) -> np.ndarray:
        """``(4, 4)`` world -> LEFT rectified frame (the frame ``P_left/P_right`` project from)."""
        R = self.R_left @ self.left.R_cw
        T = np.eye(4)
        T[:3, :3] = R
        T[:3, 3] = -R @ self.left.C
        return T

    def translated(self, delta: np.ndarray) -> StereoRig:
        return replace(self, left=self.left.translated(delta), right=self.right.translated(delta))

    def calibration(self) -> dict[str, np.ndarray | str]:
        """Label fields of the calibration (keys of docs/synthetic_data.md, "Dataset on disk")."""
        return {
            "K_left": self.left.K.copy(),
            "K_right": self.right.K.copy(),
            "D_left": self.left.D.copy(),
            "D_right": self.right.D.copy(),
            "distortion_model": "plumb_bob",
            "R_left": self.R_left.copy(),
            "R_right": self.R_right.copy(),
            "P_left": self.P_left.copy(),
            "P_right": self.P_right.copy(),
        }

    def camera_info(self, view: int) -> dict:
        """CameraInfo fields (``k, d, r, p`` flattened, ``width, height, distortion_model``)."""
        cam = self.views[view]
        return {
            "width": cam.width,
            "height": cam.height,
            "distortion_model": "plumb_bob",
            "d": cam.D.astype(np.float64).tolist(),
            "k": cam.K.reshape(-1).tolist(),
            "r": (self.R_left if view == 0 else self.R_right).reshape(-1).tolist(),
            "p": (self.P_left if view == 0 else self.P_right).reshape(-1).tolist(),
        }


def rectified_rig(
    width: int, height: int, K: np.ndarray, R_cw: np.ndarray, C_left: np.ndarray, baseline: float
) -> StereoRig:
    """Two identical parallel pinhole cameras, the right one ``baseline`` m along the left's x."""
    R_cw = np.asarray(R_cw, dtype=np.float64)
    C_left = np.asarray(C_left, dtype=np.float64)
    C_right = C_left + baseline * R_cw[0]
    zeros = np.zeros(5)
    left = CameraView(width, height, K.copy(), zeros.copy(), R_cw.copy(), C_left)
    right = CameraView(width, height, K.copy(), zeros.copy(), R_cw.copy(), C_right)
    P_left = np.hstack([K, np.zeros((3, 1))])
    P_right = P_left.copy()
    P_right[0, 3] = -K[0, 0] * baseline
    return StereoRig(left, right, True, np.eye(3), np.eye(3), P_left, P_right)


def raw_rig(
    width: int,
    height: int,
    K_left: np.ndarray,
    D_left: np.ndarray,
    R_cw_left: np.ndarray,
    C_left: np.ndarray,
    K_right: np.ndarray,
    D_right: np.ndarray,
    R_cw_right: np.ndarray,
    C_right: np.ndarray,
) -> StereoRig:
    """A raw pair (any relative pose, plumb_bob distortion), calibrated like ROS does it:
    ``cv2.stereoRectify`` with zero disparity and ``alpha=0``."""
    R = R_cw_right @ R_cw_left.T  # left raw -> right raw
    T = R_cw_right @ (C_left - C_right)
    R1, R2, P1, P2, *_ = cv2.stereoRectify(
        K_left,
        D_left,
        K_right,
        D_right,
        (width, height),
        R,
        T,
        flags=cv2.CALIB_ZERO_DISPARITY,
        alpha=0.0,
    )
    left = CameraView(width, height, K_left, D_left, R_cw_left, C_left)
    right = CameraView(width, height, K_right, D_right, R_cw_right, C_right)
    return StereoRig(left, right, False, R1, R2, P1, P2)


# --------------------------------------------------------------------------------------------
# Sampling
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RigRanges:
    """Ranges of the random rig (defaults from the project's issue 3)."""

    baseline: tuple[float, float] = (0.06, 0.30)  # m
    hfov_deg: tuple[float, float] = (50.0, 90.0)
    distance: tuple[float, float] = (2.0, 6.0)  # m, camera to person centre
    height: tuple[float, float] = (0.5, 2.0)  # m above the floor
    pitch_jitter_deg: float = 6.0
    roll_deg: float = 4.0
    verge_deg: tuple[float, float] = (1.0, 6.0)  # raw rig: total toe-in
    misalign_deg: float = 1.0  # raw rig: per-camera random rotation
    k1_at_corner: tuple[float, float] = (-0.22, 0.06)  # raw rig: k1 * r_corner^2


def fits_in_view(
    view: CameraView,
    joints: np.ndarray,
    margin_px: float = 3.0,
    body_margin_m: float = BODY_MARGIN_M,
) -> bool:
    """True if every joint ``(..., 3)`` (world) is in front of the camera and projects inside the
    image with ``margin_px`` plus the projected ``body_margin_m`` to spare."""
    X = np.asarray(joints, dtype=np.float64).reshape(-1, 3)
    z = view.to_camera(X)[:, 2]
    if np.any(z < MIN_DEPTH_M):
        return False
    if view.distorted:  # stay well inside the range where the distortion model is monotonic
        x = view.to_camera(X)
        r = np.linalg.norm(x[:, :2] / x[:, 2:3], axis=1)
        if np.any(r > _monotonic_radius(view.D)):
            return False
    uv = view.project(X)
    m = margin_px + view.K[0, 0] * body_margin_m / z
    return bool(
        np.all(uv[:, 0] >= m)
        and np.all(uv[:, 0] <= view.width - 1 - m)
        and np.all(uv[:, 1] >= m)
        and np.all(uv[:, 1] <= view.height - 1 - m)
    )


def _monotonic_radius(D: np.ndarray) -> float:
    """Largest normalised radius up to which ``r (1 + k1 r^2 + k2 r^4 + k3 r^6)`` keeps a slope
    of at least 0.3 (beyond it the model folds back and images would be wrong)."""
    k1, k2, k3 = D[0], D[1], D[4]
    r = np.linspace(0.0, 3.0, 3001)
    slope = 1 + 3 * k1 * r**2 + 5 * k2 * r**4 + 7 * k3 * r**6
    bad = np.nonzero(slope < 0.3)[0]
    return float(r[bad[0] - 1]) if len(bad) else 3.0


def _intrinsics(width: int, height: int, hfov_deg: float) -> np.ndarray:
    fx = (width / 2.0) / math.tan(math.radians(hfov_deg) / 2.0)
    return np.array([[fx, 0.0, (width - 1) / 2.0], [0.0, fx, (height - 1) / 2.0], [0, 0, 1.0]])


def _small_rotation(rng: np.random.Generator, max_deg: float) -> np.ndarray:
    a = np.radians(rng.uniform(-max_deg, max_deg, 3))
    return rotation_matrix("x", a[0]) @ rotation_matrix("y", a[1]) @ rotation_matrix("z", a[2])


def _sample_distortion(
    rng: np.random.Generator, K: np.ndarray, width: int, height: int, ranges: RigRanges
) -> np.ndarray:
    r_corner = math.hypot(width / 2.0 / K[0, 0], height / 2.0 / K[1, 1])
    for _ in range(100):
        k1 = rng.uniform(*ranges.k1_at_corner) / r_corner**2
        k2 = rng.uniform(-0.3, 0.3) * abs(k1) / r_corner**2
        p1, p2 = rng.uniform(-1e-3, 1e-3, 2)
        D = np.array([k1, k2, p1, p2, 0.0])
        if _monotonic_radius(D) > 1.6 * r_corner:
            return D
    return np.zeros(5)


def sample_rig(
    rng: np.random.Generator,
    joints: np.ndarray,
    width: int = 640,
    height: int = 480,
    *,
    raw: bool = False,
    floor_z: float = 0.0,
    ranges: RigRanges = RigRanges(),
    camera_path: np.ndarray | None = None,
    max_tries: int = 300,
) -> StereoRig:
    """A random rig that sees all ``joints (F, J, 3)`` (world, every frame) fully in both views.

    The rig is placed ``ranges.distance`` from the centre of the joints' bounding box at
    ``ranges.height`` above the floor, at a random yaw all around the person, looking at the person
    (with pitch/roll jitter). ``camera_path (F, 3)`` optionally moves the rig per frame (a follow
    camera): frame ``f`` is checked with the rig translated by ``camera_path[f]``.
    Raises RuntimeError when no placement works after ``max_tries`` attempts.
    """
    J = np.asarray(joints, dtype=np.float64).reshape(-1, joints.shape[-2], 3)
    lo, hi = J.reshape(-1, 3).min(0), J.reshape(-1, 3).max(0)
    centre = 0.5 * (lo + hi)
    for _ in range(max_tries):
        hfov = rng.uniform(*ranges.hfov_deg)
        K = _intrinsics(width, height, hfov)
        K[0, 2] += rng.uniform(-0.02, 0.02) * width
        K[1, 2] += rng.uniform(-0.02, 0.02) * height
        baseline = rng.uniform(*ranges.baseline)
        distance = rng.uniform(*ranges.distance)
        cam_z = floor_z + rng.uniform(*ranges.height)
        yaw = rng.uniform(0.0, 2.0 * math.pi)
        horizontal = math.sqrt(max(distance**2 - (cam_z - centre[2]) ** 2, 0.25))
        rig_centre = centre + horizontal * np.array([math.cos(yaw), math.sin(yaw), 0.0])
        rig_centre[2] = cam_z
        target = centre + rng.uniform(-0.15, 0.15, 3) * distance * np.array([1.0, 1.0, 0.5])
        R_cw = look_at(rig_centre, target, math.radians(rng.uniform(-1, 1) * ranges.roll_deg))
        R_cw = (
            rotation_matrix("x", math.radians(rng.uniform(-1, 1) * ranges.pitch_jitter_deg)) @ R_cw
        )
        C_left = rig_centre - 0.5 * baseline * R_cw[0]
        if raw:
            rig = _raw_from_nominal(rng, width, height, K, R_cw, C_left, baseline, ranges)
        else:
            rig = rectified_rig(width, height, K, R_cw, C_left, baseline)
        # Every frame's person centre stays about ranges.distance away, and fully in view.
        frame_centres = 0.5 * (J.min(axis=1) + J.max(axis=1))
        if camera_path is not None:
            frame_centres = frame_centres - camera_path
        dist = np.linalg.norm(frame_centres - rig_centre, axis=1)
        ok = bool(
            np.all(dist >= 0.9 * ranges.distance[0]) and np.all(dist <= 1.15 * ranges.distance[1])
        )
        if ok and camera_path is None:
            ok = all(fits_in_view(v, J) for v in rig.views)
        elif ok:
            ok = all(
                fits_in_view(v, J[f])
                for f in range(len(J))
                for v in rig.translated(camera_path[f]).views
            )
        if ok:
            return rig
    raise RuntimeError(f"no camera placement sees the person fully after {max_tries} tries")


def _raw_from_nominal(
    rng, width, height, K, R_cw, C_left, baseline, ranges: RigRanges
) -> StereoRig:
    """A verged, misaligned, distorted pair around a nominal rectified placement."""
    verge = math.radians(rng.uniform(*ranges.verge_deg))
    R_wc = R_cw.T
    R_wc_left = R_wc @ rotation_matrix("y", +verge / 2) @ _small_rotation(rng, ranges.misalign_deg)
    R_wc_right = R_wc @ rotation_matrix("y", -verge / 2) @ _small_rotation(rng, ranges.misalign_deg)
    C_right = C_left + baseline * R_cw[0]
    Ks, Ds = [], []
    for _ in range(2):
        Ki = K.copy()
        Ki[0, 0] *= 1.0 + rng.uniform(-0.03, 0.03)
        Ki[1, 1] = Ki[0, 0] * (1.0 + rng.uniform(-0.005, 0.005))
        Ki[0, 2] = (width - 1) / 2.0 + rng.uniform(-0.02, 0.02) * width
        Ki[1, 2] = (height - 1) / 2.0 + rng.uniform(-0.02, 0.02) * height
        Ks.append(Ki)
        Ds.append(_sample_distortion(rng, Ki, width, height, ranges))
    return raw_rig(
        width, height, Ks[0], Ds[0], R_wc_left.T, C_left, Ks[1], Ds[1], R_wc_right.T, C_right
    )
