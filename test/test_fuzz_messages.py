"""Property-based fuzzing of the node's input path (hypothesis), without DDS.

Generated ``sensor_msgs/Image`` and ``sensor_msgs/CameraInfo`` messages -- random encodings
(supported, unsupported, garbage strings), sizes (0 to 48 px, plus 2^31-sized headers), steps
(exact, padded, too small), byte order, data that is exact, minimal (last row unpadded),
truncated or too long, calibrations with NaN/inf, zero K/P, non-rotation R, unknown distortion
models, distortion vectors of any length, image/camera_info size mismatches, identical left/right
cameras, singular P -- go through

1. ``pipeline.prepare_frame`` / ``PoseProcessor.process`` (rectified and raw input): either a
   result whose pixels are exactly the generated ones, or an ``InputError`` whose reason is one
   of the defects an independent oracle found in the generated pair; never another exception;
2. a real ``StereoPose3DNode`` (own rclpy context, fake estimator) fed through its subscription
   callbacks with stamps that advance, repeat, go back a little (out of order) or a lot (clock
   reset), single images that never pair, and camera_info updates: every synchronized pair ends
   up processed, dropped or failed with a documented reason, the worker stays alive, queues stay
   bounded, and a good pair afterwards is published;
3. the real estimator (tiny fixture checkpoint) on valid images of odd sizes.

The number of cases run is printed at the end of the module (and asserted).
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import Counter
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from sensor_msgs.msg import Image

from stereo_pose3d import ros_io
from stereo_pose3d.geometry import DISTORTION_MODELS
from stereo_pose3d.pipeline import PoseProcessor, ProcessingConfig
from stereo_pose3d.ros_io import ENCODINGS, InputError
from stereo_pose3d.skeleton import MPII

# Every reason the pipeline and the node may count (docs/ros.md, "Diagnostics and bad input").
DOCUMENTED_REASONS = {
    "unsupported_encoding", "empty_image", "bad_step", "truncated_image", "size_mismatch",
    "info_size_mismatch", "no_camera_info", "uncalibrated", "calibration_nan",
    "bad_calibration", "zero_baseline", "out_of_order_stamp", "estimator_output",
    "estimator_error",
}  # fmt: skip
BAD_ENCODINGS = ["yuv422", "bayer_rggb8", "32FC1", "rgb16", "16UC3", "", "RGB8", "mono 8"]
HUGE = [2**31, 2**32 - 1, 100_000]
CASES: Counter[str] = Counter()  # generated cases per test
OUTCOMES: Counter[str] = Counter()  # what became of them (accepted / rejected: reason)


def fuzz(max_examples: int) -> settings:
    """Hypothesis settings of these tests: no deadline (shared CPU), no example database on
    disk, every health check off (module fixtures and large generated messages are intended)."""
    return settings(
        max_examples=max_examples,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )


@pytest.fixture(scope="module", autouse=True)
def report_cases(request):
    yield
    total = sum(CASES.values())
    lines = [
        f"fuzz cases run: {total} ({', '.join(f'{k} {v}' for k, v in sorted(CASES.items()))})",
        "outcomes: " + ", ".join(f"{k} {v}" for k, v in sorted(OUTCOMES.items())),
    ]
    show_counts(request, lines)


def show_counts(request, lines: list[str]) -> None:
    """Print to the terminal past pytest's output capture (the counts are part of the report)."""
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    with capture.global_and_fixture_disabled():
        print("\n" + "\n".join(lines), flush=True)


# ---------------------------------------------------------------------------------------------
# generated messages and the oracle
# ---------------------------------------------------------------------------------------------


def expected_rgb(pixels: np.ndarray, encoding: str) -> np.ndarray:
    """What the decoder must return for ``pixels`` ((H, W, C) native order) in ``encoding``."""
    name = ENCODINGS[encoding][2]
    if name == "rgb8":
        return pixels
    if name == "bgr8":
        return pixels[..., ::-1]
    if name == "rgba8":
        return pixels[..., :3]
    if name == "bgra8":
        return pixels[..., 2::-1]
    if name == "mono8":
        return np.repeat(pixels, 3, axis=2)
    scaled = np.multiply(pixels, 255.0 / 65535.0).astype(np.uint8)  # mono16, as rosbags-image
    return np.repeat(scaled, 3, axis=2)


@st.composite
def images(
    draw, size: tuple[int, int] | None = None, clean: bool = False, sides: tuple[int, int] = (1, 48)
) -> SimpleNamespace:
    """An ``Image`` message and what is wrong with it (``defects``: reasons) and, when nothing
    is, the RGB array it must decode to (``rgb``). ``clean``: a valid one; ``sides``: the range
    of width and height of normal (not hostile) sizes, pixels."""
    hostile = not clean and draw(st.booleans())
    encoding = draw(
        st.one_of(
            st.sampled_from(sorted(ENCODINGS)),
            st.sampled_from(BAD_ENCODINGS),
            st.text(max_size=8),
        )
        if hostile and draw(st.integers(0, 3)) == 0
        else st.sampled_from(sorted(ENCODINGS))
    )
    if size is None:
        odd = hostile and draw(st.integers(0, 3)) == 0
        normal = st.integers(*sides)
        sizes = st.one_of(st.integers(0, 48), st.sampled_from(HUGE)) if odd else normal
        w, h = draw(sizes), draw(sizes)
    else:
        w, h = size
    bpc, ch = ENCODINGS.get(encoding, (1, 3, ""))[:2]
    row = w * ch * bpc
    step_kind = draw(
        st.sampled_from(["exact", "padded", "short", "zero"] if hostile else ["exact", "padded"])
    )
    padding = draw(st.integers(1, 9))
    step = {"exact": row, "padded": row + padding, "short": max(0, row - padding), "zero": 0}[
        step_kind
    ]
    step = min(step, 2**32 - 1)
    bigendian = draw(st.booleans())
    data_kind = draw(
        st.sampled_from(
            ["full", "minimal", "truncated", "long", "empty"] if hostile else ["full", "minimal"]
        )
    )
    seed = draw(st.integers(0, 2**32 - 1))
    defects: set[str] = set()
    rgb = None
    msg = Image()
    msg.encoding, msg.width, msg.height, msg.step = encoding, w, h, step
    msg.is_bigendian = int(bigendian)
    rng = np.random.default_rng(seed)
    if encoding not in ENCODINGS:
        defects.add("unsupported_encoding")
        msg.data = rng.integers(0, 256, min(step * h, 4096), dtype=np.uint8).tobytes()
    elif w == 0 or h == 0:
        defects.add("empty_image")
        msg.data = rng.integers(0, 256, draw(st.integers(0, 64)), dtype=np.uint8).tobytes()
    elif step < row:
        defects.add("bad_step")
        msg.data = rng.integers(0, 256, min(step * h, 4096), dtype=np.uint8).tobytes()
    elif w * h > 2**20:  # a huge header: the data cannot be there
        defects.add("truncated_image")
        msg.data = rng.integers(0, 256, draw(st.integers(0, 4096)), dtype=np.uint8).tobytes()
    else:
        dtype = np.dtype(np.uint8) if bpc == 1 else np.dtype(">u2" if bigendian else "<u2")
        pixels = rng.integers(0, 256**bpc, (h, w, ch)).astype(dtype.newbyteorder("="))
        raw = np.zeros((h, step), np.uint8)
        raw[:, row:] = rng.integers(0, 256, (h, step - row), dtype=np.uint8)  # padding garbage
        raw[:, :row] = pixels.astype(dtype).view(np.uint8).reshape(h, row)
        data = raw.tobytes()
        needed = step * (h - 1) + row
        if data_kind == "minimal":
            data = data[:needed]
        elif data_kind == "truncated":
            data = data[: needed - draw(st.integers(1, needed))]
            defects.add("truncated_image")
        elif data_kind == "long":
            data += bytes(draw(st.integers(1, 100)))
        elif data_kind == "empty":
            data = b""
            defects.add("truncated_image")
        msg.data = data
        if not defects:
            rgb = expected_rgb(pixels, encoding)
    return SimpleNamespace(msg=msg, defects=defects, rgb=rgb, size=(w, h))


CALIBRATION_DEFECTS = [
    "nan_k", "inf_p", "nan_d", "inf_r", "zero_k", "zero_fx", "zero_p22", "bad_r",
    "unknown_model", "zero_size", "wrong_size",
]  # fmt: skip
# valid variations: rotations, zero R (= identity), empty/odd D, a model name CameraInfo allows
VALID_VARIATIONS = ["rot_r", "zero_r", "distortion", "empty_d", "fisheye"]


@st.composite
def calibrations(
    draw, size: tuple[int, int], baseline: float, clean: bool = False, missing: bool = True
) -> SimpleNamespace:
    """A ``CameraInfo`` (or None) for an image of ``size`` and its defects (reasons);
    ``clean``: a valid one (possibly rotated R, any distortion)."""
    w, h = size
    if not clean and missing and draw(st.integers(0, 5)) == 0:
        return SimpleNamespace(msg=None, defects={"no_camera_info"}, raw_d_bad=False)
    f = draw(st.floats(20.0, 2000.0))
    K = np.array([[f, 0, (w - 1) / 2], [0, f, (h - 1) / 2], [0, 0, 1.0]])
    P = np.hstack([K, [[-f * baseline], [0], [0]]])
    R, D, model = np.eye(3), np.zeros(5), "plumb_bob"
    defects: set[str] = set()
    chosen = draw(st.lists(st.sampled_from(CALIBRATION_DEFECTS + VALID_VARIATIONS), max_size=2))
    if clean:
        chosen = [c for c in chosen if c in VALID_VARIATIONS]
    info_w, info_h = w, h
    for c in chosen:
        if c == "nan_k":
            K[1, 2] = np.nan
        elif c == "inf_p":
            P[0, 3] = np.inf
        elif c == "nan_d":
            D = np.array([0.1, np.nan, 0, 0, 0])
        elif c == "inf_r":
            R = R.copy()
            R[0, 1] = -np.inf
        elif c == "zero_k":
            K = np.zeros((3, 3))
        elif c == "zero_fx":
            K[0, 0] = 0.0
        elif c == "zero_p22":
            P[2, 2] = 0.0
        elif c == "bad_r":
            R = R * draw(st.sampled_from([2.0, -1.0, 0.5]))
        elif c == "unknown_model":
            model = draw(st.sampled_from(["kannala_brandt", "pinhole", "PLUMB_BOB", "x"]))
        elif c == "zero_size":
            info_w = info_h = 0
        elif c == "wrong_size":
            info_w, info_h = w + draw(st.integers(1, 50)), h
        elif c == "rot_r":
            a = draw(st.floats(-0.3, 0.3))
            R = np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])
        elif c == "zero_r":
            R = np.zeros((3, 3))  # "not set": the pipeline takes identity
        elif c == "distortion":
            n = draw(st.sampled_from([0, 1, 3, 4, 5, 6, 8, 12, 14, 20]))
            D = np.asarray(draw(st.lists(st.floats(-0.3, 0.3), min_size=n, max_size=n)))
        elif c == "empty_d":
            D = np.zeros(0)
        elif c == "fisheye":
            model = "equidistant"
            D = np.asarray(draw(st.lists(st.floats(-0.1, 0.1), min_size=0, max_size=6)))
    # the oracle, from the final values
    if not all(np.isfinite(a).all() for a in (K, P, R, D)):
        defects.add("calibration_nan")
    if K[0, 0] == 0 or K[1, 1] == 0 or P[2, 2] == 0:
        defects.add("uncalibrated")
    if P[2, 2] == 0:
        defects.add("zero_baseline")  # P's 3x3 block is singular: no camera centre
    if model not in DISTORTION_MODELS:
        defects.add("bad_calibration")
    R_used = R if np.any(R) else np.eye(3)
    if np.isfinite(R_used).all() and abs(np.linalg.det(R_used) - 1.0) > 1e-3:
        defects.add("bad_calibration")
    if info_w == 0 or info_h == 0:
        defects.add("bad_calibration")
    if (info_w, info_h) != (w, h):
        defects.add("info_size_mismatch")
    # D lengths OpenCV can rectify with (raw input only): empty (= none), 4, 5, 8, 12, 14;
    # equidistant: at least 4 (the first four are used)
    raw_d_bad = 0 < D.size < 4 if model == "equidistant" else D.size not in (0, 4, 5, 8, 12, 14)
    msg = ros_io.camera_info(P, info_w, info_h, K=K, D=D, R=R, distortion_model=model)
    return SimpleNamespace(msg=msg, defects=defects, raw_d_bad=raw_d_bad)


@st.composite
def stereo_pairs(
    draw, sides: tuple[int, int] = (1, 48), missing_info: bool = True
) -> SimpleNamespace:
    """Left/right images (same size mostly), camera_infos, baseline, and the oracle's reasons.
    ``sides``: range of normal image sides (px); ``missing_info``: camera_info may be None."""
    # a third valid pairs, a third with one hostile part, a third anything
    mode = draw(st.sampled_from(["clean", "one", "any"]))
    bad = draw(st.sampled_from(["left", "right", "left_info", "right_info", "baseline", "size"]))

    def clean(part: str) -> bool:
        return mode == "clean" or (mode == "one" and bad != part)

    left = draw(images(clean=clean("left"), sides=sides))
    same = clean("size") or (draw(st.booleans()) and max(left.size) < 2**16)
    right = draw(images(size=left.size if same else None, clean=clean("right"), sides=sides))
    baseline = draw(
        st.sampled_from([0.12, 0.5, -0.1] if clean("baseline") else [0.12, -0.1, 1e-9, 0.0])
    )
    left_info = draw(calibrations(left.size, 0.0, clean("left_info"), missing_info))
    right_info = draw(calibrations(right.size, baseline, clean("right_info"), missing_info))
    defects = left.defects | right.defects | left_info.defects | right_info.defects
    if left.size != right.size:
        defects.add("size_mismatch")
    if abs(baseline) <= 1e-4:
        defects.add("zero_baseline")
    return SimpleNamespace(
        left=left, right=right, left_info=left_info, right_info=right_info, defects=defects
    )


class FakeEstimator:
    """Checks what the pipeline hands to the network; returns a pose (or nobody)."""

    def __init__(self) -> None:
        self.calls = 0
        self.nobody = False
        self.lock = threading.Lock()

    def estimate(self, left, right, P_left, P_right):
        with self.lock:
            self.calls += 1
        for img in (left, right):
            assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3
            assert img.flags.c_contiguous
        assert left.shape == right.shape
        assert P_left.shape == P_right.shape == (3, 4)
        assert np.isfinite(P_left).all() and np.isfinite(P_right).all()
        if self.nobody:
            return None
        joints = np.tile([0.0, 0.0, 3.0], (16, 1)) + np.linspace(-0.5, 0.5, 16)[:, None]
        j2 = np.stack([(joints @ P[:, :3].T + P[:, 3]) for P in (P_left, P_right)])
        return SimpleNamespace(
            joints_3d=joints,
            joints_2d=j2[..., :2] / j2[..., 2:],
            confidence=np.full(16, 0.9),
            joint_names=list(MPII.joint_names),
            box=np.zeros((2, 4)),
        )


# ---------------------------------------------------------------------------------------------
# 1. the processing path
# ---------------------------------------------------------------------------------------------


@fuzz(600)
@given(pair=stereo_pairs(), rectified=st.booleans())
def test_processing_path_accepts_good_pairs_and_names_every_defect(pair, rectified):
    CASES["processing path"] += 1
    defects = set(pair.defects)
    if not rectified and (pair.left_info.raw_d_bad or pair.right_info.raw_d_bad):
        defects.add("bad_calibration")  # OpenCV cannot rectify with such a D
    stamp = 1_700_000_000_123_456_789
    pair.left.msg.header = ros_io.make_header(stamp, "cam_left")
    pair.right.msg.header = ros_io.make_header(stamp, "cam_right")
    processor = PoseProcessor(FakeEstimator(), ProcessingConfig(images_rectified=rectified))
    try:
        result = processor.process(
            pair.left.msg, pair.right.msg, pair.left_info.msg, pair.right_info.msg
        )
    except InputError as exc:
        assert exc.reason in defects, (exc.reason, str(exc), sorted(defects))
        assert exc.reason in DOCUMENTED_REASONS and str(exc)
        OUTCOMES[f"rejected: {exc.reason}"] += 1
        return
    assert not defects, f"accepted a pair with defects {sorted(defects)}"
    OUTCOMES["accepted"] += 1
    frame = result.frame
    w, h = pair.left.size
    assert frame.left.shape == frame.right.shape == (h, w, 3)
    if rectified:  # the pixels are exactly the generated ones
        np.testing.assert_allclose(frame.left, pair.left.rgb, atol=1)
        np.testing.assert_allclose(frame.right, pair.right.rgb, atol=1)
    np.testing.assert_array_equal(frame.P_left, np.reshape(pair.left_info.msg.p, (3, 4)))
    np.testing.assert_array_equal(frame.P_right, np.reshape(pair.right_info.msg.p, (3, 4)))
    assert result.header.frame_id == "cam_left" and result.stamp_ns == stamp
    joints, flags = ros_io.pose_array_to_numpy(result.joints)
    assert joints.shape == (16, 3) and np.isfinite(joints).all() and flags.all()


@fuzz(60)
@given(
    fields=st.fixed_dictionaries(
        {},
        optional={
            "k": st.lists(st.floats(allow_nan=True), min_size=0, max_size=12),
            "p": st.lists(st.floats(allow_nan=True), min_size=0, max_size=14),
            "r": st.lists(st.floats(-2, 2), min_size=0, max_size=10),
            "d": st.lists(st.floats(allow_nan=True), max_size=9),
            "width": st.integers(-5, 100),
            "distortion_model": st.one_of(st.none(), st.sampled_from(DISTORTION_MODELS)),
        },
    )
)
def test_duck_typed_camera_info_with_wrong_shapes_is_rejected_not_raised(fields):
    """Bag readers and other duck-typed sources can hold arrays of any length: the result is
    a camera model or an InputError, nothing else."""
    CASES["duck-typed camera_info"] += 1
    P = np.hstack([np.array([[100.0, 0, 20], [0, 100.0, 15], [0, 0, 1]]), np.zeros((3, 1))])
    info = ros_io.camera_info(P, 40, 30)
    values = {
        "k": list(info.k), "p": list(info.p), "r": list(info.r), "d": list(info.d),
        "width": 40, "height": 30, "distortion_model": "plumb_bob", "header": info.header,
    }  # fmt: skip
    values.update(fields)
    try:
        model = ros_io.camera_model(SimpleNamespace(**values))
    except InputError as exc:
        assert exc.reason in {"calibration_nan", "uncalibrated", "bad_calibration"}, exc.reason
        OUTCOMES[f"camera_info rejected: {exc.reason}"] += 1
        return
    OUTCOMES["camera_info accepted"] += 1
    assert model.K.shape == (3, 3) and model.P.shape == (3, 4) and model.R.shape == (3, 3)


# ---------------------------------------------------------------------------------------------
# 2. the node (real StereoPose3DNode, fed through its subscription callbacks)
# ---------------------------------------------------------------------------------------------


class Recorder:
    """Stands in for a publisher: keeps what the node publishes."""

    def __init__(self) -> None:
        self.messages: list = []
        self.lock = threading.Lock()

    def publish(self, msg) -> None:
        with self.lock:
            self.messages.append(msg)

    def get_subscription_count(self) -> int:
        return 1


@pytest.fixture(scope="module")
def node():
    import rclpy
    from rclpy.parameter import Parameter
    from test_node_harness import unique_domain

    from stereo_pose3d.node import StereoPose3DNode

    ctx = rclpy.Context()
    rclpy.init(context=ctx, domain_id=unique_domain())
    estimator = FakeEstimator()
    n = StereoPose3DNode(
        estimator=estimator,
        context=ctx,
        parameter_overrides=[Parameter("queue_size", value=4), Parameter("slop", value=0.02)],
    )
    n.pub_markers, n.pub_joints, n.pub_diag = Recorder(), Recorder(), Recorder()
    n.fake = estimator
    try:
        yield n
    finally:
        n.destroy_node()
        ctx.try_shutdown()


def drained(node) -> bool:
    """Every synchronized pair is accounted for (processed, dropped or failed)."""
    c = node.stats.snapshot()
    return (
        c["synchronized"] == c["processed"] + c["dropped"] + c["failed"]
        and not node._slot.pending()
    )


def wait_drained(node, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not drained(node):
        assert time.monotonic() < deadline, node.stats.snapshot()
        time.sleep(0.001)


def feed(node, side: str, msg) -> None:
    """What the node's subscription does with an incoming image (executor-thread work)."""
    node._image_subs[0 if side == "left" else 1].callback(msg)


_stamp = [1_800_000_000_000_000_000]


def fresh_stamp() -> int:
    _stamp[0] += 5_000_000_000
    return _stamp[0]


def good_pair_is_published(node) -> None:
    w, h, f, b = 32, 24, 40.0, 0.1
    P = np.hstack([np.array([[f, 0, 15.5], [0, f, 11.5], [0, 0, 1]]), np.zeros((3, 1))])
    P_r = P.copy()
    P_r[0, 3] = -f * b
    node._on_info("left", ros_io.camera_info(P, w, h))
    node._on_info("right", ros_io.camera_info(P_r, w, h))
    stamp = fresh_stamp()
    rgb = np.zeros((h, w, 3), np.uint8)
    n = len(node.pub_joints.messages)
    feed(node, "left", ros_io.rgb_to_image(rgb, ros_io.make_header(stamp, "l")))
    feed(node, "right", ros_io.rgb_to_image(rgb, ros_io.make_header(stamp, "r")))
    wait_drained(node)
    assert len(node.pub_joints.messages) == n + 1, node.stats.snapshot()
    assert ros_io.stamp_to_ns(node.pub_joints.messages[-1].header.stamp) == stamp


@fuzz(200)
@given(pair=stereo_pairs(), keep_info=st.booleans())
def test_node_counts_every_bad_pair_under_its_reason(node, pair, keep_info):
    """One pair at a time: the node's counters move exactly as the oracle says."""
    CASES["node: single pair"] += 1
    defects = pair.defects
    with node._info_lock:  # a fresh start for camera_info, unless it is kept from before
        if not keep_info:
            node._info.update(left=None, right=None)
    had_left, had_right = node._info["left"] is not None, node._info["right"] is not None
    for side, info in (("left", pair.left_info), ("right", pair.right_info)):
        if info.msg is not None:
            node._on_info(side, info.msg)
    if (pair.left_info.msg is None and had_left) or (pair.right_info.msg is None and had_right):
        return  # the node uses the older camera_info: the oracle does not know it
    stamp = fresh_stamp()
    pair.left.msg.header = ros_io.make_header(stamp, "cam_left")
    pair.right.msg.header = ros_io.make_header(stamp, "cam_right")
    before = node.stats.snapshot()
    published = len(node.pub_joints.messages)
    feed(node, "left", pair.left.msg)
    feed(node, "right", pair.right.msg)
    wait_drained(node)
    after = node.stats.snapshot()
    assert node._worker.is_alive()
    assert after["synchronized"] == before["synchronized"] + 1
    assert after["received_left"] == before["received_left"] + 1
    moved = {
        k[len("rejected."):]: after[k] - before.get(k, 0)
        for k in after if k.startswith("rejected.") and after[k] != before.get(k, 0)
    }  # fmt: skip
    if defects:
        assert len(moved) == 1 and sum(moved.values()) == 1, (moved, defects)
        (reason,) = moved
        assert reason in defects, (reason, sorted(defects))
        assert after["failed"] == before["failed"] + 1
        assert len(node.pub_joints.messages) == published
        OUTCOMES[f"node rejected: {reason}"] += 1
    else:
        assert not moved, moved
        assert after["processed"] == before["processed"] + 1
        assert len(node.pub_joints.messages) == published + 1
        OUTCOMES["node processed"] += 1
    assert after["failed"] == sum(v for k, v in after.items() if k.startswith("rejected."))


EVENTS = st.lists(
    st.one_of(
        st.tuples(st.just("pair"), st.sampled_from([1, 1, 1, 0, -1, -3, -50])),
        st.tuples(st.just("left_only"), st.integers(1, 3)),
        st.tuples(st.just("right_only"), st.integers(1, 3)),
        st.tuples(st.just("skewed"), st.integers(1, 3)),  # right 30 ms later: never pairs
        st.tuples(st.just("info"), st.sampled_from(["good", "nan", "none", "other_size"])),
        st.tuples(st.just("nobody"), st.booleans()),
    ),
    min_size=1,
    max_size=25,
)


@fuzz(60)
@given(events=EVENTS, slow=st.booleans())
# found by this test: an image older than everything in a full synchronizer queue (a camera
# whose clock went back while the other side's queue was full) raised KeyError in the
# subscription callback, which ends rclpy.spin: the node died
@example(events=[("right_only", 1)] * 5 + [("pair", -50)], slow=False)
def test_node_survives_any_stamp_order_and_publisher_mix(node, events, slow):
    """Duplicated, reversed and reset stamps, unpaired images, camera_info changes, with a fast
    or a slow estimator (so pairs are also dropped): invariants hold and output resumes."""
    CASES["node: event sequences"] += 1
    OUTCOMES["event sequences: events"] += len(events)
    w, h, f = 32, 24, 40.0
    P = np.hstack([np.array([[f, 0, 15.5], [0, f, 11.5], [0, 0, 1]]), np.zeros((3, 1))])
    P_r = P.copy()
    P_r[0, 3] = -f * 0.1
    rgb = np.full((h, w, 3), 60, np.uint8)
    node._on_info("left", ros_io.camera_info(P, w, h))
    node._on_info("right", ros_io.camera_info(P_r, w, h))
    period = 100_000_000  # 10 Hz: further apart than slop, so only equal-ish stamps pair
    t = fresh_stamp()
    published_stamps: list[int] = []
    n0 = len(node.pub_joints.messages)
    original = node.fake.estimate
    if slow:
        node.fake.estimate = lambda *a: (time.sleep(0.004), original(*a))[1]
    before = node.stats.snapshot()
    try:
        for kind, arg in events:
            if kind == "pair":
                t += arg * period
                feed(node, "left", ros_io.rgb_to_image(rgb, ros_io.make_header(t, "l")))
                feed(node, "right", ros_io.rgb_to_image(rgb, ros_io.make_header(t, "r")))
            elif kind in ("left_only", "right_only"):
                t += arg * period
                feed(node, kind[:-5], ros_io.rgb_to_image(rgb, ros_io.make_header(t, kind)))
            elif kind == "skewed":
                t += arg * period
                feed(node, "left", ros_io.rgb_to_image(rgb, ros_io.make_header(t, "l")))
                feed(
                    node, "right", ros_io.rgb_to_image(rgb, ros_io.make_header(t + 30_000_000, "r"))
                )
            elif kind == "info":
                if arg == "good":
                    node._on_info("right", ros_io.camera_info(P_r, w, h))
                elif arg == "nan":
                    node._on_info("right", ros_io.camera_info(P_r * np.nan, w, h))
                elif arg == "other_size":
                    node._on_info("right", ros_io.camera_info(P_r, w * 2, h * 2))
                else:
                    with node._info_lock:
                        node._info["right"] = None
            elif kind == "nobody":
                node.fake.nobody = arg
            assert node._sync.queued() <= 2 * 4  # bounded by queue_size per input
        wait_drained(node)
    finally:
        node.fake.estimate = original
        node.fake.nobody = False
    after = node.stats.snapshot()
    assert node._worker.is_alive()
    assert after["synchronized"] == after["processed"] + after["dropped"] + after["failed"]
    assert after["failed"] == sum(v for k, v in after.items() if k.startswith("rejected."))
    reasons = {k[len("rejected.") :] for k in after if k.startswith("rejected.")}
    assert reasons <= DOCUMENTED_REASONS, reasons
    assert "rejected.estimator_error" not in after and "rejected.internal_error" not in after
    for msg in node.pub_joints.messages[n0:]:
        published_stamps.append(ros_io.stamp_to_ns(msg.header.stamp))
    # published stamps only go back at a clock reset (a jump back of more than 1 s)
    for a, b in itertools.pairwise(published_stamps):
        assert b > a or a - b > 1_000_000_000, (a, b)
    moved = after["processed"] - before["processed"]
    assert moved == len(published_stamps)
    for key in ("synchronized", "processed", "dropped", "failed"):
        OUTCOMES[f"event sequences: {key}"] += after[key] - before[key]
    good_pair_is_published(node)  # and the node still works afterwards
    node._publish_diagnostics()
    status = node.pub_diag.messages[-1].status[0]
    keys = {kv.key for kv in status.values}
    assert {"processed", "failed", "dropped", "pending", "sync_queued"} <= keys


def test_node_status_says_what_it_waits_for_and_recovers(node):
    """The diagnostics status of the in-process node: WARN naming the last problem right after
    rejected input, OK again (with the failure count) once that is old; a camera that stopped
    and cameras that never pair are named."""
    from diagnostic_msgs.msg import DiagnosticStatus

    from stereo_pose3d.node import IMAGE_TIMEOUT_S, RECENT_ERROR_S

    def status() -> DiagnosticStatus:
        node._publish_diagnostics()
        return node.pub_diag.messages[-1].status[0]

    good_pair_is_published(node)
    stamp = fresh_stamp()
    for side in ("left", "right"):  # a rejected pair
        msg = ros_io.rgb_to_image(np.zeros((24, 32, 3), np.uint8), ros_io.make_header(stamp, side))
        msg.encoding = "yuv422"
        feed(node, side, msg)
    wait_drained(node)
    s = status()
    assert s.level == DiagnosticStatus.WARN, s.message
    assert "last: unsupported_encoding" in s.message, s.message
    node._last_error_time -= RECENT_ERROR_S + 1
    s = status()
    assert s.level == DiagnosticStatus.OK and "failed (the last" in s.message, s.message
    for key in ("right", "pair"):  # the right camera stopped
        node._last_seen[key] -= IMAGE_TIMEOUT_S + 1
    s = status()
    assert s.level == DiagnosticStatus.WARN, s.message
    assert s.message.startswith("waiting for images on") and "right/image_rect" in s.message
    assert "left/image_rect" not in s.message
    node._last_seen["right"] = node._last_seen["left"]  # both arrive, but nothing pairs
    s = status()
    assert "no pair within slop" in s.message, s.message
    good_pair_is_published(node)
    assert status().level == DiagnosticStatus.OK


# ---------------------------------------------------------------------------------------------
# 3. the real estimator on odd (valid) image sizes
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def estimator(fixture_checkpoint):
    from stereo_pose3d.estimator import StereoPoseEstimator

    return StereoPoseEstimator.from_checkpoint(fixture_checkpoint, device="cpu")


@fuzz(25)
@given(
    w=st.one_of(st.integers(1, 24), st.sampled_from([639, 640, 1280, 2000])),
    h=st.one_of(st.integers(1, 24), st.sampled_from([479, 480, 720])),
    f=st.floats(1.0, 3000.0),
    baseline=st.sampled_from([0.05, 0.12, 1.0, -0.12]),
    seed=st.integers(0, 2**16),
)
def test_real_estimator_on_odd_sizes_never_raises(estimator, w, h, f, baseline, seed):
    CASES["real estimator"] += 1
    if w * h > 1280 * 720:
        w, h = w // 2, h // 2
    rng = np.random.default_rng(seed)
    left = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    right = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    K = np.array([[f, 0, (w - 1) / 2], [0, f, (h - 1) / 2], [0, 0, 1]])
    P_l = np.hstack([K, np.zeros((3, 1))])
    P_r = P_l.copy()
    P_r[0, 3] = -f * baseline
    proc = PoseProcessor(estimator, ProcessingConfig(publish_debug_image=True))
    l_msg = ros_io.rgb_to_image(left, ros_io.make_header(1, "l"))
    r_msg = ros_io.rgb_to_image(right, ros_io.make_header(1, "r"))
    infos = ros_io.camera_info(P_l, w, h), ros_io.camera_info(P_r, w, h)
    if min(w, h) < 32:  # documented: the estimator needs 32 px (the node counts estimator_error)
        with pytest.raises(ValueError, match="too small"):
            proc.process(l_msg, r_msg, *infos)
        return
    result = proc.process(l_msg, r_msg, *infos)
    if result.person:
        assert result.joints_3d.shape == (16, 3)
        assert np.isfinite(result.confidence).all()
        conf = result.confidence >= 0.3
        assert np.isfinite(result.joints_3d[conf]).all()
    assert (result.debug_image.width, result.debug_image.height) == (2 * w, h)
