"""``stereo_pose3d_node``: synchronized stereo images in, 3D skeletons out.

Subscribes (relative names: a namespace or remapping places them) to ``left/image_rect``,
``left/camera_info``, ``right/image_rect``, ``right/camera_info``; publishes with the left image's
header ``pose3d/markers`` (MarkerArray), ``pose3d/joints`` (PoseArray) and, if
``publish_debug_image``, ``pose3d/debug_image``; and ``/diagnostics`` once a second. See
docs/ros.md for the topics, parameters, QoS and DDS transport advice.

Threads: the executor thread only stores camera_info, feeds the approximate-time synchronizer and
puts each synchronized pair into a one-slot mailbox (:class:`LatestSlot`), replacing (and counting
as dropped) any pair the worker has not taken yet. The worker thread converts, runs the estimator
and publishes. So callbacks never wait for inference, the newest pair is always the next one
processed, latency stays bounded at about one processing time, and memory holds at most two
pairs. All bad input is counted per reason and warned about (throttled); it never stops the node.
"""

from __future__ import annotations

import math
import sys
import threading
import time
import traceback
from collections import deque
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from stereo_pose3d import dds, ros_io
from stereo_pose3d.pipeline import (
    SMOOTHING_BETA,
    SMOOTHING_CHOICES,
    SMOOTHING_MIN_CUTOFF,
    EstimatorOutputError,
    FrameResult,
    PoseProcessor,
    ProcessingConfig,
)
from stereo_pose3d.ros_io import InputError

NODE_NAME = "stereo_pose3d_node"
# The shipped two-view baseline: on the synthetic validation set it is more accurate than the
# shipped CDRNet (README, "The shipped weights"); weights:=.../cdrnet_synth.pt runs CDRNet.
DEFAULT_WEIGHTS = Path(__file__).resolve().parent / "weights" / "baseline_synth.pt"
QOS_CHOICES = ("sensor_data", "reliable")
# A pair older than the previous one by more than this is a clock reset (bag loop, sim restart),
# not an out-of-order message: the node starts over instead of rejecting every later frame.
TIME_RESET_S = 1.0
# Diagnostics say the node is waiting for a camera when none of its images came for this long
# (a driver that died or a cable that came loose), or for pairs when images come but none pair.
IMAGE_TIMEOUT_S = 3.0
# After rejected input the status is WARN (naming the last problem) for this long; then OK again
# once frames are processed, with the failure count and its age in the message.
RECENT_ERROR_S = 10.0
# Largest refine_iterations (= stereo_pose3d.estimator.MAX_REFINE_ITERATIONS; not imported here
# so that the parameter checks do not load torch).
MAX_REFINE_ITERATIONS = 10
# Largest locator_candidates (= stereo_pose3d.models.config.MAX_LOCATOR_CANDIDATES; same reason).
MAX_LOCATOR_CANDIDATES = 5
# Heatmap decodings (= stereo_pose3d.models.config.HEATMAP_DECODINGS; same reason).
HEATMAP_DECODINGS = ("local", "global")


# Node parameters that are estimator settings (stereo_pose3d.models.config.DEFAULT_ESTIMATOR):
# passed to the estimator at start and on every change.
ESTIMATOR_PARAMETERS = (
    "refine_iterations",
    "locator_candidates",
    "stereo_box_matching",
    "joint_stereo_matching",
    "max_depth_spread",
    "max_epipolar_offset",
    "flip_test",
    "heatmap_decoding",
)


class ConfigError(ValueError):
    """Invalid node parameters (message lists every problem)."""


# ---------------------------------------------------------------------------------------------
# parameters
# ---------------------------------------------------------------------------------------------


@dataclass
class NodeConfig:
    """The node's parameters (names, types and defaults as in ``config/stereo_pose3d.yaml``)."""

    weights: str = ""
    device: str = "auto"
    min_confidence: float = 0.3
    queue_size: int = 10
    slop: float = 0.02
    qos: str = "sensor_data"
    max_rate: float = 0.0
    publish_debug_image: bool = False
    marker_scale: float = 0.05
    marker_lifetime: float = 0.5
    images_rectified: bool = True
    diagnostics_period: float = 1.0
    refine_iterations: int = 0
    locator_candidates: int = 2
    stereo_box_matching: bool = True
    joint_stereo_matching: bool = True
    max_depth_spread: float = 1.0
    max_epipolar_offset: float = 0.03
    flip_test: bool = False
    heatmap_decoding: str = "local"
    smoothing: str = "one_euro"
    smoothing_min_cutoff: float = SMOOTHING_MIN_CUTOFF
    smoothing_beta: float = SMOOTHING_BETA

    def processing(self) -> ProcessingConfig:
        return ProcessingConfig(
            min_confidence=self.min_confidence,
            marker_scale=self.marker_scale,
            marker_lifetime=self.marker_lifetime,
            publish_debug_image=self.publish_debug_image,
            images_rectified=self.images_rectified,
            smoothing=self.smoothing,
            smoothing_min_cutoff=self.smoothing_min_cutoff,
            smoothing_beta=self.smoothing_beta,
        )

    @property
    def weights_path(self) -> Path:
        return Path(self.weights).expanduser() if self.weights else DEFAULT_WEIGHTS


# name -> (description, read_only: needs a restart)
PARAMETER_DOCS: dict[str, tuple[str, bool]] = {
    "weights": ("Estimator checkpoint file; empty: the shipped " + DEFAULT_WEIGHTS.name, True),
    "device": ("Inference device: auto (CUDA if available), cpu, cuda or cuda:N", True),
    "min_confidence": (
        "Joints below this confidence [0, 1] are left out of the markers and "
        "flagged in pose3d/joints (zero quaternion)",
        False,
    ),
    "queue_size": (
        "Messages kept per image input by the approximate-time synchronizer (integer >= 1)",
        True,
    ),
    "slop": ("Largest left/right stamp difference of a synchronized pair, seconds (> 0)", True),
    "qos": (
        "Input QoS: sensor_data (best effort, depth 5; matches every publisher) or reliable "
        "(depth 10; receives nothing from best-effort publishers)",
        True,
    ),
    "max_rate": (
        "Largest processing rate, pairs per second; 0 = as fast as possible. Newer "
        "pairs replace waiting ones (counted as dropped)",
        False,
    ),
    "publish_debug_image": ("Publish pose3d/debug_image (both views with the 2D skeletons)", False),
    "marker_scale": ("Joint sphere diameter in metres (bones are 0.4 x as wide), > 0", False),
    "marker_lifetime": ("Seconds RViz keeps markers that are not refreshed, > 0", False),
    "diagnostics_period": ("Seconds between /diagnostics messages, > 0", True),
    "images_rectified": (
        "true: the images are rectified (use P only); false: raw images, "
        "rectified here with K, D, R and P",
        False,
    ),
    "refine_iterations": (
        f"Stereo-consistent box refinement passes per pair, integer in [0, "
        f"{MAX_REFINE_ITERATIONS}]: re-crop both views around the projected 3D joints and run "
        "the network again (each pass costs about one more network run); 0 = off",
        False,
    ),
    "locator_candidates": (
        f"Person candidates per pair, integer in [1, {MAX_LOCATOR_CANDIDATES}]: besides the "
        "locator's best peak, its next peaks (left view, paired on the same rows of the right "
        "view) also go through the pose network when they score above the threshold, and the "
        "candidate the network is most confident on is kept (one more network run on the pairs "
        "that have one); 1 = the best peak only",
        False,
    ),
    "stereo_box_matching": (
        "Rectified pairs: place the right view's person box at the left box shifted by the "
        "disparity that best matches the left box's image patch along the same rows (NCC, "
        "about 1 ms); the located box is kept when the match is weak. false = the locator's "
        "box per view",
        False,
    ),
    "joint_stereo_matching": (
        "Rectified pairs: re-measure each joint's disparity by matching a small patch around its "
        "left-view detection along the same rows of the right view (NCC, sub-pixel, about 2 ms), "
        "so depth comes from the images' correspondence rather than from two independent "
        "detections; a joint whose match is weak keeps the network's. false = the network's "
        "disparities",
        False,
    ),
    "max_depth_spread": (
        "Metres: joints farther than this from the median depth of the person's joints are "
        "left out (confidence 0; a joint confused between the views lands metres away); "
        "0 = off",
        False,
    ),
    "max_epipolar_offset": (
        "Fraction of the person's height in the image: joints whose two views' detections are "
        "farther than this from each other's epipolar line (rectified pairs: whose rows differ "
        "by more) are left out (confidence 0): one view took another limb or an occluder; "
        "0 = off",
        False,
    ),
    "flip_test": (
        "Flip test: the pose network also runs on the horizontally mirrored crops (same batch) "
        "and the mirrored-back heatmaps are averaged in; doubles the network's cost",
        False,
    ),
    "heatmap_decoding": (
        "How 2D joints are read from the pose network's heatmaps: local (mean shift from each "
        "heatmap's peak: one mode, sub-pixel) or global (soft-argmax over the whole heatmap, "
        "which averages the modes of a confused joint)",
        False,
    ),
    "smoothing": (
        "Temporal smoothing of the confident 3D joints over the image stamps: one_euro (1-euro "
        "filter per joint coordinate) or none",
        False,
    ),
    "smoothing_min_cutoff": (
        "1-euro cut-off frequency at rest, Hz, > 0: lower = smoother with more lag "
        f"(time constant 1 / (2 pi f): {1000 / (2 * math.pi * SMOOTHING_MIN_CUTOFF):.0f} ms at "
        "the default)",
        False,
    ),
    "smoothing_beta": (
        "1-euro speed coefficient, s/m, >= 0: higher = less lag on fast motion, more noise",
        False,
    ),
}


def validate_config(values: dict[str, Any], check_files: bool = True) -> NodeConfig:
    """Check and convert parameter values (missing ones take the defaults).

    Raises:
        ConfigError: listing every invalid value with the accepted range.
    """
    defaults = NodeConfig()
    errors: list[str] = []
    out: dict[str, Any] = {}
    for f in fields(NodeConfig):
        value = values.get(f.name, getattr(defaults, f.name))
        expected = type(getattr(defaults, f.name))
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
            errors.append(f"{f.name}: expected {expected.__name__}, got {value!r}")
            value = getattr(defaults, f.name)  # range checks below see only the others
        out[f.name] = value

    def check(ok: bool, message: str) -> None:
        if not ok:
            errors.append(message)

    finite = {k: v for k, v in out.items() if isinstance(v, float)}
    for k, v in finite.items():
        check(math.isfinite(v), f"{k}: must be a finite number, got {v}")
    check(
        0.0 <= out["min_confidence"] <= 1.0,
        f"min_confidence: must be in [0, 1], got {out['min_confidence']}",
    )
    check(
        1 <= out["queue_size"] <= 10000,
        f"queue_size: must be an integer in [1, 10000], got {out['queue_size']}",
    )
    check(0.0 < out["slop"] <= 60.0, f"slop: must be in (0, 60] seconds, got {out['slop']}")
    check(out["qos"] in QOS_CHOICES, f"qos: must be one of {QOS_CHOICES}, got {out['qos']!r}")
    check(
        0.0 <= out["max_rate"] <= 10000.0,
        f"max_rate: must be in [0, 10000] Hz (0 = unlimited), got {out['max_rate']}",
    )
    check(
        0.0 < out["marker_scale"] <= 10.0,
        f"marker_scale: must be in (0, 10] metres, got {out['marker_scale']}",
    )
    check(
        0.0 < out["marker_lifetime"] <= 3600.0,
        f"marker_lifetime: must be in (0, 3600] seconds, got {out['marker_lifetime']}",
    )
    check(
        0.0 < out["diagnostics_period"] <= 3600.0,
        f"diagnostics_period: must be in (0, 3600] seconds, got {out['diagnostics_period']}",
    )
    check(
        0 <= out["refine_iterations"] <= MAX_REFINE_ITERATIONS,
        f"refine_iterations: must be an integer in [0, {MAX_REFINE_ITERATIONS}], "
        f"got {out['refine_iterations']}",
    )
    check(
        1 <= out["locator_candidates"] <= MAX_LOCATOR_CANDIDATES,
        f"locator_candidates: must be an integer in [1, {MAX_LOCATOR_CANDIDATES}], "
        f"got {out['locator_candidates']}",
    )
    check(
        0.0 <= out["max_depth_spread"] <= 100.0,
        f"max_depth_spread: must be in [0, 100] metres (0 = off), got {out['max_depth_spread']}",
    )
    check(
        0.0 <= out["max_epipolar_offset"] <= 1.0,
        "max_epipolar_offset: must be in [0, 1] (a fraction of the person's height; 0 = off), "
        f"got {out['max_epipolar_offset']}",
    )
    check(
        out["heatmap_decoding"] in HEATMAP_DECODINGS,
        f"heatmap_decoding: must be one of {HEATMAP_DECODINGS}, got {out['heatmap_decoding']!r}",
    )
    check(
        out["smoothing"] in SMOOTHING_CHOICES,
        f"smoothing: must be one of {SMOOTHING_CHOICES}, got {out['smoothing']!r}",
    )
    check(
        0.0 < out["smoothing_min_cutoff"] <= 1000.0,
        f"smoothing_min_cutoff: must be in (0, 1000] Hz, got {out['smoothing_min_cutoff']}",
    )
    check(
        0.0 <= out["smoothing_beta"] <= 1000.0,
        f"smoothing_beta: must be in [0, 1000] s/m, got {out['smoothing_beta']}",
    )
    device = out["device"]
    check(
        device in ("auto", "cpu", "cuda") or (device.startswith("cuda:") and device[5:].isdigit()),
        f"device: must be auto, cpu, cuda or cuda:N, got {device!r}",
    )
    if check_files and not errors:
        path = NodeConfig(**out).weights_path
        check(
            path.is_file(),
            f"weights: checkpoint {str(path)!r} does not exist"
            + ("" if out["weights"] else " (the shipped default; pass -p weights:=FILE)"),
        )
    if errors:
        raise ConfigError("invalid parameters:\n  " + "\n  ".join(errors))
    return NodeConfig(**out)


# ---------------------------------------------------------------------------------------------
# worker plumbing (no ROS)
# ---------------------------------------------------------------------------------------------


class LatestSlot:
    """A one-item mailbox: ``put`` replaces what is waiting, ``get`` takes the newest.

    ``put`` returns the replaced item (or None), so the caller can count it as dropped.
    """

    def __init__(self) -> None:
        self._item: Any = None
        self._cond = threading.Condition()
        self._closed = False

    def put(self, item: Any) -> Any:
        with self._cond:
            old, self._item = self._item, item
            self._cond.notify()
            return old

    def get(self, timeout: float | None = None) -> Any:
        with self._cond:
            if self._item is None and not self._closed:
                self._cond.wait(timeout)
            item, self._item = self._item, None
            return item

    def pending(self) -> bool:
        with self._cond:
            return self._item is not None

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()


class Stats:
    """Thread-safe frame counters and latency windows for diagnostics.

    Counters: ``received_left/right`` (images), ``info_left/right`` (camera_info),
    ``synchronized`` (pairs), ``processed`` (pairs published), ``dropped`` (pairs replaced before
    the worker took them), ``failed`` (pairs that produced no output: bad input or estimator
    error), ``no_person``, and ``rejected`` per reason.
    """

    COUNTERS = (
        "received_left",
        "received_right",
        "info_left",
        "info_right",
        "synchronized",
        "processed",
        "dropped",
        "failed",
        "no_person",
    )

    def __init__(self, window: int = 300) -> None:
        self._lock = threading.Lock()
        self.counts = dict.fromkeys(self.COUNTERS, 0)
        self.rejected: dict[str, int] = {}
        self.latency_ms: deque[float] = deque(maxlen=window)  # stamp -> publish
        self.processing_ms: deque[float] = deque(maxlen=window)  # worker take -> publish
        self.processed_times: deque[float] = deque(maxlen=window)  # monotonic, for the rate

    def inc(self, key: str, n: int = 1) -> None:
        with self._lock:
            self.counts[key] += n

    def reject(self, reason: str) -> None:
        with self._lock:
            self.rejected[reason] = self.rejected.get(reason, 0) + 1
            self.counts["failed"] += 1

    def record(self, latency_ms: float, processing_ms: float) -> None:
        with self._lock:
            self.counts["processed"] += 1
            self.latency_ms.append(latency_ms)
            self.processing_ms.append(processing_ms)
            self.processed_times.append(time.monotonic())

    def snapshot(self) -> dict[str, Any]:
        """Counters, rejection reasons and latency statistics (ms) as a flat dict."""
        with self._lock:
            out: dict[str, Any] = dict(self.counts)
            out.update({f"rejected.{k}": v for k, v in sorted(self.rejected.items())})
            for name, values in (("latency", self.latency_ms), ("processing", self.processing_ms)):
                arr = np.asarray(values, dtype=np.float64)
                if arr.size:
                    out[f"{name}_ms.median"] = float(np.median(arr))
                    out[f"{name}_ms.p95"] = float(np.percentile(arr, 95))
                    out[f"{name}_ms.max"] = float(arr.max())
            times = np.asarray(self.processed_times)
            recent = times[times > time.monotonic() - 5.0]
            out["processed_rate_hz"] = (
                float((len(recent) - 1) / (recent[-1] - recent[0]))
                if len(recent) > 1 and recent[-1] > recent[0]
                else 0.0
            )
            return out


class WarnThrottle:
    """At most one warning per key per ``period`` seconds (rclpy's throttling is per call site)."""

    def __init__(self, period: float = 5.0) -> None:
        self.period = period
        self._last: dict[str, float] = {}
        self._lock = threading.Lock()

    def __call__(self, key: str) -> bool:
        now = time.monotonic()
        with self._lock:
            if now - self._last.get(key, -math.inf) >= self.period:
                self._last[key] = now
                return True
            return False


@dataclass
class PairItem:
    left: Any
    right: Any
    left_info: Any | None
    right_info: Any | None
    stamp_ns: int


def load_estimator(config: NodeConfig) -> Any:
    """``StereoPoseEstimator.from_checkpoint(weights, device, ...)`` with the estimator options
    that are node parameters (:data:`ESTIMATOR_PARAMETERS`); errors as ConfigError."""
    from stereo_pose3d.checkpoint import CheckpointError
    from stereo_pose3d.estimator import StereoPoseEstimator

    try:
        return StereoPoseEstimator.from_checkpoint(
            config.weights_path,
            device=config.device,
            **{name: getattr(config, name) for name in ESTIMATOR_PARAMETERS},
        )
    except (CheckpointError, ValueError, OSError) as exc:
        raise ConfigError(f"cannot load weights {str(config.weights_path)!r}: {exc}") from exc


# ---------------------------------------------------------------------------------------------
# the rclpy node
# ---------------------------------------------------------------------------------------------

try:
    from rclpy.node import Node as _NodeBase
except ImportError:  # pragma: no cover - rclpy is a hard dependency of the node
    _NodeBase = object  # type: ignore[assignment,misc]


class StereoPose3DNode(_NodeBase):  # type: ignore[misc,valid-type]
    """The ROS 2 node (a thin shell over :class:`PoseProcessor`).

    Args:
        estimator: inject an estimator object (tests); default: loaded from the ``weights`` and
            ``device`` parameters. Its settings named in :data:`ESTIMATOR_PARAMETERS` (where it
            has them) follow the parameters of those names, at start and on every change.
        node_name, **kwargs: passed to ``rclpy.node.Node``.

    Raises:
        ConfigError: invalid parameters or unloadable weights.
    """

    def __init__(self, estimator: Any = None, node_name: str = NODE_NAME, **kwargs: Any) -> None:
        super().__init__(node_name, **kwargs)
        self.config = self._declare_parameters(check_files=estimator is None)
        self.stats = Stats()
        self._throttle = WarnThrottle(5.0)
        weights = "(injected estimator)"
        if estimator is None:
            estimator = load_estimator(self.config)
            weights = str(self.config.weights_path)
        self.estimator = estimator
        self._apply_estimator_config(self.config)
        self.processor = PoseProcessor(estimator, self.config.processing())
        self._info_lock = threading.Lock()
        self._info: dict[str, Any] = {"left": None, "right": None}
        self._last_pair_ns: int | None = None
        # monotonic arrival time of the latest image per side and of the latest pair
        self._last_seen: dict[str, float | None] = {
            "left": None, "right": None, "pair": None, "first_image": None,
        }  # fmt: skip
        self._last_error: str = ""
        self._last_error_time = -math.inf
        self._create_io()
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self._slot = LatestSlot()
        self._stop = threading.Event()
        self._worker = threading.Thread(target=self._work, name="stereo_pose3d_worker", daemon=True)
        self._worker.start()
        # wall (steady) time: diagnostics keep coming when a sim clock (/clock) stops
        from rclpy.clock import Clock, ClockType

        self._diag_timer = self.create_timer(
            self.config.diagnostics_period,
            self._publish_diagnostics,
            clock=Clock(clock_type=ClockType.STEADY_TIME),
        )
        self.get_logger().info(
            f"ready: {self.resolve_topic_name('left/image_rect')} + "
            f"{self.resolve_topic_name('right/image_rect')} -> "
            f"{self.resolve_topic_name('pose3d/markers')}; qos={self.config.qos}, "
            f"slop={self.config.slop}s, queue_size={self.config.queue_size}, weights={weights}"
        )

    # -- parameters -----------------------------------------------------------------------------

    def _declare_parameters(self, check_files: bool) -> NodeConfig:
        from rcl_interfaces.msg import ParameterDescriptor, ParameterType
        from rclpy.exceptions import (
            InvalidParameterTypeException,
            InvalidParameterValueException,
            ParameterException,
        )

        types = {
            str: ParameterType.PARAMETER_STRING,
            bool: ParameterType.PARAMETER_BOOL,
            int: ParameterType.PARAMETER_INTEGER,
            float: ParameterType.PARAMETER_DOUBLE,
        }
        defaults = NodeConfig()
        values: dict[str, Any] = {}
        errors: list[str] = []
        for f in fields(NodeConfig):
            default = getattr(defaults, f.name)
            doc, read_only = PARAMETER_DOCS[f.name]
            descriptor = ParameterDescriptor(
                name=f.name,
                type=types[type(default)],
                description=doc,
                read_only=read_only,
                # floats also accept integers from YAML/command line ("slop: 1"); checked below
                dynamic_typing=isinstance(default, float),
            )
            try:
                param = self.declare_parameter(f.name, default, descriptor)
                values[f.name] = param.value
            except (
                InvalidParameterTypeException,
                InvalidParameterValueException,
                ParameterException,
                TypeError,
            ) as exc:
                errors.append(f"{f.name}: {exc}")
        try:  # also the values that declared fine (floats take any type): every error at once
            config = validate_config(values, check_files=check_files and not errors)
        except ConfigError as exc:
            errors += [line.strip() for line in str(exc).splitlines()[1:]]
        if errors:
            raise ConfigError("invalid parameters:\n  " + "\n  ".join(errors))
        return config

    def _on_set_parameters(self, params: list[Any]) -> Any:
        from rcl_interfaces.msg import SetParametersResult

        values = {f.name: getattr(self.config, f.name) for f in fields(NodeConfig)}
        for p in params:
            if p.name in values:
                values[p.name] = p.value
        try:
            config = validate_config(values, check_files=False)
        except ConfigError as exc:
            return SetParametersResult(successful=False, reason=str(exc))
        self.config = config
        self.processor.config = config.processing()
        self._apply_estimator_config(config)
        return SetParametersResult(successful=True)

    def _apply_estimator_config(self, config: NodeConfig) -> None:
        """Estimator options that are node parameters (:data:`ESTIMATOR_PARAMETERS`); an
        injected estimator without such an attribute (a test double) is left alone."""
        for name in ESTIMATOR_PARAMETERS:
            if hasattr(self.estimator, name):
                setattr(self.estimator, name, getattr(config, name))

    # -- topics ---------------------------------------------------------------------------------

    def _input_qos(self) -> Any:
        from rclpy.qos import QoSProfile, qos_profile_sensor_data
        from rclpy.qos import ReliabilityPolicy as Rel

        if self.config.qos == "reliable":
            return QoSProfile(depth=10, reliability=Rel.RELIABLE)
        return qos_profile_sensor_data

    def _create_io(self) -> None:
        from diagnostic_msgs.msg import DiagnosticArray
        from geometry_msgs.msg import PoseArray
        from rclpy.qos import QoSProfile
        from sensor_msgs.msg import CameraInfo, Image
        from visualization_msgs.msg import MarkerArray

        from stereo_pose3d.sync import make_synchronizer

        qos = self._input_qos()
        info_qos = QoSProfile(depth=5, reliability=qos.reliability)
        self._info_subs = [
            self.create_subscription(
                CameraInfo, f"{side}/camera_info", lambda m, s=side: self._on_info(s, m), info_qos
            )
            for side in ("left", "right")
        ]
        self._sync, self._image_subs = make_synchronizer(
            self,
            Image,
            ["left/image_rect", "right/image_rect"],
            qos,
            self.config.queue_size,
            self.config.slop,
        )
        self._image_subs[0].registerCallback(lambda _m: self._on_image("left"))
        self._image_subs[1].registerCallback(lambda _m: self._on_image("right"))
        self._sync.registerCallback(self._on_pair)
        out_qos = QoSProfile(depth=10)
        self.pub_markers = self.create_publisher(MarkerArray, "pose3d/markers", out_qos)
        self.pub_joints = self.create_publisher(PoseArray, "pose3d/joints", out_qos)
        self.pub_debug = self.create_publisher(Image, "pose3d/debug_image", QoSProfile(depth=2))
        self.pub_diag = self.create_publisher(DiagnosticArray, "/diagnostics", QoSProfile(depth=10))

    def _on_info(self, side: str, msg: Any) -> None:
        self.stats.inc(f"info_{side}")
        with self._info_lock:
            self._info[side] = msg  # latest per side: one-shot and rare publishers work

    def _on_image(self, side: str) -> None:
        self.stats.inc(f"received_{side}")
        now = time.monotonic()
        self._last_seen[side] = now
        if self._last_seen["first_image"] is None:
            self._last_seen["first_image"] = now

    def _on_pair(self, left: Any, right: Any) -> None:
        """Executor thread: order check, then hand the pair to the worker (never blocks)."""
        self.stats.inc("synchronized")
        self._last_seen["pair"] = time.monotonic()
        stamp = ros_io.stamp_to_ns(left.header.stamp)
        last = self._last_pair_ns
        if last is not None and stamp <= last:
            if last - stamp > TIME_RESET_S * 1e9:
                self._warn(
                    "time_reset",
                    f"stamps jumped back by {(last - stamp) / 1e9:.2f} s "
                    "(bag loop or clock reset): starting over",
                )
                self._pending_reset = callable(getattr(self.estimator, "reset", None))
                clear = getattr(self._sync, "clear", None)
                if callable(clear):
                    clear()
            else:
                kind = "duplicate" if stamp == last else "out of order"
                self._reject(
                    "out_of_order_stamp",
                    f"{kind} stereo pair stamp {stamp / 1e9:.6f} s after "
                    f"{last / 1e9:.6f} s: skipped",
                )
                return
        self._last_pair_ns = stamp
        with self._info_lock:
            item = PairItem(left, right, self._info["left"], self._info["right"], stamp)
        if self._slot.put(item) is not None:
            self.stats.inc("dropped")

    # -- worker ---------------------------------------------------------------------------------

    _pending_reset = False

    def _work(self) -> None:
        next_allowed = 0.0
        while not self._stop.is_set():
            max_rate = self.config.max_rate
            if max_rate > 0:
                delay = next_allowed - time.monotonic()
                if delay > 0 and self._stop.wait(delay):
                    break
            item = self._slot.get(timeout=0.2)
            if item is None:
                continue
            started = time.monotonic()
            if max_rate > 0:
                next_allowed = started + 1.0 / max_rate
            try:
                self._process(item, started)
            except Exception as exc:  # never let the worker die
                if not self.context.ok():  # shutting down (Ctrl-C): publishing is over
                    break
                self._reject("internal_error", f"unexpected error: {exc}\n{traceback.format_exc()}")

    def _process(self, item: PairItem, started: float) -> None:
        if self._pending_reset:
            self._pending_reset = False
            self.estimator.reset()
        with self._info_lock:  # camera_info that came just after the images still counts
            left_info = item.left_info or self._info["left"]
            right_info = item.right_info or self._info["right"]
        try:
            result = self.processor.process(item.left, item.right, left_info, right_info)
        except InputError as exc:
            self._reject(exc.reason, str(exc))
            return
        except EstimatorOutputError as exc:
            self._reject("estimator_output", str(exc))
            return
        except Exception as exc:  # the estimator (torch) may raise anything
            self._reject("estimator_error", f"estimator failed: {type(exc).__name__}: {exc}")
            return
        self._publish(result, started)

    def _publish(self, result: FrameResult, started: float) -> None:
        self.pub_markers.publish(result.markers)
        self.pub_joints.publish(result.joints)
        if result.debug_image is not None:
            self.pub_debug.publish(result.debug_image)
        if not result.person:
            self.stats.inc("no_person")
        now_ns = self.get_clock().now().nanoseconds
        self.stats.record((now_ns - result.stamp_ns) / 1e6, (time.monotonic() - started) * 1e3)

    def _warn(self, key: str, message: str) -> None:
        if self._throttle(key):
            self.get_logger().warning(message)

    def _reject(self, reason: str, message: str) -> None:
        self.stats.reject(reason)
        self._last_error = f"{reason}: {message}"
        self._last_error_time = time.monotonic()
        self._warn(reason, f"{message} [{reason}; counted in /diagnostics]")

    # -- diagnostics ----------------------------------------------------------------------------

    def diagnostics_values(self) -> dict[str, Any]:
        snap = self.stats.snapshot()
        snap["pending"] = int(self._slot.pending())
        snap["sync_queued"] = int(getattr(self._sync, "queued", lambda: -1)())
        return snap

    def _publish_diagnostics(self) -> None:
        from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue

        snap = self.diagnostics_values()
        status = DiagnosticStatus(name=f"{self.get_name()}: pipeline", hardware_id=self.get_name())
        with self._info_lock:
            missing = [s for s in ("left", "right") if self._info[s] is None]
        if missing and (snap["received_left"] or snap["received_right"]):
            status.level = DiagnosticStatus.WARN
            topics = ", ".join(self.resolve_topic_name(f"{s}/camera_info") for s in missing)
            status.message = f"waiting for camera_info on {topics}"
        elif snap["received_left"] == 0 and snap["received_right"] == 0:
            status.level = DiagnosticStatus.WARN
            status.message = "waiting for images on " + ", ".join(
                self.resolve_topic_name(f"{s}/image_rect") for s in ("left", "right")
            )
        elif waiting := self._waiting_message():
            status.level = DiagnosticStatus.WARN
            status.message = waiting
            self._warn("waiting", waiting)
        elif (
            self._last_error
            and snap["failed"]
            and (not snap["processed"] or time.monotonic() - self._last_error_time < RECENT_ERROR_S)
        ):
            status.level = DiagnosticStatus.WARN if snap["processed"] else DiagnosticStatus.ERROR
            status.message = (
                f"{snap['processed']} processed, {snap['failed']} failed; last: "
                + (self._last_error.splitlines()[0][:200])
            )
        else:
            status.level = DiagnosticStatus.OK
            status.message = f"{snap['processed']} processed, {snap['dropped']} dropped"
            if snap["failed"]:
                ago = time.monotonic() - self._last_error_time
                status.message += f", {snap['failed']} failed (the last {ago:.0f} s ago)"

        def fmt(v: Any) -> str:
            return f"{v:.3f}" if isinstance(v, float) else str(v)

        status.values = [KeyValue(key=k, value=fmt(v)) for k, v in snap.items()]
        msg = DiagnosticArray(status=[status])
        msg.header.stamp = self.get_clock().now().to_msg()
        self.pub_diag.publish(msg)

    def _waiting_message(self) -> str:
        """What the node waits for when images stopped (one or both cameras gone) or come but
        never pair (stamps further apart than slop); "" when neither."""
        now = time.monotonic()
        seen = dict(self._last_seen)
        stale = [s for s in ("left", "right") if seen[s] is None or now - seen[s] > IMAGE_TIMEOUT_S]
        if stale:
            parts = []
            for side in stale:
                ago = "none yet" if seen[side] is None else f"none for {now - seen[side]:.1f} s"
                parts.append(f"{self.resolve_topic_name(f'{side}/image_rect')} ({ago})")
            return "waiting for images on " + ", ".join(parts)
        last_pair = seen["pair"] if seen["pair"] is not None else seen["first_image"]
        if last_pair is not None and now - last_pair > IMAGE_TIMEOUT_S:
            return (
                f"images arrive on both sides but no pair within slop={self.config.slop} s for "
                f"{now - last_pair:.1f} s: check the two cameras' header stamps"
            )
        return ""

    def destroy_node(self) -> None:
        self._stop.set()
        self._slot.close()
        self._worker.join(timeout=5.0)
        super().destroy_node()


def main(argv: list[str] | None = None) -> int:
    """Console script ``stereo_pose3d_node`` (also ``python -m stereo_pose3d.node``)."""
    dds.configure()  # before the first participant exists
    import rclpy
    from rclpy.executors import ExternalShutdownException

    try:
        rclpy.init(args=sys.argv if argv is None else argv)
    except Exception as exc:  # e.g. an unreadable or malformed --params-file
        print(f"[{NODE_NAME}] cannot start: {exc}", file=sys.stderr, flush=True)
        return 2
    node = None
    try:
        node = StereoPose3DNode()
        rclpy.spin(node)
    except ConfigError as exc:
        print(f"[{NODE_NAME}] {exc}", file=sys.stderr, flush=True)
        return 2
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except RuntimeError:
        # SIGINT's handler shuts the context down; when that lands while spin() builds its wait
        # set, rclpy raises RCLError (a RuntimeError: "failed to initialize wait set: the given
        # context is not valid") instead of ExternalShutdownException (ros2/rclpy#398,
        # ros2/ros2cli#854). That is a clean shutdown; any other RuntimeError is not.
        if rclpy.ok():
            raise
    finally:
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
