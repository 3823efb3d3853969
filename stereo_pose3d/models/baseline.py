"""The baseline: Simple Baselines 2D pose per view + soft-argmax + weighted DLT."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from stereo_pose3d.models.backbone import ResNetBackbone
from stereo_pose3d.models.canonical import canonical_projections, triangulate_canonical
from stereo_pose3d.models.heads import SimpleBaselinesHead
from stereo_pose3d.models.heatmaps import heatmap_to_crop, soft_argmax

MIN_WEIGHT = 0.01  # DLT weights are max(confidence, MIN_WEIGHT): never an all-zero system


class PoseNetBase(nn.Module):
    """What both multi-view pose networks share: config, soft-argmax and triangulation.

    Subclasses implement :meth:`forward_heatmaps`. ``forward(images, P)`` takes
    ``images (B, V, 3, H, W)`` normalised crops (V >= 2, view 0 is the reference) and
    ``P (B, V, 3, 4)`` their crop-adjusted projections, and returns a dict:

    * ``heatmaps (B, V, J, H/4, W/4)``,
    * ``joints_2d (B, V, J, 2)`` crop pixels (soft-argmax), ``confidence (B, V, J)`` in [0, 1],
    * ``joints_3d (B, J, 3)`` metres in the frame the P's project from (weighted DLT),
    * ``valid (B, J)`` bool (triangulation not degenerate; no gradient).
    """

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__()
        self.config = config
        self.num_joints = len(config["joint_names"])
        self.input_size = tuple(config["input_size"])  # (W, H)
        self.beta = float(config["soft_argmax"]["beta"])
        self.triangulation = config["triangulation"]["method"]
        self.backbone = ResNetBackbone(config["backbone"]["name"], 4)

    def forward_heatmaps(self, images: torch.Tensor, P: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def check_inputs(self, images: torch.Tensor, P: torch.Tensor) -> None:
        """Raise ValueError for shapes the network cannot take."""
        w, h = self.input_size
        if images.dim() != 5 or images.shape[2] != 3 or tuple(images.shape[-2:]) != (h, w):
            raise ValueError(f"images must be (B, V, 3, {h}, {w}), got {tuple(images.shape)}")
        if images.shape[1] < 2:
            raise ValueError(f"need at least 2 views, got {images.shape[1]}")
        if tuple(P.shape) != (*images.shape[:2], 3, 4):
            raise ValueError(f"P must be {(*images.shape[:2], 3, 4)}, got {tuple(P.shape)}")

    def forward_2d(self, images: torch.Tensor, P: torch.Tensor) -> dict[str, torch.Tensor]:
        """Heatmaps, 2D joints (crop px) and confidences; no triangulation."""
        self.check_inputs(images, P)
        heatmaps = self.forward_heatmaps(images, P)
        stride = self.input_size[0] / heatmaps.shape[-1]
        uv, confidence = soft_argmax(heatmaps, self.beta)
        return {
            "heatmaps": heatmaps,
            "joints_2d": heatmap_to_crop(uv, stride),
            "confidence": confidence,
        }

    def triangulate(
        self, joints_2d: torch.Tensor, confidence: torch.Tensor, P: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Weighted DLT: ``joints_2d (B, V, J, 2)`` -> ``joints_3d (B, J, 3)``, ``valid (B, J)``."""
        with torch.autocast(joints_2d.device.type, enabled=False):
            P_c, N, W_inv = canonical_projections(P.float(), self.input_size)
            weights = confidence.float().clamp_min(MIN_WEIGHT)
            return triangulate_canonical(
                joints_2d.float(), P_c, N, W_inv, weights, self.triangulation
            )

    def forward(self, images: torch.Tensor, P: torch.Tensor) -> dict[str, torch.Tensor]:
        out = self.forward_2d(images, P)
        out["joints_3d"], out["valid"] = self.triangulate(out["joints_2d"], out["confidence"], P)
        return out


class BaselineModel(PoseNetBase):
    """ResNet + Simple Baselines head run on each view independently; the views only meet in
    the weighted DLT. Config: see :mod:`stereo_pose3d.models.config` (``"baseline"``)."""

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__(config)
        head = config["head"]
        self.head = SimpleBaselinesHead(
            self.backbone.out_channels, self.num_joints, head["channels"], head["num_deconv"]
        )

    def forward_heatmaps(self, images: torch.Tensor, P: torch.Tensor) -> torch.Tensor:
        B, V = images.shape[:2]
        heatmaps = self.head(self.backbone(images.flatten(0, 1)))
        return heatmaps.unflatten(0, (B, V))
