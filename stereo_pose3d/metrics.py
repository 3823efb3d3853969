"""Pose metrics: MPJPE (absolute, root-relative, Procrustes-aligned), 2D error, PCK3D, PCKh.

Inputs are numpy arrays (or anything ``np.asarray`` takes). 3D inputs are in metres and 3D results
in millimetres; 2D inputs and results are in pixels. Joint masks ``(..., J)`` select which joints
count; a metric over an empty selection is NaN (never a silent zero).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .skeleton import MPII

__all__ = [
    "PCKhResult",
    "mpjpe",
    "mpjpe_2d",
    "pa_mpjpe",
    "pck3d",
    "pckh",
    "per_joint_error",
    "procrustes_align",
]


def _masked_mean(values: np.ndarray, mask: np.ndarray | None) -> float:
    if mask is None:
        return float(np.mean(values)) if values.size else float("nan")
    mask = np.broadcast_to(np.asarray(mask, dtype=bool), values.shape)
    return float(values[mask].mean()) if mask.any() else float("nan")


def per_joint_error(pred: np.ndarray, gt: np.ndarray, root: int | None = None) -> np.ndarray:
    """Euclidean joint errors ``(..., J)`` in the input unit; root-relative when ``root`` is set."""
    pred = np.asarray(pred, dtype=np.float64)
    gt = np.asarray(gt, dtype=np.float64)
    if pred.shape != gt.shape:
        raise ValueError(f"pred {pred.shape} and gt {gt.shape} differ")
    if root is not None:
        pred = pred - pred[..., root : root + 1, :]
        gt = gt - gt[..., root : root + 1, :]
    return np.linalg.norm(pred - gt, axis=-1)


def mpjpe(
    pred: np.ndarray, gt: np.ndarray, root: int | None = None, mask: np.ndarray | None = None
) -> float:
    """Mean per-joint position error in mm of ``pred, gt (..., J, 3)`` in metres.

    ``root`` makes it root-relative (both poses translated so that joint ``root`` is at 0).
    """
    return 1000.0 * _masked_mean(per_joint_error(pred, gt, root), mask)


def procrustes_align(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """``pred (..., J, 3)`` aligned to ``gt`` by the best similarity (rotation, scale, shift)."""
    pred = np.asarray(pred, dtype=np.float64)
    gt = np.asarray(gt, dtype=np.float64)
    mu_p = pred.mean(axis=-2, keepdims=True)
    mu_g = gt.mean(axis=-2, keepdims=True)
    p, g = pred - mu_p, gt - mu_g
    H = np.swapaxes(p, -1, -2) @ g  # (..., 3, 3)
    U, S, Vt = np.linalg.svd(H)
    d = np.sign(np.linalg.det(np.swapaxes(Vt, -1, -2) @ np.swapaxes(U, -1, -2)))
    D = np.zeros_like(H)
    D[..., 0, 0] = 1.0
    D[..., 1, 1] = 1.0
    D[..., 2, 2] = d
    R = np.swapaxes(Vt, -1, -2) @ D @ np.swapaxes(U, -1, -2)  # maps p to g: g ~ s R p
    trace = (S * np.stack([np.ones_like(d), np.ones_like(d), d], axis=-1)).sum(-1)
    var_p = (p**2).sum(axis=(-1, -2))
    s = np.where(var_p > 0, trace / np.maximum(var_p, 1e-300), 1.0)
    return s[..., None, None] * (p @ np.swapaxes(R, -1, -2)) + mu_g


def pa_mpjpe(pred: np.ndarray, gt: np.ndarray, mask: np.ndarray | None = None) -> float:
    """MPJPE in mm after Procrustes alignment of each pose to its ground truth."""
    return mpjpe(procrustes_align(pred, gt), gt, mask=mask)


def mpjpe_2d(pred: np.ndarray, gt: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Mean 2D joint error in pixels of ``pred, gt (..., J, 2)``."""
    return _masked_mean(per_joint_error(pred, gt), mask)


def pck3d(
    pred: np.ndarray,
    gt: np.ndarray,
    threshold_mm: float = 150.0,
    root: int | None = None,
    mask: np.ndarray | None = None,
) -> float:
    """Percentage of joints within ``threshold_mm`` of the ground truth (inputs in metres)."""
    correct = (1000.0 * per_joint_error(pred, gt, root) <= threshold_mm).astype(np.float64)
    return 100.0 * _masked_mean(correct, mask)


# --------------------------------------------------------------------------------------------
# MPII PCKh
# --------------------------------------------------------------------------------------------

# Columns of the MPII table: (name, joint names averaged).
_PCKH_COLUMNS = (
    ("Head", ("head_top",)),
    ("Shoulder", ("left_shoulder", "right_shoulder")),
    ("Elbow", ("left_elbow", "right_elbow")),
    ("Wrist", ("left_wrist", "right_wrist")),
    ("Hip", ("left_hip", "right_hip")),
    ("Knee", ("left_knee", "right_knee")),
    ("Ankle", ("left_ankle", "right_ankle")),
)
HEAD_SIZE_FACTOR = 0.6  # the official SC_BIAS: head size = 0.6 * diagonal of the head box


@dataclass
class PCKhResult:
    """PCKh per joint and the MPII summary table (percentages)."""

    per_joint: np.ndarray  # (J,) PCKh@threshold, NaN for joints never visible
    per_joint_at_0_1: np.ndarray  # (J,) PCKh@0.1
    table: dict[str, float]  # Head, Shoulder, ..., Ankle, Mean, Mean@0.1
    joint_count: np.ndarray  # (J,) number of visible joints evaluated

    def markdown(self) -> str:
        header = "| " + " | ".join(self.table) + " |"
        rule = "|" + "---|" * len(self.table)
        values = "| " + " | ".join(f"{v:.1f}" for v in self.table.values()) + " |"
        return "\n".join([header, rule, values])


def pckh(
    pred: np.ndarray,
    gt: np.ndarray,
    visible: np.ndarray,
    head_boxes: np.ndarray,
    threshold: float = 0.5,
) -> PCKhResult:
    """MPII PCKh by the official protocol, for MPII's 16 joints in ``skeleton.MPII`` order.

    Args:
        pred, gt: (N, 16, 2) pixels.
        visible: (N, 16) ground-truth visibility; invisible joints are not evaluated.
        head_boxes: (N, 4) head boxes x1, y1, x2, y2 in pixels.
        threshold: fraction of the head size (0.6 x head-box diagonal).

    ``Mean`` weights joints by their visible counts and leaves out pelvis and thorax, as the
    official evaluation does; ``Mean@0.1`` is the same at threshold 0.1.
    """
    pred = np.asarray(pred, dtype=np.float64)
    gt = np.asarray(gt, dtype=np.float64)
    visible = np.asarray(visible).astype(bool)
    boxes = np.asarray(head_boxes, dtype=np.float64).reshape(-1, 4)
    if pred.shape != gt.shape or pred.shape[1:] != (MPII.num_joints, 2):
        raise ValueError(f"pred/gt must be (N, 16, 2), got {pred.shape} and {gt.shape}")
    head_size = HEAD_SIZE_FACTOR * np.linalg.norm(boxes[:, 2:4] - boxes[:, 0:2], axis=1)
    if np.any(head_size <= 0):
        raise ValueError("head boxes must have positive size")
    scaled_error = np.linalg.norm(pred - gt, axis=-1) / head_size[:, None]
    count = visible.sum(axis=0)

    def per_joint_at(t: float) -> np.ndarray:
        hits = ((scaled_error <= t) & visible).sum(axis=0)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(count > 0, 100.0 * hits / np.maximum(count, 1), np.nan)

    pck = per_joint_at(threshold)
    pck_01 = per_joint_at(0.1)
    included = np.ones(MPII.num_joints, dtype=bool)
    included[[MPII.index("pelvis"), MPII.index("thorax")]] = False
    weight = np.where(included, count, 0).astype(np.float64)
    weight = weight / weight.sum() if weight.sum() > 0 else weight

    table = {
        name: float(np.mean([pck[MPII.index(j)] for j in joints])) for name, joints in _PCKH_COLUMNS
    }
    table["Mean"] = float(np.nansum(pck * weight))
    table["Mean@0.1"] = float(np.nansum(pck_01 * weight))
    return PCKhResult(per_joint=pck, per_joint_at_0_1=pck_01, table=table, joint_count=count)
