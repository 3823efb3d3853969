"""Shared test fixtures (owner: models).

* ``fixture_checkpoint`` -- path to a tiny randomly initialised estimator checkpoint (CDRNet on
  ResNet-18 at 64x64 crops + PersonLocator at 128x96, MPII 16 joints, float16 storage, seed 0),
  loadable with ``StereoPoseEstimator.from_checkpoint(path)``. Its locator threshold is 0, so it
  always "finds" a person. Random weights: the boxes and the pose are noise (most joints come
  out behind the cameras, i.e. ``valid`` False and ``confidence`` 0), but shapes, dtypes, boxes,
  timings and the 2D/3D consistency are real.
* ``make_fixture_checkpoint(**estimator_settings)`` -- the same with other estimator settings,
  e.g. ``make_fixture_checkpoint(score_threshold=1.1)`` never finds a person.
* ``synthetic_stereo_pair`` -- a rectified 640x480 stereo pair of a drawn stick figure:
  namespace with ``left, right`` (H, W, 3) uint8 RGB, ``P_left, P_right`` (3, 4) float64,
  ``joints_3d`` (16, 3) m in the left rectified frame, ``joints_2d`` (2, 16, 2) px,
  ``box`` (2, 4) xyxy px, ``baseline`` m.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import torch

from stereo_pose3d.skeleton import MPII

# A standing person, MPII order, metres in a body frame (x right of the image, y down).
_BODY = np.array(
    [
        [-0.12, 0.85, 0.00], [-0.12, 0.45, 0.02], [-0.11, 0.00, 0.00],  # right ankle, knee, hip
        [0.11, 0.00, 0.00], [0.13, 0.45, 0.02], [0.14, 0.85, 0.00],  # left hip, knee, ankle
        [0.00, 0.00, 0.00], [0.00, -0.50, 0.00], [0.00, -0.60, 0.00],  # pelvis, thorax, neck
        [0.00, -0.85, 0.00],  # head top
        [-0.45, -0.25, 0.05], [-0.35, -0.40, 0.03], [-0.19, -0.50, 0.00],  # r wrist, elbow, sh.
        [0.19, -0.50, 0.00], [0.33, -0.30, 0.04], [0.30, -0.05, 0.08],  # l shoulder, elbow, wr.
    ]
)  # fmt: skip


def render_stereo_pair(
    width: int = 640,
    height: int = 480,
    f: float = 500.0,
    baseline: float = 0.12,
    position: tuple[float, float, float] = (0.2, 0.3, 3.0),
) -> SimpleNamespace:
    """Draw the stick figure at ``position`` (pelvis, metres, left rectified frame)."""
    K = np.array([[f, 0.0, (width - 1) / 2], [0.0, f, (height - 1) / 2], [0.0, 0.0, 1.0]])
    P_left = np.hstack([K, np.zeros((3, 1))])
    P_right = P_left.copy()
    P_right[0, 3] = -f * baseline
    joints_3d = _BODY + np.asarray(position)
    images, joints_2d = [], []
    for P in (P_left, P_right):
        h = joints_3d @ P[:, :3].T + P[:, 3]
        uv = h[:, :2] / h[:, 2:]
        img = np.full((height, width, 3), 90, np.uint8)
        img[height // 2 :] = (70, 80, 60)  # floor
        for a, b in MPII.bones:
            colour = tuple(int(255 * c) for c in MPII.bone_color((a, b)))
            cv2.line(img, tuple(map(round, uv[a])), tuple(map(round, uv[b])), colour, 9)
        for j in range(len(uv)):
            cv2.circle(img, tuple(map(round, uv[j])), 6, (240, 220, 200), -1)
        images.append(img)
        joints_2d.append(uv)
    joints_2d = np.stack(joints_2d)
    box = np.concatenate([joints_2d.min(1) - 15, joints_2d.max(1) + 15], axis=1)
    return SimpleNamespace(
        left=images[0], right=images[1], P_left=P_left, P_right=P_right, joints_3d=joints_3d,
        joints_2d=joints_2d, box=box, baseline=baseline,
    )  # fmt: skip


@pytest.fixture(scope="session")
def synthetic_stereo_pair() -> SimpleNamespace:
    return render_stereo_pair()


def _calibrate_batchnorm(model: torch.nn.Module) -> None:
    """Set BatchNorm statistics from two random batches: with the initial (0, 1) statistics a
    fresh network's heatmaps are flat and every joint lands on the crop centre."""
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = None
            module.reset_running_stats()
    pair = render_stereo_pair()
    P = torch.tensor(np.stack([pair.P_left, pair.P_right]), dtype=torch.float32)
    model.train()
    with torch.no_grad():
        for _ in range(2):
            model.pose(torch.randn(4, 2, 3, 64, 64), P.expand(4, 2, 3, 4) / 8)
            model.locator(torch.randn(4, 3, 96, 128))
    model.eval()


@pytest.fixture(scope="session")
def make_fixture_checkpoint(tmp_path_factory) -> Callable[..., Path]:
    from stereo_pose3d.checkpoint import save_checkpoint
    from stereo_pose3d.models import build_model, tiny_system_config

    cache: dict[tuple, Path] = {}

    def make(**estimator_settings) -> Path:
        settings = {"score_threshold": 0.0, **estimator_settings}
        key = tuple(sorted(settings.items()))
        if key not in cache:
            torch.manual_seed(0)
            config = tiny_system_config(**settings)
            model = build_model(config)
            _calibrate_batchnorm(model)
            path = tmp_path_factory.mktemp("checkpoint") / "tiny_cdrnet_system.pt"
            provenance = {"dataset": None, "split": None, "note": "random test fixture"}
            cache[key] = save_checkpoint(path, model, config, provenance, storage="float16")
        return cache[key]

    return make


@pytest.fixture(scope="session")
def fixture_checkpoint(make_fixture_checkpoint) -> Path:
    return make_fixture_checkpoint()


def patch_locator(monkeypatch, estimator, boxes: np.ndarray, scores=None) -> None:
    """Make ``estimator``'s person locator return ``boxes (2, 4)`` (xyxy px, left and right)
    with score 1 for every pair of a call, and no further peaks (``locator_candidates``).

    ``boxes (2, m, 4)`` with ``scores (2, m)``: the ``m`` peaks per view, best first (what
    ``PersonLocator.decode_topk`` would give), cut or NaN-padded to the ``k`` asked for."""
    boxes = np.asarray(boxes, dtype=np.float64)
    if boxes.ndim == 2:
        boxes, scores = boxes[:, None], np.ones((2, 1))
    scores = np.asarray(scores, dtype=np.float64)

    def fake_locate(images, k=1):
        n = len(images) // 2
        m = min(k, boxes.shape[1])
        b = np.full((2, k, 4), np.nan)
        s = np.full((2, k), np.nan)
        b[:, :m], s[:, :m] = boxes[:, :m], scores[:, :m]
        return np.tile(b, (n, 1, 1)), np.tile(s, (n, 1)), 0.0

    monkeypatch.setattr(estimator, "_locate", fake_locate)
