"""Pose networks (CDRNet, Simple Baselines + DLT), the person locator and their configs.

``build_model(config)`` builds any of them from a plain config dict (see :mod:`.config`).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from stereo_pose3d.models.backbone import ResNetBackbone
from stereo_pose3d.models.baseline import BaselineModel, PoseNetBase
from stereo_pose3d.models.cdrnet import CDRNet
from stereo_pose3d.models.config import (
    ConfigError,
    locator_config,
    pose_config,
    system_config,
    tiny_system_config,
    validate_config,
)
from stereo_pose3d.models.heads import SimpleBaselinesHead
from stereo_pose3d.models.heatmaps import (
    decode_heatmaps,
    gaussian_heatmaps,
    local_soft_argmax,
    soft_argmax,
)
from stereo_pose3d.models.locator import PersonLocator, box_recall, locator_loss, locator_targets
from stereo_pose3d.models.system import PoseSystem

__all__ = [
    "BaselineModel",
    "CDRNet",
    "ConfigError",
    "PersonLocator",
    "PoseNetBase",
    "PoseSystem",
    "ResNetBackbone",
    "SimpleBaselinesHead",
    "box_recall",
    "build_model",
    "decode_heatmaps",
    "gaussian_heatmaps",
    "local_soft_argmax",
    "locator_config",
    "locator_loss",
    "locator_targets",
    "pose_config",
    "soft_argmax",
    "system_config",
    "tiny_system_config",
    "validate_config",
]


def build_model(config: dict[str, Any], pretrained: bool = True) -> nn.Module:
    """Build the model a config describes (randomly initialised).

    Args:
        config: a dict as in :mod:`stereo_pose3d.models.config` (validated here).
        pretrained: load ``backbone.pretrained`` (a torchvision ImageNet state dict on disk) when
            the config names one. Checkpoint loading passes False (its weights come from the file).

    Raises:
        ConfigError: invalid config. ValueError: unreadable pretrained weights.
    """
    config = validate_config(config)
    arch = config["architecture"]
    if arch == "system":
        return PoseSystem(config)
    model: nn.Module
    if arch == "cdrnet":
        model = CDRNet(config)
    elif arch == "baseline":
        model = BaselineModel(config)
    else:
        model = PersonLocator(config)
    path = config["backbone"].get("pretrained")
    if pretrained and path:
        model.backbone.load_pretrained(path)
    return model
