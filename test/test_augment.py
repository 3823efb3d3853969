"""Augmentations keep images, 2D labels, crop-adjusted projections and 3D targets consistent."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from stereo_pose3d.geometry import project
from stereo_pose3d.skeleton import MPII
from training.augment import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    AugmentConfig,
    augment_stereo,
    cutout,
    hide_and_seek,
)

W, H = 640, 480
FX = 500.0
BASELINE = 0.12
PERM = np.asarray(MPII.flip_permutation)


def _palette(n: int) -> np.ndarray:
    hsv = np.stack([np.arange(n) * 180 // n, np.full(n, 255), np.full(n, 255)], -1)
    return cv2.cvtColor(hsv.astype(np.uint8)[None], cv2.COLOR_HSV2RGB)[0].astype(np.int64)


PALETTE = _palette(MPII.num_joints)


def make_sample(seed: int = 0) -> dict:
    """A rectified stereo pair with each joint drawn as a blob of its own colour."""
    rng = np.random.default_rng(seed)
    K = np.array([[FX, 0, W / 2], [0, FX, H / 2], [0, 0, 1.0]])
    P_left = np.hstack([K, np.zeros((3, 1))])
    P_right = P_left.copy()
    P_right[0, 3] = -FX * BASELINE
    gx, gy = np.meshgrid(np.arange(4), np.arange(4))
    joints = np.stack(
        [(gx.ravel() - 1.5) * 0.25, (gy.ravel() - 1.5) * 0.3, 3.0 + rng.uniform(-0.2, 0.2, 16)],
        axis=1,
    )
    joints[:, :2] += rng.uniform(-0.03, 0.03, (16, 2))
    joints_2d = np.stack([project(joints, P_left), project(joints, P_right)])
    images, boxes = [], []
    for v in range(2):
        img = np.full((H, W, 3), 40, np.uint8)
        for j, (u, w) in enumerate(joints_2d[v]):
            cv2.circle(img, (round(u), round(w)), 7, tuple(int(c) for c in PALETTE[j]), -1)
        images.append(img)
        lo, hi = joints_2d[v].min(0), joints_2d[v].max(0)
        boxes.append([*(lo - 15), *(hi + 15)])
    return {
        "image_left": images[0],
        "image_right": images[1],
        "P_left": P_left,
        "P_right": P_right,
        "joints_2d": joints_2d,
        "visibility": np.ones((2, 16), bool),
        "box": np.array(boxes),
        "joints_3d_cam": joints,
        "joint_names": list(MPII.joint_names),
        "sequence": "test_000",
        "frame": 7,
    }


def _crop_rgb(out: dict, v: int) -> np.ndarray:
    img = out["images"][v].transpose(1, 2, 0) * IMAGENET_STD + IMAGENET_MEAN
    return np.clip(img * 255.0 + 0.5, 0, 255).astype(np.int64)


def _colour_index(crop: np.ndarray, uv: np.ndarray) -> int:
    u, v = np.round(uv).astype(int)
    colour = crop[v, u]
    return int(np.argmin(np.abs(PALETTE - colour).sum(1)))


def _no_photometric(**kw) -> AugmentConfig:
    return AugmentConfig(color=False, cutout=False, hide_and_seek=False, **kw)


def test_projection_matches_labels_under_scale_rotation_flip():
    sample = make_sample()
    config = _no_photometric(rotation_prob=1.0, translate_factor=0.1, independent_views=True)
    flips = set()
    for seed in range(12):
        out = augment_stereo(sample, config, np.random.default_rng(seed))
        flips.add(out["flipped"])
        reproj = project(out["joints_3d"].astype(np.float64), out["P"].astype(np.float64))
        vis = out["visibility"] > 0
        assert vis.sum() > 10
        np.testing.assert_allclose(reproj[vis], out["joints_2d"][vis], atol=2e-2)
        # the crop-adjusted cameras stay proper (positive orientation) even when mirrored
        assert np.all(np.linalg.det(out["P"][:, :, :3].astype(np.float64)) > 0)
        # and the labels sit on the blobs of the right joints in the pixels
        for v in range(2):
            crop = _crop_rgb(out, v)
            for j in np.nonzero(vis[v])[0]:
                want = PERM[j] if out["flipped"] else j
                assert _colour_index(crop, out["joints_2d"][v, j]) == want
    assert flips == {True, False}


def test_flip_swaps_left_right_in_2d_and_3d():
    sample = make_sample(1)
    config = _no_photometric(scale_rotation=False, flip_prob=1.0)
    out = augment_stereo(sample, config, np.random.default_rng(0))
    ref = augment_stereo(sample, _no_photometric(scale_rotation=False, flip=False), None)
    assert out["flipped"] and not ref["flipped"]
    X = sample["joints_3d_cam"]
    np.testing.assert_allclose(out["joints_3d"], X[PERM] * [-1, 1, 1], atol=1e-6)
    left_wrist, right_wrist = MPII.index("left_wrist"), MPII.index("right_wrist")
    # views are swapped back so that view 0 is the left camera: crop 0 is the mirrored right image
    crop_w = 256
    np.testing.assert_allclose(
        out["joints_2d"][0, left_wrist, 0],
        crop_w - 1 - ref["joints_2d"][1, right_wrist, 0],
        atol=1e-3,
    )
    # camera centres: view 0 left of view 1 again
    centres = [-np.linalg.solve(P[:, :3], P[:, 3]) for P in out["P"].astype(np.float64)]
    assert centres[0][0] < centres[1][0]
    np.testing.assert_allclose(np.linalg.norm(centres[0] - centres[1]), BASELINE, rtol=1e-4)
    # without the view swap the first view stays the (mirrored) left camera
    config_noswap = _no_photometric(scale_rotation=False, flip_prob=1.0, flip_swap_views=False)
    out2 = augment_stereo(sample, config_noswap, np.random.default_rng(0))
    np.testing.assert_allclose(out2["P"][0], out["P"][1], atol=1e-4)
    np.testing.assert_allclose(out2["joints_2d"][1], out["joints_2d"][0], atol=1e-4)


def test_eval_mode_is_deterministic_and_unaugmented():
    sample = make_sample(2)
    a = augment_stereo(sample, AugmentConfig(cutout=True, hide_and_seek=True), train=False)
    b = augment_stereo(sample, AugmentConfig(), train=False)
    assert not a["flipped"]
    for key in ("images", "P", "joints_2d", "visibility", "heatmaps", "joints_3d"):
        np.testing.assert_array_equal(a[key], b[key])
    assert a["images"].shape == (2, 3, 256, 256) and a["heatmaps"].shape == (2, 16, 64, 64)
    np.testing.assert_array_equal(a["heatmap_weight"], a["visibility"])
    assert a["sequence"] == "test_000" and a["frame"] == 7
    # un-augmented labels: A uv with the plain box crop
    for v in range(2):
        uv = sample["joints_2d"][v] @ a["affine"][v][:2, :2].T + a["affine"][v][:2, 2]
        np.testing.assert_allclose(a["joints_2d"][v], uv, atol=1e-3)


def test_cutout_never_moves_labels():
    sample = make_sample(3)
    base = augment_stereo(sample, AugmentConfig.disabled(), np.random.default_rng(0))
    config = AugmentConfig.disabled(cutout=True, cutout_prob=1.0, cutout_holes=4)
    out = augment_stereo(sample, config, np.random.default_rng(0))
    for key in ("P", "joints_2d", "visibility", "joints_3d", "heatmaps"):
        np.testing.assert_array_equal(out[key], base[key])
    assert not np.array_equal(out["images"], base["images"])
    # the fill is the mean colour, i.e. zero after normalisation
    changed = np.any(out["images"] != base["images"], axis=1)
    assert np.abs(out["images"].transpose(0, 2, 3, 1)[changed]).max() < 0.02
    # direct: holes of 40 px, labels untouched by construction
    image = np.full((100, 100, 3), 200, np.uint8)
    holed, mask = cutout(image, np.random.default_rng(1), holes=1, size=40)
    assert 0 < mask.sum() <= 1600 and np.all(holed[~mask] == 200)


def test_hide_and_seek_marks_hidden_joints_invisible():
    image = np.full((64, 64, 3), 255, np.uint8)
    joints = np.array([[5.0, 5.0], [40.0, 5.0], [60.0, 60.0], [20.0, 50.0]])
    vis = np.array([True, True, True, False])
    out, new_vis, hidden = hide_and_seek(image, joints, vis, np.random.default_rng(4), 4, 0.5)
    cells = (joints // 16).astype(int)
    for j in range(4):
        in_hidden = hidden[cells[j, 1], cells[j, 0]]
        assert new_vis[j] == (vis[j] and not in_hidden)
    for gy, gx in zip(*np.nonzero(hidden), strict=True):
        assert np.all(out[gy * 16 : gy * 16 + 16, gx * 16 : gx * 16 + 16] != 255)
    for gy, gx in zip(*np.nonzero(~hidden), strict=True):
        assert np.all(out[gy * 16 : gy * 16 + 16, gx * 16 : gx * 16 + 16] == 255)

    # end to end: a joint is invisible exactly when its pixel was hidden
    sample = make_sample(5)
    base = augment_stereo(sample, AugmentConfig.disabled(), np.random.default_rng(0))
    config = AugmentConfig.disabled(hide_and_seek=True, hide_prob=1.0, hide_fraction=0.5)
    out = augment_stereo(sample, config, np.random.default_rng(3))
    np.testing.assert_array_equal(out["joints_2d"], base["joints_2d"])
    hidden_joints = (base["visibility"] > 0) & (out["visibility"] == 0)
    assert hidden_joints.any() and (out["visibility"] > 0).any()
    for v in range(2):
        crop = _crop_rgb(out, v)
        fill = np.round(IMAGENET_MEAN * 255).astype(np.int64)
        for j in range(16):
            u, w = np.round(out["joints_2d"][v, j]).astype(int)
            is_fill = np.abs(crop[w, u] - fill).max() <= 1
            assert is_fill == bool(hidden_joints[v, j])
        assert np.all(out["heatmap_weight"][v][hidden_joints[v]] == 0)


def test_hide_and_seek_probability_per_view():
    sample = make_sample(6)
    config = AugmentConfig.disabled(hide_and_seek=True)  # p = 0.3 per view, 40 % of cells
    base = augment_stereo(sample, AugmentConfig.disabled(), np.random.default_rng(0))
    hit = 0
    for seed in range(60):
        out = augment_stereo(sample, config, np.random.default_rng(seed))
        hit += int(np.sum(np.any(out["images"] != base["images"], axis=(1, 2, 3))))
    assert 0.15 < hit / 120 < 0.45


def test_colour_jitter_changes_pixels_not_labels():
    sample = make_sample(7)
    base = augment_stereo(sample, AugmentConfig.disabled(), np.random.default_rng(0))
    out = augment_stereo(sample, AugmentConfig.disabled(color=True), np.random.default_rng(0))
    assert not np.allclose(out["images"], base["images"])
    np.testing.assert_array_equal(out["joints_2d"], base["joints_2d"])


def test_joints_outside_crop_and_missing_3d_are_invalid():
    sample = make_sample(8)
    sample["joints_3d_cam"] = sample["joints_3d_cam"].copy()
    sample["joints_3d_cam"][4] = np.nan
    out = augment_stereo(sample, AugmentConfig.disabled(box_scale=0.5), np.random.default_rng(0))
    assert out["joints_3d_valid"][4] == 0 and np.all(out["joints_3d"][4] == 0)
    assert out["joints_3d_valid"].sum() == 15
    uv = out["joints_2d"]
    inside = (uv >= 0).all(-1) & (uv <= 255).all(-1)
    np.testing.assert_array_equal(out["visibility"] > 0, inside)
    assert 0 < inside.sum() < 32


def test_config_from_dict():
    config = AugmentConfig.from_dict({"cutout": True, "hide_prob": 0.2})
    assert config.cutout and config.hide_prob == 0.2 and config.flip
    assert AugmentConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="cutoff"):
        AugmentConfig.from_dict({"cutoff": True})


def test_stereo_crops_dataset_collates():
    import torch.utils.data

    from training.augment import StereoCrops

    samples = [make_sample(s) for s in range(3)]
    dataset = StereoCrops(samples, AugmentConfig(), train=True, seed=0)
    assert len(dataset) == 3
    batch = next(iter(torch.utils.data.DataLoader(dataset, batch_size=3)))
    assert batch["images"].shape == (3, 2, 3, 256, 256)
    assert batch["P"].shape == (3, 2, 3, 4) and batch["joints_3d"].shape == (3, 16, 3)
    np.testing.assert_array_equal(dataset[1]["joints_2d"], dataset[1]["joints_2d"])
