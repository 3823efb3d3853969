"""Heatmap decoding (``heatmap_decoding``): the global soft-argmax against the local one (mean
shift from the maximum, ``local_soft_argmax``) on two-mode, background and single-Gaussian
heatmaps; flip equivariance; the setting in configs, the estimator, both evaluation paths."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from stereo_pose3d.estimator import StereoPoseEstimator
from stereo_pose3d.models import build_model
from stereo_pose3d.models.config import (
    DEFAULT_ESTIMATOR,
    HEATMAP_DECODINGS,
    ConfigError,
    pose_config,
    tiny_system_config,
)
from stereo_pose3d.models.heatmaps import (
    decode_heatmaps,
    gaussian_heatmaps,
    local_soft_argmax,
    soft_argmax,
)

STRIDE = 4.0
SIZE = (64, 64)  # heatmap (w, h)


def gaussian(centre_cells, peak: float = 1.0, sigma: float = 2.0) -> torch.Tensor:
    """``(h, w)`` Gaussian target of peak ``peak`` at heatmap cell ``(x, y)``."""
    centre = torch.tensor([centre_cells], dtype=torch.float32) * STRIDE + (STRIDE - 1) / 2
    return peak * gaussian_heatmaps(centre, None, SIZE, STRIDE, sigma)[0]


def test_two_modes_global_lands_between_local_on_the_stronger():
    """A left/right confusion: modes of peak 1.0 and 0.9, 16 cells apart on a row. The global
    soft-argmax (beta 20) is pulled about 2 cells towards the weaker mode (mid-limb); the local
    one stays on the stronger mode."""
    strong, weak = (20.3, 30.6), (36.3, 30.6)
    maps = torch.maximum(gaussian(strong), gaussian(weak, 0.9))
    uv_global, conf_global = soft_argmax(maps, 20.0)
    uv_local, conf_local = local_soft_argmax(maps)
    assert strong[0] + 1.0 < uv_global[0].item() < weak[0] - 1.0  # between, far from both
    torch.testing.assert_close(uv_local, torch.tensor(strong), atol=0.05, rtol=0)
    assert conf_local.item() == conf_global.item() == maps.max().item()
    # The other way round (the weaker mode first in memory) too.
    flipped = maps.flip(-1)
    uv = local_soft_argmax(flipped)[0]
    assert uv[0].item() == pytest.approx(SIZE[0] - 1 - strong[0], abs=0.05)


def test_background_mass_pulls_the_global_decoding_only():
    """A peak of 0.6 off-centre on a background of 0.15 (a crop with clutter): the global
    soft-argmax moves over 2 cells (8 crop px) towards the map's centre, the local one stays on
    the peak (the background under its window only slows the mean shift down)."""
    joint = (22.4, 42.7)
    maps = torch.maximum(gaussian(joint, 0.6), torch.full((64, 64), 0.15))
    uv_global = soft_argmax(maps, 20.0)[0]
    uv_local = local_soft_argmax(maps)[0]
    assert (uv_global - torch.tensor(joint)).norm().item() > 2.0
    torch.testing.assert_close(uv_local, torch.tensor(joint), atol=0.05, rtol=0)


def test_single_gaussians_both_decodings_agree_to_subpixel_accuracy():
    """Exact targets at random sub-cell positions (batched): the local decoding is exact (to
    0.01 cell), the global one within 0.07 cell (its known quantisation, 0.25 crop px at most,
    module docstring), so they agree to well under a pixel; the confidences are equal."""
    g = torch.Generator().manual_seed(0)
    centres = torch.rand(3, 5, 2, generator=g) * 50 + 7  # cells, away from the borders
    maps = gaussian_heatmaps(centres * STRIDE + (STRIDE - 1) / 2, None, SIZE, STRIDE, 2.0)
    uv_local, conf_local = decode_heatmaps(maps, 20.0, "local")
    uv_global, conf_global = decode_heatmaps(maps, 20.0, "global")
    assert uv_local.shape == uv_global.shape == (3, 5, 2)
    assert (uv_local - centres).abs().max().item() < 0.01
    assert (uv_global - centres).abs().max().item() < 0.07
    assert (uv_local - uv_global).norm(dim=-1).max().item() * STRIDE < 0.3  # crop px
    assert conf_local.equal(conf_global)


def test_local_decoding_is_mirror_equivariant():
    """Mirroring a map mirrors its decoded position exactly (cell ``u -> w - 1 - u``), so the
    flip test's heatmap averaging stays exact with the local decoding as well."""
    g = torch.Generator().manual_seed(1)
    centres = torch.rand(6, 2, 2, generator=g) * 50 + 7
    peaks = torch.rand(6, 2, generator=g) * 0.5 + 0.5
    maps = gaussian(centres[0, 0].tolist()).expand(6, 64, 64).clone()
    for k in range(6):
        maps[k] = torch.maximum(
            gaussian(centres[k, 0].tolist(), peaks[k, 0].item()),
            gaussian(centres[k, 1].tolist(), peaks[k, 1].item()),
        )
    maps = maps + 0.02 * torch.rand(maps.shape, generator=g)
    uv = local_soft_argmax(maps)[0]
    uv_f = local_soft_argmax(maps.flip(-1))[0]
    torch.testing.assert_close(uv_f[:, 0], SIZE[0] - 1 - uv[:, 0], atol=1e-4, rtol=0)
    torch.testing.assert_close(uv_f[:, 1], uv[:, 1], atol=1e-4, rtol=0)


def test_degenerate_maps():
    """No positive value: the global soft-argmax's answer (the centre of a flat map), confidence
    0; NaN maps give NaN, as the global decoding does; float16 input is decoded in float32."""
    flat = torch.zeros(2, 16, 12)
    flat[1] = -0.3
    uv, conf = local_soft_argmax(flat)
    torch.testing.assert_close(uv, torch.tensor([[5.5, 7.5], [5.5, 7.5]]))
    assert conf.eq(0).all()
    nan = gaussian((30.0, 30.0))
    nan[3, 4] = float("nan")
    assert torch.isnan(local_soft_argmax(nan)[0]).all()
    assert torch.isnan(soft_argmax(nan)[0]).all()
    uv16, _ = local_soft_argmax(gaussian((12.25, 40.5)).half())
    assert uv16.dtype == torch.float32
    torch.testing.assert_close(uv16, torch.tensor([12.25, 40.5]), atol=0.02, rtol=0)


def test_local_decoding_stays_float32_under_autocast():
    """The estimator decodes inside autocast (bf16 on CUDA); the local decoding's matrix
    products must not drop to bf16 (that moved joints by 0.1 cell, 0.45 crop px). CPU autocast
    stands in for CUDA's here."""
    maps = torch.stack([gaussian((12.3 + k * 0.37, 40.6 - k * 0.21)) for k in range(8)])
    expected = local_soft_argmax(maps)[0]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        uv, conf = local_soft_argmax(maps.bfloat16())
    assert uv.dtype == conf.dtype == torch.float32
    torch.testing.assert_close(uv, expected, atol=0.01, rtol=0)


def test_forward_2d_decoding_argument():
    """``forward_2d(decoding=...)``: "global" (default, as ``forward`` and training) gives the
    soft-argmax of the returned heatmaps, "local" the local decoding of the same heatmaps, with
    the same confidences; flip test combines with either; anything else is a ValueError."""
    torch.manual_seed(0)
    net = build_model(pose_config("baseline", "resnet18", (64, 64), head_channels=8), False).eval()
    images = torch.randn(2, 2, 3, 64, 64)
    P = torch.eye(3, 4).expand(2, 2, 3, 4).clone()
    with torch.inference_mode():
        plain = net.forward_2d(images, P)
        local = net.forward_2d(images, P, decoding="local")
        flip_local = net.forward_2d(images, P, flip_test=True, decoding="local")
        flip_global = net.forward_2d(images, P, flip_test=True)
    assert local["heatmaps"].equal(plain["heatmaps"])
    assert local["confidence"].equal(plain["confidence"])
    expected = local_soft_argmax(plain["heatmaps"])[0] * 4 + 1.5
    torch.testing.assert_close(local["joints_2d"], expected)
    torch.testing.assert_close(plain["joints_2d"], soft_argmax(plain["heatmaps"])[0] * 4 + 1.5)
    torch.testing.assert_close(
        flip_local["joints_2d"], local_soft_argmax(flip_global["heatmaps"])[0] * 4 + 1.5
    )
    for bad in ("soft_argmax", "", None):
        with pytest.raises(ValueError, match="decoding"):
            net.forward_2d(images, P, decoding=bad)
        with pytest.raises(ValueError, match="decoding"):
            decode_heatmaps(plain["heatmaps"], 20.0, bad)


def test_heatmap_decoding_setting(fixture_checkpoint, synthetic_stereo_pair, monkeypatch):
    """Default "local"; validated in system configs, the estimator's constructor and property;
    the estimator and the evaluation's gt-box path pass it to ``forward_2d``; ``--estimator
    heatmap_decoding=global`` parses."""
    from training.evaluate import ModelRunner, Predictions, _estimator_settings

    assert DEFAULT_ESTIMATOR["heatmap_decoding"] == "local"
    assert HEATMAP_DECODINGS == ("global", "local")
    assert tiny_system_config()["estimator"]["heatmap_decoding"] == "local"
    assert (
        tiny_system_config(heatmap_decoding="global")["estimator"]["heatmap_decoding"] == "global"
    )
    for bad in ("mode", 1, None):
        with pytest.raises(ConfigError, match="heatmap_decoding"):
            tiny_system_config(heatmap_decoding=bad)
    system = build_model(tiny_system_config(heatmap_decoding="global"), pretrained=False)
    est = StereoPoseEstimator(system, "cpu")
    assert est.heatmap_decoding == "global"
    assert StereoPoseEstimator(system, "cpu", heatmap_decoding="local").heatmap_decoding == "local"
    for bad in ("Local", 0, None, ["local"]):
        with pytest.raises(ValueError, match="heatmap_decoding"):
            est.heatmap_decoding = bad
        with pytest.raises(ValueError, match="heatmap_decoding"):
            StereoPoseEstimator(system, "cpu", heatmap_decoding=bad)
    assert est.heatmap_decoding == "global"
    assert _estimator_settings(["heatmap_decoding=global"]) == {"heatmap_decoding": "global"}

    # The estimator passes its current setting (and flip_test) to the pose network.
    pair = synthetic_stereo_pair
    args = (pair.left, pair.right, pair.P_left, pair.P_right)
    est = StereoPoseEstimator.from_checkpoint(fixture_checkpoint, "cpu", locator_candidates=1)
    assert est.heatmap_decoding == "local"
    calls: list[tuple[bool, str]] = []
    real = est.pose_net.forward_2d

    def spy(images, P, flip_test=False, decoding="global"):
        calls.append((flip_test, decoding))
        return real(images, P, flip_test=flip_test, decoding=decoding)

    monkeypatch.setattr(est.pose_net, "forward_2d", spy)
    local = est.estimate(*args)
    est.heatmap_decoding = "global"
    plain = est.estimate(*args)
    assert calls == [(False, "local"), (False, "global")]
    assert local.detected and plain.detected
    np.testing.assert_array_equal(local.crop_boxes, plain.crop_boxes)
    np.testing.assert_array_equal(local.confidence > 0, plain.confidence > 0)

    # The gt-box path of the evaluation uses the estimator's setting too.
    for setting in HEATMAP_DECODINGS:
        runner = ModelRunner(
            fixture_checkpoint, device="cpu", estimator_settings={"heatmap_decoding": setting}
        )
        seen: list[str] = []
        real_2d = runner.pose_net.forward_2d

        def spy_2d(images, P, flip_test=False, decoding="global", seen=seen, real_2d=real_2d):
            seen.append(decoding)
            return real_2d(images, P, flip_test=flip_test, decoding=decoding)

        monkeypatch.setattr(runner.pose_net, "forward_2d", spy_2d)
        out = Predictions.empty(1, len(runner.pose_net.config["joint_names"]))
        P = np.stack([pair.P_left, pair.P_right])[None]
        runner.predict_boxes([pair.left], [pair.right], P, pair.box[None], out, np.arange(1))
        assert seen == [setting]
        assert np.isfinite(out.joints_2d).all()
