"""Publisher churn against the live node (its own process, fixture checkpoint): cameras that
appear late, disappear and come back (as new DDS participants, at another resolution), a right
camera that dies, camera_info that comes late or never, cameras whose clocks disagree. The node
must recover by itself, never exit, and its ``/diagnostics`` status must say what it waits for.

Each camera is a driver-like publisher in its own rclpy context (its own DDS participant, so
closing it is the participant leaving the graph), publishing sensor-data QoS at 15 Hz.
"""

from __future__ import annotations

import threading
import time

import pytest
from conftest import render_stereo_pair
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from geometry_msgs.msg import PoseArray
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import CameraInfo, Image
from test_node_harness import (
    RosPeer,
    diagnostics_values,
    start_node,
    stop_process,
    unique_domain,
    wait_for,
)

from stereo_pose3d import ros_io
from stereo_pose3d.node import IMAGE_TIMEOUT_S

NS = "/stereo"
LEFT_IMAGE, RIGHT_IMAGE = f"{NS}/left/image_rect", f"{NS}/right/image_rect"
LEFT_INFO, RIGHT_INFO = f"{NS}/left/camera_info", f"{NS}/right/camera_info"


class Camera:
    """A stereo driver: images of ``sides`` at ``rate`` Hz from a thread; camera_info with every
    image for the sides in ``info`` (a set the test changes while it runs)."""

    def __init__(
        self,
        domain: int,
        size: tuple[int, int] = (320, 240),
        sides: tuple[str, ...] = ("left", "right"),
        info: tuple[str, ...] = ("left", "right"),
        right_offset_s: float = 0.0,
        rate: float = 15.0,
        name: str = "camera",
    ) -> None:
        self.peer = RosPeer(domain, name)
        w, h = size
        pair = render_stereo_pair(width=w, height=h, f=0.8 * w)
        node = self.peer.node
        qos = qos_profile_sensor_data
        self.image_pubs = {
            s: node.create_publisher(Image, t, qos)
            for s, t in (("left", LEFT_IMAGE), ("right", RIGHT_IMAGE))
        }
        self.info_pubs = {
            s: node.create_publisher(CameraInfo, t, qos)
            for s, t in (("left", LEFT_INFO), ("right", RIGHT_INFO))
        }
        self.images = {
            "left": ros_io.rgb_to_image(pair.left),
            "right": ros_io.rgb_to_image(pair.right),
        }
        self.infos = {
            "left": ros_io.camera_info(pair.P_left, w, h),
            "right": ros_io.camera_info(pair.P_right, w, h),
        }
        self.sides, self.info = set(sides), set(info)
        self.offset_ns = int(right_offset_s * 1e9)
        self.period = 1.0 / rate
        self.sent = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        next_t = time.monotonic()
        while not self._stop.is_set():
            stamp = time.time_ns()
            for side in sorted(self.sides):
                t = stamp + (self.offset_ns if side == "right" else 0)
                header = ros_io.make_header(t, f"stereo_{side}_optical_frame")
                if side in self.info:
                    self.infos[side].header = header
                    self.info_pubs[side].publish(self.infos[side])
                self.images[side].header = header
                self.image_pubs[side].publish(self.images[side])
            self.sent += 1
            next_t += self.period
            self._stop.wait(max(0.0, next_t - time.monotonic()))

    def close(self) -> None:
        """The driver process ends: its participant leaves the graph."""
        self._stop.set()
        self._thread.join(2.0)
        self.peer.close()


class Observer:
    """The test's view of the node: /diagnostics and pose3d/joints."""

    def __init__(self, domain: int) -> None:
        self.peer = RosPeer(domain, "observer")
        self.peer.subscribe(DiagnosticArray, "/diagnostics")
        self.peer.subscribe(PoseArray, f"{NS}/pose3d/joints")

    def status(self) -> tuple[object, str, dict[str, str]]:
        """(level, message, values) of the latest /diagnostics message."""
        msgs = self.peer.messages("/diagnostics")
        if not msgs:
            return None, "", {}
        s = msgs[-1].status[0]
        return s.level, s.message, diagnostics_values(msgs[-1])

    def message(self) -> str:
        return self.status()[1]

    def count(self, key: str) -> int:
        return int(self.status()[2].get(key, 0))

    def outputs(self) -> int:
        return len(self.peer.messages(f"{NS}/pose3d/joints"))

    def wait_message(self, *parts: str, timeout: float = 15.0, absent: str = "") -> str:
        """Wait until the status message contains every part (and not ``absent``; "waiting"
        means: not a waiting message, which start with it or with "images arrive")."""

        def ok() -> bool:
            m = self.message()
            if absent == "waiting":
                return bool(m) and not m.startswith(("waiting", "images arrive"))
            return all(p in m for p in parts) and not (absent and absent in m)

        assert wait_for(ok, timeout, period=0.05), (parts, self.status())
        return self.message()


@pytest.fixture(scope="module")
def live(tmp_path_factory, fixture_checkpoint):
    domain = unique_domain()
    observer = Observer(domain)
    log = tmp_path_factory.mktemp("churn") / "node.log"
    proc = start_node(domain, log, fixture_checkpoint, "diagnostics_period:=0.25")
    cameras: list[Camera] = []

    def camera(**kw) -> Camera:
        cam = Camera(domain, **kw)
        cameras.append(cam)
        return cam

    try:
        yield proc, observer, camera
    finally:
        for cam in cameras:
            cam.close()
        code = stop_process(proc)
        observer.peer.close()
        text = log.read_text()
        assert code == 0, f"node exit code {code}:\n{text[-5000:]}"
        assert "Traceback" not in text, text[-5000:]


def test_late_and_missing_camera_info_then_cameras_leaving_and_coming_back(live):
    proc, obs, camera = live
    # nobody publishes yet
    obs.wait_message("waiting for images on", LEFT_IMAGE, RIGHT_IMAGE, timeout=30)
    assert obs.status()[0] == DiagnosticStatus.WARN

    # camera A starts without camera_info: every pair is rejected and the node says why
    cam = camera(info=(), name="camera_a")
    obs.wait_message("waiting for camera_info on", LEFT_INFO, RIGHT_INFO, timeout=20)
    assert wait_for(lambda: obs.count("rejected.no_camera_info") >= 3, 10), obs.status()
    assert obs.outputs() == 0

    # the left camera_info comes late; the right one not at all: only the right is named
    cam.info.add("left")
    msg = obs.wait_message("waiting for camera_info on", RIGHT_INFO, absent=LEFT_INFO)
    assert "left" not in msg.split("on", 1)[1], msg
    time.sleep(1.0)
    assert obs.outputs() == 0 and proc.poll() is None

    # the right camera_info arrives too: the node processes without being restarted
    cam.info.add("right")
    assert wait_for(lambda: obs.outputs() >= 5, 20), obs.status()
    assert "processed" in obs.wait_message(absent="waiting")

    # camera A disappears (its participant leaves): the node says it waits for images
    cam.close()
    t_gone = time.monotonic()
    msg = obs.wait_message(
        "waiting for images on", LEFT_IMAGE, RIGHT_IMAGE, "none for", timeout=IMAGE_TIMEOUT_S + 10
    )
    assert time.monotonic() - t_gone >= IMAGE_TIMEOUT_S - 0.5
    assert proc.poll() is None

    # camera B appears as a new participant at another resolution, its camera_info late:
    # A's calibration no longer fits (counted), then B's arrives and output resumes
    processed = obs.count("processed")
    cam = camera(size=(256, 192), info=(), name="camera_b")
    assert wait_for(lambda: obs.count("rejected.info_size_mismatch") >= 3, 20), obs.status()
    assert obs.count("processed") == processed
    cam.info.update({"left", "right"})
    assert wait_for(lambda: obs.count("processed") >= processed + 5, 20), obs.status()
    obs.wait_message(absent="waiting")
    latest = obs.peer.messages(f"{NS}/pose3d/joints")[-1]
    assert len(latest.poses) in (0, 16)
    cam.close()


def test_one_camera_dying_and_unsynchronized_clocks_are_named(live):
    proc, obs, camera = live
    # only the left driver runs (the right one died): the right topic is named
    cam = camera(sides=("left",), name="left_only")
    msg = obs.wait_message("waiting for images on", RIGHT_IMAGE, timeout=IMAGE_TIMEOUT_S + 10)
    assert LEFT_IMAGE not in msg, msg
    received = obs.count("received_left")
    assert wait_for(lambda: obs.count("received_left") > received + 5, 10)
    cam.close()

    # both run, but the right camera's clock is 0.5 s ahead: images never pair
    synchronized = obs.count("synchronized")
    cam = camera(right_offset_s=0.5, name="skewed")
    obs.wait_message("no pair within slop", timeout=IMAGE_TIMEOUT_S + 10)
    assert obs.count("synchronized") == synchronized
    cam.close()

    # a well-behaved camera again: back to normal
    processed = obs.count("processed")
    cam = camera(name="camera_c")
    assert wait_for(lambda: obs.count("processed") >= processed + 5, 20), obs.status()
    obs.wait_message(absent="waiting")
    diag = obs.status()[2]
    assert int(diag["pending"]) <= 1 and int(diag["sync_queued"]) <= 20, diag
    assert proc.poll() is None
    cam.close()
