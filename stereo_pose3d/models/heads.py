"""Simple Baselines decoder (Xiao et al., ECCV 2018): stride-2 deconvolutions + 1x1 conv."""

from __future__ import annotations

import torch
from torch import nn


class SimpleBaselinesHead(nn.Module):
    """``num_deconv`` x [ConvTranspose2d(4x4, stride 2) -> BN -> ReLU] then a 1x1 conv.

    Input ``(N, in_channels, h, w)``; output ``(N, out_channels, h * 2**num_deconv, ...)``, e.g.
    ``(N, J, 64, 64)`` from ResNet features ``(N, 2048, 8, 8)`` with the paper's 3 deconvolutions
    of 256 channels (1/4 of a 256x256 input).
    """

    def __init__(
        self, in_channels: int, out_channels: int, channels: int = 256, num_deconv: int = 3
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = in_channels
        for _ in range(num_deconv):
            layers += [
                nn.ConvTranspose2d(width, channels, 4, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(channels),
                nn.ReLU(inplace=True),
            ]
            width = channels
        self.deconv = nn.Sequential(*layers)
        self.final = nn.Conv2d(width, out_channels, kernel_size=1)
        self.upsampling = 2**num_deconv
        for m in self.modules():  # initialisation of the Simple Baselines code
            if isinstance(m, nn.ConvTranspose2d):
                nn.init.normal_(m.weight, std=0.001)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.final.weight, std=0.001)
        nn.init.zeros_(self.final.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.final(self.deconv(x))
