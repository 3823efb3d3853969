"""The stereo dataset format: atomic writer, reader, rejection of incomplete or corrupt samples."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest

from stereo_pose3d.skeleton import MPII
from training.data.stereo_dataset import (
    FORMAT,
    DatasetError,
    StereoDataset,
    StereoDatasetWriter,
    iter_samples,
    list_samples,
    load_labels,
    read_info,
    validate_labels,
)

W, H = 64, 48
J = MPII.num_joints


def make_labels(rng: np.random.Generator) -> dict:
    K = np.array([[50.0, 0, 31.5], [0, 50.0, 23.5], [0, 0, 1]])
    P_left = np.hstack([K, np.zeros((3, 1))])
    P_right = P_left.copy()
    P_right[0, 3] = -50.0 * 0.1
    X = rng.normal([0, 0, 3], 0.3, (J, 3))
    uv = [(X @ P[:, :3].T + P[:, 3])[:, :2] / X[:, 2:3] for P in (P_left, P_right)]
    return {
        "K_left": K,
        "K_right": K,
        "D_left": np.zeros(5),
        "D_right": np.zeros(5),
        "distortion_model": "plumb_bob",
        "R_left": np.eye(3),
        "R_right": np.eye(3),
        "P_left": P_left,
        "P_right": P_right,
        "T_world_to_cam": np.eye(4),
        "joints_3d_cam": X,
        "joints_3d_world": X.copy(),
        "joints_2d": np.stack(uv),
        "visibility": np.ones((2, J), bool),
        "box": np.tile([1.0, 2.0, 30.0, 40.0], (2, 1)),
        "baseline": 0.1,
        "time": 0.5,
        "rectified": True,
        "clip": "walk",
    }


def make_dataset(root: Path, n: int = 3, image_format: str = "jpg") -> StereoDatasetWriter:
    rng = np.random.default_rng(0)
    writer = StereoDatasetWriter(
        root,
        source="synthetic",
        split="train",
        skeleton=MPII.name,
        joint_names=MPII.joint_names,
        image_size=(W, H),
        image_format=image_format,
    )
    for f in range(n):
        img = rng.integers(0, 255, (H, W, 3), dtype=np.uint8)
        writer.write_sample("walk_000", f, img, img[:, ::-1].copy(), make_labels(rng))
    return writer


def test_round_trip(tmp_path: Path) -> None:
    make_dataset(tmp_path)
    info = read_info(tmp_path)
    assert info["format"] == FORMAT and info["image_size"] == [W, H]
    assert info["joint_names"] == list(MPII.joint_names)
    samples = list(iter_samples(tmp_path))
    assert [(s["sequence"], s["frame"]) for s in samples] == [("walk_000", f) for f in range(3)]
    s = samples[1]
    assert s["left"].shape == (H, W, 3) and s["left"].dtype == np.uint8
    assert s["joints_2d"].shape == (2, J, 2) and s["visibility"].dtype == bool
    assert isinstance(s["distortion_model"], str) and isinstance(s["rectified"], bool)
    assert isinstance(s["frame"], int) and isinstance(s["baseline"], float)
    assert s["clip"] == "walk"
    # No temporary files left behind by the atomic writes.
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp")]


def test_png_and_torch_dataloader(tmp_path: Path) -> None:
    import torch

    make_dataset(tmp_path, n=4, image_format="png")
    ds = StereoDataset(
        tmp_path,
        transform=lambda s: {
            "left": torch.from_numpy(s["left"]),
            "P": torch.from_numpy(s["P_right"]),
        },
    )
    assert len(ds) == 4 and ds.sequences == ["walk_000"]
    assert isinstance(ds, torch.utils.data.Dataset)
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=4)))
    assert batch["left"].shape == (4, H, W, 3) and batch["P"].shape == (4, 3, 4)
    # PNG is lossless: the image comes back exactly.
    first = StereoDataset(tmp_path, load_images=True)[0]
    again = np.random.default_rng(0).integers(0, 255, (H, W, 3), dtype=np.uint8)
    assert np.array_equal(first["left"], again)


def test_images_without_labels_are_skipped(tmp_path: Path) -> None:
    make_dataset(tmp_path, n=2)
    seq = tmp_path / "walk_000"
    # An interrupted write: images of frame 2 exist, its label file does not.
    (seq / "000002.left.jpg").write_bytes((seq / "000000.left.jpg").read_bytes())
    (seq / "000002.right.jpg").write_bytes((seq / "000000.right.jpg").read_bytes())
    with pytest.warns(UserWarning, match="incomplete sample"):
        refs = list_samples(tmp_path)
    assert [r.frame for r in refs] == [0, 1]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert len(StereoDataset(tmp_path)) == 2


def test_truncated_label_file_is_rejected(tmp_path: Path) -> None:
    make_dataset(tmp_path, n=3)
    label = tmp_path / "walk_000" / "000001.npz"
    data = label.read_bytes()
    label.write_bytes(data[: len(data) // 2])
    with pytest.raises(DatasetError, match=r"000001\.npz.*unreadable"):
        load_labels(label)
    with pytest.raises(DatasetError, match=r"000001\.npz"):
        StereoDataset(tmp_path)
    with pytest.raises(DatasetError, match=r"000001\.npz"):
        list(iter_samples(tmp_path))
    # Non-strict reading skips it, loudly.
    with pytest.warns(UserWarning, match=r"000001\.npz"):
        frames = [s["frame"] for s in iter_samples(tmp_path, strict=False)]
    assert frames == [0, 2]
    with pytest.warns(UserWarning, match=r"000001\.npz"):
        assert len(StereoDataset(tmp_path, strict=False)) == 2


def test_invalid_labels_rejected(tmp_path: Path) -> None:
    writer = make_dataset(tmp_path, n=1)
    rng = np.random.default_rng(1)
    img = np.zeros((H, W, 3), np.uint8)
    bad = make_labels(rng)
    del bad["P_right"]
    with pytest.raises(DatasetError, match="P_right"):
        writer.write_sample("walk_000", 5, img, img, bad)
    assert not (tmp_path / "walk_000" / "000005.npz").exists()
    bad = make_labels(rng) | {"sequence": "walk_000", "frame": 5}
    bad["joints_2d"] = bad["joints_2d"][:, :5]
    with pytest.raises(DatasetError, match="joints"):
        validate_labels(bad, J)
    with pytest.raises(ValueError, match="image"):
        writer.write_sample("walk_000", 6, img[:10], img, make_labels(rng))
    # A label file written by someone else with a wrong shape is rejected on read.
    labels = make_labels(rng) | {"sequence": "walk_000", "frame": 7}
    labels["box"] = np.zeros(4)
    np.savez(tmp_path / "walk_000" / "000007.npz", **labels)
    for ext in ("left", "right"):
        (tmp_path / "walk_000" / f"000007.{ext}.jpg").write_bytes(
            (tmp_path / "walk_000" / f"000000.{ext}.jpg").read_bytes()
        )
    with pytest.raises(DatasetError, match=r"000007\.npz: box"):
        StereoDataset(tmp_path)


def test_label_without_images_and_bad_info(tmp_path: Path) -> None:
    make_dataset(tmp_path, n=2)
    (tmp_path / "walk_000" / "000001.right.jpg").unlink()
    with pytest.raises(DatasetError, match="without its right image"):
        list_samples(tmp_path)
    with pytest.warns(UserWarning, match="right image"):
        assert len(list_samples(tmp_path, strict=False)) == 1
    info = json.loads((tmp_path / "dataset.json").read_text())
    (tmp_path / "dataset.json").write_text(json.dumps(info | {"format": "other/1"}))
    with pytest.raises(DatasetError, match="format"):
        StereoDataset(tmp_path)
    with pytest.raises(DatasetError, match="not a stereo dataset"):
        read_info(tmp_path / "walk_000")
