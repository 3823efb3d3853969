"""``python -m training crop-cache``: crops follow the labels exactly, in the dataset format."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest

from stereo_pose3d.skeleton import MPII
from training.data.crop_cache import build_cache, crop_window, main, window_affine
from training.data.stereo_dataset import (
    DatasetError,
    StereoDatasetWriter,
    iter_samples,
    read_info,
)

W, H = 160, 120
J = MPII.num_joints


def _project(P: np.ndarray, X: np.ndarray) -> np.ndarray:
    x = X @ P[:, :3].T + P[:, 3]
    return x[:, :2] / x[:, 2:3]


def _dotted_image(uv: np.ndarray) -> np.ndarray:
    """Black image with a 3x3 white dot at each (rounded) joint."""
    img = np.zeros((H, W, 3), np.uint8)
    for u, v in np.rint(uv).astype(int):
        img[max(v - 1, 0) : v + 2, max(u - 1, 0) : u + 2] = 255
    return img


def make_dataset(root: Path, n: int = 4) -> None:
    rng = np.random.default_rng(1)
    K = np.array([[120.0, 0, 79.5], [0, 120.0, 59.5], [0, 0, 1]])
    P_left = np.hstack([K, np.zeros((3, 1))])
    P_right = P_left.copy()
    P_right[0, 3] = -120.0 * 0.2
    writer = StereoDatasetWriter(
        root, source="synthetic", split="train", skeleton=MPII.name,
        joint_names=MPII.joint_names, image_size=(W, H), image_format="png",
    )  # fmt: skip
    for f in range(n):
        X = rng.normal([0.1, 0.0, 3.0], [0.25, 0.35, 0.1], (J, 3))
        uv = np.stack([_project(P, X) for P in (P_left, P_right)])
        box = np.concatenate([uv.min(1) - 2, uv.max(1) + 2], axis=1)
        labels = {
            "K_left": K, "K_right": K, "D_left": np.zeros(5), "D_right": np.zeros(5),
            "distortion_model": "plumb_bob", "R_left": np.eye(3), "R_right": np.eye(3),
            "P_left": P_left, "P_right": P_right, "T_world_to_cam": np.eye(4),
            "joints_3d_cam": X, "joints_3d_world": X.copy(), "joints_2d": uv,
            "visibility": np.ones((2, J), bool), "box": box, "baseline": 0.2,
            "time": 0.1 * f, "rectified": True,
        }  # fmt: skip
        writer.write_sample("walk_000", f, _dotted_image(uv[0]), _dotted_image(uv[1]), labels)


def test_window_affine_matches_cv2_resize() -> None:
    import cv2

    img = np.zeros((40, 50, 3), np.uint8)
    img[20, 30] = 255  # one lit pixel at x=30, y=20
    x0, y0, side, size = 22, 12, 16, 64  # 4x enlargement
    crop = cv2.resize(img[y0 : y0 + side, x0 : x0 + side], (size, size), cv2.INTER_LINEAR)
    u, v = window_affine(x0, y0, side, size)[:2] @ np.array([30.0, 20.0, 1.0])
    ys, xs = np.nonzero(crop[..., 0] == crop[..., 0].max())
    assert abs(xs.mean() - u) < 0.51 and abs(ys.mean() - v) < 0.51


def test_crop_window_is_centred_square_with_margin() -> None:
    x0, y0, side = crop_window(np.array([10.0, 20.0, 30.0, 60.0]), margin=1.5)
    assert side == 60
    assert abs(x0 + side / 2 - 20) <= 0.5 and abs(y0 + side / 2 - 40) <= 0.5


def test_cache_labels_and_pixels_follow_the_crop(tmp_path: Path) -> None:
    src, out = tmp_path / "src", tmp_path / "crops"
    make_dataset(src)
    n = build_cache(src, out, margin=1.5, size=96, image_format="png", workers=1, progress=False)
    assert n == 4
    info = read_info(out)
    assert info["image_size"] == [96, 96] and info["crop_cache"]["margin"] == 1.5
    originals = {s["frame"]: s for s in iter_samples(src)}
    for s in iter_samples(out):
        o = originals[s["frame"]]
        assert s["left"].shape == (96, 96, 3) and s["rectified"] is True
        for v, view in enumerate(("left", "right")):
            # Exact camera: the new projection reproduces the mapped 2D labels.
            uv = _project(s[f"P_{view}"], s["joints_3d_cam"])
            np.testing.assert_allclose(uv, s["joints_2d"][v], atol=1e-6)
            # K goes through the same map as P (the source's P = [K | t]).
            np.testing.assert_allclose(s[f"K_{view}"], s[f"P_{view}"][:, :3], atol=1e-9)
            # The 2D labels land on the dots in the crop (the window enlarges ~2-4x).
            image = s[view][..., 0]
            for u, w in np.rint(uv).astype(int):
                if 0 <= u < 96 and 0 <= w < 96:
                    assert image[w, u] > 100, f"no dot under joint at ({u}, {w}) in {view}"
            # Boxes go through the same map and keep the person inside the window.
            b = s["box"][v]
            assert 0 <= b[0] < b[2] <= 96 and 0 <= b[1] < b[3] <= 96
            scale = (b[2] - b[0]) / (o["box"][v][2] - o["box"][v][0])
            assert scale == pytest.approx(s["P_" + view][0, 0] / o["P_" + view][0, 0])
        np.testing.assert_array_equal(s["joints_3d_cam"], o["joints_3d_cam"])


def test_webp_cache_reads_back(tmp_path: Path) -> None:
    src, out = tmp_path / "src", tmp_path / "crops"
    make_dataset(src, n=2)
    build_cache(src, out, size=64, image_format="webp", quality=90, workers=1, progress=False)
    samples = list(iter_samples(out))
    assert len(samples) == 2 and samples[0]["right"].shape == (64, 64, 3)
    assert sorted(p.suffix for p in (out / "walk_000").iterdir()) == [".npz"] * 2 + [".webp"] * 4


def test_existing_output_and_corrupt_input_are_reported(tmp_path: Path, capsys) -> None:
    src, out = tmp_path / "src", tmp_path / "crops"
    make_dataset(src, n=3)
    out.mkdir()
    with pytest.raises(FileExistsError):
        build_cache(src, out, workers=1, progress=False)
    out.rmdir()
    bad = src / "walk_000" / "000001.left.png"
    bad.write_bytes(b"not an image")
    with pytest.raises(DatasetError, match="000001"):
        build_cache(src, out, workers=1, progress=False)
    assert not out.exists()  # nothing half-written is left behind
    args = argparse.Namespace(
        data=str(src), out=str(out), margin=1.5, size=64, format="webp", quality=85,
        workers=1, max_samples=None, no_progress=True,
    )  # fmt: skip
    assert main(args) == 1
    assert "000001" in capsys.readouterr().out and not out.exists()
