"""StereoPoseEstimator: full stereo frames + projection matrices -> 3D joints.

::

    est = StereoPoseEstimator.from_checkpoint("weights/cdrnet_r18.pt", device="auto")
    pose = est.estimate(left, right, P_left, P_right)   # (H, W, 3) uint8 RGB, (3, 4) floats
    if pose.box is None:
        ...  # no person: joints are NaN, confidence 0
    pose.joints_3d, pose.joints_2d, pose.confidence, pose.joint_names, pose.timings

Pipeline per stereo pair (both views batched together at every step):

1. **Locate** (unless tracking): both frames letterboxed to the locator's input, one
   :class:`~stereo_pose3d.models.locator.PersonLocator` pass, best box and score per view. A score
   below ``score_threshold`` in either view means "no person" (a person seen by one camera only
   cannot be triangulated).
   With ``stereo_box_matching`` (rectified pairs), the right box is then replaced by the left
   box shifted by the disparity at which the left box's patch best matches the right image
   along the same rows (:func:`match_stereo_box`), unless that match is weak.
   With ``locator_candidates`` > 1 (default 2; rectified pairs, not while tracking), the
   locator's next local maxima in the left view (3x3 peaks of its centre map, score at least
   ``score_threshold``), each paired with a right-view peak on the same rows and put through the
   box matching like the best box, are also cropped and run through the pose network (steps
   2-4, one extra batch for all of them); per pair the candidate with the highest mean per-view
   joint confidence is kept (the best box on ties). This recovers frames where the best box is
   an object, a partial body or an occluder; with two people in view it keeps the one the
   network is more confident on, not necessarily the same one from frame to frame.
2. **Crop**: the two boxes become squares of one side (same rows for a rectified pair), padded by
   ``crop_scale``, cut with :func:`~stereo_pose3d.models.crops.make_crop`; ``P_crop = A @ P``.
3. **Network**: the pose network (CDRNet or baseline) gives heatmaps, 2D joints and
   confidences per view (``torch.inference_mode``, channels_last, autocast bf16/fp16 on CUDA).
   With ``flip_test`` (default off) the mirrored crops run in the same batch and their heatmaps,
   mirrored back and joint-permuted, are averaged in before the soft-argmax (twice the network's
   cost; see :class:`~stereo_pose3d.models.baseline.PoseNetBase`). ``heatmap_decoding``
   (default ``"local"``) turns each heatmap into a 2D joint at its strongest mode
   (:func:`~stereo_pose3d.models.heatmaps.local_soft_argmax`); ``"global"`` is the soft-argmax
   of training, which puts a joint between the modes of a two-mode heatmap.
4. **Triangulate**: weighted DLT (float32) in the frame ``P_left``/``P_right`` project from.
   Joints whose two detections are farther than ``max_epipolar_offset`` (default 0.03) x the
   person's height from each other's epipolar line are invalid (:func:`epipolar_gate`: one
   view took another limb). With ``joint_stereo_matching`` (default on; rectified pairs; after
   any refinement passes of step 5), each valid joint's disparity is then measured again in the
   images: a small grey-level patch around its left-view detection is matched along the same
   rows of the right view near the network's disparity (:func:`match_joint_disparities`,
   zero-mean NCC, sub-pixel), and the joints whose match is strong are triangulated again
   (float64 DLT) from the mean of the two detections with the matched disparity. Depth is made
   of disparity (``Z^2 / (f B)`` metres per px); two independent detections disagree by a few
   px, the images' own correspondence by a fraction of one. Finally joints more than
   ``max_depth_spread`` from the person's median depth are invalid (:func:`depth_gate`).
5. **Refine** (``refine_iterations`` > 0, default 0): the triangulated joints are projected into
   both views, their bounds (plus ``REFINE_BOX_MARGIN``) become the boxes of steps 2-4, run
   again; a pass whose boxes are degenerate, whose output is non-finite or whose mean per-view
   joint confidence is lower than the previous pass's is dropped.
   Measured on the synthetic validation set with the shipped weights it does not fix the full
   path's depth error: the network's 2D disparity follows the crops' offset almost exactly, so
   boxes built from its own output reproduce the first pass's disparity (see docs/models.md).

``joints_2d`` is the projection of ``joints_3d`` with the given P's (so 2D and 3D always agree);
the network's own per-view detections are in ``joints_2d_detected``.

Tracking (``tracking=True``): while the previous pose's mean confidence is at least
``track_confidence``, the box comes from its 2D joints instead of the locator (saves the locator
pass); the locator runs again when confidence drops or the person is lost.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from stereo_pose3d.checkpoint import load_model
from stereo_pose3d.geometry import epipolar_distance, project, triangulate
from stereo_pose3d.models.config import (
    DEFAULT_ESTIMATOR,
    HEATMAP_DECODINGS,
    MAX_LOCATOR_CANDIDATES,
)
from stereo_pose3d.models.crops import (
    box_from_joints,
    crop_regions,
    crop_views,
    is_rectified_pair,
    letterbox,
    transform_boxes,
)
from stereo_pose3d.models.system import PoseSystem
from stereo_pose3d.stereo_matching import (
    MATCH_BEHIND,
    disparity_at_infinity,
    match_joint_disparities,
    match_stereo_box,
)

TIMING_KEYS = ("preprocess", "locator", "network", "triangulation", "total")

# Stereo-consistent box refinement (``refine_iterations``): largest accepted number of passes,
# and how a pass's 3D joints become person boxes. The margin (fraction of the projected joints'
# larger box side added on every side) makes the joints' box about as large as the datasets'
# person boxes, which also cover the silhouette (synthetic set: median 1.09 x the joints' box).
MAX_REFINE_ITERATIONS = 10
REFINE_BOX_MARGIN = 0.05
REFINE_MIN_JOINTS = 4  # fewer valid joints in front of both cameras: no refinement
REFINE_MIN_CONFIDENCE = 0.2  # joints used for the box (all valid ones if fewer than the above)
REFINE_MAX_SCALE_CHANGE = 2.0  # refined box side / previous side outside [1/x, x]: degenerate

# Joint stereo matching (``joint_stereo_matching``): smallest view weight in the re-triangulation.
JOINT_MIN_WEIGHT = 1e-3

# Person candidates (``locator_candidates``): a left-view peak of the locator other than the
# best is paired with the right view's peak (among the ``locator_candidates`` +
# CANDIDATE_EXTRA_PEAKS best) whose box centre is nearest in rows, within this fraction of the
# left box's height, with a disparity at most MATCH_BEHIND px beyond infinite depth.
CANDIDATE_EXTRA_PEAKS = 2
CANDIDATE_MAX_ROW_OFFSET = 0.25


@dataclass
class Pose3D:
    """One stereo pair's result.

    Attributes:
        joints_3d: ``(J, 3)`` metres in the frame ``P_left``/``P_right`` project from
            (NaN when no person).
        joints_2d: ``(2, J, 2)`` pixels in the full left/right images: ``joints_3d`` projected.
        confidence: ``(J,)`` in [0, 1] (mean of the views' heatmap peaks; 0 for joints whose
            triangulation is degenerate, and when no person).
        joint_names: ``J`` names (skeleton order, see :mod:`stereo_pose3d.skeleton`).
        box: ``(2, 4)`` xyxy person box per view (locator or tracking; the right one from stereo
            box matching when ``box_matched``), or None: no person.
        crop_boxes: ``(2, 4)`` the square regions the network saw, or None.
        joints_2d_detected: ``(2, J, 2)`` the network's per-view soft-argmax, full-image pixels.
        view_confidence: ``(2, J)`` per-view confidence.
        valid: ``(J,)`` bool: triangulation not degenerate, and the joint not left out by the
            epipolar gate (``max_epipolar_offset``) or the depth gate (``max_depth_spread``).
        score: locator score (min over the views; NaN when tracked).
        source: ``"locator"``, ``"tracking"`` or ``"none"``: where the first pass's box came from;
            ``"locator2"``, ``"locator3"``, ...: the locator's 2nd, 3rd, ... left-view peak
            (``locator_candidates``) gave the kept pose.
        refined: number of accepted refinement passes (``refine_iterations``); when > 0, ``box``
            and ``crop_boxes`` are the last accepted pass's (from the reprojected 3D joints).
        box_matched: True when the right view's box was placed by stereo box matching
            (``stereo_box_matching``; False when it is off or fell back to the located box).
        joints_matched: ``(J,)`` bool, the joints whose disparity (hence depth) comes from
            joint stereo matching (``joint_stereo_matching``); all False when it is off, the
            pair is not rectified, or no person.
        timings: seconds, keys ``preprocess, locator, network, triangulation, total`` for the
            call that produced this pose (for ``estimate_batch``: the whole batch, with
            ``batch_size``). ``preprocess`` is everything outside the networks and the DLT:
            input checks, letterbox, crops, normalisation, host/device copies, output mapping.
            Refinement passes add to ``network``, ``triangulation`` and ``preprocess`` (their
            crops); with ``refine_iterations > 0`` the extra key ``refinement`` is the
            wall-clock time of all refinement passes (already inside those, not an extra part
            of ``total``); with ``stereo_box_matching`` the extra key ``box_matching`` is the
            matching's wall-clock time (inside ``preprocess``); with ``locator_candidates > 1``
            the extra key ``candidates`` is the wall-clock time of pairing, matching and running
            the extra candidates (already inside the other keys, not an extra part of
            ``total``); with ``joint_stereo_matching`` the extra key ``joint_matching`` is the
            wall-clock time of matching and re-triangulating the joints (inside
            ``preprocess``).
    """

    joints_3d: np.ndarray
    joints_2d: np.ndarray
    confidence: np.ndarray
    joint_names: list[str]
    box: np.ndarray | None
    crop_boxes: np.ndarray | None = None
    joints_2d_detected: np.ndarray | None = None
    view_confidence: np.ndarray | None = None
    valid: np.ndarray | None = None
    score: float = float("nan")
    source: str = "none"
    refined: int = 0
    box_matched: bool = False
    joints_matched: np.ndarray | None = None
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def detected(self) -> bool:
        """True when a person was found (``box`` is not None)."""
        return self.box is not None


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` (CUDA if available), ``"cpu"``, ``"cuda"`` or ``"cuda:N"`` -> torch.device."""
    if isinstance(device, torch.device):
        device = str(device)
    if not isinstance(device, str):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda[:N]', got {device!r}")
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cpu":
        return torch.device("cpu")
    if device == "cuda" or device.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r} requested but CUDA is not available")
        dev = torch.device(device)
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device {device!r}: only {torch.cuda.device_count()} CUDA devices")
        return dev
    raise ValueError(f"device must be 'auto', 'cpu' or 'cuda[:N]', got {device!r}")


def _check_image(image: Any, name: str) -> np.ndarray:
    if not isinstance(image, np.ndarray):
        kind = type(image).__name__
        raise ValueError(f"{name} must be a numpy array (H, W, 3) uint8, got {kind}")
    if image.dtype != np.uint8:
        raise ValueError(f"{name} must be uint8 RGB, got dtype {image.dtype}")
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"{name} must have shape (H, W, 3), got {image.shape}")
    if image.shape[0] < 32 or image.shape[1] < 32:
        raise ValueError(f"{name} is too small: {image.shape[1]}x{image.shape[0]} pixels")
    return np.ascontiguousarray(image)


def _check_projection(P: Any, name: str) -> np.ndarray:
    try:
        P = np.asarray(P, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a (3, 4) array of numbers") from None
    if P.shape != (3, 4):
        raise ValueError(f"{name} must have shape (3, 4), got {P.shape}")
    if not np.all(np.isfinite(P)):
        raise ValueError(f"{name} contains NaN or inf")
    M = P[:, :3]
    scale = max(float(np.abs(M).max()), 1e-300)
    if abs(np.linalg.det(M / scale)) < 1e-9:
        raise ValueError(f"{name} is degenerate: its left 3x3 block is singular")
    return P


def _true_or_false(name: str, value: Any) -> bool:
    """``value`` as a bool if it is one (numpy's included); ValueError naming ``name`` if not."""
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{name} must be true or false, got {value!r}")
    return bool(value)


def _non_negative(name: str, value: Any, what: str) -> float:
    """``value`` as a float if it is a number (not a bool) >= 0; ValueError naming ``name`` and
    ``what`` it measures otherwise (NaN included)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
        raise ValueError(f"{name} must be {what} >= 0 (0 = off), got {value!r}")
    return float(value)


def _int_in_range(name: str, value: Any, low: int, high: int) -> int:
    """``value`` as an int if it is an integer (not a bool) in ``[low, high]``; else ValueError."""
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, np.integer))
        or not low <= value <= high
    ):
        raise ValueError(f"{name} must be an integer in [{low}, {high}], got {value!r}")
    return int(value)


def epipolar_gate(
    joints_2d: np.ndarray, valid: np.ndarray, P: np.ndarray, max_offset: float
) -> np.ndarray:
    """``valid (J,)`` without the joints whose two detections ``joints_2d (2, J, 2)`` px are
    more than ``max_offset`` x the person's height in the first view (the vertical extent of the
    valid detections, px) from each other's epipolar line (:func:`~stereo_pose3d.geometry.
    epipolar_distance`; for a rectified pair, their rows differ by more). The two images of one
    point lie on corresponding epipolar lines, so such a pair is two different points: one view
    took another limb or an occluder. Unchanged when ``max_offset`` is 0, fewer than 2 valid
    joints are finite, or P is degenerate."""
    valid = np.asarray(valid, dtype=bool)
    if not max_offset or max_offset <= 0:
        return valid
    uv = np.asarray(joints_2d, dtype=np.float64)
    usable = valid & np.isfinite(uv).all(axis=(0, 2))
    if usable.sum() < 2:
        return valid
    try:
        with np.errstate(all="ignore"):
            distance = epipolar_distance(uv, np.asarray(P, dtype=np.float64))
    except (np.linalg.LinAlgError, ValueError):
        return valid
    height = float(np.ptp(uv[0, usable, 1]))
    with np.errstate(invalid="ignore"):
        return valid & ~(distance > max_offset * height)


def depth_gate(
    joints_3d: np.ndarray, valid: np.ndarray, P: np.ndarray, max_spread: float
) -> np.ndarray:
    """``valid (J,)`` without the joints whose depth along the axis of the camera ``P (3, 4)``
    is more than ``max_spread`` metres from the median depth of the valid joints (``joints_3d
    (J, 3)`` metres). Unchanged when ``max_spread`` is 0 or fewer than 3 joints have a finite
    depth. A person spans well under a metre in depth either side of its median, and a joint
    whose two views disagree (one view took the other side's limb) lands metres away."""
    valid = np.asarray(valid, dtype=bool)
    if not max_spread or max_spread <= 0:
        return valid
    X = np.asarray(joints_3d, dtype=np.float64)
    P = np.asarray(P, dtype=np.float64)
    with np.errstate(all="ignore"):
        depth = (X @ P[2, :3] + P[2, 3]) / np.linalg.norm(P[2, :3])
    usable = valid & np.isfinite(depth)
    if usable.sum() < 3:
        return valid
    median = np.median(depth[usable])
    with np.errstate(invalid="ignore"):
        return usable & (np.abs(depth - median) <= max_spread) | (valid & ~usable)


def _finite_pass(result: dict[str, np.ndarray]) -> bool:
    """A pose pass whose valid 3D joints, 2D detections and confidences are all finite."""
    return bool(
        np.isfinite(result["joints_3d"][result["valid"]]).all()
        and np.isfinite(result["joints_2d_detected"]).all()
        and np.isfinite(result["view_confidence"]).all()
    )


def _pass_confidence(result: dict[str, np.ndarray]) -> float:
    """A pose pass's mean per-view joint confidence (both views, all joints; before the depth
    gate): how sure the network is that its crops hold a person. Picks between candidates and
    refinement passes."""
    return float(np.mean(result["view_confidence"]))


class StereoPoseEstimator:
    """3D human pose from calibrated stereo pairs (see the module docstring)."""

    def __init__(
        self,
        system: PoseSystem,
        device: str | torch.device = "auto",
        checkpoint_path: str | Path | None = None,
        autocast: bool = True,
        refine_iterations: int | None = None,
        **settings: Any,
    ) -> None:
        """See :meth:`from_checkpoint` for ``device``, ``autocast``, ``refine_iterations`` and
        ``settings`` (keys of ``DEFAULT_ESTIMATOR``; they override the system config's)."""
        unknown = set(settings) - set(DEFAULT_ESTIMATOR)
        if unknown:
            raise ValueError(f"unknown estimator settings {sorted(unknown)}")
        self.device = resolve_device(device)
        self.checkpoint_path = checkpoint_path
        self.config = system.config
        self.settings = {**DEFAULT_ESTIMATOR, **system.config.get("estimator", {}), **settings}
        # Explicit argument > the config's "estimator" dict > 0 (no refinement).
        if refine_iterations is None:
            refine_iterations = self.settings.get("refine_iterations", 0)
        self.refine_iterations = refine_iterations
        self.stereo_box_matching = self.settings["stereo_box_matching"]  # checks the type
        self.max_depth_spread = self.settings["max_depth_spread"]  # checks the value
        self.max_epipolar_offset = self.settings["max_epipolar_offset"]  # checks the value
        self.flip_test = self.settings["flip_test"]  # checks the type
        self.heatmap_decoding = self.settings["heatmap_decoding"]  # checks the value
        self.locator_candidates = self.settings["locator_candidates"]  # checks the value
        self.joint_stereo_matching = self.settings["joint_stereo_matching"]  # checks the type
        self.pose_net = system.pose.eval().to(self.device, memory_format=torch.channels_last)
        self.locator = system.locator.eval().to(self.device, memory_format=torch.channels_last)
        pose_cfg, loc_cfg = system.config["pose"], system.config["locator"]
        self.joint_names: list[str] = list(pose_cfg["joint_names"])
        self.crop_size: tuple[int, int] = tuple(pose_cfg["input_size"])
        self.locator_size: tuple[int, int] = tuple(loc_cfg["input_size"])
        self._norm = {
            key: (
                torch.tensor(cfg["normalization"]["mean"], device=self.device).view(1, 3, 1, 1),
                torch.tensor(cfg["normalization"]["std"], device=self.device).view(1, 3, 1, 1),
            )
            for key, cfg in (("pose", pose_cfg), ("locator", loc_cfg))
        }
        if self.device.type == "cuda" and autocast:
            bf16 = torch.cuda.is_bf16_supported()
            self.autocast_dtype: torch.dtype | None = torch.bfloat16 if bf16 else torch.float16
        else:
            self.autocast_dtype = None
        self._track: tuple[np.ndarray, np.ndarray] | None = None

    @property
    def refine_iterations(self) -> int:
        """Stereo-consistent box refinement passes per pair, 0 = none (see
        :meth:`from_checkpoint`); assignable, e.g. from a node parameter."""
        return self.settings["refine_iterations"]

    @refine_iterations.setter
    def refine_iterations(self, value: int) -> None:
        self.settings["refine_iterations"] = _int_in_range(
            "refine_iterations", value, 0, MAX_REFINE_ITERATIONS
        )

    @property
    def stereo_box_matching(self) -> bool:
        """Place the right view's box by matching the left box's patch along its rows (see
        :meth:`from_checkpoint`); assignable, e.g. from a node parameter."""
        return self.settings["stereo_box_matching"]

    @property
    def max_depth_spread(self) -> float:
        """Metres; joints farther than this from the person's median depth are invalid (0 =
        off). Settable between calls (the node's ``max_depth_spread`` parameter)."""
        return self.settings["max_depth_spread"]

    @max_depth_spread.setter
    def max_depth_spread(self, value: float) -> None:
        self.settings["max_depth_spread"] = _non_negative("max_depth_spread", value, "metres")

    @property
    def max_epipolar_offset(self) -> float:
        """Fraction of the person's height in px; joints whose two detections are farther from
        each other's epipolar line are invalid (0 = off; see :meth:`from_checkpoint`).
        Settable between calls (the node's ``max_epipolar_offset`` parameter)."""
        return self.settings["max_epipolar_offset"]

    @max_epipolar_offset.setter
    def max_epipolar_offset(self, value: float) -> None:
        self.settings["max_epipolar_offset"] = _non_negative(
            "max_epipolar_offset", value, "a fraction of the person's height"
        )

    @property
    def flip_test(self) -> bool:
        """Flip test: the pose network also runs on the mirrored crops (same batch) and the
        heatmaps are averaged (see :meth:`from_checkpoint`); assignable between calls (the
        node's ``flip_test`` parameter)."""
        return self.settings["flip_test"]

    @flip_test.setter
    def flip_test(self, value: bool) -> None:
        self.settings["flip_test"] = _true_or_false("flip_test", value)

    @property
    def heatmap_decoding(self) -> str:
        """``"local"`` (a heatmap's strongest mode) or ``"global"`` (soft-argmax over the whole
        heatmap), see :meth:`from_checkpoint`; assignable between calls."""
        return self.settings["heatmap_decoding"]

    @heatmap_decoding.setter
    def heatmap_decoding(self, value: str) -> None:
        if not isinstance(value, str) or value not in HEATMAP_DECODINGS:
            raise ValueError(
                f"heatmap_decoding must be one of {list(HEATMAP_DECODINGS)}, got {value!r}"
            )
        self.settings["heatmap_decoding"] = value

    @property
    def locator_candidates(self) -> int:
        """Person candidates per pair (the locator's best left-view peaks, 1 = the best box
        only; see :meth:`from_checkpoint`); assignable between calls."""
        return self.settings["locator_candidates"]

    @locator_candidates.setter
    def locator_candidates(self, value: int) -> None:
        self.settings["locator_candidates"] = _int_in_range(
            "locator_candidates", value, 1, MAX_LOCATOR_CANDIDATES
        )

    @property
    def joint_stereo_matching(self) -> bool:
        """Re-measure each joint's disparity by patch matching (see :meth:`from_checkpoint`);
        assignable."""
        return self.settings["joint_stereo_matching"]

    @joint_stereo_matching.setter
    def joint_stereo_matching(self, value: bool) -> None:
        self.settings["joint_stereo_matching"] = _true_or_false("joint_stereo_matching", value)

    @stereo_box_matching.setter
    def stereo_box_matching(self, value: bool) -> None:
        self.settings["stereo_box_matching"] = _true_or_false("stereo_box_matching", value)

    @classmethod
    def from_checkpoint(
        cls,
        path: str | Path,
        device: str | torch.device = "auto",
        autocast: bool = True,
        refine_iterations: int | None = None,
        **settings: Any,
    ) -> StereoPoseEstimator:
        """Load a ``"system"`` checkpoint (pose network + locator).

        ``autocast``: on CUDA, run the networks in bfloat16 (float16 where bf16 is unsupported);
        False keeps float32 everywhere (results then match the CPU's to float32 tolerance).

        ``settings`` override the checkpoint's estimator settings (``crop_scale``,
        ``score_threshold``, ``min_pose_confidence``, ``min_box_fraction``, ``tracking``,
        ``track_confidence``, ``stereo_box_matching``, ``joint_stereo_matching``,
        ``max_depth_spread``, ``max_epipolar_offset``, ``flip_test``, ``locator_candidates``,
        ``heatmap_decoding``).

        ``max_epipolar_offset`` (fraction >= 0, default 0.03; 0 = off): after the network, a joint
        whose two detections are farther than this x the person's height in the left view (px)
        from each other's epipolar line is invalid (:func:`epipolar_gate`; for a rectified pair:
        their rows differ by more). On the synthetic validation set it takes the shipped
        baseline's MPJPE from 171 to 141 mm for 4 % of its joints (docs/models.md, pipeline
        step 6).

        ``locator_candidates`` (integer in ``[1, MAX_LOCATOR_CANDIDATES]``, default 2): how many
        of the locator's left-view peaks may become person candidates. The best box is the
        first; each further local maximum of the left centre map (3x3 peaks,
        :meth:`~stereo_pose3d.models.locator.PersonLocator.decode_topk`) scoring at least
        ``score_threshold`` is paired with the right view's peak (among the
        ``locator_candidates + CANDIDATE_EXTRA_PEAKS`` best, score at least
        ``score_threshold``) whose box centre is nearest in rows, within
        ``CANDIDATE_MAX_ROW_OFFSET`` x the left box height and at most ``MATCH_BEHIND`` px
        beyond the disparity of infinite depth; with ``stereo_box_matching`` its right box is
        then matched like the best box's. All candidates of a call run through the pose network
        in one extra batch after the first pass, and per pair the candidate whose mean per-view
        joint confidence (before the depth gate) is highest is kept, with its box, score,
        ``box_matched`` and ``source`` (``"locator2"``, ...); tracking follows it. Only for
        rectified pairs whose best boxes were found by the locator (a tracked box has no
        candidates); a pair without such a peak costs only the pairing (well under a
        millisecond). 1 gives exactly the best-box-only output.
        Caveat: it assumes one person; with two people in view it keeps the one the network is
        more confident on, which can change from frame to frame.

        ``flip_test`` (bool, default False): flip test-time augmentation (Simple Baselines).
        Both views' crops are also mirrored horizontally (with mirrored cameras and the two views
        swapped: a valid stereo pair of the mirrored scene, as in training's flip augmentation,
        so it applies to CDRNet too), run in the same batch, and their heatmaps are mirrored
        back (exact under the pixel-centre convention: no shift), joint-permuted with the
        skeleton's ``flip_permutation`` and averaged with the originals' before the
        soft-argmax; triangulation is unchanged. It costs about 1.8x the pose network's time
        (measured +24-34 ms per pair with the shipped baseline on 2 CPU cores); see
        docs/models.md (pipeline step 3) for what it buys.

        ``heatmap_decoding`` (``"local"`` or ``"global"``, default ``"local"``): how a joint's
        heatmap becomes its 2D position. ``"global"`` is the soft-argmax over the whole heatmap
        (``softmax(beta * heatmap)``, what training optimises); a heatmap with two modes (the
        left and right knee confused, views that disagree) or background mass then gives a point
        between them, wrong either way. ``"local"`` is a mean shift from the heatmap's maximum
        with a Gaussian window of ``LOCAL_SIGMA`` = 4 cells
        (:func:`~stereo_pose3d.models.heatmaps.local_soft_argmax`): the strongest mode, to
        sub-pixel accuracy (exact on Gaussian heatmaps, where the global one is within 0.25
        crop px). The confidence (the heatmap's maximum) is the same for both. With the shipped
        baseline on the validation set it cuts the 2D error by 1.5 px on the full path and the
        MPJPE by 6 %; see docs/models.md (pipeline step 3).

        ``stereo_box_matching`` (bool): for a rectified pair, the right view's box is the left
        view's box (located or tracked) shifted along its rows by the disparity at which the
        left box's grey-level patch best matches the right image (:func:`match_stereo_box`:
        zero-mean NCC, sub-pixel); the locator's right box is kept when the match is weak,
        ambiguous at the search range's edge, the patch is flat or the pair is not rectified.
        Why: CDRNet's output disparity follows the offset between its two crops, so the depth
        of the result is set by where the two boxes are (see docs/models.md, "Pipeline").

        ``refine_iterations``: stereo-consistent box refinement passes (integer in
        ``[0, MAX_REFINE_ITERATIONS]``; None: the checkpoint's ``estimator`` setting of that
        name if it has one, else 0). Each pass projects the previous pass's triangulated joints
        (metres) into both views with ``P_left`` / ``P_right``, takes their bounds (pixels)
        padded by ``REFINE_BOX_MARGIN`` as the person boxes, crops them with the usual rule
        (common square side, same rows for a rectified pair, ``crop_scale``,
        ``min_box_fraction``), and runs the pose network and the DLT again: one more network
        pass per pair and iteration. A pass whose boxes cannot be built, whose output is
        non-finite or whose mean per-view joint confidence is lower than the previous pass's is
        dropped and the previous result kept. 0 gives exactly the single-pass output.

        ``joint_stereo_matching`` (bool, default True): for a rectified pair, after the network
        (and any refinement passes), each valid joint's disparity is measured again by matching
        a square grey-level patch around its left-view detection (half-side 5 % of the
        person's height in px, 3-24 px) along the same rows of the right image, within
        ``JOINT_SEARCH`` px of the network's disparity (:func:`match_joint_disparities`:
        zero-mean NCC, parabola-refined). A joint whose peak scores at least 0.5 (not on the
        search range's edge, in front of the cameras) gets the mean of its two detections'
        columns and rows with the matched disparity and is triangulated again (float64 DLT in
        full-image pixels, the views' confidences as weights); the others keep the network's
        result. ``pose.joints_matched`` says which; ``pose.joints_2d_detected`` stays the
        network's. About 1-2 ms per pair on a CPU. With the shipped baseline on the synthetic
        validation pairs it cuts the full path's MPJPE by about a quarter (docs/models.md,
        pipeline step 4). The depth of a matched joint is that of the body surface around it (a
        few cm in front of the joint centre) and of whatever the left patch shows, so a joint
        hidden behind another body part in the left view takes the occluder's depth.

        Raises:
            stereo_pose3d.checkpoint.CheckpointError: unusable file. ValueError: bad device.
        """
        resolve_device(device)  # fail on a bad device before reading the file
        system, _ = load_model(path, expect="system")
        return cls(
            system, device, checkpoint_path=path, autocast=autocast,
            refine_iterations=refine_iterations, **settings,
        )  # fmt: skip

    # ------------------------------------------------------------------------------------------

    def reset(self) -> None:
        """Forget the tracked person (next ``estimate`` runs the locator)."""
        self._track = None

    def _sync(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def _autocast(self):
        if self.autocast_dtype is None:
            return nullcontext()
        return torch.autocast("cuda", dtype=self.autocast_dtype)

    def _to_tensor(self, images: list[np.ndarray], key: str) -> torch.Tensor:
        """uint8 (H, W, 3) images -> normalised float (N, 3, H, W) channels_last on device."""
        batch = torch.from_numpy(np.stack(images)).to(self.device, non_blocking=True)
        x = batch.permute(0, 3, 1, 2).float().div_(255.0)
        mean, std = self._norm[key]
        return ((x - mean) / std).contiguous(memory_format=torch.channels_last)

    @torch.inference_mode()
    def locate(self, images: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Run the locator on full frames: ``boxes (N, 4)`` xyxy full-frame px, ``scores (N,)``."""
        boxes, scores, _ = self._locate([_check_image(im, "image") for im in images])
        return boxes[:, 0], scores[:, 0]

    def _locate(self, images: list[np.ndarray], k: int = 1) -> tuple[np.ndarray, np.ndarray, float]:
        """The locator on full frames: ``boxes (N, k, 4)`` xyxy full-frame px and ``scores (N,
        k)`` of the ``k`` best peaks per image, best first (NaN past the last peak; ``k = 1``:
        :meth:`PersonLocator.decode`'s box), and the locator's seconds."""
        boxed = [letterbox(im, self.locator_size) for im in images]
        x = self._to_tensor([b[0] for b in boxed], "locator")
        t0 = self._sync()
        with self._autocast():
            out = self.locator(x)
        if k == 1:
            boxes_t, scores_t = self.locator.decode(out)
            boxes_t, scores_t = boxes_t[:, None], scores_t[:, None]
        else:
            boxes_t, scores_t = self.locator.decode_topk(out, k)
        boxes_lb = boxes_t.float().cpu().numpy().astype(np.float64)
        t1 = self._sync()
        inverses = [np.linalg.inv(A) for _, A in boxed]
        boxes = np.stack(
            [transform_boxes(inv, b) for inv, b in zip(inverses, boxes_lb, strict=True)]
        )
        return boxes, scores_t.float().cpu().numpy(), t1 - t0

    def _box_ok(self, box: np.ndarray, shape: tuple[int, ...]) -> bool:
        """A usable box: finite, centre inside the image, not larger than twice the image."""
        H, W = shape[:2]
        if not np.all(np.isfinite(box)):
            return False
        cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
        size = max(box[2] - box[0], box[3] - box[1])
        return bool(0 <= cx < W and 0 <= cy < H and size <= 2 * max(H, W))

    def _matched_right_box(
        self,
        images: tuple[np.ndarray, np.ndarray],
        box_left: np.ndarray,
        box_right: np.ndarray,
        P: np.ndarray,
    ) -> tuple[np.ndarray, bool]:
        """Stereo box matching (:func:`match_stereo_box`): the right box placed by matching the
        left box's patch, and True; ``box_right`` as given and False when the match is weak or
        the matched box unusable."""
        box, _, _ = match_stereo_box(images[0], images[1], box_left, box_right, P)
        if box is not None and self._box_ok(box, images[1].shape):
            return box, True
        return box_right, False

    # ------------------------------------------------------------------------------------------

    def estimate(
        self, left: np.ndarray, right: np.ndarray, P_left: np.ndarray, P_right: np.ndarray
    ) -> Pose3D:
        """3D pose of the person in one rectified stereo pair (see :class:`Pose3D`).

        Raises:
            ValueError: images that are not (H, W, 3) uint8 of the same size, P's that are not
                finite (3, 4) arrays with an invertible left 3x3 block.
        """
        pose = self._estimate([left], [right], [P_left], [P_right], track=True)[0]
        return pose

    def estimate_batch(
        self,
        lefts: Sequence[np.ndarray],
        rights: Sequence[np.ndarray],
        P_lefts: Sequence[np.ndarray],
        P_rights: Sequence[np.ndarray],
    ) -> list[Pose3D]:
        """:meth:`estimate` for many independent pairs at once (one batch; no tracking)."""
        return self._estimate(lefts, rights, P_lefts, P_rights, track=False)

    def _estimate(self, lefts, rights, P_lefts, P_rights, track: bool) -> list[Pose3D]:
        t_start = self._sync()
        n = len(lefts)
        if n == 0 or not (len(rights) == len(P_lefts) == len(P_rights) == n):
            raise ValueError(
                f"need the same non-zero number of left images, right images, P_left and "
                f"P_right; got {len(lefts)}, {len(rights)}, {len(P_lefts)}, {len(P_rights)}"
            )
        images, projections = [], []
        for i in range(n):
            left = _check_image(lefts[i], "left")
            right = _check_image(rights[i], "right")
            if left.shape != right.shape:
                raise ValueError(f"left {left.shape} and right {right.shape} sizes differ")
            images.append((left, right))
            projections.append(
                np.stack([_check_projection(P_lefts[i], "P_left"),
                          _check_projection(P_rights[i], "P_right")])
            )  # fmt: skip
        with torch.inference_mode():
            return self._run(images, projections, track and self.settings["tracking"], t_start)

    def _run(self, images, projections, track: bool, t_start: float) -> list[Pose3D]:
        timings = dict.fromkeys(TIMING_KEYS, 0.0)
        n = len(images)
        boxes = np.full((n, 2, 4), np.nan)
        scores = np.full(n, np.nan)
        source = ["locator"] * n
        if track and self._track is not None:
            joints_2d, confidence = self._track
            tracked = np.stack([box_from_joints(joints_2d[v], confidence > 0.2) for v in range(2)])
            if all(self._box_ok(tracked[v], images[0][v].shape) for v in range(2)):
                boxes[0], source[0] = tracked, "tracking"
        todo = [i for i in range(n) if source[i] == "locator"]
        n_cand = self.locator_candidates
        peaks: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # pair -> (2, k, 4), (2, k)
        if todo:
            flat = [im for i in todo for im in images[i]]
            k = n_cand + CANDIDATE_EXTRA_PEAKS if n_cand > 1 else 1
            found, found_scores, t_loc = self._locate(flat, k)
            timings["locator"] = t_loc
            found = found.reshape(len(todo), 2, k, 4)
            found_scores = found_scores.reshape(len(todo), 2, k)
            boxes[todo] = found[:, :, 0]
            scores[todo] = found_scores[:, :, 0].min(axis=1)
            if n_cand > 1:
                peaks = {i: (found[j], found_scores[j]) for j, i in enumerate(todo)}
        detected = []
        for i in range(n):
            ok = source[i] == "tracking" or scores[i] >= self.settings["score_threshold"]
            ok = ok and all(self._box_ok(boxes[i, v], images[i][v].shape) for v in range(2))
            detected.append(ok)

        results: list[Pose3D | None] = [None] * n
        det = [i for i in range(n) if detected[i]]
        matched = dict.fromkeys(det, False)
        if self.stereo_box_matching:
            t_match = time.perf_counter()
            for i in det:
                boxes[i, 1], matched[i] = self._matched_right_box(
                    images[i], boxes[i, 0], boxes[i, 1], projections[i]
                )
            timings["box_matching"] = time.perf_counter() - t_match
        passes: dict[int, dict[str, np.ndarray]] = {}
        refined = dict.fromkeys(det, 0)
        if det:
            passes = self._pose_pass(images, projections, boxes, det, timings)
        if n_cand > 1:
            timings["candidates"] = 0.0  # also when the locator did not run (tracking)
            if cand := [i for i in det if i in peaks]:
                t_cand = self._sync()
                self._run_candidates(
                    images, projections, cand, peaks, passes, scores, source, matched, timings
                )
                timings["candidates"] = self._sync() - t_cand
        t_refine = self._sync() if self.refine_iterations else 0.0
        for _ in range(self.refine_iterations):
            new_boxes = {
                i: b
                for i in det
                if (b := self._refined_boxes(passes[i], projections[i], images[i][0].shape))
                is not None
            }
            if not new_boxes:
                break
            redo = sorted(new_boxes)
            candidates = self._pose_pass(images, projections, new_boxes, redo, timings)
            for i in redo:
                if self._refinement_ok(passes[i], candidates[i]):
                    passes[i] = candidates[i]
                    refined[i] += 1
        if self.refine_iterations:
            timings["refinement"] = self._sync() - t_refine
        for i in det:
            passes[i]["valid"] = epipolar_gate(
                passes[i]["joints_2d_detected"],
                passes[i]["valid"],
                projections[i],
                self.settings["max_epipolar_offset"],
            )
        if self.joint_stereo_matching and det:
            t_joints = time.perf_counter()
            for i in det:
                self._match_joints(passes[i], images[i], projections[i])
            timings["joint_matching"] = time.perf_counter() - t_joints
        for i in det:
            p = passes[i]
            p["valid"] = depth_gate(
                p["joints_3d"], p["valid"], projections[i][0], self.settings["max_depth_spread"]
            )
            confidence = np.where(p["valid"], p["view_confidence"].mean(axis=0), 0.0)
            if confidence.mean() < self.settings["min_pose_confidence"]:
                continue
            results[i] = Pose3D(
                joints_3d=p["joints_3d"],
                joints_2d=project(p["joints_3d"][None], projections[i]),
                confidence=confidence,
                joint_names=list(self.joint_names),
                box=p["box"].copy(),
                crop_boxes=p["crop_boxes"].copy(),
                joints_2d_detected=p["joints_2d_detected"],
                view_confidence=p["view_confidence"],
                valid=p["valid"],
                score=float(scores[i]),
                source=source[i],
                refined=refined[i],
                box_matched=matched[i],
                joints_matched=p.get("joints_matched", np.zeros(len(self.joint_names), bool)),
            )
        t_end = self._sync()
        timings["total"] = t_end - t_start
        timings["preprocess"] = max(
            0.0, timings["total"] - timings["locator"] - timings["network"]
            - timings["triangulation"],
        )  # fmt: skip
        if n > 1:
            timings["batch_size"] = float(n)
        poses = [r if r is not None else self._no_person(scores[i]) for i, r in enumerate(results)]
        for pose in poses:
            pose.timings = dict(timings)
        if track:
            best = poses[0]
            keep = (
                best.detected
                and bool(np.isfinite(best.joints_2d).all())
                and best.confidence.mean() >= self.settings["track_confidence"]
            )
            self._track = (best.joints_2d, best.confidence) if keep else None
        return poses

    def _run_candidates(
        self,
        images,
        projections,
        idx: list[int],
        peaks,
        passes,
        scores,
        source,
        matched,
        timings: dict[str, float],
    ) -> None:
        """``locator_candidates``: run the further candidates of the pairs ``idx`` (whose first
        pass is ``passes[i]``) in one pose pass and keep, per pair, the pass with the highest
        mean per-view joint confidence; updates ``passes``, ``scores``, ``source`` and
        ``matched`` in place."""
        boxes, owner = {}, {}
        for i in idx:
            for rank, pair, score, was_matched in self._candidate_pairs(
                images[i], projections[i], *peaks[i]
            ):
                boxes[len(owner)] = pair
                owner[len(owner)] = (i, rank, score, was_matched)
        if not boxes:
            return
        keys = list(boxes)
        pair_images = {c: images[owner[c][0]] for c in keys}
        pair_projections = {c: projections[owner[c][0]] for c in keys}
        results = self._pose_pass(pair_images, pair_projections, boxes, keys, timings)
        for c in keys:
            i, rank, score, was_matched = owner[c]
            new = results[c]
            if _finite_pass(new) and _pass_confidence(new) > _pass_confidence(passes[i]):
                passes[i] = new
                scores[i], source[i], matched[i] = score, f"locator{rank + 1}", was_matched

    def _candidate_pairs(
        self,
        images: tuple[np.ndarray, np.ndarray],
        P: np.ndarray,
        boxes: np.ndarray,
        scores: np.ndarray,
    ) -> list[tuple[int, np.ndarray, float, bool]]:
        """A pair's further person candidates from its locator peaks ``boxes (2, k, 4)``,
        ``scores (2, k)`` (full-frame px, best first per view): ``(rank of the left peak, boxes
        (2, 4), score = min of the two peaks', box_matched)`` for each left peak of rank 1 to
        ``locator_candidates - 1`` scoring at least ``score_threshold`` that pairs with a right
        peak (see :meth:`from_checkpoint`); none for a pair that is not rectified."""
        threshold = self.settings["score_threshold"]
        with np.errstate(all="ignore"):
            if not is_rectified_pair(P):
                return []
        out = []
        right_ok = (scores[1] >= threshold) & np.isfinite(boxes[1]).all(axis=1)
        right_cx = (boxes[1, :, 0] + boxes[1, :, 2]) / 2
        right_cy = (boxes[1, :, 1] + boxes[1, :, 3]) / 2
        for rank in range(1, self.locator_candidates):
            box_left = boxes[0, rank]
            if not scores[0, rank] >= threshold:
                break  # the peaks are in descending order (NaN: no more peaks)
            if not self._box_ok(box_left, images[0].shape):
                continue
            cx, cy = (box_left[0] + box_left[2]) / 2, (box_left[1] + box_left[3]) / 2
            d_inf, side = disparity_at_infinity(P, cx, cy)
            if not (np.isfinite(d_inf) and side != 0):
                continue
            with np.errstate(invalid="ignore"):
                rows = np.abs(right_cy - cy)
                fits = (
                    right_ok
                    & (rows < CANDIDATE_MAX_ROW_OFFSET * (box_left[3] - box_left[1]))
                    & (side * (cx - right_cx - d_inf) > -MATCH_BEHIND)
                )
            if not fits.any():
                continue
            j = int(np.argmin(np.where(fits, rows, np.inf)))
            box_right, was_matched = boxes[1, j], False
            if self.stereo_box_matching:
                box_right, was_matched = self._matched_right_box(images, box_left, box_right, P)
            if not self._box_ok(box_right, images[1].shape):
                continue
            score = float(min(scores[0, rank], scores[1, j]))
            out.append((rank, np.stack([box_left, box_right]), score, was_matched))
        return out

    def _pose_pass(
        self, images, projections, boxes, idx: list[int], timings: dict[str, float]
    ) -> dict[int, dict[str, np.ndarray]]:
        """Crop around ``boxes[i]`` for every pair ``i`` in ``idx``, run the pose network on all
        of them in one batch and triangulate; adds to ``timings["network"/"triangulation"]``.

        Returns, per pair: ``box (2, 4)``, ``crop_boxes (2, 4)``, ``joints_3d (J, 3)`` m,
        ``valid (J,)``, ``view_confidence (2, J)``, ``joints_2d_detected (2, J, 2)`` full-image
        pixels.
        """
        crops, P_crop = [], []
        crops_A = np.zeros((len(idx), 2, 3, 3))
        crop_boxes = np.zeros((len(idx), 2, 4))
        for k, i in enumerate(idx):
            crop_boxes[k] = crop_regions(
                boxes[i], projections[i], images[i][0].shape[0],
                self.settings["crop_scale"], self.settings["min_box_fraction"],
            )  # fmt: skip
            pair_crops, pair_P, crops_A[k] = crop_views(
                images[i], projections[i], crop_boxes[k], self.crop_size
            )
            crops.extend(pair_crops)
            P_crop.extend(pair_P)
        x = self._to_tensor(crops, "pose").unflatten(0, (len(idx), 2))
        P_t = torch.as_tensor(np.stack(P_crop), dtype=torch.float32, device=self.device)
        P_t = P_t.view(len(idx), 2, 3, 4)
        t_pre = self._sync()
        with self._autocast():
            out = self.pose_net.forward_2d(
                x, P_t, flip_test=self.flip_test, decoding=self.heatmap_decoding
            )
        t_net = self._sync()
        X, valid = self.pose_net.triangulate(out["joints_2d"], out["confidence"], P_t)
        X_np = X.double().cpu().numpy()
        valid_np = valid.cpu().numpy()
        t_tri = self._sync()
        timings["network"] += t_net - t_pre
        timings["triangulation"] += t_tri - t_net
        uv_crop = out["joints_2d"].float().cpu().numpy().astype(np.float64)
        conf_views = out["confidence"].float().cpu().numpy().astype(np.float64)
        passes = {}
        for k, i in enumerate(idx):
            detected_2d = np.empty((2, len(self.joint_names), 2))
            for v in range(2):
                inv = np.linalg.inv(crops_A[k, v])
                detected_2d[v] = uv_crop[k, v] @ inv[:2, :2].T + inv[:2, 2]
            passes[i] = {
                "box": np.asarray(boxes[i], dtype=np.float64),
                "crop_boxes": crop_boxes[k],
                "joints_3d": X_np[k],
                "valid": valid_np[k],
                "view_confidence": conf_views[k],
                "joints_2d_detected": detected_2d,
            }
        return passes

    @staticmethod
    def _match_joints(
        result: dict[str, np.ndarray], images: tuple[np.ndarray, np.ndarray], P: np.ndarray
    ) -> None:
        """Joint stereo matching of one pass (:func:`match_joint_disparities` on its valid
        joints), in place: the matched joints are triangulated again (float64 DLT, full-image
        pixels, the views' confidences as weights) and ``joints_matched`` is set."""
        uv, matched, _ = match_joint_disparities(
            images[0], images[1], result["joints_2d_detected"], result["valid"], P
        )
        result["joints_matched"] = matched
        if not matched.any():
            return
        weights = np.clip(result["view_confidence"][:, matched], JOINT_MIN_WEIGHT, None)
        points, valid = triangulate(uv[:, matched], P, weights)
        joints_3d, ok = result["joints_3d"].copy(), result["valid"].copy()
        joints_3d[matched] = points.numpy()
        ok[matched] = valid.numpy()
        result["joints_3d"], result["valid"] = joints_3d, ok
        result["joints_matched"] = matched & ok

    def _refined_boxes(
        self, result: dict[str, np.ndarray], P: np.ndarray, shape: tuple[int, ...]
    ) -> np.ndarray | None:
        """Person boxes ``(2, 4)`` xyxy px from a pass's 3D joints projected into both views, or
        None when they cannot be trusted (too few valid finite joints in front of both cameras,
        degenerate or non-finite boxes, a box centre outside the image, a side more than
        ``REFINE_MAX_SCALE_CHANGE`` times larger or smaller than the previous boxes')."""
        X, valid = result["joints_3d"], result["valid"]
        confidence = np.where(valid, result["view_confidence"].mean(axis=0), 0.0)
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            depth = (X @ P[:, 2, :3].T + P[:, 2, 3]) * np.sign(np.linalg.det(P[:, :, :3]))
            usable = valid & np.isfinite(X).all(axis=-1) & (depth > 0).all(axis=-1)
            use = usable & (confidence >= REFINE_MIN_CONFIDENCE)
            if use.sum() < REFINE_MIN_JOINTS:
                use = usable
            if use.sum() < REFINE_MIN_JOINTS:
                return None
            uv = project(X[use][None], P)  # (2, n, 2)
            if not np.isfinite(uv).all():
                return None
            lo, hi = uv.min(axis=1), uv.max(axis=1)
            side = (hi - lo).max(axis=1, keepdims=True)
            if not np.all(side >= 1.0):
                return None
            boxes = np.concatenate(
                [lo - REFINE_BOX_MARGIN * side, hi + REFINE_BOX_MARGIN * side], 1
            )
            prev = result["box"]
            ratio = (boxes[:, 2:] - boxes[:, :2]).max() / (prev[:, 2:] - prev[:, :2]).max()
        if not 1.0 / REFINE_MAX_SCALE_CHANGE <= ratio <= REFINE_MAX_SCALE_CHANGE:
            return None
        if not all(self._box_ok(boxes[v], shape) for v in range(2)):
            return None
        return boxes

    @staticmethod
    def _refinement_ok(old: dict[str, np.ndarray], new: dict[str, np.ndarray]) -> bool:
        """Keep a refined pass unless it is worse by the estimator's own measure, the mean
        per-view joint confidence (lower than the previous pass's), or has non-finite valid
        joints, 2D detections or confidences."""
        return _finite_pass(new) and _pass_confidence(new) >= _pass_confidence(old)

    def _no_person(self, score: float) -> Pose3D:
        J = len(self.joint_names)
        return Pose3D(
            joints_3d=np.full((J, 3), np.nan),
            joints_2d=np.full((2, J, 2), np.nan),
            confidence=np.zeros(J),
            joint_names=list(self.joint_names),
            box=None,
            valid=np.zeros(J, dtype=bool),
            score=float(score),
            source="none",
        )
