"""PNG figures of an evaluation (matplotlib, Agg backend; no display needed).

* :func:`per_joint_bars` -- per-joint MPJPE of one or more models (grouped bars), optional floor.
* :func:`error_by_bin` -- MPJPE per distance (or baseline) bin, models and triangulation floor.
* :func:`overlay_2d` -- both views with ground-truth and predicted 2D skeletons.
* :func:`skeleton_3d` -- predicted vs ground-truth 3D skeletons.
* :func:`compare_models` -- one sample, one row per model: left overlay, right overlay, 3D.

Colours follow :mod:`stereo_pose3d.skeleton` (right red, left blue, centre green); ground truth is
drawn white/black dashed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np

from stereo_pose3d.skeleton import Skeleton

__all__ = ["compare_models", "error_by_bin", "overlay_2d", "per_joint_bars", "skeleton_3d"]


def _save(fig: plt.Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def per_joint_bars(
    errors: Mapping[str, np.ndarray],
    joint_names: Sequence[str],
    path: str | Path,
    title: str = "MPJPE per joint",
    ylabel: str = "error (mm)",
    floor: np.ndarray | None = None,
) -> Path:
    """Grouped bars: ``errors`` maps a model name to ``(J,)`` per-joint errors."""
    names = list(errors)
    J = len(joint_names)
    width = 0.8 / max(1, len(names))
    fig, ax = plt.subplots(figsize=(max(8, 0.6 * J), 4))
    x = np.arange(J)
    for i, name in enumerate(names):
        ax.bar(x + (i - (len(names) - 1) / 2) * width, np.asarray(errors[name]), width, label=name)
    if floor is not None:
        ax.plot(x, np.asarray(floor), "k_", markersize=14, mew=2, label="floor (GT 2D + 1 px)")
    ax.set_xticks(x)
    ax.set_xticklabels(joint_names, rotation=60, ha="right", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def error_by_bin(
    labels: Sequence[str],
    series: Mapping[str, Sequence[float]],
    path: str | Path,
    xlabel: str = "distance to the left camera (m)",
    title: str = "MPJPE by distance",
) -> Path:
    """Lines of error per bin for each named series (models, floors)."""
    fig, ax = plt.subplots(figsize=(7, 4))
    x = np.arange(len(labels))
    for name, values in series.items():
        style = "--" if name.startswith("floor") else "-o"
        ax.plot(x, np.asarray(values, dtype=float), style, label=name)
    ax.set_xticks(x)
    ax.set_xticklabels(labels)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("MPJPE (mm)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def _draw_2d(ax: plt.Axes, uv: np.ndarray, skeleton: Skeleton, gt: bool = False) -> None:
    uv = np.asarray(uv, dtype=float)
    for a, b in skeleton.bones:
        if not (np.isfinite(uv[a]).all() and np.isfinite(uv[b]).all()):
            continue
        if gt:
            ax.plot(*uv[[a, b]].T, color="white", lw=3.0, alpha=0.9)
            ax.plot(*uv[[a, b]].T, color="black", lw=1.2, ls="--")
        else:
            ax.plot(*uv[[a, b]].T, color=skeleton.bone_color((a, b)), lw=2.0)
    if not gt:
        colors = [skeleton.joint_color(j) for j in range(len(uv))]
        ax.scatter(uv[:, 0], uv[:, 1], s=10, c=colors, zorder=3)


def _draw_view(ax, image, pred, gt, skeleton, title, box=None) -> None:
    ax.imshow(image)
    if gt is not None:
        _draw_2d(ax, gt, skeleton, gt=True)
    if pred is not None:
        _draw_2d(ax, pred, skeleton)
    if box is not None and np.isfinite(box).all():
        x1, y1, x2, y2 = box
        ax.plot([x1, x2, x2, x1, x1], [y1, y1, y2, y2, y1], color="yellow", lw=1)
    pts = [p for p in (pred, gt) if p is not None]
    pts = np.concatenate([np.asarray(p).reshape(-1, 2) for p in pts]) if pts else np.zeros((0, 2))
    pts = pts[np.isfinite(pts).all(1)]
    if len(pts):  # zoom on the person
        lo, hi = pts.min(0), pts.max(0)
        pad = 0.25 * max(hi - lo) + 20
        H, W = image.shape[:2]
        ax.set_xlim(max(0, lo[0] - pad), min(W, hi[0] + pad))
        ax.set_ylim(min(H, hi[1] + pad), max(0, lo[1] - pad))
    ax.set_title(title, fontsize=9)
    ax.axis("off")


def overlay_2d(
    left: np.ndarray,
    right: np.ndarray,
    pred_2d: np.ndarray | None,
    gt_2d: np.ndarray | None,
    skeleton: Skeleton,
    path: str | Path,
    title: str = "",
    boxes: np.ndarray | None = None,
) -> Path:
    """Both views (RGB uint8) with ``gt_2d`` and ``pred_2d`` ``(2, J, 2)`` full-image pixels."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 5))
    for v, (ax, image) in enumerate(zip(axes, (left, right), strict=True)):
        _draw_view(
            ax,
            image,
            None if pred_2d is None else pred_2d[v],
            None if gt_2d is None else gt_2d[v],
            skeleton,
            f"{title} {'left' if v == 0 else 'right'}".strip(),
            None if boxes is None else boxes[v],
        )
    return _save(fig, path)


def _draw_3d(ax, pred: np.ndarray | None, gt: np.ndarray | None, skeleton: Skeleton, title: str):
    """Camera frame (x right, y down, z forward) shown as x right, z depth, -y up."""

    def xyz(p: np.ndarray) -> np.ndarray:
        return np.stack([p[:, 0], p[:, 2], -p[:, 1]], axis=1)

    pts = []
    if gt is not None:
        g = xyz(np.asarray(gt, dtype=float))
        for a, b in skeleton.bones:
            ax.plot(*g[[a, b]].T, color="black", lw=1.2, ls="--")
        pts.append(g)
    if pred is not None and np.isfinite(pred).all(axis=-1).any():
        # Joints the estimator left out (NaN) are left out of the drawing with their bones.
        p = xyz(np.asarray(pred, dtype=float))
        for a, b in skeleton.bones:
            if np.isfinite(p[[a, b]]).all():
                ax.plot(*p[[a, b]].T, color=skeleton.bone_color((a, b)), lw=2)
        pts.append(p)
    if pts:
        allp = np.concatenate(pts)
        allp = allp[np.isfinite(allp).all(1)]
        if len(allp):
            centre = (allp.min(0) + allp.max(0)) / 2
            half = max(0.6, 0.55 * float((allp.max(0) - allp.min(0)).max()))
            ax.set_xlim(centre[0] - half, centre[0] + half)
            ax.set_ylim(centre[1] - half, centre[1] + half)
            ax.set_zlim(centre[2] - half, centre[2] + half)
    ax.set_xlabel("x (m)", fontsize=7)
    ax.set_ylabel("depth z (m)", fontsize=7)
    ax.set_zlabel("up (m)", fontsize=7)
    ax.tick_params(labelsize=6)
    ax.set_title(title, fontsize=9)


def skeleton_3d(
    pred: np.ndarray | None,
    gt: np.ndarray | None,
    skeleton: Skeleton,
    path: str | Path,
    title: str = "3D: prediction (colour) vs ground truth (dashed)",
) -> Path:
    """Predicted and ground-truth ``(J, 3)`` skeletons in metres, left camera frame."""
    fig = plt.figure(figsize=(5, 5))
    ax = fig.add_subplot(111, projection="3d")
    _draw_3d(ax, pred, gt, skeleton, title)
    return _save(fig, path)


def compare_models(
    left: np.ndarray,
    right: np.ndarray,
    predictions: Mapping[str, tuple[np.ndarray | None, np.ndarray | None]],
    gt_2d: np.ndarray,
    gt_3d: np.ndarray,
    skeleton: Skeleton,
    path: str | Path,
    title: str = "",
) -> Path:
    """Side by side: one row per model, ``predictions[name] = (joints_2d (2, J, 2),
    joints_3d (J, 3))`` (None when the model found no person)."""
    rows = len(predictions)
    fig = plt.figure(figsize=(13, 4.2 * rows))
    for r, (name, (uv, X)) in enumerate(predictions.items()):
        for v, image in enumerate((left, right)):
            ax = fig.add_subplot(rows, 3, 3 * r + v + 1)
            _draw_view(
                ax,
                image,
                None if uv is None else uv[v],
                gt_2d[v],
                skeleton,
                f"{name}: {'left' if v == 0 else 'right'}",
            )
        ax3 = fig.add_subplot(rows, 3, 3 * r + 3, projection="3d")
        err = ""
        if X is not None and np.isfinite(X).all(axis=-1).any():
            ok = np.isfinite(X).all(axis=-1)
            mm = 1000 * np.linalg.norm(X[ok] - gt_3d[ok], axis=-1).mean()
            err = f" ({mm:.0f} mm" + ("" if ok.all() else f", {ok.sum()}/{len(ok)} joints") + ")"
        _draw_3d(ax3, X, gt_3d, skeleton, f"{name} 3D{err}")
    if title:
        fig.suptitle(title)
    return _save(fig, path)
