"""StereoPoseEstimator: full stereo frames + projection matrices -> 3D joints.

::

    est = StereoPoseEstimator.from_checkpoint("weights/cdrnet_r18.pt", device="auto")
    pose = est.estimate(left, right, P_left, P_right)   # (H, W, 3) uint8 RGB, (3, 4) floats
    if pose.box is None:
        ...  # no person: joints are NaN, confidence 0
    pose.joints_3d, pose.joints_2d, pose.confidence, pose.joint_names, pose.timings

Pipeline per stereo pair (both views batched together at every step):

1. **Locate** (unless tracking): both frames letterboxed to the locator's input, one
   :class:`~stereo_pose3d.models.locator.PersonLocator` pass, best box and score per view. A score
   below ``score_threshold`` in either view means "no person" (a person seen by one camera only
   cannot be triangulated).
2. **Crop**: the two boxes become squares of one side (same rows for a rectified pair), padded by
   ``crop_scale``, cut with :func:`~stereo_pose3d.models.crops.make_crop`; ``P_crop = A @ P``.
3. **Network**: the pose network (CDRNet or baseline) gives heatmaps, 2D joints and
   confidences per view (``torch.inference_mode``, channels_last, autocast bf16/fp16 on CUDA).
4. **Triangulate**: weighted DLT (float32) in the frame ``P_left``/``P_right`` project from.

``joints_2d`` is the projection of ``joints_3d`` with the given P's (so 2D and 3D always agree);
the network's own per-view detections are in ``joints_2d_detected``.

Tracking (``tracking=True``): while the previous pose's mean confidence is at least
``track_confidence``, the box comes from its 2D joints instead of the locator (saves the locator
pass); the locator runs again when confidence drops or the person is lost.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from stereo_pose3d.checkpoint import load_model
from stereo_pose3d.geometry import project
from stereo_pose3d.models.config import DEFAULT_ESTIMATOR
from stereo_pose3d.models.crops import (
    box_from_joints,
    crop_regions,
    crop_views,
    letterbox,
    transform_boxes,
)
from stereo_pose3d.models.system import PoseSystem

TIMING_KEYS = ("preprocess", "locator", "network", "triangulation", "total")


@dataclass
class Pose3D:
    """One stereo pair's result.

    Attributes:
        joints_3d: ``(J, 3)`` metres in the frame ``P_left``/``P_right`` project from
            (NaN when no person).
        joints_2d: ``(2, J, 2)`` pixels in the full left/right images: ``joints_3d`` projected.
        confidence: ``(J,)`` in [0, 1] (mean of the views' heatmap peaks; 0 for joints whose
            triangulation is degenerate, and when no person).
        joint_names: ``J`` names (skeleton order, see :mod:`stereo_pose3d.skeleton`).
        box: ``(2, 4)`` xyxy person box per view (locator or tracking), or None: no person.
        crop_boxes: ``(2, 4)`` the square regions the network saw, or None.
        joints_2d_detected: ``(2, J, 2)`` the network's per-view soft-argmax, full-image pixels.
        view_confidence: ``(2, J)`` per-view confidence.
        valid: ``(J,)`` bool, triangulation not degenerate.
        score: locator score (min over the views; NaN when tracked).
        source: ``"locator"``, ``"tracking"`` or ``"none"``.
        timings: seconds, keys ``preprocess, locator, network, triangulation, total`` for the
            call that produced this pose (for ``estimate_batch``: the whole batch, with
            ``batch_size``). ``preprocess`` is everything outside the networks and the DLT:
            input checks, letterbox, crops, normalisation, host/device copies, output mapping.
    """

    joints_3d: np.ndarray
    joints_2d: np.ndarray
    confidence: np.ndarray
    joint_names: list[str]
    box: np.ndarray | None
    crop_boxes: np.ndarray | None = None
    joints_2d_detected: np.ndarray | None = None
    view_confidence: np.ndarray | None = None
    valid: np.ndarray | None = None
    score: float = float("nan")
    source: str = "none"
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def detected(self) -> bool:
        """True when a person was found (``box`` is not None)."""
        return self.box is not None


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` (CUDA if available), ``"cpu"``, ``"cuda"`` or ``"cuda:N"`` -> torch.device."""
    if isinstance(device, torch.device):
        device = str(device)
    if not isinstance(device, str):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda[:N]', got {device!r}")
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cpu":
        return torch.device("cpu")
    if device == "cuda" or device.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r} requested but CUDA is not available")
        dev = torch.device(device)
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device {device!r}: only {torch.cuda.device_count()} CUDA devices")
        return dev
    raise ValueError(f"device must be 'auto', 'cpu' or 'cuda[:N]', got {device!r}")


def _check_image(image: Any, name: str) -> np.ndarray:
    if not isinstance(image, np.ndarray):
        kind = type(image).__name__
        raise ValueError(f"{name} must be a numpy array (H, W, 3) uint8, got {kind}")
    if image.dtype != np.uint8:
        raise ValueError(f"{name} must be uint8 RGB, got dtype {image.dtype}")
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"{name} must have shape (H, W, 3), got {image.shape}")
    if image.shape[0] < 32 or image.shape[1] < 32:
        raise ValueError(f"{name} is too small: {image.shape[1]}x{image.shape[0]} pixels")
    return np.ascontiguousarray(image)


def _check_projection(P: Any, name: str) -> np.ndarray:
    try:
        P = np.asarray(P, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a (3, 4) array of numbers") from None
    if P.shape != (3, 4):
        raise ValueError(f"{name} must have shape (3, 4), got {P.shape}")
    if not np.all(np.isfinite(P)):
        raise ValueError(f"{name} contains NaN or inf")
    M = P[:, :3]
    scale = max(float(np.abs(M).max()), 1e-300)
    if abs(np.linalg.det(M / scale)) < 1e-9:
        raise ValueError(f"{name} is degenerate: its left 3x3 block is singular")
    return P


class StereoPoseEstimator:
    """3D human pose from calibrated stereo pairs (see the module docstring)."""

    def __init__(
        self,
        system: PoseSystem,
        device: str | torch.device = "auto",
        checkpoint_path: str | Path | None = None,
        autocast: bool = True,
        **settings: Any,
    ) -> None:
        unknown = set(settings) - set(DEFAULT_ESTIMATOR)
        if unknown:
            raise ValueError(f"unknown estimator settings {sorted(unknown)}")
        self.device = resolve_device(device)
        self.checkpoint_path = checkpoint_path
        self.config = system.config
        self.settings = {**DEFAULT_ESTIMATOR, **system.config.get("estimator", {}), **settings}
        self.pose_net = system.pose.eval().to(self.device, memory_format=torch.channels_last)
        self.locator = system.locator.eval().to(self.device, memory_format=torch.channels_last)
        pose_cfg, loc_cfg = system.config["pose"], system.config["locator"]
        self.joint_names: list[str] = list(pose_cfg["joint_names"])
        self.crop_size: tuple[int, int] = tuple(pose_cfg["input_size"])
        self.locator_size: tuple[int, int] = tuple(loc_cfg["input_size"])
        self._norm = {
            key: (
                torch.tensor(cfg["normalization"]["mean"], device=self.device).view(1, 3, 1, 1),
                torch.tensor(cfg["normalization"]["std"], device=self.device).view(1, 3, 1, 1),
            )
            for key, cfg in (("pose", pose_cfg), ("locator", loc_cfg))
        }
        if self.device.type == "cuda" and autocast:
            bf16 = torch.cuda.is_bf16_supported()
            self.autocast_dtype: torch.dtype | None = torch.bfloat16 if bf16 else torch.float16
        else:
            self.autocast_dtype = None
        self._track: tuple[np.ndarray, np.ndarray] | None = None

    @classmethod
    def from_checkpoint(
        cls,
        path: str | Path,
        device: str | torch.device = "auto",
        autocast: bool = True,
        **settings: Any,
    ) -> StereoPoseEstimator:
        """Load a ``"system"`` checkpoint (pose network + locator).

        ``autocast``: on CUDA, run the networks in bfloat16 (float16 where bf16 is unsupported);
        False keeps float32 everywhere (results then match the CPU's to float32 tolerance).

        ``settings`` override the checkpoint's estimator settings (``crop_scale``,
        ``score_threshold``, ``min_pose_confidence``, ``min_box_fraction``, ``tracking``,
        ``track_confidence``).

        Raises:
            stereo_pose3d.checkpoint.CheckpointError: unusable file. ValueError: bad device.
        """
        resolve_device(device)  # fail on a bad device before reading the file
        system, _ = load_model(path, expect="system")
        return cls(system, device, checkpoint_path=path, autocast=autocast, **settings)

    # ------------------------------------------------------------------------------------------

    def reset(self) -> None:
        """Forget the tracked person (next ``estimate`` runs the locator)."""
        self._track = None

    def _sync(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def _autocast(self):
        if self.autocast_dtype is None:
            return nullcontext()
        return torch.autocast("cuda", dtype=self.autocast_dtype)

    def _to_tensor(self, images: list[np.ndarray], key: str) -> torch.Tensor:
        """uint8 (H, W, 3) images -> normalised float (N, 3, H, W) channels_last on device."""
        batch = torch.from_numpy(np.stack(images)).to(self.device, non_blocking=True)
        x = batch.permute(0, 3, 1, 2).float().div_(255.0)
        mean, std = self._norm[key]
        return ((x - mean) / std).contiguous(memory_format=torch.channels_last)

    @torch.inference_mode()
    def locate(self, images: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Run the locator on full frames: ``boxes (N, 4)`` xyxy full-frame px, ``scores (N,)``."""
        boxes, scores, _ = self._locate([_check_image(im, "image") for im in images])
        return boxes, scores

    def _locate(self, images: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, float]:
        boxed = [letterbox(im, self.locator_size) for im in images]
        x = self._to_tensor([b[0] for b in boxed], "locator")
        t0 = self._sync()
        with self._autocast():
            out = self.locator(x)
        boxes_t, scores_t = self.locator.decode(out)
        boxes_lb = boxes_t.float().cpu().numpy().astype(np.float64)
        t1 = self._sync()
        inverses = [np.linalg.inv(A) for _, A in boxed]
        boxes = np.stack(
            [transform_boxes(inv, b) for inv, b in zip(inverses, boxes_lb, strict=True)]
        )
        return boxes, scores_t.float().cpu().numpy(), t1 - t0

    def _box_ok(self, box: np.ndarray, shape: tuple[int, ...]) -> bool:
        """A usable box: finite, centre inside the image, not larger than twice the image."""
        H, W = shape[:2]
        if not np.all(np.isfinite(box)):
            return False
        cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
        size = max(box[2] - box[0], box[3] - box[1])
        return bool(0 <= cx < W and 0 <= cy < H and size <= 2 * max(H, W))

    # ------------------------------------------------------------------------------------------

    def estimate(
        self, left: np.ndarray, right: np.ndarray, P_left: np.ndarray, P_right: np.ndarray
    ) -> Pose3D:
        """3D pose of the person in one rectified stereo pair (see :class:`Pose3D`).

        Raises:
            ValueError: images that are not (H, W, 3) uint8 of the same size, P's that are not
                finite (3, 4) arrays with an invertible left 3x3 block.
        """
        pose = self._estimate([left], [right], [P_left], [P_right], track=True)[0]
        return pose

    def estimate_batch(
        self,
        lefts: Sequence[np.ndarray],
        rights: Sequence[np.ndarray],
        P_lefts: Sequence[np.ndarray],
        P_rights: Sequence[np.ndarray],
    ) -> list[Pose3D]:
        """:meth:`estimate` for many independent pairs at once (one batch; no tracking)."""
        return self._estimate(lefts, rights, P_lefts, P_rights, track=False)

    def _estimate(self, lefts, rights, P_lefts, P_rights, track: bool) -> list[Pose3D]:
        t_start = self._sync()
        n = len(lefts)
        if n == 0 or not (len(rights) == len(P_lefts) == len(P_rights) == n):
            raise ValueError(
                f"need the same non-zero number of left images, right images, P_left and "
                f"P_right; got {len(lefts)}, {len(rights)}, {len(P_lefts)}, {len(P_rights)}"
            )
        images, projections = [], []
        for i in range(n):
            left = _check_image(lefts[i], "left")
            right = _check_image(rights[i], "right")
            if left.shape != right.shape:
                raise ValueError(f"left {left.shape} and right {right.shape} sizes differ")
            images.append((left, right))
            projections.append(
                np.stack([_check_projection(P_lefts[i], "P_left"),
                          _check_projection(P_rights[i], "P_right")])
            )  # fmt: skip
        with torch.inference_mode():
            return self._run(images, projections, track and self.settings["tracking"], t_start)

    def _run(self, images, projections, track: bool, t_start: float) -> list[Pose3D]:
        timings = dict.fromkeys(TIMING_KEYS, 0.0)
        n = len(images)
        boxes = np.full((n, 2, 4), np.nan)
        scores = np.full(n, np.nan)
        source = ["locator"] * n
        if track and self._track is not None:
            joints_2d, confidence = self._track
            tracked = np.stack([box_from_joints(joints_2d[v], confidence > 0.2) for v in range(2)])
            if all(self._box_ok(tracked[v], images[0][v].shape) for v in range(2)):
                boxes[0], source[0] = tracked, "tracking"
        todo = [i for i in range(n) if source[i] == "locator"]
        if todo:
            flat = [im for i in todo for im in images[i]]
            found, found_scores, t_loc = self._locate(flat)
            timings["locator"] = t_loc
            boxes[todo] = found.reshape(len(todo), 2, 4)
            scores[todo] = found_scores.reshape(len(todo), 2).min(axis=1)
        detected = []
        for i in range(n):
            ok = source[i] == "tracking" or scores[i] >= self.settings["score_threshold"]
            ok = ok and all(self._box_ok(boxes[i, v], images[i][v].shape) for v in range(2))
            detected.append(ok)

        results: list[Pose3D | None] = [None] * n
        det = [i for i in range(n) if detected[i]]
        crops_A = np.zeros((n, 2, 3, 3))
        crop_boxes = np.zeros((n, 2, 4))
        if det:
            crops, P_crop = [], []
            for i in det:
                crop_boxes[i] = crop_regions(
                    boxes[i], projections[i], images[i][0].shape[0],
                    self.settings["crop_scale"], self.settings["min_box_fraction"],
                )  # fmt: skip
                pair_crops, pair_P, crops_A[i] = crop_views(
                    images[i], projections[i], crop_boxes[i], self.crop_size
                )
                crops.extend(pair_crops)
                P_crop.extend(pair_P)
            x = self._to_tensor(crops, "pose").unflatten(0, (len(det), 2))
            P_t = torch.as_tensor(np.stack(P_crop), dtype=torch.float32, device=self.device)
            P_t = P_t.view(len(det), 2, 3, 4)
            t_pre = self._sync()
            with self._autocast():
                out = self.pose_net.forward_2d(x, P_t)
            t_net = self._sync()
            X, valid = self.pose_net.triangulate(out["joints_2d"], out["confidence"], P_t)
            X_np = X.double().cpu().numpy()
            valid_np = valid.cpu().numpy()
            t_tri = self._sync()
            timings["network"] = t_net - t_pre
            timings["triangulation"] = t_tri - t_net
            uv_crop = out["joints_2d"].float().cpu().numpy().astype(np.float64)
            conf_views = out["confidence"].float().cpu().numpy().astype(np.float64)
            for k, i in enumerate(det):
                detected_2d = np.empty((2, len(self.joint_names), 2))
                for v in range(2):
                    inv = np.linalg.inv(crops_A[i, v])
                    detected_2d[v] = uv_crop[k, v] @ inv[:2, :2].T + inv[:2, 2]
                confidence = np.where(valid_np[k], conf_views[k].mean(axis=0), 0.0)
                if confidence.mean() < self.settings["min_pose_confidence"]:
                    continue
                results[i] = Pose3D(
                    joints_3d=X_np[k],
                    joints_2d=project(X_np[k][None], projections[i]),
                    confidence=confidence,
                    joint_names=list(self.joint_names),
                    box=boxes[i].copy(),
                    crop_boxes=crop_boxes[i].copy(),
                    joints_2d_detected=detected_2d,
                    view_confidence=conf_views[k],
                    valid=valid_np[k],
                    score=float(scores[i]),
                    source=source[i],
                )
        t_end = self._sync()
        timings["total"] = t_end - t_start
        timings["preprocess"] = max(
            0.0, timings["total"] - timings["locator"] - timings["network"]
            - timings["triangulation"],
        )  # fmt: skip
        if n > 1:
            timings["batch_size"] = float(n)
        poses = [r if r is not None else self._no_person(scores[i]) for i, r in enumerate(results)]
        for pose in poses:
            pose.timings = dict(timings)
        if track:
            best = poses[0]
            keep = (
                best.detected
                and bool(np.isfinite(best.joints_2d).all())
                and best.confidence.mean() >= self.settings["track_confidence"]
            )
            self._track = (best.joints_2d, best.confidence) if keep else None
        return poses

    def _no_person(self, score: float) -> Pose3D:
        J = len(self.joint_names)
        return Pose3D(
            joints_3d=np.full((J, 3), np.nan),
            joints_2d=np.full((2, J, 2), np.nan),
            confidence=np.zeros(J),
            joint_names=list(self.joint_names),
            box=None,
            valid=np.zeros(J, dtype=bool),
            score=float(score),
            source="none",
        )
