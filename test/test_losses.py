"""Losses against hand-computed values, masking, and gradients."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from training.data.heatmaps import (
    gaussian_heatmaps,
    heatmap_argmax,
    heatmap_to_crop,
)
from training.losses import (
    get_loss,
    heatmap_mse_loss,
    keypoint_l1_loss,
    keypoint_mse_loss,
    keypoint_mse_smooth_loss,
)


def _pair():
    # One sample, 3 joints, 2D. Errors: joint 0 (3, 4), joint 1 (0, 30), joint 2 (100, 0).
    pred = torch.tensor([[[3.0, 4.0], [0.0, 30.0], [100.0, 0.0]]])
    gt = torch.zeros_like(pred)
    return pred, gt


def test_l1_and_mse_hand_values():
    pred, gt = _pair()
    # all joints: sum |d| = 3 + 4 + 30 + 100 = 137 over D * J = 2 * 3
    assert keypoint_l1_loss(pred, gt).item() == pytest.approx(137 / 6)
    assert keypoint_mse_loss(pred, gt).item() == pytest.approx((9 + 16 + 900 + 10000) / 6)
    w = torch.tensor([[1.0, 0.0, 1.0]])
    assert keypoint_l1_loss(pred, gt, w).item() == pytest.approx((3 + 4 + 100) / 4)
    assert keypoint_mse_loss(pred, gt, w).item() == pytest.approx((9 + 16 + 10000) / 4)
    # no visible joint: 0, not NaN
    assert keypoint_mse_loss(pred, gt, torch.zeros(1, 3)).item() == 0.0


def test_smooth_mse_matches_reference_definition():
    pred, gt = _pair()
    soft = lambda e: e**0.1 * 400**0.9  # noqa: E731
    # squared errors per coordinate: 9, 16, 0, 900, 10000, 0; 900 and 10000 exceed 400.
    expected = (9 + 16 + 0 + soft(900.0) + soft(10000.0) + 0) / (2 * 3)
    assert keypoint_mse_smooth_loss(pred, gt).item() == pytest.approx(expected, rel=1e-6)
    # masking: joint 1 ignored
    w = torch.tensor([[1.0, 0.0, 1.0]])
    expected = (9 + 16 + soft(10000.0)) / (2 * 2)
    assert keypoint_mse_smooth_loss(pred, gt, w).item() == pytest.approx(expected, rel=1e-6)
    # continuous at the threshold, and below it equal to the plain MSE
    at = torch.tensor([[[20.0, 0.0]]])
    assert keypoint_mse_smooth_loss(at, torch.zeros_like(at)).item() == pytest.approx(200.0)
    small = torch.tensor([[[5.0, -7.0]]])
    assert keypoint_mse_smooth_loss(small, torch.zeros_like(small)).item() == pytest.approx(
        keypoint_mse_loss(small, torch.zeros_like(small)).item()
    )


def test_smooth_mse_scale_for_metres():
    # 0.1 m error -> 100 mm -> 10000 mm^2 per coordinate with scale=1000
    pred = torch.tensor([[[0.1, 0.0, 0.0]]])
    value = keypoint_mse_smooth_loss(pred, torch.zeros_like(pred), scale=1000.0).item()
    assert value == pytest.approx((10000**0.1 * 400**0.9) / 3, rel=1e-6)


def test_masked_nan_targets_and_finite_gradients():
    pred = torch.tensor([[[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]]], requires_grad=True)
    gt = torch.tensor([[[1.5, 2.0, 3.0], [float("nan")] * 3]])
    w = torch.tensor([[1.0, 0.0]])
    for name in ("l1", "mse", "mse_smooth"):
        loss = get_loss(name)(pred, gt, w)
        assert torch.isfinite(loss)
        (grad,) = torch.autograd.grad(loss, pred)
        assert torch.isfinite(grad).all()
        assert torch.all(grad[0, 1] == 0)
    # gradient of the smooth branch: d/dp (p^2)^0.1 * 400^0.9 at p = 100 (one coordinate of 3)
    p = torch.tensor([[[100.0, 0.0, 0.0]]], requires_grad=True)
    keypoint_mse_smooth_loss(p, torch.zeros_like(p)).backward()
    expected = 0.2 * 100.0 ** (0.2 - 1) * 400**0.9 / 3
    assert p.grad[0, 0, 0].item() == pytest.approx(expected, rel=1e-5)


def test_heatmap_mse_simple_baselines_definition():
    pred = torch.zeros(1, 2, 2, 2)
    target = torch.zeros(1, 2, 2, 2)
    pred[0, 0, 0, 0] = 1.0
    pred[0, 1, 1, 1] = 2.0
    # 0.5 * mean over 8 elements of squared error
    assert heatmap_mse_loss(pred, target).item() == pytest.approx(0.5 * (1 + 4) / 8)
    w = torch.tensor([[1.0, 0.0]])
    assert heatmap_mse_loss(pred, target, w).item() == pytest.approx(0.5 * 1 / 8)
    with pytest.raises(ValueError, match="weights"):
        heatmap_mse_loss(pred, target, torch.ones(2))


def test_gaussian_heatmap_targets():
    # crop px 4 u + 1.5 is heatmap cell u (cell centres; see training.data.heatmaps)
    joints = np.array([[101.5, 61.5], [10.0, 250.0], [400.0, 10.0], [30.0, 30.0]])
    vis = np.array([1, 1, 1, 0])
    hm, w = gaussian_heatmaps(joints, vis, (256, 256), (64, 64), sigma=2.0)
    assert hm.shape == (4, 64, 64) and hm.dtype == np.float32
    # peak of value 1 at cell (25, 15)
    assert hm[0, 15, 25] == pytest.approx(1.0)
    assert hm[0, 15, 25 + 2] == pytest.approx(math.exp(-4 / 8))
    assert hm[0, 15, 25 + 7] == 0.0  # beyond 3 sigma
    np.testing.assert_array_equal(w, [1, 1, 0, 0])  # far outside; invisible
    assert hm[2].max() == 0.0 and hm[3].max() == 0.0
    # sub-pixel centre: the weighted mean is the joint (up to the 3-sigma truncation, < 0.05 px)
    hm_sub, _ = gaussian_heatmaps(np.array([[101.0, 62.0]]), None, (256, 256), (64, 64))
    assert hm_sub.max() < 1.0
    ys, xs = np.mgrid[0:64, 0:64]
    centre = np.array([(hm_sub[0] * xs).sum(), (hm_sub[0] * ys).sum()]) / hm_sub[0].sum()
    np.testing.assert_allclose(heatmap_to_crop(centre, (256, 256), (64, 64)), [101, 62], atol=0.05)
    uv, peak = heatmap_argmax(hm)
    np.testing.assert_allclose(uv[0], [25, 15])
    assert peak[0] == pytest.approx(1.0)
    # Simple Baselines rounding: centre at the nearest cell ((101 - 1.5) / 4 = 24.875 -> 25,
    # (62 - 1.5) / 4 = 15.125 -> 15)
    hm_sb, _ = gaussian_heatmaps(np.array([[101.0, 62.0]]), None, subpixel=False)
    assert hm_sb[0, 15, 25] == pytest.approx(1.0)


def test_heatmap_convention_matches_the_models():
    import torch

    from stereo_pose3d.models.heatmaps import gaussian_heatmaps as model_targets

    joints = np.array([[101.0, 62.0], [37.3, 200.9]])
    ours, _ = gaussian_heatmaps(joints, None, (256, 256), (64, 64), sigma=2.0)
    theirs = model_targets(torch.tensor(joints), None, (64, 64), 4.0, 2.0).numpy()
    inside = ours > 0  # ours is truncated at 3 sigma
    np.testing.assert_allclose(ours[inside], theirs[inside], atol=1e-6)
    assert theirs[~inside].max() < 0.012


def test_unknown_loss_name():
    with pytest.raises(KeyError, match="unknown loss"):
        get_loss("huber")
