"""Stereo box matching (``stereo_box_matching``): the right view's box placed by NCC matching of
the left box's patch along the same rows of a rectified pair.

``match_stereo_box`` on synthetic textured pairs with a known sub-pixel disparity (both sign
conventions of P), its fall-backs (flat / noise-only images, non-rectified or bad P, tiny or
border boxes, odd sizes), the estimator with the option off (bit-identical to the plain
pipeline) and on (a wrong locator box corrected), and the settings plumbing (checkpoint,
arguments, node parameter, ``eval --stereo-box-matching``).
"""

from __future__ import annotations

import argparse
import json
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
from conftest import patch_locator
from hypothesis import given
from hypothesis import strategies as st
from test_fuzz_messages import fuzz

from stereo_pose3d import estimator as estimator_module
from stereo_pose3d import stereo_matching
from stereo_pose3d.checkpoint import load_model
from stereo_pose3d.estimator import TIMING_KEYS, StereoPoseEstimator
from stereo_pose3d.models.config import DEFAULT_ESTIMATOR, ConfigError, tiny_system_config
from stereo_pose3d.models.config import validate_config as validate_model_config
from stereo_pose3d.node import ConfigError as NodeConfigError
from stereo_pose3d.node import NodeConfig, StereoPose3DNode
from stereo_pose3d.node import validate_config as validate_node_config
from stereo_pose3d.stereo_matching import match_stereo_box

H, W, F = 480, 640, 500.0


def rig(baseline: float = 0.12, right_of_left: bool = True) -> np.ndarray:
    """Rectified ``P (2, 3, 4)``; right camera ``baseline`` m to the right (or to the left)."""
    K = np.array([[F, 0.0, (W - 1) / 2], [0.0, F, (H - 1) / 2], [0.0, 0.0, 1.0]])
    P_left = np.hstack([K, np.zeros((3, 1))])
    P_right = P_left.copy()
    P_right[0, 3] = (-1 if right_of_left else 1) * F * baseline
    return np.stack([P_left, P_right])


def texture(seed: int, blur: float = 2.0, shape=(H, W)) -> np.ndarray:
    """A contrast-stretched smooth random RGB texture (uint8)."""
    rng = np.random.default_rng(seed)
    t = cv2.GaussianBlur(rng.random((*shape, 3)), (0, 0), blur)
    return (255 * (t - t.min()) / (t.max() - t.min())).astype(np.uint8)


def shifted(image: np.ndarray, d: float) -> np.ndarray:
    """``image`` moved left by ``d`` px (bilinear): right view of a plane at disparity ``d``."""
    M = np.float32([[1, 0, -d], [0, 1, 0]])
    h, w = image.shape[:2]
    return cv2.warpAffine(image, M, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)


def textured_patch_pair(d: float, seed: int = 0):
    """A textured rectangle (the "person") at disparity ``d`` in front of a flat grey wall."""
    left = np.full((H, W, 3), 120, np.uint8)
    left[90:390, 240:400] = texture(seed, shape=(300, 160))
    right = shifted(left, d)  # the same scene d px further left, sub-pixel (bilinear)
    box_left = np.array([230.0, 80.0, 410.0, 400.0])
    return left, right, box_left


@pytest.mark.parametrize("d", [7.4, 12.25, 30.8])
@pytest.mark.parametrize("locator_error", [-9.0, 0.0, 13.0])
def test_known_subpixel_disparity_is_found(d, locator_error):
    left, right, box_left = textured_patch_pair(d)
    box_right = box_left - [d + locator_error, 0, d + locator_error, 0]
    box, disparity, score = match_stereo_box(left, right, box_left, box_right, rig())
    assert box is not None and score > 0.9
    assert disparity == pytest.approx(d, abs=0.3)
    truth = box_left - [d, 0, d, 0]
    np.testing.assert_allclose(box, truth, atol=0.3)
    np.testing.assert_array_equal(box[[1, 3]], box_left[[1, 3]])  # same rows, same size


@pytest.mark.parametrize("blur", [1.0, 2.0, 4.0])
def test_subpixel_on_a_full_textured_frame_and_tall_boxes(blur):
    """Whole-frame texture; a box taller than MATCH_MAX_HEIGHT is matched coarse-to-fine."""
    left = texture(1, blur)
    for d in (7.4, 23.6):
        right = shifted(left, d)
        for box_left in (np.array([250.0, 100.0, 340.0, 250.0]), np.array([200.0, 5, 470, 470])):
            _, disparity, _ = match_stereo_box(
                left, right, box_left, box_left - [d + 6, 0, d + 6, 0], rig()
            )
            assert disparity == pytest.approx(d, abs=0.3)


def test_sign_convention_comes_from_P():
    """Right camera to the LEFT of the left one: disparities are negative, found just as well;
    with the usual P (right camera to the right) the same images have no valid match."""
    left, right, box_left = textured_patch_pair(-8.6)  # right view moved right
    box_right = box_left + np.array([5.0, 0, 5.0, 0])
    box, disparity, _ = match_stereo_box(left, right, box_left, box_right, rig(right_of_left=False))
    assert box is not None and disparity == pytest.approx(-8.6, abs=0.3)
    # The usual rig only searches d > 0 (within MATCH_BEHIND px of 0): no valid peak.
    box, _, _ = match_stereo_box(left, right, box_left, box_right, rig())
    assert box is None


def test_flat_and_noise_only_images_fall_back():
    P = rig()
    box_left = np.array([200.0, 100.0, 300.0, 350.0])
    box_right = box_left - [20.0, 0, 20.0, 0]
    flat = np.full((H, W, 3), 77, np.uint8)
    assert match_stereo_box(flat, flat.copy(), box_left, box_right, P)[0] is None
    # Independent noise in the two views: nothing to match (weak peak).
    rng = np.random.default_rng(0)
    a, b = (rng.integers(0, 256, (H, W, 3), dtype=np.uint8) for _ in range(2))
    box, _, score = match_stereo_box(a, b, box_left, box_right, P)
    assert box is None and score < stereo_matching.MATCH_MIN_SCORE
    # A textured left view and a flat right one.
    assert match_stereo_box(texture(2), flat, box_left, box_right, P)[0] is None


def test_peak_on_the_edge_of_the_search_range_falls_back():
    """True disparity 40 px, the locator says 0 and the window is 16 px: the best score in range
    is on its edge (the scores still rise toward the truth), so nothing is claimed."""
    left, right, box_left = textured_patch_pair(40.0, seed=3)
    left, right = cv2.GaussianBlur(left, (0, 0), 6), cv2.GaussianBlur(right, (0, 0), 6)
    box, _, _ = match_stereo_box(left, right, box_left, box_left, rig(), window=0.0)
    assert box is None


@pytest.mark.parametrize(
    "case",
    [
        "not_rectified",
        "nan_P",
        "singular_P",
        "zero_baseline",
        "wrong_P_shape",
        "nan_box",
        "tiny_box",
        "box_outside",
        "box_at_border",
        "sizes_differ",
        "odd_small_image",
        "grey_rgb",
        "one_channel",
        "float_images",
        "box_shape",
    ],
)
def test_bad_inputs_do_not_raise(case):
    left, right, box_left = textured_patch_pair(10.0)
    box_right = box_left - [12.0, 0, 12.0, 0]
    P = rig()
    if case == "not_rectified":
        angle = np.radians(5)
        Rz = np.array(
            [[np.cos(angle), 0, np.sin(angle)], [0, 1, 0], [-np.sin(angle), 0, np.cos(angle)]]
        )
        P[1, :, :3] = P[1, :, :3] @ Rz
    elif case == "nan_P":
        P[1, 0, 0] = np.nan
    elif case == "singular_P":
        P[0, :, :3] = 0.0
    elif case == "zero_baseline":
        P[1] = P[0]
    elif case == "wrong_P_shape":
        P = P[0]
    elif case == "nan_box":
        box_left = box_left.copy()
        box_left[0] = np.nan
    elif case == "tiny_box":
        box_left = np.array([300.0, 200.0, 303.0, 204.0])
        box_right = box_left - [10.0, 0, 10.0, 0]
    elif case == "box_outside":
        box_left = np.array([700.0, 500.0, 900.0, 800.0])
    elif case == "box_at_border":  # partly outside the image, right and top
        left = texture(8)
        right = shifted(left, 10.0)
        box_left = np.array([560.0, -50.0, 700.0, 300.0])
        box_right = box_left - [14.0, 0, 14.0, 0]
    elif case == "sizes_differ":
        right = right[:, :-1]
    elif case == "odd_small_image":
        left, right = texture(4, shape=(33, 47)), texture(5, shape=(33, 47))
        box_left, box_right = np.array([5.0, 2.0, 30.0, 31.0]), np.array([1.0, 2.0, 26.0, 31.0])
    elif case == "grey_rgb":
        g = cv2.cvtColor(left, cv2.COLOR_RGB2GRAY)
        left, right = np.dstack([g] * 3), np.dstack([cv2.cvtColor(right, cv2.COLOR_RGB2GRAY)] * 3)
    elif case == "one_channel":
        left, right = left[..., 0], right[..., :1]
    elif case == "float_images":
        left, right = left.astype(np.float32), right.astype(np.float32)
    elif case == "box_shape":
        box_left = box_left[:3]
    box, disparity, score = match_stereo_box(left, right, box_left, box_right, P)
    if case in ("grey_rgb", "box_at_border"):
        assert box is not None and disparity == pytest.approx(10.0, abs=0.3)
    elif case in ("odd_small_image",):
        assert box is None or np.isfinite(box).all()
    else:
        assert box is None
    assert isinstance(disparity, float) and isinstance(score, float)


# -- the estimator ------------------------------------------------------------------------------


@pytest.fixture
def fake_locator_estimator(fixture_checkpoint, monkeypatch):
    """``make(locator_boxes (2, 4), **settings)``: the fixture estimator whose locator returns
    ``locator_boxes`` with score 1 for every pair."""

    def make(boxes: np.ndarray, **settings) -> StereoPoseEstimator:
        est = StereoPoseEstimator.from_checkpoint(fixture_checkpoint, "cpu", **settings)
        patch_locator(monkeypatch, est, boxes)
        return est

    return make


def run(est, pair, left=None, right=None):
    left = pair.left if left is None else left
    right = pair.right if right is None else right
    return est.estimate(left, right, pair.P_left, pair.P_right)


def test_off_is_bit_identical_to_the_plain_pipeline(
    fake_locator_estimator, synthetic_stereo_pair, monkeypatch
):
    """Off: the locator's boxes reach the crops unchanged, and every output equals that of the
    on-path whose match falls back (the same code without the box change)."""
    pair = synthetic_stereo_pair
    bad = pair.box + np.array([[0, 0, 0, 0], [14.0, 0, 14.0, 0]])
    off = run(fake_locator_estimator(bad, stereo_box_matching=False), pair)
    assert not off.box_matched and "box_matching" not in off.timings
    np.testing.assert_array_equal(off.box, bad)
    monkeypatch.setattr(estimator_module, "match_stereo_box", lambda *a, **k: (None, 0.0, 0.0))
    fallback = run(fake_locator_estimator(bad, stereo_box_matching=True), pair)
    assert not fallback.box_matched and "box_matching" in fallback.timings
    for key in ("joints_3d", "joints_2d", "confidence", "box", "crop_boxes", "valid"):
        np.testing.assert_array_equal(getattr(off, key), getattr(fallback, key), err_msg=key)
    np.testing.assert_array_equal(off.joints_2d_detected, fallback.joints_2d_detected)


def test_on_corrects_the_right_box(fake_locator_estimator, synthetic_stereo_pair):
    pair = synthetic_stereo_pair
    # Right box 14 px too far right and 3 px too low.
    bad = pair.box + np.array([[0, 0, 0, 0], [14.0, 3.0, 14.0, 3.0]])
    est = fake_locator_estimator(bad)
    assert est.stereo_box_matching  # the default
    pose = run(est, pair)
    assert pose.box_matched and pose.detected
    d = (pair.joints_2d[0, :, 0] - pair.joints_2d[1, :, 0]).mean()  # the figure's disparity
    np.testing.assert_allclose(pose.box[0], pair.box[0])
    np.testing.assert_allclose(pose.box[1], pair.box[0] - [d, 0, d, 0], atol=0.3)
    np.testing.assert_allclose(pose.crop_boxes[0, [1, 3]], pose.crop_boxes[1, [1, 3]])
    parts = sum(pose.timings[k] for k in TIMING_KEYS if k != "total")
    assert parts == pytest.approx(pose.timings["total"], rel=1e-6)
    assert 0 <= pose.timings["box_matching"] <= pose.timings["preprocess"]
    # A batch with a pair that has nothing to match (flat images): located boxes kept there.
    flat = np.full_like(pair.left, 90)
    poses = est.estimate_batch([pair.left, flat], [pair.right, flat], [pair.P_left] * 2,
                               [pair.P_right] * 2)  # fmt: skip
    assert [p.box_matched for p in poses] == [True, False]
    np.testing.assert_array_equal(poses[1].box, bad)
    np.testing.assert_array_equal(poses[0].box, pose.box)


def test_not_rectified_or_hostile_pairs_keep_the_located_boxes(
    fake_locator_estimator, synthetic_stereo_pair
):
    pair = synthetic_stereo_pair
    bad = pair.box + np.array([[0, 0, 0, 0], [14.0, 0, 14.0, 0]])
    est = fake_locator_estimator(bad)
    angle = np.radians(4)
    Ry = np.array(
        [[np.cos(angle), 0, np.sin(angle)], [0, 1, 0], [-np.sin(angle), 0, np.cos(angle)]]
    )
    P_right = pair.P_right.copy()
    P_right[:, :3] = P_right[:, :3] @ Ry  # verged: rows no longer shared
    pose = est.estimate(pair.left, pair.right, pair.P_left, P_right)
    assert pose.detected and not pose.box_matched
    np.testing.assert_array_equal(pose.box, bad)
    # Boxes at the border / mostly outside, grey images, tiny odd-sized images: no exception.
    est = fake_locator_estimator(np.array([[-30.0, -40, 50, 300], [-40.0, -40, 40, 300]]))
    assert run(est, pair).detected
    grey = np.dstack([cv2.cvtColor(pair.left, cv2.COLOR_RGB2GRAY)] * 3)
    run(est, pair, grey, grey)
    small = [texture(k, shape=(33, 47)) for k in (6, 7)]
    est = fake_locator_estimator(np.array([[5.0, 2, 30, 31], [1.0, 2, 26, 31]]))
    est.estimate(small[0], small[1], pair.P_left, pair.P_right)


def test_random_fixture_network_with_matching(fixture_checkpoint, synthetic_stereo_pair):
    """The random fixture locator (noise boxes) and network, matching on: coherent output."""
    pair = synthetic_stereo_pair
    est = StereoPoseEstimator.from_checkpoint(fixture_checkpoint, "cpu")
    pose = run(est, pair)
    assert pose.detected and isinstance(pose.box_matched, bool)
    assert np.isfinite(pose.box).all()


# -- settings plumbing --------------------------------------------------------------------------


def test_settings_plumbing(fixture_checkpoint):
    assert DEFAULT_ESTIMATOR["stereo_box_matching"] is True
    assert DEFAULT_ESTIMATOR["refine_iterations"] == 0
    system, _ = load_model(fixture_checkpoint, expect="system")
    assert system.config["estimator"]["stereo_box_matching"] is True
    system.config["estimator"]["stereo_box_matching"] = False  # a checkpoint that carries it
    assert StereoPoseEstimator(system, "cpu").stereo_box_matching is False
    assert StereoPoseEstimator(system, "cpu", stereo_box_matching=True).stereo_box_matching
    est = StereoPoseEstimator.from_checkpoint(fixture_checkpoint, "cpu", stereo_box_matching=False)
    assert est.stereo_box_matching is False and est.settings["stereo_box_matching"] is False
    est.stereo_box_matching = np.bool_(True)
    assert est.stereo_box_matching is True
    for bad in (1, 0, "true", None, 1.0):
        with pytest.raises(ValueError, match="stereo_box_matching"):
            StereoPoseEstimator.from_checkpoint(fixture_checkpoint, "cpu", stereo_box_matching=bad)
        with pytest.raises(ValueError, match="stereo_box_matching"):
            est.stereo_box_matching = bad
    assert est.stereo_box_matching is True
    # Checkpoint configs may carry both new keys; wrong types are refused naming the key.
    config = tiny_system_config(stereo_box_matching=False, refine_iterations=2)
    assert config["estimator"]["stereo_box_matching"] is False
    assert config["estimator"]["refine_iterations"] == 2
    for key, bad in (("stereo_box_matching", 1), ("refine_iterations", True),
                     ("refine_iterations", -1), ("refine_iterations", 1.5)):  # fmt: skip
        config = tiny_system_config()
        config["estimator"][key] = bad
        with pytest.raises(ConfigError, match=key):
            validate_model_config(config)
    # Old configs without the keys get the defaults.
    config = tiny_system_config()
    del config["estimator"]["stereo_box_matching"], config["estimator"]["refine_iterations"]
    config = validate_model_config(config)
    assert config["estimator"]["stereo_box_matching"] is True
    assert config["estimator"]["refine_iterations"] == 0


def test_node_parameter():
    assert NodeConfig().stereo_box_matching is True
    config = validate_node_config({"stereo_box_matching": False}, check_files=False)
    assert config.stereo_box_matching is False
    for bad in (1, "true", 0.0):
        with pytest.raises(NodeConfigError, match="stereo_box_matching"):
            validate_node_config({"stereo_box_matching": bad}, check_files=False)
    node = SimpleNamespace(estimator=SimpleNamespace(refine_iterations=0, stereo_box_matching=True))
    StereoPose3DNode._apply_estimator_config(node, NodeConfig(stereo_box_matching=False))
    assert node.estimator.stereo_box_matching is False
    node = SimpleNamespace(estimator=SimpleNamespace(refine_iterations=3))  # no such attribute
    StereoPose3DNode._apply_estimator_config(node, NodeConfig(stereo_box_matching=False))
    assert not hasattr(node.estimator, "stereo_box_matching")
    assert node.estimator.refine_iterations == 0


def test_eval_option(fixture_checkpoint, tmp_path):
    from test_train import fabricate_stereo_dataset

    from training.evaluate import add_arguments, main

    data = fabricate_stereo_dataset(tmp_path / "val", "val", 2, 2)
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    for flag, expected in (("on", True), ("off", False), (None, True)):
        out = tmp_path / f"eval_{flag}"
        argv = [
            "--ckpt", str(fixture_checkpoint), "--name", "cdr", "--data", str(data), "--out",
            str(out), "--figures", "0", "--max-samples", "2", "--device", "cpu", "--paths",
            "full", "--postprocess", "none",
        ]  # fmt: skip
        if flag is not None:
            argv += ["--stereo-box-matching", flag]
        assert main(parser.parse_args(argv)) == 0
        report = json.loads((out / "eval.json").read_text())
        assert report["models"]["cdr"]["stereo_box_matching"] is expected
        noted = any("stereo box matching" in n for n in report.get("notes", []))
        assert noted is expected
    with pytest.raises(SystemExit):
        parser.parse_args(["--ckpt", "x", "--data", "y", "--stereo-box-matching", "maybe"])


_FUZZ_LEFT = texture(11)
_FUZZ_RIGHT = shifted(_FUZZ_LEFT, 9.3)
_COORD = st.one_of(
    st.floats(-1e6, 1e6, allow_nan=False), st.sampled_from([np.nan, np.inf, -np.inf, 0.0, 639.5])
)


@fuzz(120)
@given(
    box_left=st.lists(_COORD, min_size=4, max_size=4),
    box_right=st.lists(_COORD, min_size=4, max_size=4),
    p_noise=st.lists(st.floats(-1e3, 1e3, allow_nan=False), min_size=24, max_size=24),
    use_noise=st.booleans(),
)
def test_fuzzed_boxes_and_projections_never_raise(box_left, box_right, p_noise, use_noise):
    P = rig()
    if use_noise:
        P = P + np.reshape(p_noise, (2, 3, 4))
    box, disparity, score = match_stereo_box(_FUZZ_LEFT, _FUZZ_RIGHT, box_left, box_right, P)
    assert isinstance(disparity, float) and isinstance(score, float)
    if box is not None:
        assert box.shape == (4,) and np.isfinite(box).all()
        np.testing.assert_array_equal(box[[1, 3]], np.asarray(box_left)[[1, 3]])
