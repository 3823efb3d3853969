"""Training losses, all masked by per-joint visibility / validity weights.

* :func:`heatmap_mse_loss` -- Simple Baselines ``JointsMSELoss`` with target weights:
  ``0.5 * mean_{b, j, pixels} ((pred - target) * w_bj)^2``. Normalised by the total number of
  heatmap elements (not by visible joints), exactly as the reference, so learning rates carry over.
* :func:`keypoint_l1_loss`, :func:`keypoint_mse_loss` -- ``sum(w * |d|^p) / (D * max(1, sum w))``:
  the mean over visible joints of the per-coordinate error (``D`` = 2 or 3 coordinates).
* :func:`keypoint_mse_smooth_loss` -- learnable triangulation's ``KeypointsMSESmoothLoss``
  (Iskakov et al. 2019, ``mvn/models/loss.py``): per-coordinate squared errors
  ``e = w * (pred - gt)^2``; every ``e > threshold`` is replaced by ``e^alpha * threshold^beta``
  (defaults ``threshold = 400 = 20^2``, ``alpha = 0.1``, ``beta = 0.9``; the replacement is
  continuous at the threshold); then ``sum(e) / (D * max(1, sum w))``. The reference works in
  millimetres, so the threshold means 20 mm per coordinate: pass ``scale=1000`` for joints in
  metres (the errors are computed on ``scale * pred`` and ``scale * gt``).

Shapes: keypoints ``(..., J, D)``, weights ``(..., J)`` (bool or float; ``None`` = all ones);
heatmaps ``(..., J, h, w)`` with weights ``(..., J)``. Each loss returns a scalar tensor.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

__all__ = [
    "LOSSES",
    "get_loss",
    "heatmap_mse_loss",
    "keypoint_l1_loss",
    "keypoint_mse_loss",
    "keypoint_mse_smooth_loss",
]


def _weights(weight: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    """Weights ``(..., J)`` as a float tensor on ``like``'s device, shaped ``(..., J, 1)``."""
    if weight is None:
        return torch.ones((*like.shape[:-1], 1), dtype=like.dtype, device=like.device)
    weight = torch.as_tensor(weight, device=like.device).to(like.dtype)
    if weight.shape != like.shape[:-1]:
        raise ValueError(
            f"weights must have shape {tuple(like.shape[:-1])} (..., J), got {tuple(weight.shape)}"
        )
    return weight.unsqueeze(-1)


def heatmap_mse_loss(
    pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None
) -> torch.Tensor:
    """Simple Baselines heatmap MSE: ``0.5 * mean(((pred - target) * w)^2)``.

    Args:
        pred, target: (..., J, h, w) heatmaps.
        weight: (..., J) per-joint target weights (visibility); None = all ones.
    """
    if pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ")
    target = target.to(pred.dtype)
    if weight is None:
        return 0.5 * ((pred - target) ** 2).mean()
    flat = pred.flatten(-2)  # (..., J, h*w)
    w = _weights(weight, flat)
    return 0.5 * (((flat - target.flatten(-2)) * w) ** 2).mean()


def _masked_keypoint_loss(
    per_coordinate: torch.Tensor, w: torch.Tensor, dimension: int
) -> torch.Tensor:
    denominator = dimension * torch.clamp(w.sum(), min=1.0)
    return (per_coordinate * w).sum() / denominator


def keypoint_l1_loss(
    pred: torch.Tensor, gt: torch.Tensor, weight: torch.Tensor | None = None, scale: float = 1.0
) -> torch.Tensor:
    """Masked mean absolute coordinate error: ``sum(w * |pred - gt|) / (D * max(1, sum w))``."""
    _check(pred, gt)
    w = _weights(weight, pred)
    diff = (pred - gt.to(pred.dtype)) * scale
    diff = torch.where(w > 0, diff, torch.zeros_like(diff))  # NaN targets of masked joints
    return _masked_keypoint_loss(diff.abs(), w, pred.shape[-1])


def keypoint_mse_loss(
    pred: torch.Tensor, gt: torch.Tensor, weight: torch.Tensor | None = None, scale: float = 1.0
) -> torch.Tensor:
    """Masked mean squared coordinate error: ``sum(w * (pred - gt)^2) / (D * max(1, sum w))``
    (learnable triangulation's ``KeypointsMSELoss``)."""
    _check(pred, gt)
    w = _weights(weight, pred)
    diff = (pred - gt.to(pred.dtype)) * scale
    diff = torch.where(w > 0, diff, torch.zeros_like(diff))
    return _masked_keypoint_loss(diff**2, w, pred.shape[-1])


def keypoint_mse_smooth_loss(
    pred: torch.Tensor,
    gt: torch.Tensor,
    weight: torch.Tensor | None = None,
    threshold: float = 400.0,
    alpha: float = 0.1,
    beta: float = 0.9,
    scale: float = 1.0,
) -> torch.Tensor:
    """Learnable triangulation's smooth MSE (``KeypointsMSESmoothLoss``), masked.

    ``e = w * (scale * (pred - gt))^2`` per coordinate; ``e > threshold`` becomes
    ``e^alpha * threshold^beta``; result ``sum(e) / (D * max(1, sum w))``.
    As in the reference the weight multiplies the squared error *before* the threshold test.
    """
    _check(pred, gt)
    w = _weights(weight, pred)
    diff = (pred - gt.to(pred.dtype)) * scale
    diff = torch.where(w > 0, diff, torch.zeros_like(diff))
    squared = diff**2 * w
    # clamp keeps the unused branch's gradient finite (pow(0, alpha) has an infinite slope).
    soft = torch.clamp(squared, min=threshold) ** alpha * threshold**beta
    squared = torch.where(squared > threshold, soft, squared)
    denominator = pred.shape[-1] * torch.clamp(w.sum(), min=1.0)
    return squared.sum() / denominator


def _check(pred: torch.Tensor, gt: torch.Tensor) -> None:
    if pred.shape != gt.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and gt {tuple(gt.shape)} differ")


LOSSES: dict[str, Callable[..., torch.Tensor]] = {
    "heatmap_mse": heatmap_mse_loss,
    "l1": keypoint_l1_loss,
    "mse": keypoint_mse_loss,
    "mse_smooth": keypoint_mse_smooth_loss,
}


def get_loss(name: str) -> Callable[..., torch.Tensor]:
    """Loss function by config name (``heatmap_mse``, ``l1``, ``mse``, ``mse_smooth``)."""
    try:
        return LOSSES[name]
    except KeyError:
        raise KeyError(f"unknown loss {name!r}; known: {sorted(LOSSES)}") from None
