"""Stereo-consistent box refinement (``refine_iterations``) of StereoPoseEstimator.

The pose network is replaced by an oracle that knows the true joints (conftest's synthetic pair)
and, like the shipped CDRNet, reports them partly shifted toward its crop's centre, so that two
inconsistent crops (the locator's boxes are replaced too) give a wrong depth: the setting the
refinement is for. Also: 0 passes are exactly the single-pass pipeline, bad first or refined
passes fall back without exceptions, the settings plumbing (checkpoint, arguments, node
parameter, ``eval --refine``).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import patch_locator

from stereo_pose3d import estimator as estimator_module
from stereo_pose3d.checkpoint import load_model
from stereo_pose3d.estimator import TIMING_KEYS, StereoPoseEstimator
from stereo_pose3d.geometry import project, triangulate
from stereo_pose3d.models.crops import crop_regions, crop_views
from stereo_pose3d.node import (
    MAX_REFINE_ITERATIONS,
    ConfigError,
    NodeConfig,
    StereoPose3DNode,
    validate_config,
)


class CropBiasedOracle(torch.nn.Module):
    """Pose-network stand-in: the true joints projected with each crop's P, minus
    ``(1 - gain)`` x the offset of their bounds' centre from the crop centre (gain 1: exact).

    ``nan_2d_on`` / ``nan_3d_on``: call numbers (1 = first pass) whose 2D joints are NaN, or
    whose triangulation returns NaN joints flagged valid (a misbehaving network).
    """

    def __init__(self, joints_3d: np.ndarray, gain: float = 1.0, nan_2d_on=(), nan_3d_on=()):
        super().__init__()
        self.X = torch.as_tensor(joints_3d, dtype=torch.float64)
        self.gain = gain
        self.nan_2d_on, self.nan_3d_on = set(nan_2d_on), set(nan_3d_on)
        self.calls = 0

    def forward_2d(
        self,
        images: torch.Tensor,
        P: torch.Tensor,
        flip_test: bool = False,
        decoding: str = "local",
    ) -> dict[str, torch.Tensor]:
        self.calls += 1
        B, V, _, h, w = images.shape
        uv = project(self.X, P.double())  # (B, V, J, 2) crop pixels
        centre = torch.tensor([w / 2, h / 2], dtype=torch.float64)  # geometry.crop_transform
        bounds_centre = (uv.amin(dim=-2, keepdim=True) + uv.amax(dim=-2, keepdim=True)) / 2
        uv = uv - (1 - self.gain) * (bounds_centre - centre)
        if self.calls in self.nan_2d_on:
            uv = torch.full_like(uv, math.nan)
        J = uv.shape[-2]
        return {
            "heatmaps": torch.zeros(B, V, J, 1, 1),
            "joints_2d": uv.float(),
            "confidence": torch.ones(B, V, J),
        }

    def triangulate(self, joints_2d, confidence, P) -> tuple[torch.Tensor, torch.Tensor]:
        points, valid = triangulate(joints_2d.double(), P.double(), confidence.double())
        if self.calls in self.nan_3d_on:
            return torch.full_like(points, math.nan), torch.ones_like(valid)
        return points, valid


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    lo, hi = np.maximum(a[..., :2], b[..., :2]), np.minimum(a[..., 2:], b[..., 2:])
    inter = np.prod(np.clip(hi - lo, 0, None), axis=-1)
    area = np.prod(a[..., 2:] - a[..., :2], axis=-1) + np.prod(b[..., 2:] - b[..., :2], axis=-1)
    return inter / (area - inter)


def mpjpe(pose, pair) -> float:
    return float(np.linalg.norm(pose.joints_3d - pair.joints_3d, axis=-1).mean())


@pytest.fixture
def oracle_estimator(fixture_checkpoint, monkeypatch):
    """``make(locator_boxes (2, 4), **oracle_kwargs)`` -> estimator on conftest's pair whose
    locator returns ``locator_boxes`` (score 1) and whose pose network is the oracle. Box and
    joint stereo matching are off: these tests follow the boxes and the network's output."""

    def make(pair, locator_boxes: np.ndarray, **oracle_kwargs) -> StereoPoseEstimator:
        est = StereoPoseEstimator.from_checkpoint(
            fixture_checkpoint, "cpu", stereo_box_matching=False, joint_stereo_matching=False
        )
        est.pose_net = CropBiasedOracle(pair.joints_3d, **oracle_kwargs)
        patch_locator(monkeypatch, est, locator_boxes)
        return est

    return make


def estimate(est: StereoPoseEstimator, pair, refine: int):
    est.refine_iterations = refine
    return est.estimate(pair.left, pair.right, pair.P_left, pair.P_right)


def test_zero_passes_are_the_single_pass_pipeline(fixture_checkpoint, synthetic_stereo_pair):
    """refine_iterations 0 (the default) is bit for bit the locate -> crop -> network -> DLT
    pipeline, written out here independently."""
    pair = synthetic_stereo_pair
    est = StereoPoseEstimator.from_checkpoint(fixture_checkpoint, "cpu", stereo_box_matching=False)
    assert est.refine_iterations == 0 == est.settings["refine_iterations"]
    pose = est.estimate(pair.left, pair.right, pair.P_left, pair.P_right)
    assert pose.refined == 0 and "refinement" not in pose.timings

    boxes, _ = est.locate([pair.left, pair.right])
    P = np.stack([pair.P_left, pair.P_right])
    settings = est.settings
    regions = crop_regions(
        boxes, P, pair.left.shape[0], settings["crop_scale"], settings["min_box_fraction"]
    )
    crops, P_crop, A = crop_views([pair.left, pair.right], P, regions, est.crop_size)
    with torch.inference_mode():
        x = est._to_tensor(list(crops), "pose").unflatten(0, (1, 2))
        P_t = torch.as_tensor(P_crop, dtype=torch.float32).view(1, 2, 3, 4)
        out = est.pose_net.forward_2d(x, P_t, decoding=est.heatmap_decoding)
        X, valid = est.pose_net.triangulate(out["joints_2d"], out["confidence"], P_t)
    np.testing.assert_array_equal(pose.box, boxes)
    np.testing.assert_array_equal(pose.crop_boxes, regions)
    np.testing.assert_array_equal(pose.joints_3d, X.double().numpy()[0])
    np.testing.assert_array_equal(pose.valid, valid.numpy()[0])
    np.testing.assert_array_equal(
        pose.view_confidence, out["confidence"].float().numpy().astype(np.float64)[0]
    )
    uv = out["joints_2d"].float().numpy().astype(np.float64)[0]
    for v in range(2):
        inv = np.linalg.inv(A[v])
        np.testing.assert_array_equal(
            pose.joints_2d_detected[v], uv[v] @ inv[:2, :2].T + inv[:2, 2]
        )


def test_refinement_makes_inconsistent_boxes_consistent(oracle_estimator, synthetic_stereo_pair):
    pair = synthetic_stereo_pair
    # Locator: right box 14 px too far right and 1.4 x too large (left box right).
    bad = pair.box.copy()
    centre, half = (bad[1, :2] + bad[1, 2:]) / 2 + [14.0, 0.0], (bad[1, 2:] - bad[1, :2]) / 2
    bad[1] = np.concatenate([centre - 1.4 * half, centre + 1.4 * half])
    est = oracle_estimator(pair, bad, gain=0.5)
    first = estimate(est, pair, 0)
    once = estimate(est, pair, 1)
    thrice = estimate(est, pair, 3)
    assert (first.refined, once.refined, thrice.refined) == (0, 1, 3)
    # The crop offset breaks the depth; each pass halves the offset (oracle gain 0.5).
    e0, e1, e3 = mpjpe(first, pair), mpjpe(once, pair), mpjpe(thrice, pair)
    assert e0 > 0.1
    assert e1 < 0.65 * e0 and e3 < 0.2 * e0
    # The boxes move toward the consistent ones (conftest's: the true joints' bounds + 15 px).
    iou0, iou1 = box_iou(first.box, pair.box), box_iou(once.box, pair.box)
    assert iou1[1] > iou0[1] + 0.15 and iou1.min() > 0.8
    assert box_iou(thrice.box, pair.box).min() > 0.85
    # The crops keep the estimator's rules: one side, same rows for the rectified pair.
    sides = once.crop_boxes[:, 2] - once.crop_boxes[:, 0]
    assert sides[0] == pytest.approx(sides[1])
    np.testing.assert_allclose(once.crop_boxes[0, [1, 3]], once.crop_boxes[1, [1, 3]])
    # Timings stay consistent and count the extra pass.
    for pose in (once, thrice):
        parts = sum(pose.timings[k] for k in TIMING_KEYS if k != "total")
        assert parts == pytest.approx(pose.timings["total"], rel=1e-6)
        assert 0 <= pose.timings["refinement"] <= pose.timings["total"]
    assert est.pose_net.calls == 1 + 2 + 4


def test_consistent_boxes_stay_unchanged(oracle_estimator, synthetic_stereo_pair):
    """Boxes centred on the person in both views: the biased oracle is exact, refinement keeps
    the result (to float32 2D rounding) and its boxes are the joints' bounds plus the margin."""
    pair = synthetic_stereo_pair
    est = oracle_estimator(pair, pair.box, gain=0.5)
    first, once = estimate(est, pair, 0), estimate(est, pair, 1)
    assert mpjpe(first, pair) < 1e-3 and once.refined == 1
    np.testing.assert_allclose(once.joints_3d, first.joints_3d, atol=1e-3)
    lo, hi = pair.joints_2d.min(axis=1), pair.joints_2d.max(axis=1)
    margin = estimator_module.REFINE_BOX_MARGIN * (hi - lo).max(axis=1, keepdims=True)
    np.testing.assert_allclose(once.box, np.concatenate([lo - margin, hi + margin], 1), atol=0.05)


@pytest.mark.parametrize(
    ("oracle_kwargs", "calls"),
    [
        ({"nan_2d_on": {1}}, 1),  # pass 1 NaN 2D: no valid joint, nothing to refine
        ({"nan_3d_on": {1}}, 1),  # pass 1 NaN 3D flagged valid: no usable joint
        ({"nan_2d_on": {2}}, 2),  # refined pass NaN 2D: fewer valid joints, dropped
        ({"nan_3d_on": {2}}, 2),  # refined pass non-finite joints: dropped
    ],
)
def test_bad_passes_fall_back(oracle_estimator, synthetic_stereo_pair, oracle_kwargs, calls):
    pair = synthetic_stereo_pair
    reference = oracle_estimator(pair, pair.box, gain=0.5, **oracle_kwargs)
    expected = estimate(reference, pair, 0)
    est = oracle_estimator(pair, pair.box, gain=0.5, **oracle_kwargs)
    pose = estimate(est, pair, 1)
    assert pose.refined == 0 and pose.detected and est.pose_net.calls == calls
    np.testing.assert_array_equal(pose.joints_3d, expected.joints_3d)
    np.testing.assert_array_equal(pose.box, expected.box)
    np.testing.assert_array_equal(pose.valid, expected.valid)


def test_degenerate_reprojections_are_not_used(oracle_estimator, synthetic_stereo_pair):
    """3D joints whose projections leave the image, or collapse to one point: no refinement."""
    pair = synthetic_stereo_pair
    est = oracle_estimator(pair, pair.box)
    far = pair.joints_3d + np.array([6.0, 0.0, 0.0])  # projects about 1000 px right of the image
    est.pose_net = CropBiasedOracle(far)
    pose = estimate(est, pair, 1)
    assert pose.refined == 0 and pose.detected
    point = np.repeat(pair.joints_3d[6:7], len(pair.joints_3d), axis=0)  # all at the pelvis
    est.pose_net = CropBiasedOracle(point)
    pose = estimate(est, pair, 1)
    assert pose.refined == 0 and pose.detected
    assert est.pose_net.calls == 1  # no second network pass was even run


def test_batch_with_mixed_outcomes(oracle_estimator, synthetic_stereo_pair):
    pair = synthetic_stereo_pair
    est = oracle_estimator(pair, pair.box, gain=0.5)
    est.refine_iterations = 1
    flipped = pair.left[::-1].copy()  # same locator boxes, same oracle: still fine
    poses = est.estimate_batch([pair.left, flipped], [pair.right] * 2, [pair.P_left] * 2,
                               [pair.P_right] * 2)  # fmt: skip
    assert [p.refined for p in poses] == [1, 1]
    assert poses[0].timings["batch_size"] == 2 and "refinement" in poses[0].timings


def test_random_network_does_not_crash(fixture_checkpoint, synthetic_stereo_pair):
    """The random fixture network (most joints invalid, boxes noise) with refinement."""
    pair = synthetic_stereo_pair
    est = StereoPoseEstimator.from_checkpoint(fixture_checkpoint, "cpu", refine_iterations=2)
    pose = est.estimate(pair.left, pair.right, pair.P_left, pair.P_right)
    assert pose.detected and 0 <= pose.refined <= 2
    P = np.stack([pair.P_left, pair.P_right])
    np.testing.assert_allclose(pose.joints_2d, project(pose.joints_3d[None], P), atol=1e-9)


def test_settings_plumbing(fixture_checkpoint):
    system, _ = load_model(fixture_checkpoint, expect="system")
    system.config["estimator"]["refine_iterations"] = 2  # a checkpoint that carries it
    assert StereoPoseEstimator(system, "cpu").refine_iterations == 2
    assert StereoPoseEstimator(system, "cpu", refine_iterations=0).refine_iterations == 0
    est = StereoPoseEstimator.from_checkpoint(fixture_checkpoint, "cpu", refine_iterations=3)
    assert est.refine_iterations == 3 == est.settings["refine_iterations"]
    for bad in (-1, MAX_REFINE_ITERATIONS + 1, 1.5, True, "1"):
        with pytest.raises(ValueError, match="refine_iterations"):
            StereoPoseEstimator.from_checkpoint(fixture_checkpoint, "cpu", refine_iterations=bad)
        with pytest.raises(ValueError, match="refine_iterations"):
            est.refine_iterations = bad
    assert est.refine_iterations == 3
    assert MAX_REFINE_ITERATIONS == estimator_module.MAX_REFINE_ITERATIONS


def test_node_parameter():
    assert NodeConfig().refine_iterations == 0
    assert validate_config({"refine_iterations": 2}, check_files=False).refine_iterations == 2
    for bad in (-1, MAX_REFINE_ITERATIONS + 1, 1.0, True, "1"):
        with pytest.raises(ConfigError, match="refine_iterations"):
            validate_config({"refine_iterations": bad}, check_files=False)
    # Applied to the estimator (at start and on `ros2 param set`); test doubles without the
    # attribute are left alone.
    node = SimpleNamespace(estimator=SimpleNamespace(refine_iterations=0))
    StereoPose3DNode._apply_estimator_config(node, NodeConfig(refine_iterations=1))
    assert node.estimator.refine_iterations == 1
    node = SimpleNamespace(estimator=object())
    StereoPose3DNode._apply_estimator_config(node, NodeConfig(refine_iterations=1))


def test_eval_refine_option(fixture_checkpoint, tmp_path):
    from test_train import fabricate_stereo_dataset

    from training.evaluate import add_arguments, main

    data = fabricate_stereo_dataset(tmp_path / "val", "val", 2, 2)
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    out = tmp_path / "eval"
    args = parser.parse_args([
        "--ckpt", str(fixture_checkpoint), "--name", "cdr", "--data", str(data), "--out",
        str(out), "--figures", "0", "--max-samples", "2", "--device", "cpu", "--paths", "full",
        "--postprocess", "none", "--refine", "1",
    ])  # fmt: skip
    assert main(args) == 0
    report = json.loads((out / "eval.json").read_text())
    assert report["models"]["cdr"]["refine_iterations"] == 1
    assert any("refinement" in n for n in report["notes"])
    assert "| cdr | full+refine1 |" in (out / "eval.md").read_text()
    args.refine = -1
    assert main(args) == 2  # refused with a message, no traceback
    assert Path(out / "eval.json").is_file()


def test_node_parameter_reaches_the_estimator_at_start_and_at_run_time():
    import rclpy
    from rclpy.parameter import Parameter
    from test_node_harness import unique_domain

    estimator = SimpleNamespace(refine_iterations=5)
    ctx = rclpy.Context()
    rclpy.init(context=ctx, domain_id=unique_domain())
    try:
        node = StereoPose3DNode(
            estimator=estimator,
            context=ctx,
            parameter_overrides=[Parameter("refine_iterations", value=1)],
        )
        try:
            assert node.config.refine_iterations == 1 and estimator.refine_iterations == 1
            assert node.set_parameters([Parameter("refine_iterations", value=2)])[0].successful
            assert estimator.refine_iterations == 2
            bad = node.set_parameters([Parameter("refine_iterations", value=11)])[0]
            assert not bad.successful and "refine_iterations: must be" in bad.reason
            assert estimator.refine_iterations == 2
        finally:
            node.destroy_node()
    finally:
        ctx.try_shutdown()
