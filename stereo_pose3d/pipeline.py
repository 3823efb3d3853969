"""The node's processing path without the node: messages -> numpy -> estimator -> messages.

Shared by ``stereo_pose3d_node`` (live) and ``stereo_pose3d_bag process`` (offline), and testable
without spinning ROS. Everything here is synchronous and single-threaded; the node runs it on its
worker thread.

* :func:`prepare_frame`: two ``Image`` + two ``CameraInfo`` -> :class:`StereoFrame` (RGB arrays,
  projection matrices, the left rectification rotation), or :class:`~ros_io.InputError` naming
  what is wrong (missing/uncalibrated/NaN calibration, unsupported encoding, size mismatch, ...).
  Raw (non-rectified) images are rectified here with the camera_info's K, D, R and P when
  ``images_rectified`` is false.
* :class:`PoseProcessor`: runs the estimator on a frame, smooths the confident joints over time
  (1-euro filter, ``smoothing``) and builds the output messages.

Frames: the estimator returns joints in the left *rectified* frame (the frame ``P_left`` and
``P_right`` project from). The outputs are expressed in the left image's ``frame_id`` (the left
camera's optical frame), i.e. rotated by ``R_left^T``; for an already rectified pair with R = I
(e.g. the synthetic rig) the two frames coincide.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from stereo_pose3d import ros_io
from stereo_pose3d.filters import OneEuroFilter
from stereo_pose3d.geometry import CameraModel
from stereo_pose3d.markers import delete_all_markers, draw_debug_image, skeleton_markers
from stereo_pose3d.ros_io import InputError
from stereo_pose3d.skeleton import MPII, Skeleton, skeleton_for_joint_names

MIN_BASELINE_M = 1e-4


class Estimator(Protocol):
    """What the pipeline needs of ``stereo_pose3d.estimator.StereoPoseEstimator``."""

    def estimate(
        self, left: np.ndarray, right: np.ndarray, P_left: np.ndarray, P_right: np.ndarray
    ) -> Any: ...


class EstimatorOutputError(RuntimeError):
    """The estimator returned something malformed (counted as a failed frame)."""


@dataclass
class StereoFrame:
    """Validated inputs of one synchronized pair.

    Attributes:
        stamp_ns: left image stamp, nanoseconds.
        header: the left image's header (output messages reuse it).
        left, right: (H, W, 3) uint8 RGB, rectified.
        P_left, P_right: (3, 4) projections from the left rectified frame to each rectified image.
        R_left: (3, 3) rotation from the left raw (optical) frame to the left rectified frame.
    """

    stamp_ns: int
    header: Any
    left: np.ndarray
    right: np.ndarray
    P_left: np.ndarray
    P_right: np.ndarray
    R_left: np.ndarray


class Rectifier:
    """Cached ``cv2.initUndistortRectifyMap`` per calibration, for raw (non-rectified) input."""

    def __init__(self, max_entries: int = 4) -> None:
        self._maps: dict[bytes, tuple[np.ndarray, np.ndarray]] = {}
        self._max = max_entries
        self._lock = threading.Lock()

    def __call__(self, image: np.ndarray, cam: CameraModel) -> np.ndarray:
        import cv2

        h, w = image.shape[:2]
        arrays = (cam.K, cam.D, cam.R, cam.P)
        key = b"".join(np.ascontiguousarray(a, np.float64).tobytes() for a in arrays)
        key += f"{w}x{h}{cam.distortion_model}".encode()
        with self._lock:
            maps = self._maps.get(key)
            if maps is None:
                D = cam.D.reshape(-1) if cam.D.size else np.zeros(5)
                fisheye = cam.distortion_model == "equidistant"
                if not (D.size >= 4 if fisheye else D.size in (4, 5, 8, 12, 14)):
                    takes = "at least 4" if fisheye else "4, 5, 8, 12 or 14"
                    raise InputError(
                        "bad_calibration",
                        f"camera_info D has {D.size} coefficients: cannot rectify "
                        f"{cam.distortion_model or 'plumb_bob'} images (OpenCV takes {takes})",
                    )
                try:
                    if fisheye:
                        maps = cv2.fisheye.initUndistortRectifyMap(
                            cam.K, D[:4], cam.R, cam.P[:, :3], (w, h), cv2.CV_16SC2
                        )
                    else:
                        maps = cv2.initUndistortRectifyMap(
                            cam.K, D, cam.R, cam.P[:, :3], (w, h), cv2.CV_16SC2
                        )
                except cv2.error as exc:
                    raise InputError(
                        "bad_calibration", f"cannot rectify with this camera_info: {exc}"
                    ) from None
                if len(self._maps) >= self._max:
                    self._maps.pop(next(iter(self._maps)))
                self._maps[key] = maps
        return cv2.remap(image, maps[0], maps[1], cv2.INTER_LINEAR)


def prepare_frame(
    left_msg: Any,
    right_msg: Any,
    left_info: Any | None,
    right_info: Any | None,
    images_rectified: bool = True,
    rectifier: Rectifier | None = None,
) -> StereoFrame:
    """Validate and convert one synchronized pair.

    Raises:
        InputError: ``no_camera_info``, ``uncalibrated``, ``calibration_nan``, ``bad_calibration``,
            ``unsupported_encoding``, ``empty_image``, ``bad_step``, ``truncated_image``,
            ``size_mismatch`` (left/right), ``info_size_mismatch`` (image vs camera_info),
            ``zero_baseline``.
    """
    for side, msg in (("left", left_msg), ("right", right_msg)):
        try:
            ros_io.check_image_layout(msg)
        except InputError as exc:
            raise InputError(exc.reason, f"{side} image: {exc}") from exc
    missing = [s for s, info in (("left", left_info), ("right", right_info)) if info is None]
    if missing:
        raise InputError("no_camera_info", f"waiting for camera_info on {' and '.join(missing)}")
    cams = []
    for side, info in (("left", left_info), ("right", right_info)):
        try:
            cams.append(ros_io.camera_model(info))
        except InputError as exc:
            raise InputError(exc.reason, f"{side} {exc}") from exc
    sizes = [(int(m.width), int(m.height)) for m in (left_msg, right_msg)]
    if sizes[0] != sizes[1]:
        raise InputError(
            "size_mismatch",
            f"left image is {sizes[0][0]}x{sizes[0][1]}, right is {sizes[1][0]}x{sizes[1][1]}",
        )
    for side, cam, (w, h) in zip(("left", "right"), cams, sizes, strict=True):
        if (cam.width, cam.height) != (w, h):
            raise InputError(
                "info_size_mismatch",
                f"{side} camera_info is for {cam.width}x{cam.height} images, the image is {w}x{h}",
            )
    images = []
    for side, msg in (("left", left_msg), ("right", right_msg)):
        try:
            images.append(ros_io.image_to_rgb(msg))
        except InputError as exc:
            raise InputError(exc.reason, f"{side} image: {exc}") from exc
    P_left, P_right = cams[0].P.copy(), cams[1].P.copy()
    try:
        baseline = float(
            np.linalg.norm(ros_io.camera_center(P_right) - ros_io.camera_center(P_left))
        )
    except np.linalg.LinAlgError:
        baseline = 0.0
    if not baseline > MIN_BASELINE_M:
        raise InputError(
            "zero_baseline",
            "left and right camera_info P describe the same camera centre (no stereo baseline)",
        )
    if not images_rectified:
        rect = rectifier or Rectifier()
        for i, side in enumerate(("left", "right")):
            try:
                images[i] = rect(images[i], cams[i])
            except InputError as exc:
                raise InputError(exc.reason, f"{side} {exc}") from exc
    return StereoFrame(
        stamp_ns=ros_io.stamp_to_ns(left_msg.header.stamp),
        header=ros_io.copy_header(left_msg.header),
        left=images[0],
        right=images[1],
        P_left=P_left,
        P_right=P_right,
        R_left=cams[0].R.copy(),
    )


# 1-euro filter parameters chosen by ``python -m training tune-temporal`` on synthetic training
# clips at 30 and 15 Hz (docs/models.md, "Pipeline", step 7): a 30 Hz low-pass (time constant
# 5 ms); a speed term (beta > 0) did not help, the depth noise itself is fast. (With joint
# stereo matching and the epipolar gate the depth noise is small: a lower cut-off lags more than
# it smooths.)
SMOOTHING_MIN_CUTOFF = 30.0  # Hz
SMOOTHING_BETA = 0.0  # s/m
# A joint unseen for longer than this restarts from its next observation instead of blending.
SMOOTHING_RESET_S = 0.5
SMOOTHING_CHOICES = ("one_euro", "none")


@dataclass
class ProcessingConfig:
    """Output settings (all can change while running)."""

    min_confidence: float = 0.3
    marker_scale: float = 0.05
    marker_lifetime: float = 0.5
    publish_debug_image: bool = False
    images_rectified: bool = True
    # Temporal smoothing of the confident 3D joints (stereo_pose3d.filters): "one_euro" or "none".
    smoothing: str = "one_euro"
    smoothing_min_cutoff: float = SMOOTHING_MIN_CUTOFF
    smoothing_beta: float = SMOOTHING_BETA


@dataclass
class FrameResult:
    """Outputs of one processed pair.

    Attributes:
        joints_3d: (J, 3) metres in ``header.frame_id`` or None when nobody was seen.
        confidence: (J,) or None.
        markers, joints: ``MarkerArray`` and ``PoseArray`` messages.
        debug_image: ``Image`` (rgb8, both views side by side) or None.
        joints_2d: (2, J, 2) pixels of the (rectified) input images, box (2, 4) xyxy, or None.
        frame: the validated inputs (images kept for rendering).
        timings: seconds per stage: convert, estimate, outputs.
    """

    stamp_ns: int
    header: Any
    joints_3d: np.ndarray | None
    confidence: np.ndarray | None
    joint_names: tuple[str, ...]
    markers: Any
    joints: Any
    debug_image: Any | None
    joints_2d: np.ndarray | None = None
    box: np.ndarray | None = None
    frame: StereoFrame | None = None
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def person(self) -> bool:
        return self.joints_3d is not None


def _pose_fields(pose: Any, num_joints_hint: int | None) -> tuple[Any, ...] | None:
    """(joints_3d, joints_2d, confidence, joint_names, box) or None for "nobody"."""
    if pose is None or getattr(pose, "box", True) is None:
        return None
    joints_3d = getattr(pose, "joints_3d", None)
    if joints_3d is None:
        return None
    try:
        j3 = np.asarray(_to_numpy(joints_3d), dtype=np.float64)
        j2 = getattr(pose, "joints_2d", None)
        j2 = None if j2 is None else np.asarray(_to_numpy(j2), dtype=np.float64)
        conf = np.asarray(_to_numpy(pose.confidence), dtype=np.float64).reshape(-1)
    except (TypeError, ValueError, AttributeError) as exc:
        raise EstimatorOutputError(f"estimator returned unusable arrays: {exc}") from exc
    J = j3.shape[0] if j3.ndim == 2 else -1
    if j3.shape != (J, 3) or conf.shape != (J,) or (j2 is not None and j2.shape != (2, J, 2)):
        raise EstimatorOutputError(
            f"estimator returned joints_3d {j3.shape}, confidence {conf.shape}, "
            f"joints_2d {None if j2 is None else j2.shape}; expected (J,3), (J,), (2,J,2)"
        )
    names = tuple(getattr(pose, "joint_names", None) or ())
    box = getattr(pose, "box", None)
    box = None if box is None else np.asarray(_to_numpy(box), dtype=np.float64)
    # Non-finite outputs are never published as confident joints.
    conf = np.where(np.all(np.isfinite(j3), axis=1) & np.isfinite(conf), conf, 0.0)
    return j3, j2, np.clip(conf, 0.0, 1.0), names, box


def _to_numpy(x: Any) -> Any:
    if hasattr(x, "detach"):
        return x.detach().cpu().numpy()
    return x


class PoseProcessor:
    """Runs the estimator on validated frames and builds the node's output messages.

    Args:
        estimator: an object with ``estimate(left, right, P_left, P_right)`` (see
            :class:`Estimator`); returns a pose with ``joints_3d (J,3)``, ``joints_2d (2,J,2)``,
            ``confidence (J,)``, ``joint_names``, ``box`` -- or None / ``box is None`` for nobody.
        config: output settings; replace ``processor.config`` to change them.
        skeleton: joint set; default: looked up from the estimator's joint names, else MPII.
    """

    def __init__(
        self,
        estimator: Estimator,
        config: ProcessingConfig | None = None,
        skeleton: Skeleton | None = None,
    ) -> None:
        self.estimator = estimator
        self.config = config or ProcessingConfig()
        self.skeleton = skeleton
        self.rectifier = Rectifier()
        self._smoother: OneEuroFilter | None = None
        self._smoother_params: tuple[float, float] | None = None

    def smooth(self, joints: np.ndarray, confidence: np.ndarray, stamp_ns: int) -> np.ndarray:
        """``joints (J, 3)`` m with the confident ones (``>= min_confidence``) filtered over time
        (``config.smoothing``); the others are returned as given (they are not shown)."""
        cfg = self.config
        if cfg.smoothing == "none":
            self._smoother = None
            return joints
        params = (cfg.smoothing_min_cutoff, cfg.smoothing_beta)
        if self._smoother is None or self._smoother_params != params:
            self._smoother = OneEuroFilter(*params, reset_after=SMOOTHING_RESET_S)
            self._smoother_params = params
        observed = np.where((confidence >= cfg.min_confidence)[:, None], joints, np.nan)
        out = self._smoother(observed, stamp_ns * 1e-9)
        return np.where(np.isfinite(out), out, joints)

    def _skeleton_for(self, names: tuple[str, ...], J: int) -> Skeleton:
        if self.skeleton is not None and self.skeleton.num_joints == J:
            return self.skeleton
        if names:
            try:
                self.skeleton = skeleton_for_joint_names(names)
                return self.skeleton
            except KeyError:
                pass
        if MPII.num_joints == J:
            return MPII
        raise EstimatorOutputError(f"no skeleton with {J} joints {list(names)}")

    def process(
        self, left_msg: Any, right_msg: Any, left_info: Any | None, right_info: Any | None
    ) -> FrameResult:
        """One synchronized pair -> outputs; raises InputError (bad input) or estimator errors."""
        cfg = self.config
        t0 = time.perf_counter()
        frame = prepare_frame(
            left_msg, right_msg, left_info, right_info, cfg.images_rectified, self.rectifier
        )
        t1 = time.perf_counter()
        pose = self.estimator.estimate(frame.left, frame.right, frame.P_left, frame.P_right)
        t2 = time.perf_counter()
        result = self.build_outputs(frame, pose)
        result.timings = {
            "convert": t1 - t0,
            "estimate": t2 - t1,
            "outputs": time.perf_counter() - t2,
        }
        return result

    def build_outputs(self, frame: StereoFrame, pose: Any) -> FrameResult:
        """Markers, joints and debug image of one estimate (``pose`` as returned by the
        estimator)."""
        cfg = self.config
        fields = _pose_fields(pose, None)
        header = frame.header
        if fields is None:
            skeleton = self.skeleton or MPII
            debug = None
            if cfg.publish_debug_image:
                img = draw_debug_image(frame.left, frame.right, None, None, skeleton, text="nobody")
                debug = ros_io.rgb_to_image(img, header)
            return FrameResult(
                stamp_ns=frame.stamp_ns,
                header=header,
                joints_3d=None,
                confidence=None,
                joint_names=skeleton.joint_names,
                markers=delete_all_markers(header),
                joints=ros_io.pose_array(None, header),
                debug_image=debug,
                frame=frame,
            )
        j3_rect, j2, conf, names, box = fields
        skeleton = self._skeleton_for(names, len(j3_rect))
        j3_rect = self.smooth(j3_rect, conf, frame.stamp_ns)
        joints = j3_rect @ frame.R_left  # rows: R^T x  (left rectified -> left optical frame)
        markers = skeleton_markers(
            joints,
            conf,
            skeleton,
            header,
            cfg.min_confidence,
            cfg.marker_scale,
            cfg.marker_lifetime,
        )
        pose_msg = ros_io.pose_array(joints, header, conf, cfg.min_confidence)
        debug = None
        if cfg.publish_debug_image:
            n_ok = int((conf >= cfg.min_confidence).sum())
            img = draw_debug_image(
                frame.left,
                frame.right,
                j2,
                conf,
                skeleton,
                cfg.min_confidence,
                box,
                text=f"{n_ok}/{len(conf)} joints",
            )
            debug = ros_io.rgb_to_image(img, header)
        return FrameResult(
            stamp_ns=frame.stamp_ns,
            header=header,
            joints_3d=joints,
            confidence=conf,
            joint_names=skeleton.joint_names,
            markers=markers,
            joints=pose_msg,
            debug_image=debug,
            joints_2d=j2,
            box=box,
            frame=frame,
        )
