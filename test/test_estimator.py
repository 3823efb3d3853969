"""StereoPoseEstimator on the fixture checkpoint: outputs, no-person, batching, bad inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from stereo_pose3d.estimator import TIMING_KEYS, Pose3D, StereoPoseEstimator, resolve_device
from stereo_pose3d.geometry import project
from stereo_pose3d.skeleton import MPII


@pytest.fixture(scope="module")
def estimator(fixture_checkpoint) -> StereoPoseEstimator:
    return StereoPoseEstimator.from_checkpoint(fixture_checkpoint, device="cpu")


def estimate(est: StereoPoseEstimator, pair, **changes) -> Pose3D:
    args = {"left": pair.left, "right": pair.right, "P_left": pair.P_left,
            "P_right": pair.P_right, **changes}  # fmt: skip
    return est.estimate(**args)


def test_estimate_is_coherent(estimator, synthetic_stereo_pair):
    pair = synthetic_stereo_pair
    pose = estimate(estimator, pair)
    J = 16
    assert pose.detected and pose.source == "locator"
    assert pose.joint_names == list(MPII.joint_names)
    assert pose.joints_3d.shape == (J, 3) and pose.joints_3d.dtype == np.float64
    assert pose.joints_2d.shape == (2, J, 2) and pose.confidence.shape == (J,)
    assert pose.box.shape == (2, 4) and pose.crop_boxes.shape == (2, 4)
    assert np.isfinite(pose.joints_3d).all()
    assert ((pose.confidence >= 0) & (pose.confidence <= 1)).all()
    assert np.all(pose.confidence[~pose.valid] == 0)
    # 2D joints are the 3D joints projected with the caller's P's.
    P = np.stack([pair.P_left, pair.P_right])
    np.testing.assert_allclose(pose.joints_2d, project(pose.joints_3d[None], P), atol=1e-9)
    # The network's own detections lie inside the crops it saw (full-image pixels).
    lo, hi = pose.crop_boxes[:, None, :2], pose.crop_boxes[:, None, 2:]
    assert np.all((pose.joints_2d_detected >= lo - 1) & (pose.joints_2d_detected <= hi + 1))
    # Rectified pair: both crops cover the same rows, with the same side.
    np.testing.assert_allclose(pose.crop_boxes[0, [1, 3]], pose.crop_boxes[1, [1, 3]])
    assert set(TIMING_KEYS) <= set(pose.timings)
    assert all(pose.timings[k] >= 0 for k in TIMING_KEYS)
    parts = sum(pose.timings[k] for k in TIMING_KEYS if k != "total")
    assert parts == pytest.approx(pose.timings["total"], rel=1e-6)
    # Deterministic.
    again = estimate(estimator, pair)
    np.testing.assert_array_equal(again.joints_3d, pose.joints_3d)


def test_world_frame_change_moves_the_output_rigidly(estimator, synthetic_stereo_pair):
    """P's projecting from another world frame (P' = P T^-1): same images, so same crops, and
    the 3D output moves exactly by T (CDRNet's canonical-frame guarantee, end to end)."""
    pair = synthetic_stereo_pair
    angle = np.radians(30)
    T = np.eye(4)
    T[:3, :3] = [[np.cos(angle), 0, np.sin(angle)], [0, 1, 0], [-np.sin(angle), 0, np.cos(angle)]]
    T[:3, 3] = [1.0, -2.0, 0.5]
    T_inv = np.linalg.inv(T)
    pose = estimate(estimator, pair)
    moved = estimate(estimator, pair, P_left=pair.P_left @ T_inv, P_right=pair.P_right @ T_inv)
    expected = pose.joints_3d @ T[:3, :3].T + T[:3, 3]
    scale = 1 + np.linalg.norm(pose.joints_3d, axis=-1, keepdims=True)
    np.testing.assert_allclose(moved.joints_3d / scale, expected / scale, atol=1e-4)
    np.testing.assert_allclose(moved.joints_2d, pose.joints_2d, atol=1e-2)


def test_no_person(make_fixture_checkpoint, synthetic_stereo_pair):
    est = StereoPoseEstimator.from_checkpoint(make_fixture_checkpoint(score_threshold=1.1), "cpu")
    pose = estimate(est, synthetic_stereo_pair)
    assert not pose.detected and pose.box is None and pose.source == "none"
    assert np.isnan(pose.joints_3d).all() and np.isnan(pose.joints_2d).all()
    assert pose.joints_3d.shape == (16, 3) and np.all(pose.confidence == 0)
    assert 0 <= pose.score < 1.1
    # A setting given at load time overrides the checkpoint's.
    est = StereoPoseEstimator.from_checkpoint(make_fixture_checkpoint(), "cpu", score_threshold=2)
    assert not estimate(est, synthetic_stereo_pair).detected


def test_estimate_batch_matches_estimate(estimator, synthetic_stereo_pair):
    pair = synthetic_stereo_pair
    flipped = pair.left[::-1]  # a non-contiguous view is fine
    poses = estimator.estimate_batch([pair.left, flipped], [pair.right, pair.right],
                                     [pair.P_left] * 2, [pair.P_right] * 2)  # fmt: skip
    assert len(poses) == 2 and poses[0].timings["batch_size"] == 2
    for pose, left in zip(poses, [pair.left, flipped], strict=True):
        single = estimate(estimator, pair, left=left)
        np.testing.assert_allclose(pose.box, single.box, atol=1e-3)
        np.testing.assert_allclose(pose.joints_3d, single.joints_3d, atol=1e-4, rtol=1e-4)


def test_tracking_reuses_the_previous_pose(make_fixture_checkpoint, synthetic_stereo_pair):
    path = make_fixture_checkpoint()
    est = StereoPoseEstimator.from_checkpoint(path, "cpu", tracking=True, track_confidence=0.0)
    first = estimate(est, synthetic_stereo_pair)
    second = estimate(est, synthetic_stereo_pair)
    assert first.source == "locator"
    assert second.source == "tracking" and second.timings["locator"] == 0.0
    est.reset()
    assert estimate(est, synthetic_stereo_pair).source == "locator"
    est = StereoPoseEstimator.from_checkpoint(path, "cpu", tracking=True, track_confidence=1.1)
    estimate(est, synthetic_stereo_pair)
    assert estimate(est, synthetic_stereo_pair).source == "locator"  # confidence too low


def test_bad_inputs_raise_value_error(estimator, synthetic_stereo_pair):
    pair = synthetic_stereo_pair
    nan_P = pair.P_left.copy()
    nan_P[0, 0] = np.nan
    singular = pair.P_left.copy()
    singular[:, :3] = 0
    cases = {
        "uint8": {"left": pair.left.astype(np.float32)},
        r"\(H, W, 3\)": {"left": pair.left[..., 0]},
        "sizes differ": {"right": pair.right[:240]},
        "numpy array": {"left": "left.png"},
        "contains NaN": {"P_left": nan_P},
        r"shape \(3, 4\)": {"P_right": pair.P_right[:, :3]},
        "singular": {"P_right": singular},
        "numbers": {"P_left": [["a"] * 4] * 3},
    }
    for message, change in cases.items():
        with pytest.raises(ValueError, match=message):
            estimate(estimator, pair, **change)
    with pytest.raises(ValueError, match="same non-zero number"):
        estimator.estimate_batch([pair.left], [], [pair.P_left], [pair.P_right])
    with pytest.raises(ValueError, match="device"):
        resolve_device("tpu")
    with pytest.raises(ValueError, match="unknown estimator settings"):
        StereoPoseEstimator.from_checkpoint(estimator.checkpoint_path, "cpu", foo=1)


def test_device_resolution():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda:0")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu(fixture_checkpoint, synthetic_stereo_pair):
    pair = synthetic_stereo_pair
    cpu = estimate(StereoPoseEstimator.from_checkpoint(fixture_checkpoint, "cpu"), pair)
    fp32 = StereoPoseEstimator.from_checkpoint(fixture_checkpoint, "cuda", autocast=False)
    gpu = estimate(fp32, pair)
    np.testing.assert_allclose(gpu.box, cpu.box, atol=1e-2)
    np.testing.assert_allclose(gpu.joints_2d_detected, cpu.joints_2d_detected, atol=1e-2)
    np.testing.assert_allclose(gpu.view_confidence, cpu.view_confidence, atol=1e-3)
    mixed = estimate(StereoPoseEstimator.from_checkpoint(fixture_checkpoint, "cuda"), pair)
    assert mixed.detected and np.isfinite(mixed.joints_3d).all()
    assert mixed.joints_2d_detected.shape == cpu.joints_2d_detected.shape


def test_depth_gate_drops_joints_far_from_the_persons_depth():
    from stereo_pose3d.estimator import depth_gate

    rng = np.random.default_rng(3)
    K = np.array([[500.0, 0, 320], [0, 500.0, 240], [0, 0, 1]])
    P = np.hstack([K, np.zeros((3, 1))])
    X = rng.normal([0.0, 0.0, 3.0], [0.3, 0.5, 0.2], (16, 3))
    X[5, 2] = 6.0  # a joint whose views disagreed: 3 m too deep
    X[7, 2] = 1.5  # and one 1.5 m too close
    valid = np.ones(16, bool)
    gated = depth_gate(X, valid, P, 1.0)
    assert not gated[5] and not gated[7] and gated.sum() == 14
    assert depth_gate(X, valid, P, 0.0).all()  # off
    assert depth_gate(X, valid, 2.0 * P, 1.0).tolist() == gated.tolist()  # P's scale: no effect
    # A rigid change of world frame (P -> P T^-1, X -> T X) gives the same decision.
    T = np.eye(4)
    T[:3, :3] = np.array([[0.0, -1, 0], [1, 0, 0], [0, 0, 1]])
    T[:3, 3] = [1.0, -2.0, 0.5]
    X_moved = X @ T[:3, :3].T + T[:3, 3]
    assert depth_gate(X_moved, valid, P @ np.linalg.inv(T), 1.0).tolist() == gated.tolist()
    # Already-invalid joints stay invalid; too few usable joints or NaN: nothing removed.
    few = np.zeros(16, bool)
    few[:2] = True
    assert depth_gate(X, few, P, 1.0).tolist() == few.tolist()
    X_nan = X.copy()
    X_nan[:14] = np.nan
    assert depth_gate(X_nan, valid, P, 1.0).tolist() == valid.tolist()


def test_depth_gate_in_the_estimator(make_fixture_checkpoint, synthetic_stereo_pair):
    """The gate acts on the triangulated joints (here replaced by the true ones with one joint
    3 m too deep): that joint is invalid, with confidence 0; max_depth_spread 0 keeps it."""
    pair = synthetic_stereo_pair
    ckpt = make_fixture_checkpoint()
    X = torch.as_tensor(np.asarray(pair.joints_3d), dtype=torch.float32).clone()
    X[3, 2] += 3.0

    def fake_triangulate(joints_2d, confidence, P):
        B, J = joints_2d.shape[0], joints_2d.shape[2]
        return X.expand(B, J, 3).clone(), torch.ones(B, J, dtype=torch.bool)

    poses = {}
    for spread in (0.0, 1.0):
        est = StereoPoseEstimator.from_checkpoint(
            ckpt, "cpu", max_depth_spread=spread, max_epipolar_offset=0.0
        )  # the random network's two views disagree in rows: no epipolar gate here
        est.pose_net.triangulate = fake_triangulate
        poses[spread] = estimate(est, pair)
    assert poses[0.0].valid.all()
    assert not poses[1.0].valid[3] and poses[1.0].valid.sum() == len(X) - 1
    assert poses[1.0].confidence[3] == 0
    with pytest.raises(ValueError, match="max_depth_spread"):
        StereoPoseEstimator.from_checkpoint(ckpt, "cpu", max_depth_spread=-1.0)


def test_depth_gate_node_parameter(fixture_checkpoint):
    from types import SimpleNamespace

    from stereo_pose3d.node import ConfigError, NodeConfig, StereoPose3DNode, validate_config

    assert NodeConfig().max_depth_spread == 1.0
    assert validate_config({"max_depth_spread": 0}, check_files=False).max_depth_spread == 0.0
    for bad in (-0.5, float("nan"), "1", True):
        with pytest.raises(ConfigError, match="max_depth_spread"):
            validate_config({"max_depth_spread": bad}, check_files=False)
    # Applied to a running estimator (as on `ros2 param set`), checked by its setter.
    est = StereoPoseEstimator.from_checkpoint(fixture_checkpoint, "cpu")
    node = SimpleNamespace(estimator=est)
    StereoPose3DNode._apply_estimator_config(node, NodeConfig(max_depth_spread=0.4))
    assert est.max_depth_spread == 0.4 == est.settings["max_depth_spread"]
    with pytest.raises(ValueError, match="max_depth_spread"):
        est.max_depth_spread = -1.0
