"""Training stages: ``pretrain-2d``, ``train-baseline``, ``finetune-cdr`` and ``train-locator``.

::

    python -m training finetune-cdr --config training/configs/synthetic_cdrnet_cpu.yaml \
        [--run-dir runs/cdr] [--resume] [--max-minutes 50] [--override train.batch_size=8] ...
    torchrun --nproc_per_node 4 -m training finetune-cdr --config ...       # 4 GPUs, DDP

Each stage reads one YAML config (``training/configs/``; sections ``model``, ``init``, ``data``,
``augment``, ``heatmap``, ``loss``, ``optim``, ``train``, ``system``, see ``docs/training.md``) and
runs :func:`training.engine.fit` with a stage-specific :class:`~training.engine.Task`:

* ``pretrain-2d`` -- a per-view Simple Baselines network (``baseline`` architecture) on MPII person
  crops or on the views of the synthetic stereo set; heatmap loss only. Its weights initialise
  the later stages (``init.checkpoint``; parameters are matched by name and shape).
* ``train-baseline`` -- the two-view baseline (per-view 2D + weighted DLT); heatmap loss, plus the
  3D loss through the differentiable DLT when ``loss.joints_3d.weight > 0``.
* ``finetune-cdr`` -- CDRNet end to end: ``loss.warmup_2d_epochs`` epochs on the 2D loss only, then
  2D + weighted root-relative 3D loss (smooth MSE of learnable triangulation by default).
* ``train-locator`` -- the full-frame person locator on the stereo set's views (letterboxed
  frames with zoom / shift / flip / colour augmentation and "no person" windows).

Outputs under the run dir: ``config.yaml`` (resolved), ``checkpoints/{last,best}.pt`` (training
state, resumable), ``tb/`` (TensorBoard), ``metrics.jsonl``, and the node's checkpoint format
(:func:`stereo_pose3d.checkpoint.save_checkpoint`): ``pose_best.pt`` / ``pose_final.pt`` (or
``locator_*.pt``), plus ``system_best.pt`` / ``system_final.pt`` -- directly loadable by
``StereoPoseEstimator.from_checkpoint`` -- when a trained locator is given (``system.locator``).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import math
import sys
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import nn

from stereo_pose3d.models import (
    build_model,
    gaussian_heatmaps,
    locator_config,
    locator_loss,
    locator_targets,
    pose_config,
    soft_argmax,
    system_config,
    validate_config,
)
from stereo_pose3d.models.heatmaps import heatmap_to_crop
from stereo_pose3d.skeleton import get_skeleton
from training.engine import (
    DistInfo,
    EngineConfig,
    EpochSeededDataset,
    cleanup_distributed,
    fit,
    load_training_checkpoint,
    setup_distributed,
)

POSE_STAGES = ("pretrain-2d", "train-baseline", "finetune-cdr")
STAGES = (*POSE_STAGES, "train-locator")
CONFIG_DIR = Path(__file__).resolve().parent / "configs"
DEFAULT_CONFIGS = {
    "pretrain-2d": "synthetic_pretrain2d_cpu.yaml",
    "train-baseline": "synthetic_baseline_cpu.yaml",
    "finetune-cdr": "synthetic_cdrnet_cpu.yaml",
    "train-locator": "synthetic_locator_cpu.yaml",
}

# Every key a stage config may have, with its default. Unknown keys are errors (typos).
DEFAULTS: dict[str, Any] = {
    "stage": None,
    "run_dir": None,  # default runs/<config file stem>
    "seed": 0,
    "model": {},  # compact (pose_config / locator_config keyword arguments) or a full config
    "init": {"checkpoint": None},
    "data": {
        "source": "stereo",  # stereo (synthetic / MADS on disk) | mpii (pretrain-2d)
        "train": None,
        "val": None,
        "train_split": "train",  # MPII split names
        "val_split": "valid",
        "val_max_samples": 256,  # evenly spaced subset of the validation set
        "locator_negative_prob": 0.1,  # train-locator: "no person" windows
    },
    "augment": {},  # training.augment.AugmentConfig fields
    "locator_augment": {"scale": 0.25, "translate": 0.15, "flip": True, "color": True},
    "heatmap": {"sigma": 2.0},
    "loss": {
        "heatmap": {"type": "heatmap_mse", "weight": 1.0},
        "keypoints_2d": {"type": "l1", "weight": 0.0},  # on the soft-argmax, crop px
        "joints_3d": {"type": "mse_smooth", "weight": 0.0, "root_relative": True, "scale": 1000.0},
        "warmup_2d_epochs": 0.0,  # 3D loss off for this many epochs,
        "warmup_2d_steps": 0,  # or steps,
        "warmup_2d_fraction": 0.0,  # or fraction of the (planned) run, whichever is longest
        "ramp_3d_steps": 0,  # then ramped linearly to its weight over this many steps
        "locator_box_weight": 1.0,
    },
    "optim": {
        "name": "adam",
        "lr": 1e-3,
        "weight_decay": 0.0,
        "schedule": "cosine",
        "warmup_steps": 0,
        "min_factor": 0.01,
        "milestones": [0.7, 0.9],
        "gamma": 0.1,
    },
    "train": {},  # training.engine.EngineConfig fields
    "system": {"locator": None, "pose": None, "estimator": {}},
}


# --------------------------------------------------------------------------------------------
# Configs
# --------------------------------------------------------------------------------------------


def deep_merge(base: dict[str, Any], update: dict[str, Any], where: str = "") -> dict[str, Any]:
    """``base`` updated by ``update`` recursively; unknown keys of fixed sections are errors."""
    out = copy.deepcopy(base)
    for key, value in (update or {}).items():
        if isinstance(out.get(key), dict) and isinstance(value, dict) and out[key]:
            out[key] = deep_merge(out[key], value, f"{where}{key}.")
        else:
            if where == "" and key not in out:
                raise ValueError(f"unknown config section {key!r}; known: {sorted(out)}")
            out[key] = copy.deepcopy(value)
    return out


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"train.batch_size=8"`` -> (["train", "batch_size"], 8); the value is parsed as YAML."""
    if "=" not in text:
        raise ValueError(f"override {text!r} must look like key.sub=value")
    key, value = text.split("=", 1)
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise ValueError(f"override {text!r} has no key")
    try:
        return parts, yaml.safe_load(value)
    except yaml.YAMLError as exc:
        raise ValueError(f"override {text!r}: {_yaml_problem(exc)}") from None


def apply_overrides(config: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    config = copy.deepcopy(config)
    for text in overrides or []:
        parts, value = parse_override(text)
        if parts[0] not in DEFAULTS:
            raise ValueError(f"override {text!r}: unknown section {parts[0]!r}")
        node = config
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ValueError(f"override {text!r}: {p!r} is not a section")
        node[parts[-1]] = value
    return config


def load_config(
    path: str | Path | None, overrides: list[str] | None = None, stage: str | None = None
) -> dict[str, Any]:
    """Defaults <- YAML file <- ``key=value`` overrides; checks the stage and the train options."""
    raw: dict[str, Any] = {}
    if path is not None:
        with open(path) as f:
            try:
                raw = yaml.safe_load(f) or {}
            except yaml.YAMLError as exc:
                raise ValueError(f"{path}: malformed YAML: {_yaml_problem(exc)}") from None
        if not isinstance(raw, dict):
            raise ValueError(f"{path}: a config must be a YAML mapping")
    config = deep_merge(DEFAULTS, raw)
    config = apply_overrides(config, overrides or [])
    if stage is not None:
        if config["stage"] not in (None, stage):
            raise ValueError(f"config is for stage {config['stage']!r}, not {stage!r}")
        config["stage"] = stage
    if config["stage"] not in STAGES:
        raise ValueError(f"stage must be one of {STAGES}, got {config['stage']!r}")
    check_config_types(config, path or "config")
    EngineConfig.from_dict(config["train"])  # fail early on typos
    from training.augment import AugmentConfig

    AugmentConfig.from_dict(config["augment"])
    if config["run_dir"] is None:
        config["run_dir"] = f"runs/{Path(path).stem if path else config['stage']}"
    return config


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """One line saying what is wrong in a YAML text and where."""
    problem = getattr(exc, "problem", None) or type(exc).__name__
    mark = getattr(exc, "problem_mark", None)
    return f"{problem} (line {mark.line + 1}, column {mark.column + 1})" if mark else problem


_FIELD_TYPES: dict[str, Any] = {"data.val_max_samples": int | None}  # None: all samples


def _hint_of(name: str, default: Any) -> Any:
    """The type config field ``name`` must have: from its default unless listed in
    ``_FIELD_TYPES`` (a ``None`` default: an optional path or name)."""
    if name in _FIELD_TYPES:
        return _FIELD_TYPES[name]
    return str | None if default is None else type(default)


def _type_name(hint: Any) -> str:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " or ".join(_type_name(h) for h in typing.get_args(hint))
    if typing.get_origin(hint) is tuple:
        return "[" + ", ".join(_type_name(h) for h in typing.get_args(hint)) + "]"
    return {type(None): "null", float: "number", dict: "mapping"}.get(hint, hint.__name__)


def _has_type(value: Any, hint: Any) -> bool:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_has_type(value, h) for h in args)
    if origin is tuple:
        return (
            isinstance(value, list | tuple)
            and len(value) == len(args)
            and all(_has_type(v, h) for v, h in zip(value, args, strict=True))
        )
    if hint in (int, float) and isinstance(value, bool):
        return False
    if hint is float:
        return isinstance(value, int | float)
    return isinstance(value, origin or hint)


def _check_fields(values: dict, hints: dict[str, Any], where: str, errors: list[str]) -> None:
    """Appends ``where.key: expected T, got V`` for each known key of the wrong type (unknown keys
    are left to the section's own reader); a number written as text (``1e-3``, which YAML reads
    as a string) becomes a float where a number is expected."""
    for key, hint in hints.items():
        if key not in values:
            continue
        value = values[key]
        if isinstance(value, str) and not _has_type(value, hint) and _has_type(1.0, hint):
            with contextlib.suppress(ValueError):
                values[key] = value = float(value)
        if not _has_type(value, hint):
            errors.append(f"{where}{key}: expected {_type_name(hint)}, got {value!r}")


def check_config_types(config: dict[str, Any], source: str | Path) -> None:
    """Raise ``ValueError`` (one line naming ``source`` and every wrongly typed key) unless each
    known field of the merged ``config`` has its type: sections are mappings, ``train`` and
    ``augment`` fields have their dataclass types, compact ``model`` options the types of
    ``pose_config`` / ``locator_config``, and the other fields the type of their default."""
    from training.augment import AugmentConfig

    errors: list[str] = []

    def check_section(values: dict, defaults: dict, where: str) -> None:
        for key, default in defaults.items():
            if isinstance(default, dict):
                if values.get(key) is None:  # an empty section: the defaults
                    values[key] = copy.deepcopy(default)
                elif not isinstance(values[key], dict):
                    errors.append(f"{where}{key}: expected mapping, got {values[key]!r}")
                else:
                    check_section(values[key], default, f"{where}{key}.")
        hints = {k: _hint_of(where + k, d) for k, d in defaults.items() if not isinstance(d, dict)}
        _check_fields(values, hints, where, errors)

    check_section(config, DEFAULTS, "")
    for section, cls in (("train", EngineConfig), ("augment", AugmentConfig)):
        if isinstance(config[section], dict):
            _check_fields(config[section], typing.get_type_hints(cls), f"{section}.", errors)
    model = config["model"]
    if isinstance(model, dict) and not ({"joint_names", "head"} & set(model)):
        builder = locator_config if config["stage"] == "train-locator" else pose_config
        hints = typing.get_type_hints(builder)
        if isinstance(model.get("backbone"), dict):  # {name, pretrained}
            hints.pop("backbone")
        _check_fields(model, hints, "model.", errors)
    if errors:
        raise ValueError(f"{source}: " + "; ".join(errors))


_COMPACT_POSE_KEYS = {
    "architecture", "backbone", "input_size", "skeleton", "pretrained", "latent_channels",
    "fusion_channels", "head_channels", "beta", "triangulation", "view_skip",
}  # fmt: skip


def model_config_from(config: dict[str, Any]) -> dict[str, Any]:
    """The model config of a stage: a full model config (has ``joint_names`` / ``head``) is used
    as is; a compact one is expanded with ``pose_config`` / ``locator_config``."""
    spec = dict(config["model"] or {})
    stage = config["stage"]
    if stage == "train-locator":
        if "head" in spec:
            return validate_config({"architecture": "locator", **spec})
        spec.pop("architecture", None)
        known = {"backbone", "stages", "input_size", "head_channels", "pretrained"}
        unknown = set(spec) - known
        if unknown:
            raise ValueError(f"model: unknown locator option(s) {sorted(unknown)}")
        if "input_size" in spec:
            spec["input_size"] = tuple(spec["input_size"])
        return locator_config(**spec)
    if "joint_names" in spec or "head" in spec:
        return validate_config(spec)
    default_arch = {"finetune-cdr": "cdrnet"}.get(stage, "baseline")
    spec.setdefault("architecture", default_arch)
    if stage == "pretrain-2d":
        spec["architecture"] = "baseline"
        for key in ("latent_channels", "fusion_channels"):
            spec.pop(key, None)
    unknown = set(spec) - _COMPACT_POSE_KEYS
    if unknown:
        raise ValueError(f"model: unknown option(s) {sorted(unknown)}")
    if isinstance(spec.get("backbone"), dict):
        spec["pretrained"] = spec["backbone"].get("pretrained")
        spec["backbone"] = spec["backbone"]["name"]
    if "input_size" in spec:
        spec["input_size"] = tuple(spec["input_size"])
    return pose_config(**spec)


# --------------------------------------------------------------------------------------------
# Weights in and out
# --------------------------------------------------------------------------------------------


def read_state_dict(path: str | Path, architecture: str | None = None) -> dict[str, torch.Tensor]:
    """Model weights from a training checkpoint or a node checkpoint (a ``system`` file gives its
    ``pose.*`` or ``locator.*`` part, by ``architecture``)."""
    path = Path(path)
    try:
        state = load_training_checkpoint(path)
        return state["model"]
    except ValueError:
        pass
    from stereo_pose3d.checkpoint import load_checkpoint

    ckpt = load_checkpoint(path)
    weights = ckpt.state_dict
    if ckpt.architecture == "system":
        prefix = "locator." if architecture == "locator" else "pose."
        weights = {k[len(prefix) :]: v for k, v in weights.items() if k.startswith(prefix)}
    return weights


def init_from(model: nn.Module, path: str | Path, architecture: str | None = None) -> str:
    """Copy every weight of ``path`` whose name and shape match ``model``'s; returns a summary."""
    source = read_state_dict(path, architecture)
    own = model.state_dict()
    matched = {k: v for k, v in source.items() if k in own and own[k].shape == v.shape}
    if not matched:
        raise ValueError(f"init checkpoint {path}: no weight matches this model")
    model.load_state_dict(matched, strict=False)
    return f"initialised {len(matched)}/{len(own)} tensors from {path}"


def load_training_model(path: str | Path) -> tuple[nn.Module, dict[str, Any]] | None:
    """``(model in eval mode, checkpoint state)`` of a training checkpoint, or None when ``path``
    is not one (e.g. a node checkpoint)."""
    try:
        state = load_training_checkpoint(path)
    except ValueError:
        return None
    cfg = state.get("model_config")
    if cfg is None:
        raise ValueError(f"{path}: training checkpoint without model_config")
    model = build_model(cfg, pretrained=False)
    model.load_state_dict(state["model"])
    return model.eval(), state


def load_node_model(path: str | Path, architecture: str) -> nn.Module:
    """A trained model from a training checkpoint or a node checkpoint (eval mode, CPU)."""
    path = Path(path)
    loaded = load_training_model(path)
    if loaded is not None:
        return loaded[0]
    from stereo_pose3d.checkpoint import load_model

    model, ckpt = load_model(path)
    if ckpt.architecture == "system":
        model = model.locator if architecture == "locator" else model.pose
    return model.eval()


def dataset_info(root: str | Path | None) -> dict[str, Any]:
    """``dataset.json`` of a stereo dataset (or {})."""
    if not root:
        return {}
    path = Path(root) / "dataset.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------


def open_stereo_dataset(root: str | Path) -> Any:
    """The stereo sample reader (``training.data.stereo_dataset.StereoDataset``) on ``root``."""
    from training.data.stereo_dataset import StereoDataset

    return StereoDataset(root)


class Subset(torch.utils.data.Dataset):
    """``base`` restricted to ``indices`` (keeps ``(epoch, index)`` keys working)."""

    def __init__(self, base: Any, indices: list[int]) -> None:
        self.base, self.indices = base, list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> Any:
        return self.base[self.indices[i]]


def evenly_spaced(n: int, k: int | None) -> list[int]:
    if not k or k >= n:
        return list(range(n))
    return sorted({round(float(x)) for x in np.linspace(0, n - 1, k)})


_DROP_KEYS = ("heatmaps", "heatmap_weight")  # targets are made on the device (model convention)


class StereoTransform:
    """Reader sample -> augmented crops of both views (``training.augment.augment_stereo``)."""

    def __init__(self, config: dict[str, Any], model_config: dict[str, Any], train: bool) -> None:
        from training.augment import AugmentConfig

        self.augment = AugmentConfig.from_dict(config["augment"])
        self.train = train
        self.out_size = tuple(model_config["input_size"])
        self.skeleton = (
            get_skeleton(model_config["skeleton"]) if model_config.get("skeleton") else None
        )

    def __call__(self, sample: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
        from training.augment import augment_stereo
        from training.evaluate import rectified_sample

        w, h = self.out_size
        out = augment_stereo(
            rectified_sample(sample), self.augment, rng, train=self.train, out_size=(w, h),
            heatmap_size=(w // 4, h // 4), skeleton=self.skeleton,
        )  # fmt: skip
        for key in _DROP_KEYS:
            out.pop(key, None)
        return out


class _Deterministic(torch.utils.data.Dataset):
    """Validation items: ``transform(base[i], rng(seed, i))`` for integer keys."""

    def __init__(self, base: Any, transform: Callable, seed: int = 0) -> None:
        self.inner = EpochSeededDataset(base, transform, seed)

    def __len__(self) -> int:
        return len(self.inner)

    def __getitem__(self, i: int) -> Any:
        return self.inner[(0, int(i))]


class LocatorViews(torch.utils.data.Dataset):
    """The views of a stereo set as locator samples: item ``i`` = view ``i % 2`` of sample
    ``i // 2``; yields raw ``{"image", "box", "present"}`` (full frame) for
    :class:`LocatorTransform`."""

    def __init__(self, base: Any) -> None:
        self.base = base

    def __len__(self) -> int:
        return 2 * len(self.base)

    def __getitem__(self, i: int) -> dict[str, Any]:
        from training.evaluate import rectified_sample

        sample = rectified_sample(self.base[i // 2])
        view = i % 2
        image = None
        for keys in (("left", "right"), ("image_left", "image_right")):
            if keys[view] in sample:
                image = sample[keys[view]]
        if image is None:
            image = sample["images"][view]
        box = np.asarray(sample["box"], np.float64).reshape(2, 4)[view]
        vis = np.asarray(sample.get("visibility", np.ones((2, 1))), bool).reshape(2, -1)[view]
        return {"image": np.asarray(image), "box": box, "present": bool(vis.any())}


class LocatorTransform:
    """Full frame -> letterboxed locator input (exactly the estimator's :func:`letterbox`), then
    a zoom / shift / flip affine and colour jitter; a "no person" window with probability
    ``negative_prob`` (training)."""

    def __init__(self, config: dict[str, Any], model_config: dict[str, Any], train: bool) -> None:
        self.size = tuple(model_config["input_size"])
        self.mean = np.asarray(model_config["normalization"]["mean"], np.float32)
        self.std = np.asarray(model_config["normalization"]["std"], np.float32)
        self.aug = dict(DEFAULTS["locator_augment"], **(config.get("locator_augment") or {}))
        self.negative_prob = float(config["data"].get("locator_negative_prob", 0.0))
        self.train = train

    def _negative(self, image: np.ndarray, box: np.ndarray, rng: np.random.Generator):
        """A window of the frame away from the person (or None if there is no room)."""
        H, W = image.shape[:2]
        w_in, h_in = self.size
        for _ in range(10):
            frac = rng.uniform(0.25, 0.5)
            ww = frac * W
            wh = ww * h_in / w_in
            if wh > H:
                continue
            x0, y0 = rng.uniform(0, W - ww), rng.uniform(0, H - wh)
            if x0 + ww < box[0] or x0 > box[2] or y0 + wh < box[1] or y0 > box[3]:
                return image[int(y0) : int(y0 + wh), int(x0) : int(x0 + ww)]
        return None

    def __call__(self, item: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
        import cv2

        from stereo_pose3d.models.crops import letterbox
        from training.augment import AugmentConfig, color_jitter

        image, box, present = item["image"], item["box"].copy(), item["present"]
        W, H = self.size
        if self.train and self.negative_prob > 0 and rng.random() < self.negative_prob:
            window = self._negative(image, box, rng)
            if window is not None and window.size:
                image, present = np.ascontiguousarray(window), False
                box = np.array([0.0, 0.0, 1.0, 1.0])
        canvas, A = letterbox(image, (W, H))
        if self.train:
            a = self.aug
            s = float(np.clip(1.0 + rng.normal() * a["scale"], 1 - a["scale"], 1 + a["scale"]))
            tx, ty = rng.uniform(-a["translate"], a["translate"], 2) * np.array([W, H])
            flip = bool(a["flip"] and rng.random() < 0.5)
            cx, cy = (W - 1) / 2, (H - 1) / 2
            M = np.array([[s, 0, (1 - s) * cx + tx], [0, s, (1 - s) * cy + ty], [0, 0, 1.0]])
            if flip:
                M = np.array([[-1.0, 0, W - 1], [0, 1, 0], [0, 0, 1]]) @ M
            canvas = cv2.warpAffine(canvas, M[:2], (W, H), flags=cv2.INTER_LINEAR)
            A = M @ A
            if a["color"]:
                canvas = color_jitter(canvas, AugmentConfig(), rng)
        corners = np.array([[box[0], box[1]], [box[2], box[1]], [box[0], box[3]], [box[2], box[3]]])
        mapped = corners @ A[:2, :2].T + A[:2, 2]
        full = np.concatenate([mapped.min(0), mapped.max(0)])
        clipped = np.clip(full, 0, [W - 1, H - 1, W - 1, H - 1])
        area = max(0.0, full[2] - full[0]) * max(0.0, full[3] - full[1])
        inside = max(0.0, clipped[2] - clipped[0]) * max(0.0, clipped[3] - clipped[1])
        present = bool(present and area > 0 and inside >= 0.5 * area)
        img = (canvas.astype(np.float32) / 255.0 - self.mean) / self.std
        return {
            "image": np.ascontiguousarray(img.transpose(2, 0, 1)),
            "box": (clipped if present else np.zeros(4)).astype(np.float32),
            "present": np.float32(present),
        }


def build_datasets(
    config: dict[str, Any], model_config: dict[str, Any]
) -> tuple[torch.utils.data.Dataset, torch.utils.data.Dataset | None]:
    """Training set (``(epoch, index)`` keys) and validation set (integer keys) of a stage."""
    data, stage, seed = config["data"], config["stage"], int(config["seed"])
    if not data.get("train"):
        raise ValueError("data.train is not set (path of the training set)")
    val_n = data.get("val_max_samples")
    if stage == "pretrain-2d" and data["source"] == "mpii":
        from training.augment import AugmentConfig
        from training.data.mpii import MPIIDataset

        w, h = model_config["input_size"]
        kwargs = {
            "out_size": (w, h), "heatmap_size": (w // 4, h // 4),
            "sigma": float(config["heatmap"]["sigma"]),
        }  # fmt: skip
        aug = AugmentConfig.from_dict(config["augment"])
        train = MPIIDataset(data["train"], data["train_split"], True, aug, seed=seed, **kwargs)
        val = None
        if data.get("val"):
            base = MPIIDataset(data["val"], data["val_split"], False, aug, **kwargs)
            val = Subset(base, evenly_spaced(len(base), val_n))
        return EpochSeededDataset(train, None, seed), val
    if data["source"] != "stereo":
        raise ValueError(f"data.source must be 'stereo' or 'mpii', got {data['source']!r}")
    train_base = open_stereo_dataset(data["train"])
    val_base = open_stereo_dataset(data["val"]) if data.get("val") else None
    if stage == "train-locator":
        train = EpochSeededDataset(
            LocatorViews(train_base), LocatorTransform(config, model_config, True), seed
        )
        val = None
        if val_base is not None:
            views = LocatorViews(val_base)
            val = Subset(
                _Deterministic(views, LocatorTransform(config, model_config, False), seed),
                evenly_spaced(len(views), val_n),
            )
        return train, val
    train = EpochSeededDataset(train_base, StereoTransform(config, model_config, True), seed)
    val = None
    if val_base is not None:
        val = Subset(
            _Deterministic(val_base, StereoTransform(config, model_config, False), seed),
            evenly_spaced(len(val_base), val_n),
        )
    return train, val


# --------------------------------------------------------------------------------------------
# Tasks
# --------------------------------------------------------------------------------------------


class HeatmapNet(nn.Module):
    """Runs a per-view pose network's ``forward_heatmaps`` through ``forward`` (so that DDP sees
    it); ``images (B, V, 3, H, W)`` or ``(B, 3, H, W)`` -> heatmaps ``(B, V, J, h, w)``."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    @property
    def wrapped_model(self) -> nn.Module:
        return self.net

    @property
    def config(self) -> dict[str, Any]:
        return self.net.config

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.dim() == 4:
            images = images[:, None]
        return self.net.forward_heatmaps(images, None)


def _f(x: torch.Tensor) -> float:
    return float(x.detach().float())


class PoseTask:
    """2D heatmap (+ soft-argmax 2D) (+ 3D through the DLT) losses of a multi-view pose network.

    ``heatmaps_only`` (pretrain-2d): the model is a :class:`HeatmapNet`, only the heatmap loss.
    Targets are Gaussians at the augmented 2D joints, generated on the device with the model's
    own convention (:func:`stereo_pose3d.models.gaussian_heatmaps`), weighted by visibility.
    """

    def __init__(
        self, config: dict[str, Any], model_config: dict[str, Any], heatmaps_only: bool = False
    ) -> None:
        from training.losses import get_loss

        self.loss_cfg = config["loss"]
        self.sigma = float(config["heatmap"]["sigma"])
        self.input_size = tuple(model_config["input_size"])
        self.beta = float(model_config.get("soft_argmax", {}).get("beta", 100.0))
        self.heatmaps_only = heatmaps_only
        names = model_config["joint_names"]
        skel = model_config.get("skeleton")
        self.root = get_skeleton(skel).root if skel else names.index("pelvis")
        self.heatmap_loss = get_loss(self.loss_cfg["heatmap"].get("type", "heatmap_mse"))
        self.kp_loss = get_loss(self.loss_cfg["keypoints_2d"].get("type", "l1"))
        self.loss_3d = get_loss(self.loss_cfg["joints_3d"].get("type", "mse_smooth"))
        has_3d = float(self.loss_cfg["joints_3d"].get("weight", 0.0)) > 0
        self.best_metric = "val/mpjpe_rr_mm" if has_3d and not heatmaps_only else "val/err2d_px"
        self.best_mode = "min"

    def weight_3d(self, context: dict[str, Any]) -> float:
        """The 3D loss weight at this step (0 during the 2D warm-up, then ramped)."""
        weight = float(self.loss_cfg["joints_3d"].get("weight", 0.0))
        if weight <= 0 or self.heatmaps_only:
            return 0.0
        warmup = float(self.loss_cfg.get("warmup_2d_epochs", 0.0)) * context["steps_per_epoch"]
        warmup = max(warmup, float(self.loss_cfg.get("warmup_2d_steps", 0)))
        fraction = float(self.loss_cfg.get("warmup_2d_fraction", 0.0))
        warmup = max(warmup, fraction * context.get("total_steps", 0))
        step = context["step"]
        if step < warmup:
            return 0.0
        ramp = int(self.loss_cfg.get("ramp_3d_steps", 0))
        return weight * min(1.0, (step - warmup + 1) / ramp) if ramp > 0 else weight

    def _targets(self, batch: dict[str, torch.Tensor], heatmaps: torch.Tensor) -> torch.Tensor:
        h, w = heatmaps.shape[-2:]
        stride = self.input_size[0] / w
        return gaussian_heatmaps(
            batch["joints_2d"], batch["visibility"] > 0, (w, h), stride, self.sigma
        )

    def _images(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return batch["images"] if "images" in batch else batch["image"][:, None]

    def _views(self, batch: dict[str, torch.Tensor], key: str) -> torch.Tensor:
        x = batch[key]
        return x if "images" in batch else x[:, None]

    def training_loss(
        self, model: nn.Module, batch: dict[str, torch.Tensor], context: dict[str, Any]
    ) -> tuple[torch.Tensor, dict[str, float]]:
        images = self._images(batch)
        joints_2d = self._views(batch, "joints_2d")
        visibility = self._views(batch, "visibility")
        w3 = self.weight_3d(context)
        if self.heatmaps_only:
            heatmaps = model(images)
            out = {"heatmaps": heatmaps}
        else:
            out = model(images, batch["P"])
            heatmaps = out["heatmaps"]
        heatmaps = heatmaps.float()
        target = self._targets({"joints_2d": joints_2d, "visibility": visibility}, heatmaps)
        l_hm = self.heatmap_loss(heatmaps, target, visibility)
        total = float(self.loss_cfg["heatmap"].get("weight", 1.0)) * l_hm
        logs = {"heatmap": _f(l_hm)}
        w_kp = float(self.loss_cfg["keypoints_2d"].get("weight", 0.0))
        if w_kp > 0:
            if "joints_2d" in out:
                uv = out["joints_2d"].float()
            else:
                uv = heatmap_to_crop(
                    soft_argmax(heatmaps, self.beta)[0], self.input_size[0] / heatmaps.shape[-1]
                )
            l_kp = self.kp_loss(uv, joints_2d, visibility)
            total = total + w_kp * l_kp
            logs["kp2d"] = _f(l_kp)
        if not self.heatmaps_only:
            pred, gt = out["joints_3d"].float(), batch["joints_3d"].float()
            valid = batch["joints_3d_valid"].float()
            cfg3 = self.loss_cfg["joints_3d"]
            if cfg3.get("root_relative", True):
                r = self.root
                pred = pred - pred[:, r : r + 1]
                gt = gt - gt[:, r : r + 1]
                valid = valid * valid[:, r : r + 1]
            with torch.no_grad():
                err = torch.linalg.vector_norm(pred - gt, dim=-1)
                logs["mpjpe_rr_mm" if cfg3.get("root_relative", True) else "mpjpe_mm"] = _f(
                    1000 * (err * valid).sum() / valid.sum().clamp_min(1)
                )
            if w3 > 0:
                kwargs = {"scale": float(cfg3.get("scale", 1000.0))}
                l3 = self.loss_3d(pred, gt, valid, **kwargs)
                total = total + w3 * l3
                logs["loss3d"] = _f(l3)
            logs["w3d"] = w3
        return total, logs

    @torch.no_grad()
    def validate(self, model: nn.Module, loader: Any, device: torch.device) -> dict[str, float]:
        from stereo_pose3d.metrics import mpjpe, pa_mpjpe

        hm_sum, n_batches = 0.0, 0
        err2d, vis2d = [], []
        preds, gts, valids = [], [], []
        pckh_parts: list[tuple[np.ndarray, ...]] = []
        for batch in loader:
            batch = {
                k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()
            }
            images = self._images(batch)
            joints_2d = self._views(batch, "joints_2d").float()
            visibility = self._views(batch, "visibility").float()
            if self.heatmaps_only:
                heatmaps = model(images).float()
                uv = heatmap_to_crop(
                    soft_argmax(heatmaps, self.beta)[0], self.input_size[0] / heatmaps.shape[-1]
                )
                out = {}
            else:
                out = model(images, batch["P"])
                heatmaps, uv = out["heatmaps"].float(), out["joints_2d"].float()
            target = self._targets({"joints_2d": joints_2d, "visibility": visibility}, heatmaps)
            hm_sum += _f(self.heatmap_loss(heatmaps, target, visibility))
            n_batches += 1
            err2d.append(torch.linalg.vector_norm(uv - joints_2d, dim=-1).cpu().numpy())
            vis2d.append(visibility.cpu().numpy())
            if "head_box" in batch:
                pckh_parts.append(
                    (uv[:, 0].cpu().numpy(), joints_2d[:, 0].cpu().numpy(),
                     visibility[:, 0].cpu().numpy(), batch["affine"].cpu().numpy(),
                     batch["head_box"].cpu().numpy())
                )  # fmt: skip
            if out:
                preds.append(out["joints_3d"].float().cpu().numpy())
                gts.append(batch["joints_3d"].float().cpu().numpy())
                valids.append(batch["joints_3d_valid"].cpu().numpy() > 0)
        e, v = np.concatenate(err2d), np.concatenate(vis2d) > 0
        metrics = {
            "val/heatmap_loss": hm_sum / max(1, n_batches),
            "val/err2d_px": float(e[v].mean()) if v.any() else float("nan"),
        }
        if preds:
            pred, gt, valid = np.concatenate(preds), np.concatenate(gts), np.concatenate(valids)
            metrics["val/mpjpe_mm"] = mpjpe(pred, gt, mask=valid)
            metrics["val/mpjpe_rr_mm"] = mpjpe(pred, gt, root=self.root, mask=valid)
            full = valid.all(axis=1)
            metrics["val/pa_mpjpe_mm"] = pa_mpjpe(pred[full], gt[full]) if full.any() else math.nan
        if pckh_parts:
            metrics.update(_pckh_metrics(pckh_parts))
        return metrics


def _pckh_metrics(parts: list[tuple[np.ndarray, ...]]) -> dict[str, float]:
    """PCKh@0.5 of crop predictions mapped back to the full image (MPII validation crops)."""
    from stereo_pose3d.metrics import pckh
    from training.data.mpii import uncrop_points

    pred, gt, vis, affine, head = (np.concatenate(p) for p in zip(*parts, strict=True))
    ok = np.isfinite(head).all(axis=1) & (head[:, 2:] > head[:, :2]).all(axis=1)
    if not ok.any() or pred.shape[1] != 16:
        return {}
    full_pred = uncrop_points(pred[ok], affine[ok])
    full_gt = uncrop_points(gt[ok], affine[ok])
    result = pckh(full_pred, full_gt, vis[ok] > 0, head[ok])
    return {"val/pckh_mean": result.table["Mean"], "val/pckh_mean@0.1": result.table["Mean@0.1"]}


class LocatorTask:
    """CenterNet-style locator loss (:func:`stereo_pose3d.models.locator_loss`)."""

    best_metric = "val/mean_iou"
    best_mode = "max"

    def __init__(self, config: dict[str, Any], model_config: dict[str, Any]) -> None:
        self.input_size = tuple(model_config["input_size"])
        self.box_weight = float(config["loss"].get("locator_box_weight", 1.0))
        self.score_threshold = float(
            config["system"].get("estimator", {}).get("score_threshold", 0.3)
        )

    def _stride(self, model: nn.Module) -> int:
        core = model.module if hasattr(model, "module") else model
        return int(core.stride)

    def training_loss(
        self, model: nn.Module, batch: dict[str, torch.Tensor], context: dict[str, Any]
    ) -> tuple[torch.Tensor, dict[str, float]]:
        out = model(batch["image"])
        targets = locator_targets(
            batch["box"], batch["present"] > 0, self.input_size, self._stride(model)
        )
        losses = locator_loss(out, targets, self.box_weight)
        return losses["loss"], {"centre": _f(losses["centre"]), "box": _f(losses["box"])}

    @torch.no_grad()
    def validate(self, model: nn.Module, loader: Any, device: torch.device) -> dict[str, float]:
        from stereo_pose3d.models.locator import box_iou

        ious, scores, present, loss_sum, n = [], [], [], 0.0, 0
        for batch in loader:
            batch = {k: v.to(device) for k, v in batch.items()}
            out = model(batch["image"])
            targets = locator_targets(
                batch["box"], batch["present"] > 0, self.input_size, model.stride
            )
            loss_sum += _f(locator_loss(out, targets, self.box_weight)["loss"])
            n += 1
            boxes, s = model.decode(out)
            ious.append(box_iou(boxes.float(), batch["box"].float()).cpu().numpy())
            scores.append(s.float().cpu().numpy())
            present.append(batch["present"].cpu().numpy() > 0)
        iou, score, pres = np.concatenate(ious), np.concatenate(scores), np.concatenate(present)
        found = (score >= self.score_threshold) & (iou >= 0.5)
        metrics = {
            "val/locator_loss": loss_sum / max(1, n),
            "val/mean_iou": float(np.where(score >= self.score_threshold, iou, 0)[pres].mean())
            if pres.any() else float("nan"),
            "val/box_recall": float(found[pres].mean()) if pres.any() else float("nan"),
        }  # fmt: skip
        if (~pres).any():
            metrics["val/empty_rejected"] = float((score[~pres] < self.score_threshold).mean())
        return metrics


# --------------------------------------------------------------------------------------------
# Node checkpoints of a run
# --------------------------------------------------------------------------------------------


def provenance_for(
    config: dict[str, Any], metrics: dict[str, float], **extra: Any
) -> dict[str, Any]:
    info = dataset_info(config["data"].get("train"))
    return {
        "dataset": info.get("source", config["data"].get("source")),
        "dataset_path": str(config["data"].get("train")),
        "split": info.get("split", config["data"].get("train_split")),
        "stage": config["stage"],
        "training_config": config,
        "metrics": {k: float(v) for k, v in (metrics or {}).items()},
        **extra,
    }


def write_node_checkpoints(
    config: dict[str, Any],
    run_dir: Path,
    kind: str,
    model: nn.Module,
    metrics: dict[str, float],
    storage: str = "float32",
) -> list[Path]:
    """``pose_<kind>.pt`` / ``locator_<kind>.pt`` and, when the other half is known, the
    estimator-loadable ``system_<kind>.pt`` (node checkpoint format)."""
    from stereo_pose3d.checkpoint import save_checkpoint
    from stereo_pose3d.models import PoseSystem

    written = []
    prov = provenance_for(config, metrics, checkpoint_kind=kind)
    arch = model.config["architecture"]
    if config["stage"] == "pretrain-2d":
        return [save_checkpoint(run_dir / f"pose2d_{kind}.pt", model, model.config, prov, storage)]
    part = "locator" if arch == "locator" else "pose"
    written.append(
        save_checkpoint(run_dir / f"{part}_{kind}.pt", model, model.config, prov, storage)
    )
    other = config["system"].get("pose" if part == "locator" else "locator")
    if other:
        partner = load_node_model(other, "pose" if part == "locator" else "locator")
        pose, locator = (model, partner) if part == "pose" else (partner, model)
        sys_cfg = system_config(
            pose.config, locator.config, **config["system"].get("estimator", {})
        )
        system = PoseSystem(sys_cfg, pose, locator)
        prov["partner_checkpoint"] = str(other)
        written.append(
            save_checkpoint(run_dir / f"system_{kind}.pt", system, sys_cfg, prov, storage)
        )
    return written


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    default = CONFIG_DIR / DEFAULT_CONFIGS[command]
    parser.add_argument(
        "--config", type=Path, default=default, help=f"stage config YAML (default {default})"
    )
    parser.add_argument("--run-dir", type=Path, help="output folder (default: config run_dir)")
    parser.add_argument(
        "--resume", action="store_true",
        help="continue from <run-dir>/checkpoints/last.pt if it exists (same step, same state)",
    )  # fmt: skip
    parser.add_argument(
        "--max-minutes", type=float,
        help="wall-clock budget: stop in time to write a checkpoint (overrides train.max_minutes)",
    )  # fmt: skip
    parser.add_argument("--max-steps", type=int, help="overrides train.max_steps")
    parser.add_argument(
        "--override", "-o", action="append", default=[], metavar="KEY=VALUE",
        help="set a config field, e.g. train.batch_size=8 or data.train=data/synth/train",
    )  # fmt: skip
    parser.add_argument("--device", help="auto | cpu | cuda (overrides train.device)")
    parser.add_argument("--init", type=Path, help="initial weights (overrides init.checkpoint)")
    parser.add_argument(
        "--locator", type=Path,
        help="trained locator (run checkpoint or node file): also write system_*.pt",
    )  # fmt: skip
    parser.add_argument(
        "--pose", type=Path, help="train-locator: trained pose network, to write system_*.pt"
    )
    parser.add_argument("--no-progress", action="store_true", help="no tqdm bar")


def resolve_config(args: argparse.Namespace) -> dict[str, Any]:
    overrides = list(args.override or [])
    if args.max_minutes is not None:
        overrides.append(f"train.max_minutes={args.max_minutes}")
    if args.max_steps is not None:
        overrides.append(f"train.max_steps={args.max_steps}")
    if args.device:
        overrides.append(f"train.device={args.device}")
    if args.init:
        overrides.append(f"init.checkpoint={args.init}")
    if getattr(args, "locator", None):
        overrides.append(f"system.locator={args.locator}")
    if getattr(args, "pose", None):
        overrides.append(f"system.pose={args.pose}")
    if args.no_progress:
        overrides.append("train.progress=false")
    config = load_config(args.config, overrides, args.command)
    if args.run_dir is not None:
        config["run_dir"] = str(args.run_dir)
    run_dir = Path(config["run_dir"])
    saved = run_dir / "config.yaml"
    if args.resume and saved.is_file():
        # The run's own config wins (same model, data, schedule); CLI overrides still apply.
        previous = load_config(saved, overrides, args.command)
        previous["run_dir"] = config["run_dir"]
        config = previous
    return config


def main(args: argparse.Namespace) -> int:
    try:
        config = resolve_config(args)
        return run_stage(config, resume=bool(args.resume))
    except (ValueError, KeyError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def check_input_paths(config: dict[str, Any], resume: bool = False) -> None:
    """Raise (naming the key and the path) unless every input of ``config`` exists: the data
    sets, the initial weights (unless a resumed run skips them) and the ``system`` partner."""
    if not config["data"].get("train"):
        raise ValueError("data.train is not set (path of the training set)")
    paths = {
        "data.train": config["data"]["train"],
        "data.val": config["data"].get("val"),
        "system.locator": config["system"].get("locator"),
        "system.pose": config["system"].get("pose"),
    }
    if not (resume and (Path(config["run_dir"]) / "checkpoints" / "last.pt").is_file()):
        paths["init.checkpoint"] = config["init"].get("checkpoint")
    for key, path in paths.items():
        if path and not Path(path).exists():
            raise FileNotFoundError(f"{key}: {path} does not exist")


def run_stage(config: dict[str, Any], resume: bool = False, info: DistInfo | None = None) -> int:
    """Build model, data and task of ``config["stage"]`` and train; returns an exit code."""
    engine_cfg = EngineConfig.from_dict({"seed": config["seed"], **config["train"]})
    check_input_paths(config, resume)
    info = info or setup_distributed(engine_cfg.device)
    try:
        run_dir = Path(config["run_dir"])
        model_cfg = model_config_from(config)
        torch.manual_seed(int(config["seed"]))
        model = build_model(model_cfg)
        if info.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            with open(run_dir / "config.yaml", "w") as f:
                yaml.safe_dump({**config, "model": model_cfg}, f, sort_keys=False)
        init = config["init"].get("checkpoint")
        if init and not (resume and (run_dir / "checkpoints" / "last.pt").is_file()):
            message = init_from(model, init, model_cfg["architecture"])
            if info.is_main:
                print(message, flush=True)
        stage = config["stage"]
        if stage == "train-locator":
            task: Any = LocatorTask(config, model_cfg)
            net: nn.Module = model
        elif stage == "pretrain-2d":
            task = PoseTask(config, model_cfg, heatmaps_only=True)
            net = HeatmapNet(model)
        else:
            task = PoseTask(config, model_cfg)
            net = model
        train_set, val_set = build_datasets(config, model_cfg)
        if info.is_main:
            n_params = sum(p.numel() for p in model.parameters())
            print(
                f"{stage}: {model_cfg['architecture']} ({n_params / 1e6:.1f}M parameters), "
                f"{len(train_set)} training / {len(val_set) if val_set else 0} validation "
                f"samples, {info.world_size} process(es) on {info.device}; run dir {run_dir}",
                flush=True,
            )

        def on_checkpoint(kind: str, unwrapped: nn.Module, metrics: dict[str, float]) -> None:
            if kind in ("best", "final"):
                core = getattr(unwrapped, "wrapped_model", unwrapped)
                write_node_checkpoints(config, run_dir, kind, core, metrics)

        result = fit(
            net, task, train_set, val_set, engine_cfg, run_dir, full_config=config,
            optim_config=config["optim"], resume=resume, info=info, on_checkpoint=on_checkpoint,
        )  # fmt: skip
        if info.is_main:
            summary = {
                "stage": stage, "step": result.step, "epoch": result.epoch,
                "reason": result.reason, "best": result.best, "metrics": result.metrics,
                "timing": result.timing,
            }  # fmt: skip
            (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        return 0
    finally:
        cleanup_distributed()
