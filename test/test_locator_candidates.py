"""Person candidates (``locator_candidates``) and the refinement acceptance rule.

``PersonLocator.decode_topk`` (3x3 peak extraction, decoded like ``decode``), and the estimator
on conftest's stick-figure pair with a faked locator whose best peak is a decoy (empty
background) and whose second is the person, and a pose-network oracle that knows the true joints
and is confident only on joints inside its crop: two candidates keep the person, one keeps the
decoy exactly as the single-box pipeline does.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import patch_locator

from stereo_pose3d.estimator import (
    TIMING_KEYS,
    StereoPoseEstimator,
    depth_gate,
)
from stereo_pose3d.geometry import project, triangulate
from stereo_pose3d.models import build_model, locator_config
from stereo_pose3d.models.config import (
    DEFAULT_ESTIMATOR,
    MAX_LOCATOR_CANDIDATES,
    ConfigError,
    system_config,
    tiny_system_config,
)
from stereo_pose3d.models.crops import crop_regions, crop_views, letterbox, transform_boxes

# -- PersonLocator.decode_topk --------------------------------------------------------------------


@pytest.fixture(scope="module")
def locator():
    torch.manual_seed(0)
    return build_model(locator_config(input_size=(128, 96), head_channels=32)).eval()


def random_outputs(n: int, seed: int, ties: bool = False) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    centre = torch.randn(n, 1, 12, 16, generator=g) * 3
    if ties:  # many equal logits: the order must still be argmax's
        centre = centre.round()
    return {
        "centre": centre,
        "offset": torch.rand(n, 2, 12, 16, generator=g) - 0.5,
        "size": torch.randn(n, 2, 12, 16, generator=g) + 2,
    }


@pytest.mark.parametrize("ties", [False, True])
def test_decode_topk_first_is_decode(locator, ties):
    for seed in range(5):
        out = random_outputs(4, seed, ties)
        boxes, scores = locator.decode(out)
        for k in (1, 3):
            top_boxes, top_scores = locator.decode_topk(out, k)
            assert top_boxes.shape == (4, k, 4) and top_scores.shape == (4, k)
            assert torch.equal(top_boxes[:, 0], boxes) and torch.equal(top_scores[:, 0], scores)
            assert (top_scores[:, :-1] >= top_scores[:, 1:]).all()  # best first


def test_decode_topk_finds_separated_peaks_in_order(locator):
    s = locator.stride
    centre = torch.full((2, 1, 12, 16), -6.0)
    centre[0, 0, 2, 3] = 1.0  # second person
    centre[0, 0, 8, 12] = 3.0  # best
    centre[0, 0, 8, 11] = 2.5  # next to the best: not a local maximum
    centre[1, 0] = -torch.arange(16.0)[None, :] - torch.arange(12.0)[:, None]  # one maximum
    offset = torch.zeros(2, 2, 12, 16)
    offset[0, :, 8, 12] = torch.tensor([0.25, -0.5])
    size = torch.zeros(2, 2, 12, 16)
    size[0, :, 8, 12] = torch.tensor([1.0, 2.0])  # log(width / s), log(height / s)
    size[0, :, 2, 3] = torch.tensor([0.5, 1.5])
    out = {"centre": centre, "offset": offset, "size": size}
    boxes, scores = locator.decode_topk(out, 3)

    torch.testing.assert_close(scores[0, :2], torch.sigmoid(torch.tensor([3.0, 1.0])))
    assert scores[0, 2] < 0.01  # then the flat background, far below both
    cx, cy = (12 + 0.25) * s + (s - 1) / 2, (8 - 0.5) * s + (s - 1) / 2
    w, h = np.exp(1.0) * s, np.exp(2.0) * s
    expected = torch.tensor([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dtype=torch.float32)
    torch.testing.assert_close(boxes[0, 0], expected)
    cx, cy = 3 * s + (s - 1) / 2, 2 * s + (s - 1) / 2
    w, h = np.exp(0.5) * s, np.exp(1.5) * s
    expected = torch.tensor([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dtype=torch.float32)
    torch.testing.assert_close(boxes[0, 1], expected)
    # A map with a single local maximum: the ranks after it are NaN.
    assert torch.isfinite(boxes[1, 0]).all() and scores[1, 0] == torch.sigmoid(torch.tensor(0.0))
    assert torch.isnan(boxes[1, 1:]).all() and torch.isnan(scores[1, 1:]).all()
    # More ranks than cells: NaN-padded.
    many_boxes, many_scores = locator.decode_topk(out, 200)
    assert many_boxes.shape == (2, 200, 4) and torch.isnan(many_scores[:, 192:]).all()
    with pytest.raises(ValueError, match="k must be"):
        locator.decode_topk(out, 0)


# -- the estimator ---------------------------------------------------------------------------


class PersonOracle(torch.nn.Module):
    """Pose-network stand-in: the true joints projected with each crop's P (exact), confidence
    0.9 for joints inside the crop and 0.1 outside, so a crop around empty background scores
    low. Records the batch size of every call."""

    def __init__(self, joints_3d: np.ndarray):
        super().__init__()
        self.X = torch.as_tensor(joints_3d, dtype=torch.float64)
        self.batches: list[int] = []

    def forward_2d(
        self,
        images: torch.Tensor,
        P: torch.Tensor,
        flip_test: bool = False,
        decoding: str = "local",
    ) -> dict[str, torch.Tensor]:
        self.batches.append(images.shape[0])
        B, V, _, h, w = images.shape
        uv = project(self.X, P.double())  # (B, V, J, 2) crop pixels
        inside = (uv[..., 0] >= 0) & (uv[..., 0] < w) & (uv[..., 1] >= 0) & (uv[..., 1] < h)
        return {
            "heatmaps": torch.zeros(B, V, uv.shape[-2], 1, 1),
            "joints_2d": uv.float(),
            "confidence": torch.where(inside, 0.9, 0.1).float(),
        }

    def triangulate(self, joints_2d, confidence, P) -> tuple[torch.Tensor, torch.Tensor]:
        return triangulate(joints_2d.double(), P.double(), confidence.double())


# Empty background above the floor, top left (the figure is around x 264-422, y 133-446).
DECOY = np.array([[20.0, 20.0, 120.0, 200.0], [10.0, 20.0, 110.0, 200.0]])


def peaks(pair, person_right=None, scores=((0.9, 0.8), (0.9, 0.8))):
    """Locator peaks (2, 2, 4) per view: the decoy first, the person second."""
    right = pair.box[1] if person_right is None else person_right
    boxes = np.stack([np.stack([DECOY[0], pair.box[0]]), np.stack([DECOY[1], right])])
    return boxes, np.asarray(scores, dtype=np.float64)


@pytest.fixture
def decoy_estimator(fixture_checkpoint, monkeypatch):
    """``make(pair, boxes (2, m, 4), scores (2, m), **settings)``: the fixture estimator with
    those locator peaks and the oracle as pose network (joint stereo matching off unless
    ``settings`` say otherwise: these tests follow the oracle's exact output)."""

    def make(pair, boxes, scores, **settings) -> StereoPoseEstimator:
        settings.setdefault("joint_stereo_matching", False)
        est = StereoPoseEstimator.from_checkpoint(fixture_checkpoint, "cpu", **settings)
        est.pose_net = PersonOracle(pair.joints_3d)
        patch_locator(monkeypatch, est, boxes, scores)
        return est

    return make


def run(est, pair, P_right=None):
    P_right = pair.P_right if P_right is None else P_right
    return est.estimate(pair.left, pair.right, pair.P_left, P_right)


def test_second_candidate_wins_when_the_first_is_a_decoy(decoy_estimator, synthetic_stereo_pair):
    pair = synthetic_stereo_pair
    est = decoy_estimator(pair, *peaks(pair))
    assert est.locator_candidates == 2 == DEFAULT_ESTIMATOR["locator_candidates"]
    pose = run(est, pair)
    assert est.pose_net.batches == [1, 1]  # the first pass, then the candidate
    assert pose.source == "locator2" and pose.score == pytest.approx(0.8)
    np.testing.assert_array_equal(pose.box[0], pair.box[0])
    # The right box was matched into the figure (the decoy's patch is flat: never matched).
    d = (pair.joints_2d[0, :, 0] - pair.joints_2d[1, :, 0]).mean()
    assert pose.box_matched
    np.testing.assert_allclose(pose.box[1], pair.box[0] - [d, 0, d, 0], atol=0.3)
    assert pose.view_confidence.mean() == pytest.approx(0.9)
    assert np.abs(pose.joints_3d - pair.joints_3d).max() < 1e-3
    assert pose.timings["candidates"] >= 0
    parts = sum(pose.timings[k] for k in TIMING_KEYS if k != "total")
    assert parts == pytest.approx(pose.timings["total"], rel=1e-6)

    one = decoy_estimator(pair, *peaks(pair), locator_candidates=1)
    decoy = run(one, pair)
    assert one.pose_net.batches == [1] and "candidates" not in decoy.timings
    assert decoy.source == "locator" and decoy.score == pytest.approx(0.9)
    np.testing.assert_array_equal(decoy.box, DECOY)
    assert not decoy.box_matched and decoy.view_confidence.mean() < 0.5

    # Assignable between calls.
    one.locator_candidates = 2
    assert run(one, pair).source == "locator2"


def test_first_candidate_kept_when_it_is_the_person(decoy_estimator, synthetic_stereo_pair):
    pair = synthetic_stereo_pair
    boxes, scores = peaks(pair)
    boxes = boxes[:, ::-1].copy()  # the person first, the decoy second
    pose = run(decoy_estimator(pair, boxes, scores), pair)
    assert pose.source == "locator" and pose.score == pytest.approx(0.9)
    np.testing.assert_array_equal(pose.box[0], pair.box[0])


def test_candidates_are_batched(decoy_estimator, synthetic_stereo_pair):
    pair = synthetic_stereo_pair
    est = decoy_estimator(pair, *peaks(pair), locator_candidates=3)
    poses = est.estimate_batch([pair.left] * 3, [pair.right] * 3, [pair.P_left] * 3,
                               [pair.P_right] * 3)  # fmt: skip
    assert est.pose_net.batches == [3, 3]  # all candidates of the call in one extra pass
    assert [p.source for p in poses] == ["locator2"] * 3
    assert poses[0].timings["batch_size"] == 3


@pytest.mark.parametrize(
    "change",
    [
        "low_left_score",  # the second left peak is below score_threshold
        "low_right_score",  # the only right peak on its rows is below score_threshold
        "other_rows",  # no right peak on the same rows
        "behind_infinity",  # the right peak is on the wrong side (negative disparity)
        "not_rectified",  # the pair's rows differ: no pairing by rows
    ],
)
def test_unpaired_candidates_are_not_run(decoy_estimator, synthetic_stereo_pair, change):
    pair = synthetic_stereo_pair
    right, scores, P_right = pair.box[1].copy(), np.array([[0.9, 0.8], [0.9, 0.8]]), None
    if change == "low_left_score":
        scores[0, 1] = 0.2
    elif change == "low_right_score":
        scores[1, 1] = 0.2
    elif change == "other_rows":
        right += [0, 100, 0, 100]
    elif change == "behind_infinity":
        right = pair.box[0] + [3.0, 0, 3.0, 0]  # d = -3 px; infinity is d = 0 for this pair
    else:
        c, s = np.cos(0.02), np.sin(0.02)
        R = np.array([[1, 0, 0], [0, c, -s], [0, s, c]])  # tilted right camera
        P_right = pair.P_right.copy()
        P_right[:, :3] = pair.P_right[:, :3] @ R
    est = decoy_estimator(pair, *peaks(pair, right, scores), score_threshold=0.3)
    pose = run(est, pair, P_right)
    assert est.pose_net.batches == [1] and pose.source == "locator"
    np.testing.assert_array_equal(pose.box[0], DECOY[0])
    assert pose.timings["candidates"] >= 0


def test_one_candidate_is_the_single_box_pipeline(fixture_checkpoint, synthetic_stereo_pair):
    """locator_candidates 1 is bit for bit locator (``decode``) -> crop -> network -> DLT ->
    depth gate, written out here independently, with the fixture's real (random) networks."""
    pair = synthetic_stereo_pair
    est = StereoPoseEstimator.from_checkpoint(
        fixture_checkpoint,
        "cpu",
        locator_candidates=1,
        stereo_box_matching=False,
        joint_stereo_matching=False,
        max_epipolar_offset=0.0,
    )
    pose = run(est, pair)
    assert pose.source == "locator" and set(pose.timings) == set(TIMING_KEYS)

    P = np.stack([pair.P_left, pair.P_right])
    settings = est.settings
    with torch.inference_mode():
        boxed = [letterbox(im, est.locator_size) for im in (pair.left, pair.right)]
        out = est.locator(est._to_tensor([b for b, _ in boxed], "locator"))
        found, found_scores = est.locator.decode(out)
        boxes = np.stack([
            transform_boxes(np.linalg.inv(A), b.numpy().astype(np.float64))
            for (_, A), b in zip(boxed, found.float(), strict=True)
        ])  # fmt: skip
        regions = crop_regions(
            boxes, P, pair.left.shape[0], settings["crop_scale"], settings["min_box_fraction"]
        )
        crops, P_crop, _ = crop_views([pair.left, pair.right], P, regions, est.crop_size)
        x = est._to_tensor(list(crops), "pose").unflatten(0, (1, 2))
        P_t = torch.as_tensor(P_crop, dtype=torch.float32).view(1, 2, 3, 4)
        net = est.pose_net.forward_2d(x, P_t, decoding=est.heatmap_decoding)
        X, valid = est.pose_net.triangulate(net["joints_2d"], net["confidence"], P_t)
    X = X.double().numpy()[0]
    valid = depth_gate(X, valid.numpy()[0], P[0], settings["max_depth_spread"])
    view_confidence = net["confidence"].float().numpy().astype(np.float64)[0]
    np.testing.assert_array_equal(pose.box, boxes)
    assert pose.score == float(found_scores.float().min())
    np.testing.assert_array_equal(pose.crop_boxes, regions)
    np.testing.assert_array_equal(pose.joints_3d, X)
    np.testing.assert_array_equal(pose.valid, valid)
    np.testing.assert_array_equal(pose.view_confidence, view_confidence)
    np.testing.assert_array_equal(
        pose.confidence, np.where(valid, view_confidence.mean(axis=0), 0.0)
    )


def test_tracking_skips_candidates_and_follows_the_chosen_one(
    decoy_estimator, synthetic_stereo_pair
):
    pair = synthetic_stereo_pair
    est = decoy_estimator(pair, *peaks(pair), tracking=True)
    calls = []
    fake_locate = est._locate
    est._locate = lambda images, k=1: calls.append(k) or fake_locate(images, k)
    first = run(est, pair)
    assert first.source == "locator2" and calls == [2 + 2]  # k + CANDIDATE_EXTRA_PEAKS peaks
    second = run(est, pair)
    # Tracked from the person's joints (not the decoy's box): no locator, no candidates.
    assert second.source == "tracking" and calls == [4]
    assert est.pose_net.batches == [1, 1, 1]
    assert second.timings["candidates"] == 0.0 and second.timings["locator"] == 0.0
    lo, hi = pair.joints_2d[0].min(axis=0), pair.joints_2d[0].max(axis=0)
    np.testing.assert_allclose(second.box[0], np.concatenate([lo, hi]), atol=0.01)


def test_setting_is_validated(fixture_checkpoint, make_fixture_checkpoint):
    assert MAX_LOCATOR_CANDIDATES == 5
    est = StereoPoseEstimator.from_checkpoint(fixture_checkpoint, "cpu", locator_candidates=5)
    assert est.locator_candidates == 5 == est.settings["locator_candidates"]
    for bad in (0, MAX_LOCATOR_CANDIDATES + 1, 1.5, True, "2", None):
        with pytest.raises(ValueError, match="locator_candidates"):
            StereoPoseEstimator.from_checkpoint(fixture_checkpoint, "cpu", locator_candidates=bad)
        with pytest.raises(ValueError, match="locator_candidates"):
            est.locator_candidates = bad
        with pytest.raises(ConfigError, match="locator_candidates"):
            tiny_system_config(locator_candidates=bad)
    assert est.locator_candidates == 5
    est.locator_candidates = np.int64(1)
    assert est.locator_candidates == 1 and type(est.settings["locator_candidates"]) is int
    # A checkpoint that carries the setting; the default otherwise.
    config = tiny_system_config()
    assert config["estimator"]["locator_candidates"] == 2
    carried = system_config(config["pose"], config["locator"], locator_candidates=3)
    assert carried["estimator"]["locator_candidates"] == 3
    ckpt = make_fixture_checkpoint(locator_candidates=3)
    assert StereoPoseEstimator.from_checkpoint(ckpt, "cpu").locator_candidates == 3


# -- refinement acceptance ---------------------------------------------------------------------


def fake_pass(confidence: float, valid: int, J: int = 16) -> dict[str, np.ndarray]:
    return {
        "joints_3d": np.ones((J, 3)),
        "valid": np.arange(J) < valid,
        "view_confidence": np.full((2, J), confidence),
        "joints_2d_detected": np.ones((2, J, 2)),
    }


def test_refinement_is_accepted_by_confidence():
    ok = StereoPoseEstimator._refinement_ok
    assert ok(fake_pass(0.5, 16), fake_pass(0.5, 16))  # not lower: kept
    assert ok(fake_pass(0.5, 16), fake_pass(0.6, 10))  # more confident, fewer valid: kept
    assert not ok(fake_pass(0.5, 10), fake_pass(0.4, 16))  # less confident: dropped
    for key in ("joints_3d", "view_confidence", "joints_2d_detected"):
        bad = fake_pass(0.6, 16)
        bad[key][..., 0] = np.nan
        assert not ok(fake_pass(0.5, 16), bad), key
    invalid_nan = fake_pass(0.6, 10)
    invalid_nan["joints_3d"][12] = np.nan  # an invalid joint may be NaN
    assert ok(fake_pass(0.5, 16), invalid_nan)
