"""CDRNet: camera-disentangled representation (Remelli et al., "Lightweight Multi-View 3D Pose
Estimation through Camera-Disentangled Representation", CVPR 2020), implemented from the paper.

Data flow for ``images (B, V, 3, H, W)`` and crop-adjusted ``P (B, V, 3, 4)``::

    ResNet encoder (shared by the views)      (B*V, C, H/32, W/32)   C = 2048 for ResNet-50+
    1x1 conv -> latent z                      (B*V, L, h, w)          L = 300 -> 3 x (100*h*w)
    FTL: pinv(P_v) (4x3) @ z as 3 x n points  (B, V, 4, n)            canonical code
    fusion: shared 1x1 conv per view, mean over views, 1x1 convs -> fused code (B, 4, n)
    FTL back: P_v (3x4) @ fused code          (B*V, L, h, w)          per-view code
    1x1 conv "lift" to the decoder width, Simple Baselines decoder -> heatmaps (B, V, J, H/4, W/4)
    soft-argmax -> joints_2d, confidence; weighted DLT -> joints_3d (trained end to end)

The crop, scale and in-plane rotation of the augmentation are part of ``P`` (``A @ P``, see
:mod:`stereo_pose3d.models.crops`), so the camera the network is conditioned on is the camera of
the pixels it sees.

Departures from the paper, and why:

1. **Canonical frame = the first view's camera frame, P normalised.** The paper applies
   ``P^-1`` in the dataset's world frame. Here every P is first scaled to a unit-norm depth row,
   pre-multiplied by the pixel normalisation of the crop (pixels -> [-1, 1]) and expressed in the
   reference (view 0) camera frame computed from ``P_0`` itself (:mod:`.canonical`); the DLT runs
   in that frame and its result is mapped back. Reasons: the pseudo-inverse of a raw pixel P
   (entries ~1e2..1e3, arbitrary projective scale) gives codes of wildly different magnitudes;
   and the pseudo-inverse is not equivariant to world translations (``pinv(P T^-1) != T pinv(P)``
   unless T is orthogonal) and the fusion network is non-linear, so in a user-chosen world frame
   the output would depend on that choice. With the reference frame the network is *exactly*
   equivariant to any rigid change of world frame and invariant to the scale of each P (tested).
   For the stereo node the world frame is the left rectified camera, so this only removes the
   crop's translation/rotation from the frame.
2. **Fusion is symmetric in the views.** The paper concatenates the V canonical codes (fixed V).
   Here a shared 1x1 conv + BN + ReLU encodes each view's code, the views are averaged, and two
   1x1 convs (with BN + ReLU between) give the fused code: any V >= 2 works with the same
   weights, and the result does not depend on the views' order (except through which view
   defines the canonical frame).
3. **Decoder width.** The back-projected code (L channels) is lifted by a 1x1 conv + BN + ReLU
   to the decoder's width (256) instead of the encoder's (2048), and the decoder's first
   deconvolution starts from 256 channels. It saves 8M parameters (1x1 2048 conv + 2048->256 4x4
   deconvolution) with no information loss (the code has only L channels anyway); it keeps
   ResNet-18/34 checkpoints under 25 MB.
4. **Confidence.** Each joint's DLT weight is its heatmap maximum (clamped to [0.01, 1]); the
   paper's network has no separate confidence branch either, but does not say how it weights the
   DLT.
5. **Encoder.** ResNet-18..152 (ResNet-152 in the paper), trained from scratch here unless an
   ImageNet state dict is on disk.
6. **Optional view skip** (``cdr.view_skip``, off by default). On a *rectified* stereo pair the
   two cameras share their rotation and differ by a 6-30 cm translation and their crops, and a
   network trained with the fused code alone learned to place the joints at the same spot of
   each crop (the result's disparity followed the crop offset, correlation 0.9995; its 2D error
   stayed ~5x the baseline's after the same GPU training): the code carries too little of each
   view's own evidence. With the skip, a 1x1 conv + BN of the view's encoder features is added
   to the lifted per-view code before the decoder (BN scale initialised to 0, so a checkpoint
   without it starts from the same function). An experiment, not yet shown to help: a 12-minute
   CPU A/B from the same GPU-trained weights (570 steps of 12 pairs at 128 px) ended at the same
   validation heatmap loss with and without it (0.00220 vs 0.00222); it needs a GPU-sized run.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from stereo_pose3d.models.baseline import PoseNetBase
from stereo_pose3d.models.canonical import canonical_projections
from stereo_pose3d.models.heads import SimpleBaselinesHead


class CDRNet(PoseNetBase):
    """Multi-view pose network with a camera-disentangled latent (see the module docstring).

    Config: :func:`stereo_pose3d.models.config.pose_config` with ``architecture="cdrnet"``;
    ``cdr.latent_channels`` L (multiple of 3) and ``cdr.fusion_channels`` F.
    Inputs/outputs: :class:`stereo_pose3d.models.baseline.PoseNetBase`.
    """

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__(config)
        latent = config["cdr"]["latent_channels"]
        fusion = config["cdr"]["fusion_channels"]
        width = config["head"]["channels"]
        self.latent_channels = latent
        code = 4 * latent // 3  # channels of a canonical code (homogeneous 4-vectors)
        self.encode = nn.Conv2d(self.backbone.out_channels, latent, kernel_size=1)
        self.fuse_view = nn.Sequential(
            nn.Conv2d(code, fusion, 1, bias=False), nn.BatchNorm2d(fusion), nn.ReLU(inplace=True)
        )
        self.fuse = nn.Sequential(
            nn.Conv2d(fusion, fusion, 1, bias=False),
            nn.BatchNorm2d(fusion),
            nn.ReLU(inplace=True),
            nn.Conv2d(fusion, code, 1),
        )
        self.lift = nn.Sequential(
            nn.Conv2d(latent, width, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True)
        )
        self.head = SimpleBaselinesHead(width, self.num_joints, width, config["head"]["num_deconv"])
        self.view_skip: nn.Module | None = None
        if config["cdr"].get("view_skip", False):
            self.view_skip = nn.Sequential(
                nn.Conv2d(self.backbone.out_channels, width, 1, bias=False), nn.BatchNorm2d(width)
            )
            nn.init.zeros_(self.view_skip[1].weight)

    def canonical_code(self, z: torch.Tensor, P_c: torch.Tensor) -> torch.Tensor:
        """FTL: latent ``z (B, V, L, h, w)`` -> canonical code ``(B, V, 4, n)``, n = L/3*h*w."""
        B, V = z.shape[:2]
        points = z.float().reshape(B, V, 3, -1)
        return torch.linalg.pinv(P_c) @ points

    def forward_heatmaps(self, images: torch.Tensor, P: torch.Tensor) -> torch.Tensor:
        B, V = images.shape[:2]
        x = images.flatten(0, 1)
        features = self.backbone(x)
        z = self.encode(features)  # (B*V, L, h, w)
        h, w = z.shape[-2:]
        with torch.autocast(images.device.type, enabled=False):
            P_c, _, _ = canonical_projections(P.float(), self.input_size)
            canonical = self.canonical_code(z.unflatten(0, (B, V)), P_c)
        canonical = canonical.reshape(B * V, -1, h, w)
        pooled = self.fuse_view(canonical.to(z.dtype)).unflatten(0, (B, V)).mean(dim=1)
        fused = self.fuse(pooled)  # (B, 4L/3, h, w)
        with torch.autocast(images.device.type, enabled=False):
            per_view = P_c @ fused.float().reshape(B, 1, 4, -1)  # (B, V, 3, n)
        per_view = per_view.reshape(B * V, self.latent_channels, h, w).to(z.dtype)
        if x.is_contiguous(memory_format=torch.channels_last):
            per_view = per_view.contiguous(memory_format=torch.channels_last)
        decoder_input = self.lift(per_view)
        if self.view_skip is not None:
            decoder_input = decoder_input + self.view_skip(features)
        heatmaps = self.head(decoder_input)
        return heatmaps.unflatten(0, (B, V))
