"""The node's processing path without ROS spinning: validation, conversion, outputs, worker parts.

A fake estimator stands in for the network so every branch is exercised quickly and exactly.
"""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
from visualization_msgs.msg import Marker

from stereo_pose3d import ros_io
from stereo_pose3d.node import ConfigError, LatestSlot, NodeConfig, Stats, validate_config
from stereo_pose3d.pipeline import (
    EstimatorOutputError,
    PoseProcessor,
    ProcessingConfig,
    Rectifier,
    prepare_frame,
)
from stereo_pose3d.ros_io import InputError
from stereo_pose3d.skeleton import MPII

W, H, F, B = 160, 120, 100.0, 0.12
K = np.array([[F, 0, (W - 1) / 2], [0, F, (H - 1) / 2], [0, 0, 1]])
P_L = np.hstack([K, np.zeros((3, 1))])
P_R = P_L.copy()
P_R[0, 3] = -F * B
STAMP = 1_700_000_000_250_000_000
JOINTS = np.random.default_rng(0).normal(size=(16, 3)) * 0.2 + [0, 0, 3]


class FakeEstimator:
    """Returns ``JOINTS`` (in the frame P projects from) with the given confidence."""

    def __init__(self, confidence=None, nobody=False, output=None):
        self.confidence = np.full(16, 0.9) if confidence is None else confidence
        self.nobody, self.output, self.calls = nobody, output, []

    def estimate(self, left, right, P_left, P_right):
        self.calls.append((left.shape, right.shape, P_left.copy(), P_right.copy()))
        if self.output is not None:
            return self.output
        j2 = np.stack([(JOINTS @ P[:, :3].T + P[:, 3]) for P in (P_left, P_right)])
        j2 = j2[..., :2] / j2[..., 2:]
        return SimpleNamespace(
            joints_3d=JOINTS,
            joints_2d=j2,
            confidence=self.confidence,
            joint_names=list(MPII.joint_names),
            box=None if self.nobody else np.zeros((2, 4)),
        )


def pair(rgb=None, encoding="rgb8", right_size=None, frame_id="cam_left"):
    rgb = np.full((H, W, 3), 100, np.uint8) if rgb is None else rgb
    header = ros_io.make_header(STAMP, frame_id)
    left = ros_io.rgb_to_image(rgb, header, encoding=encoding)
    right_rgb = rgb if right_size is None else np.zeros((*right_size[::-1], 3), np.uint8)
    right = ros_io.rgb_to_image(right_rgb, ros_io.make_header(STAMP, "cam_right"))
    return left, right


def infos(P_left=P_L, P_right=P_R, **kw):
    return ros_io.camera_info(P_left, W, H, **kw), ros_io.camera_info(P_right, W, H)


# ---------------------------------------------------------------------------------------------


def test_prepare_frame_valid_pair():
    left, right = pair()
    frame = prepare_frame(left, right, *infos())
    assert frame.left.shape == (H, W, 3) and frame.stamp_ns == STAMP
    assert frame.header.frame_id == "cam_left"
    np.testing.assert_allclose(frame.P_right, P_R)
    np.testing.assert_allclose(frame.R_left, np.eye(3))


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("no_info", "no_camera_info"),
        ("uncalibrated", "uncalibrated"),
        ("nan", "calibration_nan"),
        ("size_mismatch", "size_mismatch"),
        ("info_size", "info_size_mismatch"),
        ("encoding", "unsupported_encoding"),
        ("empty", "empty_image"),
        ("same_camera", "zero_baseline"),
    ],
)
def test_each_bad_input_is_rejected_with_its_reason(case, reason):
    left, right = pair(right_size=(W // 2, H // 2) if case == "size_mismatch" else None)
    li, ri = infos()
    if case == "no_info":
        ri = None
    elif case == "uncalibrated":
        li = ros_io.camera_info(np.zeros((3, 4)), W, H)
    elif case == "nan":
        ri.p[3] = float("nan")
    elif case == "info_size":
        li.width = 640
    elif case == "encoding":
        left.encoding = "yuv422"
    elif case == "empty":
        left.width = left.height = right.width = right.height = 0
        left.data = right.data = b""
        li.width = li.height = ri.width = ri.height = 0
    elif case == "same_camera":
        ri = ros_io.camera_info(P_L, W, H)
    with pytest.raises(InputError) as info:
        prepare_frame(left, right, li, ri)
    assert info.value.reason == reason, str(info.value)


def test_processor_outputs_header_order_and_low_confidence_flags():
    conf = np.full(16, 0.9)
    conf[3] = 0.1
    est = FakeEstimator(confidence=conf)
    proc = PoseProcessor(est, ProcessingConfig(min_confidence=0.3, publish_debug_image=True))
    result = proc.process(*pair(), *infos())
    assert result.person and result.stamp_ns == STAMP
    for msg in (result.joints, *result.markers.markers, result.debug_image):
        assert msg.header.frame_id == "cam_left"
        assert ros_io.stamp_to_ns(msg.header.stamp) == STAMP
    joints, flags = ros_io.pose_array_to_numpy(result.joints)
    np.testing.assert_allclose(joints, JOINTS)  # R = I: rectified frame == optical frame
    assert flags.tolist() == [j != 3 for j in range(16)]
    spheres = result.markers.markers[0]
    assert spheres.type == Marker.SPHERE_LIST and len(spheres.points) == 15
    assert (result.debug_image.width, result.debug_image.height) == (2 * W, H)
    assert result.debug_image.encoding == "rgb8"
    assert set(result.timings) == {"convert", "estimate", "outputs"}


def test_processor_nobody_gives_deleteall_and_empty_joints():
    proc = PoseProcessor(FakeEstimator(nobody=True))
    result = proc.process(*pair(), *infos())
    assert not result.person
    assert [m.action for m in result.markers.markers] == [Marker.DELETEALL]
    assert len(result.joints.poses) == 0
    proc = PoseProcessor(FakeEstimator(output=None))
    proc.estimator.estimate = lambda *a: None  # an estimator that returns None for nobody
    assert not proc.process(*pair(), *infos()).person


def test_processor_rejects_malformed_estimator_output_and_zeroes_nan_joints():
    bad = SimpleNamespace(
        joints_3d=np.zeros((16, 2)),
        joints_2d=None,
        confidence=np.ones(16),
        joint_names=[],
        box=np.zeros((2, 4)),
    )
    with pytest.raises(EstimatorOutputError):
        PoseProcessor(FakeEstimator(output=bad)).process(*pair(), *infos())
    j = JOINTS.copy()
    j[0] = np.nan
    nan_out = SimpleNamespace(
        joints_3d=j,
        joints_2d=None,
        confidence=np.ones(16),
        joint_names=list(MPII.joint_names),
        box=np.zeros((2, 4)),
    )
    result = PoseProcessor(FakeEstimator(output=nan_out)).process(*pair(), *infos())
    assert result.confidence[0] == 0.0 and len(result.markers.markers[0].points) == 15


def rot_y(deg):
    a = np.deg2rad(deg)
    return np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])


def test_non_rectified_pair_uses_R_for_the_output_frame():
    """Joints come back from the estimator in the left *rectified* frame; the node publishes them
    in the left optical frame of the header: X_optical = R_left^T X_rectified."""
    R = rot_y(8.0)
    li, ri = infos(R=R)
    result = PoseProcessor(FakeEstimator()).process(*pair(), li, ri)
    joints, _ = ros_io.pose_array_to_numpy(result.joints)
    np.testing.assert_allclose(joints, JOINTS @ R, atol=1e-12)
    np.testing.assert_allclose(joints @ R.T, JOINTS, atol=1e-12)


def test_raw_images_are_rectified_with_K_D_R_P():
    """A dot drawn at a 3D point's raw (rotated, distorted) pixel lands at its rectified
    pixel ``P X`` after the node's rectification (images_rectified = false)."""
    R = rot_y(5.0)
    D = np.array([-0.05, 0.01, 0, 0, 0])
    X = np.array([0.1, -0.05, 2.0])  # left rectified frame
    raw_xyz = R.T @ X
    uv_raw, _ = cv2.projectPoints(raw_xyz[None], np.zeros(3), np.zeros(3), K, D)
    raw = np.zeros((H, W, 3), np.uint8)
    cv2.circle(raw, tuple(np.round(uv_raw.ravel()).astype(int)), 3, (255, 255, 255), -1)
    li = ros_io.camera_info(P_L, W, H, K=K, D=D, R=R)
    cam = ros_io.camera_model(li)
    rect = Rectifier()(raw, cam)
    ys, xs = np.nonzero(rect[..., 0] > 128)
    expected = (P_L[:, :3] @ X)[:2] / X[2]
    assert np.hypot(xs.mean() - expected[0], ys.mean() - expected[1]) < 1.0
    # and the processor does it when told the images are raw
    est = FakeEstimator()
    li2, ri2 = ros_io.camera_info(P_L, W, H, K=K, D=D, R=R), ros_io.camera_info(P_R, W, H)
    PoseProcessor(est, ProcessingConfig(images_rectified=False)).process(*pair(raw), li2, ri2)
    PoseProcessor(est, ProcessingConfig(images_rectified=True)).process(*pair(raw), li2, ri2)
    assert est.calls[0][0] == (H, W, 3)


# ---------------------------------------------------------------------------------------------


def test_validate_config_defaults_and_every_error():
    cfg = validate_config({}, check_files=False)
    assert cfg == NodeConfig()
    assert validate_config({"slop": 1}, check_files=False).slop == 1.0  # ints accepted for floats
    bad = {
        "min_confidence": 1.5,
        "queue_size": 0,
        "slop": 0.0,
        "qos": "fast",
        "max_rate": -1.0,
        "marker_scale": 0.0,
        "marker_lifetime": float("nan"),
        "device": "tpu",
        "smoothing": "kalman",
        "smoothing_min_cutoff": 0.0,
        "smoothing_beta": -0.5,
    }
    with pytest.raises(ConfigError) as info:
        validate_config(bad, check_files=False)
    text = str(info.value)
    for name in bad:
        assert f"{name}:" in text, name
    with pytest.raises(ConfigError, match="queue_size: expected int"):
        validate_config({"queue_size": "ten"}, check_files=False)
    with pytest.raises(ConfigError, match="does not exist"):
        validate_config({"weights": "/nonexistent/w.pt"})


def test_latest_slot_keeps_only_the_newest():
    slot = LatestSlot()
    assert slot.put(1) is None
    assert slot.put(2) == 1  # replaced: the caller counts a drop
    assert slot.get(timeout=0.01) == 2
    assert slot.get(timeout=0.01) is None
    got = []
    t = threading.Thread(target=lambda: got.append(slot.get(timeout=5.0)))
    t.start()
    time.sleep(0.05)
    slot.put("x")
    t.join(2.0)
    assert got == ["x"]


def test_stats_snapshot():
    s = Stats(window=5)
    for i in range(10):
        s.record(latency_ms=float(i), processing_ms=1.0)
    s.reject("uncalibrated")
    s.inc("dropped", 3)
    snap = s.snapshot()
    assert snap["processed"] == 10 and snap["failed"] == 1 and snap["dropped"] == 3
    assert snap["rejected.uncalibrated"] == 1
    assert snap["latency_ms.max"] == 9.0 and snap["latency_ms.median"] == 7.0  # window of 5


def test_node_parameters_validated_at_start_and_at_run_time():
    import rclpy
    from rclpy.parameter import Parameter
    from test_node_harness import unique_domain

    from stereo_pose3d.node import StereoPose3DNode

    ctx = rclpy.Context()
    rclpy.init(context=ctx, domain_id=unique_domain())
    try:
        with pytest.raises(ConfigError, match="marker_scale: must be in"):
            StereoPose3DNode(
                estimator=FakeEstimator(),
                context=ctx,
                parameter_overrides=[Parameter("marker_scale", value=-1.0)],
            )
        node = StereoPose3DNode(
            estimator=FakeEstimator(),
            context=ctx,
            parameter_overrides=[Parameter("slop", value=1), Parameter("max_rate", value=5)],
        )
        try:
            assert node.config.slop == 1.0 and node.config.max_rate == 5.0
            bad = node.set_parameters([Parameter("min_confidence", value=2.0)])[0]
            assert not bad.successful and "min_confidence: must be in [0, 1]" in bad.reason
            assert node.set_parameters([Parameter("min_confidence", value=0.5)])[0].successful
            assert node.processor.config.min_confidence == 0.5
            assert not node.set_parameters([Parameter("slop", value=0.5)])[0].successful
        finally:
            node.destroy_node()
    finally:
        ctx.try_shutdown()


def test_processor_smooths_confident_joints_over_time():
    """Noisy joints of a person standing still at 30 Hz: the published joints are steadier with
    the 1-euro filter, by what its default cut-off implies; smoothing="none" publishes the
    estimator's joints as they are; joints below min_confidence are passed through unfiltered;
    a parameter change takes effect."""
    rng = np.random.default_rng(1)
    conf = np.full(16, 0.9)
    conf[3] = 0.1  # not confident: not filtered
    noisy = [JOINTS + rng.normal(0, 0.05, JOINTS.shape) for _ in range(150)]

    def run(config: ProcessingConfig) -> np.ndarray:
        estimator = FakeEstimator(confidence=conf)
        processor = PoseProcessor(estimator, config)
        out = []
        for k, joints in enumerate(noisy):
            estimator.output = SimpleNamespace(
                joints_3d=joints, joints_2d=None, confidence=conf,
                joint_names=list(MPII.joint_names), box=np.zeros((2, 4)),
            )  # fmt: skip
            left, right = pair()
            stamp = STAMP + int(k * 1e9 / 30)
            for msg in (left, right):
                msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamp, 10**9)
            out.append(processor.process(left, right, *infos()).joints_3d)
        return np.stack(out)

    raw = run(ProcessingConfig(smoothing="none"))
    np.testing.assert_allclose(raw, np.stack(noisy))
    # The node's parameters reach the processor.
    node_cfg = validate_config({"smoothing": "none", "smoothing_beta": 2}, check_files=False)
    assert node_cfg.processing().smoothing == "none"
    assert node_cfg.processing().smoothing_beta == 2.0
    smooth = run(ProcessingConfig())
    assert ProcessingConfig().smoothing == "one_euro"
    assert ProcessingConfig().smoothing_beta == 0.0
    # At rest with beta 0 the 1-euro filter is an exponential average with factor a = 1 / (1 +
    # rate / (2 pi cut-off)); on white noise it leaves sqrt(a / (2 - a)) of the error and
    # a / sqrt(2 - a) of the frame-to-frame motion.
    a = 1.0 / (1.0 + 30.0 / (2 * np.pi * ProcessingConfig().smoothing_min_cutoff))
    confident = np.arange(16) != 3
    err_raw = np.linalg.norm(raw - JOINTS, axis=-1)[20:, confident].mean()
    err_smooth = np.linalg.norm(smooth - JOINTS, axis=-1)[20:, confident].mean()
    assert err_smooth / err_raw == pytest.approx(np.sqrt(a / (2 - a)), abs=0.04)
    assert err_smooth < 0.95 * err_raw
    np.testing.assert_allclose(smooth[:, 3], raw[:, 3])
    np.testing.assert_allclose(smooth[0], raw[0])  # the first frame is taken as is
    steadier = run(ProcessingConfig(smoothing_min_cutoff=0.1, smoothing_beta=0.0))

    def jitter(x: np.ndarray) -> float:  # mean frame-to-frame motion of the confident joints
        return float(np.linalg.norm(np.diff(x, axis=0), axis=-1)[:, confident].mean())

    assert jitter(smooth) / jitter(raw) == pytest.approx(a / np.sqrt(2 - a), abs=0.04)
    assert jitter(steadier) < 0.5 * jitter(smooth) < 0.5 * jitter(raw)


def test_estimator_node_parameters_match_the_estimator_settings():
    """The node's estimator parameters exist in DEFAULT_ESTIMATOR with the same defaults and
    limits (the node keeps copies so that checking parameters does not import torch)."""
    from stereo_pose3d import node
    from stereo_pose3d.models.config import (
        DEFAULT_ESTIMATOR,
        HEATMAP_DECODINGS,
        MAX_LOCATOR_CANDIDATES,
    )

    defaults = NodeConfig()
    for name in node.ESTIMATOR_PARAMETERS:
        assert getattr(defaults, name) == DEFAULT_ESTIMATOR[name], name
    assert node.MAX_LOCATOR_CANDIDATES == MAX_LOCATOR_CANDIDATES
    assert set(node.HEATMAP_DECODINGS) == set(HEATMAP_DECODINGS)
    with pytest.raises(ConfigError, match="heatmap_decoding"):
        validate_config({"heatmap_decoding": "argmax"}, check_files=False)
    for bad in (0, MAX_LOCATOR_CANDIDATES + 1):
        with pytest.raises(ConfigError, match="locator_candidates"):
            validate_config({"locator_candidates": bad}, check_files=False)
