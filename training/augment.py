"""Person-crop augmentation keeping images, 2D labels, projection matrices and 3D targets in step.

Every geometric change is a 3x3 pixel affine ``A`` (full image -> crop pixels) built with
:func:`stereo_pose3d.geometry.crop_transform` (box centre, side ``max(w, h) * box_scale * s``,
rotation ``r``) plus an optional shift; the crop is ``cv2.warpAffine(image, A[:2])``, the 2D labels
are ``A uv`` and the crop's projection is ``P' = A @ P`` so that ``project(P', X) == A uv``.

Horizontal flip. Mirroring the crop is the affine ``F = [[-1, 0, W - 1], [0, 1, 0], [0, 0, 1]]``
(``W`` = crop width), applied after ``A``. A mirrored image shows a person of the opposite
handedness, so labels are permuted with :attr:`Skeleton.flip_permutation` (``perm``): the new joint
``j`` is the old joint ``perm[j]``. To keep the 3D targets consistent *and* physically valid we
mirror the 3D scene too, with ``M = diag(-1, 1, 1)`` in the frame ``P`` projects from:

* ``uv'[j] = F A uv[perm[j]]``, ``visibility'[j] = visibility[perm[j]]``;
* ``X'[j] = M X[perm[j]]`` (a real, mirrored person: bone lengths kept, ``left_*`` on the left);
* ``P' = F A P diag(-1, 1, 1, 1)`` -- again a proper camera (``det > 0``, positive focal length),
  and ``project(P', X') == uv'`` exactly.

In the mirrored scene the second camera of a stereo pair sits on the *left* of the first; with
``flip_swap_views`` (default) the two views are swapped so that view 0 is again the left camera.

Photometric augmentations never move labels: colour jitter; Cutout (DeVries & Taylor 2017: a few
square holes, default 3 x 40 px); Hide-and-Seek (Singh & Lee 2017: the crop is cut into a 4x4 grid
and each cell is hidden with probability 0.4, applied to a view with probability 0.3), where joints
inside hidden cells are marked invisible. Holes are filled with the ImageNet mean colour (zero after
normalisation). Every augmentation is switched by :class:`AugmentConfig`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from stereo_pose3d.geometry import crop_transform, transform_points
from stereo_pose3d.skeleton import MADS, MPII, Skeleton, skeleton_for_joint_names

from .data.heatmaps import gaussian_heatmaps

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "AugmentConfig",
    "StereoCrops",
    "ViewParams",
    "augment_stereo",
    "augment_view",
    "color_jitter",
    "cutout",
    "flip_affine",
    "hide_and_seek",
    "normalize_image",
    "sample_view_params",
]

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)  # RGB
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
_FILL = tuple(float(v) for v in IMAGENET_MEAN * 255.0)


@dataclass
class AugmentConfig:
    """Switches and strengths of every augmentation (``from_dict`` reads a config section)."""

    # Crop: side = max(box w, h) * box_scale (* random scale when training).
    box_scale: float = 1.25
    # Horizontal flip with left/right swap (both views flip together).
    flip: bool = True
    flip_prob: float = 0.5
    flip_swap_views: bool = True
    # Scale / rotation, Simple Baselines style: s = clip(N(1, sf), 1 - sf, 1 + sf),
    # r = clip(N(0, rf), -2 rf, 2 rf) degrees with probability rotation_prob, else 0.
    scale_rotation: bool = True
    scale_factor: float = 0.25
    rotation_factor: float = 30.0
    rotation_prob: float = 0.6
    translate_factor: float = 0.0  # uniform shift, fraction of the crop size
    independent_views: bool = False  # False: both views share scale / rotation / shift
    # Colour jitter: factors uniform in [1 - x, 1 + x].
    color: bool = True
    brightness: float = 0.3
    contrast: float = 0.3
    saturation: float = 0.3
    # Cutout.
    cutout: bool = False
    cutout_prob: float = 0.5
    cutout_holes: int = 3
    cutout_size: int = 40
    # Hide-and-Seek.
    hide_and_seek: bool = False
    hide_prob: float = 0.3
    hide_grid: int = 4
    hide_fraction: float = 0.4

    @classmethod
    def from_dict(cls, values: dict[str, Any] | None) -> AugmentConfig:
        """Build from a (YAML) dict; unknown keys raise ``ValueError`` naming them."""
        values = dict(values or {})
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown augmentation option(s) {unknown}; known: {sorted(known)}")
        return cls(**values)

    @classmethod
    def disabled(cls, **overrides: Any) -> AugmentConfig:
        """Everything off (crop only), with optional overrides."""
        base = cls(flip=False, scale_rotation=False, color=False, cutout=False, hide_and_seek=False)
        return dataclasses.replace(base, **overrides)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class ViewParams:
    """Random geometric parameters of one view."""

    scale: float = 1.0
    rotation_deg: float = 0.0
    shift: tuple[float, float] = (0.0, 0.0)  # fraction of the crop size


def sample_view_params(config: AugmentConfig, rng: np.random.Generator) -> ViewParams:
    """Draw scale / rotation / shift (identity when ``scale_rotation`` is off)."""
    if not config.scale_rotation:
        return ViewParams()
    sf, rf = config.scale_factor, config.rotation_factor
    scale = float(np.clip(rng.normal() * sf + 1.0, 1.0 - sf, 1.0 + sf))
    rotation = float(np.clip(rng.normal() * rf, -2 * rf, 2 * rf))
    if rng.random() >= config.rotation_prob:
        rotation = 0.0
    t = config.translate_factor
    shift = (float(rng.uniform(-t, t)), float(rng.uniform(-t, t))) if t > 0 else (0.0, 0.0)
    return ViewParams(scale, rotation, shift)


def flip_affine(width: int) -> np.ndarray:
    """Pixel affine ``(3, 3)`` of a horizontal mirror of an image ``width`` pixels wide."""
    return np.array([[-1.0, 0.0, width - 1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])


def crop_affine(
    box: np.ndarray,
    out_size: tuple[int, int],
    params: ViewParams,
    box_scale: float,
    flip: bool = False,
) -> np.ndarray:
    """Affine ``(3, 3)`` full image -> crop pixels for ``box`` xyxy and the view's parameters."""
    A = crop_transform(
        box, out_size, rotation_deg=params.rotation_deg, scale=box_scale * params.scale
    )
    A = A.copy()
    A[0, 2] += params.shift[0] * out_size[0]
    A[1, 2] += params.shift[1] * out_size[1]
    if flip:
        A = flip_affine(out_size[0]) @ A
    return A


# --------------------------------------------------------------------------------------------
# Photometric
# --------------------------------------------------------------------------------------------


def color_jitter(image: np.ndarray, config: AugmentConfig, rng: np.random.Generator) -> np.ndarray:
    """Brightness, contrast and saturation jitter of an RGB uint8 image (returns uint8)."""
    img = image.astype(np.float32)
    b = rng.uniform(1 - config.brightness, 1 + config.brightness)
    c = rng.uniform(1 - config.contrast, 1 + config.contrast)
    s = rng.uniform(1 - config.saturation, 1 + config.saturation)
    img *= b
    gray = img @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    img = (img - gray.mean()) * c + gray.mean()
    gray = img @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    img = (img - gray[..., None]) * s + gray[..., None]
    return np.clip(img, 0, 255).astype(np.uint8)


def cutout(
    image: np.ndarray, rng: np.random.Generator, holes: int = 3, size: int = 40
) -> tuple[np.ndarray, np.ndarray]:
    """Fill ``holes`` squares of ``size`` px (centres uniform over the image, clipped at the
    border) with the mean colour. Labels are untouched. Returns (image, mask (H, W) bool)."""
    h, w = image.shape[:2]
    out = image.copy()
    mask = np.zeros((h, w), bool)
    for _ in range(holes):
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        x0, x1 = int(max(0, round(cx - size / 2))), int(min(w, round(cx + size / 2)))
        y0, y1 = int(max(0, round(cy - size / 2))), int(min(h, round(cy + size / 2)))
        mask[y0:y1, x0:x1] = True
    out[mask] = np.array(_FILL, dtype=np.float32).round().astype(image.dtype)
    return out, mask


def hide_and_seek(
    image: np.ndarray,
    joints_2d: np.ndarray,
    visibility: np.ndarray,
    rng: np.random.Generator,
    grid: int = 4,
    fraction: float = 0.4,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Hide each cell of a ``grid x grid`` partition with probability ``fraction``.

    Returns (image, visibility with joints in hidden cells cleared, hidden (grid, grid) bool).
    """
    h, w = image.shape[:2]
    hidden = rng.random((grid, grid)) < fraction
    out = image.copy()
    xs = np.linspace(0, w, grid + 1).round().astype(int)
    ys = np.linspace(0, h, grid + 1).round().astype(int)
    fill = np.array(_FILL, dtype=np.float32).round().astype(image.dtype)
    for gy, gx in zip(*np.nonzero(hidden), strict=True):
        out[ys[gy] : ys[gy + 1], xs[gx] : xs[gx + 1]] = fill
    vis = np.asarray(visibility, bool).copy()
    uv = np.asarray(joints_2d, dtype=np.float64)
    inside = vis & np.isfinite(uv).all(-1)
    col = np.clip(np.searchsorted(xs, np.nan_to_num(uv[:, 0]), side="right") - 1, 0, grid - 1)
    row = np.clip(np.searchsorted(ys, np.nan_to_num(uv[:, 1]), side="right") - 1, 0, grid - 1)
    vis[inside & hidden[row, col]] = False
    return out, vis, hidden


def normalize_image(image: np.ndarray) -> np.ndarray:
    """RGB uint8 ``(H, W, 3)`` -> ImageNet-normalised float32 ``(3, H, W)``."""
    img = (image.astype(np.float32) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
    return np.ascontiguousarray(img.transpose(2, 0, 1))


# --------------------------------------------------------------------------------------------
# One view
# --------------------------------------------------------------------------------------------


def augment_view(
    image: np.ndarray,
    box: np.ndarray,
    joints_2d: np.ndarray,
    visibility: np.ndarray,
    config: AugmentConfig,
    rng: np.random.Generator,
    params: ViewParams | None = None,
    flip: bool = False,
    flip_permutation: tuple[int, ...] | None = None,
    out_size: tuple[int, int] = (256, 256),
    train: bool = True,
) -> dict[str, np.ndarray]:
    """Crop (and augment) one view.

    Args:
        image: (H, W, 3) RGB uint8 full image.
        box: (4,) person box xyxy in full-image pixels.
        joints_2d: (J, 2) full-image pixels (NaN allowed: becomes invisible).
        visibility: (J,) bool.
        params: geometric parameters (``None``: identity).
        flip: mirror the crop; needs ``flip_permutation``.
        train: False disables photometric augmentation (geometry follows ``params``/``flip``).

    Returns:
        dict with ``image`` (h, w, 3) uint8 crop, ``affine`` (3, 3) full image -> crop pixels
        (flip included), ``joints_2d`` (J, 2) crop pixels, ``visibility`` (J,) bool (cleared for
        joints outside the crop or hidden by Hide-and-Seek), all permuted when flipped.
    """
    params = params or ViewParams()
    A = crop_affine(box, out_size, params, config.box_scale, flip=flip)
    crop = cv2.warpAffine(
        np.ascontiguousarray(image),
        A[:2],
        out_size,
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=(0, 0, 0),
    )
    uv = transform_points(A, np.asarray(joints_2d, dtype=np.float64))
    finite = np.isfinite(uv).all(-1)
    w, h = out_size
    inside = finite & (uv[:, 0] >= 0) & (uv[:, 0] <= w - 1) & (uv[:, 1] >= 0) & (uv[:, 1] <= h - 1)
    vis = np.asarray(visibility, bool).reshape(-1) & inside
    if flip:
        if flip_permutation is None:
            raise ValueError("flip needs the skeleton's flip_permutation")
        perm = np.asarray(flip_permutation)
        uv, vis = uv[perm], vis[perm]
    if train:
        if config.color:
            crop = color_jitter(crop, config, rng)
        if config.cutout and rng.random() < config.cutout_prob:
            crop, _ = cutout(crop, rng, config.cutout_holes, config.cutout_size)
        if config.hide_and_seek and rng.random() < config.hide_prob:
            crop, vis, _ = hide_and_seek(crop, uv, vis, rng, config.hide_grid, config.hide_fraction)
    return {"image": crop, "affine": A, "joints_2d": uv, "visibility": vis}


# --------------------------------------------------------------------------------------------
# Stereo samples
# --------------------------------------------------------------------------------------------


def _sample_images(sample: dict[str, Any]) -> list[np.ndarray]:
    for keys in (("left", "right"), ("image_left", "image_right")):
        if all(k in sample for k in keys):
            return [np.asarray(sample[k]) for k in keys]
    if "images" in sample:
        return [np.asarray(im) for im in sample["images"]]
    raise KeyError("stereo sample has no images (expected image_left/image_right or images)")


def _sample_skeleton(sample: dict[str, Any], num_joints: int) -> Skeleton:
    names = sample.get("joint_names")
    if names is not None:
        return skeleton_for_joint_names([str(n) for n in names])
    by_count = {MPII.num_joints: MPII, MADS.num_joints: MADS}
    if num_joints not in by_count:
        raise ValueError(f"cannot tell the skeleton of a sample with {num_joints} joints")
    return by_count[num_joints]


def augment_stereo(
    sample: dict[str, Any],
    config: AugmentConfig | None = None,
    rng: np.random.Generator | None = None,
    train: bool = True,
    out_size: tuple[int, int] = (256, 256),
    heatmap_size: tuple[int, int] = (64, 64),
    sigma: float = 2.0,
    skeleton: Skeleton | None = None,
) -> dict[str, Any]:
    """Turn a stereo sample (as read by ``training.data.stereo_dataset``) into network inputs.

    Args:
        sample: dict with the RGB uint8 (H, W, 3) images (``left``/``right`` as the reader returns
            them; ``image_left``/``image_right`` or ``images`` also work), ``P_left``,
            ``P_right`` (3, 4), ``joints_2d`` (2, J, 2) px,
            ``visibility`` (2, J), ``box`` (2, 4) xyxy px, ``joints_3d_cam`` (J, 3) m (NaN allowed)
            and optionally ``joint_names``, ``sequence``, ``frame``.
        config: augmentation switches (default :class:`AugmentConfig`).
        rng: random generator (default: fresh entropy).
        train: False -> deterministic crop from the boxes, no augmentation at all.
        out_size: crop size (w, h) px; heatmap_size: (w, h); sigma in heatmap px.
        skeleton: joint set (default: from ``joint_names`` or the joint count).

    Returns (numpy; ``torch.utils.data.default_collate`` turns them into batched tensors):
        ``images`` (2, 3, h, w) float32 ImageNet-normalised RGB;
        ``P`` (2, 3, 4) float32 crop-adjusted projections;
        ``affine`` (2, 3, 3) float32 full image -> crop pixels (flip included);
        ``joints_2d`` (2, J, 2) float32 crop px, ``== project(P, joints_3d)`` for valid joints;
        ``visibility`` (2, J) float32 {0, 1} (inside the crop, visible, not hidden);
        ``heatmaps`` (2, J, hh, hw) float32 and ``heatmap_weight`` (2, J) float32;
        ``joints_3d`` (J, 3) float32 metres in the frame ``P`` projects from (mirrored when
        flipped; NaN replaced by 0) and ``joints_3d_valid`` (J,) float32;
        ``flipped`` bool; ``sequence`` str; ``frame`` int.
    """
    config = config or AugmentConfig()
    rng = rng if rng is not None else np.random.default_rng()
    images = _sample_images(sample)
    P = [np.asarray(sample["P_left"], np.float64), np.asarray(sample["P_right"], np.float64)]
    joints_2d = np.asarray(sample["joints_2d"], np.float64)
    visibility = np.asarray(sample["visibility"]).astype(bool)
    boxes = np.asarray(sample["box"], np.float64).reshape(2, 4)
    joints_3d = np.asarray(sample["joints_3d_cam"], np.float64)
    num_joints = joints_3d.shape[0]
    skeleton = skeleton or _sample_skeleton(sample, num_joints)
    perm = np.asarray(skeleton.flip_permutation)

    flip = bool(train and config.flip and rng.random() < config.flip_prob)
    shared = sample_view_params(config, rng) if train else ViewParams()
    views = []
    for v in range(2):
        params = shared
        if train and config.independent_views and v == 1:
            params = sample_view_params(config, rng)
        views.append(
            augment_view(
                images[v], boxes[v], joints_2d[v], visibility[v], config, rng, params=params,
                flip=flip, flip_permutation=skeleton.flip_permutation, out_size=out_size,
                train=train,
            )
        )  # fmt: skip

    valid_3d = np.isfinite(joints_3d).all(-1)
    mirror = np.diag([-1.0, 1.0, 1.0, 1.0])
    if flip:
        joints_3d = joints_3d[perm] * np.array([-1.0, 1.0, 1.0])
        valid_3d = valid_3d[perm]
        P_out = [views[v]["affine"] @ P[v] @ mirror for v in range(2)]
    else:
        P_out = [views[v]["affine"] @ P[v] for v in range(2)]
    order = [1, 0] if flip and config.flip_swap_views else [0, 1]

    heatmaps, weights = [], []
    for v in order:
        hm, wt = gaussian_heatmaps(
            views[v]["joints_2d"], views[v]["visibility"], out_size, heatmap_size, sigma
        )
        heatmaps.append(hm)
        weights.append(wt)
    joints_2d_out = np.stack([views[v]["joints_2d"] for v in order])
    return {
        "images": np.stack([normalize_image(views[v]["image"]) for v in order]),
        "P": np.stack([P_out[v] for v in order]).astype(np.float32),
        "affine": np.stack([views[v]["affine"] for v in order]).astype(np.float32),
        "joints_2d": np.nan_to_num(joints_2d_out).astype(np.float32),
        "visibility": np.stack([views[v]["visibility"] for v in order]).astype(np.float32),
        "heatmaps": np.stack(heatmaps),
        "heatmap_weight": np.stack(weights),
        "joints_3d": np.nan_to_num(joints_3d).astype(np.float32),
        "joints_3d_valid": valid_3d.astype(np.float32),
        "flipped": flip,
        "sequence": str(sample.get("sequence", "")),
        "frame": int(sample.get("frame", -1)),
    }


class StereoCrops:
    """A torch-style Dataset applying :func:`augment_stereo` to the samples of ``base``.

    ``base[i]`` must return a stereo sample dict (e.g. ``training.data.stereo_dataset``'s
    ``StereoDataset``). ``seed=None`` draws fresh randomness for every item (safe with DataLoader
    workers); an int makes item ``i`` always augmented the same way.
    """

    def __init__(
        self,
        base: Any,
        config: AugmentConfig | None = None,
        train: bool = True,
        out_size: tuple[int, int] = (256, 256),
        heatmap_size: tuple[int, int] = (64, 64),
        sigma: float = 2.0,
        skeleton: Skeleton | None = None,
        seed: int | None = None,
    ) -> None:
        self.base = base
        self.config = config or AugmentConfig()
        self.train = train
        self.out_size = tuple(out_size)
        self.heatmap_size = tuple(heatmap_size)
        self.sigma = sigma
        self.skeleton = skeleton
        self.seed = seed

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> dict[str, Any]:
        rng = np.random.default_rng(None if self.seed is None else [self.seed, index])
        return augment_stereo(
            self.base[index], self.config, rng, train=self.train, out_size=self.out_size,
            heatmap_size=self.heatmap_size, sigma=self.sigma, skeleton=self.skeleton,
        )  # fmt: skip
