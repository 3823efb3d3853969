"""ROS message <-> numpy conversions for the node, the bag tools and the tests.

* :func:`image_to_rgb`: ``sensor_msgs/Image`` -> ``(H, W, 3)`` uint8 RGB for rgb8, bgr8, mono8,
  rgba8, bgra8, mono16 (and the equivalent ``8UC1``, ``8UC3`` = bgr, ``8UC4`` = bgra, ``16UC1``),
  with row padding (``step``) and either byte order (``is_bigendian``). Decoding uses cv_bridge
  where installed, else ``rosbags-image``; 16-bit images are scaled by 255/65535 as both do.
* :func:`camera_model` : ``sensor_msgs/CameraInfo`` -> validated :class:`geometry.CameraModel`.
* Builders: :func:`rgb_to_image`, :func:`camera_info`, :func:`pose_array`, stamps.

Inputs are duck-typed (rclpy messages, rosbags dataclasses or ``SimpleNamespace`` all work).
Every rejection raises :class:`InputError` whose ``reason`` is a short key used for counters.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from stereo_pose3d.geometry import CalibrationError, CameraModel

try:  # pragma: no cover - not installed in the venv
    from cv_bridge import CvBridge

    _BRIDGE: Any = CvBridge()
except Exception:  # any import problem means "not available"
    _BRIDGE = None

from rosbags.image.image import convert_color as _rosbags_convert_color


class InputError(ValueError):
    """A message the node cannot use. ``reason`` is a short counter key, ``str()`` the details."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


# encoding -> (bytes per channel, channels, name understood by rosbags-image's convert_color)
ENCODINGS: dict[str, tuple[int, int, str]] = {
    "rgb8": (1, 3, "rgb8"),
    "bgr8": (1, 3, "bgr8"),
    "mono8": (1, 1, "mono8"),
    "rgba8": (1, 4, "rgba8"),
    "bgra8": (1, 4, "bgra8"),
    "mono16": (2, 1, "mono16"),
    "8UC1": (1, 1, "mono8"),
    "8UC3": (1, 3, "bgr8"),
    "8UC4": (1, 4, "bgra8"),
    "16UC1": (2, 1, "mono16"),
}
SUPPORTED_ENCODINGS = tuple(ENCODINGS)


def check_image_layout(msg: Any) -> tuple[int, int, int, int, str]:
    """Validate size/encoding/step/data length; returns (h, w, bpc, ch, canonical encoding)."""
    encoding = str(msg.encoding)
    if encoding not in ENCODINGS:
        raise InputError(
            "unsupported_encoding",
            f"unsupported image encoding {encoding!r}; supported: {', '.join(SUPPORTED_ENCODINGS)}",
        )
    bpc, ch, name = ENCODINGS[encoding]
    h, w, step = int(msg.height), int(msg.width), int(msg.step)
    if h <= 0 or w <= 0:
        raise InputError("empty_image", f"empty image ({w}x{h})")
    row = w * ch * bpc
    if step < row:
        raise InputError("bad_step", f"step {step} is smaller than width*pixel size {row}")
    n = len(msg.data)
    if n < step * (h - 1) + row:
        raise InputError(
            "truncated_image", f"image data has {n} bytes, {w}x{h} {encoding} needs {step * h}"
        )
    return h, w, bpc, ch, name


def image_to_array(msg: Any) -> tuple[np.ndarray, str]:
    """The image's pixels as ``(H, W)`` or ``(H, W, C)`` in native byte order, row padding removed,
    plus the rosbags-image encoding name. A view on ``msg.data`` where possible."""
    h, w, bpc, ch, name = check_image_layout(msg)
    buf = np.frombuffer(memoryview(msg.data).cast("B"), dtype=np.uint8)
    step = int(msg.step)
    rows = np.lib.stride_tricks.as_strided(buf, shape=(h, w * ch * bpc), strides=(step, 1))
    if bpc == 2:
        dtype = np.dtype(">u2" if msg.is_bigendian else "<u2")
        rows = np.ascontiguousarray(rows).view(dtype).astype(np.uint16)  # -> native order
    shape = (h, w) if ch == 1 else (h, w, ch)
    return rows.reshape(shape), name


def image_to_rgb(msg: Any) -> np.ndarray:
    """``sensor_msgs/Image`` -> C-contiguous ``(H, W, 3)`` uint8 RGB array (a copy).

    Raises:
        InputError: unsupported encoding, empty image, bad step or truncated data.
    """
    check_image_layout(msg)
    if _BRIDGE is not None:  # pragma: no cover - cv_bridge is not installed in the venv
        try:
            return np.ascontiguousarray(_BRIDGE.imgmsg_to_cv2(msg, desired_encoding="rgb8"))
        except Exception:  # fall back to the rosbags-image path below
            pass
    pixels, name = image_to_array(msg)
    try:
        rgb = _rosbags_convert_color(pixels, name, "rgb8")
    except Exception as exc:  # rosbags-image raises several types
        raise InputError("unsupported_encoding", f"cannot convert {name} to rgb8: {exc}") from exc
    rgb = np.asarray(rgb)
    if rgb.dtype != np.uint8:  # rosbags-image keeps float for 16->8 bit
        rgb = np.clip(rgb, 0, 255).astype(np.uint8)
    return np.array(rgb, dtype=np.uint8, order="C", copy=True)


def camera_model(msg: Any) -> CameraModel:
    """``sensor_msgs/CameraInfo`` -> validated :class:`CameraModel`.

    Raises:
        InputError: reason ``calibration_nan`` (NaN/inf values), ``uncalibrated`` (K or P all
            zeros), ``bad_calibration`` (anything else :meth:`CameraModel.validate` rejects).
    """
    for field in ("k", "r", "p", "d"):
        values = np.asarray(getattr(msg, field), dtype=np.float64)
        if not np.all(np.isfinite(values)):
            raise InputError("calibration_nan", f"camera_info {field.upper()} contains NaN or inf")
    if not np.any(np.asarray(msg.k, dtype=np.float64)):
        raise InputError("uncalibrated", "camera_info K is all zeros: the camera is uncalibrated")
    try:
        model = CameraModel.from_camera_info(msg)
        model.validate()
    except CalibrationError as exc:
        reason = "uncalibrated" if "uncalibrated" in str(exc) else "bad_calibration"
        raise InputError(reason, f"camera_info rejected: {exc}") from exc
    except (ValueError, TypeError) as exc:
        raise InputError("bad_calibration", f"camera_info rejected: {exc}") from exc
    return model


def camera_center(P: np.ndarray) -> np.ndarray:
    """Centre ``(3,)`` (metres) of a finite camera ``P (3, 4)``: ``-M^-1 p4``."""
    P = np.asarray(P, dtype=np.float64)
    return -np.linalg.solve(P[:, :3], P[:, 3])


# ---------------------------------------------------------------------------------------------
# stamps
# ---------------------------------------------------------------------------------------------


def stamp_to_ns(stamp: Any) -> int:
    """``builtin_interfaces/Time`` -> integer nanoseconds."""
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def ns_to_stamp(ns: int) -> Any:
    """Integer nanoseconds -> ``builtin_interfaces/Time``."""
    from builtin_interfaces.msg import Time

    return Time(sec=int(ns // 1_000_000_000), nanosec=int(ns % 1_000_000_000))


def make_header(stamp_ns: int, frame_id: str) -> Any:
    from std_msgs.msg import Header

    return Header(stamp=ns_to_stamp(stamp_ns), frame_id=frame_id)


def copy_header(header: Any) -> Any:
    """A ``std_msgs/Header`` (rclpy) copied from any header-like object."""
    return make_header(stamp_to_ns(header.stamp), str(header.frame_id))


# ---------------------------------------------------------------------------------------------
# builders
# ---------------------------------------------------------------------------------------------


def rgb_to_image(
    rgb: np.ndarray,
    header: Any = None,
    encoding: str = "rgb8",
    row_padding: int = 0,
    bigendian: bool = False,
) -> Any:
    """``(H, W, 3)`` uint8 RGB -> ``sensor_msgs/Image`` in ``encoding`` (any of
    :data:`SUPPORTED_ENCODINGS`; mono via luminance, 16-bit scaled by 257), with optional
    ``row_padding`` bytes per row and big-endian 16-bit data (for tests of the decoder)."""
    import cv2
    from sensor_msgs.msg import Image

    rgb = np.asarray(rgb, dtype=np.uint8)
    if encoding not in ENCODINGS:
        raise ValueError(f"cannot encode {encoding!r}")
    bpc, ch, name = ENCODINGS[encoding]
    conv = {
        "rgb8": rgb,
        "bgr8": rgb[..., ::-1],
        "rgba8": np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)]),
        "bgra8": np.dstack([rgb[..., ::-1], np.full(rgb.shape[:2], 255, np.uint8)]),
        "mono8": cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY),
    }
    if name == "mono16":
        pixels = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY).astype(np.uint16) * 257
        pixels = pixels.astype(">u2" if bigendian else "<u2")
    else:
        pixels = conv[name]
    h, w = rgb.shape[:2]
    raw = np.ascontiguousarray(pixels).view(np.uint8).reshape(h, w * ch * bpc)
    if row_padding:
        raw = np.hstack([raw, np.zeros((h, row_padding), np.uint8)])
    msg = Image()
    if header is not None:
        msg.header = header
    msg.height, msg.width, msg.encoding = h, w, encoding
    msg.is_bigendian = int(bool(bigendian and bpc == 2))
    msg.step = raw.shape[1]
    msg.data = raw.tobytes()
    return msg


def camera_info(
    P: np.ndarray,
    width: int,
    height: int,
    header: Any = None,
    K: np.ndarray | None = None,
    D: np.ndarray | None = None,
    R: np.ndarray | None = None,
    distortion_model: str = "plumb_bob",
) -> Any:
    """``sensor_msgs/CameraInfo`` from a projection ``P (3, 4)`` (K defaults to ``P[:, :3]``,
    D to zeros, R to identity)."""
    from sensor_msgs.msg import CameraInfo

    P = np.asarray(P, dtype=np.float64).reshape(3, 4)
    msg = CameraInfo()
    if header is not None:
        msg.header = header
    msg.width, msg.height = int(width), int(height)
    msg.distortion_model = distortion_model
    msg.d = [float(x) for x in (np.zeros(5) if D is None else np.asarray(D).reshape(-1))]
    msg.k = [float(x) for x in (P[:, :3] if K is None else np.asarray(K)).reshape(-1)]
    msg.r = [float(x) for x in (np.eye(3) if R is None else np.asarray(R)).reshape(-1)]
    msg.p = [float(x) for x in P.reshape(-1)]
    return msg


def pose_array(
    joints_3d: np.ndarray | None,
    header: Any,
    confidence: np.ndarray | None = None,
    min_confidence: float = 0.0,
) -> Any:
    """``geometry_msgs/PoseArray`` with one pose per joint, in skeleton order.

    Positions are the joints (metres). The orientation carries the confidence flag: identity
    (w = 1) for joints with ``confidence >= min_confidence``, the zero quaternion (all 0) for
    joints below it, so indices always match the skeleton. ``joints_3d=None``: an empty array
    (nobody seen).
    """
    from geometry_msgs.msg import Pose, PoseArray

    msg = PoseArray(header=header)
    if joints_3d is None:
        return msg
    joints = np.asarray(joints_3d, dtype=np.float64).reshape(-1, 3)
    conf = np.ones(len(joints)) if confidence is None else np.asarray(confidence).reshape(-1)
    poses = []
    for (x, y, z), c in zip(joints, conf, strict=True):
        p = Pose()
        p.position.x, p.position.y, p.position.z = float(x), float(y), float(z)
        p.orientation.w = 1.0 if c >= min_confidence else 0.0
        poses.append(p)
    msg.poses = poses
    return msg


def pose_array_to_numpy(msg: Any) -> tuple[np.ndarray, np.ndarray]:
    """``PoseArray`` -> joints ``(J, 3)`` metres and the confident flag ``(J,)`` bool
    (orientation w != 0, see :func:`pose_array`)."""
    joints = np.array([[p.position.x, p.position.y, p.position.z] for p in msg.poses])
    flags = np.array([p.orientation.w != 0.0 for p in msg.poses], dtype=bool)
    return joints.reshape(-1, 3), flags
