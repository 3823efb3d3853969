"""Flip test (``flip_test``): mirrored crops batched with the originals, heatmaps mirrored back
(exactly, no one-cell shift), joints permuted, views swapped, averaged; the estimator setting, the
node parameter and the evaluation's ``--estimator flip_test=...``."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.nn import functional

from stereo_pose3d.estimator import StereoPoseEstimator
from stereo_pose3d.geometry import project
from stereo_pose3d.models import build_model
from stereo_pose3d.models.baseline import PoseNetBase
from stereo_pose3d.models.config import ConfigError, pose_config, tiny_system_config
from stereo_pose3d.models.crops import crop_regions, crop_views, is_rectified_pair
from stereo_pose3d.models.heatmaps import (
    flip_crop_inputs,
    heatmap_to_crop,
    soft_argmax,
    unflip_heatmaps,
)
from stereo_pose3d.skeleton import MPII

PERM = MPII.flip_permutation
J = MPII.num_joints
SIZE = 64  # crop side of the tiny models; heatmaps 16x16 (stride 4)


class MirrorStub(PoseNetBase):
    """A pose network that is exactly mirror-equivariant: heatmap of joint j = 4x4 average of
    the crop's first channel, kept only on the image half of j's side (left_* joints on the left
    half of the crop, right_* on the right half, centre joints everywhere)."""

    def __init__(self) -> None:
        super().__init__(pose_config("baseline", "resnet18", (SIZE, SIZE), head_channels=8))
        w = SIZE // 4
        masks = torch.ones(J, 1, w)
        for j in range(J):
            if MPII.side(j) == "left":
                masks[j, :, w // 2 :] = 0
            elif MPII.side(j) == "right":
                masks[j, :, : w // 2] = 0
        self.register_buffer("masks", masks)
        self.calls: list[int] = []

    def forward_heatmaps(self, images: torch.Tensor, P: torch.Tensor) -> torch.Tensor:
        self.calls.append(images.shape[0])
        pooled = functional.avg_pool2d(images[:, :, 0], 4)  # (B, V, h, w)
        return pooled[:, :, None] * self.masks


def tiny_pose_net(architecture: str) -> PoseNetBase:
    """A random tiny network whose heatmaps are not flat (so that its soft-argmax moves)."""
    torch.manual_seed(0)
    cfg = pose_config(
        architecture, "resnet18", (SIZE, SIZE), latent_channels=30, fusion_channels=32,
        head_channels=32,
    )  # fmt: skip
    net = build_model(cfg, pretrained=False).eval()
    for m in net.head.modules():  # the Simple Baselines init (std 0.001) gives flat heatmaps
        if isinstance(m, torch.nn.ConvTranspose2d | torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(m.weight)
    with torch.inference_mode():
        scale = net.forward_heatmaps(*stereo_inputs(seed=1)).std()
        net.head.final.weight.mul_(0.5 / scale)  # heatmaps of std ~0.5
    return net


def stereo_inputs(batch: int = 1, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random crops and a rectified pair's crop-adjusted cameras (right camera 0.12 m right)."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(batch, 2, 3, SIZE, SIZE, generator=g)
    K = torch.tensor([[60.0, 0, 31.5], [0, 60.0, 31.5], [0, 0, 1]])
    P_left = torch.cat([K, torch.zeros(3, 1)], 1)
    P_right = P_left.clone()
    P_right[0, 3] = -60.0 * 0.12
    P = torch.stack([P_left, P_right]).expand(batch, 2, 3, 4).clone()
    P[:, 1, 0, 2] -= torch.arange(batch) * 3.0  # a different crop offset per pair
    return images, P


def test_unflip_single_peak_maps_back_exactly():
    """A single peak at cell (u, v) of the mirrored crop's channel perm[j] in view 1 comes back
    in view 0, channel j, at cell (w - 1 - u, v): crop pixel W - 1 - x exactly."""
    h = w = SIZE // 4
    stride = SIZE / w
    for j in (0, 6, 10, 13):  # right_ankle, pelvis, right_wrist, left_shoulder
        for u, v in ((3, 5), (0, 0), (w - 1, 7)):
            flipped = torch.zeros(1, 2, J, h, w)
            flipped[0, 1, PERM[j], v, u] = 1.0
            back = unflip_heatmaps(flipped, PERM)
            assert back[0, 0, j, v, w - 1 - u] == 1.0 and back.sum() == 1.0
            uv, conf = soft_argmax(back, beta=200.0)
            xy = heatmap_to_crop(uv, stride)[0, 0, j].double()
            x_flipped = heatmap_to_crop(torch.tensor(float(u)), stride).double()
            assert xy[0].item() == pytest.approx(SIZE - 1 - x_flipped.item(), abs=1e-4)
            assert xy[1].item() == pytest.approx(stride * v + (stride - 1) / 2, abs=1e-4)
            assert conf[0, 0, j] == 1.0
    assert unflip_heatmaps(unflip_heatmaps(flipped, PERM), PERM).equal(flipped)  # involution


def test_flip_test_of_an_equivariant_network_is_exact_and_has_no_shift():
    """For a mirror-equivariant network the flip test's heatmaps equal the plain ones (so the
    mirroring, the permutation and the alignment are exact); averaging with the mirrored-back
    heatmaps shifted by one cell (the Simple Baselines reference code) moves the joint by half a
    cell (2 crop px) instead."""
    net = MirrorStub().eval()
    images, P = stereo_inputs(batch=2)
    images[:, :, 0] = 0.0
    images[0, 0, 0, 20:24, 8:12] = 5.0  # a bright square on cell (2, 5) of the left crop
    plain = net.forward_2d(images, P)
    net.calls.clear()
    flip = net.forward_2d(images, P, flip_test=True)
    assert net.calls == [4]  # one forward pass of originals + mirrored crops
    torch.testing.assert_close(flip["heatmaps"], plain["heatmaps"], atol=1e-6, rtol=0)
    torch.testing.assert_close(flip["joints_2d"], plain["joints_2d"], atol=1e-4, rtol=0)
    # The left-side joints see the square (on the left half of the crop): cell centre (2, 5).
    wrist = MPII.index("left_wrist")
    np.testing.assert_allclose(plain["joints_2d"][0, 0, wrist].numpy(), [9.5, 21.5], atol=1e-3)
    # The reference code's shift of the mirrored-back heatmaps by one cell is off here.
    images_f, P_f = flip_crop_inputs(images, P)
    back = unflip_heatmaps(net.forward_heatmaps(images_f, P_f), PERM)
    shifted = torch.zeros_like(back)
    shifted[..., 1:] = back[..., :-1]
    uv, _ = soft_argmax((plain["heatmaps"] + shifted) / 2, net.beta)
    dx = heatmap_to_crop(uv, 4.0)[0, 0, wrist, 0] - plain["joints_2d"][0, 0, wrist, 0]
    assert dx.item() == pytest.approx(2.0, abs=1e-3)


@pytest.mark.parametrize("architecture", ["baseline", "cdrnet"])
def test_flip_test_is_mirror_equivariant_and_batched(architecture):
    """Flip test averages f(x) and T f(T x) (T: mirror + swap views + permute), so for any
    network the result on the mirrored input is exactly the mirrored result; batching pairs
    gives the same as running them one at a time."""
    net = tiny_pose_net(architecture)
    images, P = stereo_inputs(batch=2)
    with torch.inference_mode():
        plain = net.forward_2d(images, P)["heatmaps"]
        out = net.forward_2d(images, P, flip_test=True)["heatmaps"]
        images_f, P_f = flip_crop_inputs(images, P)
        out_f = net.forward_2d(images_f, P_f, flip_test=True)["heatmaps"]
        single = net.forward_2d(images[1:], P[1:], flip_test=True)["heatmaps"]
    scale = out.abs().max().item()
    assert scale > 0.1
    torch.testing.assert_close(unflip_heatmaps(out_f, PERM), out, atol=1e-5 * scale, rtol=0)
    torch.testing.assert_close(single, out[1:], atol=1e-5 * scale, rtol=0)
    assert (out - plain).abs().max() > 0.05 * scale  # the mirrored pass does contribute


def test_flip_test_of_a_symmetric_crop_is_symmetric():
    """Crops that are their own mirror image: with flip test joint j and its mirror joint
    perm[j] land at mirrored x (x_j + x_perm[j] = W - 1) and the same y, with the same
    confidence; centre joints on the middle column. Without flip test they do not."""
    net = tiny_pose_net("baseline")
    images, P = stereo_inputs()
    images = (images + images.flip(-1)) / 2
    with torch.inference_mode():
        plain = net.forward_2d(images, P)
        flip = net.forward_2d(images, P, flip_test=True)
    uv, conf = flip["joints_2d"][0], flip["confidence"][0]
    np.testing.assert_allclose((uv[..., 0] + uv[:, PERM, 0]).numpy(), SIZE - 1, atol=1e-3)
    np.testing.assert_allclose(uv[..., 1].numpy(), uv[:, PERM, 1].numpy(), atol=1e-3)
    np.testing.assert_allclose(conf.numpy(), conf[:, PERM].numpy(), atol=1e-6)
    uv0 = plain["joints_2d"][0]
    assert (uv0[..., 0] + uv0[:, PERM, 0] - (SIZE - 1)).abs().max() > 0.5


def test_mirrored_cameras_see_the_mirrored_scene(synthetic_stereo_pair):
    """P' = A_flip P S with the views swapped: proper cameras (det > 0) whose projection of the
    mirrored joints S X is the mirrored crop pixel, view 0 still the left camera (same sign of
    disparity), still a rectified pair."""
    pair = synthetic_stereo_pair
    P = np.stack([pair.P_left, pair.P_right])
    boxes = crop_regions(pair.box, P, pair.left.shape[0], 1.25, 0.08)
    images, P_crop, _ = crop_views((pair.left, pair.right), P, boxes, (SIZE, SIZE))
    x = torch.as_tensor(np.stack(images)).permute(0, 3, 1, 2).float()[None]
    P_t = torch.as_tensor(np.stack(P_crop), dtype=torch.float64)[None]
    x_f, P_f = flip_crop_inputs(x, P_t)
    P_f = P_f[0].numpy()
    X = pair.joints_3d
    uv = project(X[None], np.stack(P_crop))  # (2, J, 2) crop px
    X_m = X * np.array([-1.0, 1.0, 1.0])
    uv_f = project(X_m[None], P_f)
    for v in range(2):
        np.testing.assert_allclose(uv_f[v, :, 0], SIZE - 1 - uv[1 - v, :, 0], atol=1e-9)
        np.testing.assert_allclose(uv_f[v, :, 1], uv[1 - v, :, 1], atol=1e-9)
        assert np.linalg.det(P_f[v, :, :3]) > 0
    # View 0 is the left camera in both pairs (its centre has the smaller x).
    centres = [[np.linalg.solve(M[:, :3], -M[:, 3])[0] for M in Ps] for Ps in (P_crop, P_f)]
    assert centres[0][0] < centres[0][1] and centres[1][0] < centres[1][1]
    assert is_rectified_pair(np.stack(P_crop)) and is_rectified_pair(P_f)
    assert x_f[0, 0].equal(x[0, 1].flip(-1)) and x_f[0, 1].equal(x[0, 0].flip(-1))


def test_estimator_runs_flip_test_in_one_batch(fixture_checkpoint, synthetic_stereo_pair):
    pair = synthetic_stereo_pair
    args = (pair.left, pair.right, pair.P_left, pair.P_right)
    est = StereoPoseEstimator.from_checkpoint(fixture_checkpoint, "cpu")
    assert est.flip_test is False
    plain = est.estimate(*args)
    batches: list[int] = []
    hook = est.pose_net.backbone.register_forward_hook(
        lambda _m, inputs, _o: batches.append(inputs[0].shape[0])
    )
    est.flip_test = True
    est.reset()
    flip = est.estimate(*args)
    hook.remove()
    assert batches == [4]  # 2 views + their 2 mirror images, one pass
    assert flip.detected and np.isfinite(flip.joints_2d_detected).all()
    np.testing.assert_array_equal(flip.crop_boxes, plain.crop_boxes)  # same crops
    assert not np.allclose(flip.joints_2d_detected, plain.joints_2d_detected)


def test_flip_test_setting_round_trips():
    from types import SimpleNamespace

    from stereo_pose3d.node import (
        PARAMETER_DOCS,
        NodeConfig,
        StereoPose3DNode,
        validate_config,
    )
    from stereo_pose3d.node import ConfigError as NodeConfigError
    from training.evaluate import _estimator_settings

    # Config / system checkpoint setting.
    assert tiny_system_config()["estimator"]["flip_test"] is False
    assert tiny_system_config(flip_test=True)["estimator"]["flip_test"] is True
    with pytest.raises(ConfigError, match="flip_test"):
        tiny_system_config(flip_test=1)
    # Estimator property.
    system = build_model(tiny_system_config(flip_test=True), pretrained=False)
    est = StereoPoseEstimator(system, "cpu")
    assert est.flip_test is True
    assert StereoPoseEstimator(system, "cpu", flip_test=False).flip_test is False
    est.flip_test = np.bool_(False)
    assert est.flip_test is False and est.settings["flip_test"] is False
    for bad in ("true", 1, None):
        with pytest.raises(ValueError, match="flip_test"):
            est.flip_test = bad
        with pytest.raises(ValueError, match="flip_test"):
            StereoPoseEstimator(system, "cpu", flip_test=bad)
    assert est.flip_test is False
    # Node parameter -> estimator.
    assert NodeConfig().flip_test is False and PARAMETER_DOCS["flip_test"][1] is False
    assert validate_config({"flip_test": True}, check_files=False).flip_test is True
    for bad in ("true", 1, 0.0):
        with pytest.raises(NodeConfigError, match="flip_test"):
            validate_config({"flip_test": bad}, check_files=False)
    node = SimpleNamespace(estimator=est)
    StereoPose3DNode._apply_estimator_config(node, NodeConfig(flip_test=True))
    assert est.flip_test is True
    StereoPose3DNode._apply_estimator_config(node, NodeConfig())
    assert est.flip_test is False
    # python -m training eval --estimator flip_test=VALUE (YAML booleans).
    for text, value in (("true", True), ("True", True), ("false", False), ("off", False)):
        assert _estimator_settings([f"flip_test={text}"]) == {"flip_test": value}
