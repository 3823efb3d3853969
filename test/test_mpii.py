"""MPII readers on fixtures in the real file formats (official .mat, HRNet JSON + gt_valid.mat)."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import scipy.io

from stereo_pose3d.skeleton import MPII
from training.augment import IMAGENET_MEAN, IMAGENET_STD, AugmentConfig
from training.data.mpii import (
    MPIIDataset,
    MPIIError,
    load_gt_valid,
    read_mpii_json,
    read_mpii_mat,
    split_of_image,
    uncrop_points,
)

PERM = np.asarray(MPII.flip_permutation)
IMAGE_W, IMAGE_H = 360, 320


def _palette(n: int) -> np.ndarray:
    hsv = np.stack([np.arange(n) * 180 // n, np.full(n, 255), np.full(n, 255)], -1)
    return cv2.cvtColor(hsv.astype(np.uint8)[None], cv2.COLOR_HSV2RGB)[0].astype(np.int64)


PALETTE = _palette(16)


def _layout(cx: float, cy: float) -> np.ndarray:
    """16 joints (0-based px) on a 4x4 grid around a centre, 36 px apart."""
    gx, gy = np.meshgrid(np.arange(4), np.arange(4))
    return np.stack([cx + (gx.ravel() - 1.5) * 36, cy + (gy.ravel() - 1.5) * 36], 1)


def _write_image(path: Path, joints: np.ndarray, visible: np.ndarray) -> None:
    img = np.full((IMAGE_H, IMAGE_W, 3), 30, np.uint8)
    for j, (x, y) in enumerate(joints):
        if visible[j]:
            cv2.circle(img, (round(x), round(y)), 8, tuple(int(c) for c in PALETTE[j]), -1)
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), cv2.cvtColor(img, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 100])


# --------------------------------------------------------------------------------------------
# Official release fixture
# --------------------------------------------------------------------------------------------

RECT_FIELDS = ["x1", "y1", "x2", "y2", "annopoints", "scale", "objpos"]


def _struct_array(fields: list[str], rows: list[dict]) -> np.ndarray:
    """A MATLAB 1xN struct array (missing fields are [] as in MATLAB)."""
    arr = np.zeros((1, len(rows)), dtype=[(f, "O") for f in fields])
    for i, row in enumerate(rows):
        for f in fields:
            arr[0, i][f] = row.get(f, np.zeros((0, 0)))
    return arr


def _points(joints0: np.ndarray, ids: list[int], is_visible: list) -> np.ndarray:
    rows = [
        {"id": j, "x": float(joints0[j, 0] + 1), "y": float(joints0[j, 1] + 1), "is_visible": v}
        for j, v in zip(ids, is_visible, strict=True)
    ]
    return _struct_array(["id", "x", "y", "is_visible"], rows)


def _rect(joints0, ids, is_visible, centre0, scale=1.0, head=(10.0, 20.0, 40.0, 60.0)):
    return {
        "x1": head[0] + 1, "y1": head[1] + 1, "x2": head[2] + 1, "y2": head[3] + 1,
        "annopoints": {"point": _points(joints0, ids, is_visible)},
        "scale": scale,
        "objpos": {"x": centre0[0] + 1, "y": centre0[1] + 1},
    }  # fmt: skip


def _names() -> tuple[str, str]:
    """Two image names, one per side of the deterministic hold-out."""
    names = [f"{i:09d}.jpg" for i in range(200)]
    train = next(n for n in names if split_of_image(n) == "train")
    valid = next(n for n in names if split_of_image(n) == "valid")
    return train, valid


@pytest.fixture(scope="module")
def official_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("mpii_official")
    train_name, valid_name = _names()
    centre = np.array([180.0, 145.0])  # objpos, 0-based; crop centre is 15 px lower
    joints = _layout(180.0, 160.0)
    all_ids = list(range(16))
    vis_flags = ["1", 0, np.zeros((0, 0))] * 5 + [1]
    rect_full = _rect(joints, all_ids, vis_flags, centre)
    partial_ids = [0, 1, 2, 3, 4, 5, 10, 11, 12, 13]
    rect_partial = _rect(joints, partial_ids, [1] * 10, centre, scale=1.1)
    rect_no_points = {"x1": 1.0, "y1": 1.0, "x2": 9.0, "y2": 9.0, "scale": 1.0,
                      "objpos": {"x": 5.0, "y": 5.0}}  # fmt: skip
    rect_no_scale = _rect(joints, all_ids, [1] * 16, centre)
    rect_no_scale["scale"] = np.zeros((0, 0))
    annolist = _struct_array(
        ["image", "annorect", "frame_sec", "vididx"],
        [
            # train image: a full person, a partly annotated one, one without points
            {"image": {"name": train_name},
             "annorect": _struct_array(RECT_FIELDS, [rect_full, rect_partial, rect_no_points])},
            # test image (img_train = 0): never returned
            {"image": {"name": "test_image.jpg"},
             "annorect": _struct_array(["scale", "objpos"], [{"scale": 1.0,
                                                              "objpos": {"x": 1, "y": 1}}])},
            # held-out image: a single (1x1) annorect struct, squeezed by scipy
            {"image": {"name": valid_name}, "annorect": rect_full},
            # a person without scale is skipped; an image without annorect too
            {"image": {"name": "noscale.jpg"}, "annorect": _struct_array(RECT_FIELDS,
                                                                         [rect_no_scale])},
            {"image": {"name": "empty.jpg"}},
        ],
    )  # fmt: skip
    release = {
        "annolist": annolist,
        "img_train": np.array([[1, 0, 1, 1, 1]], dtype=np.uint8),
        "version": "12",
        "single_person": np.array([[np.array([[1]]), np.zeros((0, 0)), 1, 1, 1]], dtype=object),
        "act": _struct_array(
            ["cat_name", "act_name", "act_id"], [{"cat_name": "sports", "act_id": 1}] * 5
        ),
    }
    scipy.io.savemat(str(root / "mpii_human_pose_v1_u12_1.mat"), {"RELEASE": release})
    vis = np.ones(16, bool)
    for name in (train_name, valid_name, "noscale.jpg"):
        _write_image(root / "images" / name, joints, vis)
    return root


def test_official_mat_reader(official_root):
    persons = read_mpii_mat(official_root / "mpii_human_pose_v1_u12_1.mat")
    train_name, valid_name = _names()
    assert [p.image for p in persons] == [train_name, train_name, valid_name]
    full, partial, held_out = persons
    np.testing.assert_allclose(full.joints, _layout(180.0, 160.0))
    assert full.visible.all() and full.scale == 1.0
    np.testing.assert_allclose(full.center, [180.0, 145.0])
    np.testing.assert_allclose(full.head_box, [10.0, 20.0, 40.0, 60.0])
    # is_visible: "1" -> visible, 0 -> occluded, [] -> unknown (not occluded)
    assert full.occluded.tolist() == [False, True, False] * 5 + [False]
    assert partial.visible.sum() == 10 and not partial.visible[6:10].any()
    assert partial.scale == pytest.approx(1.1)
    np.testing.assert_allclose(held_out.joints, full.joints)


def test_official_split_and_crops_follow_the_image(official_root):
    train = MPIIDataset(official_root, "train", train=False)
    valid = MPIIDataset(official_root, "valid", train=False)
    assert len(train) == 2 and len(valid) == 1
    item = train[0]
    assert item["image"].shape == (3, 256, 256) and item["heatmaps"].shape == (16, 64, 64)
    assert not item["flipped"]
    crop = _to_rgb(item["image"])
    for j in range(16):
        assert _colour_at(crop, item["joints_2d"][j]) == j
    # crop -> image round trip
    np.testing.assert_allclose(
        uncrop_points(item["joints_2d"], item["affine"]), _layout(180.0, 160.0), atol=1e-3
    )
    # crop centre = objpos moved down by 15 * scale
    centre_crop = item["affine"][:2, :2] @ np.array([180.0, 160.0]) + item["affine"][:2, 2]
    np.testing.assert_allclose(centre_crop, [128, 128], atol=1e-3)
    partial = train[1]
    np.testing.assert_array_equal(partial["visibility"], train.persons[1].visible)
    np.testing.assert_array_equal(partial["heatmap_weight"], partial["visibility"])


def test_flip_and_augmentation_keep_labels_on_the_image(official_root):
    config = AugmentConfig(color=False, flip_prob=1.0, rotation_prob=1.0)
    ds = MPIIDataset(official_root, "train", train=True, augment=config, seed=3)
    item = ds[0]
    assert item["flipped"]
    crop = _to_rgb(item["image"])
    vis = item["visibility"] > 0
    assert vis.sum() >= 12
    for j in np.nonzero(vis)[0]:
        assert _colour_at(crop, item["joints_2d"][j]) == PERM[j]
    # same seed -> same item; the flip is in the affine, the joint swap in the labels
    again = ds[0]
    np.testing.assert_array_equal(again["joints_2d"], item["joints_2d"])
    back = uncrop_points(item["joints_2d"], item["affine"])
    np.testing.assert_allclose(back[vis], _layout(180.0, 160.0)[PERM][vis], atol=1e-3)


def _to_rgb(image_chw: np.ndarray) -> np.ndarray:
    img = image_chw.transpose(1, 2, 0) * IMAGENET_STD + IMAGENET_MEAN
    return np.clip(img * 255 + 0.5, 0, 255).astype(np.int64)


def _colour_at(crop: np.ndarray, uv: np.ndarray) -> int:
    u, v = np.round(uv).astype(int)
    return int(np.argmin(np.abs(PALETTE - crop[v, u]).sum(1)))


# --------------------------------------------------------------------------------------------
# JSON conversion fixture
# --------------------------------------------------------------------------------------------

GT_ABBR = ["rank", "rkne", "rhip", "lhip", "lkne", "lank", "pelv", "thor", "neck", "head",
           "rwri", "relb", "rsho", "lsho", "lelb", "lwri"]  # fmt: skip


@pytest.fixture(scope="module")
def json_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("mpii_json")
    annot = root / "annot"
    annot.mkdir()
    joints = _layout(180.0, 160.0)
    vis_a = np.ones(16, int)
    vis_b = np.ones(16, int)
    vis_b[[0, 5]] = 0
    records = []
    for name, vis in (("a.jpg", vis_a), ("b.jpg", vis_b)):
        j1 = np.where(vis[:, None] > 0, joints + 1, -1.0)  # 1-based, -1 where missing
        records.append({"image": name, "center": [181.0, 146.0], "scale": 1.0,
                        "joints": j1.tolist(), "joints_vis": vis.tolist()})  # fmt: skip
        _write_image(root / "images" / name, joints, vis.astype(bool))
    (annot / "train.json").write_text(json.dumps(records))
    (annot / "valid.json").write_text(json.dumps(records))
    pos = np.stack([np.where(v[:, None] > 0, joints + 1, 0) for v in (vis_a, vis_b)], axis=2)
    heads = np.zeros((2, 2, 2))
    heads[0, :, :] = [[100.0], [50.0]]  # corner 1 (x, y) of both persons
    heads[1, :, :] = [[130.0], [90.0]]  # corner 2: 30 x 40 box -> diagonal 50 -> head size 30
    scipy.io.savemat(
        str(annot / "gt_valid.mat"),
        {
            "pos_gt_src": pos,
            "jnt_missing": np.stack([1 - vis_a, 1 - vis_b], axis=1).astype(np.uint8),
            "headboxes_src": heads,
            "dataset_joints": np.array([GT_ABBR], dtype=object),
        },
    )
    return root


def test_json_reader_and_gt_valid(json_root):
    persons = read_mpii_json(json_root / "annot" / "train.json")
    assert len(persons) == 2
    np.testing.assert_allclose(persons[0].joints, _layout(180.0, 160.0))
    np.testing.assert_allclose(persons[0].center, [180.0, 145.0])
    assert persons[1].visible.sum() == 14 and not persons[1].visible[[0, 5]].any()
    gt = load_gt_valid(json_root / "annot" / "gt_valid.mat")
    assert gt.joints.shape == (2, 16, 2)
    np.testing.assert_allclose(gt.joints[0], _layout(180.0, 160.0))
    np.testing.assert_array_equal(gt.visible[1], persons[1].visible)
    np.testing.assert_allclose(gt.head_boxes, [[99, 49, 129, 89]] * 2)


def test_json_dataset_crops_and_pckh(json_root):
    ds = MPIIDataset(json_root, "valid", train=False)
    item = ds[1]
    crop = _to_rgb(item["image"])
    for j in np.nonzero(item["visibility"])[0]:
        assert _colour_at(crop, item["joints_2d"][j]) == j
    np.testing.assert_allclose(item["head_box"], [99, 49, 129, 89])
    gt = ds.ground_truth().joints
    assert ds.evaluate(gt).table["Mean"] == pytest.approx(100.0)
    # head size = 0.6 * 50 = 30 px: 14 px off is within 0.5, 16 px is not
    assert ds.evaluate(gt + np.array([14.0, 0.0])).table["Mean"] == pytest.approx(100.0)
    assert ds.evaluate(gt + np.array([16.0, 0.0])).table["Mean"] == pytest.approx(0.0)
    # wrists of person 0 wrong: 2 of the 2 x 14 + 2 x 12 = 52 evaluated non-pelvis/thorax joints
    pred = gt.copy()
    pred[0, [MPII.index("left_wrist"), MPII.index("right_wrist")]] += 20.0
    result = ds.evaluate(pred)
    assert result.table["Wrist"] == pytest.approx(50.0)
    assert result.table["Mean"] == pytest.approx(100.0 * (26 - 2) / 26)
    # right ankle: only person 0 visible; error on person 1 (missing) does not count
    pred = gt.copy()
    pred[1, MPII.index("right_ankle")] += 100.0
    assert ds.evaluate(pred).per_joint[MPII.index("right_ankle")] == pytest.approx(100.0)
    # train.json has no head boxes: PCKh refuses with a clear message
    with pytest.raises(MPIIError, match="head boxes"):
        MPIIDataset(json_root, "train", train=False).evaluate(gt)


def test_missing_and_corrupt_files_are_named(tmp_path, json_root):
    with pytest.raises(MPIIError, match=str(tmp_path)):
        MPIIDataset(tmp_path, "train")
    bad = tmp_path / "mpii_human_pose_v1_u12_1.mat"
    bad.write_bytes(b"MATLAB 5.0 MAT-file garbage" + bytes(200))
    with pytest.raises(MPIIError, match=r"mpii_human_pose_v1_u12_1\.mat"):
        MPIIDataset(tmp_path, "train")
    (tmp_path / "annot").mkdir()
    (tmp_path / "annot" / "train.json").write_text(json.dumps([{"image": "x.jpg"}]))
    with pytest.raises(MPIIError, match=r"train.json: record 0"):
        MPIIDataset(tmp_path, "train")
    records = json.loads((json_root / "annot" / "train.json").read_text())
    records[0]["image"] = "missing.jpg"
    (tmp_path / "annot" / "train.json").write_text(json.dumps(records))
    ds = MPIIDataset(tmp_path, "train")
    with pytest.raises(MPIIError, match=r"images/missing.jpg"):
        ds[0]
