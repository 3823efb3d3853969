"""Evaluation (training/evaluate.py), post-processing (training/postprocess.py) and figures.

The metric code is checked against hand-computed values on fabricated predictions; the command
runs end to end on a few synthetic samples with the tiny fixture checkpoint (conftest).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from stereo_pose3d.geometry import project, triangulate_dlt
from stereo_pose3d.skeleton import MPII
from training import postprocess
from training.evaluate import (
    GroundTruth,
    Predictions,
    action_of,
    add_arguments,
    evaluate_predictions,
    main,
    markdown_report,
    postprocess_variants,
    triangulation_floor,
)

BODY = np.array(
    [
        [-0.12, 0.85, 0.00], [-0.12, 0.45, 0.02], [-0.11, 0.00, 0.00], [0.11, 0.00, 0.00],
        [0.13, 0.45, 0.02], [0.14, 0.85, 0.00], [0.00, 0.00, 0.00], [0.00, -0.50, 0.00],
        [0.00, -0.60, 0.00], [0.00, -0.85, 0.00], [-0.45, -0.25, 0.05], [-0.35, -0.40, 0.03],
        [-0.19, -0.50, 0.00], [0.19, -0.50, 0.00], [0.33, -0.30, 0.04], [0.30, -0.05, 0.08],
    ]
)  # fmt: skip


def rig(f: float = 500.0, baseline: float = 0.12) -> np.ndarray:
    K = np.array([[f, 0, 320.0], [0, f, 240.0], [0, 0, 1]])
    P = np.stack([np.hstack([K, np.zeros((3, 1))])] * 2)
    P[1, 0, 3] = -f * baseline
    return P


def make_gt(depths=(2.5, 3.5, 4.5, 5.5), baselines=(0.1, 0.1, 0.2, 0.2)) -> GroundTruth:
    n = len(depths)
    X = np.stack([BODY + np.array([0.1, 0.2, z]) for z in depths])
    P = np.stack([rig(baseline=b) for b in baselines])
    uv = project(X[:, None], P)
    return GroundTruth(
        joints_3d=X, joints_2d=uv, visibility=np.ones((n, 2, 16), bool), P=P,
        box=np.concatenate([uv.min(2), uv.max(2)], -1), baseline=np.array(baselines),
        sequence=["walk_000", "walk_000", "jump_001", "jump_001"][:n], frame=np.arange(n),
        time=np.arange(n) / 30.0, valid_3d=np.ones((n, 16), bool),
    )  # fmt: skip


def make_pred(gt: GroundTruth, X: np.ndarray, uv: np.ndarray | None = None) -> Predictions:
    return Predictions(
        joints_3d=X, joints_2d=gt.joints_2d.copy() if uv is None else uv,
        reprojected_2d=project(X[:, None], gt.P), confidence=np.ones((len(gt), 2, 16)),
        detected=np.ones(len(gt), bool), seconds=np.full(len(gt), 0.01),
    )  # fmt: skip


def test_metrics_match_hand_computed_values():
    gt = make_gt()
    # Every joint 10 mm off along x: absolute 10 mm, root-relative 0, PA 0.
    shifted = gt.joints_3d + np.array([0.010, 0.0, 0.0])
    uv = gt.joints_2d + np.array([3.0, 4.0])  # 5 px in both views
    res = evaluate_predictions(gt, make_pred(gt, shifted, uv), MPII)
    assert res["mpjpe_mm"] == pytest.approx(10.0)
    assert res["mpjpe_rr_mm"] == pytest.approx(0.0, abs=1e-9)
    assert res["pa_mpjpe_mm"] == pytest.approx(0.0, abs=1e-6)
    assert res["pck3d_150"] == pytest.approx(100.0)
    assert res["err2d_px"] == pytest.approx([5.0, 5.0])
    assert res["detection_rate"] == 1.0 and res["detected"] == 4
    assert res["per_joint"]["left_wrist"]["mpjpe_mm"] == pytest.approx(10.0)
    assert set(res["per_action"]) == {"walk", "jump"}
    assert res["per_action"]["walk"]["n"] == 2
    assert [b["bin"] for b in res["by_distance"]] == ["2-3", "3-4", "4-5", "5-6"]
    assert [(b["bin"], b["samples"]) for b in res["by_baseline"]] == [("0.10", 2), ("0.20", 2)]
    assert res["seconds_per_frame"] == pytest.approx(0.01)

    # One joint (left wrist) 30 mm off: abs and root-relative MPJPE 30/16 mm; the root itself
    # 40 mm off moves all 15 other joints in root-relative terms: 15 * 40 / 16.
    X = gt.joints_3d.copy()
    X[:, MPII.index("left_wrist"), 2] += 0.030
    res = evaluate_predictions(gt, make_pred(gt, X), MPII)
    assert res["mpjpe_mm"] == pytest.approx(30 / 16)
    assert res["mpjpe_rr_mm"] == pytest.approx(30 / 16)
    assert res["per_joint"]["left_wrist"]["mpjpe_mm"] == pytest.approx(30.0)
    X = gt.joints_3d.copy()
    X[:, MPII.root] += [0.0, 0.040, 0.0]
    res = evaluate_predictions(gt, make_pred(gt, X), MPII)
    assert res["mpjpe_mm"] == pytest.approx(40 / 16)
    assert res["mpjpe_rr_mm"] == pytest.approx(15 * 40 / 16)
    assert res["pck3d_150"] == pytest.approx(100.0)


def test_median_mpjpe_ignores_one_blown_up_sample():
    gt = make_gt()
    X = gt.joints_3d.copy()
    X[0] += [0.0, 0.0, 0.020]  # 20 mm
    X[1] += [0.0, 0.0, 0.030]  # 30 mm
    X[2] += [0.0, 0.0, 0.040]  # 40 mm
    X[3] += [0.0, 0.0, 5.000]  # a depth blow-up
    res = evaluate_predictions(gt, make_pred(gt, X), MPII)
    assert res["mpjpe_mm"] == pytest.approx((20 + 30 + 40 + 5000) / 4)
    assert res["mpjpe_median_mm"] == pytest.approx(35.0)
    assert res["per_action"]["walk"]["mpjpe_median_mm"] == pytest.approx(25.0)


def result_pred(gt: GroundTruth, uv_result: np.ndarray) -> Predictions:
    """Predictions whose 3D result projects to ``uv_result``; the detections are the ground
    truth's (the disparity error is measured on the result, not on the detections)."""
    pred = make_pred(gt, gt.joints_3d)
    pred.reprojected_2d = uv_result
    return pred


def test_disparity_error_of_rectified_pairs():
    gt = make_gt()
    # Same shift in both views: 5 px 2D error each, zero disparity error.
    res = evaluate_predictions(gt, result_pred(gt, gt.joints_2d + np.array([3.0, 4.0])), MPII)
    assert res["disparity_err_px"] == pytest.approx(0.0, abs=1e-9)
    # Left +1.5 px, right -0.5 px in x: disparity +2 px for every joint; one joint 4 px the
    # other way (left -2 px) -> |d| = (15 * 2 + 1 * 2) / 16, bias (15 * 2 - 1 * 2) / 16.
    uv = gt.joints_2d.copy()
    uv[:, 0, :, 0] += 1.5
    uv[:, 1, :, 0] -= 0.5
    uv[:, 0, 3, 0] -= 4.0
    res = evaluate_predictions(gt, result_pred(gt, uv), MPII)
    assert res["disparity_err_px"] == pytest.approx(32 / 16)
    assert res["disparity_bias_px"] == pytest.approx(28 / 16)
    # Measured on the result: detections with that disparity error but an exact result (joint
    # stereo matching corrected it) have none.
    res = evaluate_predictions(gt, make_pred(gt, gt.joints_3d, uv), MPII)
    assert res["disparity_err_px"] == pytest.approx(0.0, abs=1e-6)
    # Joints hidden in one view, joints the model marked invalid (NaN) and non-rectified pairs
    # do not count.
    gt.visibility[:, 1, 3] = False
    res = evaluate_predictions(gt, result_pred(gt, uv), MPII)
    assert res["disparity_err_px"] == pytest.approx(2.0)
    uv_far = uv.copy()
    uv_far[:, 1, 5, 0] -= 300.0  # a wild joint ...
    pred = result_pred(gt, uv_far)
    pred.joints_3d[:, 5] = np.nan  # ... that the model flagged invalid
    assert evaluate_predictions(gt, pred, MPII)["disparity_err_px"] == pytest.approx(2.0)
    gt.P[:, 1, 1, 3] = 5.0  # the right view's rows move: not a rectified pair any more
    res = evaluate_predictions(gt, result_pred(gt, uv), MPII)
    assert np.isnan(res["disparity_err_px"])


def test_missed_detections_and_invalid_joints_are_excluded():
    gt = make_gt()
    gt.valid_3d[0, 0] = False
    X = gt.joints_3d.copy()
    X[0, 0] += 5.0  # huge error on an invalid joint: not counted
    pred = make_pred(gt, X)
    pred.detected[3] = False
    pred.joints_3d[3] = np.nan
    res = evaluate_predictions(gt, pred, MPII)
    assert res["detected"] == 3 and res["detection_rate"] == pytest.approx(0.75)
    assert res["mpjpe_mm"] == pytest.approx(0.0, abs=1e-9)
    assert res["per_action"]["jump"]["n"] == 1 and res["per_action"]["jump"]["samples"] == 2


def test_triangulation_floor():
    gt = make_gt()
    floor = triangulation_floor(gt, MPII, sigmas=(1e-9, 0.5, 2.0), seed=0)
    assert floor["1e-09"]["mpjpe_mm"] < 1e-3
    assert floor["0.5"]["mpjpe_mm"] < floor["2"]["mpjpe_mm"]
    # Depth noise grows with distance: the far bin is worse than the near one.
    near, far = floor["2"]["by_distance"][0], floor["2"]["by_distance"][-1]
    assert far["mpjpe_mm"] > near["mpjpe_mm"]
    # Disparity noise -> depth noise ~ Z^2 / (f B) * sigma * sqrt(2): checks the scale.
    one = make_gt(depths=(4.0,) * 200, baselines=(0.12,) * 200)
    one.sequence = [f"s_{i:03d}" for i in range(200)]
    res = triangulation_floor(one, MPII, sigmas=(1.0,), seed=1)["1"]
    expected_depth_std = 4.0**2 / (500 * 0.12) * np.sqrt(2)  # m
    assert 0.4 * expected_depth_std * 1000 < res["mpjpe_mm"] < 1.2 * expected_depth_std * 1000


def test_action_names():
    assert action_of("dance_a_003") == "dance_a"
    assert action_of("Kata_3") == "Kata"
    assert action_of("walk") == "walk"


def test_bone_refinement_cuts_depth_noise():
    P = rig(f=500.0, baseline=0.12)
    X = BODY + np.array([0.0, 0.0, 4.0])
    rng = np.random.default_rng(0)
    n = 20
    Ps = np.broadcast_to(P, (n, 2, 3, 4)).copy()
    uv = project(np.broadcast_to(X, (n, 1, 16, 3)), Ps) + rng.normal(0, 1.0, (n, 2, 16, 2))
    noisy = triangulate_dlt(torch.from_numpy(uv), torch.from_numpy(Ps)).numpy()
    lengths = postprocess.bone_vectors(X, MPII.bones)
    refined = postprocess.refine_bone_lengths(noisy, MPII.bones, lengths, uv, Ps)
    before = np.linalg.norm(noisy - X, axis=-1).mean()
    after = np.linalg.norm(refined - X, axis=-1).mean()
    assert after < 0.6 * before
    # Refinement keeps the bone lengths it was given (soft constraint, within 2 cm).
    assert np.abs(postprocess.bone_vectors(refined, MPII.bones) - lengths).max() < 0.02
    # NaN poses pass through.
    noisy[0] = np.nan
    assert np.isnan(postprocess.refine_bone_lengths(noisy, MPII.bones, lengths)[0]).all()


def test_temporal_filters():
    t = np.arange(120) / 30.0
    truth = np.stack([0.5 * t, np.zeros_like(t), 3.0 + 0 * t], -1)[:, None, :]  # 0.5 m/s
    rng = np.random.default_rng(0)
    noisy = truth + rng.normal(0, 0.03, truth.shape)
    err = np.linalg.norm(noisy - truth, axis=-1)[30:].mean()
    kf = postprocess.kalman_cv_sequence(noisy, t, accel_std=1.0, meas_std=0.03)
    rts = postprocess.kalman_cv_sequence(noisy, t, accel_std=1.0, meas_std=0.03, smooth=True)
    euro = postprocess.one_euro_sequence(noisy, t, min_cutoff=1.0, beta=0.5)
    for out in (kf, rts, euro):
        assert np.linalg.norm(out - truth, axis=-1)[30:].mean() < err
    # A missing frame is predicted through (constant velocity), and the filter carries on.
    gap = noisy.copy()
    gap[50] = np.nan
    out = postprocess.kalman_cv_sequence(gap, t)
    assert np.linalg.norm(out[50] - truth[50]) < 0.05 and np.isfinite(out[51]).all()
    f = postprocess.OneEuroFilter()
    assert np.allclose(f(np.ones(3), 0.0), 1.0) and np.isnan(f(np.full(3, np.nan), 0.1)).all()


def test_postprocess_variants_and_report():
    gt = make_gt(depths=np.full(8, 3.0), baselines=np.full(8, 0.12))
    gt.sequence = ["walk_000"] * 8
    gt.time = np.arange(8) / 30.0
    rng = np.random.default_rng(0)
    uv = gt.joints_2d + rng.normal(0, 1.0, gt.joints_2d.shape)
    X = triangulate_dlt(torch.from_numpy(uv), torch.from_numpy(gt.P)).numpy()
    pred = make_pred(gt, X, uv)
    prior = postprocess.bone_vectors(BODY, MPII.bones)
    variants, notes = postprocess_variants(gt, pred, MPII, bone_prior=prior)
    assert not notes
    assert set(variants) == {"none", "bone_seq", "bone_prior", "one_euro", "kalman_cv",
                             "bone_seq+kalman_cv"}  # fmt: skip
    none = evaluate_predictions(gt, variants["none"], MPII)["mpjpe_mm"]
    assert evaluate_predictions(gt, variants["bone_prior"], MPII)["mpjpe_mm"] < none
    # Temporal variants are scored on the joints of their input: a gap stays a gap (the Kalman
    # filter would predict through it) and no other joint is lost (a joint missing in the first
    # frame does not blank the others).
    X_gap = X.copy()
    X_gap[0, 3] = np.nan
    X_gap[4, 5] = np.nan
    gapped, _ = postprocess_variants(gt, make_pred(gt, X_gap, uv), MPII)
    for name in ("one_euro", "kalman_cv"):
        finite = np.isfinite(gapped[name].joints_3d).all(-1)
        np.testing.assert_array_equal(finite, np.isfinite(X_gap).all(-1))
    gt.time = np.arange(8) * 1.0  # sparse frames: temporal filters are skipped with a note
    variants, notes = postprocess_variants(gt, pred, MPII)
    assert "kalman_cv" not in variants and "not continuous" in notes[0]
    report = {
        "data": {"path": "x", "samples": 8, "sequences": 1, "skeleton": "mpii16",
                 "joint_names": list(MPII.joint_names), "source": "synthetic", "split": "val"},
        "out": "x",
        "floor": triangulation_floor(gt, MPII, (1.0,)),
        "models": {"m": {"paths": {"full": evaluate_predictions(gt, pred, MPII)},
                         "postprocess": {"none": evaluate_predictions(gt, pred, MPII)}}},
        "notes": notes,
    }  # fmt: skip
    text = markdown_report(report)
    assert "| m | full | 8/8 |" in text and "floor: GT 2D + 1 px" in text
    assert "## MPJPE by distance" in text and "not continuous" in text


@pytest.fixture(scope="module")
def tiny_set(tmp_path_factory) -> Path:
    from test_train import fabricate_stereo_dataset

    return fabricate_stereo_dataset(tmp_path_factory.mktemp("eval") / "val", "val", 4, 3)


def test_eval_command_end_to_end(tiny_set, fixture_checkpoint, tmp_path, capsys):
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    out = tmp_path / "eval"
    args = parser.parse_args([
        "--ckpt", str(fixture_checkpoint), "--name", "cdr", "--compare", str(fixture_checkpoint),
        "--name", "other", "--data", str(tiny_set), "--out", str(out), "--figures", "1",
        "--max-samples", "3", "--device", "cpu",
    ])  # fmt: skip
    assert main(args) == 0
    report = json.loads((out / "eval.json").read_text())
    assert report["data"]["samples"] == 3
    assert set(report["models"]) == {"cdr", "other"}
    for path in ("full", "gt-box"):
        r = report["models"]["cdr"]["paths"][path]
        assert r["detected"] == 3 and len(r["err2d_px"]) == 2 and len(r["per_joint"]) == 16
    assert set(report["floor"]) == {"0.25", "0.5", "1"}
    assert report["floor"]["0.25"]["mpjpe_mm"] < report["floor"]["1"]["mpjpe_mm"]
    assert "none" in report["models"]["cdr"]["postprocess"]
    # The same checkpoint twice gives the same numbers.
    a, b = report["models"]["cdr"]["paths"]["full"], report["models"]["other"]["paths"]["full"]
    assert a["mpjpe_mm"] == pytest.approx(b["mpjpe_mm"])
    names = {Path(f).name for f in report["figures"]}
    assert {"per_joint.png", "by_distance.png"} <= names
    assert any(n.startswith("compare_") for n in names)
    assert any(n.startswith("overlay_") for n in names)
    assert any(n.startswith("skeleton3d_") for n in names)
    for f in report["figures"]:
        assert Path(f).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (out / "eval.md").read_text()
    assert "floor: GT 2D + 0.25 px" in md and "| cdr | gt-box |" in md
    assert "MPJPE" in capsys.readouterr().out


def test_full_path_with_tracking_runs_pairs_in_order_and_resets_per_sequence(
    fixture_checkpoint, monkeypatch
):
    """Tracking is sequential: with the setting on, the full path runs one pair at a time and
    resets the tracker when the sequence changes (also across batches); off: one batch."""
    from training.evaluate import ModelRunner

    runner = ModelRunner(fixture_checkpoint, device="cpu", estimator_settings={"tracking": True})
    calls: list[str] = []
    real_estimate = runner.estimator.estimate
    monkeypatch.setattr(runner.estimator, "reset", lambda: calls.append("reset"))
    monkeypatch.setattr(
        runner.estimator, "estimate", lambda *a: calls.append("estimate") or real_estimate(*a)
    )
    monkeypatch.setattr(
        runner.estimator, "estimate_batch", lambda *a: pytest.fail("batched while tracking")
    )
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (120, 160, 3), dtype=np.uint8) for _ in range(3)]
    P = np.stack([rig(f=150.0)] * 3)
    out = Predictions.empty(5, 16)
    runner.predict_full(images, images, P, out, np.arange(3), ["a", "a", "b"])
    runner.predict_full(images[:2], images[:2], P[:2], out, np.arange(3, 5), ["b", "c"])
    assert calls == ["reset", "estimate", "estimate", "reset", "estimate", "estimate", "reset",
                     "estimate"]  # fmt: skip
    assert np.isfinite(out.seconds).all()


def test_3d_figure_draws_the_joints_that_are_left():
    """A pose with joints left out (depth gate: NaN) is still drawn, without those joints'
    bones; a pose with no joint at all draws only the ground truth."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from training.figures import _draw_3d

    pred = BODY.copy()
    pred[MPII.index("left_wrist")] = np.nan
    missing = sum(MPII.index("left_wrist") in bone for bone in MPII.bones)
    for X, expected in ((pred, 2 * len(MPII.bones) - missing), (np.full_like(BODY, np.nan),
                                                              len(MPII.bones))):  # fmt: skip
        fig = plt.figure()
        ax = fig.add_subplot(111, projection="3d")
        _draw_3d(ax, X, BODY, MPII, "t")
        assert len(ax.lines) == expected
        plt.close(fig)


def test_estimator_overrides_scoped_to_a_model_name():
    from training.evaluate import _estimator_settings, _items_for

    items = ["max_depth_spread=0", "b:flip_test=true", "a:joint_stereo_matching=false"]
    expected_a = ["max_depth_spread=0", "joint_stereo_matching=false"]
    assert _items_for(items, "a", ["a", "b"]) == expected_a
    assert _estimator_settings(_items_for(items, "b", ["a", "b"])) == {
        "max_depth_spread": 0,
        "flip_test": True,
    }
    assert _items_for(["max_depth_spread=0"], None, []) == ["max_depth_spread=0"]
    with pytest.raises(ValueError, match="no model is named 'c'"):
        _items_for(["c:flip_test=true"], "a", ["a", "b"])
    with pytest.raises(ValueError, match="unknown estimator setting 'flipp_test'"):
        _estimator_settings(["flipp_test=true"])
