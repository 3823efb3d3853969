"""MPII Human Pose: readers for the official release and the JSON conversion, crops, PCKh.

Layouts accepted under ``root`` (see ``docs/datasets.md``)::

    root/images/*.jpg                                   (both)
    root/mpii_human_pose_v1_u12_1.mat                   official release (also root/annot/ or
                                                        root/mpii_human_pose_v1_u12_2/)
    root/annot/train.json, valid.json, gt_valid.mat     JSON conversion of Simple Baselines / HRNet
                                                        (also directly in root/)

Coordinates in both files are MATLAB 1-based; every record here is 0-based pixels.

Official ``.mat`` (``RELEASE`` struct): ``annolist(i).image.name``, ``annolist(i).annorect(p)`` with
head box ``x1 y1 x2 y2``, ``annopoints.point(k)`` (``id`` 0..15 in ``skeleton.MPII`` order, ``x``,
``y``, ``is_visible``), ``objpos.x/y`` and ``scale`` (person height / 200 px); ``img_train(i)`` is 1
for training images (the test images carry no joints). Any field may be missing or empty for a
person; persons without joints or without ``objpos``/``scale`` are skipped. A joint counts as
*visible* (= evaluated / trained on) when it is annotated, occluded or not, which is what the JSON
conversion's ``joints_vis`` and ``gt_valid.mat``'s ``jnt_missing`` mean; ``is_visible == 0`` is kept
as ``occluded``. The release has no labelled validation set: with the ``.mat`` we hold out the
images with ``crc32(image name) % 10 == 0`` (~10 %, all persons of an image on the same side).
The JSON conversion's ``valid.json`` is the usual 2958-person validation set (Tompson et al.),
evaluated against ``gt_valid.mat`` (``pos_gt_src (16, 2, N)``, ``jnt_missing (16, N)``,
``headboxes_src (2, 2, N)``, ``dataset_joints`` names) by the official PCKh protocol
(:func:`stereo_pose3d.metrics.pckh`: head size = 0.6 x head-box diagonal, mean without pelvis and
thorax).

Person crops follow Simple Baselines: centre ``c`` moved down by ``15 s`` px, a square of side
``200 s`` (times the augmentation's ``box_scale``, 1.25 by default).
"""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import scipy.io
import torch.utils.data

from stereo_pose3d.metrics import PCKhResult, pckh
from stereo_pose3d.skeleton import MPII

from ..augment import AugmentConfig, augment_view, normalize_image, sample_view_params
from .heatmaps import gaussian_heatmaps

__all__ = [
    "MPII_MAT_NAME",
    "MPIIDataset",
    "MPIIError",
    "MPIIEvalGT",
    "MPIIPerson",
    "find_annotations",
    "load_gt_valid",
    "load_mpii",
    "person_box",
    "read_mpii_json",
    "read_mpii_mat",
    "split_of_image",
    "uncrop_points",
]

MPII_MAT_NAME = "mpii_human_pose_v1_u12_1.mat"
NUM_JOINTS = MPII.num_joints
# gt_valid.mat ``dataset_joints`` abbreviations -> skeleton.MPII joint names.
GT_JOINT_NAMES = {
    "rank": "right_ankle", "rkne": "right_knee", "rhip": "right_hip", "lhip": "left_hip",
    "lkne": "left_knee", "lank": "left_ankle", "pelv": "pelvis", "thor": "thorax",
    "neck": "upper_neck", "head": "head_top", "rwri": "right_wrist", "relb": "right_elbow",
    "rsho": "right_shoulder", "lsho": "left_shoulder", "lelb": "left_elbow",
    "lwri": "left_wrist",
}  # fmt: skip


class MPIIError(ValueError):
    """Missing or malformed MPII files; the message names the file."""


@dataclass
class MPIIPerson:
    """One annotated person (0-based pixel coordinates).

    Attributes:
        image: image file name relative to ``images/``.
        center: (2,) person centre px (MPII ``objpos``).
        scale: person height / 200 px.
        joints: (16, 2) px in ``skeleton.MPII`` order (meaningless where not visible).
        visible: (16,) bool, joint annotated.
        head_box: (4,) x1, y1, x2, y2 px; NaN when the source has none.
        occluded: (16,) bool, annotated but ``is_visible == 0`` (official ``.mat`` only).
    """

    image: str
    center: np.ndarray
    scale: float
    joints: np.ndarray
    visible: np.ndarray
    head_box: np.ndarray = field(default_factory=lambda: np.full(4, np.nan))
    occluded: np.ndarray = field(default_factory=lambda: np.zeros(NUM_JOINTS, bool))


@dataclass
class MPIIEvalGT:
    """Ground truth for PCKh: joints (N, 16, 2) 0-based px, visible (N, 16), head_boxes (N, 4)."""

    joints: np.ndarray
    visible: np.ndarray
    head_boxes: np.ndarray


# --------------------------------------------------------------------------------------------
# Official .mat
# --------------------------------------------------------------------------------------------


def _as_list(value: Any) -> list[Any]:
    """MATLAB struct array / single struct / empty -> Python list (squeeze_me flattens 1x1)."""
    if value is None:
        return []
    if isinstance(value, np.ndarray):
        if value.size == 0:
            return []
        return list(value.reshape(-1))
    return [value]


def _scalar(value: Any) -> float | None:
    """A MATLAB numeric or char scalar as float; None when empty / missing / not a number."""
    if value is None:
        return None
    if isinstance(value, np.ndarray):
        if value.size != 1:
            return None
        value = value.reshape(-1)[0]
    if isinstance(value, bytes | str):
        try:
            return float(value)
        except ValueError:
            return None
    try:
        result = float(value)
    except (TypeError, ValueError):
        return None
    return result if np.isfinite(result) else None


def _field(struct: Any, name: str) -> Any:
    return getattr(struct, name, None) if struct is not None else None


def _load_mat(path: Path, **kwargs: Any) -> dict[str, Any]:
    if not path.is_file():
        raise MPIIError(f"MPII annotation file not found: {path}")
    try:
        return scipy.io.loadmat(str(path), **kwargs)
    except Exception as exc:  # scipy raises several types for corrupt files
        raise MPIIError(f"cannot read MATLAB file {path}: {exc}") from exc


def read_mpii_mat(path: str | Path) -> list[MPIIPerson]:
    """All annotated training persons of the official ``mpii_human_pose_v1_u12_1.mat``."""
    path = Path(path)
    mat = _load_mat(path, struct_as_record=False, squeeze_me=True)
    release = mat.get("RELEASE")
    annolist = _field(release, "annolist")
    img_train = _field(release, "img_train")
    if release is None or annolist is None or img_train is None:
        raise MPIIError(f"{path} is not the MPII release: no RELEASE.annolist / img_train")
    annolist = _as_list(annolist)
    img_train = np.asarray(img_train).reshape(-1)
    if len(img_train) != len(annolist):
        raise MPIIError(
            f"{path}: img_train has {len(img_train)} entries but annolist {len(annolist)}"
        )
    persons: list[MPIIPerson] = []
    for entry, is_train in zip(annolist, img_train, strict=True):
        if int(is_train) != 1:
            continue
        name = _field(_field(entry, "image"), "name")
        if not isinstance(name, str) or not name:
            continue
        for rect in _as_list(_field(entry, "annorect")):
            person = _person_from_rect(name, rect)
            if person is not None:
                persons.append(person)
    return persons


def _person_from_rect(image: str, rect: Any) -> MPIIPerson | None:
    points = _as_list(_field(_field(rect, "annopoints"), "point"))
    objpos = _field(rect, "objpos")
    cx, cy = _scalar(_field(objpos, "x")), _scalar(_field(objpos, "y"))
    scale = _scalar(_field(rect, "scale"))
    if not points or cx is None or cy is None or scale is None or scale <= 0:
        return None
    joints = np.zeros((NUM_JOINTS, 2))
    visible = np.zeros(NUM_JOINTS, bool)
    occluded = np.zeros(NUM_JOINTS, bool)
    for point in points:
        jid, x, y = (_scalar(_field(point, k)) for k in ("id", "x", "y"))
        if jid is None or x is None or y is None or not 0 <= int(jid) < NUM_JOINTS:
            continue
        j = int(jid)
        joints[j] = (x - 1.0, y - 1.0)
        visible[j] = True
        occluded[j] = _scalar(_field(point, "is_visible")) == 0.0
    if not visible.any():
        return None
    box = [_scalar(_field(rect, k)) for k in ("x1", "y1", "x2", "y2")]
    head_box = np.array([np.nan if v is None else v - 1.0 for v in box])
    return MPIIPerson(
        image=image,
        center=np.array([cx - 1.0, cy - 1.0]),
        scale=float(scale),
        joints=joints,
        visible=visible,
        head_box=head_box,
        occluded=occluded,
    )


def split_of_image(image: str) -> str:
    """Deterministic hold-out for the ``.mat`` release: ``"valid"`` for ~10 % of images."""
    return "valid" if zlib.crc32(image.encode()) % 10 == 0 else "train"


# --------------------------------------------------------------------------------------------
# JSON conversion
# --------------------------------------------------------------------------------------------


def read_mpii_json(path: str | Path) -> list[MPIIPerson]:
    """Persons of a Simple Baselines / HRNet ``train.json`` or ``valid.json``."""
    path = Path(path)
    if not path.is_file():
        raise MPIIError(f"MPII annotation file not found: {path}")
    try:
        entries = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise MPIIError(f"cannot read JSON {path}: {exc}") from exc
    if not isinstance(entries, list):
        raise MPIIError(f"{path}: expected a list of person records")
    persons = []
    for i, entry in enumerate(entries):
        try:
            joints = np.asarray(entry["joints"], dtype=np.float64).reshape(NUM_JOINTS, 2)
            vis = np.asarray(entry["joints_vis"], dtype=np.float64).reshape(NUM_JOINTS) > 0
            center = np.asarray(entry["center"], dtype=np.float64).reshape(2)
            scale = float(entry["scale"])
            image = str(entry["image"])
        except (KeyError, TypeError, ValueError) as exc:
            raise MPIIError(f"{path}: record {i} is malformed ({exc!r})") from exc
        persons.append(
            MPIIPerson(image=image, center=center - 1.0, scale=scale, joints=joints - 1.0,
                       visible=vis)
        )  # fmt: skip
    return persons


def load_gt_valid(path: str | Path) -> MPIIEvalGT:
    """``gt_valid.mat`` of the JSON conversion -> :class:`MPIIEvalGT` (0-based, MPII order)."""
    path = Path(path)
    mat = _load_mat(path)
    missing = [k for k in ("pos_gt_src", "jnt_missing", "headboxes_src") if k not in mat]
    if missing:
        raise MPIIError(f"{path} lacks {missing} (expected the HRNet gt_valid.mat)")
    pos = np.asarray(mat["pos_gt_src"], dtype=np.float64)  # (16, 2, N)
    jnt_missing = np.asarray(mat["jnt_missing"])  # (16, N)
    boxes = np.asarray(mat["headboxes_src"], dtype=np.float64)  # (2 corners, 2 xy, N)
    if pos.ndim != 3 or pos.shape[:2] != (NUM_JOINTS, 2) or boxes.shape[:2] != (2, 2):
        raise MPIIError(
            f"{path}: unexpected shapes pos_gt_src {pos.shape}, headboxes {boxes.shape}"
        )
    order = np.arange(NUM_JOINTS)
    if "dataset_joints" in mat:
        names = [
            str(np.asarray(n).reshape(-1)[0]) for n in np.asarray(mat["dataset_joints"]).ravel()
        ]
        try:
            order = np.array([names.index(abbr) for abbr in _gt_abbreviations()])
        except ValueError as exc:
            raise MPIIError(f"{path}: dataset_joints {names} lacks a joint ({exc})") from exc
    joints = pos.transpose(2, 0, 1)[:, order] - 1.0
    visible = (jnt_missing.T == 0)[:, order]
    head_boxes = np.concatenate([boxes[0].T, boxes[1].T], axis=1) - 1.0
    return MPIIEvalGT(joints=joints, visible=visible, head_boxes=head_boxes)


def _gt_abbreviations() -> list[str]:
    by_name = {v: k for k, v in GT_JOINT_NAMES.items()}
    return [by_name[n] for n in MPII.joint_names]


# --------------------------------------------------------------------------------------------
# Layout
# --------------------------------------------------------------------------------------------


def find_annotations(root: str | Path, split: str, annotation: str = "auto") -> tuple[str, Path]:
    """Locate the annotation file: returns (``"json"`` | ``"mat"``, path)."""
    root = Path(root)
    if split not in ("train", "valid", "all"):
        raise ValueError(f"unknown MPII split {split!r} (train | valid | all)")
    if annotation not in ("auto", "json", "mat"):
        raise ValueError(f"unknown annotation kind {annotation!r} (auto | json | mat)")
    if annotation in ("auto", "json") and split != "all":
        for candidate in (root / "annot" / f"{split}.json", root / f"{split}.json"):
            if candidate.is_file():
                return "json", candidate
    if annotation in ("auto", "mat"):
        for folder in (root, root / "annot", root / "mpii_human_pose_v1_u12_2"):
            if (folder / MPII_MAT_NAME).is_file():
                return "mat", folder / MPII_MAT_NAME
    wanted = {
        "json": f"annot/{split}.json",
        "mat": MPII_MAT_NAME,
        "auto": f"annot/{split}.json or {MPII_MAT_NAME}",
    }[annotation]
    raise MPIIError(f"no MPII annotations under {root}: expected {wanted}")


def load_mpii(
    root: str | Path, split: str = "train", annotation: str = "auto"
) -> tuple[list[MPIIPerson], MPIIEvalGT | None]:
    """Persons of ``split`` and, for the JSON ``valid`` split with ``gt_valid.mat``, its eval GT."""
    kind, path = find_annotations(root, split, annotation)
    if kind == "json":
        persons = read_mpii_json(path)
        gt = None
        gt_path = path.parent / f"gt_{split}.mat"
        if gt_path.is_file():
            gt = load_gt_valid(gt_path)
            if len(gt.joints) != len(persons):
                raise MPIIError(
                    f"{gt_path} has {len(gt.joints)} persons but {path} has {len(persons)}"
                )
            for person, box in zip(persons, gt.head_boxes, strict=True):
                person.head_box = box.copy()
        return persons, gt
    persons = read_mpii_mat(path)
    if split != "all":
        persons = [p for p in persons if split_of_image(p.image) == split]
    return persons, None


def person_box(center: np.ndarray, scale: float) -> np.ndarray:
    """Simple Baselines person box xyxy (before ``box_scale``): centre moved down by ``15 s``,
    square of side ``200 s`` px."""
    cx, cy = float(center[0]), float(center[1]) + 15.0 * scale
    half = 100.0 * scale
    return np.array([cx - half, cy - half, cx + half, cy + half])


def uncrop_points(uv_crop, affine):
    """Crop pixels ``(..., J, 2)`` -> full-image pixels (inverse of ``affine (..., 3, 3)``)."""
    A_inv = np.linalg.inv(np.asarray(affine, dtype=np.float64))
    uv = np.asarray(uv_crop, dtype=np.float64)
    return uv @ np.swapaxes(A_inv[..., :2, :2], -1, -2) + A_inv[..., None, :2, 2]


# --------------------------------------------------------------------------------------------
# Dataset
# --------------------------------------------------------------------------------------------


class MPIIDataset(torch.utils.data.Dataset):
    """MPII person crops with heatmap targets.

    Args:
        root: MPII folder (see module docstring).
        split: ``"train"``, ``"valid"`` or ``"all"`` (``.mat`` only).
        train: augment (default: ``split == "train"``); False gives the deterministic centre crop.
        augment: :class:`AugmentConfig` (default config); ignored when ``train`` is False.
        out_size: crop (w, h) px; heatmap_size (w, h); sigma in heatmap px.
        annotation: ``"auto"`` (JSON when present, else ``.mat``), ``"json"`` or ``"mat"``.
        seed: None -> fresh randomness per item; int -> item ``i`` always augmented the same way.

    Items (numpy, collated to tensors by the DataLoader):
        ``image`` (3, h, w) float32 ImageNet-normalised RGB; ``heatmaps`` (16, hh, hw) float32;
        ``heatmap_weight`` (16,) float32; ``joints_2d`` (16, 2) float32 crop px;
        ``visibility`` (16,) float32; ``affine`` (3, 3) float32 full image -> crop;
        ``head_box`` (4,) float32 full-image px (NaN if unknown); ``flipped`` bool; ``index`` int.
    """

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        train: bool | None = None,
        augment: AugmentConfig | None = None,
        out_size: tuple[int, int] = (256, 256),
        heatmap_size: tuple[int, int] = (64, 64),
        sigma: float = 2.0,
        annotation: str = "auto",
        seed: int | None = None,
    ) -> None:
        self.root = Path(root)
        self.image_dir = self.root / "images"
        self.split = split
        self.train = split == "train" if train is None else train
        self.config = augment or AugmentConfig()
        self.out_size = tuple(out_size)
        self.heatmap_size = tuple(heatmap_size)
        self.sigma = sigma
        self.seed = seed
        self.persons, self.eval_gt = load_mpii(self.root, split, annotation)
        if not self.persons:
            raise MPIIError(f"no annotated persons in the MPII {split!r} split under {self.root}")

    def __len__(self) -> int:
        return len(self.persons)

    def load_image(self, index: int) -> np.ndarray:
        """RGB uint8 image of person ``index``; a clear error naming a missing/corrupt file."""
        path = self.image_dir / self.persons[index].image
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None:
            raise MPIIError(f"cannot read MPII image {path} (missing or corrupt)")
        return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)

    def __getitem__(self, index: int) -> dict[str, Any]:
        person = self.persons[index]
        rng = np.random.default_rng(None if self.seed is None else [self.seed, index])
        config = self.config
        params = sample_view_params(config, rng) if self.train else None
        flip = bool(self.train and config.flip and rng.random() < config.flip_prob)
        view = augment_view(
            self.load_image(index), person_box(person.center, person.scale), person.joints,
            person.visible, config, rng, params=params, flip=flip,
            flip_permutation=MPII.flip_permutation, out_size=self.out_size, train=self.train,
        )  # fmt: skip
        heatmaps, weight = gaussian_heatmaps(
            view["joints_2d"], view["visibility"], self.out_size, self.heatmap_size, self.sigma
        )
        return {
            "image": normalize_image(view["image"]),
            "heatmaps": heatmaps,
            "heatmap_weight": weight,
            "joints_2d": np.nan_to_num(view["joints_2d"]).astype(np.float32),
            "visibility": view["visibility"].astype(np.float32),
            "affine": view["affine"].astype(np.float32),
            "head_box": person.head_box.astype(np.float32),
            "flipped": flip,
            "index": index,
        }

    def ground_truth(self) -> MPIIEvalGT:
        """Evaluation ground truth: ``gt_valid.mat`` when present, else the records themselves."""
        if self.eval_gt is not None:
            return self.eval_gt
        return MPIIEvalGT(
            joints=np.stack([p.joints for p in self.persons]),
            visible=np.stack([p.visible for p in self.persons]),
            head_boxes=np.stack([p.head_box for p in self.persons]),
        )

    def evaluate(self, predictions: np.ndarray, threshold: float = 0.5) -> PCKhResult:
        """Official PCKh of ``predictions (N, 16, 2)`` (0-based full-image px, dataset order).

        Crop predictions go back to the image with :func:`uncrop_points` and the item's
        ``affine`` (which includes any flip; a flipped prediction also needs the joint swap).
        """
        gt = self.ground_truth()
        predictions = np.asarray(predictions, dtype=np.float64)
        if predictions.shape != gt.joints.shape:
            raise ValueError(f"predictions {predictions.shape} != ground truth {gt.joints.shape}")
        if not np.isfinite(gt.head_boxes).all():
            raise MPIIError(
                f"the {self.split!r} annotations carry no head boxes: PCKh needs gt_valid.mat "
                "next to valid.json, or the official .mat"
            )
        return pckh(predictions, gt.joints, gt.visible, gt.head_boxes, threshold=threshold)
