"""The 1-euro filter (stereo_pose3d.filters) and its tuning command (training.tune_temporal)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from stereo_pose3d.filters import OneEuroFilter, one_euro_sequence


def test_smooths_noise_at_rest_and_follows_motion() -> None:
    t = np.arange(150) / 30.0
    rng = np.random.default_rng(0)
    still = np.full((150, 1, 3), 3.0)
    noisy = still + rng.normal(0, 0.1, still.shape)
    out = one_euro_sequence(noisy, t, min_cutoff=0.5, beta=0.0)
    raw_err = np.abs(noisy - still)[30:].mean()
    assert np.abs(out - still)[30:].mean() < 0.4 * raw_err
    # A 1 m/s ramp: with beta the lag after it settles is small; without it, larger.
    ramp = np.stack([t, 0 * t, 3 + 0 * t], -1)[:, None]
    lag_fast = np.abs(one_euro_sequence(ramp, t, 0.5, beta=3.0) - ramp)[60:, 0, 0].mean()
    lag_slow = np.abs(one_euro_sequence(ramp, t, 0.5, beta=0.0) - ramp)[60:, 0, 0].mean()
    assert lag_fast < 0.5 * lag_slow and lag_slow == pytest.approx(1 / (2 * np.pi * 0.5), 0.2)


def test_missing_joints_do_not_block_the_others() -> None:
    f = OneEuroFilter(min_cutoff=1.0, beta=0.0)
    first = np.array([[1.0, 1.0, 1.0], [np.nan, np.nan, np.nan]])
    out = f(first, 0.0)
    np.testing.assert_array_equal(out[0], 1.0)  # observed from the first frame on
    assert np.isnan(out[1]).all()
    out = f(np.array([[2.0, 2.0, 2.0], [5.0, 5.0, 5.0]]), 1 / 30)
    assert 1.0 < out[0, 0] < 2.0  # blended with its state
    np.testing.assert_array_equal(out[1], 5.0)  # first observation: taken as is
    out = f(np.array([[np.nan] * 3, [6.0] * 3]), 2 / 30)
    assert np.isnan(out[0]).all() and 5.0 < out[1, 0] < 6.0


def test_gaps_replays_and_new_shapes_restart() -> None:
    f = OneEuroFilter(min_cutoff=0.5, beta=0.0, reset_after=0.3)
    f(np.zeros(3), 0.0)
    assert 0.0 < f(np.ones(3), 0.1)[0] < 1.0  # within reset_after: smoothed
    np.testing.assert_array_equal(f(np.full(3, 4.0), 0.5), 4.0)  # 0.4 s gap: restarts
    np.testing.assert_array_equal(f(np.full(3, 7.0), 0.2), 7.0)  # time went back: restarts
    np.testing.assert_array_equal(f(np.full((2, 3), 9.0), 0.3), 9.0)  # new shape: reset


@pytest.mark.parametrize(
    "kwargs", [{"min_cutoff": 0.0}, {"beta": -1.0}, {"d_cutoff": 0.0}, {"reset_after": 0.0}]
)
def test_rejects_bad_parameters(kwargs) -> None:
    with pytest.raises(ValueError):
        OneEuroFilter(**kwargs)


def test_tune_temporal_on_a_tiny_video(tmp_path: Path, make_fixture_checkpoint) -> None:
    from training.__main__ import main

    ckpt = make_fixture_checkpoint(score_threshold=0.0)  # random weights: always "someone"
    common = ["--frames", "8", "--frames-per-rig", "4", "--width", "160", "--height", "120"]
    common += ["--workers", "1", "--no-progress"]
    video = ["--fps", "30", *common]
    assert main(["synth", "--out", str(tmp_path / "tune"), "--split", "train", *video]) == 0
    assert main(["synth", "--out", str(tmp_path / "check"), "--split", "val", *video]) == 0
    assert main(["synth", "--out", str(tmp_path / "snap"), "--split", "val", *common]) == 0
    out = tmp_path / "out"
    args = ["tune-temporal", "--ckpt", str(ckpt), "--data", str(tmp_path / "tune"), "--out"]
    assert main([*args, str(out), "--check", str(tmp_path / "check")]) == 0
    report = json.loads((out / "tune_temporal.json").read_text())
    assert report["frame_rate_hz"] == pytest.approx(30.0, rel=1e-3)
    raw = [r for r in report["grid"] if r["filter"] == "none"]
    assert [r["stride"] for r in raw] == [1, 2] and all(np.isfinite(r["mpjpe_mm"]) for r in raw)
    assert [c["filter"] for c in report["chosen"]] == ["one_euro", "kalman_cv"]
    # The chosen parameters are the grid's best of their filter (summed over the strides).
    for c in report["chosen"]:
        total = {}
        for r in report["grid"]:
            if r["filter"] == c["filter"]:
                total[tuple(r["params"])] = total.get(tuple(r["params"]), 0) + r["mpjpe_mm"]
        assert total[tuple(c["params"])] == min(total.values())
    assert len(report["check"]["rows"]) == 2 * 3
    assert "Held-out check" in (out / "tune_temporal.md").read_text()
    # Snapshots (frames seconds apart) are refused with a clear error.
    assert main([*args[:4], str(tmp_path / "snap"), "--out", str(tmp_path / "o2")]) == 2
