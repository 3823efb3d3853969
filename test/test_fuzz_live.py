"""Fuzzing the live node: ``stereo_pose3d_node`` in its own process (fixture checkpoint, real
estimator), fed over Fast DDS by this process with the generated messages of
``test_fuzz_messages`` and with scripted stamp sequences, garbage at full size and unpaired
floods. Every pair must be counted under the reason the oracle expects, the node must keep
publishing, and it must exit cleanly (code 0, no traceback in its log) at the end.

Reliable QoS on both sides (``qos:=reliable``) so that no message is lost on the way and the
counters can be compared exactly.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import PoseArray
from hypothesis import given
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, Image
from test_fuzz_messages import DOCUMENTED_REASONS, fuzz, show_counts, stereo_pairs
from test_node_harness import (
    RosPeer,
    diagnostics_values,
    start_node,
    stop_process,
    unique_domain,
    wait_for,
)

from stereo_pose3d import ros_io

NS = "/stereo"
COUNTS = {"hypothesis pairs": 0, "scripted pairs": 0}


class Live:
    """The node process, the test peer and the camera publishers."""

    def __init__(self, proc, peer: RosPeer) -> None:
        self.proc, self.peer = proc, peer
        qos = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)
        node = peer.node
        self.pubs = {
            "left": node.create_publisher(Image, f"{NS}/left/image_rect", qos),
            "right": node.create_publisher(Image, f"{NS}/right/image_rect", qos),
            "left_info": node.create_publisher(CameraInfo, f"{NS}/left/camera_info", qos),
            "right_info": node.create_publisher(CameraInfo, f"{NS}/right/camera_info", qos),
        }
        self.stamp = time.time_ns()
        self.fresh_diag = 0

    def diag(self) -> dict[str, str]:
        msgs = self.peer.messages("/diagnostics")
        return diagnostics_values(msgs[-1]) if msgs else {}

    def status(self) -> str:
        msgs = self.peer.messages("/diagnostics")
        return msgs[-1].status[0].message if msgs else ""

    def counts(self) -> dict[str, int]:
        return {k: int(v) for k, v in self.diag().items() if v.isdigit()}

    def next_stamp(self, step_ns: int = 100_000_000) -> int:
        self.stamp += step_ns
        return self.stamp

    def wait_counts(self, predicate, timeout: float = 20.0) -> dict[str, int]:
        """Counters from a diagnostics message published after the condition became true."""
        got = wait_for(lambda: predicate(self.counts()), timeout, period=0.01)
        assert got, (self.diag(), self.proc.log_path.read_text()[-3000:])
        n = len(self.peer.messages("/diagnostics"))
        wait_for(lambda: len(self.peer.messages("/diagnostics")) > n, 5.0, period=0.01)
        return self.counts()

    def send_infos(self, left, right) -> None:
        before = self.counts()
        self.pubs["left_info"].publish(left)
        self.pubs["right_info"].publish(right)
        self.wait_counts(
            lambda c: (
                c["info_left"] > before.get("info_left", 0)
                and c["info_right"] > before.get("info_right", 0)
            )
        )

    def send_pair(self, left: Image, right: Image, stamp: int | None = None) -> dict[str, int]:
        """Publish a pair with the same stamp; returns the counter changes once it is done."""
        before = self.counts()
        stamp = self.next_stamp() if stamp is None else stamp
        left.header = ros_io.make_header(stamp, "stereo_left_optical_frame")
        right.header = ros_io.make_header(stamp, "stereo_right_optical_frame")
        self.pubs["left"].publish(left)
        self.pubs["right"].publish(right)

        def done(c: dict[str, int]) -> bool:
            return (
                c["received_left"] > before["received_left"]
                and c["received_right"] > before["received_right"]
                and c["processed"] + c["dropped"] + c["failed"] == c["synchronized"]
                and c["pending"] == 0
            )

        after = self.wait_counts(done)
        return {k: v - before.get(k, 0) for k, v in after.items() if v != before.get(k, 0)}


@pytest.fixture(scope="module")
def live(tmp_path_factory, fixture_checkpoint, request):
    domain = unique_domain()
    peer = RosPeer(domain)
    peer.subscribe(PoseArray, f"{NS}/pose3d/joints")
    peer.subscribe(DiagnosticArray, "/diagnostics")
    log = tmp_path_factory.mktemp("fuzz_live") / "node.log"
    params = ("diagnostics_period:=0.05", "qos:=reliable", "queue_size:=5", "min_confidence:=0.0")
    proc = start_node(domain, log, fixture_checkpoint, *params)
    live = Live(proc, peer)
    try:
        ok = wait_for(lambda: all(p.get_subscription_count() for p in live.pubs.values()), 30)
        assert ok, "node did not subscribe:\n" + log.read_text()
        assert wait_for(lambda: live.diag(), 10), log.read_text()
        yield live
    finally:
        code = stop_process(proc)
        peer.close()
        text = log.read_text()
        show_counts(request, [f"live fuzz cases: {COUNTS}"])
        assert code == 0, f"node exit code {code}:\n{text[-5000:]}"
        assert "Traceback" not in text, text[-5000:]


def good_pair(w: int = 64, h: int = 48, f: float = 60.0, baseline: float = 0.12):
    K = np.array([[f, 0, (w - 1) / 2], [0, f, (h - 1) / 2], [0, 0, 1.0]])
    P_l = np.hstack([K, np.zeros((3, 1))])
    P_r = P_l.copy()
    P_r[0, 3] = -f * baseline
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    infos = ros_io.camera_info(P_l, w, h), ros_io.camera_info(P_r, w, h)
    return ros_io.rgb_to_image(img), ros_io.rgb_to_image(img), infos


def test_waiting_for_camera_info_is_counted_and_said(live):
    left, right, _ = good_pair()
    moved = live.send_pair(left, right)
    COUNTS["scripted pairs"] += 1
    assert moved == {**moved, "failed": 1, "rejected.no_camera_info": 1}, moved
    assert "waiting for camera_info" in live.status(), live.status()
    assert f"{NS}/left/camera_info" in live.status()


@fuzz(40)
@given(pair=stereo_pairs(sides=(32, 80), missing_info=False))
def test_generated_pairs_are_counted_under_the_expected_reason(live, pair):
    COUNTS["hypothesis pairs"] += 1
    live.send_infos(pair.left_info.msg, pair.right_info.msg)
    published = len(live.peer.messages(f"{NS}/pose3d/joints"))
    moved = live.send_pair(pair.left.msg, pair.right.msg)
    reasons = {k[len("rejected.") :] for k in moved if k.startswith("rejected.")}
    assert moved.get("synchronized") == 1, moved
    if pair.defects:
        assert len(reasons) == 1 and reasons <= pair.defects, (moved, sorted(pair.defects))
        assert moved.get("failed") == 1 and "processed" not in moved, moved
    else:
        assert not reasons and moved.get("processed") == 1, moved
        assert wait_for(lambda: len(live.peer.messages(f"{NS}/pose3d/joints")) > published, 5)
    assert live.proc.poll() is None


def test_scripted_stamps_floods_and_full_size_garbage(live):
    left, right, infos = good_pair()
    live.send_infos(*infos)

    def pair(stamp=None, left_msg=None, right_msg=None) -> dict[str, int]:
        COUNTS["scripted pairs"] += 1
        return live.send_pair(left_msg or left, right_msg or right, stamp)

    def rejected(moved: dict[str, int]) -> set[str]:
        assert moved.get("failed") == 1, moved
        return {k[len("rejected.") :] for k in moved if k.startswith("rejected.")}

    assert pair().get("processed") == 1
    t = live.stamp
    assert rejected(pair(t)) == {"out_of_order_stamp"}  # duplicate
    assert rejected(pair(t - 30_000_000)) == {"out_of_order_stamp"}  # reversed
    assert pair().get("processed") == 1
    live.stamp -= 20_000_000_000  # a clock reset (looping bag, restarted driver): starts over
    assert pair().get("processed") == 1

    # One camera floods the synchronizer (its partner lost every image), then a pair arrives
    # that is older than the whole full queue: it cannot be matched any more. (This raised
    # KeyError in the subscription callback and ended the node before sync.py was fixed.)
    t0 = live.stamp
    before = live.counts()
    for i in range(8):
        img = ros_io.rgb_to_image(np.zeros((48, 64, 3), np.uint8))
        img.header = ros_io.make_header(t0 + (i + 5) * 100_000_000, "stereo_right_optical_frame")
        live.pubs["right"].publish(img)
    live.wait_counts(lambda c: c["received_right"] >= before["received_right"] + 8)
    moved = pair(t0 + 100_000_000)
    assert "synchronized" not in moved and live.proc.poll() is None, moved
    live.stamp = t0 + 20 * 100_000_000
    assert pair().get("processed") == 1

    # full-size garbage
    big = np.zeros((480, 640, 3), np.uint8)
    yuv = ros_io.rgb_to_image(big)
    yuv.encoding, yuv.step, yuv.data = "yuv422", 1280, bytes(1280 * 480)
    assert rejected(pair(left_msg=yuv, right_msg=ros_io.rgb_to_image(big))) == {
        "unsupported_encoding"
    }
    short = ros_io.rgb_to_image(big)
    short.data = bytes(short.data)[:-1]
    assert rejected(pair(left_msg=ros_io.rgb_to_image(big), right_msg=short)) == {"truncated_image"}
    narrow = ros_io.rgb_to_image(big)
    narrow.step = 640 * 3 - 1
    assert rejected(pair(left_msg=narrow, right_msg=narrow)) == {"bad_step"}
    half = ros_io.rgb_to_image(big[::2, ::2])
    assert rejected(pair(left_msg=ros_io.rgb_to_image(big), right_msg=half)) <= {
        "size_mismatch",
        "info_size_mismatch",
    }
    mono16 = ros_io.rgb_to_image(big, encoding="mono16", row_padding=3, bigendian=True)
    assert rejected(pair(left_msg=mono16, right_msg=mono16)) == {"info_size_mismatch"}

    # and still working
    n = len(live.peer.messages(f"{NS}/pose3d/joints"))
    assert pair().get("processed") == 1
    assert wait_for(lambda: len(live.peer.messages(f"{NS}/pose3d/joints")) > n, 5)
    final = live.counts()
    reasons = {k[len("rejected.") :] for k in final if k.startswith("rejected.")}
    assert reasons <= DOCUMENTED_REASONS - {"estimator_error", "estimator_output"}, final
    assert final["failed"] == sum(v for k, v in final.items() if k.startswith("rejected."))
    assert final["synchronized"] == final["processed"] + final["dropped"] + final["failed"]
    assert final["dropped"] == 0  # one pair at a time: nothing was replaced
    assert live.proc.poll() is None
