"""DeepMimic motion clips on pybullet's humanoid: loading, slerp interpolation, MPII joints.

World frame of the synthetic scenes: **z up**, metres, floor at ``z = 0``. The DeepMimic clips are
y-up; a point ``(x, y, z)`` of a clip is ``(x, -z, y)`` in the world (a +90 deg rotation about x).

A clip frame is ``[duration, root position (3), root rotation (w, x, y, z), chest, neck,
right hip, right knee (1 angle), right ankle, right shoulder, right elbow (1), left hip, left knee,
left ankle, left shoulder, left elbow]`` with quaternions ``w, x, y, z``. pybullet uses
``x, y, z, w``; everything in this module uses ``x, y, z, w``.

Joint definitions on the humanoid (``globalScaling=0.25``) follow :mod:`stereo_pose3d.skeleton`.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np

from stereo_pose3d.skeleton import SYNTHETIC

CLIP_NAMES: tuple[str, ...] = (
    "backflip",
    "cartwheel",
    "crawl",
    "dance_a",
    "dance_b",
    "getup_facedown",
    "getup_faceup",
    "jump",
    "kick",
    "punch",
    "roll",
    "run",
    "spin",
    "spinkick",
    "walk",
)
VAL_CLIPS: tuple[str, ...] = ("backflip", "cartwheel", "dance_b")
TRAIN_CLIPS: tuple[str, ...] = tuple(c for c in CLIP_NAMES if c not in VAL_CLIPS)

HUMANOID_URDF = "humanoid/humanoid.urdf"
HUMANOID_SCALE = 0.25
HEAD_TOP_OFFSET = 0.2775  # m along the neck link's local +y (top of the head sphere)

# Order of the rotations in a clip frame after the root, with their number of values (w,x,y,z = 4).
MOCAP_JOINTS: tuple[tuple[str, int], ...] = (
    ("chest", 4),
    ("neck", 4),
    ("right_hip", 4),
    ("right_knee", 1),
    ("right_ankle", 4),
    ("right_shoulder", 4),
    ("right_elbow", 1),
    ("left_hip", 4),
    ("left_knee", 1),
    ("left_ankle", 4),
    ("left_shoulder", 4),
    ("left_elbow", 1),
)

# y-up clip -> z-up world.
Y_UP_TO_Z_UP = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
# The same rotation as a quaternion (x, y, z, w): +90 deg about x.
_Q_Y_UP_TO_Z_UP = np.array([np.sin(np.pi / 4), 0.0, 0.0, np.cos(np.pi / 4)])


def clips_for_split(split: str) -> tuple[str, ...]:
    """Clip names of a split: ``"train"`` (12 clips), ``"val"`` (backflip, cartwheel, dance_b),
    ``"all"``, or a comma separated list of clip names."""
    if split == "train":
        return TRAIN_CLIPS
    if split in ("val", "validation"):
        return VAL_CLIPS
    if split == "all":
        return CLIP_NAMES
    names = tuple(s.strip() for s in split.split(",") if s.strip())
    unknown = [n for n in names if n not in CLIP_NAMES]
    if not names or unknown:
        raise ValueError(
            f"unknown split or clip(s) {unknown or split!r}; use train, val, all or clip names "
            f"from {list(CLIP_NAMES)}"
        )
    return names


def pybullet_data_path() -> Path:
    import pybullet_data

    return Path(pybullet_data.getDataPath())


# --------------------------------------------------------------------------------------------
# Quaternions (x, y, z, w)
# --------------------------------------------------------------------------------------------


def quat_multiply(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Hamilton product ``a * b`` of quaternions ``(..., 4)`` in x, y, z, w order."""
    ax, ay, az, aw = np.moveaxis(np.asarray(a, dtype=np.float64), -1, 0)
    bx, by, bz, bw = np.moveaxis(np.asarray(b, dtype=np.float64), -1, 0)
    return np.stack(
        [
            aw * bx + ax * bw + ay * bz - az * by,
            aw * by - ax * bz + ay * bw + az * bx,
            aw * bz + ax * by - ay * bx + az * bw,
            aw * bw - ax * bx - ay * by - az * bz,
        ],
        axis=-1,
    )


def quat_to_matrix(q: np.ndarray) -> np.ndarray:
    """Rotation matrices ``(..., 3, 3)`` of quaternions ``(..., 4)`` (x, y, z, w)."""
    q = np.asarray(q, dtype=np.float64)
    q = q / np.linalg.norm(q, axis=-1, keepdims=True)
    x, y, z, w = np.moveaxis(q, -1, 0)
    return np.stack(
        [
            np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)], -1),
            np.stack([2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)], -1),
            np.stack([2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)], -1),
        ],
        axis=-2,
    )


def quat_slerp(q0: np.ndarray, q1: np.ndarray, t: float | np.ndarray) -> np.ndarray:
    """Spherical linear interpolation (shortest path) of quaternions ``(..., 4)``."""
    q0 = np.asarray(q0, dtype=np.float64)
    q1 = np.asarray(q1, dtype=np.float64)
    t = np.asarray(t, dtype=np.float64)[..., None]
    dot = np.sum(q0 * q1, axis=-1, keepdims=True)
    q1 = np.where(dot < 0.0, -q1, q1)
    dot = np.abs(dot)
    theta = np.arccos(np.clip(dot, -1.0, 1.0))
    sin_theta = np.sin(theta)
    small = sin_theta < 1e-6
    safe = np.where(small, 1.0, sin_theta)
    w0 = np.where(small, 1.0 - t, np.sin((1.0 - t) * theta) / safe)
    w1 = np.where(small, t, np.sin(t * theta) / safe)
    q = w0 * q0 + w1 * q1
    return q / np.linalg.norm(q, axis=-1, keepdims=True)


# --------------------------------------------------------------------------------------------
# Clips
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pose:
    """A humanoid pose in the z-up world: root position (3,) m, root rotation (4,) xyzw, and
    per-joint targets in :data:`MOCAP_JOINTS` order (quaternions xyzw or one angle, rad)."""

    root_position: np.ndarray
    root_rotation: np.ndarray
    joints: tuple[np.ndarray, ...]


@dataclass(frozen=True)
class MotionClip:
    """One DeepMimic clip with keyframe times; :meth:`pose` samples it at any time (slerp)."""

    name: str
    times: np.ndarray  # (F,) keyframe start times, s
    root_position: np.ndarray  # (F, 3) y-up clip frame, m
    root_rotation: np.ndarray  # (F, 4) xyzw, y-up clip frame
    joints: tuple[np.ndarray, ...]  # per MOCAP_JOINTS: (F, 4) xyzw or (F, 1) rad
    loop: bool

    @property
    def duration(self) -> float:
        """Length of one pass through the clip (s)."""
        return float(self.times[-1])

    @property
    def rate(self) -> float:
        """Keyframe rate (Hz): the inverse of the median keyframe duration."""
        return float(1.0 / np.median(np.diff(self.times)))

    @property
    def cycle_offset(self) -> np.ndarray:
        """Horizontal root displacement (y-up clip frame, m) of one cycle of a looping clip."""
        offset = self.root_position[-1] - self.root_position[0]
        return np.array([offset[0], 0.0, offset[2]])

    def pose(self, t: float) -> Pose:
        """Pose at time ``t`` (s). Looping clips repeat with the root advanced by
        :attr:`cycle_offset` per cycle (DeepMimic's convention); other clips restart from the
        beginning after their end."""
        duration = self.duration
        cycles = int(np.floor(t / duration)) if duration > 0 else 0
        local = t - cycles * duration
        if cycles and local == 0.0 and t > 0:  # the clip's last frame, not the next cycle's first
            cycles, local = cycles - 1, duration
        k = int(np.searchsorted(self.times, local, side="right")) - 1
        k = min(max(k, 0), len(self.times) - 2)
        dt = self.times[k + 1] - self.times[k]
        f = float(np.clip((local - self.times[k]) / dt, 0.0, 1.0)) if dt > 0 else 0.0
        root = (1 - f) * self.root_position[k] + f * self.root_position[k + 1]
        if self.loop:
            root = root + cycles * self.cycle_offset
        rot = quat_slerp(self.root_rotation[k], self.root_rotation[k + 1], f)
        joints = []
        for values in self.joints:
            if values.shape[1] == 4:
                joints.append(quat_slerp(values[k], values[k + 1], f))
            else:
                joints.append((1 - f) * values[k] + f * values[k + 1])
        return Pose(
            root_position=Y_UP_TO_Z_UP @ root,
            root_rotation=quat_multiply(_Q_Y_UP_TO_Z_UP, rot),
            joints=tuple(joints),
        )


def _wxyz_to_xyzw(q: np.ndarray) -> np.ndarray:
    """Clip quaternions (w, x, y, z; 6 decimals) -> unit quaternions (x, y, z, w)."""
    q = np.concatenate([q[:, 1:4], q[:, :1]], axis=1)
    return q / np.linalg.norm(q, axis=1, keepdims=True)


@cache
def load_clip(name: str) -> MotionClip:
    """Load ``data/motions/humanoid3d_<name>.txt`` from pybullet_data."""
    if name not in CLIP_NAMES:
        raise ValueError(f"unknown clip {name!r}; known: {list(CLIP_NAMES)}")
    path = pybullet_data_path() / "data" / "motions" / f"humanoid3d_{name}.txt"
    data = json.loads(path.read_text())
    frames = np.asarray(data["Frames"], dtype=np.float64)
    if frames.ndim != 2 or frames.shape[1] != 44:
        raise ValueError(f"{path}: expected frames of 44 values, got shape {frames.shape}")
    times = np.concatenate([[0.0], np.cumsum(frames[:-1, 0])])
    col = 8
    joints = []
    for _, size in MOCAP_JOINTS:
        values = frames[:, col : col + size]
        joints.append(_wxyz_to_xyzw(values) if size == 4 else values.copy())
        col += size
    return MotionClip(
        name=name,
        times=times,
        root_position=frames[:, 1:4].copy(),
        root_rotation=_wxyz_to_xyzw(frames[:, 4:8]),
        joints=tuple(joints),
        loop=str(data.get("Loop", "none")).lower() == "wrap",
    )


# --------------------------------------------------------------------------------------------
# The humanoid in a pybullet client
# --------------------------------------------------------------------------------------------


# Visual-only shapes (URDF units before globalScaling) that close the gaps the DeepMimic body has
# at its joints (waist, hips, knees, shoulders, elbows, neck), so that every joint lies inside the
# rendered silhouette. Link frames, hence the joints, are unchanged. Capsules run along their z.
_FLESH: dict[str, list[tuple[str, str, str]]] = {
    "root": [('<capsule length="0.68" radius="0.25"/>', "0 0.02 0", "0 0 0")],  # hip to hip
    "chest": [
        ('<capsule length="0.5" radius="0.27"/>', "0 -0.25 0", "-1.570796 0 0"),  # abdomen
        ('<capsule length="1.46" radius="0.17"/>', "-0.0962 0.974 0", "0 0 0"),  # shoulder yoke
    ],
    "neck": [('<capsule length="0.2" radius="0.13"/>', "0 0.15 0", "-1.570796 0 0")],
}
for _side in ("right", "left"):
    for _link, _radius in (
        ("hip", 0.22),
        ("knee", 0.2),
        ("ankle", 0.17),
        ("shoulder", 0.18),
        ("elbow", 0.16),
    ):
        _FLESH[f"{_side}_{_link}"] = [(f'<sphere radius="{_radius}"/>', "0 0 0", "0 0 0")]


def _read_urdf() -> str:
    return (pybullet_data_path() / HUMANOID_URDF).read_text().replace("\x00", "")  # has a NUL


def humanoid_urdf_with_flesh() -> str:
    """The humanoid URDF with visual elements: its collision shapes plus :data:`_FLESH`."""
    import xml.etree.ElementTree as ET

    root = ET.fromstring(_read_urdf())
    for link in root.iter("link"):
        shapes = [
            (
                ET.tostring(c.find("geometry")[0], encoding="unicode"),
                c.find("origin").get("xyz"),
                c.find("origin").get("rpy"),
            )
            for c in link.findall("collision")
        ]
        for geometry, xyz, rpy in shapes + _FLESH.get(link.get("name"), []):
            visual = ET.SubElement(link, "visual")
            ET.SubElement(visual, "origin", xyz=xyz, rpy=rpy)
            ET.SubElement(visual, "geometry").append(ET.fromstring(geometry))
    return ET.tostring(root, encoding="unicode")


class Humanoid:
    """pybullet's DeepMimic humanoid in a (DIRECT) client: pose it, read the 16 MPII joints.

    With ``flesh`` (default) the rendered body gets the extra visual shapes of :data:`_FLESH`.
    """

    def __init__(self, client: int, flesh: bool = True) -> None:
        import pybullet as p

        self.p = p
        self.client = client
        with tempfile.TemporaryDirectory(prefix="humanoid_") as tmp:
            urdf = Path(tmp) / "humanoid_visual.urdf"
            urdf.write_text(humanoid_urdf_with_flesh() if flesh else _read_urdf())
            self.body = p.loadURDF(
                str(urdf),
                [0, 0, 0],
                globalScaling=HUMANOID_SCALE,
                useFixedBase=True,
                flags=p.URDF_MAINTAIN_LINK_ORDER,
                physicsClientId=client,
            )
        self.link_index: dict[str, int] = {}
        for j in range(p.getNumJoints(self.body, physicsClientId=client)):
            info = p.getJointInfo(self.body, j, physicsClientId=client)
            self.link_index[info[12].decode()] = j
        self.num_links = len(self.link_index)
        self._mocap_links = [self.link_index[n] for n, _ in MOCAP_JOINTS]
        names = SYNTHETIC.joint_names
        self._limb = [(i, self.link_index[n]) for i, n in enumerate(names) if n in self.link_index]
        self._pelvis = names.index("pelvis")
        self._thorax = names.index("thorax")
        self._upper_neck = names.index("upper_neck")
        self._head_top = names.index("head_top")
        self._hips = (names.index("right_hip"), names.index("left_hip"))
        self._shoulders = (names.index("right_shoulder"), names.index("left_shoulder"))

    def set_pose(self, pose: Pose) -> None:
        p = self.p
        p.resetBasePositionAndOrientation(
            self.body,
            pose.root_position.tolist(),
            pose.root_rotation.tolist(),
            physicsClientId=self.client,
        )
        p.resetJointStatesMultiDof(
            self.body,
            self._mocap_links,
            [j.tolist() for j in pose.joints],
            physicsClientId=self.client,
        )

    def link_frames(self) -> tuple[np.ndarray, np.ndarray]:
        """World positions ``(L, 3)`` and rotations ``(L, 3, 3)`` of the URDF link frames."""
        states = self.p.getLinkStates(
            self.body,
            list(range(self.num_links)),
            computeForwardKinematics=True,
            physicsClientId=self.client,
        )
        pos = np.array([s[4] for s in states], dtype=np.float64)
        rot = quat_to_matrix(np.array([s[5] for s in states], dtype=np.float64))
        return pos, rot

    def joints(self) -> np.ndarray:
        """The 16 MPII joints ``(16, 3)`` (world, m) of the current pose."""
        pos, rot = self.link_frames()
        out = np.zeros((SYNTHETIC.num_joints, 3))
        for i, link in self._limb:
            out[i] = pos[link]
        neck = self.link_index["neck"]
        out[self._pelvis] = 0.5 * (out[self._hips[0]] + out[self._hips[1]])
        out[self._thorax] = 0.5 * (out[self._shoulders[0]] + out[self._shoulders[1]])
        out[self._upper_neck] = pos[neck]
        out[self._head_top] = pos[neck] + rot[neck] @ np.array([0.0, HEAD_TOP_OFFSET, 0.0])
        return out

    def pose_joints(self, pose: Pose) -> np.ndarray:
        """Set ``pose`` and return its joints ``(16, 3)`` (world, m)."""
        self.set_pose(pose)
        return self.joints()
