"""Geometry: cameras from CameraInfo, distortion, projection, crops and DLT triangulation."""

from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import torch

from stereo_pose3d.geometry import (
    CalibrationError,
    CameraModel,
    crop_transform,
    distort_points,
    project,
    reprojection_error,
    stereo_baseline,
    transform_points,
    transform_projection,
    triangulate,
    triangulate_dlt,
    triangulate_dlt_iterative,
    undistort_points,
)


def look_at(camera_center: np.ndarray, target: np.ndarray) -> np.ndarray:
    """World -> camera rotation of a camera at ``camera_center`` looking at ``target`` (y down)."""
    z = target - camera_center
    z = z / np.linalg.norm(z)
    x = np.cross(z, [0.0, -1.0, 0.0])
    x = x / np.linalg.norm(x)
    y = np.cross(z, x)
    return np.stack([x, y, z])


def random_camera_pair(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Two well-conditioned verged cameras around the origin, returned as (2, 3, 4)."""
    projections = []
    for _ in range(2):
        f = rng.uniform(300, 900)
        K = np.array([[f, 0, rng.uniform(280, 360)], [0, f, rng.uniform(200, 280)], [0, 0, 1]])
        center = rng.normal(size=3)
        center = center / np.linalg.norm(center) * rng.uniform(3, 6)
        R = look_at(center, np.zeros(3))
        projections.append(K @ np.hstack([R, -R @ center[:, None]]))
    return np.stack(projections)


def stereo_rig(baseline: float = 0.16, f: float = 450.0) -> np.ndarray:
    K = np.array([[f, 0, 320.0], [0, f, 240.0], [0, 0, 1]])
    left = np.hstack([K, np.zeros((3, 1))])
    right = np.hstack([K, np.array([[-f * baseline], [0.0], [0.0]])])
    return np.stack([left, right])


def camera_info(**overrides):
    fields = dict(
        width=640,
        height=480,
        k=[450.0, 0, 320, 0, 450, 240, 0, 0, 1],
        d=[0.0] * 5,
        r=[1.0, 0, 0, 0, 1, 0, 0, 0, 1],
        p=[450.0, 0, 320, -72.0, 0, 450, 240, 0, 0, 0, 1, 0],
        distortion_model="plumb_bob",
        header=SimpleNamespace(frame_id="stereo_right_optical_frame"),
    )
    fields.update(overrides)
    return SimpleNamespace(**fields)


# ---------------------------------------------------------------- cameras


def test_camera_from_camera_info_and_baseline():
    cam = CameraModel.from_camera_info(camera_info())
    cam.validate()
    assert cam.is_calibrated and cam.is_rectified
    assert cam.frame_id == "stereo_right_optical_frame"
    assert stereo_baseline(cam.P) == pytest.approx(0.16)
    info = cam.to_camera_info_dict()
    assert info["p"][3] == -72.0 and info["width"] == 640


def test_uncalibrated_and_nan_cameras_are_reported():
    cam = CameraModel.from_camera_info(camera_info(k=[0.0] * 9, p=[0.0] * 12))
    assert not cam.is_calibrated
    with pytest.raises(CalibrationError, match="uncalibrated"):
        cam.validate()
    nan_cam = CameraModel.from_camera_info(camera_info(k=[np.nan] + [0.0] * 8))
    with pytest.raises(CalibrationError, match="NaN"):
        nan_cam.validate()
    with pytest.raises(CalibrationError, match="K has 4 values"):
        CameraModel.from_camera_info(camera_info(k=[1.0, 2.0, 3.0, 4.0]))
    with pytest.raises(CalibrationError, match="empty"):
        CameraModel.from_camera_info(camera_info(width=0)).validate()


@pytest.mark.parametrize(
    "model,D",
    [
        ("plumb_bob", [-0.28, 0.09, 0.001, -0.0005, -0.01]),
        ("rational_polynomial", [0.3, -0.1, 0.0008, 0.0004, 0.02, 0.6, -0.05, 0.04]),
    ],
)
def test_distortion_matches_opencv(model, D):
    rng = np.random.default_rng(1)
    K = np.array([[500.0, 0, 330], [0, 505, 235], [0, 0, 1]])
    xy = rng.uniform(-0.6, 0.6, size=(200, 2))
    pixels = distort_points(xy, K, D, model)
    expected, _ = cv2.projectPoints(
        np.hstack([xy, np.ones((200, 1))]), np.zeros(3), np.zeros(3), K, np.asarray(D)
    )
    np.testing.assert_allclose(pixels, expected[:, 0], atol=1e-9)
    # Undistortion inverts it and agrees with OpenCV, with R and P applied.
    R = cv2.Rodrigues(np.array([0.01, -0.02, 0.005]))[0]
    P = np.array([[480.0, 0, 320, 0], [0, 480, 240, 0], [0, 0, 1, 0]])
    ours = undistort_points(pixels, K, D, model, R=R, P=P)
    criteria = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 100, 1e-14)
    theirs = cv2.undistortPointsIter(pixels[:, None], K, np.asarray(D), R, P, criteria)[:, 0]
    np.testing.assert_allclose(ours, theirs, atol=1e-4)
    np.testing.assert_allclose(undistort_points(pixels, K, D, model), xy, atol=1e-6)


def test_rectify_points_of_a_raw_camera_lands_on_the_rectified_projection():
    rng = np.random.default_rng(2)
    K = np.array([[460.0, 0, 318], [0, 460, 242], [0, 0, 1]])
    D = np.array([-0.2, 0.05, 0.0, 0.0, 0.0])
    R = cv2.Rodrigues(np.array([0.0, 0.05, 0.0]))[0]  # raw -> rectified
    P = np.array([[450.0, 0, 320, 0], [0, 450, 240, 0], [0, 0, 1, 0]])
    cam = CameraModel(640, 480, K, D, "plumb_bob", R, P)
    assert not cam.is_rectified
    X_rect = rng.uniform([-1, -1, 3], [1, 1, 5], size=(20, 3))
    X_raw = X_rect @ R  # R^T X_rect
    raw_pixels = distort_points(X_raw[:, :2] / X_raw[:, 2:], K, D)
    np.testing.assert_allclose(cam.rectify_points(raw_pixels), project(X_rect, P), atol=1e-6)


# ---------------------------------------------------------------- projection and crops


def test_project_broadcasts_numpy_and_torch():
    P = stereo_rig()
    X = np.array([[0.1, -0.2, 4.0], [0.0, 0.0, 2.0]])
    uv = project(X[None], P)  # (2 views, 2 joints, 2)
    assert uv.shape == (2, 2, 2)
    np.testing.assert_allclose(uv[0, 1], [320, 240])
    np.testing.assert_allclose(uv[0, 0, 0] - uv[1, 0, 0], 450 * 0.16 / 4.0)  # disparity f B / Z
    uv_t = project(torch.tensor(X)[None, None], torch.tensor(P)[None])
    assert uv_t.shape == (1, 2, 2, 2)
    np.testing.assert_allclose(uv_t[0].numpy(), uv)
    err = reprojection_error(X, uv + np.array([[[3.0, 4.0]], [[0.0, 0.0]]]), P)
    np.testing.assert_allclose(err, [[5.0, 5.0], [0.0, 0.0]])


@pytest.mark.parametrize("rotation", [0.0, 30.0, -45.0])
def test_crop_transform_keeps_projection_consistent(rotation):
    rng = np.random.default_rng(3)
    P = stereo_rig()[1]
    X = rng.uniform([-0.5, -1, 3], [0.5, 1, 4], size=(16, 3))
    uv = project(X, P)
    box = [*uv.min(0), *uv.max(0)]
    A = crop_transform(box, (256, 256), rotation_deg=rotation, scale=1.25)
    crop_uv = transform_points(A, uv)
    np.testing.assert_allclose(crop_uv, project(X, transform_projection(A, P)), atol=1e-9)
    # The box centre goes to the crop centre; everything fits inside the crop.
    np.testing.assert_allclose(transform_points(A, np.mean(np.reshape(box, (2, 2)), 0)), [128, 128])
    assert np.all((crop_uv > 0) & (crop_uv < 256))
    # The image content follows: a bright pixel at a joint lands where the joint does.
    image = np.zeros((480, 640), np.float32)
    u, v = np.round(uv[0]).astype(int)
    image[v - 2 : v + 3, u - 2 : u + 3] = 1.0
    crop = cv2.warpAffine(image, A[:2], (256, 256))
    ys, xs = np.mgrid[:256, :256]
    centroid = np.array([(xs * crop).sum(), (ys * crop).sum()]) / crop.sum()
    np.testing.assert_allclose(centroid, transform_points(A, [u, v]), atol=0.5)


# ---------------------------------------------------------------- triangulation


@pytest.mark.parametrize("noise_px", [0.0, 1.0])
def test_dlt_matches_opencv(noise_px):
    rng = np.random.default_rng(4)
    for _ in range(20):
        P = random_camera_pair(rng)
        X = rng.uniform(-1, 1, size=(16, 3))
        uv = project(X[None], P) + rng.normal(0, noise_px, size=(2, 16, 2))
        ours = triangulate_dlt(torch.tensor(uv), torch.tensor(P)).numpy()
        h = cv2.triangulatePoints(P[0], P[1], uv[0].T, uv[1].T)
        theirs = (h[:3] / h[3]).T
        assert np.max(np.abs(ours - theirs)) / np.max(np.abs(theirs)) < 1e-6
        if noise_px == 0:
            np.testing.assert_allclose(ours, X, atol=1e-9)


def test_dlt_batched_any_number_of_views():
    rng = np.random.default_rng(5)
    B, V, J = 4, 3, 16
    P = np.stack(
        [np.concatenate([random_camera_pair(rng), random_camera_pair(rng)[:1]]) for _ in range(B)]
    )
    X = rng.uniform(-1, 1, size=(B, J, 3))
    uv = project(X[:, None], P)
    for solve in (triangulate_dlt, triangulate_dlt_iterative):
        out = solve(torch.tensor(uv), torch.tensor(P))
        assert out.shape == (B, J, 3)
        np.testing.assert_allclose(out.numpy(), X, atol=1e-7)
    assert uv.shape == (B, V, J, 2)


def test_weighted_dlt_beats_unweighted_when_weights_reflect_noise():
    rng = np.random.default_rng(6)
    P = np.stack(
        [random_camera_pair(rng)[0], random_camera_pair(rng)[1], random_camera_pair(rng)[0]]
    )
    X = rng.uniform(-1, 1, size=(2000, 3))
    sigma = np.array([0.3, 0.3, 8.0])  # the third view is much noisier
    uv = project(X[None], P) + rng.normal(size=(3, 2000, 2)) * sigma[:, None, None]
    weights = np.broadcast_to(1.0 / sigma[:, None], (3, 2000))
    plain = triangulate_dlt(torch.tensor(uv), torch.tensor(P)).numpy()
    weighted = triangulate_dlt(torch.tensor(uv), torch.tensor(P), torch.tensor(weights)).numpy()
    plain_err = np.linalg.norm(plain - X, axis=1).mean()
    weighted_err = np.linalg.norm(weighted - X, axis=1).mean()
    assert weighted_err < 0.7 * plain_err


def test_iterative_solver_agrees_with_svd_on_noisy_stereo():
    rng = np.random.default_rng(7)
    for baseline in (0.06, 0.16, 0.30):
        P = torch.tensor(stereo_rig(baseline))
        X = rng.uniform([-1, -1, 2], [1, 1, 6], size=(64, 16, 3))
        uv = project(X[:, None], P.numpy()) + rng.normal(0, 1.0, size=(64, 2, 16, 2))
        w = torch.tensor(rng.uniform(0.2, 1.0, size=(64, 2, 16)))
        svd = triangulate_dlt(torch.tensor(uv), P, w)
        iterative = triangulate_dlt_iterative(torch.tensor(uv), P, w)
        rel = (iterative - svd).norm(dim=-1) / svd.norm(dim=-1)
        assert rel.max() < 1e-4, (baseline, rel.max())


def test_iterative_solver_gradcheck():
    rng = np.random.default_rng(8)
    P = torch.tensor(random_camera_pair(rng))
    X = rng.uniform(-1, 1, size=(3, 3))
    uv = torch.tensor(
        project(X[None], P.numpy()) + rng.normal(0, 0.5, (2, 3, 2)), requires_grad=True
    )
    w = torch.tensor(rng.uniform(0.5, 1.0, size=(2, 3)), requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: triangulate_dlt_iterative(a, P, b), (uv, w))
    assert torch.autograd.gradcheck(lambda a, b: triangulate_dlt(a, P, b), (uv, w))


def test_degenerate_cases_are_flagged_not_nan():
    P = torch.tensor(stereo_rig())
    X = np.array([[0.2, 0.1, 4.0], [0.0, 0.0, 3.0], [0.1, 0.1, 5.0], [0.0, 0.3, 2.5]])
    uv = torch.tensor(project(X[None], P.numpy()))
    w = torch.ones(2, 4, dtype=torch.float64)
    w[1, 0] = 0.0  # joint 0 seen in one view only
    w[:, 3] = 0.0  # joint 3 seen nowhere
    uv[1, 1] = uv[0, 1]  # joint 1: zero disparity -> parallel rays (point at infinity)
    uv[1, 2, 0] = uv[0, 2, 0] + 20.0  # joint 2: negative disparity -> behind the cameras
    for method in ("svd", "iterative"):
        result = triangulate(uv, P, w, method=method)
        assert result.valid.tolist() == [False, False, False, False]
        assert torch.isfinite(result.points).all()
    # NaN pixels and NaN weights inside a batch only invalidate their own joints.
    batch_uv = torch.tensor(project(X[None], P.numpy())).repeat(3, 1, 1, 1)
    batch_uv[1, 0, 2] = float("nan")
    batch_w = torch.ones(3, 2, 4, dtype=torch.float64)
    batch_w[2, 1, 3] = float("nan")
    result = triangulate(batch_uv, P, batch_w)
    assert result.valid[0].all() and torch.isfinite(result.points).all()
    assert result.valid[1].tolist() == [True, True, False, True]
    assert result.valid[2].tolist() == [True, True, True, False]
    np.testing.assert_allclose(result.points[0].numpy(), X, atol=1e-9)


def test_bad_shapes_are_clear_errors():
    P = torch.tensor(stereo_rig())
    with pytest.raises(ValueError, match="at least 2 views"):
        triangulate_dlt(torch.zeros(1, 16, 2), P[:1])
    with pytest.raises(ValueError, match=r"\(\.\.\., V, 3, 4\)"):
        triangulate_dlt(torch.zeros(2, 16, 2), torch.zeros(2, 4, 4))
    with pytest.raises(ValueError, match="weights"):
        triangulate_dlt(torch.zeros(2, 16, 2, dtype=torch.float64), P, torch.ones(2, 15))
