"""MADS extraction on a small synthetic release in the real formats (.mat v5, AVI from OpenCV).

The fixture renders every ground-truth joint as a blob of its own colour into the *raw* (distorted,
unrectified) left/right videos; after extraction the stored rectified images must show joint j's
colour exactly at the stored ``joints_2d[:, j]`` -- which checks calibration parsing, the om sign,
rectification, the mm -> m and world -> camera conversion and the joint table in one go.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import scipy.io

from stereo_pose3d.geometry import distort_points, project
from stereo_pose3d.skeleton import MADS
from training.__main__ import main as training_main
from training.data.mads import (
    MADS_GT_ROWS,
    MADSError,
    gt_to_skeleton,
    load_bouguet_camera,
    load_gt_poses,
)

W, H = 480, 360
FRAMES = 6
SEQUENCES = ("F1", "P2")  # F1 (first by name) is the validation sequence
PERM = np.asarray(MADS.flip_permutation)


def _palette(n: int) -> np.ndarray:
    hsv = np.stack([np.arange(n) * 180 // n, np.full(n, 255), np.full(n, 255)], -1)
    return cv2.cvtColor(hsv.astype(np.uint8)[None], cv2.COLOR_HSV2RGB)[0].astype(np.int64)


PALETTE = _palette(19)


def _rot(axis: str, deg: float) -> np.ndarray:
    c, s = np.cos(np.radians(deg)), np.sin(np.radians(deg))
    return {
        "x": np.array([[1, 0, 0], [0, c, -s], [0, s, c]]),
        "y": np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]]),
    }[axis]


# Left camera 4 m in front of the person (world y up, mm), tilted down 12 deg, yawed 15 deg.
R_LEFT = _rot("x", 180 + 12) @ _rot("y", 15)
C_LEFT = np.array([-1000.0, 1400.0, 3800.0])
T_LEFT = -R_LEFT @ C_LEFT
# Right camera: 150 mm along the left camera's x axis, rotated by ~1 deg.
R_RIGHT = _rot("y", 1.0) @ R_LEFT
C_RIGHT = C_LEFT + R_LEFT.T @ np.array([150.0, 0.0, 0.0])
T_RIGHT = -R_RIGHT @ C_RIGHT
K_LEFT = np.array([[450.0, 0.45, 236.0], [0.0, 452.0, 183.0], [0.0, 0.0, 1.0]])  # alpha_c = 1e-3
D_LEFT = np.array([-0.06, 0.02, 0.001, -0.0005, 0.0])
K_RIGHT = np.array([[455.0, 0.0, 242.0], [0.0, 455.0, 178.0], [0.0, 0.0, 1.0]])
D_RIGHT = np.array([-0.05, 0.01, -0.0008, 0.0004, 0.0])


def _gt(seed: int) -> np.ndarray:
    """(F, 19, 3) mm: a 4 x 5 grid of joints in a plane facing the cameras, moving a little."""
    rng = np.random.default_rng(seed)
    gx, gy = np.meshgrid(np.arange(4), np.arange(5))
    base = np.stack([(gx.ravel() - 1.5) * 240, 150 + gy.ravel() * 330, np.zeros(20)], 1)[:19]
    base = base @ _rot("y", -15).T + [-400.0, 0.0, 0.0]  # turn the grid towards the camera
    drift = np.array([25.0, 0.0, 10.0])
    poses = np.stack([base + f * drift + rng.normal(0, 3, base.shape) for f in range(FRAMES)])
    poses[2, 7] = np.nan  # a partly missing frame
    poses[4] = np.nan  # a frame without ground truth
    return poses


def _render(poses: np.ndarray, R, T, K, D) -> list[np.ndarray]:
    frames = []
    for pose in poses:
        img = np.full((H, W, 3), 35, np.uint8)
        if np.isfinite(pose).all():
            cam = pose @ R.T + T
            uv = distort_points(cam[:, :2] / cam[:, 2:], K, D)
            for j, (u, v) in enumerate(uv):
                rgb = tuple(int(c) for c in PALETTE[j])
                cv2.circle(img, (round(u), round(v)), 7, rgb[::-1], -1)
        frames.append(img)
    return frames


def _write_video(path: Path, frames: list[np.ndarray]) -> None:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 15.0, (W, H))
    writer.set(cv2.VIDEOWRITER_PROP_QUALITY, 100)
    assert writer.isOpened()
    for frame in frames:
        writer.write(frame)
    writer.release()


def _bouguet_left(path: Path, om_sign: float) -> None:
    om = cv2.Rodrigues(R_LEFT)[0].ravel() * om_sign
    scipy.io.savemat(
        str(path),
        {
            "fc": K_LEFT[[0, 1], [0, 1]].reshape(2, 1),
            "cc": K_LEFT[:2, 2].reshape(2, 1),
            "alpha_c": np.array([[K_LEFT[0, 1] / K_LEFT[0, 0]]]),
            "kc": D_LEFT.reshape(5, 1),
            "om": om.reshape(3, 1),
            "T": T_LEFT.reshape(3, 1),
        },
    )


def _write_movement(root: Path, movement: str, om_sign: float, right_in_depth: bool) -> None:
    depth = root / "MADS_depth" / "depth_data" / movement
    depth.mkdir(parents=True)
    _bouguet_left(depth / "Calib_C0_left.mat", om_sign)
    om_r = cv2.Rodrigues(R_RIGHT)[0].reshape(3, 1)
    if right_in_depth:
        scipy.io.savemat(
            str(depth / "Calib_C0_right.mat"),
            {"fc": K_RIGHT[[0, 1], [0, 1]].reshape(2, 1), "cc": K_RIGHT[:2, 2].reshape(2, 1),
             "alpha_c": np.zeros((1, 1)), "kc": D_RIGHT.reshape(5, 1), "om": om_r,
             "T": T_RIGHT.reshape(3, 1)},
        )  # fmt: skip
    else:
        multiview = root / "MADS_multiview" / "multi_view_data" / movement
        multiview.mkdir(parents=True)
        scipy.io.savemat(
            str(multiview / "Calib_Cam0.mat"),
            {"KK": K_RIGHT, "kc": D_RIGHT.reshape(5, 1),
             "fc": K_RIGHT[[0, 1], [0, 1]].reshape(2, 1), "cc": K_RIGHT[:2, 2].reshape(2, 1),
             "alpha_c": np.zeros((1, 1)), "om_ext": om_r, "T_ext": T_RIGHT.reshape(3, 1)},
        )  # fmt: skip
        scipy.io.savemat(str(multiview / "Calib_Cam1.mat"), {"KK": K_RIGHT})
    # a release rectification file that the extraction ignores
    scipy.io.savemat(str(depth / "rect_calib_left.mat"), {"ind_new_left": np.arange(4.0)})
    for k, seq in enumerate(SEQUENCES):
        poses = _gt(seed=k)
        cells = np.empty((1, FRAMES), dtype=object)
        for f in range(FRAMES):
            cells[0, f] = poses[f]
        scipy.io.savemat(str(depth / f"{movement}_{seq}_GT.mat"), {"GTpose2": cells})
        _write_video(depth / f"{movement}_{seq}_Left.avi", _render(poses, R_LEFT, T_LEFT, K_LEFT,
                                                                   D_LEFT))  # fmt: skip
        _write_video(depth / f"{movement}_{seq}_Right.avi", _render(poses, R_RIGHT, T_RIGHT,
                                                                    K_RIGHT, D_RIGHT))  # fmt: skip


@pytest.fixture(scope="module")
def release(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("mads")
    _write_movement(root, "Kata", om_sign=-1.0, right_in_depth=False)  # om stored negated
    _write_movement(root, "Taichi", om_sign=1.0, right_in_depth=True)
    return root


def _run(*argv: str) -> int:
    return training_main(["extract-mads", "--quiet", *argv])


@pytest.fixture(scope="module")
def extracted(release, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("mads_out") / "stereo"
    assert _run("--root", str(release), "--out", str(out), "--movements", "Kata", "Taichi") == 0
    return out


def _colour_at(image: np.ndarray, uv: np.ndarray) -> int:
    u, v = np.round(uv).astype(int)
    return int(np.argmin(np.abs(PALETTE - image[v, u].astype(np.int64)).sum(1)))


def _samples(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.npz"))


def test_split_and_dataset_json(extracted):
    for split, seq in (("val", "F1"), ("train", "P2")):
        info = json.loads((extracted / split / "dataset.json").read_text())
        assert info["format"] == "stereo_pose3d.stereo/1" and info["source"] == "mads"
        assert info["split"] == split and info["skeleton"] == "mads19"
        assert info["joint_names"] == list(MADS.joint_names)
        assert info["image_size"] == [W, H]
        assert info["sequences"] == [f"Kata_{seq}", f"Taichi_{seq}"]
        movements = info["mads"]["movements"]
        assert movements["Kata"]["left_om_sign"] == -1.0  # auto-detected
        assert movements["Taichi"]["left_om_sign"] == 1.0
        assert movements["Kata"]["right_calib"].endswith("Calib_Cam0.mat")
        assert movements["Taichi"]["right_calib"].endswith("Calib_C0_right.mat")
        for movement in ("Kata", "Taichi"):
            folder = extracted / split / f"{movement}_{seq}"
            # frame 2 (a NaN joint) and 4 (no GT) skipped
            assert [p.stem for p in _samples(folder)] == ["000000", "000001", "000003", "000005"]
            assert not list(folder.glob("*.tmp")) and not list(folder.glob(".*"))


def test_labels_are_consistent_and_match_the_pixels(extracted):
    names = ("K_left", "K_right", "D_left", "D_right", "distortion_model", "R_left", "R_right",
             "P_left", "P_right", "T_world_to_cam", "joints_3d_cam", "joints_3d_world",
             "joints_2d", "visibility", "box", "baseline", "sequence", "frame", "time",
             "rectified")  # fmt: skip
    gt = _gt(seed=1)
    for movement in ("Kata", "Taichi"):
        folder = extracted / "train" / f"{movement}_P2"
        for path in _samples(folder):
            with np.load(path) as z:
                labels = {k: z[k] for k in z.files}
            assert set(names) <= set(labels)
            frame = int(labels["frame"])
            assert str(labels["sequence"]) == f"{movement}_P2" and bool(labels["rectified"])
            assert labels["time"] == pytest.approx(frame / 15.0)
            np.testing.assert_allclose(labels["joints_3d_world"], gt[frame] / 1000.0)
            T = labels["T_world_to_cam"]
            cam = labels["joints_3d_world"] @ T[:3, :3].T + T[:3, 3]
            np.testing.assert_allclose(labels["joints_3d_cam"], cam, atol=1e-9)
            P = np.stack([labels["P_left"], labels["P_right"]])
            np.testing.assert_allclose(
                project(labels["joints_3d_cam"][None], P), labels["joints_2d"], atol=1e-6
            )
            # ROS convention: P_right[0, 3] = -fx * B with B in metres; rectified rows agree
            assert labels["baseline"] == pytest.approx(0.150, abs=1e-6)
            assert P[1, 0, 3] == pytest.approx(-P[1, 0, 0] * 0.150, rel=1e-6)
            np.testing.assert_allclose(labels["joints_2d"][0, :, 1], labels["joints_2d"][1, :, 1])
            assert labels["visibility"].all()
            box = labels["box"]
            assert np.all(box[:, :2] <= labels["joints_2d"].min(1))
            assert np.all(box[:, 2:] >= labels["joints_2d"].max(1))
            # the pixels: joint j's blob sits at joints_2d[:, j] in both rectified images
            for v, side in enumerate(("left", "right")):
                image = cv2.imread(str(folder / f"{frame:06d}.{side}.jpg"))[..., ::-1]
                assert image.shape == (H, W, 3)
                for j in range(19):
                    assert _colour_at(image, labels["joints_2d"][v, j]) == j, (path, side, j)


def test_joint_table_and_swap_option(release, tmp_path):
    np.testing.assert_array_equal(gt_to_skeleton(), np.arange(19))
    assert MADS.joint_names == MADS_GT_ROWS
    np.testing.assert_array_equal(gt_to_skeleton(swap_left_right=True), PERM)
    out = tmp_path / "swapped"
    argv = ("--root", str(release), "--out", str(out), "--movements", "Taichi", "--max-frames", "1")
    assert _run(*argv, "--swap-left-right") == 0
    folder = out / "val" / "Taichi_F1"
    with np.load(folder / "000000.npz") as z:
        uv = z["joints_2d"][0]
    image = cv2.imread(str(folder / "000000.left.jpg"))[..., ::-1]
    for j in range(19):  # joint j now carries row PERM[j] of the ground truth
        assert _colour_at(image, uv[j]) == PERM[j]


def test_check_projection_draws_and_writes_nothing_else(release, tmp_path):
    png = tmp_path / "check" / "mads_check.png"
    out = tmp_path / "never"
    argv = ("--root", str(release), "--out", str(out), "--check-projection", str(png))
    assert _run(*argv, "--movements", "Kata", "Taichi") == 0
    assert not out.exists()
    image = cv2.imread(str(png))
    assert image is not None and image.shape == (40 + 2 * H, 2 * W, 3)  # legend + a row each
    # left joints drawn blue, right joints red (BGR)
    blue = (image[..., 0] > 200) & (image[..., 1] < 150) & (image[..., 2] < 100)
    red = (image[..., 2] > 200) & (image[..., 1] < 100) & (image[..., 0] < 100)
    assert blue.sum() > 100 and red.sum() > 100


def test_extract_existing_output_needs_overwrite(release, extracted, capsys):
    assert _run("--root", str(release), "--out", str(extracted), "--movements", "Kata") == 1
    assert "--overwrite" in capsys.readouterr().err


def _copy_release(release: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(release, dst)
    return dst


def test_missing_and_corrupt_files_are_named(release, tmp_path, capsys):
    root = _copy_release(release, tmp_path / "r1")
    depth = root / "MADS_depth" / "depth_data"
    (depth / "Kata" / "Kata_P2_GT.mat").unlink()
    (root / "MADS_multiview" / "multi_view_data" / "Kata" / "Calib_Cam0.mat").unlink()
    out = tmp_path / "out"
    assert _run("--root", str(root), "--out", str(out), "--movements", "Kata") == 1
    err = capsys.readouterr().err
    assert "Kata_P2_GT.mat" in err and "Calib_Cam0.mat" in err
    assert not out.exists()

    root = _copy_release(release, tmp_path / "r2")
    depth = root / "MADS_depth" / "depth_data"
    (depth / "Taichi" / "Taichi_F1_GT.mat").write_bytes(b"not a MATLAB file at all" * 10)
    assert _run("--root", str(root), "--out", str(out), "--movements", "Taichi") == 1
    assert "Taichi_F1_GT.mat" in capsys.readouterr().err
    assert not out.exists()

    root = _copy_release(release, tmp_path / "r3")
    depth = root / "MADS_depth" / "depth_data"
    (depth / "Taichi" / "Taichi_P2_Right.avi").write_bytes(b"RIFF garbage" * 50)
    assert _run("--root", str(root), "--out", str(out), "--movements", "Taichi") == 1
    assert "Taichi_P2_Right.avi" in capsys.readouterr().err
    assert not out.exists()

    assert _run("--root", str(tmp_path / "nowhere"), "--out", str(out)) == 1
    assert "MADS_depth" in capsys.readouterr().err


def test_truncated_video_leaves_no_partial_sequence(release, tmp_path, capsys):
    root = _copy_release(release, tmp_path / "r")
    depth = root / "MADS_depth" / "depth_data" / "Taichi"
    frames = _render(_gt(seed=1)[:3], R_RIGHT, T_RIGHT, K_RIGHT, D_RIGHT)
    _write_video(depth / "Taichi_P2_Right.avi", frames)  # 3 frames, but frame count is read
    data = (depth / "Taichi_P2_Right.avi").read_bytes()
    out = tmp_path / "out"
    # a video whose header promises more frames than it holds: cut the file in the middle
    (depth / "Taichi_P2_Right.avi").write_bytes(data[: len(data) * 2 // 3])
    code = _run("--root", str(root), "--out", str(out), "--movements", "Taichi")
    err = capsys.readouterr().err
    assert code == 1 and "Taichi_P2_Right.avi" in err and "truncated or corrupt" in err
    assert not (out / "train").exists()  # the failed split is not left half-written
    assert [p.name for p in out.iterdir()] == ["val"]  # no staging folder either
    assert len(_samples(out / "val" / "Taichi_F1")) == 4  # the split done before is complete
    assert not list(out.rglob("*.tmp"))


def test_readers_directly(release, tmp_path):
    depth = release / "MADS_depth" / "depth_data"
    cam = load_bouguet_camera(depth / "Taichi" / "Calib_C0_left.mat")
    np.testing.assert_allclose(cam.K, K_LEFT)
    np.testing.assert_allclose(cam.R, R_LEFT, atol=1e-12)
    np.testing.assert_allclose(cam.T, T_LEFT)
    kk = load_bouguet_camera(release / "MADS_multiview" / "multi_view_data" / "Kata" /
                             "Calib_Cam0.mat")  # fmt: skip
    np.testing.assert_allclose(kk.K, K_RIGHT)
    with pytest.raises(MADSError, match=r"Calib_Cam1.mat lacks calibration field\(s\): kc"):
        load_bouguet_camera(release / "MADS_multiview" / "multi_view_data" / "Kata" /
                            "Calib_Cam1.mat")  # fmt: skip
    poses = load_gt_poses(depth / "Kata" / "Kata_P2_GT.mat")
    assert poses.shape == (FRAMES, 19, 3)
    assert np.isnan(poses[4]).all() and np.isnan(poses[2, 7]).all()
    cells = np.empty((1, 3), dtype=object)
    cells[0, 0], cells[0, 1], cells[0, 2] = np.ones((19, 3)), np.zeros((0, 0)), np.ones((19, 3))
    scipy.io.savemat(str(tmp_path / "x_GT.mat"), {"GTpose2": cells})
    poses = load_gt_poses(tmp_path / "x_GT.mat")
    assert np.isnan(poses[1]).all() and np.all(poses[[0, 2]] == 1)
    cells[0, 2] = np.ones((15, 3))
    scipy.io.savemat(str(tmp_path / "y_GT.mat"), {"GTpose2": cells})
    with pytest.raises(MADSError, match=r"y_GT.mat: GTpose2 frame 2 has shape \(15, 3\)"):
        load_gt_poses(tmp_path / "y_GT.mat")
    scipy.io.savemat(str(tmp_path / "z_GT.mat"), {"pose": np.ones(3)})
    with pytest.raises(MADSError, match=r"z_GT.mat has no GTpose2"):
        load_gt_poses(tmp_path / "z_GT.mat")


def test_shared_reader_and_augmentation_on_extracted_samples(extracted):
    from training.augment import AugmentConfig, StereoCrops
    from training.data.stereo_dataset import StereoDataset

    dataset = StereoDataset(extracted / "train")
    assert len(dataset) == 8 and dataset.joint_names == MADS.joint_names
    assert dataset.sequences == ["Kata_P2", "Taichi_P2"]
    crops = StereoCrops(dataset, AugmentConfig(rotation_prob=1.0), train=True, seed=1)
    flipped = 0
    for i in range(len(crops)):
        out = crops[i]
        flipped += out["flipped"]
        vis = out["visibility"] > 0
        assert vis.sum() >= 30
        reproj = project(out["joints_3d"].astype(np.float64), out["P"].astype(np.float64))
        np.testing.assert_allclose(reproj[vis], out["joints_2d"][vis], atol=2e-2)
    assert 0 < flipped < len(crops)
