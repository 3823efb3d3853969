"""Joint sets, bones and colours.

Every joint set is a :class:`Skeleton`: ordered joint names, bones as index pairs, the left/right
mirror permutation (for flip augmentation) and the root joint used for root-relative metrics.

MPII 16 (``MPII``), the order of the MPII Human Pose release::

    0 right_ankle   1 right_knee    2 right_hip      3 left_hip     4 left_knee     5 left_ankle
    6 pelvis        7 thorax        8 upper_neck     9 head_top    10 right_wrist  11 right_elbow
    12 right_shoulder 13 left_shoulder 14 left_elbow 15 left_wrist

On the synthetic humanoid (pybullet's DeepMimic ``humanoid/humanoid.urdf`` at
``globalScaling=0.25``)
the same 16 joints are defined as:

* the 12 limb joints (``right_``/``left_`` + ``ankle, knee, hip, wrist, elbow, shoulder``) are the
  world positions of the URDF link frames of the same-named links (``getLinkState(...)[4]``, the
  link frame, not the centre of mass);
* ``pelvis`` is the midpoint of the two hips, ``thorax`` the midpoint of the two shoulders;
* ``upper_neck`` is the origin of the ``neck`` link frame;
* ``head_top`` is that origin plus 0.2775 m along the neck link's local +y axis (the top of the
  head sphere at this scale).

MADS 19 (``MADS``), the order of the MADS ground truth ``GTpose2`` arrays, in the same snake_case
naming scheme (the release's own order is neck, pelvis, left hip, knee, ankle, toe, right hip, knee,
ankle, toe, left shoulder, elbow, wrist, hand, right shoulder, elbow, wrist, hand, head).
"""

from __future__ import annotations

from dataclasses import dataclass, field

# Colours (RGB in [0, 1]) of markers and drawings: right side red, left blue, centre green.
RIGHT_COLOR = (0.90, 0.20, 0.20)
LEFT_COLOR = (0.20, 0.45, 0.95)
CENTER_COLOR = (0.20, 0.80, 0.30)


@dataclass(frozen=True)
class Skeleton:
    """An ordered joint set with bones.

    Attributes:
        name: short identifier stored in checkpoints and datasets (e.g. ``"mpii16"``).
        joint_names: ordered names; index ``j`` is joint ``j`` in every array of shape (J, ...).
        bones: pairs of joint indices drawn as limbs.
        root: index of the root joint for root-relative metrics.
    """

    name: str
    joint_names: tuple[str, ...]
    bones: tuple[tuple[int, int], ...]
    root: int
    _index: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_index", {n: i for i, n in enumerate(self.joint_names)})
        if len(self._index) != len(self.joint_names):
            raise ValueError(f"skeleton {self.name!r} has duplicate joint names")
        for a, b in self.bones:
            if not (0 <= a < self.num_joints and 0 <= b < self.num_joints):
                raise ValueError(f"skeleton {self.name!r}: bone ({a}, {b}) out of range")

    @property
    def num_joints(self) -> int:
        return len(self.joint_names)

    def index(self, joint_name: str) -> int:
        """Index of ``joint_name``; raises KeyError naming the skeleton if unknown."""
        try:
            return self._index[joint_name]
        except KeyError:
            raise KeyError(f"joint {joint_name!r} is not in skeleton {self.name!r}") from None

    @property
    def flip_permutation(self) -> tuple[int, ...]:
        """``perm[j]``: the joint that ``j`` becomes under a horizontal mirror (left <-> right)."""
        perm = []
        for name in self.joint_names:
            if name.startswith("left_"):
                mirrored = "right_" + name[len("left_") :]
            elif name.startswith("right_"):
                mirrored = "left_" + name[len("right_") :]
            else:
                mirrored = name
            perm.append(self._index.get(mirrored, self._index[name]))
        return tuple(perm)

    def side(self, joint: int) -> str:
        """``"left"``, ``"right"`` or ``"center"`` for joint index ``joint``."""
        name = self.joint_names[joint]
        if name.startswith("left_"):
            return "left"
        if name.startswith("right_"):
            return "right"
        return "center"

    def joint_color(self, joint: int) -> tuple[float, float, float]:
        """RGB colour in [0, 1] of a joint, by side."""
        return {"left": LEFT_COLOR, "right": RIGHT_COLOR, "center": CENTER_COLOR}[self.side(joint)]

    def bone_color(self, bone: tuple[int, int]) -> tuple[float, float, float]:
        """RGB colour of a bone: its child's side, centre when both ends are central."""
        a, b = bone
        for j in (b, a):
            if self.side(j) != "center":
                return self.joint_color(j)
        return CENTER_COLOR


def _bones(names: tuple[str, ...], pairs: list[tuple[str, str]]) -> tuple[tuple[int, int], ...]:
    index = {n: i for i, n in enumerate(names)}
    return tuple((index[a], index[b]) for a, b in pairs)


_MPII_NAMES = (
    "right_ankle",
    "right_knee",
    "right_hip",
    "left_hip",
    "left_knee",
    "left_ankle",
    "pelvis",
    "thorax",
    "upper_neck",
    "head_top",
    "right_wrist",
    "right_elbow",
    "right_shoulder",
    "left_shoulder",
    "left_elbow",
    "left_wrist",
)

MPII = Skeleton(
    name="mpii16",
    joint_names=_MPII_NAMES,
    bones=_bones(
        _MPII_NAMES,
        [
            ("right_ankle", "right_knee"),
            ("right_knee", "right_hip"),
            ("right_hip", "pelvis"),
            ("left_ankle", "left_knee"),
            ("left_knee", "left_hip"),
            ("left_hip", "pelvis"),
            ("pelvis", "thorax"),
            ("thorax", "upper_neck"),
            ("upper_neck", "head_top"),
            ("right_wrist", "right_elbow"),
            ("right_elbow", "right_shoulder"),
            ("right_shoulder", "thorax"),
            ("left_wrist", "left_elbow"),
            ("left_elbow", "left_shoulder"),
            ("left_shoulder", "thorax"),
        ],
    ),
    root=_MPII_NAMES.index("pelvis"),
)

_MADS_NAMES = (
    "neck",
    "pelvis",
    "left_hip",
    "left_knee",
    "left_ankle",
    "left_toe",
    "right_hip",
    "right_knee",
    "right_ankle",
    "right_toe",
    "left_shoulder",
    "left_elbow",
    "left_wrist",
    "left_hand",
    "right_shoulder",
    "right_elbow",
    "right_wrist",
    "right_hand",
    "head",
)

MADS = Skeleton(
    name="mads19",
    joint_names=_MADS_NAMES,
    bones=_bones(
        _MADS_NAMES,
        [
            ("pelvis", "neck"),
            ("neck", "head"),
            ("pelvis", "left_hip"),
            ("left_hip", "left_knee"),
            ("left_knee", "left_ankle"),
            ("left_ankle", "left_toe"),
            ("pelvis", "right_hip"),
            ("right_hip", "right_knee"),
            ("right_knee", "right_ankle"),
            ("right_ankle", "right_toe"),
            ("neck", "left_shoulder"),
            ("left_shoulder", "left_elbow"),
            ("left_elbow", "left_wrist"),
            ("left_wrist", "left_hand"),
            ("neck", "right_shoulder"),
            ("right_shoulder", "right_elbow"),
            ("right_elbow", "right_wrist"),
            ("right_wrist", "right_hand"),
        ],
    ),
    root=_MADS_NAMES.index("pelvis"),
)

# The synthetic humanoid uses the MPII 16 joint set (definitions in the module docstring).
SYNTHETIC = MPII

SKELETONS: dict[str, Skeleton] = {s.name: s for s in (MPII, MADS)}


def get_skeleton(name: str) -> Skeleton:
    """Skeleton by name (``"mpii16"`` or ``"mads19"``), with a clear error for unknown names."""
    try:
        return SKELETONS[name]
    except KeyError:
        raise KeyError(f"unknown skeleton {name!r}; known: {sorted(SKELETONS)}") from None


def skeleton_for_joint_names(joint_names: list[str] | tuple[str, ...]) -> Skeleton:
    """The registered skeleton with exactly these joint names in this order."""
    for skel in SKELETONS.values():
        if tuple(joint_names) == skel.joint_names:
            return skel
    raise KeyError(f"no registered skeleton has joints {list(joint_names)}")
