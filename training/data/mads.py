"""MADS (Martial Arts, Dancing and Sports, Zhang et al. 2017) -> the stereo sample format.

``python -m training extract-mads --root data/`` reads the release as distributed::

    data/MADS_depth/**/<Movement>/                 (e.g. MADS_depth/depth_data/Kata/)
        <Movement>_<Seq>_Left.avi, <Movement>_<Seq>_Right.avi   stereo videos
        <Movement>_<Seq>_GT.mat                    GTpose2: a 19x3 array per frame, mm, NaN=missing
        Calib_C0_left.mat                          left camera (Bouguet: fc, cc, alpha_c, kc, om, T)
        [Calib_C0_right.mat]                       right camera, same fields, when present
        [rect_calib_left.mat, rect_calib_right.mat]  release rectification maps (unused, see below)
    data/MADS_multiview/**/<Movement>/Calib_Cam<i>.mat   (KK, kc, fc, cc, alpha_c, om_ext, T_ext)

and writes, per split, a dataset in the format of ``training/data/stereo_dataset.py``::

    OUT/train/dataset.json, OUT/train/<Movement>_<Seq>/<frame:06d>.{left.jpg,right.jpg,npz}
    OUT/val/...

Split: the first sequence of each movement (sorted by name) is validation, the rest training
(``--val-sequences`` overrides). Each split is written to a hidden staging folder and moved into
place when complete (every sample is also written atomically by the shared writer): a failure
leaves no partial split behind. An existing split is only replaced with ``--overwrite``.

Geometry (the assumptions, all checkable with ``--check-projection OUT.png``):

* World = the frame of ``GTpose2`` (millimetres, y up). Bouguet extrinsics map it to a camera:
  ``X_cam = Rodrigues(om) X_world + T`` (``om_ext``/``T_ext`` for ``Calib_Cam<i>.mat``).
* Intrinsics ``K = [[fc1, alpha_c fc1, cc1], [0, fc2, cc2], [0, 0, 1]]`` (``KK`` when present);
  ``kc`` = OpenCV plumb_bob ``[k1, k2, p1, p2, k3]``.
* The right camera is ``Calib_C0_right.mat`` when present, else the multi-view ``Calib_Cam0.mat``
  (``--right-calib`` picks another file).
* Public readers disagree on the sign of ``om`` in ``Calib_C0_left.mat`` (some negate it for Kata
  only, some always). ``--left-om-sign auto`` (default) picks it per movement: among the signs that
  put (nearly) as many ground-truth joints inside the left image as the best one, the one that
  makes the left camera most nearly parallel to the right camera (see :func:`choose_om_sign`);
  the choice and the scores are printed and stored in ``dataset.json``.
* The pair is rectified with ``cv2.stereoRectify`` (zero disparity, ``alpha`` = ``--alpha``) from
  that calibration; images are stored rectified. The release's ``rect_calib_*.mat`` hold only
  Bouguet pixel index maps, not the rectified camera model needed to put the 3D labels in the
  rectified frame, so they are not used.
* Labels: ``K, D`` raw intrinsics, ``R`` rectification rotations, ``P`` (ROS convention,
  ``P_right[0, 3] = -fx B``, metres), ``joints_3d_cam`` in the left rectified frame (m),
  ``joints_3d_world`` in the MADS world frame converted to metres (still y up),
  ``T_world_to_cam`` (world m -> left rectified frame), ``joints_2d = project(P, joints_3d_cam)``.

Joints: row ``r`` of every ``GTpose2`` array is joint :data:`MADS_GT_ROWS` ``[r]`` -- the single
table to edit if the release's left/right labelling turns out to be the other way round
(``--swap-left-right`` applies the mirror permutation without editing). Frames whose ground truth
has a NaN joint are skipped (the sample format has no per-joint 3D validity).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import scipy.io
from tqdm import tqdm

from stereo_pose3d.geometry import distort_points, project
from stereo_pose3d.skeleton import MADS, Skeleton

from .stereo_dataset import StereoDatasetWriter

__all__ = [
    "MADS_GT_ROWS",
    "MOVEMENTS",
    "BouguetCamera",
    "MADSError",
    "MADSSequence",
    "MovementFiles",
    "StereoRig",
    "add_arguments",
    "build_rig",
    "choose_om_sign",
    "discover",
    "draw_skeleton",
    "extract",
    "gt_to_skeleton",
    "load_bouguet_camera",
    "load_gt_poses",
    "main",
    "rectify_map",
]

MOVEMENTS = ("HipHop", "Jazz", "Kata", "Sports", "Taichi")

# THE joint table: row r of every GTpose2 (19 x 3) array is the joint named MADS_GT_ROWS[r]
# (the release's documented order). Verify with --check-projection (blue = left, red = right).
MADS_GT_ROWS: tuple[str, ...] = (
    "neck", "pelvis",
    "left_hip", "left_knee", "left_ankle", "left_toe",
    "right_hip", "right_knee", "right_ankle", "right_toe",
    "left_shoulder", "left_elbow", "left_wrist", "left_hand",
    "right_shoulder", "right_elbow", "right_wrist", "right_hand",
    "head",
)  # fmt: skip

_VIDEO_RE = re.compile(r"^(?P<movement>[^_]+)_(?P<seq>.+)_Left\.avi$")


class MADSError(RuntimeError):
    """Missing, corrupt or inconsistent MADS files; the message names them."""


# --------------------------------------------------------------------------------------------
# Joint table
# --------------------------------------------------------------------------------------------


def gt_to_skeleton(swap_left_right: bool = False, skeleton: Skeleton = MADS) -> np.ndarray:
    """Index array ``idx`` with ``joints_skeleton = gt_rows[idx]`` (``(19,)``)."""
    if len(MADS_GT_ROWS) != skeleton.num_joints:
        raise ValueError("MADS_GT_ROWS and the MADS skeleton differ in length")
    row_of = {name: r for r, name in enumerate(MADS_GT_ROWS)}
    idx = np.array([row_of[name] for name in skeleton.joint_names])
    if swap_left_right:
        idx = idx[np.asarray(skeleton.flip_permutation)]
    return idx


# --------------------------------------------------------------------------------------------
# MATLAB files
# --------------------------------------------------------------------------------------------


def _loadmat(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise MADSError(f"missing MADS file: {path}")
    try:
        return scipy.io.loadmat(str(path), squeeze_me=True, struct_as_record=False)
    except Exception as exc:  # scipy raises ValueError, TypeError, OSError, ... on corrupt files
        raise MADSError(f"corrupt MATLAB file {path}: {exc}") from exc


def _vector(mat: dict[str, Any], key: str, size: int, path: Path) -> np.ndarray:
    try:
        value = np.asarray(mat[key], dtype=np.float64).reshape(-1)
    except (TypeError, ValueError) as exc:
        raise MADSError(f"{path}: field {key!r} is not numeric ({exc})") from exc
    if value.size != size or not np.isfinite(value).all():
        raise MADSError(f"{path}: field {key!r} should hold {size} finite numbers, got {value}")
    return value


@dataclass
class BouguetCamera:
    """A camera from a Bouguet-toolbox calibration file.

    ``K (3, 3)``, ``D (5,)`` plumb_bob, ``R (3, 3)`` and ``T (3,)`` mm with
    ``X_cam = R X_world + T``; ``path`` the file it came from.
    """

    K: np.ndarray
    D: np.ndarray
    R: np.ndarray
    T: np.ndarray
    path: Path
    om_sign: float = 1.0

    def to_camera(self, points_world_mm: np.ndarray) -> np.ndarray:
        """World points ``(..., 3)`` mm -> camera frame ``(..., 3)`` mm."""
        return np.asarray(points_world_mm) @ self.R.T + self.T


def load_bouguet_camera(path: str | Path, om_sign: float = 1.0) -> BouguetCamera:
    """Read ``Calib_C0_left.mat`` (fc, cc, alpha_c, kc, om, T) or ``Calib_Cam<i>.mat``
    (KK, kc, om_ext, T_ext); ``om_sign = -1`` negates the rotation vector."""
    path = Path(path)
    mat = _loadmat(path)
    missing = []
    if "KK" not in mat and not {"fc", "cc"} <= mat.keys():
        missing.append("KK or fc+cc")
    if "kc" not in mat:
        missing.append("kc")
    if not ({"om", "T"} <= mat.keys() or {"om_ext", "T_ext"} <= mat.keys()):
        missing.append("om+T or om_ext+T_ext")
    if missing:
        raise MADSError(f"{path} lacks calibration field(s): {', '.join(missing)}")
    if "KK" in mat:
        K = _vector(mat, "KK", 9, path).reshape(3, 3)
    else:
        fc, cc = _vector(mat, "fc", 2, path), _vector(mat, "cc", 2, path)
        alpha = float(_vector(mat, "alpha_c", 1, path)[0]) if "alpha_c" in mat else 0.0
        K = np.array([[fc[0], alpha * fc[0], cc[0]], [0.0, fc[1], cc[1]], [0.0, 0.0, 1.0]])
    kc = np.asarray(mat["kc"], dtype=np.float64).reshape(-1)
    if kc.size > 5 or not np.isfinite(kc).all():
        raise MADSError(f"{path}: kc should hold up to 5 finite coefficients, got {kc}")
    D = np.zeros(5)
    D[: kc.size] = kc
    om_key, t_key = ("om", "T") if "om" in mat else ("om_ext", "T_ext")
    om = _vector(mat, om_key, 3, path) * om_sign
    T = _vector(mat, t_key, 3, path)
    R, _ = cv2.Rodrigues(om)
    if K[0, 0] <= 0 or K[1, 1] <= 0:
        raise MADSError(f"{path}: focal length must be positive, K = {K.tolist()}")
    return BouguetCamera(K=K, D=D, R=R, T=T, path=path, om_sign=om_sign)


def load_gt_poses(path: str | Path) -> np.ndarray:
    """``GTpose2`` of a ``*_GT.mat`` -> ``(F, 19, 3)`` mm in file row order (NaN where missing;
    empty cells become all-NaN frames)."""
    path = Path(path)
    mat = _loadmat(path)
    if "GTpose2" not in mat:
        keys = sorted(k for k in mat if not k.startswith("__"))
        raise MADSError(f"{path} has no GTpose2 (keys: {keys})")
    raw = mat["GTpose2"]
    cells = list(raw.reshape(-1)) if isinstance(raw, np.ndarray) and raw.dtype == object else None
    if cells is None:  # a numeric array: a single frame (squeezed) or (F, 19, 3)
        array = np.asarray(raw, dtype=np.float64)
        cells = [array] if array.ndim == 2 else list(array)
    rows = len(MADS_GT_ROWS)
    poses = np.full((len(cells), rows, 3), np.nan)
    for i, cell in enumerate(cells):
        pose = np.asarray(cell, dtype=np.float64)
        if pose.size == 0:
            continue
        if pose.shape != (rows, 3):
            raise MADSError(
                f"{path}: GTpose2 frame {i} has shape {pose.shape}, expected ({rows}, 3)"
            )
        poses[i] = pose
    if not len(poses):
        raise MADSError(f"{path}: GTpose2 is empty")
    return poses


# --------------------------------------------------------------------------------------------
# Discovery
# --------------------------------------------------------------------------------------------


@dataclass
class MADSSequence:
    movement: str
    name: str
    left_video: Path
    right_video: Path
    gt: Path

    @property
    def sequence_id(self) -> str:
        """``<Movement>_<Seq>``, the sequence folder name in the stereo dataset."""
        return f"{self.movement}_{self.name}"


@dataclass
class MovementFiles:
    movement: str
    depth_dir: Path
    left_calib: Path
    right_calib: Path
    sequences: list[MADSSequence] = field(default_factory=list)


def _movement_dirs(base: Path, pattern: str) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for path in sorted(base.rglob(pattern)):
        found.setdefault(path.parent.name, path.parent)
    return found


def discover(
    root: str | Path, movements: tuple[str, ...] = MOVEMENTS, right_calib: str = "auto"
) -> list[MovementFiles]:
    """Find every file the extraction needs; raise one :class:`MADSError` listing all missing."""
    root = Path(root)
    depth_root, multiview_root = root / "MADS_depth", root / "MADS_multiview"
    if not depth_root.is_dir():
        raise MADSError(f"MADS stereo data not found: {depth_root} is not a directory")
    depth_dirs = _movement_dirs(depth_root, "*_Left.avi")
    multiview_dirs = (
        _movement_dirs(multiview_root, "Calib_Cam*.mat") if multiview_root.is_dir() else {}
    )
    problems: list[str] = []
    result = []
    for movement in movements:
        depth_dir = depth_dirs.get(movement)
        if depth_dir is None:
            problems.append(f"no {movement}_*_Left.avi under {depth_root}/**/{movement}/")
            continue
        left = depth_dir / "Calib_C0_left.mat"
        if not left.is_file():
            problems.append(f"missing {left}")
        right = _resolve_right_calib(depth_dir, multiview_dirs.get(movement), right_calib)
        if isinstance(right, str):
            problems.append(right)
        files = MovementFiles(movement, depth_dir, left, right if isinstance(right, Path) else left)
        for video in sorted(depth_dir.glob("*_Left.avi")):
            match = _VIDEO_RE.match(video.name)
            if not match:
                problems.append(f"unexpected video name {video} (want <Movement>_<Seq>_Left.avi)")
                continue
            stem = f"{match['movement']}_{match['seq']}"
            seq = MADSSequence(
                movement, match["seq"], video, depth_dir / f"{stem}_Right.avi",
                depth_dir / f"{stem}_GT.mat",
            )  # fmt: skip
            problems += [f"missing {p}" for p in (seq.right_video, seq.gt) if not p.is_file()]
            files.sequences.append(seq)
        result.append(files)
    if problems:
        raise MADSError("MADS release incomplete:\n  " + "\n  ".join(problems))
    return result


def _resolve_right_calib(depth_dir: Path, multiview_dir: Path | None, choice: str) -> Path | str:
    if choice == "auto":
        candidates = [depth_dir / "Calib_C0_right.mat"]
        if multiview_dir is not None:
            candidates.append(multiview_dir / "Calib_Cam0.mat")
    elif os.sep in choice or "/" in choice:
        candidates = [Path(choice)]
    else:
        candidates = [depth_dir / choice] + ([multiview_dir / choice] if multiview_dir else [])
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    return (
        f"no right-camera calibration for {depth_dir.name}: tried "
        + ", ".join(str(c) for c in candidates)
        + (" (is data/MADS_multiview there?)" if multiview_dir is None else "")
    )


# --------------------------------------------------------------------------------------------
# Rectified rig
# --------------------------------------------------------------------------------------------


@dataclass
class StereoRig:
    """A rectified stereo pair (ROS CameraInfo semantics, metres)."""

    image_size: tuple[int, int]
    K: tuple[np.ndarray, np.ndarray]
    D: tuple[np.ndarray, np.ndarray]
    R: tuple[np.ndarray, np.ndarray]
    P: tuple[np.ndarray, np.ndarray]
    T_world_to_cam: np.ndarray  # (4, 4) world (m) -> left rectified frame (m)
    maps: tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]

    @property
    def baseline(self) -> float:
        return float(-self.P[1][0, 3] / self.P[1][0, 0])

    def rectify(self, image: np.ndarray, view: int) -> np.ndarray:
        return cv2.remap(image, *self.maps[view], interpolation=cv2.INTER_LINEAR)

    def world_to_cam(self, points_world_m: np.ndarray) -> np.ndarray:
        T = self.T_world_to_cam
        return np.asarray(points_world_m) @ T[:3, :3].T + T[:3, 3]


def build_rig(
    left: BouguetCamera, right: BouguetCamera, image_size: tuple[int, int], alpha: float = 0.0
) -> StereoRig:
    """Rectify the pair with OpenCV; raise if it is not a left/right horizontal pair."""
    R_rel = right.R @ left.R.T
    T_rel = right.T - R_rel @ left.T  # mm, left camera frame -> right camera frame
    R1, R2, P1, P2, _, _, _ = cv2.stereoRectify(
        left.K, left.D, right.K, right.D, image_size, R_rel, T_rel,
        flags=cv2.CALIB_ZERO_DISPARITY, alpha=alpha,
    )  # fmt: skip
    names = f"{left.path} / {right.path}"
    if abs(P2[1, 3]) > 1e-6 * max(1.0, abs(P2[0, 3])):
        raise MADSError(f"{names}: the cameras are not side by side (vertical stereo pair)")
    if P2[0, 3] >= 0:
        raise MADSError(
            f"{names}: the 'right' camera is not to the right of the left one "
            f"(baseline {np.linalg.norm(T_rel):.1f} mm): swapped calibration files or videos?"
        )
    P1, P2 = P1.copy(), P2.copy()
    P2[:, 3] /= 1000.0  # mm -> m
    T = np.eye(4)
    T[:3, :3] = R1 @ left.R
    T[:3, 3] = R1 @ left.T / 1000.0
    maps = tuple(
        rectify_map(cam.K, cam.D, Rr, Pr, image_size)
        for cam, Rr, Pr in ((left, R1, P1), (right, R2, P2))
    )
    return StereoRig(
        image_size=tuple(image_size), K=(left.K, right.K), D=(left.D, right.D), R=(R1, R2),
        P=(P1, P2), T_world_to_cam=T, maps=maps,  # type: ignore[arg-type]
    )  # fmt: skip


def rectify_map(
    K: np.ndarray, D: np.ndarray, R: np.ndarray, P: np.ndarray, image_size: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """``cv2.remap`` maps (rectified pixel -> raw pixel), like ``cv2.initUndistortRectifyMap`` but
    honouring the skew ``K[0, 1]`` (Bouguet's ``alpha_c``), which OpenCV ignores."""
    w, h = image_size
    u, v = np.meshgrid(np.arange(w, dtype=np.float64), np.arange(h, dtype=np.float64))
    pixels = np.stack([u.ravel(), v.ravel(), np.ones(u.size)], axis=1)
    rays = pixels @ np.linalg.inv(P[:, :3]).T @ R  # rectified pixels -> raw camera rays (R^T r)
    with np.errstate(divide="ignore", invalid="ignore"):
        xy = rays[:, :2] / rays[:, 2:3]
    raw = distort_points(xy, K, D, "plumb_bob").reshape(h, w, 2)
    raw[~np.isfinite(raw)] = -1.0
    return raw[..., 0].astype(np.float32), raw[..., 1].astype(np.float32)


def _projection_score(camera: BouguetCamera, poses_mm: np.ndarray, image_size) -> float:
    """Fraction of finite GT joints in front of ``camera`` and inside its image (no distortion)."""
    pts = poses_mm.reshape(-1, 3)
    pts = pts[np.isfinite(pts).all(1)]
    if not len(pts):
        return 0.0
    cam = camera.to_camera(pts)
    front = cam[:, 2] > 0
    uv = (
        cam[:, :2] / np.where(front, cam[:, 2], 1.0)[:, None] @ camera.K[:2, :2].T + camera.K[:2, 2]
    )
    w, h = image_size
    inside = front & (uv[:, 0] >= 0) & (uv[:, 0] < w) & (uv[:, 1] >= 0) & (uv[:, 1] < h)
    return float(inside.mean())


def _rotation_angle_deg(R: np.ndarray) -> float:
    return float(np.degrees(np.arccos(np.clip((np.trace(R) - 1.0) / 2.0, -1.0, 1.0))))


def choose_om_sign(
    calib: Path,
    poses_mm: np.ndarray,
    image_size: tuple[int, int],
    choice: str = "auto",
    right: BouguetCamera | None = None,
) -> tuple[BouguetCamera, dict[str, dict[str, float]]]:
    """Left camera with the ``om`` sign picked by ``choice`` (``auto``, ``1`` or ``-1``).

    ``auto`` keeps the signs whose fraction of ground-truth joints in front of the left camera and
    inside its image is within 0.05 of the best, then prefers the one whose rotation relative to
    the ``right`` camera is smallest (a stereo pair's cameras are nearly parallel). The projection
    test alone is weak: for a person near the world origin the two signs differ little.
    Returns the camera and, per sign, ``{"in_image": fraction, "rig_rotation_deg": angle}``.
    """
    signs = (1.0, -1.0) if choice == "auto" else (float(choice),)
    cameras = [load_bouguet_camera(calib, s) for s in signs]
    scores: dict[str, dict[str, float]] = {}
    for s, cam in zip(signs, cameras, strict=True):
        angle = _rotation_angle_deg(right.R @ cam.R.T) if right is not None else 0.0
        scores[f"{s:+.0f}"] = {
            "in_image": _projection_score(cam, poses_mm, image_size),
            "rig_rotation_deg": angle,
        }
    fractions = [scores[f"{s:+.0f}"]["in_image"] for s in signs]
    if max(fractions) == 0.0:
        raise MADSError(
            f"{calib}: no ground-truth joint projects into the left image with om sign(s) "
            f"{list(scores)}; the calibration does not match the ground truth"
        )
    keep = [i for i in range(len(signs)) if fractions[i] >= max(fractions) - 0.05]
    best = min(keep, key=lambda i: (scores[f"{signs[i]:+.0f}"]["rig_rotation_deg"], -signs[i]))
    return cameras[best], scores


# --------------------------------------------------------------------------------------------
# Videos
# --------------------------------------------------------------------------------------------


class _Video:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.capture = cv2.VideoCapture(str(path))
        if not self.capture.isOpened():
            raise MADSError(f"cannot open video {path} (missing codec or corrupt file)")
        self.frame_count = int(self.capture.get(cv2.CAP_PROP_FRAME_COUNT))
        self.fps = float(self.capture.get(cv2.CAP_PROP_FPS) or 0.0)
        self.size = (
            int(self.capture.get(cv2.CAP_PROP_FRAME_WIDTH)),
            int(self.capture.get(cv2.CAP_PROP_FRAME_HEIGHT)),
        )
        if self.size[0] <= 0 or self.size[1] <= 0:
            raise MADSError(f"video {path} reports an empty frame size")

    def read(self, index: int, decode: bool = True) -> tuple[bool, np.ndarray | None]:
        """(True, frame or None when not decoded), or (False, None) at the end of a video whose
        length the container does not state; a frame missing before the stated length raises."""
        if decode:
            ok, frame = self.capture.read()
        else:
            ok, frame = self.capture.grab(), None
        if not ok:
            if self.frame_count <= 0:
                return False, None
            raise MADSError(f"video {self.path} is truncated or corrupt at frame {index}")
        return True, frame

    def close(self) -> None:
        self.capture.release()


def _open_pair(seq: MADSSequence) -> tuple[_Video, _Video]:
    left = _Video(seq.left_video)
    try:
        right = _Video(seq.right_video)
    except MADSError:
        left.close()
        raise
    if left.size != right.size:
        left.close()
        right.close()
        raise MADSError(f"{seq.left_video} is {left.size} but {seq.right_video} is {right.size}")
    return left, right


# --------------------------------------------------------------------------------------------
# Drawing
# --------------------------------------------------------------------------------------------

_SHORT = {"wrist": "W", "hand": "H", "ankle": "A", "toe": "T", "knee": "K", "elbow": "E"}


def draw_skeleton(
    image_rgb: np.ndarray, uv: np.ndarray, visible: np.ndarray, skeleton: Skeleton = MADS
) -> np.ndarray:
    """Draw bones and joints (left blue, right red, centre green) on a copy of an RGB image;
    wrists/hands/knees/... are tagged ``L*``/``R*`` (e.g. ``LW`` = left wrist)."""
    out = np.ascontiguousarray(image_rgb).copy()
    scale = max(1, round(max(out.shape[:2]) / 640))
    uv = np.asarray(uv, dtype=np.float64)
    ok = np.asarray(visible, bool) & np.isfinite(uv).all(-1)

    def colour(rgb: tuple[float, float, float]) -> tuple[int, int, int]:
        return tuple(int(255 * c) for c in rgb)  # type: ignore[return-value]

    for a, b in skeleton.bones:
        if ok[a] and ok[b]:
            pa, pb = tuple(np.round(uv[a]).astype(int)), tuple(np.round(uv[b]).astype(int))
            cv2.line(out, pa, pb, colour(skeleton.bone_color((a, b))), 2 * scale, cv2.LINE_AA)
    for j, name in enumerate(skeleton.joint_names):
        if not ok[j]:
            continue
        p = tuple(np.round(uv[j]).astype(int))
        cv2.circle(out, p, 3 * scale, colour(skeleton.joint_color(j)), -1, cv2.LINE_AA)
        side, _, part = name.partition("_")
        if side in ("left", "right") and part in _SHORT:
            tag = side[0].upper() + _SHORT[part]
            org = (p[0] + 4 * scale, p[1] - 4 * scale)
            cv2.putText(out, tag, org, cv2.FONT_HERSHEY_SIMPLEX, 0.45 * scale, (0, 0, 0), 3 * scale)
            cv2.putText(
                out, tag, org, cv2.FONT_HERSHEY_SIMPLEX, 0.45 * scale,
                colour(skeleton.joint_color(j)), scale,
            )  # fmt: skip
    return out


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# --------------------------------------------------------------------------------------------
# Extraction
# --------------------------------------------------------------------------------------------


@dataclass
class _Prepared:
    movement: MovementFiles
    rig: StereoRig
    om_scores: dict[str, dict[str, float]]
    om_sign: float
    right_om_sign: float = 1.0


def _prepare(files: MovementFiles, args: argparse.Namespace) -> _Prepared:
    """Load and check calibration + one sequence's ground truth before anything is written."""
    if not files.sequences:
        raise MADSError(f"{files.depth_dir}: no sequences")
    sizes = set()
    for seq in files.sequences:  # every video must open before anything is written
        left_video, right_video = _open_pair(seq)
        sizes.add(left_video.size)
        left_video.close()
        right_video.close()
    if len(sizes) != 1:
        raise MADSError(f"{files.depth_dir}: videos of different sizes {sorted(sizes)}")
    size = sizes.pop()
    poses = np.concatenate([load_gt_poses(s.gt) for s in files.sequences[:2]])
    right = load_bouguet_camera(files.right_calib)
    left, scores = choose_om_sign(files.left_calib, poses, size, str(args.left_om_sign), right)
    rig = build_rig(left, right, size, alpha=args.alpha)
    return _Prepared(files, rig, scores, left.om_sign)


def _labels(
    rig: StereoRig, poses_world_mm: np.ndarray, seq_id: str, frame: int, fps: float
) -> dict[str, Any] | None:
    """Label dict of one frame, or None when the person is in neither image."""
    world_m = poses_world_mm / 1000.0
    cam = rig.world_to_cam(world_m)
    w, h = rig.image_size
    uv = np.stack([project(cam, rig.P[0]), project(cam, rig.P[1])])  # (2, J, 2)
    finite = np.isfinite(uv).all(-1) & np.isfinite(cam).all(-1)[None] & (cam[:, 2] > 0)[None]
    vis = (
        finite
        & (uv[..., 0] >= 0)
        & (uv[..., 0] <= w - 1)
        & (uv[..., 1] >= 0)
        & (uv[..., 1] <= h - 1)
    )
    if not vis.any(axis=1).all():
        return None
    boxes = np.zeros((2, 4))
    for v in range(2):
        pts = uv[v][vis[v]]
        lo, hi = pts.min(0), pts.max(0)
        margin = 0.1 * (hi - lo).max() + 10.0
        boxes[v] = [
            max(0.0, lo[0] - margin), max(0.0, lo[1] - margin),
            min(w - 1.0, hi[0] + margin), min(h - 1.0, hi[1] + margin),
        ]  # fmt: skip
    return {
        "K_left": rig.K[0], "K_right": rig.K[1], "D_left": rig.D[0], "D_right": rig.D[1],
        "distortion_model": np.array("plumb_bob"),
        "R_left": rig.R[0], "R_right": rig.R[1], "P_left": rig.P[0], "P_right": rig.P[1],
        "T_world_to_cam": rig.T_world_to_cam,
        "joints_3d_cam": cam, "joints_3d_world": world_m, "joints_2d": uv, "visibility": vis,
        "box": boxes, "baseline": np.float64(rig.baseline), "sequence": np.array(seq_id),
        "frame": np.int64(frame), "time": np.float64(frame / fps), "rectified": np.bool_(True),
    }  # fmt: skip


def _extract_sequence(
    prep: _Prepared,
    seq: MADSSequence,
    writer: StereoDatasetWriter,
    args: argparse.Namespace,
    order: np.ndarray,
) -> dict[str, int]:
    rig = prep.rig
    poses = load_gt_poses(seq.gt)[:, order]
    left, right = _open_pair(seq)
    stats = {"written": 0, "missing_gt": 0, "out_of_view": 0}
    try:
        if left.size != rig.image_size:
            raise MADSError(
                f"{seq.left_video} is {left.size}, calibration assumed {rig.image_size}"
            )
        fps = left.fps if left.fps > 0 else 15.0
        counts = [c for c in (left.frame_count, right.frame_count) if c > 0]
        n = min([len(poses), *counts])
        if args.max_frames:
            n = min(n, args.max_frames)
        for i in tqdm(range(n), desc=seq.sequence_id, unit="frame", leave=False,
                      disable=args.quiet):  # fmt: skip
            pose = poses[i]
            missing = ~np.isfinite(pose).all(-1)
            wanted = i % args.every == 0 and not missing.any()
            ok_l, frame_l = left.read(i, decode=wanted)
            ok_r, frame_r = right.read(i, decode=wanted)
            if not (ok_l and ok_r):
                break
            if not wanted:
                stats["missing_gt"] += int(i % args.every == 0)
                continue
            labels = _labels(rig, pose, seq.sequence_id, i, fps)
            if labels is None:
                stats["out_of_view"] += 1
                continue
            img_l = cv2.cvtColor(rig.rectify(frame_l, 0), cv2.COLOR_BGR2RGB)
            img_r = cv2.cvtColor(rig.rectify(frame_r, 1), cv2.COLOR_BGR2RGB)
            writer.write_sample(seq.sequence_id, i, img_l, img_r, labels)
            stats["written"] += 1
    finally:
        left.close()
        right.close()
    return stats


def _dataset_extra(prepared: list[_Prepared], sequences: list[str], args) -> dict[str, Any]:
    """MADS-specific fields of ``dataset.json`` (next to the writer's format fields)."""
    return {
        "sequences": sequences,
        "units": "m",
        "world_frame": "MADS ground-truth frame (y up), converted from mm to m",
        "camera_frame": "left rectified camera (x right, y down, z forward)",
        "mads": {
            "gt_rows": list(MADS_GT_ROWS),
            "swap_left_right": bool(args.swap_left_right),
            "every": int(args.every),
            "rectify_alpha": float(args.alpha),
            "movements": {
                p.movement.movement: {
                    "left_calib": str(p.movement.left_calib),
                    "right_calib": str(p.movement.right_calib),
                    "left_om_sign": p.om_sign,
                    "om_sign_scores": p.om_scores,
                    "baseline_m": p.rig.baseline,
                    "image_size": list(p.rig.image_size),
                }
                for p in prepared
            },
        },
    }


def _same_extraction(target: Path, extra: dict[str, Any]) -> bool:
    """True when ``target/dataset.json`` records the extraction described by ``extra``."""
    try:
        info = json.loads((target / "dataset.json").read_text())
    except (OSError, ValueError):
        return False
    expected = json.loads(json.dumps(extra))  # tuples -> lists, as stored
    return all(info.get(k) == v for k, v in expected.items())


def split_sequences(
    movements: list[MovementFiles], val_sequences: list[str] | None
) -> dict[str, list[tuple[MovementFiles, MADSSequence]]]:
    """``{"train": [...], "val": [...]}``: by default the first sequence (by name) of each
    movement is validation; ``val_sequences`` lists ``<Movement>_<Seq>`` ids instead."""
    splits: dict[str, list[tuple[MovementFiles, MADSSequence]]] = {"train": [], "val": []}
    known = {s.sequence_id for m in movements for s in m.sequences}
    if val_sequences is not None:
        unknown = sorted(set(val_sequences) - known)
        if unknown:
            raise MADSError(
                f"--val-sequences names unknown sequences {unknown}; known: {sorted(known)}"
            )
    for files in movements:
        ordered = sorted(files.sequences, key=lambda s: s.name)
        for k, seq in enumerate(ordered):
            is_val = seq.sequence_id in val_sequences if val_sequences is not None else k == 0
            splits["val" if is_val else "train"].append((files, seq))
    return splits


def extract(args: argparse.Namespace) -> dict[str, Any]:
    """Run the extraction described by parsed ``args``; returns per-sequence statistics."""
    movements = discover(args.root, tuple(args.movements), args.right_calib)
    prepared = {m.movement: _prepare(m, args) for m in movements}
    for p in prepared.values():
        chosen = p.om_scores[f"{p.om_sign:+.0f}"]
        scores = ", ".join(
            f"{k}: {v['in_image']:.0%} in image, {v['rig_rotation_deg']:.1f} deg to right camera"
            for k, v in p.om_scores.items()
        )
        print(
            f"{p.movement.movement}: left om sign {p.om_sign:+.0f} ({scores}); baseline "
            f"{p.rig.baseline * 100:.1f} cm; right camera {p.movement.right_calib}",
            file=sys.stderr,
        )
        if chosen["rig_rotation_deg"] > 10.0 or chosen["in_image"] < 0.5:
            print(
                f"WARNING {p.movement.movement}: the calibration looks inconsistent (cameras "
                f"{chosen['rig_rotation_deg']:.0f} deg apart, {chosen['in_image']:.0%} of the GT "
                "in the left image): check it with --check-projection",
                file=sys.stderr,
            )
    order = gt_to_skeleton(args.swap_left_right)
    sizes = {p.rig.image_size for p in prepared.values()}
    if len(sizes) > 1 and not args.check_projection:
        raise MADSError(
            f"movements have different image sizes {sorted(sizes)}; one dataset has one size: "
            "extract them separately (--movements, --out)"
        )
    if args.check_projection:
        write_check_image(Path(args.check_projection), prepared, order, args.check_frame)
        return {}
    out = Path(args.out)
    splits = split_sequences(movements, args.val_sequences)

    def extra(items: list) -> dict[str, Any]:
        used = [prepared[m.movement] for m in {id(m): m for m, _ in items}.values()]
        return _dataset_extra(used, [s.sequence_id for _, s in items], args)

    done = set()
    for split, items in splits.items():
        target = out / split
        if (target / "dataset.json").exists() and not args.overwrite:
            # A split is moved into place only when complete: the same extraction, finished by
            # an earlier run that was interrupted later, is kept; anything else is not replaced.
            if items and _same_extraction(target, extra(items)):
                done.add(split)
                continue
            raise MADSError(f"{target} already holds a dataset; pass --overwrite to replace it")
    stats: dict[str, Any] = {}
    for split in ("val", "train"):  # the small split first: a quick, complete first result
        items = splits[split]
        if not items:
            continue
        target = out / split
        if split in done:
            print(f"kept {target}: complete from an earlier run", file=sys.stderr)
            continue
        # Each split is built in a hidden staging folder and moved into place only when complete,
        # so an error or Ctrl-C never leaves a half-written dataset behind.
        staging = out / f".{split}.partial"
        shutil.rmtree(staging, ignore_errors=True)
        try:
            used = [prepared[m.movement] for m in {id(m): m for m, _ in items}.values()]
            writer = StereoDatasetWriter(
                staging,
                source="mads",
                split=split,
                skeleton=MADS.name,
                joint_names=MADS.joint_names,
                image_size=used[0].rig.image_size,
                extra=extra(items),
                jpeg_quality=args.jpeg_quality,
            )
            for files, seq in tqdm(items, desc=f"MADS {split}", unit="seq", disable=args.quiet):
                stats[seq.sequence_id] = _extract_sequence(
                    prepared[files.movement], seq, writer, args, order
                )
            if target.exists():
                shutil.rmtree(target)
            os.replace(staging, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        print(f"wrote {target} ({len(items)} sequences)", file=sys.stderr)
    return stats


def write_check_image(
    path: Path, prepared: dict[str, _Prepared], order: np.ndarray, frame: int | None = None
) -> None:
    """Draw the projected ground truth on the rectified left/right images of the first sequence of
    each movement (one row per movement) and save it as ``path`` (PNG/JPEG)."""
    rows = []
    for name, prep in prepared.items():
        seq = sorted(prep.movement.sequences, key=lambda s: s.name)[0]
        poses = load_gt_poses(seq.gt)[:, order]
        valid = np.nonzero(np.isfinite(poses).all(axis=(1, 2)))[0]
        if frame is not None:
            valid = valid[valid >= frame]
        if not len(valid):
            raise MADSError(f"{seq.gt}: no frame with complete ground truth to draw")
        index = int(valid[0])
        left, right = _open_pair(seq)
        try:
            for i in range(index):
                left.read(i, decode=False)
                right.read(i, decode=False)
            images = [left.read(index)[1], right.read(index)[1]]
            if images[0] is None or images[1] is None:
                raise MADSError(f"{seq.left_video}: frame {index} cannot be read")
        finally:
            left.close()
            right.close()
        labels = _labels(prep.rig, poses[index], seq.sequence_id, index, 1.0)
        panels = []
        for v in range(2):
            rect = cv2.cvtColor(prep.rig.rectify(images[v], v), cv2.COLOR_BGR2RGB)
            if labels is not None:
                rect = draw_skeleton(rect, labels["joints_2d"][v], labels["visibility"][v])
            caption = f"{seq.sequence_id} frame {index} {'left' if v == 0 else 'right'}"
            cv2.putText(rect, caption, (10, 30), cv2.FONT_HERSHEY_SIMPLEX, 0.8, (255, 255, 0), 2)
            panels.append(rect)
        rows.append(np.hstack(panels))
        print(f"{name}: drew {seq.sequence_id} frame {index}", file=sys.stderr)
    width = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0))) for r in rows]
    canvas = np.vstack(rows)
    legend = "blue = left_*, red = right_*, green = centre; LW = left wrist, RA = right ankle, ..."
    canvas = np.vstack([np.full((40, width, 3), 255, np.uint8), canvas])
    cv2.putText(canvas, legend, (10, 28), cv2.FONT_HERSHEY_SIMPLEX, 0.7, (0, 0, 0), 2)
    if width > 2400:
        f = 2400 / width
        canvas = cv2.resize(canvas, (2400, int(canvas.shape[0] * f)), interpolation=cv2.INTER_AREA)
    ok, encoded = cv2.imencode(path.suffix or ".png", cv2.cvtColor(canvas, cv2.COLOR_RGB2BGR))
    if not ok:
        raise MADSError(f"cannot encode {path} (use a .png or .jpg name)")
    path.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write_bytes(path, encoded.tobytes())
    print(f"wrote {path}", file=sys.stderr)


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--root", default="data", help="folder holding MADS_depth/ and MADS_multiview/"
    )
    parser.add_argument("--out", default="data/mads_stereo", help="output: OUT/train, OUT/val")
    parser.add_argument("--movements", nargs="+", default=list(MOVEMENTS), choices=MOVEMENTS)
    parser.add_argument(
        "--val-sequences", nargs="+", default=None, metavar="MOVEMENT_SEQ",
        help="validation sequences (<Movement>_<Seq>); default: the first of each movement",
    )  # fmt: skip
    parser.add_argument("--every", type=int, default=1, help="keep every N-th frame")
    parser.add_argument("--max-frames", type=int, default=0, help="frames per sequence (0 = all)")
    parser.add_argument("--swap-left-right", action="store_true",
                        help="the release's left/right labels are mirrored: swap them")  # fmt: skip
    parser.add_argument("--left-om-sign", default="auto", choices=["auto", "1", "-1"],
                        help="sign of om in Calib_C0_left.mat (auto: best GT fit)")  # fmt: skip
    parser.add_argument("--right-calib", default="auto",
                        help="right camera file: auto (Calib_C0_right.mat, else multi-view "
                             "Calib_Cam0.mat), a file name, or a path")  # fmt: skip
    parser.add_argument("--alpha", type=float, default=0.0,
                        help="cv2.stereoRectify alpha (0: valid pixels only, 1: all)")  # fmt: skip
    parser.add_argument("--jpeg-quality", type=int, default=95)
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output")
    parser.add_argument("--check-projection", metavar="OUT.png", default=None,
                        help="only draw the GT on rectified images (left/right check)")  # fmt: skip
    parser.add_argument("--check-frame", type=int, default=None,
                        help="first frame to consider for --check-projection")  # fmt: skip
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def main(args: argparse.Namespace) -> int:
    if args.every < 1:
        print("--every must be >= 1", file=sys.stderr)
        return 2
    try:
        stats = extract(args)
    except MADSError as exc:
        print(f"extract-mads: {exc}", file=sys.stderr)
        return 1
    for seq, s in stats.items():
        print(
            f"{seq}: {s['written']} samples ({s['missing_gt']} without GT, "
            f"{s['out_of_view']} out of view)",
            file=sys.stderr,
        )
    return 0
