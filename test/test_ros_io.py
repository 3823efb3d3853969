"""Image/CameraInfo/PoseArray conversions: every encoding, row padding, byte order, bad input."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from stereo_pose3d import ros_io
from stereo_pose3d.ros_io import InputError

RNG = np.random.default_rng(0)
RGB = RNG.integers(0, 256, size=(7, 5, 3), dtype=np.uint8)
GRAY = (RGB.astype(np.float64) @ [0.299, 0.587, 0.114]).round().astype(np.uint8)


@pytest.mark.parametrize("padding", [0, 3])
@pytest.mark.parametrize("encoding", ["rgb8", "bgr8", "rgba8", "bgra8", "8UC3", "8UC4"])
def test_colour_encodings_round_trip_exactly(encoding, padding):
    msg = ros_io.rgb_to_image(RGB, encoding=encoding, row_padding=padding)
    assert msg.step == RGB.shape[1] * (4 if "a" in encoding or "C4" in encoding else 3) + padding
    out = ros_io.image_to_rgb(msg)
    assert out.dtype == np.uint8 and out.shape == RGB.shape and out.flags.c_contiguous
    np.testing.assert_array_equal(out, RGB)


@pytest.mark.parametrize("encoding", ["mono8", "8UC1", "mono16", "16UC1"])
@pytest.mark.parametrize("bigendian", [False, True])
def test_mono_encodings_with_padding_and_byte_order(encoding, bigendian):
    msg = ros_io.rgb_to_image(RGB, encoding=encoding, row_padding=2, bigendian=bigendian)
    out = ros_io.image_to_rgb(msg)
    assert out.shape == RGB.shape
    np.testing.assert_array_equal(out[..., 0], out[..., 2])
    assert np.abs(out[..., 1].astype(int) - GRAY).max() <= 1


def test_big_endian_16_bit_values_are_read_in_the_right_order():
    # One pixel of value 0x1234 stored big-endian, one of 0xFF00: scaled by 255/65535.
    data = bytes([0x12, 0x34, 0xFF, 0x00])
    msg = SimpleNamespace(height=1, width=2, encoding="mono16", is_bigendian=1, step=4, data=data)
    out = ros_io.image_to_rgb(msg)
    assert out[0, 0, 0] == int(0x1234 * 255 / 65535)
    assert out[0, 1, 0] == int(0xFF00 * 255 / 65535)


def test_bytes_array_and_memoryview_buffers_work():
    msg = ros_io.rgb_to_image(RGB)
    for data in (bytes(msg.data), bytearray(msg.data), memoryview(bytes(msg.data))):
        ns = SimpleNamespace(height=7, width=5, encoding="rgb8", is_bigendian=0, step=15, data=data)
        np.testing.assert_array_equal(ros_io.image_to_rgb(ns), RGB)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"encoding": "yuv422"}, "unsupported_encoding"),
        ({"encoding": "32FC1"}, "unsupported_encoding"),
        ({"encoding": ""}, "unsupported_encoding"),
        ({"width": 0, "height": 0, "data": b""}, "empty_image"),
        ({"step": 10}, "bad_step"),
        ({"data": bytes(20)}, "truncated_image"),
    ],
)
def test_bad_images_raise_input_error_with_reason(change, reason):
    base = {
        "height": 7,
        "width": 5,
        "encoding": "rgb8",
        "is_bigendian": 0,
        "step": 15,
        "data": bytes(105),
    }
    with pytest.raises(InputError) as info:
        ros_io.image_to_rgb(SimpleNamespace(**{**base, **change}))
    assert info.value.reason == reason
    assert str(info.value)


def test_camera_info_round_trip_and_validation():
    P = np.array([[500.0, 0, 320, -60.0], [0, 500.0, 240, 0], [0, 0, 1, 0]])
    info = ros_io.camera_info(P, 640, 480)
    model = ros_io.camera_model(info)
    np.testing.assert_allclose(model.P, P)
    np.testing.assert_allclose(model.K, P[:, :3])
    assert (model.width, model.height) == (640, 480)
    np.testing.assert_allclose(ros_io.camera_center(P), [0.12, 0, 0])

    zero = ros_io.camera_info(np.zeros((3, 4)), 640, 480)
    with pytest.raises(InputError) as e:
        ros_io.camera_model(zero)
    assert e.value.reason == "uncalibrated"
    nan = ros_io.camera_info(P, 640, 480)
    nan.k[0] = float("nan")
    with pytest.raises(InputError) as e:
        ros_io.camera_model(nan)
    assert e.value.reason == "calibration_nan"
    bad_r = ros_io.camera_info(P, 640, 480, R=np.diag([1.0, 1.0, 2.0]))
    with pytest.raises(InputError) as e:
        ros_io.camera_model(bad_r)
    assert e.value.reason == "bad_calibration"


def test_pose_array_keeps_order_and_flags_low_confidence():
    joints = np.arange(48, dtype=float).reshape(16, 3) / 10
    conf = np.linspace(0, 1, 16)
    header = ros_io.make_header(1_500_000_000, "cam")
    msg = ros_io.pose_array(joints, header, conf, min_confidence=0.5)
    assert len(msg.poses) == 16 and msg.header.frame_id == "cam"
    assert msg.header.stamp.sec == 1 and msg.header.stamp.nanosec == 500_000_000
    back, flags = ros_io.pose_array_to_numpy(msg)
    np.testing.assert_allclose(back, joints)
    np.testing.assert_array_equal(flags, conf >= 0.5)
    assert len(ros_io.pose_array(None, header).poses) == 0


def test_stamp_conversions():
    for ns in (0, 1, 999_999_999, 1_000_000_000, 1_795_000_000_123_456_789):
        assert ros_io.stamp_to_ns(ros_io.ns_to_stamp(ns)) == ns
