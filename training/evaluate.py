"""``python -m training eval``: accuracy of one or more checkpoints on a stereo set (or MPII).

::

    python -m training eval --ckpt runs/cdr/system_best.pt --data data/synth/test \
        [--ckpt runs/baseline/system_best.pt | --compare FILE] [--out runs/eval/test] \
        [--max-samples 500] [--paths full,gt-box] [--bone-prior data/synth/train] [--refine 1] \
        [--stereo-box-matching on|off]

For each model, on the same samples, it reports (Markdown ``eval.md`` + ``eval.json`` + PNGs in
``--out``, and the summary on stdout):

* MPJPE in mm: absolute (left rectified camera frame), root-relative, Procrustes-aligned (PA),
  PCK3D@150 mm; per joint, per action/clip (sequence name without its trailing ``_<number>``)
  and per sequence; by distance (root depth) and by stereo baseline bins;
* 2D error per view in full-resolution pixels, of the network's detections and of the 3D
  result's reprojection; detection rate; time per frame;
* the **triangulation floor** on the same samples: DLT of the ground-truth 2D plus Gaussian
  noise of 0.25, 0.5 and 1 px per coordinate (what a perfect-but-for-noise 2D detector would
  reach with this calibration and these distances);
* two paths: ``full`` -- :class:`~stereo_pose3d.estimator.StereoPoseEstimator` on full frames
  (locate, crop, network, triangulate; with ``--refine N`` also N stereo-consistent box
  refinement passes, labelled ``full+refineN`` in the tables; ``--stereo-box-matching on|off``
  overrides the checkpoint's estimator setting of that name, said in the report's notes), and
  ``gt-box`` -- the same crops
  cut around the ground-truth boxes, which separates localisation errors from pose errors
  (``--estimator flip_test=true``, flip test, and ``--estimator heatmap_decoding=global|local``
  apply to both paths of a system checkpoint);
* optional post-processing of the full path (:mod:`training.postprocess`): bone-length
  refinement with lengths learned from the sequence (causal) or fixed from a training set
  (``--bone-prior``), One-Euro and constant-velocity Kalman temporal filters, and their
  combination, each with its change of MPJPE.

With an MPII folder as ``--data`` it reports PCKh@0.5 (official protocol) of per-view networks
(baseline architecture / pretrain-2d checkpoints).

The metric code (:func:`evaluate_predictions`, :func:`triangulation_floor`) works on plain
arrays, so it can be checked by hand (``test/test_evaluate.py``).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from stereo_pose3d.geometry import project, triangulate
from stereo_pose3d.metrics import mpjpe, pa_mpjpe, pck3d, per_joint_error, procrustes_align
from stereo_pose3d.models.crops import is_rectified_pair
from stereo_pose3d.skeleton import MPII, Skeleton, get_skeleton, skeleton_for_joint_names

__all__ = [
    "GroundTruth",
    "Predictions",
    "add_arguments",
    "evaluate_predictions",
    "main",
    "markdown_report",
    "postprocess_variants",
    "triangulation_floor",
]

FLOOR_SIGMAS = (0.25, 0.5, 1.0)
DISTANCE_EDGES = (0.0, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0, math.inf)


# --------------------------------------------------------------------------------------------
# Data containers
# --------------------------------------------------------------------------------------------


@dataclass
class GroundTruth:
    """Ground truth of N stereo samples (arrays stacked over samples).

    joints_3d (N, J, 3) m, left rectified camera frame; joints_2d (N, 2, J, 2) rectified px
    (``project(joints_3d, P)``); visibility (N, 2, J); P (N, 2, 3, 4); box (N, 2, 4) xyxy px;
    baseline (N,) m; sequence (N,) str; frame (N,) int; time (N,) s; valid_3d (N, J) bool.
    """

    joints_3d: np.ndarray
    joints_2d: np.ndarray
    visibility: np.ndarray
    P: np.ndarray
    box: np.ndarray
    baseline: np.ndarray
    sequence: list[str]
    frame: np.ndarray
    time: np.ndarray
    valid_3d: np.ndarray

    def __len__(self) -> int:
        return len(self.joints_3d)


@dataclass
class Predictions:
    """One model's outputs on the N samples (NaN where no person was found).

    joints_3d (N, J, 3) m; joints_2d (N, 2, J, 2) full px: the network's per-view detections;
    reprojected_2d (N, 2, J, 2) full px: joints_3d projected; confidence (N, 2, J);
    detected (N,) bool; seconds (N,) time per frame.
    """

    joints_3d: np.ndarray
    joints_2d: np.ndarray
    reprojected_2d: np.ndarray
    confidence: np.ndarray
    detected: np.ndarray
    seconds: np.ndarray = field(default_factory=lambda: np.zeros(0))

    @classmethod
    def empty(cls, n: int, j: int) -> Predictions:
        return cls(
            joints_3d=np.full((n, j, 3), np.nan),
            joints_2d=np.full((n, 2, j, 2), np.nan),
            reprojected_2d=np.full((n, 2, j, 2), np.nan),
            confidence=np.zeros((n, 2, j)),
            detected=np.zeros(n, bool),
            seconds=np.full(n, np.nan),
        )

    def with_joints_3d(self, joints_3d: np.ndarray, P: np.ndarray) -> Predictions:
        """A copy with other 3D joints (post-processing); reprojection follows."""
        with np.errstate(all="ignore"):
            reproj = project(joints_3d[:, None], P)
        return Predictions(
            joints_3d, self.joints_2d, reproj, self.confidence, self.detected, self.seconds
        )


def action_of(sequence: str) -> str:
    """``"<clip>_<rig>"`` / ``"<Movement>_<Seq>"`` -> the clip / movement name."""
    head, _, tail = sequence.rpartition("_")
    return head if head and tail.isdigit() else sequence


# --------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------


def _mean_or_nan(x: np.ndarray) -> float:
    x = np.asarray(x, dtype=np.float64)
    return float(x.mean()) if x.size else float("nan")


def _pose_metrics(pred: np.ndarray, gt: np.ndarray, valid: np.ndarray, root: int) -> dict:
    """MPJPE abs / root-relative / PA (mm) of poses (n, J, 3) with joint mask (n, J)."""
    if len(pred) == 0:
        nan = float("nan")
        return {
            "n": 0, "mpjpe_mm": nan, "mpjpe_median_mm": nan, "mpjpe_rr_mm": nan,
            "pa_mpjpe_mm": nan, "pck3d_150": nan,
        }  # fmt: skip
    mask_rr = valid & valid[:, root : root + 1]
    full = valid.all(axis=1)
    # Stereo depth errors are heavy-tailed (a disparity error near a small disparity blows up):
    # the median over samples of each sample's MPJPE says what a typical frame looks like.
    with np.errstate(all="ignore"):
        err = np.where(valid, np.linalg.norm(pred - gt, axis=-1), np.nan)
        per_sample = np.nanmean(err, axis=1) * 1000
    per_sample = per_sample[np.isfinite(per_sample)]
    return {
        "n": len(pred),
        "mpjpe_mm": mpjpe(pred, gt, mask=valid),
        "mpjpe_median_mm": float(np.median(per_sample)) if per_sample.size else float("nan"),
        "mpjpe_rr_mm": mpjpe(pred, gt, root=root, mask=mask_rr),
        "pa_mpjpe_mm": pa_mpjpe(pred[full], gt[full]) if full.any() else float("nan"),
        "pck3d_150": pck3d(pred, gt, 150.0, root=root, mask=mask_rr),
    }


def _bins(
    values: np.ndarray, edges: tuple[float, ...] | np.ndarray
) -> list[tuple[str, np.ndarray]]:
    out = []
    for lo, hi in itertools.pairwise(edges):
        sel = (values >= lo) & (values < hi)
        if sel.any():
            label = f"{lo:g}-{hi:g}" if math.isfinite(hi) else f">={lo:g}"
            out.append((label, sel))
    return out


def distance_bins(gt: GroundTruth, root: int, edges=DISTANCE_EDGES) -> list[tuple[str, np.ndarray]]:
    """Samples grouped by the root joint's depth (m) in the left camera."""
    return _bins(gt.joints_3d[:, root, 2], edges)


def baseline_bins(gt: GroundTruth) -> list[tuple[str, np.ndarray]]:
    """Samples grouped by stereo baseline: one bin per distinct value (to the cm) when there are
    at most 6, else 4 quantile bins."""
    b = np.round(np.asarray(gt.baseline, dtype=np.float64), 2)
    values = np.unique(b[np.isfinite(b)])
    if len(values) == 0:
        return []
    if len(values) <= 6:
        return [(f"{v:.2f}", b == v) for v in values]
    edges = np.quantile(b, [0, 0.25, 0.5, 0.75, 1.0])
    edges[-1] += 1e-9
    return _bins(b, tuple(edges))


def evaluate_predictions(
    gt: GroundTruth, pred: Predictions, skeleton: Skeleton, distance_edges=DISTANCE_EDGES
) -> dict[str, Any]:
    """All metrics of one model on one path (see the module docstring); JSON-serialisable.

    3D metrics are over the samples where the model found a person (``detected``) and over the
    joints it triangulated (``joint_valid_rate``: the share of valid ones); both rates are
    reported beside them.
    """
    root = skeleton.root
    finite = np.isfinite(pred.joints_3d).all(axis=-1)  # (N, J): joints the model output
    found = np.asarray(pred.detected, bool)
    det = found & finite.any(axis=1)
    valid = gt.valid_3d & finite
    gt_valid = gt.valid_3d[found]
    res: dict[str, Any] = {
        "samples": len(gt),
        "detected": int(found.sum()),  # person found
        "detection_rate": float(found.mean()) if len(gt) else float("nan"),
        # Joints the model flagged invalid (degenerate triangulation) are left out of the 3D
        # errors and counted here instead.
        "joint_valid_rate": float(valid[found].sum() / gt_valid.sum()) if gt_valid.any() else 1.0,
    }
    res.update(_pose_metrics(pred.joints_3d[det], gt.joints_3d[det], valid[det], root))
    # Per joint (absolute and root-relative), NaN where a joint is never valid.
    err = per_joint_error(pred.joints_3d[det], gt.joints_3d[det]) * 1000
    err_rr = per_joint_error(pred.joints_3d[det], gt.joints_3d[det], root=root) * 1000
    full = valid[det].all(axis=1)
    err_pa = np.full(err.shape, np.nan)
    if full.any():
        pa = procrustes_align(pred.joints_3d[det][full], gt.joints_3d[det][full])
        err_pa[full] = per_joint_error(pa, gt.joints_3d[det][full]) * 1000
    v = valid[det]
    with np.errstate(all="ignore"):
        res["per_joint"] = {
            name: {
                "mpjpe_mm": _mean_or_nan(err[v[:, j], j]),
                "mpjpe_rr_mm": _mean_or_nan(err_rr[v[:, j] & v[:, root], j]),
                "pa_mpjpe_mm": _mean_or_nan(err_pa[v.all(1), j]),
            }
            for j, name in enumerate(skeleton.joint_names)
        }
    # 2D per view (full-resolution px), over visible joints of detected samples.
    for key, uv in (("err2d_px", pred.joints_2d), ("reproj2d_px", pred.reprojected_2d)):
        e2 = np.linalg.norm(uv[found] - gt.joints_2d[found], axis=-1)  # (n, 2, J)
        vis = gt.visibility[found].astype(bool) & np.isfinite(e2)
        res[key] = [_mean_or_nan(e2[:, view][vis[:, view]]) for view in range(2)]
    # Disparity error (rectified pairs): what depth is made of, Z = f B / d, so dZ = Z^2/(f B) dd.
    # Signed x-difference of the two views against the ground truth's, over joints visible in
    # both views; mean absolute value and the mean (a bias shifts the whole person in depth).
    # Measured on the 3D result's projections over its valid joints (joint stereo matching
    # changes the disparity after detection; invalid joints are not part of the result).
    uv = np.where(finite[found][:, None, :, None], pred.reprojected_2d[found], np.nan)
    uv_gt = gt.joints_2d[found]
    dd = (uv[:, 0, :, 0] - uv[:, 1, :, 0]) - (uv_gt[:, 0, :, 0] - uv_gt[:, 1, :, 0])
    both = gt.visibility[found].astype(bool).all(axis=1) & np.isfinite(dd)
    rect = np.array([is_rectified_pair(P) for P in gt.P[found]], bool)[:, None] & both
    res["disparity_err_px"] = _mean_or_nan(np.abs(dd[rect]))
    res["disparity_bias_px"] = _mean_or_nan(dd[rect])
    # Groups.
    seqs = np.asarray(gt.sequence)
    actions = np.array([action_of(s) for s in seqs])
    for name, labels in (("per_action", actions), ("per_sequence", seqs)):
        table = {}
        for label in sorted(set(labels.tolist())):
            sel = (labels == label) & det
            table[label] = {
                **_pose_metrics(pred.joints_3d[sel], gt.joints_3d[sel], valid[sel], root),
                "samples": int((labels == label).sum()),
            }
        res[name] = table
    res["by_distance"] = [
        {
            "bin": label,
            "samples": int(sel.sum()),
            **_pose_metrics(
                pred.joints_3d[sel & det], gt.joints_3d[sel & det], valid[sel & det], root
            ),
        }
        for label, sel in distance_bins(gt, root, distance_edges)
    ]
    res["by_baseline"] = [
        {
            "bin": label,
            "samples": int(sel.sum()),
            **_pose_metrics(
                pred.joints_3d[sel & det], gt.joints_3d[sel & det], valid[sel & det], root
            ),
        }
        for label, sel in baseline_bins(gt)
    ]
    secs = np.asarray(pred.seconds, dtype=np.float64)
    secs = secs[np.isfinite(secs)]
    res["seconds_per_frame"] = float(secs.mean()) if secs.size else float("nan")
    return res


def triangulation_floor(
    gt: GroundTruth,
    skeleton: Skeleton,
    sigmas=FLOOR_SIGMAS,
    seed: int = 0,
    distance_edges=DISTANCE_EDGES,
) -> dict[str, Any]:
    """DLT of ground-truth 2D + N(0, sigma^2) px per coordinate, for each sigma: the same metrics
    as a model (all samples count as detected). Returns ``{str(sigma): metrics}``."""
    rng = np.random.default_rng(seed)
    out = {}
    clean = project(gt.joints_3d[:, None], gt.P)  # (N, 2, J, 2)
    for sigma in sigmas:
        noisy = clean + rng.normal(0.0, sigma, clean.shape)
        tri = triangulate(torch.from_numpy(noisy), torch.from_numpy(gt.P))
        X = tri.points.numpy()
        X = np.where(tri.valid.numpy()[..., None], X, np.nan)
        ok = np.isfinite(X).all(axis=(1, 2))
        pred = Predictions(
            joints_3d=np.where(ok[:, None, None], X, np.nan),
            joints_2d=noisy,
            reprojected_2d=project(X[:, None], gt.P),
            confidence=np.ones(gt.visibility.shape),
            detected=ok,
        )
        res = evaluate_predictions(gt, pred, skeleton, distance_edges)
        res["sigma_px"] = float(sigma)
        out[f"{sigma:g}"] = res
    return out


# --------------------------------------------------------------------------------------------
# Post-processing variants
# --------------------------------------------------------------------------------------------


# Constant-velocity Kalman filter (accel_std m/s^2, meas_std m), chosen by tune-temporal.
KALMAN_PARAMS = (100.0, 0.1)


def _sequences(gt: GroundTruth) -> list[np.ndarray]:
    """Sample indices of each sequence, in time order."""
    groups: dict[str, list[int]] = defaultdict(list)
    for i, s in enumerate(gt.sequence):
        groups[s].append(i)
    return [
        np.array(sorted(idx, key=lambda i: (gt.time[i], gt.frame[i]))) for idx in groups.values()
    ]


def postprocess_variants(
    gt: GroundTruth,
    pred: Predictions,
    skeleton: Skeleton,
    bone_prior: np.ndarray | None = None,
    euro: tuple[float, float] | None = None,
    kalman: tuple[float, float] = KALMAN_PARAMS,
    max_dt: float = 0.1,
) -> tuple[dict[str, Predictions], list[str]]:
    """The post-processed versions of ``pred`` to compare (name -> Predictions), and notes.

    ``bone_seq``: bone lengths learned causally from the sequence's own estimates, refinement
    against the 2D detections; ``bone_prior``: the same with fixed lengths ``bone_prior (B,)``;
    ``one_euro`` / ``kalman_cv``: temporal filters of the raw 3D; ``bone_seq+kalman_cv``.
    Temporal filters are skipped (with a note) when the sequences are not continuous video
    (median time step above ``max_dt`` seconds, e.g. the synthetic set's sparse frames). Their
    output keeps only the joints of their input (the Kalman filter predicts through gaps), so
    each variant is scored on the same joints. ``euro``: (min_cutoff Hz, beta s/m), default the
    node's; ``kalman``: (accel_std m/s^2, meas_std m), both chosen by ``tune-temporal``.
    """
    from stereo_pose3d.pipeline import SMOOTHING_BETA, SMOOTHING_MIN_CUTOFF
    from training.postprocess import (
        refine_bone_lengths,
        sequence_bone_lengths,
        temporal_filter,
    )

    euro = euro or (SMOOTHING_MIN_CUTOFF, SMOOTHING_BETA)

    bones = skeleton.bones
    X = np.where(pred.detected[:, None, None], pred.joints_3d, np.nan)
    seqs = _sequences(gt)
    variants: dict[str, Predictions] = {"none": pred}

    def refine(lengths: np.ndarray) -> np.ndarray:
        return refine_bone_lengths(X, bones, lengths, pred.joints_2d, gt.P, pred.confidence)

    seq_lengths = np.full((len(gt), len(bones)), np.nan)
    for idx in seqs:
        seq_lengths[idx] = sequence_bone_lengths(X[idx], bones, causal=True)
    X_bone = refine(seq_lengths)
    variants["bone_seq"] = pred.with_joints_3d(X_bone, gt.P)
    if bone_prior is not None:
        variants["bone_prior"] = pred.with_joints_3d(refine(np.asarray(bone_prior)), gt.P)

    steps = np.concatenate([np.diff(gt.time[idx]) for idx in seqs if len(idx) > 1] or [[]])
    notes = []
    if steps.size == 0 or float(np.median(steps)) > max_dt:
        median = float(np.median(steps)) if steps.size else float("nan")
        notes.append(
            f"temporal filters skipped: the sequences are not continuous video (median time "
            f"step {median:.3g} s > {max_dt:g} s); evaluate a continuous recording for them"
        )
        return variants, notes
    for name, source, kind, params in (
        ("one_euro", X, "one_euro", euro),
        ("kalman_cv", X, "kalman_cv", kalman),
        ("bone_seq+kalman_cv", X_bone, "kalman_cv", kalman),
    ):
        filtered = temporal_filter(source, gt.time, seqs, kind, params)
        variants[name] = pred.with_joints_3d(filtered, gt.P)
    return variants, notes


# --------------------------------------------------------------------------------------------
# Running models
# --------------------------------------------------------------------------------------------


class ModelRunner:
    """A checkpoint ready to predict: the estimator (system checkpoints: both paths) or just the
    pose network (pose-only checkpoints: the ``gt-box`` path only)."""

    def __init__(
        self,
        path: str | Path,
        device: str = "auto",
        name: str | None = None,
        estimator_settings: dict[str, Any] | None = None,
    ) -> None:
        """``estimator_settings``: overrides of the checkpoint's estimator settings for the full
        path (keys of ``DEFAULT_ESTIMATOR``, e.g. ``refine_iterations``,
        ``stereo_box_matching``); the checkpoint's own settings otherwise."""
        from stereo_pose3d.checkpoint import load_checkpoint
        from stereo_pose3d.estimator import StereoPoseEstimator, resolve_device

        self.path = Path(path)
        self.name = name or self.path.stem
        self._tracked_sequence: str | None = None
        self.device = resolve_device(device)
        self.estimator = None
        try:
            ckpt = load_checkpoint(self.path)
            architecture = ckpt.config["architecture"]
            self.provenance = ckpt.provenance
        except ValueError:
            architecture, self.provenance = "training", {}
        if architecture == "system":
            self.estimator = StereoPoseEstimator.from_checkpoint(
                self.path, device=str(self.device), **(estimator_settings or {})
            )
            self.pose_net = self.estimator.pose_net
            self.settings = dict(self.estimator.settings)
            self.config = ckpt.config
        else:
            from stereo_pose3d.models.config import DEFAULT_ESTIMATOR
            from training.train import load_node_model

            self.pose_net = load_node_model(self.path, "pose").to(self.device)
            self.settings = dict(DEFAULT_ESTIMATOR)
            self.config = {"pose": self.pose_net.config}
        pose_cfg = self.pose_net.config
        if pose_cfg["architecture"] == "locator":
            raise ValueError(
                f"{self.path}: holds only a person locator, no pose network to evaluate "
                "(give a pose or system checkpoint)"
            )
        self.architecture = pose_cfg["architecture"]
        self.refine_iterations = (
            self.estimator.refine_iterations if self.estimator is not None else 0
        )
        self.stereo_box_matching = (
            self.estimator.stereo_box_matching if self.estimator is not None else False
        )
        self.joint_names = list(pose_cfg["joint_names"])
        self.crop_size = tuple(pose_cfg["input_size"])
        self.mean = pose_cfg["normalization"]["mean"]
        self.std = pose_cfg["normalization"]["std"]

    @property
    def paths(self) -> tuple[str, ...]:
        return ("full", "gt-box") if self.estimator is not None else ("gt-box",)

    def predict_full(
        self, lefts, rights, P, out: Predictions, index: np.ndarray, sequences=None
    ) -> None:
        """The estimator on full frames. With its ``tracking`` setting on and ``sequences`` (the
        sequence name of each pair; pairs in time order) the pairs run one at a time as the node
        runs them, the tracker reset at each new sequence; otherwise in one batch."""
        t0 = time.perf_counter()
        if self.settings.get("tracking") and sequences is not None:
            poses = []
            for i in range(len(lefts)):
                if sequences[i] != self._tracked_sequence:
                    self.estimator.reset()
                    self._tracked_sequence = sequences[i]
                poses.append(self.estimator.estimate(lefts[i], rights[i], P[i, 0], P[i, 1]))
        else:
            poses = self.estimator.estimate_batch(lefts, rights, list(P[:, 0]), list(P[:, 1]))
        dt = (time.perf_counter() - t0) / max(1, len(poses))
        for k, pose in zip(index, poses, strict=True):
            out.seconds[k] = dt
            if not pose.detected:
                continue
            out.detected[k] = True
            out.joints_3d[k] = np.where(pose.valid[:, None], pose.joints_3d, np.nan)
            out.reprojected_2d[k] = pose.joints_2d
            out.joints_2d[k] = pose.joints_2d_detected
            out.confidence[k] = pose.view_confidence

    @torch.inference_mode()
    def predict_boxes(self, lefts, rights, P, boxes, out: Predictions, index: np.ndarray) -> None:
        """Crops around given boxes ``(n, 2, 4)`` (the estimator's crop rule), network, DLT."""
        from stereo_pose3d.models.crops import (
            is_rectified_pair,
            make_crop,
            normalize_image,
            stereo_boxes,
        )

        t0 = time.perf_counter()
        crops, P_crop, A_all = [], [], []
        for i in range(len(lefts)):
            squares = stereo_boxes(boxes[i], is_rectified_pair(P[i]))
            side = squares[0, 2] - squares[0, 0]
            side = max(
                side * self.settings["crop_scale"],
                self.settings["min_box_fraction"] * lefts[i].shape[0],
            )
            centre = (squares[:, :2] + squares[:, 2:]) / 2
            crop_boxes = np.concatenate([centre - side / 2, centre + side / 2], axis=1)
            for v, image in enumerate((lefts[i], rights[i])):
                crop, Pc, A = make_crop(image, P[i, v], crop_boxes[v], self.crop_size)
                crops.append(normalize_image(crop, self.mean, self.std))
                P_crop.append(Pc)
                A_all.append(A)
        n = len(lefts)
        x = torch.stack(crops).to(self.device).unflatten(0, (n, 2))
        P_t = torch.as_tensor(np.stack(P_crop), dtype=torch.float32, device=self.device)
        P_t = P_t.view(n, 2, 3, 4)
        # The estimator's flip_test and heatmap_decoding settings, as on the full path.
        net_out = self.pose_net.forward_2d(
            x,
            P_t,
            flip_test=self.settings.get("flip_test", False),
            decoding=self.settings.get("heatmap_decoding", "global"),
        )
        X, valid = self.pose_net.triangulate(net_out["joints_2d"], net_out["confidence"], P_t)
        X = X.double().cpu().numpy()
        valid = valid.cpu().numpy()
        uv = net_out["joints_2d"].float().cpu().numpy().astype(np.float64)
        conf = net_out["confidence"].float().cpu().numpy()
        A_all = np.stack(A_all).reshape(n, 2, 3, 3)
        dt = (time.perf_counter() - t0) / max(1, n)
        for k, i in enumerate(index):
            out.detected[i] = True
            out.seconds[i] = dt
            out.joints_3d[i] = np.where(valid[k][:, None], X[k], np.nan)
            out.reprojected_2d[i] = project(X[k][None], P[k])
            out.confidence[i] = conf[k]
            for v in range(2):
                inv = np.linalg.inv(A_all[k, v])
                out.joints_2d[i, v] = uv[k, v] @ inv[:2, :2].T + inv[:2, 2]


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------


def _images_of(sample: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    if "image_left" in sample:
        return np.asarray(sample["image_left"]), np.asarray(sample["image_right"])
    if "left" in sample:
        return np.asarray(sample["left"]), np.asarray(sample["right"])
    return np.asarray(sample["images"][0]), np.asarray(sample["images"][1])


def rectify_image(image: np.ndarray, K, D, R, P, model: str) -> np.ndarray:
    """Raw camera image -> rectified image of ``P`` (same size)."""
    import cv2

    h, w = image.shape[:2]
    K, D, R, P = (np.asarray(a, dtype=np.float64) for a in (K, D, R, P))
    if model == "equidistant":
        m1, m2 = cv2.fisheye.initUndistortRectifyMap(K, D[:4], R, P[:, :3], (w, h), cv2.CV_32FC1)
    else:
        m1, m2 = cv2.initUndistortRectifyMap(K, D, R, P[:, :3], (w, h), cv2.CV_32FC1)
    return cv2.remap(image, m1, m2, cv2.INTER_LINEAR)


def select_samples(dataset: Any, max_samples: int | None) -> list[int]:
    """Indices to evaluate: everything, or contiguous frames from the start of every sequence
    (so that temporal filters still see consecutive frames) adding up to ``max_samples``."""
    n = len(dataset)
    if not max_samples or max_samples >= n:
        return list(range(n))
    keys = _sample_keys(dataset)
    groups: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for i, (seq, frame) in enumerate(keys):
        groups[seq].append((frame, i))
    names = sorted(groups)
    if len(names) > max_samples:  # more sequences than samples: evenly spaced sequences
        pick = np.linspace(0, len(names) - 1, max_samples).round().astype(int)
        names = [names[k] for k in sorted(set(pick.tolist()))]
    per_seq = max(1, math.ceil(max_samples / len(names)))
    chosen: list[int] = []
    for seq in names:
        chosen.extend(i for _, i in sorted(groups[seq])[:per_seq])
    return sorted(chosen[:max_samples]) if len(chosen) > max_samples else sorted(chosen)


def _sample_keys(dataset: Any) -> list[tuple[str, int]]:
    """(sequence, frame) of every sample, without decoding anything when the reader lists
    ``samples`` with ``sequence``/``frame`` attributes (``StereoDataset``)."""
    refs = getattr(dataset, "samples", None)
    if (
        refs is not None
        and len(refs) == len(dataset)
        and all(hasattr(r, "sequence") and hasattr(r, "frame") for r in refs)
    ):
        return [(str(r.sequence), int(r.frame)) for r in refs]
    return [(str(s.get("sequence", "")), int(s.get("frame", i))) for i, s in enumerate(dataset)]


def load_ground_truth(
    dataset: Any, indices: list[int], skeleton: Skeleton
) -> tuple[GroundTruth, list[dict[str, Any]]]:
    """Labels of the chosen samples (images are read again per batch to bound memory)."""
    rows: list[dict[str, Any]] = []
    for i in indices:
        s = dataset[i]
        P = np.stack([np.asarray(s["P_left"], np.float64), np.asarray(s["P_right"], np.float64)])
        X = np.asarray(s["joints_3d_cam"], np.float64)
        rows.append(
            {
                "joints_3d": X,
                "joints_2d": project(X[None], P),
                "visibility": np.asarray(s["visibility"]).astype(bool).reshape(2, -1),
                "P": P,
                "box": rectified_boxes(s),
                "baseline": float(s.get("baseline", np.nan)),
                "sequence": str(s.get("sequence", "")),
                "frame": int(s.get("frame", i)),
                "time": float(s.get("time", np.nan)),
            }
        )
    frames = np.array([r["frame"] for r in rows])
    times = np.array([r["time"] for r in rows], dtype=np.float64)
    times = np.where(np.isfinite(times), times, frames / 30.0)
    joints = np.stack([r["joints_3d"] for r in rows])
    gt = GroundTruth(
        joints_3d=np.nan_to_num(joints),
        joints_2d=np.stack([r["joints_2d"] for r in rows]),
        visibility=np.stack([r["visibility"] for r in rows]),
        P=np.stack([r["P"] for r in rows]),
        box=np.stack([r["box"] for r in rows]),
        baseline=np.array([r["baseline"] for r in rows]),
        sequence=[r["sequence"] for r in rows],
        frame=frames,
        time=times,
        valid_3d=np.isfinite(joints).all(-1),
    )
    if gt.joints_3d.shape[1] != skeleton.num_joints:
        raise ValueError(f"dataset has {gt.joints_3d.shape[1]} joints, skeleton {skeleton.name}")
    return gt, rows


def rectified_images(sample: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """The sample's two images, rectified when stored raw (``rectified`` False)."""
    left, right = _images_of(sample)
    if bool(sample.get("rectified", True)):
        return left, right
    model = str(sample.get("distortion_model", "plumb_bob"))
    out = []
    for image, side in ((left, "left"), (right, "right")):
        K, D, R, P = (sample[f"{k}_{side}"] for k in ("K", "D", "R", "P"))
        out.append(rectify_image(image, K, D, R, P, model))
    return out[0], out[1]


def rectified_sample(sample: dict[str, Any]) -> dict[str, Any]:
    """A raw sample (``rectified`` False) as if stored rectified: images remapped, ``joints_2d``
    = the projection of ``joints_3d_cam`` with P, boxes = the rectified boxes' bounds.
    Rectified samples are returned unchanged."""
    if bool(sample.get("rectified", True)):
        return sample
    out = dict(sample)
    out["left"], out["right"] = rectified_images(sample)
    for key in ("image_left", "image_right", "images"):
        out.pop(key, None)
    P = np.stack([np.asarray(sample["P_left"], np.float64), np.asarray(sample["P_right"])])
    out["joints_2d"] = project(np.asarray(sample["joints_3d_cam"], np.float64)[None], P)
    out["box"] = rectified_boxes(sample)
    out["rectified"] = True
    return out


def rectified_boxes(sample: dict[str, Any]) -> np.ndarray:
    """The sample's boxes ``(2, 4)`` in rectified pixels (bounds of the mapped box outlines)."""
    from stereo_pose3d.geometry import undistort_points

    boxes = np.asarray(sample["box"], np.float64).reshape(2, 4).copy()
    if bool(sample.get("rectified", True)):
        return boxes
    model = str(sample.get("distortion_model", "plumb_bob"))
    t = np.linspace(0.0, 1.0, 5)
    for v, side in enumerate(("left", "right")):
        x1, y1, x2, y2 = boxes[v]
        edge = np.concatenate(
            [
                np.stack([x1 + t * (x2 - x1), np.full_like(t, y1)], 1),
                np.stack([x1 + t * (x2 - x1), np.full_like(t, y2)], 1),
                np.stack([np.full_like(t, x1), y1 + t * (y2 - y1)], 1),
                np.stack([np.full_like(t, x2), y1 + t * (y2 - y1)], 1),
            ]
        )
        K, D, R, Pv = (sample[f"{k}_{side}"] for k in ("K", "D", "R", "P"))
        uv = undistort_points(edge, K, D, model, R=R, P=Pv)
        boxes[v] = np.concatenate([uv.min(0), uv.max(0)])
    return boxes


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


def _fmt(x: Any, digits: int = 1) -> str:
    if x is None:
        return "-"
    if isinstance(x, int | np.integer):
        return str(int(x))
    try:
        x = float(x)
    except (TypeError, ValueError):
        return str(x)
    return "-" if not math.isfinite(x) else f"{x:.{digits}f}"


def _table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += [
        "| " + " | ".join(_fmt(c) if not isinstance(c, str) else c for c in r) + " |" for r in rows
    ]
    return "\n".join(lines)


def markdown_report(report: dict[str, Any]) -> str:
    """The Markdown tables of an evaluation report (``eval.md``)."""
    out = [f"# Evaluation on `{report['data']['path']}`", ""]
    d = report["data"]
    out.append(
        f"{d['samples']} samples, {d['sequences']} sequences, skeleton {d['skeleton']}; "
        f"source {d.get('source')}, split {d.get('split')}."
    )
    out += ["", "## Summary (mm, px)", ""]
    header = [
        "model",
        "path",
        "detected",
        "valid joints %",
        "MPJPE",
        "median",
        "root-rel.",
        "PA-MPJPE",
        "PCK3D@150",
        "2D det. L/R px",
        "reproj. L/R px",
        "disparity err. px",
        "ms/frame",
    ]
    rows = []
    for name, m in report["models"].items():
        refine = m.get("refine_iterations") or 0
        for path, r in m["paths"].items():
            rows.append(
                [
                    name,
                    f"{path}+refine{refine}" if path == "full" and refine else path,
                    f"{r['detected']}/{r['samples']}",
                    100 * r["joint_valid_rate"],
                    r["mpjpe_mm"],
                    r.get("mpjpe_median_mm", float("nan")),
                    r["mpjpe_rr_mm"],
                    r["pa_mpjpe_mm"],
                    r["pck3d_150"],
                    f"{_fmt(r['err2d_px'][0])}/{_fmt(r['err2d_px'][1])}",
                    f"{_fmt(r['reproj2d_px'][0])}/{_fmt(r['reproj2d_px'][1])}",
                    r.get("disparity_err_px", float("nan")),
                    1000 * r["seconds_per_frame"],
                ]
            )
    for sigma, r in report["floor"].items():
        rows.append(
            [
                f"floor: GT 2D + {sigma} px",
                "DLT",
                f"{r['detected']}/{r['samples']}",
                100 * r["joint_valid_rate"],
                r["mpjpe_mm"],
                r.get("mpjpe_median_mm", float("nan")),
                r["mpjpe_rr_mm"],
                r["pa_mpjpe_mm"],
                r["pck3d_150"],
                "-",
                "-",
                r.get("disparity_err_px", float("nan")),
                "-",
            ]
        )
    out.append(_table(header, rows))

    if any(m.get("postprocess") for m in report["models"].values()):
        out += ["", "## Post-processing (full path; gt-box for pose-only checkpoints)", ""]
        rows = []
        for name, m in report["models"].items():
            base = (m.get("postprocess") or {}).get("none", {})
            for variant, r in (m.get("postprocess") or {}).items():
                delta = r["mpjpe_mm"] - base.get("mpjpe_mm", float("nan"))
                delta_rr = r["mpjpe_rr_mm"] - base.get("mpjpe_rr_mm", float("nan"))
                rows.append(
                    [
                        name,
                        variant,
                        r["mpjpe_mm"],
                        delta,
                        r["mpjpe_rr_mm"],
                        delta_rr,
                        r["pa_mpjpe_mm"],
                    ]
                )
        out.append(
            _table(["model", "variant", "MPJPE", "change", "root-rel.", "change", "PA-MPJPE"], rows)
        )

    main_path = {name: _main_path(m) for name, m in report["models"].items()}
    floor1 = report["floor"].get("1")
    for key, title in (
        ("by_distance", "distance (root depth, m)"),
        ("by_baseline", "baseline (m)"),
    ):
        out += ["", f"## MPJPE by {title}", ""]
        labels = [b["bin"] for b in (floor1 or next(iter(report["floor"].values())))[key]]
        header = ["bin", "samples"] + [f"{n} ({p})" for n, p in main_path.items()]
        header += [f"floor {s} px" for s in report["floor"]]
        rows = []
        for i, label in enumerate(labels):
            row: list[Any] = [label, (floor1 or {}).get(key, [{}] * len(labels))[i].get("samples")]
            for name, p in main_path.items():
                bins = {b["bin"]: b for b in report["models"][name]["paths"][p][key]}
                row.append(bins.get(label, {}).get("mpjpe_mm"))
            for r in report["floor"].values():
                row.append(r[key][i]["mpjpe_mm"])
            rows.append(row)
        out.append(_table(header, rows))

    out += ["", "## MPJPE per action (root-relative in parentheses)", ""]
    actions = sorted(
        {a for m in report["models"].values() for p in m["paths"].values() for a in p["per_action"]}
    )
    header = ["action"] + [f"{n} ({p})" for n, p in main_path.items()]
    rows = []
    for a in actions:
        row = [a]
        for name, p in main_path.items():
            r = report["models"][name]["paths"][p]["per_action"].get(a, {})
            row.append(f"{_fmt(r.get('mpjpe_mm'))} ({_fmt(r.get('mpjpe_rr_mm'))})")
        rows.append(row)
    out.append(_table(header, rows))

    out += ["", "## MPJPE per joint (root-relative in parentheses)", ""]
    joints = report["data"]["joint_names"]
    header = ["joint"] + [f"{n} ({p})" for n, p in main_path.items()]
    if floor1:
        header.append("floor 1 px")
    rows = []
    for j in joints:
        row = [j]
        for name, p in main_path.items():
            r = report["models"][name]["paths"][p]["per_joint"][j]
            row.append(f"{_fmt(r['mpjpe_mm'])} ({_fmt(r['mpjpe_rr_mm'])})")
        if floor1:
            row.append(_fmt(floor1["per_joint"][j]["mpjpe_mm"]))
        rows.append(row)
    out.append(_table(header, rows))
    if report.get("notes"):
        out += ["", "Notes:", ""] + [f"* {n}" for n in report["notes"]]
    if report.get("figures"):
        out += ["", "## Figures", ""]
        out += [
            f"![{Path(f).stem}]({Path(f).relative_to(report['out'])})" for f in report["figures"]
        ]
    return "\n".join(out) + "\n"


def _main_path(model_report: dict[str, Any]) -> str:
    return "full" if "full" in model_report["paths"] else next(iter(model_report["paths"]))


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--ckpt",
        action="append",
        type=Path,
        required=True,
        help="checkpoint to evaluate (system file for the full path; repeat to compare models)",
    )
    parser.add_argument(
        "--compare",
        action="append",
        type=Path,
        default=[],
        help="another checkpoint to compare against (same as another --ckpt)",
    )
    parser.add_argument("--name", action="append", default=[], help="label of each checkpoint")
    parser.add_argument("--data", type=Path, required=True, help="stereo dataset (or MPII) folder")
    parser.add_argument("--out", type=Path, help="output folder (default runs/eval/<data name>)")
    parser.add_argument("--max-samples", type=int, help="evaluate at most this many samples")
    parser.add_argument("--paths", default="full,gt-box", help="full, gt-box or both")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--figures", type=int, default=3, help="sample figures (0: none)")
    parser.add_argument(
        "--postprocess",
        choices=("auto", "none"),
        default="auto",
        help="evaluate bone-length and temporal post-processing of the full path",
    )
    parser.add_argument(
        "--bone-prior",
        type=Path,
        help="dataset whose ground-truth median bone lengths are the fixed prior",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the floor's noise")
    parser.add_argument(
        "--refine",
        type=int,
        metavar="N",
        help="stereo-consistent box refinement passes of the full path (estimator "
        "refine_iterations; default: the checkpoint's setting, 0)",
    )
    parser.add_argument(
        "--estimator",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override an estimator setting of the full path, e.g. max_depth_spread=0 "
        "(YAML value; keys: stereo_pose3d.models.config.DEFAULT_ESTIMATOR); NAME:KEY=VALUE "
        "applies it to the model of that --name only (the same checkpoint twice with other "
        "settings: --ckpt W --name a --ckpt W --name b --estimator b:flip_test=true)",
    )
    parser.add_argument(
        "--stereo-box-matching",
        choices=("on", "off"),
        help="place the full path's right box by NCC matching of the left box along its rows "
        "(estimator stereo_box_matching; default: the checkpoint's setting)",
    )


def _items_for(items: list[str], name: str, names: list[str]) -> list[str]:
    """The ``--estimator`` items that apply to the model ``name``: the plain ``KEY=VALUE`` ones
    and the ``NAME:KEY=VALUE`` ones of that name (without the prefix). ValueError for a prefix
    that names none of ``names``."""
    out = []
    for item in items:
        key = item.partition("=")[0]
        if ":" not in key:
            out.append(item)
            continue
        scope, _, rest = item.partition(":")
        if scope not in names:
            raise ValueError(f"--estimator {item!r}: no model is named {scope!r} ({names})")
        if scope == name:
            out.append(rest)
    return out


def _estimator_settings(
    items: list[str], refine: int | None = None, stereo_box_matching: str | None = None
) -> dict[str, Any]:
    """The full path's estimator overrides: ``--estimator`` items ``["key=value", ...]``
    (values parsed as YAML; ValueError names a bad item), then the shortcuts ``--refine N`` and
    ``--stereo-box-matching on|off`` (None: not given, the checkpoint's setting stays)."""
    from stereo_pose3d.models.config import parse_estimator_settings

    out = parse_estimator_settings(items)
    if refine is not None:
        out["refine_iterations"] = refine
    if stereo_box_matching is not None:
        out["stereo_box_matching"] = stereo_box_matching == "on"
    return out


def main(args: argparse.Namespace) -> int:
    try:
        return _main(args)
    except (ValueError, FileNotFoundError, KeyError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _main(args: argparse.Namespace) -> int:
    ckpts = list(args.ckpt) + list(args.compare or [])
    names = list(args.name or [])
    names += [None] * (len(ckpts) - len(names))
    for flag, folder in (("--data", args.data), ("--bone-prior", args.bone_prior)):
        if folder is not None and not folder.is_dir():
            raise FileNotFoundError(f"{flag} {folder}: no such folder")
    out_dir = args.out or Path("runs/eval") / args.data.name  # created once results exist
    if not (args.data / "dataset.json").is_file():
        return _main_mpii(args, ckpts, names, out_dir)
    from training.data.stereo_dataset import StereoDataset

    info = json.loads((args.data / "dataset.json").read_text())
    dataset = StereoDataset(args.data)
    labels_only = StereoDataset(args.data, load_images=False, validate=False)
    runners = [
        ModelRunner(
            p,
            args.device,
            n,
            _estimator_settings(
                _items_for(getattr(args, "estimator", None) or [], n, [x for x in names if x]),
                refine=getattr(args, "refine", None),
                stereo_box_matching=getattr(args, "stereo_box_matching", None),
            ),
        )
        for p, n in zip(ckpts, names, strict=True)
    ]
    _dedupe_names(runners)
    skeleton = (
        get_skeleton(info["skeleton"])
        if "skeleton" in info
        else skeleton_for_joint_names(runners[0].joint_names)
    )
    for r in runners:
        if r.joint_names != list(skeleton.joint_names):
            raise ValueError(f"{r.path}: joints {r.joint_names} do not match the dataset's")
    indices = select_samples(dataset, args.max_samples)
    gt, _ = load_ground_truth(labels_only, indices, skeleton)
    wanted = [p.strip() for p in args.paths.split(",") if p.strip()]
    preds = {
        (r.name, p): Predictions.empty(len(gt), skeleton.num_joints)
        for r in runners
        for p in r.paths
        if p in wanted
    }
    if not preds:
        raise ValueError(f"no model can run the paths {wanted}")
    fig_idx = (
        set(np.linspace(0, len(gt) - 1, args.figures).round().astype(int).tolist())
        if args.figures
        else set()
    )
    fig_images: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    from tqdm import tqdm

    for start in tqdm(range(0, len(gt), args.batch_size), desc="eval", dynamic_ncols=True):
        batch = np.arange(start, min(len(gt), start + args.batch_size))
        samples = [dataset[indices[i]] for i in batch]
        images = [rectified_images(s) for s in samples]
        lefts, rights = [im[0] for im in images], [im[1] for im in images]
        for k, i in enumerate(batch):
            if i in fig_idx:
                fig_images[int(i)] = images[k]
        P = gt.P[batch]
        for r in runners:
            if (r.name, "full") in preds:
                seqs = [gt.sequence[i] for i in batch]
                r.predict_full(lefts, rights, P, preds[(r.name, "full")], batch, seqs)
            if (r.name, "gt-box") in preds:
                r.predict_boxes(lefts, rights, P, gt.box[batch], preds[(r.name, "gt-box")], batch)

    report: dict[str, Any] = {
        "data": {
            "path": str(args.data),
            "samples": len(gt),
            "sequences": len(set(gt.sequence)),
            "skeleton": skeleton.name,
            "joint_names": list(skeleton.joint_names),
            "source": info.get("source"),
            "split": info.get("split"),
        },
        "out": str(out_dir),
        "floor": triangulation_floor(gt, skeleton, FLOOR_SIGMAS, args.seed),
        "models": {},
    }
    bone_prior = None
    if args.bone_prior:
        bone_prior = _bone_prior(args.bone_prior, skeleton)
        report["bone_prior"] = {"path": str(args.bone_prior), "lengths_m": bone_prior.tolist()}
    for r in runners:
        entry: dict[str, Any] = {
            "checkpoint": str(r.path),
            "architecture": r.architecture,
            "provenance": {
                k: r.provenance.get(k) for k in ("dataset", "split", "git_commit", "metrics")
            },
            "paths": {},
            "refine_iterations": r.refine_iterations,
            "stereo_box_matching": r.stereo_box_matching,
            "estimator_settings": dict(r.settings),
        }
        full = (r.name, "full") in preds
        setting_notes: list[str] = []
        spread = r.settings.get("max_depth_spread")
        if r.estimator is not None and spread and full:
            setting_notes.append(
                f"{r.name}: full path with depth gating (estimator max_depth_spread {spread:g} m: "
                "joints this far from the person's median depth are invalid)"
            )
        if r.refine_iterations and full:
            setting_notes.append(
                f"{r.name}: full path with {r.refine_iterations} stereo-consistent box "
                "refinement pass(es) (estimator refine_iterations; full+refineN in the tables)"
            )
        if r.settings.get("flip_test") and r.estimator is not None:
            setting_notes.append(
                f"{r.name}: flip test on both paths (estimator flip_test: the network also runs "
                "on the mirrored crops, heatmaps averaged)"
            )
        if r.settings.get("tracking") and full:
            setting_notes.append(
                f"{r.name}: full path with tracking (pairs one at a time in time order, the "
                "tracker reset at each sequence)"
            )
        if r.stereo_box_matching and full:
            setting_notes.append(
                f"{r.name}: full path with stereo box matching (estimator stereo_box_matching: "
                "the right box is the left box shifted by its NCC disparity along the rows)"
            )
        if r.settings.get("joint_stereo_matching") and full:
            setting_notes.append(
                f"{r.name}: full path with joint stereo matching (estimator "
                "joint_stereo_matching: each joint's disparity from NCC of a patch around it "
                "along the rows; the gt-box path is the network alone, without it)"
            )
        if setting_notes:
            report.setdefault("notes", []).extend(setting_notes)
        for p in r.paths:
            if (r.name, p) in preds:
                entry["paths"][p] = evaluate_predictions(gt, preds[(r.name, p)], skeleton)
        main_p = _main_path(entry) if entry["paths"] else None
        if args.postprocess == "auto" and main_p is not None:
            variants, notes = postprocess_variants(
                gt, preds[(r.name, main_p)], skeleton, bone_prior
            )
            entry["postprocess_path"] = main_p
            report.setdefault("notes", [])
            report["notes"] += [n for n in notes if n not in report["notes"]]
            entry["postprocess"] = {
                v: {k: res[k] for k in ("mpjpe_mm", "mpjpe_rr_mm", "pa_mpjpe_mm", "pck3d_150")}
                for v, pr in variants.items()
                for res in [evaluate_predictions(gt, pr, skeleton)]
            }
        report["models"][r.name] = entry
    out_dir.mkdir(parents=True, exist_ok=True)
    report["figures"] = [
        str(f) for f in _figures(report, gt, preds, runners, skeleton, fig_images, out_dir)
    ]
    (out_dir / "eval.json").write_text(json.dumps(_jsonable(report), indent=2) + "\n")
    text = markdown_report(report)
    (out_dir / "eval.md").write_text(text)
    print(text)
    print(
        f"wrote {out_dir / 'eval.md'}, {out_dir / 'eval.json'} and {len(report['figures'])} figures"
    )
    return 0


def _dedupe_names(runners: list[ModelRunner]) -> None:
    seen: dict[str, int] = {}
    for r in runners:
        if r.name in seen:
            seen[r.name] += 1
            r.name = f"{r.name}#{seen[r.name]}"
        else:
            seen[r.name] = 1


def _bone_prior(root: Path, skeleton: Skeleton, max_samples: int = 2000) -> np.ndarray:
    from training.data.stereo_dataset import StereoDataset
    from training.postprocess import median_bone_lengths

    ds = StereoDataset(root)
    idx = np.linspace(0, len(ds) - 1, min(len(ds), max_samples)).round().astype(int)
    X = np.stack([np.asarray(ds[int(i)]["joints_3d_cam"], np.float64) for i in idx])
    return median_bone_lengths(np.nan_to_num(X), skeleton.bones, np.isfinite(X).all(-1))


def _figures(report, gt, preds, runners, skeleton, fig_images, out_dir: Path) -> list[Path]:
    from training import figures

    paths: list[Path] = []
    fig_dir = out_dir / "figures"
    main = {r.name: _main_path(report["models"][r.name]) for r in runners}
    per_joint = {
        f"{n} ({p})": np.array(
            [
                report["models"][n]["paths"][p]["per_joint"][j]["mpjpe_mm"]
                for j in skeleton.joint_names
            ]
        )
        for n, p in main.items()
    }
    floor = report["floor"].get("1")
    floor_pj = None
    if floor:
        floor_pj = np.array([floor["per_joint"][j]["mpjpe_mm"] for j in skeleton.joint_names])
    paths.append(
        figures.per_joint_bars(
            per_joint, skeleton.joint_names, fig_dir / "per_joint.png", floor=floor_pj
        )
    )
    if floor:
        labels = [b["bin"] for b in floor["by_distance"]]
        series = {
            f"{n} ({p})": [
                {b["bin"]: b for b in report["models"][n]["paths"][p]["by_distance"]}.get(
                    lab, {}
                ).get("mpjpe_mm", np.nan)
                for lab in labels
            ]
            for n, p in main.items()
        }
        for s, r in report["floor"].items():
            series[f"floor {s} px"] = [b["mpjpe_mm"] for b in r["by_distance"]]
        paths.append(figures.error_by_bin(labels, series, fig_dir / "by_distance.png"))
    for i, (left, right) in sorted(fig_images.items()):
        tag = f"{gt.sequence[i]}_{gt.frame[i]:06d}"
        per_model = {}
        for r in runners:
            pr = preds[(r.name, main[r.name])]
            uv = pr.joints_2d[i] if pr.detected[i] else None
            X = pr.joints_3d[i] if pr.detected[i] else None
            per_model[f"{r.name} ({main[r.name]})"] = (uv, X)
            if r is runners[0]:
                paths.append(
                    figures.overlay_2d(
                        left,
                        right,
                        uv,
                        gt.joints_2d[i],
                        skeleton,
                        fig_dir / f"overlay_{tag}.png",
                        r.name,
                    )
                )
                paths.append(
                    figures.skeleton_3d(
                        X, gt.joints_3d[i], skeleton, fig_dir / f"skeleton3d_{tag}.png"
                    )
                )
        if len(runners) > 1:
            paths.append(
                figures.compare_models(
                    left,
                    right,
                    per_model,
                    gt.joints_2d[i],
                    gt.joints_3d[i],
                    skeleton,
                    fig_dir / f"compare_{tag}.png",
                    tag,
                )
            )
    return paths


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return _jsonable(x.tolist())
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, float | np.floating):
        return float(x) if math.isfinite(float(x)) else None
    return x


# --------------------------------------------------------------------------------------------
# MPII
# --------------------------------------------------------------------------------------------


def _main_mpii(args, ckpts: list[Path], names: list[str | None], out_dir: Path) -> int:
    """PCKh of per-view networks on MPII (``--data`` without dataset.json)."""
    from stereo_pose3d.models.heatmaps import heatmap_to_crop, soft_argmax
    from training.data.mpii import MPIIDataset, uncrop_points
    from training.train import load_node_model

    report: dict[str, Any] = {"data": {"path": str(args.data), "kind": "mpii"}, "models": {}}
    lines = [f"# PCKh on MPII `{args.data}`", ""]
    for path, name in zip(ckpts, names, strict=True):
        name = name or path.stem
        net = load_node_model(path, "pose")
        if net.config["architecture"] != "baseline":
            print(f"{path}: PCKh needs a per-view network (baseline/pretrain-2d), skipped")
            continue
        w, h = net.config["input_size"]
        ds = MPIIDataset(
            args.data, "valid", train=False, out_size=(w, h), heatmap_size=(w // 4, h // 4)
        )
        idx = list(range(len(ds)))[: args.max_samples] if args.max_samples else list(range(len(ds)))
        preds = np.full((len(ds), 16, 2), np.nan)
        with torch.inference_mode():
            for s in range(0, len(idx), args.batch_size):
                items = [ds[i] for i in idx[s : s + args.batch_size]]
                x = torch.from_numpy(np.stack([it["image"] for it in items]))[:, None]
                hm = net.forward_heatmaps(x, None)[:, 0].float()
                uv, _ = soft_argmax(hm, float(net.config["soft_argmax"]["beta"]))
                uv = heatmap_to_crop(uv, w / hm.shape[-1]).numpy()
                for k, it in enumerate(items):
                    preds[it["index"]] = uncrop_points(uv[k], it["affine"])
        if len(idx) < len(ds):
            sub = ds.ground_truth()
            from stereo_pose3d.metrics import pckh

            sel = np.array(idx)
            result = pckh(preds[sel], sub.joints[sel], sub.visible[sel], sub.head_boxes[sel])
        else:
            result = ds.evaluate(preds)
        report["models"][name] = {
            "checkpoint": str(path),
            "pckh": result.table,
            "per_joint": dict(zip(MPII.joint_names, result.per_joint.tolist(), strict=True)),
        }
        lines += [f"## {name}", "", result.markdown(), ""]
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "eval.json").write_text(json.dumps(_jsonable(report), indent=2) + "\n")
    (out_dir / "eval.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0
