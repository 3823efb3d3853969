"""Side-by-side preview of a stereo sample with its projected joints and bones."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from stereo_pose3d.skeleton import SYNTHETIC, Skeleton


def _bgr(color: tuple[float, float, float]) -> tuple[int, int, int]:
    r, g, b = (round(255 * c) for c in color)
    return (b, g, r)


def draw_pair(
    left: np.ndarray,
    right: np.ndarray,
    labels: Mapping[str, Any],
    skeleton: Skeleton = SYNTHETIC,
    draw_boxes: bool = True,
) -> np.ndarray:
    """``left | right`` RGB image ``(H, 2W, 3) uint8`` with joints (filled: visible, ring:
    occluded), bones and person boxes drawn from ``labels["joints_2d"]``."""
    panels = []
    for view, img in enumerate((left, right)):
        canvas = cv2.cvtColor(np.ascontiguousarray(img), cv2.COLOR_RGB2BGR)
        uv = np.asarray(labels["joints_2d"][view], dtype=np.float64)
        vis = np.asarray(labels["visibility"][view], dtype=bool)
        scale = max(1, round(img.shape[0] / 240))
        for a, b in skeleton.bones:
            pa = tuple(round(v * 16) for v in uv[a])
            pb = tuple(round(v * 16) for v in uv[b])
            cv2.line(canvas, pa, pb, _bgr(skeleton.bone_color((a, b))), scale, cv2.LINE_AA, 4)
        for j, (u, v) in enumerate(uv):
            c = (round(u * 16), round(v * 16))
            cv2.circle(
                canvas,
                c,
                3 * scale * 16,
                _bgr(skeleton.joint_color(j)),
                -1 if vis[j] else scale,
                cv2.LINE_AA,
                4,
            )
        if draw_boxes and "box" in labels:
            x0, y0, x1, y1 = (round(v) for v in labels["box"][view])
            cv2.rectangle(canvas, (x0, y0), (x1, y1), (0, 230, 230), 1)
        panels.append(canvas)
    return cv2.cvtColor(np.hstack(panels), cv2.COLOR_BGR2RGB)


def write_preview(
    path: str | Path, left: np.ndarray, right: np.ndarray, labels: Mapping[str, Any]
) -> None:
    """Save :func:`draw_pair` as an image file (PNG/JPEG by extension)."""
    img = draw_pair(left, right, labels)
    params = [cv2.IMWRITE_PNG_COMPRESSION, 9] if str(path).lower().endswith(".png") else []
    if not cv2.imwrite(str(path), cv2.cvtColor(img, cv2.COLOR_RGB2BGR), params):
        raise OSError(f"could not write {path}")
