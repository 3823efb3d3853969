"""Model configurations: plain JSON-serialisable dicts, defaults and validation.

Every model is described by one dict (stored verbatim in its checkpoint and loadable from YAML).
``architecture`` picks the class:

* ``"cdrnet"`` / ``"baseline"`` -- multi-view pose networks (``CDRNet``, ``BaselineModel``)::

      {"architecture": "cdrnet",
       "backbone": {"name": "resnet50", "pretrained": null},   # pretrained: torchvision state dict
       "input_size": [256, 256],                               # crop [W, H], multiples of 32
       "skeleton": "mpii16", "joint_names": [...],
       "normalization": {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]},
       "head": {"channels": 256, "num_deconv": 3},             # Simple Baselines decoder
       "soft_argmax": {"beta": 20.0},
       "cdr": {"latent_channels": 300, "fusion_channels": 512},  # cdrnet only
       "triangulation": {"method": "svd"}}                     # "svd" | "iterative"

* ``"locator"`` -- the full-frame person locator (:class:`PersonLocator`)::

      {"architecture": "locator",
       "backbone": {"name": "resnet18", "stages": 3, "pretrained": null},
       "input_size": [256, 192], "normalization": {...},
       "head": {"channels": 128, "num_deconv": 1}}

* ``"system"`` -- what the estimator loads: a pose network and a locator in one file, plus the
  estimator's settings::

      {"architecture": "system", "pose": {...}, "locator": {...},
       "estimator": {"crop_scale": 1.25, "score_threshold": 0.3, ...}}
"""

from __future__ import annotations

import copy
import json
from typing import Any

from stereo_pose3d.skeleton import get_skeleton

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RESNETS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")
POSE_ARCHITECTURES = ("cdrnet", "baseline")
ARCHITECTURES = (*POSE_ARCHITECTURES, "locator", "system")

MAX_LOCATOR_CANDIDATES = 5  # largest accepted estimator setting locator_candidates
HEATMAP_DECODINGS = ("global", "local")  # estimator setting heatmap_decoding (models.heatmaps)

DEFAULT_ESTIMATOR: dict[str, Any] = {
    # Crop side = crop_scale * max(box width, box height) of the located person.
    "crop_scale": 1.25,
    # Locator score (peak of the centre heatmap, in [0, 1]) below which "no person" is reported.
    "score_threshold": 0.3,
    # A person whose mean joint confidence is below this is also reported as "no person".
    "min_pose_confidence": 0.0,
    # Smallest accepted crop side as a fraction of the image height.
    "min_box_fraction": 0.08,
    # Tracking: reuse the previous pose's 2D joints as the box while its mean confidence is at
    # least track_confidence; re-detect with the locator otherwise.
    "tracking": False,
    "track_confidence": 0.5,
    # Stereo-consistent box refinement passes (re-crop around the reprojected 3D joints), 0-10.
    "refine_iterations": 0,
    # Person candidates per pair, 1-5: besides the locator's best box, its next local maxima in
    # the left view (score >= score_threshold, each paired with a right-view peak on the same
    # rows) are run through the pose network too (one extra batch) and the candidate with the
    # highest mean joint confidence is kept; it recovers frames where the best box is an object,
    # a partial body or an occluder. With two people in view it keeps the one the network is
    # more confident on. 1 = the best box only.
    "locator_candidates": 2,
    # Rectified pairs: the right box = the left box shifted by the disparity that best matches
    # the left box's image patch along the same rows (NCC); the locator's box when that is weak.
    "stereo_box_matching": True,
    # Rectified pairs: each joint's disparity is re-measured by matching a small patch around its
    # left-view detection along the same rows of the right view (NCC, sub-pixel), so its depth
    # comes from the images' correspondence rather than from two independent detections; the
    # network's disparity is kept where the match is weak.
    "joint_stereo_matching": True,
    # Joints whose depth (along the first view's axis) is more than this many metres from the
    # median depth of the person's joints are marked invalid (confidence 0): a joint confused
    # between views (left/right swap) has a wrong disparity, metres off at narrow baselines.
    # 0 = off.
    "max_depth_spread": 1.0,
    # Joints whose two detections are farther than this x the person's height (px, first view)
    # from each other's epipolar line (for a rectified pair: whose rows differ by more) are
    # marked invalid: the two images of one point lie on corresponding epipolar lines, so one
    # view took another limb or an occluder. 0 = off.
    "max_epipolar_offset": 0.03,
    # Flip test: the pose network also sees the horizontally mirrored crops (same batch); their
    # heatmaps, mirrored back and joint-permuted, are averaged with the originals' before the
    # soft-argmax. Doubles the pose network's cost.
    "flip_test": False,
    # Heatmap -> 2D joint: "local" = mean shift from the heatmap's maximum (the strongest mode;
    # models.heatmaps.local_soft_argmax), "global" = soft-argmax over the whole heatmap (as in
    # training), which puts a joint between the modes of a two-mode heatmap. The confidence (the
    # heatmap's maximum) is the same for both.
    "heatmap_decoding": "local",
}


class ConfigError(ValueError):
    """A model configuration that cannot be built; the message names the offending key."""


def parse_estimator_settings(items: list[str], option: str = "--estimator") -> dict[str, Any]:
    """Command-line estimator overrides ``["key=value", ...]`` -> ``{key: value}``, values
    parsed as YAML (``max_depth_spread=0`` -> 0, ``flip_test=true`` -> True). ValueError names
    an item that is not KEY=VALUE or a key that is not in :data:`DEFAULT_ESTIMATOR`; the values
    are checked where they are used (``StereoPoseEstimator``)."""
    import yaml

    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"{option} {item!r}: expected KEY=VALUE")
        if key not in DEFAULT_ESTIMATOR:
            raise ValueError(
                f"{option} {item!r}: unknown estimator setting {key!r}; known: "
                f"{', '.join(sorted(DEFAULT_ESTIMATOR))}"
            )
        try:
            out[key] = yaml.safe_load(value)
        except yaml.YAMLError as exc:
            raise ValueError(f"{option} {item!r}: value is not YAML ({exc})") from exc
    return out


def pose_config(
    architecture: str = "cdrnet",
    backbone: str = "resnet50",
    input_size: tuple[int, int] = (256, 256),
    skeleton: str = "mpii16",
    pretrained: str | None = None,
    latent_channels: int = 300,
    fusion_channels: int = 512,
    head_channels: int = 256,
    beta: float = 20.0,
    triangulation: str = "svd",
    view_skip: bool = False,
) -> dict[str, Any]:
    """Default config of a pose network (``"cdrnet"`` or ``"baseline"``); ``view_skip``: CDRNet's
    decoder also sees each view's own encoder features (see :mod:`.cdrnet`)."""
    config: dict[str, Any] = {
        "architecture": architecture,
        "backbone": {"name": backbone, "pretrained": pretrained},
        "input_size": [int(input_size[0]), int(input_size[1])],
        "skeleton": skeleton,
        "joint_names": list(get_skeleton(skeleton).joint_names),
        "normalization": {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)},
        "head": {"channels": head_channels, "num_deconv": 3},
        "soft_argmax": {"beta": float(beta)},
        "triangulation": {"method": triangulation},
    }
    if architecture == "cdrnet":
        config["cdr"] = {"latent_channels": latent_channels, "fusion_channels": fusion_channels}
        if view_skip:
            config["cdr"]["view_skip"] = True
    return validate_config(config)


def locator_config(
    backbone: str = "resnet18",
    stages: int = 3,
    input_size: tuple[int, int] = (256, 192),
    head_channels: int = 128,
    pretrained: str | None = None,
) -> dict[str, Any]:
    """Default config of the person locator (letterboxed full frame ``input_size`` = [W, H])."""
    return validate_config(
        {
            "architecture": "locator",
            "backbone": {"name": backbone, "stages": stages, "pretrained": pretrained},
            "input_size": [int(input_size[0]), int(input_size[1])],
            "normalization": {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)},
            "head": {"channels": head_channels, "num_deconv": 1},
        }
    )


def system_config(
    pose: dict[str, Any], locator: dict[str, Any], **estimator: Any
) -> dict[str, Any]:
    """Config of a pose network + locator pair, with estimator settings (see DEFAULT_ESTIMATOR)."""
    unknown = set(estimator) - set(DEFAULT_ESTIMATOR)
    if unknown:
        raise ConfigError(f"unknown estimator settings {sorted(unknown)}")
    settings = {**DEFAULT_ESTIMATOR, **estimator}
    return validate_config(
        {"architecture": "system", "pose": pose, "locator": locator, "estimator": settings}
    )


def tiny_system_config(skeleton: str = "mpii16", **estimator: Any) -> dict[str, Any]:
    """A very small CDRNet (ResNet-18, 64x64 crops) + locator (128x96): fast test fixtures."""
    pose = pose_config(
        "cdrnet", "resnet18", (64, 64), skeleton, latent_channels=30, fusion_channels=32,
        head_channels=32,
    )  # fmt: skip
    locator = locator_config("resnet18", 3, (128, 96), head_channels=32)
    return system_config(pose, locator, **estimator)


def _require(config: dict[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if key not in config:
        raise ConfigError(f"{where}: missing key {key!r}")
    value = config[key]
    if not isinstance(value, kind):
        raise ConfigError(f"{where}: {key!r} must be {kind}, got {type(value).__name__}")
    return value


def validate_config(config: dict[str, Any], where: str = "config") -> dict[str, Any]:
    """Check a config's keys and values; returns a JSON round-tripped deep copy.

    Raises:
        ConfigError: naming the key that is missing or wrong.
    """
    if not isinstance(config, dict):
        raise ConfigError(f"{where} must be a dict, got {type(config).__name__}")
    try:
        config = json.loads(json.dumps(config))
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where} is not JSON-serialisable: {exc}") from None
    arch = _require(config, "architecture", str, where)
    if arch not in ARCHITECTURES:
        raise ConfigError(f"{where}: unknown architecture {arch!r}; known: {list(ARCHITECTURES)}")
    if arch == "system":
        config["pose"] = validate_config(_require(config, "pose", dict, where), f"{where}.pose")
        if config["pose"]["architecture"] not in POSE_ARCHITECTURES:
            raise ConfigError(f"{where}.pose must be one of {list(POSE_ARCHITECTURES)}")
        loc = validate_config(_require(config, "locator", dict, where), f"{where}.locator")
        if loc["architecture"] != "locator":
            raise ConfigError(f"{where}.locator must have architecture 'locator'")
        config["locator"] = loc
        settings = {**DEFAULT_ESTIMATOR, **config.get("estimator", {})}
        unknown = set(settings) - set(DEFAULT_ESTIMATOR)
        if unknown:
            raise ConfigError(f"{where}.estimator: unknown settings {sorted(unknown)}")
        refine = settings["refine_iterations"]
        if isinstance(refine, bool) or not isinstance(refine, int) or refine < 0:
            raise ConfigError(
                f"{where}.estimator.refine_iterations must be an integer >= 0, got {refine!r}"
            )
        candidates = settings["locator_candidates"]
        if (
            isinstance(candidates, bool)
            or not isinstance(candidates, int)
            or not 1 <= candidates <= MAX_LOCATOR_CANDIDATES
        ):
            raise ConfigError(
                f"{where}.estimator.locator_candidates must be an integer in "
                f"[1, {MAX_LOCATOR_CANDIDATES}], got {candidates!r}"
            )
        for key in ("stereo_box_matching", "joint_stereo_matching", "flip_test"):
            if not isinstance(settings[key], bool):
                raise ConfigError(
                    f"{where}.estimator.{key} must be true or false, got {settings[key]!r}"
                )
        if settings["heatmap_decoding"] not in HEATMAP_DECODINGS:
            raise ConfigError(
                f"{where}.estimator.heatmap_decoding must be one of {list(HEATMAP_DECODINGS)}, "
                f"got {settings['heatmap_decoding']!r}"
            )
        for key, what in (
            ("max_depth_spread", "a number of metres"),
            ("max_epipolar_offset", "a fraction of the person's height"),
        ):
            value = settings[key]
            if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
                raise ConfigError(
                    f"{where}.estimator.{key} must be {what} >= 0 (0 = off), got {value!r}"
                )
        config["estimator"] = settings
        return config

    backbone = _require(config, "backbone", dict, where)
    name = _require(backbone, "name", str, f"{where}.backbone")
    if name not in RESNETS:
        raise ConfigError(f"{where}.backbone: unknown backbone {name!r}; known: {list(RESNETS)}")
    stages = backbone.setdefault("stages", 4)
    if stages not in (3, 4):
        raise ConfigError(f"{where}.backbone.stages must be 3 or 4, got {stages!r}")
    backbone.setdefault("pretrained", None)
    size = _require(config, "input_size", list, where)
    stride = 2 ** (stages + 1)
    if len(size) != 2 or any(not isinstance(s, int) or s <= 0 or s % stride for s in size):
        raise ConfigError(
            f"{where}: input_size must be [W, H], positive multiples of {stride}, got {size}"
        )
    norm = _require(config, "normalization", dict, where)
    for key in ("mean", "std"):
        values = _require(norm, key, list, f"{where}.normalization")
        if len(values) != 3 or (key == "std" and any(v <= 0 for v in values)):
            raise ConfigError(f"{where}.normalization.{key} must be 3 values, got {values}")
    head = _require(config, "head", dict, where)
    _require(head, "channels", int, f"{where}.head")
    _require(head, "num_deconv", int, f"{where}.head")
    if arch == "locator":
        return config

    if stages != 4:
        raise ConfigError(f"{where}.backbone.stages must be 4 for pose networks")
    names = _require(config, "joint_names", list, where)
    if not names or len(set(names)) != len(names):
        raise ConfigError(f"{where}: joint_names must be a non-empty list of unique names")
    skeleton = config.setdefault("skeleton", None)
    if skeleton is not None and tuple(names) != get_skeleton(skeleton).joint_names:
        raise ConfigError(f"{where}: joint_names do not match skeleton {skeleton!r}")
    config.setdefault("soft_argmax", {"beta": 20.0})
    config.setdefault("triangulation", {"method": "svd"})
    if config["triangulation"].get("method") not in ("svd", "iterative"):
        raise ConfigError(f"{where}.triangulation.method must be 'svd' or 'iterative'")
    if arch == "cdrnet":
        cdr = _require(config, "cdr", dict, where)
        latent = _require(cdr, "latent_channels", int, f"{where}.cdr")
        if latent <= 0 or latent % 3:
            raise ConfigError(f"{where}.cdr.latent_channels must be a multiple of 3, got {latent}")
        _require(cdr, "fusion_channels", int, f"{where}.cdr")
        if not isinstance(cdr.get("view_skip", False), bool):
            raise ConfigError(f"{where}.cdr.view_skip must be true or false")
    return config


def copy_config(config: dict[str, Any]) -> dict[str, Any]:
    """A deep copy (configs are plain data)."""
    return copy.deepcopy(config)
