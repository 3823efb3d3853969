"""ResNet trunk (torchvision ResNet-18/34/50/101/152 without pooling and classifier)."""

from __future__ import annotations

import pickle
from pathlib import Path

import torch
import torchvision
from torch import nn


class ResNetBackbone(nn.Module):
    """A torchvision ResNet up to ``layer3`` (stride 16) or ``layer4`` (stride 32).

    Args:
        name: ``"resnet18" | "resnet34" | "resnet50" | "resnet101" | "resnet152"``.
        stages: 4 (all stages, stride 32) or 3 (stop after ``layer3``, stride 16).

    Input ``(N, 3, H, W)`` normalised images; output ``(N, out_channels, H/stride, W/stride)``,
    e.g. ``(N, 2048, 8, 8)`` for ResNet-50 at 256x256. Initialised like torchvision (random; no
    download); :meth:`load_pretrained` reads an ImageNet state dict from disk.
    """

    def __init__(self, name: str = "resnet50", stages: int = 4) -> None:
        super().__init__()
        if stages not in (3, 4):
            raise ValueError(f"stages must be 3 or 4, got {stages}")
        net = getattr(torchvision.models, name)(weights=None)
        self.name = name
        self.stages = stages
        self.stride = 2 ** (stages + 1)
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3 = net.layer1, net.layer2, net.layer3
        self.layer4 = net.layer4 if stages == 4 else None
        last = self.layer4 if stages == 4 else self.layer3
        block = last[-1]
        self.out_channels = (block.bn3 if hasattr(block, "bn3") else block.bn2).num_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.layer4(x) if self.layer4 is not None else x

    def load_pretrained(self, path: str | Path) -> None:
        """Load a torchvision/ImageNet ResNet state dict (``resnet50-*.pth``) from ``path``.

        Read with ``torch.load(weights_only=True)`` (no code execution); ``fc.*`` (and ``layer4.*``
        for a 3-stage trunk) are ignored; a ``module.`` prefix and ``{"state_dict": ...}``
        wrappers are accepted.

        Raises:
            ValueError: missing file, unreadable file or keys/shapes that do not match.
        """
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"pretrained backbone weights not found: {path}")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ValueError(f"cannot read pretrained weights {path}: {first}") from None
        if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
            state = state["state_dict"]
        if not isinstance(state, dict):
            raise ValueError(f"{path} does not hold a state dict")
        state = {k.removeprefix("module."): v for k, v in state.items()}
        skip = ("fc.",) if self.stages == 4 else ("fc.", "layer4.")
        state = {k: v for k, v in state.items() if not k.startswith(skip)}
        own = self.state_dict()
        missing = sorted(set(own) - set(state))
        unexpected = sorted(set(state) - set(own))
        bad = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
        if missing or unexpected or bad:
            raise ValueError(
                f"{path} is not a {self.name} state dict: missing {missing[:3]}, "
                f"unexpected {unexpected[:3]}, shape mismatch {bad[:3]}"
            )
        self.load_state_dict(state)
