"""Pose networks (CDRNet, baseline), locator, heatmaps, canonical frame, crops and configs."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
import torch
import torchvision

from stereo_pose3d.geometry import project
from stereo_pose3d.models import (
    BaselineModel,
    CDRNet,
    ConfigError,
    PersonLocator,
    box_recall,
    build_model,
    gaussian_heatmaps,
    locator_config,
    locator_loss,
    locator_targets,
    pose_config,
    soft_argmax,
)
from stereo_pose3d.models.canonical import canonical_frame, canonical_projections
from stereo_pose3d.models.crops import is_rectified_pair, letterbox, make_crop, stereo_boxes
from stereo_pose3d.models.heatmaps import crop_to_heatmap, heatmap_to_crop

SIZE = 64  # crop side of the tiny test networks


def tiny_pose(architecture: str, **kw) -> torch.nn.Module:
    torch.manual_seed(0)
    config = pose_config(
        architecture, "resnet18", (SIZE, SIZE), latent_channels=30, fusion_channels=32,
        head_channels=32, **kw,
    )  # fmt: skip
    return build_model(config)


def calibrate(model: torch.nn.Module, P: torch.Tensor) -> torch.nn.Module:
    """BatchNorm statistics from random data, so an untrained network's outputs vary."""
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None
            m.reset_running_stats()
    model.train()
    with torch.no_grad():
        model(torch.randn(P.shape[0], P.shape[1], 3, SIZE, SIZE), P)
    return model.eval()


def rotation(axis: np.ndarray, angle_deg: float) -> np.ndarray:
    R, _ = cv2.Rodrigues(np.asarray(axis, float) / np.linalg.norm(axis) * math.radians(angle_deg))
    return R


def look_at_projection(centre, target=(0.0, 0.0, 3.0), f=90.0, size=SIZE) -> np.ndarray:
    """P (3, 4) of a camera at ``centre`` looking at ``target`` (y down), crop-sized intrinsics."""
    centre, target = np.asarray(centre, float), np.asarray(target, float)
    z = (target - centre) / np.linalg.norm(target - centre)
    x = np.cross([0.0, 1.0, 0.0], z)
    x /= np.linalg.norm(x)
    R = np.stack([x, np.cross(z, x), z])
    K = np.array([[f, 0, (size - 1) / 2], [0, f, (size - 1) / 2], [0, 0, 1]])
    return K @ np.hstack([R, -R @ centre[:, None]])


def rig(views: int = 2, batch: int = 2) -> torch.Tensor:
    """(B, V, 3, 4) verged cameras around a person 3 m ahead of the origin."""
    P = [look_at_projection([0.6 * math.sin(a), -0.1 * v, 3 - 3 * math.cos(a)])
         for v, a in enumerate(np.linspace(0, 0.9, views))]  # fmt: skip
    return torch.tensor(np.stack(P), dtype=torch.float32).expand(batch, views, 3, 4).clone()


@pytest.mark.parametrize("architecture", ["cdrnet", "baseline"])
@pytest.mark.parametrize("views", [2, 3])
def test_shapes(architecture, views):
    model = tiny_pose(architecture).eval()
    P = rig(views)
    with torch.no_grad():
        out = model(torch.randn(2, views, 3, SIZE, SIZE), P)
    J = 16
    assert out["heatmaps"].shape == (2, views, J, SIZE // 4, SIZE // 4)
    assert out["joints_2d"].shape == (2, views, J, 2)
    assert out["confidence"].shape == (2, views, J)
    assert out["joints_3d"].shape == (2, J, 3)
    assert out["valid"].shape == (2, J) and out["valid"].dtype == torch.bool
    assert ((out["confidence"] >= 0) & (out["confidence"] <= 1)).all()
    assert ((out["joints_2d"] >= -0.5) & (out["joints_2d"] <= SIZE - 0.5)).all()
    assert torch.isfinite(out["joints_3d"]).all()


def test_bad_inputs():
    model = tiny_pose("cdrnet").eval()
    with pytest.raises(ValueError, match="at least 2 views"):
        model(torch.randn(1, 1, 3, SIZE, SIZE), rig(1, 1))
    with pytest.raises(ValueError, match="images must be"):
        model(torch.randn(1, 2, 3, 32, 32), rig(2, 1))
    with pytest.raises(ValueError, match="P must be"):
        model(torch.randn(1, 2, 3, SIZE, SIZE), rig(3, 1))


@pytest.mark.parametrize("architecture", ["cdrnet", "baseline"])
def test_gradients_reach_every_layer_from_the_3d_loss(architecture):
    model = tiny_pose(architecture).train()
    P = rig(2, 2)
    out = model(torch.randn(2, 2, 3, SIZE, SIZE), P)
    target = torch.tensor([0.0, 0.0, 3.0]).expand(2, 16, 3)
    loss = (out["joints_3d"] - target).norm(dim=-1).mean()
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
    for name in ["backbone.conv1.weight", "head.final.weight"] + (
        ["encode.weight", "fuse_view.0.weight", "fuse.3.weight", "lift.0.weight"]
        if architecture == "cdrnet" else []
    ):  # fmt: skip
        assert model.get_parameter(name).grad.abs().sum() > 0, name


def test_dlt_recovers_points_from_exact_2d():
    model = tiny_pose("cdrnet")
    P = rig(3, 1).double()
    X = torch.tensor([[0.1, -0.5, 3.2], [-0.3, 0.4, 2.8], [0.0, 0.0, 3.0]], dtype=torch.float64)
    uv = project(X[None, None], P)  # (1, V, 3, 2)
    X_hat, valid = model.triangulate(uv.float(), torch.ones(1, 3, 3), P.float())
    assert valid.all()
    torch.testing.assert_close(X_hat[0].double(), X, atol=1e-4, rtol=0)


def random_rigid(seed: int) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    T = np.eye(4)
    T[:3, :3] = rotation(rng.normal(size=3), rng.uniform(20, 170))
    T[:3, 3] = rng.normal(size=3) * 2
    return torch.tensor(T)


@pytest.mark.parametrize("architecture", ["cdrnet", "baseline"])
@pytest.mark.parametrize("views", [2, 3])
def test_equivariant_to_the_world_frame(architecture, views):
    """Guarantee (see canonical.py): the networks only see P's in the reference camera's frame,
    so a rigid change of world frame X' = T X (P' = P T^-1), and any positive rescaling of each P,
    leaves heatmaps and 2D joints unchanged and moves joints_3d exactly by T."""
    torch.manual_seed(1)
    P = rig(views, 2)
    model = calibrate(tiny_pose(architecture), P)
    images = torch.randn(2, views, 3, SIZE, SIZE)
    T = random_rigid(views)
    scales = torch.tensor([0.5, 3.0, 7.0][:views], dtype=torch.float64)[None, :, None, None]
    P2 = (P.double() @ torch.linalg.inv(T) * scales).float()
    with torch.no_grad():
        out, out2 = model(images, P), model(images, P2)
    torch.testing.assert_close(out2["heatmaps"], out["heatmaps"], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out2["joints_2d"], out["joints_2d"], atol=1e-3, rtol=0)
    X = out["joints_3d"].double()
    expected = X @ T[:3, :3].T + T[:3, 3]
    scale = 1 + X.norm(dim=-1, keepdim=True)
    torch.testing.assert_close(out2["joints_3d"].double() / scale, expected / scale, atol=2e-4,
                               rtol=0)  # fmt: skip
    assert torch.equal(out["valid"], out2["valid"])


def test_cdrnet_views_talk_baseline_views_do_not():
    """Moving the second camera changes CDRNet's heatmaps in the first view (the fused code
    depends on all cameras) but not the baseline's (views only meet in the DLT)."""
    P = rig(2, 1)
    P_moved = P.clone()
    P_moved[0, 1] = torch.tensor(look_at_projection([-1.5, 0.3, 1.0]), dtype=torch.float32)
    images = torch.randn(1, 2, 3, SIZE, SIZE)
    for arch in ("cdrnet", "baseline"):
        model = calibrate(tiny_pose(arch), P.expand(2, 2, 3, 4))
        with torch.no_grad():
            h0 = model(images, P)["heatmaps"][:, 0]
            h1 = model(images, P_moved)["heatmaps"][:, 0]
        changed = (h0 - h1).abs().max().item()
        assert (changed > 1e-4) if arch == "cdrnet" else (changed < 1e-6), (arch, changed)


def test_cdrnet_view_skip_starts_as_the_plain_network_and_learns():
    """``cdr.view_skip``: a plain CDRNet checkpoint loads into it and gives the same output
    (the skip's BN scale starts at 0); the skip gets gradients, and once non-zero it feeds each
    view's own features to that view's heatmaps."""
    P = rig(2, 2)
    plain = calibrate(tiny_pose("cdrnet"), P)
    skip = tiny_pose("cdrnet", view_skip=True)
    missing, unexpected = skip.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and missing and all(k.startswith("view_skip.") for k in missing)
    skip.eval()
    images = torch.randn(2, 2, 3, SIZE, SIZE)
    with torch.no_grad():
        same = (plain(images, P)["heatmaps"] - skip(images, P)["heatmaps"]).abs().max().item()
    assert same < 1e-6
    skip.train()
    skip(images, P)["heatmaps"].square().mean().backward()
    assert skip.view_skip[1].weight.grad.abs().sum() > 0
    with torch.no_grad():
        skip.view_skip[1].weight.fill_(1.0)
    skip.eval()
    with torch.no_grad():
        moved = (plain(images, P)["heatmaps"] - skip(images, P)["heatmaps"]).abs().max().item()
    assert moved > 1e-4
    with pytest.raises(ValueError, match="view_skip"):
        config = pose_config("cdrnet", "resnet18", (SIZE, SIZE), latent_channels=30)
        config["cdr"]["view_skip"] = "yes"
        build_model(config)


def test_canonical_frame_recovers_the_camera_pose():
    R = rotation([0.3, 1.0, -0.2], 40)
    C = np.array([0.5, -0.2, 1.0])
    K = np.array([[300.0, 2.0, 120], [0, 310, 100], [0, 0, 1]])
    P = torch.tensor(7.0 * K @ np.hstack([R, -R @ C[:, None]]))
    W = canonical_frame(P).numpy()
    np.testing.assert_allclose(W[:3, :3], R, atol=1e-10)
    np.testing.assert_allclose(W[:3, 3], -R @ C, atol=1e-10)
    P_c, _, _ = canonical_projections(P[None, None].expand(1, 2, 3, 4), (240, 200))
    np.testing.assert_allclose(P_c[0, 0, :, 3].numpy(), 0.0, atol=1e-12)  # reference: [K | 0]
    np.testing.assert_allclose(P_c[0, 0, 2].numpy(), [0, 0, 1, 0], atol=1e-12)


def test_soft_argmax_of_gaussian_targets():
    points = torch.tensor([[[10.3, 20.7], [40.0, 5.5]]])  # (1, J=2, 2) crop pixels
    maps = gaussian_heatmaps(points, torch.tensor([[True, False]]), (16, 16), stride=4, sigma=2)
    assert maps.shape == (1, 2, 16, 16)
    assert maps[0, 1].abs().max() == 0
    uv, conf = soft_argmax(maps, beta=20.0)
    xy = heatmap_to_crop(uv, 4)
    torch.testing.assert_close(xy[0, 0], points[0, 0], atol=0.3, rtol=0)
    assert conf[0, 0] > 0.9 and conf[0, 1] == 0
    torch.testing.assert_close(crop_to_heatmap(heatmap_to_crop(uv, 4), 4), uv)


def test_locator_shapes_decode_and_loss():
    torch.manual_seed(0)
    config = locator_config(input_size=(128, 96), head_channels=32)
    locator = build_model(config)
    assert isinstance(locator, PersonLocator) and locator.stride == 8
    out = locator(torch.randn(3, 3, 96, 128))
    assert out["centre"].shape == (3, 1, 12, 16)
    assert out["offset"].shape == out["size"].shape == (3, 2, 12, 16)
    boxes = torch.tensor([[30.0, 10.0, 70.0, 90.0], [5.0, 5.0, 25.0, 45.0], [0, 0, 10, 10]])
    present = torch.tensor([True, True, False])
    targets = locator_targets(boxes, present, (128, 96), stride=8)
    assert targets["centre"][2].max() == 0 and targets["centre"][0].max() == 1
    loss = locator_loss(out, targets)
    loss["loss"].backward()
    assert torch.isfinite(loss["loss"]) and locator.backbone.conv1.weight.grad is not None
    # Outputs equal to the targets decode to the ground-truth boxes and beat random outputs.
    ideal = {
        "centre": torch.logit(targets["centre"].clamp(1e-4, 1 - 1e-4)),
        "offset": targets["offset"][:, :, None, None].expand(3, 2, 12, 16).clone(),
        "size": targets["size"][:, :, None, None].expand(3, 2, 12, 16).clone(),
    }
    decoded, scores = locator.decode(ideal)
    torch.testing.assert_close(decoded[:2], boxes[:2], atol=1e-3, rtol=0)
    assert scores[0] > 0.99 and scores[2] < 0.01
    assert locator_loss(ideal, targets)["loss"] < loss["loss"]
    assert box_recall(decoded[:2], scores[:2], boxes[:2]) == 1.0
    assert box_recall(decoded[:2] + 40, scores[:2], boxes[:2]) == 0.0


def test_make_crop_keeps_projection_consistent():
    rng = np.random.default_rng(0)
    P = np.array([[500.0, 0, 320, 10], [0, 500, 240, 5], [0, 0, 1, 0.1]])
    X = rng.uniform([-0.5, -0.8, 2.5], [0.5, 0.8, 3.5], size=(20, 3))
    image = np.zeros((480, 640, 3), np.uint8)
    uv = project(X, P)
    cv2.circle(image, tuple(int(c) for c in np.round(uv[0])), 15, (255, 255, 255), -1)
    crop, P_crop, A = make_crop(image, P, [250, 100, 400, 420], (64, 64), 1.2, 25.0)
    assert crop.shape == (64, 64, 3)
    np.testing.assert_allclose(project(X, P_crop), uv @ A[:2, :2].T + A[:2, 2], atol=1e-9)
    # The bright spot lands where P_crop projects the point.
    x, y = project(X[:1], P_crop)[0]
    weight = crop[..., 0].astype(float)
    ys, xs = np.mgrid[: crop.shape[0], : crop.shape[1]]
    centroid = np.array([(xs * weight).sum(), (ys * weight).sum()]) / weight.sum()
    assert np.abs(centroid - [x, y]).max() < 0.5


def test_letterbox_and_stereo_boxes():
    image = np.zeros((480, 640, 3), np.uint8)
    image[200:210, 300:310] = 255
    boxed, A = letterbox(image, (128, 96))
    assert boxed.shape == (96, 128, 3)
    centre = A[:2, :2] @ [304.5, 204.5] + A[:2, 2]
    bright = np.argwhere(boxed[..., 0] > 100).mean(0)
    np.testing.assert_allclose(bright[::-1], centre, atol=0.6)
    boxes = stereo_boxes(np.array([[100, 50, 150, 250], [60, 60, 100, 240.0]]), rectified=True)
    assert np.allclose(boxes[0, [1, 3]], boxes[1, [1, 3]])
    assert np.allclose(boxes[:, 2] - boxes[:, 0], 200) and np.allclose(
        boxes[:, 3] - boxes[:, 1], 200
    )
    P_l = np.array([[500.0, 0, 320, 0], [0, 500, 240, 0], [0, 0, 1, 0]])
    P_r = P_l.copy()
    P_r[0, 3] = -60
    assert is_rectified_pair(np.stack([P_l, P_r]))
    assert not is_rectified_pair(np.stack([P_l, P_l @ np.diag([1, 1, 1, 1.0]) + 1]))


def test_configs_and_factory():
    for arch in ("cdrnet", "baseline"):
        for name, width in (("resnet18", 512), ("resnet34", 512), ("resnet50", 2048),
                            ("resnet101", 2048), ("resnet152", 2048)):  # fmt: skip
            with torch.device("meta"):
                model = build_model(pose_config(arch, name))
            assert model.backbone.out_channels == width
            assert isinstance(model, CDRNet if arch == "cdrnet" else BaselineModel)
    with pytest.raises(ConfigError, match="unknown backbone"):
        build_model({**pose_config(), "backbone": {"name": "vgg16"}})
    with pytest.raises(ConfigError, match="multiples of 32"):
        build_model({**pose_config(), "input_size": [250, 256]})
    with pytest.raises(ConfigError, match="multiple of 3"):
        build_model({**pose_config(), "cdr": {"latent_channels": 100, "fusion_channels": 8}})
    with pytest.raises(ConfigError, match="unknown architecture"):
        build_model({"architecture": "hrnet"})


def test_backbone_loads_a_torchvision_state_dict(tmp_path):
    torch.manual_seed(3)
    reference = torchvision.models.resnet18(weights=None)
    path = tmp_path / "resnet18-imagenet.pth"
    torch.save(reference.state_dict(), path)
    model = build_model(pose_config("baseline", "resnet18", (64, 64), pretrained=str(path)))
    torch.testing.assert_close(
        model.backbone.layer4[1].conv2.weight, reference.layer4[1].conv2.weight
    )
    torch.save(torchvision.models.resnet34(weights=None).state_dict(), tmp_path / "r34.pth")
    with pytest.raises(ValueError, match="not a resnet18 state dict"):
        build_model(
            pose_config("baseline", "resnet18", (64, 64), pretrained=str(tmp_path / "r34.pth"))
        )
    with pytest.raises(ValueError, match="not found"):
        build_model(pose_config("baseline", "resnet18", (64, 64), pretrained=str(tmp_path / "x")))
