"""The epipolar gate (estimator setting / node parameter ``max_epipolar_offset``) and the
geometry under it (``fundamental_matrix``, ``epipolar_distance``)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import patch_locator

from stereo_pose3d.estimator import StereoPoseEstimator, epipolar_gate
from stereo_pose3d.geometry import epipolar_distance, fundamental_matrix, project
from stereo_pose3d.models.config import ConfigError, tiny_system_config
from stereo_pose3d.models.config import validate_config as validate_model_config
from stereo_pose3d.node import ConfigError as NodeConfigError
from stereo_pose3d.node import NodeConfig, StereoPose3DNode, validate_config


def verged_rig(seed: int = 0) -> np.ndarray:
    """``P (2, 3, 4)`` of a general (verged, not rectified) pair with different intrinsics."""
    rng = np.random.default_rng(seed)
    K1 = np.array([[480.0, 0.0, 322.0], [0.0, 470.0, 241.0], [0.0, 0.0, 1.0]])
    K2 = np.array([[510.0, 0.0, 315.0], [0.0, 505.0, 236.0], [0.0, 0.0, 1.0]])
    a, b = np.radians(6.0), np.radians(rng.uniform(-2, 2))
    R = np.array([[np.cos(a), 0, -np.sin(a)], [0, 1, 0], [np.sin(a), 0, np.cos(a)]])
    R = R @ np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    t = np.array([-0.2, 0.01, 0.02])
    return np.stack(
        [K1 @ np.hstack([np.eye(3), np.zeros((3, 1))]), K2 @ np.hstack([R, t[:, None]])]
    )


def rectified_rig(f: float = 500.0, baseline: float = 0.12) -> np.ndarray:
    K = np.array([[f, 0.0, 319.5], [0.0, f, 239.5], [0.0, 0.0, 1.0]])
    P_left = np.hstack([K, np.zeros((3, 1))])
    P_right = P_left.copy()
    P_right[0, 3] = -f * baseline
    return np.stack([P_left, P_right])


def points(n: int = 20, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.column_stack([rng.uniform(-1, 1, n), rng.uniform(-0.8, 0.8, n), rng.uniform(2, 6, n)])


@pytest.mark.parametrize("P", [verged_rig(), rectified_rig()], ids=["verged", "rectified"])
def test_images_of_one_point_are_on_corresponding_epipolar_lines(P):
    uv = project(points()[None], P)  # (2, N, 2)
    F = fundamental_matrix(P[0], P[1])
    x1 = np.column_stack([uv[0], np.ones(len(uv[0]))])
    x2 = np.column_stack([uv[1], np.ones(len(uv[1]))])
    np.testing.assert_allclose(np.einsum("ni,ij,nj->n", x2, F, x1), 0.0, atol=1e-9)
    np.testing.assert_allclose(epipolar_distance(uv, P), 0.0, atol=1e-6)
    # A point moved along the epipolar line stays at distance 0; moved across it, at the move.
    moved = uv.copy()
    moved[1] += 7.0 * np.column_stack([np.ones(len(uv[1])), np.zeros(len(uv[1]))])
    if np.allclose(P[0, 1:], P[1, 1:]):  # rectified: rows are epipolar lines
        np.testing.assert_allclose(epipolar_distance(moved, P), 0.0, atol=1e-6)
        moved[1, :, 1] += 4.0
        np.testing.assert_allclose(epipolar_distance(moved, P), 4.0, atol=1e-6)
    else:
        assert (epipolar_distance(moved, P) > 0.1).all()


def test_epipolar_distance_of_rectified_rows_and_non_finite_points():
    P = rectified_rig()
    uv = np.array([[[100.0, 200.0], [300.0, 50.0], [np.nan, 3.0]],
                   [[80.0, 203.0], [290.0, 42.5], [10.0, 3.0]]])  # fmt: skip
    d = epipolar_distance(uv, P)
    np.testing.assert_allclose(d[:2], [3.0, 7.5], atol=1e-6)
    assert np.isnan(d[2])


def test_gate_drops_joints_whose_rows_disagree():
    P = rectified_rig()
    uv = project(points(16)[None], P)
    uv[0, :, 1] = np.linspace(100, 300, 16)  # a person 200 px tall in the left view ...
    uv[1, :, 1] = uv[0, :, 1]  # ... on the same rows in the right view
    uv[1, 4, 1] += 5.0  # 2.5 % of the height: kept at 0.03
    uv[1, 9, 1] -= 7.0  # 3.5 %: dropped
    valid = np.ones(16, bool)
    valid[12] = False
    out = epipolar_gate(uv, valid, P, 0.03)
    expected = valid.copy()
    expected[9] = False
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(epipolar_gate(uv, valid, P, 0.0), valid)  # off
    np.testing.assert_array_equal(
        epipolar_gate(uv, valid, P, 0.02), expected & (np.arange(16) != 4)
    )
    # Non-finite joints are left as they are; too few usable joints or a degenerate P: no gate.
    uv_nan = uv.copy()
    uv_nan[:, 9] = np.nan
    assert epipolar_gate(uv_nan, valid, P, 0.03)[9]
    one = np.zeros(16, bool)
    one[9] = True
    np.testing.assert_array_equal(epipolar_gate(uv, one, P, 0.03), one)
    np.testing.assert_array_equal(epipolar_gate(uv, valid, np.zeros((2, 3, 4)), 0.03), valid)
    np.testing.assert_array_equal(epipolar_gate(uv, valid, np.full((2, 3, 4), np.nan), 0.03), valid)


def test_gate_in_the_estimator(make_fixture_checkpoint, synthetic_stereo_pair, monkeypatch):
    """The estimator gates on the network's per-view detections: a right-view joint moved 30 px
    down (another limb) is invalid with confidence 0; 0 keeps it."""
    pair = synthetic_stereo_pair
    ckpt = make_fixture_checkpoint()
    poses = {}
    for offset in (0.0, 0.03):
        est = StereoPoseEstimator.from_checkpoint(
            ckpt, "cpu", max_epipolar_offset=offset, joint_stereo_matching=False
        )
        real_forward = est.pose_net.forward_2d

        def oracle_forward(x, P_crop, *args, real=real_forward, **kwargs):
            out = real(x, P_crop, *args, **kwargs)
            # The true joints in each crop, with joint 5 of the right view 30 px lower.
            X = torch.as_tensor(pair.joints_3d, dtype=P_crop.dtype)
            h = torch.cat([X, torch.ones(len(X), 1, dtype=X.dtype)], 1)
            uv = torch.einsum("bvij,nj->bvni", P_crop, h)
            uv = uv[..., :2] / uv[..., 2:]
            scale = P_crop[0, 1, 1, 1] / torch.as_tensor(pair.P_right[1, 1], dtype=uv.dtype)
            uv[:, 1, 5, 1] += 30.0 * scale
            out["joints_2d"] = uv
            out["confidence"] = torch.ones_like(out["confidence"])
            return out

        est.pose_net.forward_2d = oracle_forward
        patch_locator(monkeypatch, est, pair.box)
        poses[offset] = est.estimate(pair.left, pair.right, pair.P_left, pair.P_right)
    assert poses[0.0].valid.all()
    assert not poses[0.03].valid[5] and poses[0.03].valid.sum() == 15
    assert poses[0.03].confidence[5] == 0


def test_setting_and_node_parameter(fixture_checkpoint):
    assert NodeConfig().max_epipolar_offset == 0.03
    assert validate_config({"max_epipolar_offset": 0}, check_files=False).max_epipolar_offset == 0
    for bad in (-0.1, 1.5, float("nan"), "0.03", True):
        with pytest.raises(NodeConfigError, match="max_epipolar_offset"):
            validate_config({"max_epipolar_offset": bad}, check_files=False)
    with pytest.raises(ConfigError, match="max_epipolar_offset"):
        validate_model_config(tiny_system_config(max_epipolar_offset=-1))
    est = StereoPoseEstimator.from_checkpoint(fixture_checkpoint, "cpu")
    assert est.max_epipolar_offset == 0.03
    # Applied to a running estimator (as on `ros2 param set`), checked by its setter.
    StereoPose3DNode._apply_estimator_config(
        SimpleNamespace(estimator=est), NodeConfig(max_epipolar_offset=0.05)
    )
    assert est.max_epipolar_offset == 0.05 == est.settings["max_epipolar_offset"]
    with pytest.raises(ValueError, match="max_epipolar_offset"):
        est.max_epipolar_offset = -1.0
