"""Metrics against hand-computed examples."""

import numpy as np
import pytest

from stereo_pose3d.metrics import mpjpe, mpjpe_2d, pa_mpjpe, pck3d, pckh, procrustes_align
from stereo_pose3d.skeleton import MPII


def test_mpjpe_absolute_and_root_relative():
    gt = np.zeros((1, 3, 3))
    gt[0, 1] = [1.0, 0, 0]
    gt[0, 2] = [0, 1.0, 0]
    pred = gt.copy()
    pred[0, :, 2] += 0.1  # everything 10 cm too far
    pred[0, 2, 0] += 0.3  # joint 2 also 30 cm to the side
    # per-joint errors: 100, 100, sqrt(0.1^2 + 0.3^2) = 316.23 mm
    assert mpjpe(pred, gt) == pytest.approx((100 + 100 + 1000 * np.sqrt(0.1)) / 3)
    # root-relative on joint 0 removes the common 10 cm: errors 0, 0, 300 mm
    assert mpjpe(pred, gt, root=0) == pytest.approx(100.0)
    assert mpjpe(pred, gt, mask=np.array([[True, True, False]])) == pytest.approx(100.0)
    assert np.isnan(mpjpe(pred, gt, mask=np.zeros((1, 3), bool)))


def test_pa_mpjpe_removes_similarity():
    rng = np.random.default_rng(0)
    gt = rng.normal(size=(4, 16, 3))
    angle = 0.7
    R = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    pred = 1.7 * gt @ R.T + np.array([0.3, -2.0, 5.0])
    assert pa_mpjpe(pred, gt) == pytest.approx(0.0, abs=1e-9)
    assert mpjpe(pred, gt) > 1000
    np.testing.assert_allclose(procrustes_align(pred, gt), gt, atol=1e-12)
    # A reflection cannot be undone by a rotation: error stays.
    assert pa_mpjpe(gt * np.array([-1, 1, 1]), gt) > 100


def test_mpjpe_2d_and_pck3d():
    gt = np.zeros((2, 2))
    pred = np.array([[3.0, 4.0], [0.0, 1.0]])
    assert mpjpe_2d(pred, gt) == pytest.approx(3.0)  # (5 + 1) / 2
    gt3 = np.zeros((4, 3))
    pred3 = np.array([[0.1, 0, 0], [0.15, 0, 0], [0.2, 0, 0], [0, 0.5, 0]])
    assert pck3d(pred3, gt3, threshold_mm=150) == pytest.approx(50.0)


def test_pckh_official_protocol_with_invisible_joints():
    n = 2
    gt = np.tile(np.arange(16, dtype=float)[None, :, None] * 10.0, (n, 1, 2))
    # Head box 30 x 40 px -> diagonal 50 -> head size 0.6 * 50 = 30 px -> threshold 15 px.
    head_boxes = np.array([[0, 0, 30, 40], [0, 0, 30, 40]], dtype=float)
    visible = np.ones((n, 16), dtype=bool)
    pred = gt.copy()
    rw, lw = MPII.index("right_wrist"), MPII.index("left_wrist")
    ra = MPII.index("right_ankle")
    head = MPII.index("head_top")
    pred[0, rw, 0] += 14.0  # inside (14 <= 15)
    pred[1, rw, 0] += 16.0  # outside
    pred[:, lw, 1] += 20.0  # both outside ...
    visible[1, lw] = False  # ... but the second one is invisible and not counted
    pred[0, head] += 100.0  # outside
    visible[0, head] = False  # invisible: does not count
    pred[:, ra, 0] += 4.0  # inside 0.5 but outside 0.1 (3 px)
    result = pckh(pred, gt, visible, head_boxes)
    assert result.per_joint[rw] == pytest.approx(50.0)
    assert result.per_joint[lw] == pytest.approx(0.0)
    assert result.joint_count[lw] == 1
    assert result.per_joint[head] == pytest.approx(100.0)
    assert result.table["Wrist"] == pytest.approx(25.0)
    assert result.table["Head"] == pytest.approx(100.0)
    assert result.table["Ankle"] == pytest.approx(100.0)
    # Mean: counts-weighted over the 14 joints without pelvis and thorax.
    counts = visible.sum(0).astype(float)
    counts[[MPII.index("pelvis"), MPII.index("thorax")]] = 0
    expected_hits = counts.sum() - 1 - 1  # one right-wrist miss, one left-wrist miss
    assert result.table["Mean"] == pytest.approx(100.0 * expected_hits / counts.sum())
    # At 0.1 (3 px): both right ankles and both right wrists miss too.
    expected_hits_01 = expected_hits - 2 - 1
    assert result.table["Mean@0.1"] == pytest.approx(100.0 * expected_hits_01 / counts.sum())
    assert "| Head | Shoulder |" in result.markdown()


def test_pckh_rejects_bad_inputs():
    with pytest.raises(ValueError, match="16, 2"):
        pckh(np.zeros((1, 15, 2)), np.zeros((1, 15, 2)), np.ones((1, 15)), np.ones((1, 4)))
    with pytest.raises(ValueError, match="positive"):
        pckh(np.zeros((1, 16, 2)), np.zeros((1, 16, 2)), np.ones((1, 16)), np.zeros((1, 4)))
