"""Synthetic stereo data: clips, joints, exact calibration of the renders, determinism, bags."""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import pytest

from stereo_pose3d.geometry import project, undistort_points
from stereo_pose3d.skeleton import SYNTHETIC
from training.synth.cameras import fits_in_view
from training.synth.motion import (
    CLIP_NAMES,
    HEAD_TOP_OFFSET,
    TRAIN_CLIPS,
    VAL_CLIPS,
    Y_UP_TO_Z_UP,
    clips_for_split,
    load_clip,
)
from training.synth.render import SynthRenderer, gl_matrices

J = SYNTHETIC.index


@pytest.fixture(scope="module")
def renderer():
    with SynthRenderer(320, 240, supersample=2) as r:
        yield r


# --------------------------------------------------------------------------------------------
# Clips and joints
# --------------------------------------------------------------------------------------------


def test_splits() -> None:
    assert set(VAL_CLIPS) == {"backflip", "cartwheel", "dance_b"}
    assert len(TRAIN_CLIPS) == 12 and not set(TRAIN_CLIPS) & set(VAL_CLIPS)
    assert set(TRAIN_CLIPS) | set(VAL_CLIPS) == set(CLIP_NAMES)
    assert clips_for_split("walk,run") == ("walk", "run")
    with pytest.raises(ValueError, match="unknown"):
        clips_for_split("moonwalk")


def test_clip_interpolation() -> None:
    clip = load_clip("walk")
    assert clip.loop and len(clip.times) == 39 and abs(clip.rate - 30.0) < 0.1
    k = 7
    pose = clip.pose(float(clip.times[k]))
    np.testing.assert_allclose(pose.root_position, Y_UP_TO_Z_UP @ clip.root_position[k])
    q_key = clip.joints[0][k] / np.linalg.norm(clip.joints[0][k])
    np.testing.assert_allclose(np.abs(pose.joints[0] @ q_key), 1.0, atol=1e-12)
    # Halfway between keyframes: unit quaternion, equally far from both ends (slerp).
    mid = clip.pose(0.5 * float(clip.times[k] + clip.times[k + 1]))
    q = mid.joints[2]
    assert abs(np.linalg.norm(q) - 1) < 1e-9
    a, b = abs(q @ clip.joints[2][k]), abs(q @ clip.joints[2][k + 1])
    assert abs(a - b) < 1e-9
    # Looping clips advance by the cycle offset (in the z-up world: x, -z).
    t = 0.3
    shift = clip.pose(clip.duration + t).root_position - clip.pose(t).root_position
    np.testing.assert_allclose(shift, Y_UP_TO_Z_UP @ clip.cycle_offset, atol=1e-9)


def test_joint_definitions(renderer) -> None:
    hum = renderer.humanoid
    p = renderer.p
    joints = hum.pose_joints(load_clip("dance_a").pose(0.7))
    for name in (
        "right_ankle",
        "left_knee",
        "right_hip",
        "left_wrist",
        "right_elbow",
        "left_shoulder",
    ):
        link = hum.link_index[name]
        frame = p.getLinkState(
            hum.body, link, computeForwardKinematics=True, physicsClientId=hum.client
        )[4]
        np.testing.assert_allclose(joints[J(name)], frame, atol=1e-9)
    np.testing.assert_allclose(
        joints[J("pelvis")], 0.5 * (joints[J("right_hip")] + joints[J("left_hip")])
    )
    np.testing.assert_allclose(
        joints[J("thorax")], 0.5 * (joints[J("right_shoulder")] + joints[J("left_shoulder")])
    )
    neck = p.getLinkState(
        hum.body, hum.link_index["neck"], computeForwardKinematics=True, physicsClientId=hum.client
    )
    np.testing.assert_allclose(joints[J("upper_neck")], neck[4], atol=1e-9)
    head = np.asarray(joints[J("head_top")]) - np.asarray(neck[4])
    R = np.array(p.getMatrixFromQuaternion(neck[5])).reshape(3, 3)
    np.testing.assert_allclose(R.T @ head, [0.0, HEAD_TOP_OFFSET, 0.0], atol=1e-9)
    # Standing: the head is above the pelvis in the z-up world, the person about 1.7 m tall.
    stand = hum.pose_joints(load_clip("walk").pose(0.0))
    assert 1.4 < stand[J("head_top"), 2] - min(stand[:, 2]) < 1.9


# --------------------------------------------------------------------------------------------
# Exact calibration of the humanoid renders
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("supersample", [1, 2])
def test_render_window_is_exactly_calibrated(renderer, supersample: int) -> None:
    """A flat square facing the camera renders centred on its projection (mean error ~0)."""
    from training.synth.cameras import CameraView

    p, client = renderer.p, renderer.client
    K = np.array([[500.0, 0, 157.3], [0, 510.0, 121.7], [0, 0, 1]])
    C = np.array([50.0, 50.0, 50.0])  # far from the humanoid
    view = CameraView(320, 240, K, np.zeros(5), np.eye(3), C)
    shape = p.createVisualShape(p.GEOM_BOX, halfExtents=[0.05, 0.05, 0.001], physicsClientId=client)
    rng = np.random.default_rng(0)
    errors = []
    for _ in range(24):
        X = C + np.array([rng.uniform(-0.5, 0.5), rng.uniform(-0.3, 0.3), 3.0])
        quat = p.getQuaternionFromEuler([0, 0, rng.uniform(0, math.pi / 2)])
        body = p.createMultiBody(
            baseVisualShapeIndex=shape,
            basePosition=X.tolist(),
            baseOrientation=quat,
            physicsClientId=client,
        )
        uv = view.project_pinhole(X[None])[0]
        u0, v0 = int(uv[0]) - 20, int(uv[1]) - 17  # an off-centre window around it
        s = supersample
        gl_view, gl_proj = gl_matrices(view, (u0, v0, 41, 35), s)
        img = p.getCameraImage(
            41 * s, 35 * s, gl_view, gl_proj, renderer=p.ER_TINY_RENDERER, physicsClientId=client
        )
        cover = (np.asarray(img[4]).reshape(35 * s, 41 * s) == body).astype(np.float32)
        cover = cv2.resize(cover, (41, 35), interpolation=cv2.INTER_AREA)
        ys, xs = np.mgrid[0:35, 0:41]
        centroid = np.array([(xs * cover).sum(), (ys * cover).sum()]) / cover.sum()
        errors.append(centroid + np.array([u0, v0]) - uv)
        p.removeBody(body, physicsClientId=client)
    errors = np.array(errors)
    assert np.all(np.abs(errors.mean(0)) < 0.03), errors.mean(0)
    assert np.abs(errors).max() < 0.5


# --------------------------------------------------------------------------------------------
# Labels of rendered frames
# --------------------------------------------------------------------------------------------


def _check_frames(renderer, raw: bool, seed: int) -> None:
    on_person, total = 0, 0
    for i, clip in enumerate(("walk", "punch", "getup_faceup")):
        duration = load_clip(clip).duration
        plan = renderer.plan(
            np.random.SeedSequence([seed, i]), clip, np.array([0.2, 0.6]) * duration, raw=raw
        )
        rig = plan.rig
        assert 0.06 <= rig.baseline <= 0.30
        if not raw:
            hfov = 2 * math.degrees(math.atan(160 / rig.left.K[0, 0]))
            assert 50 - 1e-6 <= hfov <= 90 + 1e-6
            np.testing.assert_array_equal(rig.left.K, rig.right.K)
        for frame in renderer.frames(plan):
            L = frame.labels
            assert L["rectified"] is (not raw)
            T = L["T_world_to_cam"]
            np.testing.assert_allclose(
                L["joints_3d_cam"], L["joints_3d_world"] @ T[:3, :3].T + T[:3, 3]
            )
            assert 1.0 < L["joints_3d_cam"][J("pelvis"), 2] < 7.0
            rectified = []
            for v, side in enumerate(("left", "right")):
                P = L[f"P_{side}"]
                expected = project(L["joints_3d_cam"], P)
                uv = L["joints_2d"][v]
                if raw:
                    assert np.any(L[f"D_{side}"] != 0)
                    uv = undistort_points(
                        uv, L[f"K_{side}"], L[f"D_{side}"], "plumb_bob", R=L[f"R_{side}"], P=P
                    )
                np.testing.assert_allclose(uv, expected, atol=1e-6)
                rectified.append(uv)
                # Joints land on the person's pixels (silhouette dilated 3 px).
                mask = cv2.dilate(frame.masks[v].astype(np.uint8), np.ones((7, 7), np.uint8))
                px = np.round(L["joints_2d"][v]).astype(int)
                inside = (px[:, 0] >= 0) & (px[:, 0] < 320) & (px[:, 1] >= 0) & (px[:, 1] < 240)
                assert inside.all(), "the person must be fully in view"
                on_person += int(mask[px[:, 1], px[:, 0]].sum())
                total += len(px)
                x0, y0, x1, y1 = L["box"][v]
                assert np.all((L["joints_2d"][v] >= [x0, y0]) & (L["joints_2d"][v] <= [x1, y1]))
            # Rectified rows agree between the views; disparity is positive (in front).
            np.testing.assert_allclose(rectified[0][:, 1], rectified[1][:, 1], atol=1e-6)
            assert np.all(rectified[0][:, 0] > rectified[1][:, 0])
            assert frame.images.shape == (2, 240, 320, 3) and frame.images.dtype == np.uint8
    assert on_person / total >= 0.95, on_person / total


def test_rectified_labels_land_on_person(renderer) -> None:
    _check_frames(renderer, raw=False, seed=11)


def test_raw_rig_labels_land_on_person(renderer) -> None:
    _check_frames(renderer, raw=True, seed=12)


def test_follow_camera_keeps_person_in_view(renderer) -> None:
    times = np.arange(0, 5.0, 1 / 10)
    plan = renderer.plan(np.random.SeedSequence(3), "run", times, follow=None)
    assert plan.camera_path is not None  # run travels ~18 m in 5 s: a static rig cannot see it
    for f in range(len(times)):
        rig = plan.rig_at(f)
        assert all(fits_in_view(v, plan.joints_world[f]) for v in rig.views)


def test_validation_split_renders_only_validation_clips(renderer) -> None:
    from training.synth.generate import DatasetConfig, plan_rig

    cfg = DatasetConfig(split="val", frames=40, frames_per_rig=2, width=320, height=240)
    clips = {plan_rig(renderer, cfg, r).clip for r in range(8)}
    assert clips <= set(VAL_CLIPS)
    cfg = DatasetConfig(split="train", frames=40, frames_per_rig=2, width=320, height=240)
    clips = {plan_rig(renderer, cfg, r).clip for r in range(8)}
    assert clips <= set(TRAIN_CLIPS)


# --------------------------------------------------------------------------------------------
# Dataset determinism and the CLI
# --------------------------------------------------------------------------------------------


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def test_dataset_is_deterministic_by_seed(tmp_path: Path) -> None:
    from training.__main__ import main

    common = [
        "--frames",
        "4",
        "--frames-per-rig",
        "2",
        "--width",
        "160",
        "--height",
        "120",
        "--no-progress",
    ]
    assert (
        main(["synth", "--out", str(tmp_path / "a"), "--seed", "5", "--workers", "1", *common]) == 0
    )
    assert (
        main(["synth", "--out", str(tmp_path / "b"), "--seed", "5", "--workers", "2", *common]) == 0
    )
    assert (
        main(["synth", "--out", str(tmp_path / "c"), "--seed", "6", "--workers", "1", *common]) == 0
    )
    a, b = (_files(tmp_path / x) for x in "ab")
    labels = [k for k in a if k.endswith(".npz")]
    assert len(labels) == 4
    # Same seed: byte-identical labels and images, whatever the number of workers.
    assert a == b
    # Another seed: other scenes.
    from training.data.stereo_dataset import StereoDataset

    da, dc = StereoDataset(tmp_path / "a"), StereoDataset(tmp_path / "c")
    assert len(da) == len(dc) == 4
    assert not np.allclose(da[0]["K_left"], dc[0]["K_left"])
    assert not np.array_equal(da[0]["left"], dc[0]["left"])
    assert da.info["split"] == "train" and da.info["skeleton"] == "mpii16"
    assert {s.split("_")[-1] for s in da.sequences} == {"000", "001"}


def test_rig_times_snapshots_and_video() -> None:
    from training.synth.generate import rig_times

    rng = np.random.default_rng(0)
    snaps = rig_times(rng, 4.0, 8, fps=0.0)
    assert snaps.shape == (8,) and np.all(np.diff(snaps) >= 0) and 0 <= snaps[0] <= snaps[-1] <= 4
    video = rig_times(rng, 4.0, 30, fps=30.0)
    np.testing.assert_allclose(np.diff(video), 1 / 30, atol=1e-12)
    assert video[0] >= 0.0 and video[-1] <= 4.0 + 1e-9  # inside the clip: 29/30 s of 4 s
    longer = rig_times(rng, 0.5, 30, fps=30.0)  # longer than the clip: starts at 0
    assert longer[0] == 0.0 and longer[-1] == pytest.approx(29 / 30)


def test_continuous_dataset_has_consecutive_frames(tmp_path: Path) -> None:
    from training.__main__ import main
    from training.data.stereo_dataset import StereoDataset

    args = ["synth", "--out", str(tmp_path / "v"), "--split", "val", "--frames", "6"]
    args += ["--frames-per-rig", "3", "--fps", "25", "--width", "160", "--height", "120"]
    assert main([*args, "--workers", "1", "--no-progress"]) == 0
    ds = StereoDataset(tmp_path / "v")
    assert ds.info["config"]["fps"] == 25.0
    by_seq: dict[str, list[tuple[int, float]]] = {}
    for i in range(len(ds)):
        sample = ds[i]
        by_seq.setdefault(sample["sequence"], []).append((sample["frame"], sample["time"]))
    assert len(by_seq) == 2
    for frames in by_seq.values():
        times = [t for _, t in sorted(frames)]
        np.testing.assert_allclose(np.diff(times), 1 / 25, atol=1e-5)
    # Rerunning with the same config continues (nothing to do); another fps is refused.
    assert main([*args, "--workers", "1", "--no-progress"]) == 0
    args[args.index("25")] = "30"
    assert main([*args, "--workers", "1", "--no-progress"]) == 2
    args[args.index("30")] = "-1"
    args[args.index(str(tmp_path / "v"))] = str(tmp_path / "w")
    assert main([*args, "--workers", "1", "--no-progress"]) == 2
    assert not (tmp_path / "w").exists()


def test_dataset_written_before_fps_existed_resumes(tmp_path: Path) -> None:
    import json

    from training.synth.generate import DatasetConfig, generate_dataset

    cfg = DatasetConfig(split="val", frames=2, frames_per_rig=2, width=160, height=120)
    generate_dataset(tmp_path / "old", cfg, workers=1, progress=False)
    info_path = tmp_path / "old" / "dataset.json"
    info = json.loads(info_path.read_text())
    del info["config"]["fps"]  # as written by generator releases without the field
    info_path.write_text(json.dumps(info))
    summary = generate_dataset(tmp_path / "old", cfg, workers=1, progress=False)
    assert summary["frames_written"] == 0  # recognised as the same dataset, complete


# --------------------------------------------------------------------------------------------
# Bags
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("storage", "raw"), [("mcap", False), ("sqlite3", True)])
def test_bag_round_trip(tmp_path: Path, storage: str, raw: bool) -> None:
    from rosbags.highlevel import AnyReader
    from rosbags.typesys import Stores, get_typestore

    from training.synth.bag import DEFAULT_START_NS, bag_topics, write_synthetic_bag

    path = tmp_path / "synth_bag"
    summary = write_synthetic_bag(
        path,
        "dance_a",
        0.1,
        seed=1,
        raw=raw,
        storage=storage,
        width=160,
        height=120,
        progress=False,
    )
    n, rate = summary["frames"], summary["fps"]
    assert n == 6 and abs(rate - 60.0) < 0.1
    assert "version: 8" in (path / "metadata.yaml").read_text()
    topics = bag_topics(raw)
    types = {
        topics["left_image"]: "sensor_msgs/msg/Image",
        topics["right_image"]: "sensor_msgs/msg/Image",
        topics["left_info"]: "sensor_msgs/msg/CameraInfo",
        topics["right_info"]: "sensor_msgs/msg/CameraInfo",
        "/ground_truth/joints": "geometry_msgs/msg/PoseArray",
    }
    assert ("image_raw" in topics["left_image"]) == raw
    stamps: dict[str, list[int]] = {t: [] for t in types}
    infos, joints = {}, []
    with AnyReader([path], default_typestore=get_typestore(Stores.ROS2_HUMBLE)) as reader:
        assert {c.topic: c.msgtype for c in reader.connections} == types
        assert all(c.msgcount == n for c in reader.connections)
        for conn, t, data in reader.messages():
            msg = reader.deserialize(data, conn.msgtype)
            stamp = msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec
            assert stamp == t
            stamps[conn.topic].append(stamp)
            side = "right" if "/right/" in conn.topic else "left"
            assert msg.header.frame_id == f"stereo_{side}_optical_frame"
            if conn.msgtype.endswith("Image"):
                assert (msg.height, msg.width, msg.encoding, msg.step) == (120, 160, "rgb8", 480)
                assert msg.data.size == 120 * 160 * 3
            elif conn.msgtype.endswith("CameraInfo"):
                infos[side] = msg
            else:
                joints.append(
                    np.array([[p.position.x, p.position.y, p.position.z] for p in msg.poses])
                )
    expected = [DEFAULT_START_NS + round(k / rate * 1e9) for k in range(n)]
    assert all(s == expected for s in stamps.values())
    assert len(joints) == n and joints[0].shape == (SYNTHETIC.num_joints, 3)
    P = {s: np.asarray(infos[s].p).reshape(3, 4) for s in infos}
    assert -P["right"][0, 3] / P["right"][0, 0] == pytest.approx(summary["baseline_m"])
    assert infos["left"].distortion_model == "plumb_bob"
    assert np.any(np.asarray(infos["left"].d) != 0) == raw
    for s in ("left", "right"):  # the person is in front of and inside both rectified views
        uv = project(joints[-1], P[s])
        assert np.all(joints[-1][:, 2] > 0.5) and np.all((uv > -40) & (uv < 200))


def test_message_factory_backends_agree() -> None:
    from rosbags.typesys import Stores, get_typestore

    from training.synth.bag import MessageFactory, rclpy_available, serialize

    if not rclpy_available():
        pytest.skip("rclpy not importable")
    store = get_typestore(Stores.ROS2_HUMBLE)
    a, b = MessageFactory(use_rclpy=True), MessageFactory(use_rclpy=False)
    info = dict(
        width=5,
        height=4,
        distortion_model="plumb_bob",
        d=[0.1, 0, 0, 0, 0],
        k=list(range(9)),
        r=list(range(9)),
        p=list(range(12)),
    )
    rgb = np.arange(60, dtype=np.uint8).reshape(4, 5, 3)
    pts = np.arange(48, dtype=float).reshape(16, 3)
    for name, args, msgtype in (
        ("image", (rgb, 1_700_000_000_123_456_789, "f"), "sensor_msgs/msg/Image"),
        ("camera_info", (info, 5, "x"), "sensor_msgs/msg/CameraInfo"),
        ("pose_array", (pts, 7, "l"), "geometry_msgs/msg/PoseArray"),
    ):
        ra = store.deserialize_cdr(serialize(getattr(a, name)(*args)), msgtype)
        rb = store.deserialize_cdr(serialize(getattr(b, name)(*args)), msgtype)
        assert repr(ra) == repr(rb)


def test_generator_distortion_matches_geometry() -> None:
    from stereo_pose3d.geometry import distort_points
    from training.synth.cameras import distort_plumb_bob

    rng = np.random.default_rng(0)
    xy = rng.uniform(-0.8, 0.8, (50, 2))
    K = np.array([[400.0, 0.5, 320.0], [0, 405.0, 240.0], [0, 0, 1]])
    D = np.array([-0.12, 0.03, 0.001, -0.0007, 0.002])
    np.testing.assert_allclose(distort_plumb_bob(xy, K, D), distort_points(xy, K, D), atol=1e-9)
