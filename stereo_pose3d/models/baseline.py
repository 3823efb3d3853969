"""The baseline: Simple Baselines 2D pose per view + soft-argmax + weighted DLT."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from stereo_pose3d.models.backbone import ResNetBackbone
from stereo_pose3d.models.canonical import canonical_projections, triangulate_canonical
from stereo_pose3d.models.config import HEATMAP_DECODINGS
from stereo_pose3d.models.heads import SimpleBaselinesHead
from stereo_pose3d.models.heatmaps import (
    decode_heatmaps,
    flip_crop_inputs,
    heatmap_to_crop,
    unflip_heatmaps,
)
from stereo_pose3d.skeleton import Skeleton

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

    ``forward_2d(..., flip_test=True)``: flip test (Simple Baselines, Xiao et al. 2018) -- the
    network also runs on the horizontally mirrored crops (in the same batch), whose heatmaps are
    mirrored back, joint-permuted (:attr:`flip_permutation`) and averaged with the originals'
    before the soft-argmax (:func:`~stereo_pose3d.models.heatmaps.flip_crop_inputs`,
    :func:`~stereo_pose3d.models.heatmaps.unflip_heatmaps`). The mirrored input is a mirrored
    scene seen by proper cameras (``P' = A_flip P diag(-1, 1, 1, 1)``) with the two views
    swapped, i.e. exactly a training sample of the flip augmentation, so it is well defined for
    CDRNet's fused code as well as for the per-view baseline.

    ``forward_2d(..., decoding="local")``: 2D joints by
    :func:`~stereo_pose3d.models.heatmaps.local_soft_argmax` (the strongest mode of each heatmap)
    instead of the global soft-argmax (``"global"``, the default, used in training and by
    :meth:`forward`); the estimator passes its ``heatmap_decoding`` setting.
    """

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__()
        self.config = config
        self.num_joints = len(config["joint_names"])
        self.input_size = tuple(config["input_size"])  # (W, H)
        self.beta = float(config["soft_argmax"]["beta"])
        self.triangulation = config["triangulation"]["method"]
        self.backbone = ResNetBackbone(config["backbone"]["name"], 4)
        names = tuple(config["joint_names"])
        # perm[j]: the joint that j becomes in a mirror image (left_* <-> right_*).
        self.flip_permutation: tuple[int, ...] = Skeleton("pose", names, (), 0).flip_permutation

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

    def forward_2d(
        self,
        images: torch.Tensor,
        P: torch.Tensor,
        flip_test: bool = False,
        decoding: str = "global",
    ) -> dict[str, torch.Tensor]:
        """Heatmaps, 2D joints (crop px) and confidences; no triangulation. ``flip_test``: the
        heatmaps are the average of the crops' and the mirrored crops' (:meth:`flip_test_heatmaps`;
        one forward pass of twice the batch). ``decoding``: ``"global"`` or ``"local"``
        (:func:`~stereo_pose3d.models.heatmaps.decode_heatmaps`; ValueError otherwise)."""
        if decoding not in HEATMAP_DECODINGS:
            raise ValueError(f"decoding must be one of {list(HEATMAP_DECODINGS)}, got {decoding!r}")
        self.check_inputs(images, P)
        if flip_test:
            heatmaps = self.flip_test_heatmaps(images, P)
        else:
            heatmaps = self.forward_heatmaps(images, P)
        stride = self.input_size[0] / heatmaps.shape[-1]
        uv, confidence = decode_heatmaps(heatmaps, self.beta, decoding)
        return {
            "heatmaps": heatmaps,
            "joints_2d": heatmap_to_crop(uv, stride),
            "confidence": confidence,
        }

    def flip_test_heatmaps(self, images: torch.Tensor, P: torch.Tensor) -> torch.Tensor:
        """``(B, V, J, h, w)`` float32: mean of the heatmaps of the crops and of their mirror
        images mapped back (see the class docstring); both in one batch of ``2 B``."""
        B, V = images.shape[:2]
        images_f, P_f = flip_crop_inputs(images, P)
        both = torch.cat([images, images_f])
        if images.flatten(0, 1).is_contiguous(memory_format=torch.channels_last):
            both = both.flatten(0, 1).contiguous(memory_format=torch.channels_last)
            both = both.unflatten(0, (2 * B, V))
        heatmaps = self.forward_heatmaps(both, torch.cat([P, P_f])).float()
        return (heatmaps[:B] + unflip_heatmaps(heatmaps[B:], self.flip_permutation)) / 2

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
