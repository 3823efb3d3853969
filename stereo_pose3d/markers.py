"""RViz markers and debug drawings of a 3D skeleton.

``pose3d/markers`` is a ``visualization_msgs/MarkerArray`` with two markers:

* ns ``joints``, id 0: a ``SPHERE_LIST`` of the joints whose confidence is at least
  ``min_confidence``, one colour per point: the joint's side (right red, left blue, centre green,
  as ``skeleton.py``) darkened and made more transparent as confidence drops;
* ns ``bones``, id 0: a ``LINE_LIST`` of the bones whose two joints are both confident, coloured
  by :meth:`Skeleton.bone_color`.

Both carry a ``lifetime``, so a skeleton vanishes from RViz when the node stops publishing; when
nobody is seen the array is a single ``DELETEALL`` marker.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from stereo_pose3d.skeleton import Skeleton


def confidence_rgba(base_rgb: tuple[float, float, float], confidence: float) -> np.ndarray:
    """RGBA in [0, 1]: ``base_rgb`` scaled by ``0.4 + 0.6 c`` with alpha ``0.35 + 0.65 c``."""
    c = float(np.clip(confidence, 0.0, 1.0)) if np.isfinite(confidence) else 0.0
    rgb = np.asarray(base_rgb, dtype=np.float64) * (0.4 + 0.6 * c)
    return np.array([*rgb, 0.35 + 0.65 * c])


def _color(rgba: np.ndarray) -> Any:
    from std_msgs.msg import ColorRGBA

    r, g, b, a = (float(x) for x in rgba)
    return ColorRGBA(r=r, g=g, b=b, a=a)


def _point(xyz: np.ndarray) -> Any:
    from geometry_msgs.msg import Point

    return Point(x=float(xyz[0]), y=float(xyz[1]), z=float(xyz[2]))


def _duration(seconds: float) -> Any:
    from builtin_interfaces.msg import Duration

    ns = max(0, round(seconds * 1e9))
    return Duration(sec=int(ns // 1_000_000_000), nanosec=int(ns % 1_000_000_000))


def delete_all_markers(header: Any) -> Any:
    """A ``MarkerArray`` holding one ``DELETEALL`` marker (nobody seen)."""
    from visualization_msgs.msg import Marker, MarkerArray

    marker = Marker(header=header, action=Marker.DELETEALL)
    return MarkerArray(markers=[marker])


def skeleton_markers(
    joints_3d: np.ndarray,
    confidence: np.ndarray,
    skeleton: Skeleton,
    header: Any,
    min_confidence: float = 0.3,
    scale: float = 0.05,
    lifetime: float = 0.5,
) -> Any:
    """Markers of one skeleton.

    Args:
        joints_3d: (J, 3) metres in ``header.frame_id``.
        confidence: (J,) in [0, 1].
        skeleton: joint set of ``joints_3d``.
        header: header for both markers (the left image's).
        min_confidence: joints below it (and non-finite joints) are left out, with their bones.
        scale: sphere diameter in metres; lines are ``0.4 * scale`` wide.
        lifetime: seconds before RViz removes the markers if nothing replaces them.

    Returns:
        ``MarkerArray`` (joints SPHERE_LIST, bones LINE_LIST), or the DELETEALL array when no joint
        is confident.
    """
    from visualization_msgs.msg import Marker, MarkerArray

    joints = np.asarray(joints_3d, dtype=np.float64).reshape(-1, 3)
    conf = np.asarray(confidence, dtype=np.float64).reshape(-1)
    if len(joints) != skeleton.num_joints or len(conf) != skeleton.num_joints:
        raise ValueError(
            f"{len(joints)} joints / {len(conf)} confidences for skeleton {skeleton.name!r} "
            f"of {skeleton.num_joints}"
        )
    ok = (conf >= min_confidence) & np.all(np.isfinite(joints), axis=1)
    if not ok.any():
        return delete_all_markers(header)

    def base(ns: str, kind: int, width: float) -> Any:
        m = Marker(header=header, ns=ns, id=0, type=kind, action=Marker.ADD)
        m.pose.orientation.w = 1.0
        m.scale.x = m.scale.y = m.scale.z = float(width)
        m.color = _color(np.array([1.0, 1.0, 1.0, 1.0]))
        m.lifetime = _duration(lifetime)
        return m

    spheres = base("joints", Marker.SPHERE_LIST, scale)
    for j in np.flatnonzero(ok):
        spheres.points.append(_point(joints[j]))
        spheres.colors.append(_color(confidence_rgba(skeleton.joint_color(int(j)), conf[j])))

    lines = base("bones", Marker.LINE_LIST, 0.4 * scale)
    lines.scale.y = lines.scale.z = 0.0
    for a, b in skeleton.bones:
        if ok[a] and ok[b]:
            rgba = confidence_rgba(skeleton.bone_color((a, b)), min(conf[a], conf[b]))
            lines.points.extend([_point(joints[a]), _point(joints[b])])
            lines.colors.extend([_color(rgba), _color(rgba)])
    markers = [spheres]
    if lines.points:
        markers.append(lines)
    else:  # keep RViz from showing the previous bones until their lifetime ends
        markers.append(Marker(header=header, ns="bones", id=0, action=Marker.DELETE))
    return MarkerArray(markers=markers)


def draw_skeleton_2d(
    image: np.ndarray,
    joints_2d: np.ndarray,
    confidence: np.ndarray,
    skeleton: Skeleton,
    min_confidence: float = 0.3,
    box: np.ndarray | None = None,
    thickness: int = 2,
) -> np.ndarray:
    """Draw one view's 2D skeleton in place on an RGB ``(H, W, 3)`` uint8 image and return it.

    ``joints_2d (J, 2)`` pixels; joints below ``min_confidence`` are drawn as small grey crosses.
    """
    import cv2

    uv = np.asarray(joints_2d, dtype=np.float64).reshape(-1, 2)
    conf = np.asarray(confidence, dtype=np.float64).reshape(-1)
    finite = np.all(np.isfinite(uv), axis=1) & (np.abs(uv) < 1e5).all(axis=1)
    ok = finite & (conf >= min_confidence)
    if box is not None and np.all(np.isfinite(box)):
        x0, y0, x1, y1 = (round(float(v)) for v in box)
        cv2.rectangle(image, (x0, y0), (x1, y1), (255, 230, 80), 1)

    def rgb(c: tuple[float, float, float]) -> tuple[int, int, int]:
        return tuple(round(255 * float(v)) for v in c)  # type: ignore[return-value]

    pts = [(round(float(x)), round(float(y))) for x, y in np.where(finite[:, None], uv, 0)]
    for a, b in skeleton.bones:
        if ok[a] and ok[b]:
            cv2.line(
                image, pts[a], pts[b], rgb(skeleton.bone_color((a, b))), thickness, cv2.LINE_AA
            )
    for j, p in enumerate(pts):
        if ok[j]:
            cv2.circle(image, p, thickness + 2, rgb(skeleton.joint_color(j)), -1, cv2.LINE_AA)
        elif finite[j]:
            cv2.drawMarker(image, p, (160, 160, 160), cv2.MARKER_TILTED_CROSS, 6, 1)
    return image


def draw_debug_image(
    left: np.ndarray,
    right: np.ndarray,
    joints_2d: np.ndarray | None,
    confidence: np.ndarray | None,
    skeleton: Skeleton,
    min_confidence: float = 0.3,
    boxes: np.ndarray | None = None,
    text: str | None = None,
) -> np.ndarray:
    """Both views side by side ``(H, 2W, 3)`` uint8 RGB with their 2D skeletons.

    Args:
        left, right: ``(H, W, 3)`` uint8 RGB (not modified).
        joints_2d: ``(2, J, 2)`` pixels per view, or None (nobody seen).
        confidence: ``(J,)`` or ``(2, J)``.
        boxes: ``(2, 4)`` xyxy per view or None.
        text: a caption drawn at the top left.
    """
    import cv2

    views = [np.array(left, dtype=np.uint8, copy=True), np.array(right, dtype=np.uint8, copy=True)]
    if joints_2d is not None and confidence is not None:
        conf = np.asarray(confidence, dtype=np.float64)
        conf = np.broadcast_to(conf, (2, conf.shape[-1]))
        for v in range(2):
            box = None if boxes is None else np.asarray(boxes)[v]
            draw_skeleton_2d(
                views[v], np.asarray(joints_2d)[v], conf[v], skeleton, min_confidence, box
            )
    h = max(views[0].shape[0], views[1].shape[0])
    views = [np.pad(v, ((0, h - v.shape[0]), (0, 0), (0, 0))) for v in views]
    out = np.ascontiguousarray(np.hstack(views))
    if text:
        cv2.putText(out, text, (8, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (0, 0, 0), 3, cv2.LINE_AA)
        cv2.putText(
            out, text, (8, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (255, 255, 255), 1, cv2.LINE_AA
        )
    return out
