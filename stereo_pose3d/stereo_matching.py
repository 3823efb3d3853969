"""Stereo correspondence along the rows of a rectified pair: zero-mean NCC of grey-level patches.

Two uses in the estimator (both only for rectified pairs, :func:`~stereo_pose3d.models.crops.
is_rectified_pair`, and both falling back to the network's own answer when the match is weak):

* :func:`match_stereo_box` (``stereo_box_matching``): the right view's person box is the left
  box shifted by the disparity at which the left box's patch best matches the right image.
* :func:`match_joint_disparities` (``joint_stereo_matching``): each joint's disparity is
  re-measured by matching a small patch around the joint, so its depth comes from the images'
  own correspondence (about 0.1-0.3 px) rather than from two independent 2D detections (a few
  px of disagreement: ``Z^2 / (f B)`` metres of depth per px).

Pure numpy + OpenCV; never raises on bad input (returns "no match").
"""

from __future__ import annotations

import cv2
import numpy as np

from stereo_pose3d.models.crops import is_rectified_pair

# Stereo box matching (``stereo_box_matching``): the right view's box is the left box shifted
# along its rows by the disparity that best matches the left box's image patch (zero-mean NCC).
MATCH_MARGIN = 0.0  # fraction of the left box's size added on every side of the template
MATCH_WINDOW = 0.5  # search half-width around the locator's disparity: x the left box width ...
MATCH_MIN_WINDOW = 16.0  # ... and at least this many pixels
MATCH_MAX_HEIGHT = 256  # templates taller than this: coarse match downscaled to this height
MATCH_MIN_SIZE = 8  # template side below this many pixels (after clipping): no matching
MATCH_MIN_STD = 2.0  # template grey-level standard deviation below this: flat, no matching
MATCH_MIN_SCORE = 0.5  # NCC peak below this: weak match, the locator's boxes are kept
MATCH_FINE = 3  # full-resolution search half-width (px) around a downscaled match's result
MATCH_BEHIND = 2.0  # the search also covers this many px beyond infinite depth (peak location)


def match_stereo_box(
    left: np.ndarray,
    right: np.ndarray,
    box_left: np.ndarray,
    box_right: np.ndarray,
    P: np.ndarray,
    min_score: float = MATCH_MIN_SCORE,
    margin: float = MATCH_MARGIN,
    window: float = MATCH_WINDOW,
    min_window: float = MATCH_MIN_WINDOW,
    max_height: int = MATCH_MAX_HEIGHT,
) -> tuple[np.ndarray | None, float, float]:
    """The right view's person box found by matching the left box's patch along the same rows.

    For a rectified pair ``P (2, 3, 4)`` (:func:`~stereo_pose3d.models.crops.is_rectified_pair`)
    the grey-level patch of ``box_left`` (xyxy px, plus ``margin`` x its size on every side,
    clipped to the image) is slid horizontally over the same rows of ``right`` and scored by
    zero-mean normalised cross-correlation (``cv2.matchTemplate``, ``TM_CCOEFF_NORMED``) at every
    integer disparity ``d = x_left - x_right`` within ``window`` x the box width (at least
    ``min_window`` px) of the locator's disparity (``box_left``'s centre minus ``box_right``'s)
    and on the physical side of the disparity of infinite depth (P decides which side: for a
    standard pair, right camera to the right, ``d > 0``). The best integer disparity is refined
    by a parabola through its neighbours' scores. Templates taller than ``max_height`` px are
    first matched downscaled to that height, then at full resolution within ``MATCH_FINE`` px of
    that result (the coarse result is kept if the fine peak is on that range's edge).

    Returns:
        ``(box (4,) or None, disparity px, peak score)``: ``box`` = ``box_left`` shifted left by
        the disparity (same size and rows), or None when the locator's boxes should be kept: the
        images are not both ``(H, W, 3)`` uint8 RGB of one size, the pair is not rectified, a
        box is not 4 finite numbers, the template is too small (after clipping)
        or flat, the search range is shorter than 3 positions, the peak is below ``min_score``
        or on the edge of the search range, or the refined disparity is not in front of the
        cameras. Never raises on such inputs.
    """
    nan = float("nan")
    P = np.asarray(P, dtype=np.float64)
    box_left = np.asarray(box_left, dtype=np.float64)
    box_right = np.asarray(box_right, dtype=np.float64)
    if (
        P.shape != (2, 3, 4)
        or not np.isfinite(P).all()
        or box_left.shape != (4,)
        or box_right.shape != (4,)
        or not np.isfinite(box_left).all()
        or not np.isfinite(box_right).all()
        or not all(
            isinstance(im, np.ndarray) and im.dtype == np.uint8 and im.ndim == 3
            for im in (left, right)
        )
        or left.shape[2] != 3
        or left.shape != right.shape
    ):
        return None, nan, nan
    H, W = left.shape[:2]
    try:
        with np.errstate(all="ignore"):
            rectified = is_rectified_pair(P)
    except (np.linalg.LinAlgError, ValueError):
        return None, nan, nan
    if not rectified:
        return None, nan, nan
    u, v = (box_left[0] + box_left[2]) / 2, (box_left[1] + box_left[3]) / 2
    d_inf, side = disparity_at_infinity(P, u, v)
    if not (np.isfinite(d_inf) and side != 0):
        return None, nan, nan
    # Template: the left box (plus margin), clipped to the image.
    bw, bh = box_left[2] - box_left[0], box_left[3] - box_left[1]
    x0 = int(np.floor(max(box_left[0] - margin * bw, 0.0)))
    x1 = int(np.ceil(min(box_left[2] + margin * bw, W)))
    y0 = int(np.floor(max(box_left[1] - margin * bh, 0.0)))
    y1 = int(np.ceil(min(box_left[3] + margin * bh, H)))
    if x1 - x0 < MATCH_MIN_SIZE or y1 - y0 < MATCH_MIN_SIZE:
        return None, nan, nan
    # Integer disparities to try: around the locator's, on the physical side of d_inf (a few px
    # beyond it, so that a peak just in front of infinity is still inside the range), and with
    # the shifted template inside the right image (x_right = x_left - d).
    d_loc = u - (box_right[0] + box_right[2]) / 2
    half = max(window * bw, min_window)
    lo, hi = d_loc - half, d_loc + half
    if side > 0:
        lo = max(lo, d_inf - MATCH_BEHIND)
    else:
        hi = min(hi, d_inf + MATCH_BEHIND)
    d_lo = max(int(np.ceil(lo)), x1 - W)  # x1 - d <= W
    d_hi = min(int(np.floor(hi)), x0)  # x0 - d >= 0
    if d_hi - d_lo < 2:
        return None, nan, nan
    template = cv2.cvtColor(left[y0:y1, x0:x1], cv2.COLOR_RGB2GRAY)
    strip = cv2.cvtColor(right[y0:y1, x0 - d_hi : x1 - d_lo], cv2.COLOR_RGB2GRAY)
    if float(template.std()) < MATCH_MIN_STD:
        return None, nan, nan
    # Coarse pass (downscaled when the template is tall), then a full-resolution pass over
    # +-MATCH_FINE px around the coarse disparity: column j of a strip starting at disparity
    # d_top is x_right = x0 - d_top + j, i.e. d = d_top - j.
    scale, small_t, small_s = 1.0, template, strip
    if y1 - y0 > max_height:
        scale = max_height / (y1 - y0)
        small_t = cv2.resize(template, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        small_s = cv2.resize(strip, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        if small_s.shape[1] - small_t.shape[1] < 2 or small_s.shape[0] != small_t.shape[0]:
            return None, nan, nan
    scores = _ncc_scores(small_s, small_t)
    if scores is None:
        return None, nan, nan
    k = int(np.argmax(scores))
    peak = float(scores[k])
    if not peak >= min_score or k == 0 or k == len(scores) - 1:
        return None, nan, peak if np.isfinite(peak) else nan
    d = d_hi - (k + _parabola_offset(scores, k)) / scale
    if scale < 1.0:
        f_lo = max(round(d) - MATCH_FINE, d_lo)
        f_hi = min(round(d) + MATCH_FINE, d_hi)
        fine = _ncc_scores(strip[:, d_hi - f_hi : d_hi - f_lo + (x1 - x0)], template)
        if fine is not None and len(fine) >= 3:
            j = int(np.argmax(fine))
            if 0 < j < len(fine) - 1:  # else keep the coarse estimate
                d, peak = f_hi - (j + _parabola_offset(fine, j)), float(fine[j])
    if not side * (d - d_inf) > 0:
        return None, d, peak
    return box_left - np.array([d, 0.0, d, 0.0]), d, peak


def disparity_at_infinity(P: np.ndarray, u: float, v: float) -> tuple[float, float]:
    """Along the left ray through pixel ``(u, v)`` of the pair ``P (2, 3, 4)``: the disparity
    ``d = x_left - x_right`` of a point at infinite depth, and on which side of it finite depths
    lie (the sign of ``d - d_inf``: +1 for the usual pair, right camera to the right). ``(nan,
    0.0)`` when P cannot say (singular, non-finite)."""
    try:
        M_inv = np.linalg.inv(P[0, :, :3])
        ray = M_inv @ np.array([u, v, 1.0])
        centre = -M_inv @ P[0, :, 3]
        far = P[1] @ np.append(ray, 0.0)
        near = P[1] @ np.append(centre + ray, 1.0)
    except (np.linalg.LinAlgError, ValueError):
        return float("nan"), 0.0
    with np.errstate(all="ignore"):
        d_inf = float(u - far[0] / far[2])
        side = float(np.sign(u - near[0] / near[2] - d_inf))
    if not (np.isfinite(d_inf) and np.isfinite(side)):
        return float("nan"), 0.0
    return d_inf, side


def _ncc_scores(strip: np.ndarray, template: np.ndarray) -> np.ndarray | None:
    """Zero-mean NCC of ``template`` at every horizontal position in ``strip`` (same height);
    non-finite scores (flat windows) become -inf; None if OpenCV refuses the sizes."""
    try:
        scores = cv2.matchTemplate(strip, template, cv2.TM_CCOEFF_NORMED)
    except cv2.error:
        return None
    if scores.ndim != 2 or scores.shape[0] != 1:
        return None
    scores = scores[0].astype(np.float64)
    return np.where(np.isfinite(scores), scores, -np.inf)


def _parabola_offset(scores: np.ndarray, k: int) -> float:
    """Sub-sample offset in [-0.5, 0.5] of the maximum of the parabola through ``scores[k - 1 :
    k + 2]`` (0 when they do not curve down)."""
    a, b, c = scores[k - 1], scores[k], scores[k + 1]
    curvature = a - 2 * b + c
    if not (np.isfinite(curvature) and curvature < 0):
        return 0.0
    return float(np.clip(0.5 * (a - c) / curvature, -0.5, 0.5))


# Joint stereo matching (``joint_stereo_matching``): per joint, a square grey-level patch around
# its left-view detection is slid along the same rows of the right view around the network's
# disparity. Chosen on the synthetic training clips' renders and checked on the validation
# clips (docs/models.md, pipeline step 4): patch half-side 5 % of the person's height in the
# image (a limb's width), search +-6 px, NCC at least 0.5.
JOINT_PATCH_FRACTION = 0.05  # patch half-side (px) = this x the joints' vertical extent ...
JOINT_PATCH_MIN_RADIUS = 3  # ... and at least this many pixels
JOINT_PATCH_MAX_RADIUS = 24  # ... and at most this many (very close people)
JOINT_SEARCH = 6  # search half-width (px) around the network's disparity
JOINT_MIN_SCORE = 0.5  # NCC peak below this: the network's disparity is kept


def match_joint_disparities(
    left: np.ndarray,
    right: np.ndarray,
    joints_2d: np.ndarray,
    usable: np.ndarray,
    P: np.ndarray,
    search: int = JOINT_SEARCH,
    min_score: float = JOINT_MIN_SCORE,
    patch_fraction: float = JOINT_PATCH_FRACTION,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Re-measure each joint's disparity by matching a patch around it along the same rows.

    For joint ``j`` of a rectified pair ``P (2, 3, 4)`` with detections ``joints_2d[:, j]``
    (``(2, J, 2)`` px in the full left / right images) and ``usable[j]``: the square grey-level
    patch of half-side ``r`` px centred (bilinearly, sub-pixel) on the left detection ``(u_L,
    v)``, ``v`` the mean of the two views' rows, is scored by zero-mean NCC against the right
    image at ``u_L - d`` for every integer offset of ``d`` within ``search`` px of the network's
    disparity ``d_0 = u_L - u_R``; the best is refined by a parabola through its neighbours.
    ``r`` = ``patch_fraction`` x the vertical extent of the usable left detections (the
    person's height in px), clipped to [``JOINT_PATCH_MIN_RADIUS``, ``JOINT_PATCH_MAX_RADIUS``].
    A matched joint keeps the mean of the two detections' columns and rows and gets the matched
    disparity: ``u_L' = m + d / 2``, ``u_R' = m - d / 2``, ``v_L' = v_R' = v``.

    A joint is left as detected (``matched`` False) when it is not usable or not finite, its
    patch is flat (grey-level std below ``MATCH_MIN_STD``), the NCC peak is below
    ``min_score`` or on the edge of the search range, or the matched disparity is not in front
    of the cameras. Nothing is matched when the pair is not rectified, the images are not both
    ``(H, W, 3)`` uint8 of one size, or fewer than two joints are usable. Never raises on such
    inputs.

    Args:
        left, right: ``(H, W, 3)`` uint8 RGB (or ``(H, W)`` uint8 grey, e.g. converted once for
            many calls).
        joints_2d: ``(2, J, 2)`` px. usable: ``(J,)`` bool. P: ``(2, 3, 4)``.

    Returns:
        ``(joints_2d (2, J, 2) px, matched (J,) bool, scores (J,) NCC peak, NaN where not
        measured)``; ``joints_2d`` is a copy, changed only where ``matched``.
    """
    joints_2d = np.array(joints_2d, dtype=np.float64, copy=True)
    usable = np.asarray(usable, dtype=bool)
    J = joints_2d.shape[1] if joints_2d.ndim == 3 else 0
    matched = np.zeros(J, dtype=bool)
    scores = np.full(J, np.nan)
    if joints_2d.shape != (2, J, 2) or usable.shape != (J,):
        return joints_2d, matched, scores
    grey = [_grey(im) for im in (left, right)]
    if grey[0] is None or grey[1] is None or grey[0].shape != grey[1].shape:
        return joints_2d, matched, scores
    P = np.asarray(P, dtype=np.float64)
    if P.shape != (2, 3, 4) or not np.isfinite(P).all():
        return joints_2d, matched, scores
    try:
        with np.errstate(all="ignore"):
            if not is_rectified_pair(P):
                return joints_2d, matched, scores
    except (np.linalg.LinAlgError, ValueError):
        return joints_2d, matched, scores
    use = usable & np.isfinite(joints_2d).all(axis=(0, 2))
    if use.sum() < 2:
        return joints_2d, matched, scores
    height = float(np.ptp(joints_2d[0, use, 1]))
    r = int(np.clip(round(patch_fraction * height), JOINT_PATCH_MIN_RADIUS, JOINT_PATCH_MAX_RADIUS))
    side = 2 * r + 1
    search = int(search)
    if search < 1:
        return joints_2d, matched, scores
    # One (side, side) template and one (side, side + 2 search) strip per joint, cut bilinearly
    # (sub-pixel centres); column k of a strip is the right-view patch centred at
    # u_left - d0 - search + k, i.e. disparity d = d0 + search - k.
    joints = np.flatnonzero(use)
    u_left, u_right = joints_2d[0, joints, 0], joints_2d[1, joints, 0]
    v = 0.5 * (joints_2d[0, joints, 1] + joints_2d[1, joints, 1])
    d0 = u_left - u_right
    templates = np.stack(
        [
            cv2.getRectSubPix(grey[0], (side, side), (float(u), float(y)))
            for u, y in zip(u_left, v, strict=True)
        ]
    )
    strips = np.stack(
        [
            cv2.getRectSubPix(grey[1], (side + 2 * search, side), (float(u - d), float(y)))
            for u, d, y in zip(u_left, d0, v, strict=True)
        ]
    )
    ncc = _window_ncc(strips, templates)  # (n, 2 search + 1)
    flat = templates.reshape(len(joints), -1).std(axis=1) < MATCH_MIN_STD
    for n, j in enumerate(joints):
        if flat[n]:
            continue
        k = int(np.argmax(ncc[n]))
        scores[j] = ncc[n, k] if np.isfinite(ncc[n, k]) else np.nan
        if not ncc[n, k] >= min_score or k == 0 or k == ncc.shape[1] - 1:
            continue
        d = d0[n] + search - (k + _parabola_offset(ncc[n], k))
        d_inf, sign = disparity_at_infinity(P, u_left[n], v[n])
        if not (np.isfinite(d_inf) and sign * (d - d_inf) > 0):
            continue
        mid = 0.5 * (u_left[n] + u_right[n])
        joints_2d[0, j] = (mid + d / 2, v[n])
        joints_2d[1, j] = (mid - d / 2, v[n])
        matched[j] = True
    return joints_2d, matched, scores


def _window_ncc(strips: np.ndarray, templates: np.ndarray) -> np.ndarray:
    """Zero-mean NCC (OpenCV's ``TM_CCOEFF_NORMED``) of each template ``(n, h, w)`` at every
    horizontal offset of its strip ``(n, h, w + m - 1)``: ``(n, m)``, -inf where a window is
    flat. Vectorised numpy: for a few dozen small patches far cheaper than one
    ``cv2.matchTemplate`` call each."""
    n, h, w = templates.shape
    windows = np.lib.stride_tricks.sliding_window_view(strips, w, axis=2)  # (n, h, m, w)
    windows = windows.transpose(0, 2, 1, 3).reshape(n, -1, h * w).astype(np.float64)
    t = templates.reshape(n, 1, h * w).astype(np.float64)
    t = t - t.mean(axis=2, keepdims=True)
    windows = windows - windows.mean(axis=2, keepdims=True)
    with np.errstate(all="ignore"):
        ncc = (windows * t).sum(axis=2) / np.sqrt((windows**2).sum(axis=2) * (t**2).sum(axis=2))
    return np.where(np.isfinite(ncc), ncc, -np.inf)


def _grey(image: np.ndarray) -> np.ndarray | None:
    """``(H, W, 3)`` uint8 RGB or ``(H, W)`` uint8 -> ``(H, W)`` float32 grey; None otherwise."""
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8:
        return None
    if image.ndim == 3 and image.shape[2] == 3:
        image = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    if image.ndim != 2 or min(image.shape) < 1:
        return None
    return image.astype(np.float32)
