"""RViz markers and the debug drawing."""

from __future__ import annotations

import numpy as np
import pytest
from visualization_msgs.msg import Marker

from stereo_pose3d import ros_io
from stereo_pose3d.markers import (
    confidence_rgba,
    delete_all_markers,
    draw_debug_image,
    skeleton_markers,
)
from stereo_pose3d.skeleton import LEFT_COLOR, MADS, MPII, RIGHT_COLOR

HEADER = ros_io.make_header(2_000_000_123, "stereo_left_optical_frame")
JOINTS = np.random.default_rng(1).normal(size=(16, 3)) * 0.3 + [0, 0, 3]


def test_skeleton_markers_structure_colours_and_lifetime():
    conf = np.full(16, 0.9)
    arr = skeleton_markers(JOINTS, conf, MPII, HEADER, min_confidence=0.3, scale=0.06, lifetime=0.4)
    spheres, lines = arr.markers
    assert spheres.type == Marker.SPHERE_LIST and lines.type == Marker.LINE_LIST
    assert (spheres.ns, lines.ns) == ("joints", "bones")
    for m in arr.markers:
        assert m.header.frame_id == "stereo_left_optical_frame"
        assert (m.header.stamp.sec, m.header.stamp.nanosec) == (2, 123)
        assert m.action == Marker.ADD and m.pose.orientation.w == 1.0
        assert m.lifetime.sec == 0 and m.lifetime.nanosec == 400_000_000
    assert spheres.scale.x == pytest.approx(0.06)
    assert lines.scale.x == pytest.approx(0.024)
    assert len(spheres.points) == len(spheres.colors) == 16
    np.testing.assert_allclose([[p.x, p.y, p.z] for p in spheres.points], JOINTS)
    assert len(lines.points) == len(lines.colors) == 2 * len(MPII.bones)
    # side colours: right red-ish, left blue-ish
    r = spheres.colors[MPII.index("right_wrist")]
    left = spheres.colors[MPII.index("left_wrist")]
    assert np.allclose([r.r, r.g, r.b], np.array(RIGHT_COLOR) * (0.4 + 0.6 * 0.9))
    assert np.allclose([left.r, left.g, left.b], np.array(LEFT_COLOR) * (0.4 + 0.6 * 0.9))


def test_low_confidence_and_nan_joints_are_left_out_with_their_bones():
    conf = np.full(16, 0.9)
    conf[MPII.index("left_wrist")] = 0.1
    joints = JOINTS.copy()
    joints[MPII.index("right_ankle")] = np.nan
    spheres, lines = skeleton_markers(joints, conf, MPII, HEADER, min_confidence=0.3).markers
    assert len(spheres.points) == 14
    assert len(lines.points) == 2 * (len(MPII.bones) - 2)
    assert all(np.isfinite([p.x, p.y, p.z]).all() for p in spheres.points + lines.points)


def test_nobody_confident_gives_deleteall():
    arr = skeleton_markers(JOINTS, np.zeros(16), MPII, HEADER, min_confidence=0.3)
    assert [m.action for m in arr.markers] == [Marker.DELETEALL]
    arr = delete_all_markers(HEADER)
    assert arr.markers[0].action == Marker.DELETEALL
    assert arr.markers[0].header.frame_id == HEADER.frame_id


def test_confidence_rgba_and_shape_errors():
    assert confidence_rgba((1.0, 0.0, 0.0), 1.0) == pytest.approx([1, 0, 0, 1])
    assert confidence_rgba((1.0, 0.0, 0.0), float("nan"))[3] == pytest.approx(0.35)
    with pytest.raises(ValueError, match="skeleton"):
        skeleton_markers(JOINTS, np.ones(16), MADS, HEADER)


def test_debug_image_draws_both_views():
    left = np.zeros((120, 160, 3), np.uint8)
    right = np.zeros((120, 160, 3), np.uint8)
    uv = np.stack([np.linspace([20, 20], [140, 100], 16)] * 2)
    img = draw_debug_image(left, right, uv, np.ones(16), MPII, 0.3, text="hi")
    assert img.shape == (120, 320, 3) and img.dtype == np.uint8
    assert img[:, :160].any() and img[:, 160:].any()
    assert not left.any()  # inputs untouched
    empty = draw_debug_image(left, right, None, None, MPII)
    assert empty.shape == (120, 320, 3) and not empty.any()
