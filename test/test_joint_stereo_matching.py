"""Joint stereo matching (``stereo_pose3d.stereo_matching.match_joint_disparities``, estimator
setting ``joint_stereo_matching``).

``match_joint_disparities`` on textured pairs with a known sub-pixel disparity and on the drawn
stick figure (detections with a few px of disparity error come back within a fraction of a px),
its refusals (search edge, weak or flat matches, unrectified pairs, hostile inputs), and the
estimator: off and "nothing matched" give the same output, matched joints are triangulated
again from the matched pixels, the setting is validated and assignable.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from conftest import patch_locator, render_stereo_pair

from stereo_pose3d import estimator as estimator_module
from stereo_pose3d.estimator import TIMING_KEYS, StereoPoseEstimator
from stereo_pose3d.geometry import project
from stereo_pose3d.models.config import ConfigError, tiny_system_config
from stereo_pose3d.models.config import validate_config as validate_model_config
from stereo_pose3d.stereo_matching import (
    JOINT_MIN_SCORE,
    JOINT_SEARCH,
    match_joint_disparities,
)

H, W, F = 480, 640, 500.0


def rig(baseline: float = 0.12) -> np.ndarray:
    """Rectified ``P (2, 3, 4)``, right camera ``baseline`` m to the right."""
    K = np.array([[F, 0.0, (W - 1) / 2], [0.0, F, (H - 1) / 2], [0.0, 0.0, 1.0]])
    P_left = np.hstack([K, np.zeros((3, 1))])
    P_right = P_left.copy()
    P_right[0, 3] = -F * baseline
    return np.stack([P_left, P_right])


def texture(seed: int, blur: float = 2.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = cv2.GaussianBlur(rng.random((H, W, 3)), (0, 0), blur)
    return (255 * (t - t.min()) / (t.max() - t.min())).astype(np.uint8)


def shifted(image: np.ndarray, d: float) -> np.ndarray:
    """``image`` moved left by ``d`` px (bilinear): the right view of a plane at disparity d."""
    M = np.float32([[1, 0, -d], [0, 1, 0]])
    return cv2.warpAffine(image, M, (W, H), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)


def detections(d: float, disparity_errors: np.ndarray, seed: int = 0) -> np.ndarray:
    """``(2, J, 2)`` px: left joints spread over the image centre; right ones at disparity
    ``d + disparity_errors`` with 1 px of row disagreement."""
    rng = np.random.default_rng(seed)
    J = len(disparity_errors)
    left = np.column_stack([rng.uniform(150, 490, J), rng.uniform(100, 380, J)])
    right = left - np.column_stack([d + disparity_errors, rng.uniform(-1, 1, J)])
    return np.stack([left, right])


@pytest.mark.parametrize("d", [6.3, 17.75, 41.2])
def test_known_subpixel_disparity_is_recovered(d):
    left = texture(0)
    right = shifted(left, d)
    errors = np.linspace(-4.5, 4.5, 12)  # the detections' disparity error, px
    uv = detections(d, errors)
    out, matched, scores = match_joint_disparities(left, right, uv, np.ones(12, bool), rig())
    assert matched.all() and (scores > 0.95).all()
    disparity = out[0, :, 0] - out[1, :, 0]
    np.testing.assert_allclose(disparity, d, atol=0.08)
    # Same rows (the mean of the two detections'), same mid column.
    np.testing.assert_allclose(out[0, :, 1], out[1, :, 1])
    np.testing.assert_allclose(out[0, :, 1], uv[:, :, 1].mean(axis=0))
    np.testing.assert_allclose(out.mean(axis=0)[:, 0], uv.mean(axis=0)[:, 0])
    # Grey inputs give the same answer; the inputs are not modified.
    grey = [cv2.cvtColor(im, cv2.COLOR_RGB2GRAY) for im in (left, right)]
    out_grey, matched_grey, _ = match_joint_disparities(*grey, uv, np.ones(12, bool), rig())
    np.testing.assert_allclose(out_grey, out, atol=1e-9)
    assert matched_grey.all()
    np.testing.assert_array_equal(uv, detections(d, errors))


def test_cameras_with_different_exposure_and_noise():
    """Robot stereo heads rarely expose both cameras alike: the right view 20 % darker, with
    another gamma and sensor noise, still gives the disparity within 0.15 px (zero-mean NCC is
    blind to gain and offset; gamma and noise cost a little)."""
    d = 14.6
    left = texture(7)
    right = shifted(left, d).astype(np.float64) / 255.0
    rng = np.random.default_rng(3)
    right = 255.0 * 0.8 * right**1.25 + 12.0 + rng.normal(0.0, 3.0, right.shape)
    right = np.clip(right, 0, 255).astype(np.uint8)
    uv = detections(d, np.linspace(-3.0, 3.0, 10), seed=4)
    out, matched, scores = match_joint_disparities(left, right, uv, np.ones(10, bool), rig())
    assert matched.all() and (scores > 0.8).all()
    np.testing.assert_allclose(out[0, :, 0] - out[1, :, 0], d, atol=0.15)


def test_stick_figure_depth_comes_from_the_images():
    """The drawn figure at 3 m, 0.12 m baseline: detections whose disparity is off by up to
    +-2.5 px (2.5 px = 0.45 m of depth) come back within the drawing's rounding."""
    pair = render_stereo_pair()
    P = np.stack([pair.P_left, pair.P_right])
    rng = np.random.default_rng(1)
    uv = pair.joints_2d.copy()
    uv[1, :, 0] += rng.uniform(-2.5, 2.5, 16)
    out, matched, _ = match_joint_disparities(pair.left, pair.right, uv, np.ones(16, bool), P)
    assert matched.sum() >= 14
    true_d = pair.joints_2d[0, :, 0] - pair.joints_2d[1, :, 0]
    before = np.abs((uv[0, :, 0] - uv[1, :, 0]) - true_d)[matched]
    after = np.abs((out[0, :, 0] - out[1, :, 0]) - true_d)[matched]
    assert after.mean() < 0.5 < before.mean()
    assert after.max() < 1.0


def test_only_usable_joints_within_the_search_range_are_matched():
    d = 20.0
    left = texture(1)
    right = shifted(left, d)
    errors = np.array([0.5, -2.0, JOINT_SEARCH + 3.0, -(JOINT_SEARCH + 3.0), 1.0, 0.0])
    uv = detections(d, errors, seed=2)
    usable = np.array([True, True, True, True, False, True])
    uv[:, 5] = np.nan  # not finite: never matched
    out, matched, scores = match_joint_disparities(left, right, uv, usable, rig())
    np.testing.assert_array_equal(matched, [True, True, False, False, False, False])
    # Unmatched joints are returned exactly as given.
    np.testing.assert_array_equal(out[:, ~matched], uv[:, ~matched])
    assert np.isnan(scores[4]) and np.isnan(scores[5])  # not usable: not measured
    # A wider search finds the far ones too.
    out, matched, _ = match_joint_disparities(
        left, right, uv, usable, rig(), search=JOINT_SEARCH + 5
    )
    assert matched[:4].all()
    np.testing.assert_allclose(out[0, :4, 0] - out[1, :4, 0], d, atol=0.08)


def test_weak_and_flat_matches_keep_the_detections():
    uv = detections(10.0, np.zeros(8))
    usable = np.ones(8, bool)
    # Unrelated textures: peaks below the threshold.
    out, matched, scores = match_joint_disparities(texture(3), texture(4), uv, usable, rig())
    assert not matched.any() and np.nanmax(scores) < JOINT_MIN_SCORE
    np.testing.assert_array_equal(out, uv)
    # Flat images: nothing to match, nothing measured.
    flat = np.full((H, W, 3), 128, np.uint8)
    out, matched, scores = match_joint_disparities(flat, flat, uv, usable, rig())
    assert not matched.any() and np.isnan(scores).all()
    # A threshold above every peak refuses even a perfect pair.
    left = texture(5)
    _, matched, _ = match_joint_disparities(
        left, shifted(left, 10.0), uv, usable, rig(), min_score=1.01
    )
    assert not matched.any()


def test_unrectified_and_hostile_inputs_never_raise():
    left = texture(6)
    right = shifted(left, 12.0)
    uv = detections(12.0, np.zeros(5))
    usable = np.ones(5, bool)
    P = rig()
    verged = P.copy()
    a = np.radians(4)
    R = np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])
    verged[1, :, :3] = verged[1, :, :3] @ R
    cases = [
        (left, right, uv, usable, verged),  # rows not shared
        (left, right, uv, usable, np.full((2, 3, 4), np.nan)),
        (left, right, uv, usable, P[0]),  # wrong shape
        (left, right[:100], uv, usable, P),  # sizes differ
        (left.astype(np.float32), right, uv, usable, P),  # not uint8
        (left[..., :2], right[..., :2], uv, usable, P),  # two channels
        (left, right, uv[:, :, :1], usable, P),  # joints not (2, J, 2)
        (left, right, uv, usable[:3], P),  # usable of another length
        (left, right, uv, np.zeros(5, bool), P),  # nothing usable
        (left, right, uv[:, :1], usable[:1], P),  # one joint: no person height
        (left, right, uv, usable, P, 0),  # no search range
    ]
    for args in cases:
        out, matched, _ = match_joint_disparities(*args)
        assert not matched.any()
        assert out.shape == np.asarray(args[2]).shape
    # Joints at and beyond the image border: border pixels are replicated, no exception.
    edge = np.array([[[0.0, 0.0], [639.0, 479.0], [-50.0, 200.0]]] * 2)
    edge[1, :, 0] -= 12.0
    match_joint_disparities(left, right, edge, np.ones(3, bool), P)


# --- the estimator ---------------------------------------------------------------------------


@pytest.fixture
def stick_figure_estimator(fixture_checkpoint, monkeypatch):
    """``make(**settings)``: the fixture estimator whose locator boxes the drawn figure."""
    pair = render_stereo_pair()

    def make(**settings) -> StereoPoseEstimator:
        est = StereoPoseEstimator.from_checkpoint(fixture_checkpoint, "cpu", **settings)
        patch_locator(monkeypatch, est, pair.box)
        return est

    return make, pair


def test_estimator_off_equals_nothing_matched(stick_figure_estimator, monkeypatch):
    make, pair = stick_figure_estimator
    off = make(joint_stereo_matching=False).estimate(
        pair.left, pair.right, pair.P_left, pair.P_right
    )
    assert off.detected and not off.joints_matched.any()
    assert "joint_matching" not in off.timings

    def nothing(left, right, joints_2d, usable, P):
        return np.array(joints_2d), np.zeros(len(usable), bool), np.full(len(usable), np.nan)

    monkeypatch.setattr(estimator_module, "match_joint_disparities", nothing)
    est = make()
    assert est.joint_stereo_matching  # the default
    on = est.estimate(pair.left, pair.right, pair.P_left, pair.P_right)
    assert "joint_matching" in on.timings and not on.joints_matched.any()
    for key in ("joints_3d", "joints_2d", "confidence", "valid", "joints_2d_detected"):
        np.testing.assert_array_equal(getattr(on, key), getattr(off, key), err_msg=key)


def test_estimator_triangulates_the_matched_pixels(stick_figure_estimator, monkeypatch):
    """Matched joints are triangulated again from the matched pixels (here: the figure's true
    joints, handed back for joints 0-7); the others keep the network's result."""
    make, pair = stick_figure_estimator
    off = make(joint_stereo_matching=False, max_depth_spread=0.0).estimate(
        pair.left, pair.right, pair.P_left, pair.P_right
    )
    seen = {}

    def fake(left, right, joints_2d, usable, P):
        seen["usable"] = np.array(usable)
        matched = np.arange(16) < 8
        out = np.array(joints_2d)
        out[:, matched] = pair.joints_2d[:, matched]
        return out, matched, np.where(matched, 0.9, np.nan)

    monkeypatch.setattr(estimator_module, "match_joint_disparities", fake)
    pose = make(max_depth_spread=0.0).estimate(pair.left, pair.right, pair.P_left, pair.P_right)
    np.testing.assert_array_equal(seen["usable"], off.valid)  # only the valid joints are offered
    np.testing.assert_array_equal(pose.joints_matched, np.arange(16) < 8)
    np.testing.assert_allclose(pose.joints_3d[:8], pair.joints_3d[:8], atol=1e-6)
    assert pose.valid[:8].all()
    np.testing.assert_array_equal(pose.joints_3d[8:], off.joints_3d[8:])
    np.testing.assert_array_equal(pose.valid[8:], off.valid[8:])
    np.testing.assert_allclose(
        pose.joints_2d[:, :8],
        project(pair.joints_3d[None, :8], np.stack([pair.P_left, pair.P_right])),
        atol=1e-6,
    )
    np.testing.assert_array_equal(pose.joints_2d_detected, off.joints_2d_detected)
    parts = sum(pose.timings[k] for k in TIMING_KEYS if k != "total")
    assert parts == pytest.approx(pose.timings["total"], rel=1e-6)
    assert 0 <= pose.timings["joint_matching"] <= pose.timings["preprocess"]


def test_estimator_real_matching_on_the_drawn_figure(stick_figure_estimator):
    """The real matcher in the estimator, on a batch of the figure and a flat pair: no error,
    matched joints only among the valid ones, nothing matched on the flat pair."""
    make, pair = stick_figure_estimator
    est = make()
    flat = np.full_like(pair.left, 90)
    poses = est.estimate_batch(
        [pair.left, flat], [pair.right, flat], [pair.P_left] * 2, [pair.P_right] * 2
    )
    for pose in poses:
        assert pose.joints_matched.dtype == bool and pose.joints_matched.shape == (16,)
        assert not (pose.joints_matched & ~pose.valid).any()
    assert not poses[1].joints_matched.any()


def test_setting_is_validated_and_assignable(fixture_checkpoint):
    with pytest.raises(ConfigError, match="joint_stereo_matching"):
        validate_model_config(tiny_system_config(joint_stereo_matching="yes"))
    est = StereoPoseEstimator.from_checkpoint(fixture_checkpoint, "cpu")
    est.joint_stereo_matching = False
    assert est.settings["joint_stereo_matching"] is False
    with pytest.raises(ValueError, match="joint_stereo_matching"):
        est.joint_stereo_matching = 1
    with pytest.raises(ValueError, match="joint_stereo_matching"):
        StereoPoseEstimator.from_checkpoint(fixture_checkpoint, "cpu", joint_stereo_matching="on")
