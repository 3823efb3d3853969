"""PoseSystem: the pose network and the person locator that the estimator loads from one file."""

from __future__ import annotations

from typing import Any

from torch import nn


class PoseSystem(nn.Module):
    """Container of ``pose`` (CDRNet or baseline) and ``locator`` (PersonLocator).

    Its state dict has the keys ``pose.*`` and ``locator.*``; build it from two trained models with
    ``PoseSystem(config, pose, locator)`` where ``config = system_config(pose.config,
    locator.config, ...)``, and save it with :func:`stereo_pose3d.checkpoint.save_checkpoint`.
    """

    def __init__(
        self,
        config: dict[str, Any],
        pose: nn.Module | None = None,
        locator: nn.Module | None = None,
    ) -> None:
        super().__init__()
        from stereo_pose3d.models import build_model

        self.config = config
        self.pose = pose if pose is not None else build_model(config["pose"], pretrained=False)
        self.locator = (
            locator if locator is not None else build_model(config["locator"], pretrained=False)
        )

    def forward(self, *args, **kwargs):
        raise TypeError("PoseSystem is a container: call .pose(...) or .locator(...)")
