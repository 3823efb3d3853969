"""``stereo_pose3d_bag``: play a rosbag2 into ROS, or run the estimator over one offline.

``stereo_pose3d_bag play BAG [--rate R] [--loop]``
    Publishes every topic of a rosbag2 (a directory with ``metadata.yaml``, or a bare ``.mcap`` /
    ``.db3`` file; as written by ``ros2 bag record`` or ``python -m training synth --bag``) with
    the original timing, and ``/clock`` (for ``use_sim_time``). Message types come from the bag's
    own metadata; the recorded bytes are published as they are (``publish_raw``), so no message is
    re-serialised. Applies the package's Fast DDS profile (see :mod:`stereo_pose3d.dds`) so the
    full-size images reach other processes.

``stereo_pose3d_bag process BAG --out OUT_BAG [--video OUT.mp4] [--sheet OUT.png]``
    Runs the estimator over every synchronized stereo pair as fast as the hardware allows (no frame
    dropped) and writes ``<ns>/pose3d/markers`` and ``<ns>/pose3d/joints`` into a new bag (the same
    messages the node publishes), optionally a rendered video and a contact sheet. If the bag has
    ``/ground_truth/joints`` (PoseArray, matched by stamp) it prints MPJPE.
"""

from __future__ import annotations

import argparse
import importlib
import json
import shutil
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from stereo_pose3d import dds

GROUND_TRUTH_TOPIC = "/ground_truth/joints"
IMAGE_TYPE = "sensor_msgs/msg/Image"
INFO_TYPE = "sensor_msgs/msg/CameraInfo"


class BagError(RuntimeError):
    """A bag that cannot be used (missing, unreadable, lacking topics)."""


def open_reader(path: str | Path) -> Any:
    """An opened ``rosbags.rosbag2.Reader`` (directory, .mcap or .db3), errors as BagError."""
    from rosbags.rosbag2 import Reader

    path = Path(path)
    if not path.exists():
        raise BagError(f"bag {str(path)!r} does not exist")
    try:
        reader = Reader(path)
        reader.open()
    except Exception as exc:
        raise BagError(f"cannot read bag {str(path)!r}: {exc}") from exc
    return reader


def ros_message_class(msgtype: str) -> Any:
    """``"pkg/msg/Name"`` -> the rclpy message class (ImportError/AttributeError if missing)."""
    pkg, kind, name = msgtype.split("/")
    return getattr(importlib.import_module(f"{pkg}.{kind}"), name)


def find_stereo_topics(topics: dict[str, str], namespace: str | None = None) -> dict[str, str]:
    """Pick the stereo topics from ``{topic: type}``: ``<ns>/{left,right}/image_rect`` (or, for
    a raw rig, ``image_raw``) and ``<ns>/{left,right}/camera_info``.

    Without ``namespace`` (e.g. ``/stereo``) the first namespace holding both image topics is
    used. Returns keys ``left_image, right_image, left_info, right_info, namespace, image``
    (``"image_rect"`` or ``"image_raw"``).
    """
    image = "image_rect"
    for candidate in ("image_rect", "image_raw"):
        ns_found = None
        for t in sorted(topics):
            if t.endswith(f"/left/{candidate}") and topics[t] == IMAGE_TYPE:
                ns = t[: -len(f"/left/{candidate}")]
                if namespace is not None and ns != namespace.rstrip("/"):
                    continue
                if topics.get(f"{ns}/right/{candidate}") == IMAGE_TYPE:
                    ns_found = ns
                    break
        if ns_found is not None:
            namespace, image = ns_found, candidate
            break
    else:
        images = sorted(t for t, ty in topics.items() if ty == IMAGE_TYPE)
        raise BagError(
            "no <ns>/left/image_rect + <ns>/right/image_rect (or image_raw) pair of "
            f"sensor_msgs/Image in the bag (image topics: {images or 'none'}); pass --namespace"
        )
    out = {
        "left_image": f"{namespace}/left/{image}",
        "right_image": f"{namespace}/right/{image}",
        "left_info": f"{namespace}/left/camera_info",
        "right_info": f"{namespace}/right/camera_info",
    }
    missing = [t for t in out.values() if t not in topics]
    if missing:
        raise BagError(f"bag lacks topics {missing}")
    out["namespace"] = namespace
    out["image"] = image
    return out


# ---------------------------------------------------------------------------------------------
# play
# ---------------------------------------------------------------------------------------------


@dataclass
class PlayStats:
    published: dict[str, int] = field(default_factory=dict)
    skipped_topics: dict[str, str] = field(default_factory=dict)
    loops: int = 0
    wall_s: float = 0.0
    publish_times: dict[int, float] = field(default_factory=dict)  # left-image stamp -> wall


class BagPlayer:
    """Publishes a bag's messages with their recorded timing (see the module docstring).

    Args:
        node: an rclpy node to create the publishers on.
        bag: bag path.
        rate: playback speed factor (> 0).
        loop: start over at the end (``/clock`` jumps back, as with ``ros2 bag play --loop``).
        clock_hz: ``/clock`` publishing rate between messages (0: only with each message).
        topics: publish only these topics (default all).
        record_stamps_of: a topic whose header stamps' publish wall times are kept in
            ``stats.publish_times`` (for latency measurement).
    """

    def __init__(
        self,
        node: Any,
        bag: str | Path,
        rate: float = 1.0,
        loop: bool = False,
        clock_hz: float = 100.0,
        topics: list[str] | None = None,
        record_stamps_of: str | None = None,
    ) -> None:
        from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
        from rosbags.interfaces import QosDurability
        from rosgraph_msgs.msg import Clock

        if not rate > 0:
            raise ValueError(f"rate must be > 0, got {rate}")
        self.node, self.bag, self.rate, self.loop = node, Path(bag), float(rate), loop
        self.clock_period = 1.0 / clock_hz if clock_hz > 0 else float("inf")
        self.stats = PlayStats()
        self.record_stamps_of = record_stamps_of
        self._stop = threading.Event()
        reader = open_reader(self.bag)
        try:
            self.start_ns, self.end_ns = reader.start_time, reader.end_time
            self.publishers: dict[int, Any] = {}
            self.topic_of: dict[int, str] = {}
            by_topic: dict[str, Any] = {}
            for conn in reader.connections:
                if topics and conn.topic not in topics:
                    continue
                if conn.topic in by_topic:
                    self.publishers[conn.id] = by_topic[conn.topic]
                    self.topic_of[conn.id] = conn.topic
                    continue
                try:
                    cls = ros_message_class(conn.msgtype)
                except (ImportError, AttributeError, ValueError):
                    self.stats.skipped_topics[conn.topic] = f"type {conn.msgtype} not installed"
                    continue
                qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
                offered = getattr(conn.ext, "offered_qos_profiles", None) or []
                if any(
                    getattr(q, "durability", None) == QosDurability.TRANSIENT_LOCAL for q in offered
                ):
                    qos.durability = DurabilityPolicy.TRANSIENT_LOCAL
                pub = node.create_publisher(cls, conn.topic, qos)
                by_topic[conn.topic] = pub
                self.publishers[conn.id] = pub
                self.topic_of[conn.id] = conn.topic
        finally:
            reader.close()
        self.clock_pub = node.create_publisher(Clock, "/clock", QoSProfile(depth=10))
        self._Clock = Clock

    def stop(self) -> None:
        self._stop.set()

    def wait_for_subscribers(self, timeout: float, types: tuple[str, ...] = (IMAGE_TYPE,)) -> bool:
        """Wait until every publisher of these message types has a subscriber (plus a short
        settle for the other side to match). Returns False on timeout."""
        pubs = {p for p in self.publishers.values() if _type_name(p.msg_type) in types}
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not self._stop.is_set():
            if pubs and all(p.get_subscription_count() > 0 for p in pubs):
                time.sleep(0.5)
                return True
            time.sleep(0.05)
        return False

    def _publish_clock(self, bag_ns: int) -> None:
        from builtin_interfaces.msg import Time

        t = Time(sec=int(bag_ns // 1_000_000_000), nanosec=int(bag_ns % 1_000_000_000))
        self.clock_pub.publish(self._Clock(clock=t))

    def _sleep_until(self, wall_target: float, bag_of: Callable[[float], int]) -> None:
        """Sleep until ``wall_target`` (perf_counter), publishing /clock every clock period
        (``bag_of`` maps wall time to bag time, capped so /clock never passes the next message)."""
        while not self._stop.is_set():
            now = time.perf_counter()
            remaining = wall_target - now
            if remaining <= 0:
                return
            step = min(remaining, self.clock_period)
            if self._stop.wait(step) or not self.node.context.ok():
                return
            if step >= self.clock_period or time.perf_counter() < wall_target:
                try:
                    self._publish_clock(bag_of(time.perf_counter()))
                except Exception:
                    if self.node.context.ok():
                        raise
                    return

    def play(self) -> PlayStats:
        """Play (blocking) until the end, or forever with ``loop`` until :meth:`stop`."""
        t_start = time.perf_counter()
        while not self._stop.is_set():
            self._play_once()
            self.stats.loops += 1
            if not self.loop:
                break
        self.stats.wall_s = time.perf_counter() - t_start
        return self.stats

    def _play_once(self) -> None:
        reader = open_reader(self.bag)
        try:
            conns = [c for c in reader.connections if c.id in self.publishers]
            wall0 = time.perf_counter()
            bag0 = self.start_ns

            self._publish_clock(bag0)
            for conn, ts, raw in reader.messages(connections=conns):
                if self._stop.is_set():
                    return

                def bag_of(wall: float, cap: int = ts) -> int:
                    return min(cap, bag0 + int((wall - wall0) * self.rate * 1e9))

                self._sleep_until(wall0 + (ts - bag0) / 1e9 / self.rate, bag_of)
                if self._stop.is_set() or not self.node.context.ok():  # Ctrl-C
                    self._stop.set()
                    return
                try:
                    self._publish_clock(ts)
                    self.publishers[conn.id].publish(bytes(raw))
                except Exception:
                    if self.node.context.ok():
                        raise
                    self._stop.set()  # shut down while publishing
                    return
                topic = self.topic_of[conn.id]
                self.stats.published[topic] = self.stats.published.get(topic, 0) + 1
                if topic == self.record_stamps_of:
                    self.stats.publish_times[_header_stamp_ns(raw)] = time.perf_counter()
        finally:
            reader.close()


def _type_name(cls: Any) -> str:
    module = cls.__module__.split(".")
    return f"{module[0]}/msg/{cls.__name__}"


def _header_stamp_ns(raw: bytes | memoryview) -> int:
    """Header stamp of a CDR-serialised message that starts with ``std_msgs/Header``."""
    sec = int.from_bytes(bytes(raw[4:8]), "little", signed=True)
    nanosec = int.from_bytes(bytes(raw[8:12]), "little")
    return sec * 1_000_000_000 + nanosec


def play_main(args: argparse.Namespace) -> int:
    dds.configure()
    import rclpy
    from rclpy.executors import ExternalShutdownException

    rclpy.init(args=None)
    # Publishers only: nothing to spin (graph queries work without an executor).
    node = rclpy.create_node("stereo_pose3d_bag_player")
    try:
        player = BagPlayer(
            node,
            args.bag,
            rate=args.rate,
            loop=args.loop,
            clock_hz=args.clock_hz,
            topics=args.topics or None,
        )
    except (BagError, ValueError) as exc:
        print(f"stereo_pose3d_bag play: {exc}", file=sys.stderr)
        node.destroy_node()
        rclpy.try_shutdown()
        return 2
    for topic, why in player.stats.skipped_topics.items():
        print(f"skipping {topic}: {why}", file=sys.stderr)
    try:
        if args.wait_for_subscribers > 0 and not player.wait_for_subscribers(
            args.wait_for_subscribers
        ):
            print("no subscriber on the image topics yet; playing anyway", file=sys.stderr)
        if args.delay > 0:
            time.sleep(args.delay)
        stats = player.play()
        print(
            json.dumps(
                {
                    "published": stats.published,
                    "loops": stats.loops,
                    "wall_s": round(stats.wall_s, 3),
                }
            ),
            flush=True,
        )
        time.sleep(0.2)  # let the last reliable messages go out before the participant ends
    except (KeyboardInterrupt, ExternalShutdownException):
        player.stop()
    except RuntimeError:
        # A publish racing with SIGINT's shutdown of the context raises RCLError (a
        # RuntimeError), as spin() does in the node's main(): a clean stop then.
        if rclpy.ok():
            raise
        player.stop()
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


# ---------------------------------------------------------------------------------------------
# process
# ---------------------------------------------------------------------------------------------


@dataclass
class ProcessSummary:
    pairs: int = 0
    processed: int = 0
    no_person: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    mpjpe_mm: float | None = None
    mpjpe_root_mm: float | None = None
    pa_mpjpe_mm: float | None = None
    gt_frames: int = 0
    out_bag: str = ""
    video: str | None = None
    sheet: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items()}


def iter_stereo_pairs(
    bag: str | Path,
    namespace: str | None = None,
    queue_size: int = 10,
    slop: float = 0.02,
    ground_truth: dict[int, np.ndarray] | None = None,
    corrupt: dict[str, int] | None = None,
) -> Iterator[tuple[Any, Any, Any, Any, int]]:
    """Synchronized pairs of a bag in recording order: ``(left, right, left_info, right_info,
    log_time_ns)`` as rclpy messages (latest camera_info per side; None before the first).

    ``ground_truth``, if given, is filled with ``{stamp_ns: (J, 3) joints}`` from
    ``/ground_truth/joints``. Messages that cannot be deserialised are skipped and counted per
    topic in ``corrupt`` (if given).
    """
    from rclpy.serialization import deserialize_message
    from sensor_msgs.msg import CameraInfo, Image

    from stereo_pose3d.ros_io import pose_array_to_numpy, stamp_to_ns
    from stereo_pose3d.sync import ApproximateTimeSynchronizer

    reader = open_reader(bag)
    try:
        topics = {c.topic: c.msgtype for c in reader.connections}
        names = find_stereo_topics(topics, namespace)
        info: dict[str, Any] = {"left": None, "right": None}
        ready: list[tuple[Any, Any, int]] = []
        sync = ApproximateTimeSynchronizer(2, queue_size, slop)
        now = [0]  # log time of the message being read
        sync.registerCallback(lambda left, right: ready.append((left, right, now[0])))
        gt_cls = None
        if ground_truth is not None and topics.get(GROUND_TRUTH_TOPIC):
            gt_cls = ros_message_class(topics[GROUND_TRUTH_TOPIC])
        wanted = {
            names["left_image"],
            names["right_image"],
            names["left_info"],
            names["right_info"],
        } | ({GROUND_TRUTH_TOPIC} if gt_cls else set())
        conns = [c for c in reader.connections if c.topic in wanted]
        # Pairs wait until every message of their log time is read: a camera_info recorded
        # after its images at the same instant still applies to them.
        for conn, ts, raw in reader.messages(connections=conns):
            while ready and ready[0][2] < ts:
                left, right, t = ready.pop(0)
                yield left, right, info["left"], info["right"], t
            now[0] = ts
            topic = conn.topic
            try:
                if topic == names["left_image"]:
                    sync.add(deserialize_message(bytes(raw), Image), 0)
                elif topic == names["right_image"]:
                    sync.add(deserialize_message(bytes(raw), Image), 1)
                elif topic in (names["left_info"], names["right_info"]):
                    side = "left" if topic == names["left_info"] else "right"
                    info[side] = deserialize_message(bytes(raw), CameraInfo)
                elif gt_cls is not None and ground_truth is not None:
                    msg = deserialize_message(bytes(raw), gt_cls)
                    ground_truth[stamp_to_ns(msg.header.stamp)] = pose_array_to_numpy(msg)[0]
            except Exception:  # corrupt serialised data (rclpy raises RMWError)
                if corrupt is not None:
                    corrupt[topic] = corrupt.get(topic, 0) + 1
        while ready:
            left, right, t = ready.pop(0)
            yield left, right, info["left"], info["right"], t
    finally:
        reader.close()


def contact_sheet(images: list[np.ndarray], columns: int = 3, width: int = 1280) -> np.ndarray:
    """Tile RGB images (resized to a common size) into one ``(H, width, 3)`` RGB image."""
    import cv2

    if not images:
        return np.zeros((64, width, 3), np.uint8)
    columns = max(1, min(columns, len(images)))
    tile_w = width // columns
    h0, w0 = images[0].shape[:2]
    tile_h = max(1, round(tile_w * h0 / w0))
    tiles = [cv2.resize(im, (tile_w, tile_h), interpolation=cv2.INTER_AREA) for im in images]
    rows = -(-len(tiles) // columns)
    sheet = np.zeros((rows * tile_h, width, 3), np.uint8)
    for i, t in enumerate(tiles):
        r, c = divmod(i, columns)
        sheet[r * tile_h : (r + 1) * tile_h, c * tile_w : (c + 1) * tile_w] = t
    return sheet


def process_bag(
    bag: str | Path,
    out: str | Path,
    estimator: Any,
    video: str | Path | None = None,
    sheet: str | Path | None = None,
    namespace: str | None = None,
    queue_size: int = 10,
    slop: float = 0.02,
    min_confidence: float = 0.3,
    storage: str = "mcap",
    sheet_frames: int = 9,
    progress: Callable[[int], None] | None = None,
    smoothing: str = "one_euro",
) -> ProcessSummary:
    """Run ``estimator`` over every synchronized pair of ``bag`` and write the outputs.

    ``smoothing``: temporal smoothing of the joints as the node does (``"one_euro"``, its
    default parameters) or ``"none"`` (the estimator's joints as they are).

    Writes ``<ns>/pose3d/markers`` (MarkerArray) and ``<ns>/pose3d/joints`` (PoseArray) into the
    new rosbag2 ``out`` (version 8: readable by Humble and later), stamped with the left image's
    header, at the input pair's log time. Returns a :class:`ProcessSummary` (MPJPE when the bag
    has ``/ground_truth/joints``).
    """
    import cv2
    from rclpy.serialization import serialize_message
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.typesys import Stores, get_typestore

    from stereo_pose3d import metrics
    from stereo_pose3d.markers import draw_debug_image
    from stereo_pose3d.pipeline import PoseProcessor, ProcessingConfig
    from stereo_pose3d.ros_io import InputError

    out = Path(out)
    if out.exists():
        raise BagError(f"output bag {str(out)!r} exists already; not overwriting")
    reader = open_reader(bag)
    topics = {c.topic: c.msgtype for c in reader.connections}
    counts = {c.topic: c.msgcount for c in reader.connections}
    reader.close()
    names = find_stereo_topics(topics, namespace)
    n_left = max(1, counts.get(names["left_image"], 1))
    keep = set(np.linspace(0, n_left - 1, min(sheet_frames, n_left)).round().astype(int).tolist())

    rectified = names["image"] == "image_rect"  # image_raw: rectified here with K, D, R, P
    config = ProcessingConfig(
        min_confidence=min_confidence, images_rectified=rectified, smoothing=smoothing
    )
    processor = PoseProcessor(estimator, config)
    typestore = get_typestore(Stores.ROS2_KILTED)
    plugin = StoragePlugin.SQLITE3 if storage == "sqlite3" else StoragePlugin.MCAP
    writer = Writer(out, version=8, storage_plugin=plugin)
    writer.open()
    ns = names["namespace"]
    conn_markers = writer.add_connection(
        f"{ns}/pose3d/markers", "visualization_msgs/msg/MarkerArray", typestore=typestore
    )
    conn_joints = writer.add_connection(
        f"{ns}/pose3d/joints", "geometry_msgs/msg/PoseArray", typestore=typestore
    )
    summary = ProcessSummary(out_bag=str(out))
    ground_truth: dict[int, np.ndarray] = {}
    predictions: dict[int, np.ndarray] = {}
    thumbs: list[np.ndarray] = []
    video_writer = None
    corrupt: dict[str, int] = {}
    t0 = time.perf_counter()
    try:
        for left, right, linfo, rinfo, ts in iter_stereo_pairs(
            bag, ns, queue_size, slop, ground_truth, corrupt
        ):
            index = summary.pairs
            summary.pairs += 1
            try:
                result = processor.process(left, right, linfo, rinfo)
            except InputError as exc:
                summary.rejected[exc.reason] = summary.rejected.get(exc.reason, 0) + 1
                continue
            except Exception:  # the estimator (torch) may raise anything; the node counts it too
                summary.rejected["estimator_error"] = summary.rejected.get("estimator_error", 0) + 1
                continue
            summary.processed += 1
            writer.write(conn_markers, ts, serialize_message(result.markers))
            writer.write(conn_joints, ts, serialize_message(result.joints))
            if result.person:  # compared in the left rectified frame, as the ground truth
                predictions[result.stamp_ns] = result.joints_3d @ result.frame.R_left.T
            else:
                summary.no_person += 1
            if progress is not None:
                progress(summary.pairs)
            if video is None and index not in keep:
                continue
            frame = result.frame
            img = draw_debug_image(
                frame.left,
                frame.right,
                result.joints_2d,
                result.confidence,
                processor.skeleton or _default_skeleton(),
                min_confidence,
                result.box,
                text=f"{ns or '/'}  t={result.stamp_ns / 1e9:.3f}s",
            )
            if video is not None:
                if video_writer is None:
                    fps = _bag_fps(counts.get(names["left_image"], 0), topics, bag)
                    video_writer = cv2.VideoWriter(
                        str(video),
                        cv2.VideoWriter_fourcc(*"mp4v"),
                        fps,
                        (img.shape[1], img.shape[0]),
                    )
                    if not video_writer.isOpened():
                        raise BagError(f"cannot write video {str(video)!r} (no mp4v encoder)")
                video_writer.write(cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
            if index in keep:
                thumbs.append(
                    cv2.resize(
                        img, (img.shape[1] // 2, img.shape[0] // 2), interpolation=cv2.INTER_AREA
                    )
                )
    except BaseException:  # error or Ctrl-C: no half-written outputs are left behind
        writer.close()
        if video_writer is not None:
            video_writer.release()
            Path(video).unlink(missing_ok=True)
        shutil.rmtree(out, ignore_errors=True)
        raise
    writer.close()
    if corrupt:
        summary.rejected["corrupt_message"] = sum(corrupt.values())
    if video_writer is not None:
        video_writer.release()
        summary.video = str(video)
    if sheet is not None:
        Path(sheet).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(sheet), cv2.cvtColor(contact_sheet(thumbs), cv2.COLOR_RGB2BGR))
        summary.sheet = str(sheet)
    summary.seconds = time.perf_counter() - t0
    common = sorted(set(predictions) & set(ground_truth))
    summary.gt_frames = len(common)
    if common:
        pred = np.stack([predictions[s] for s in common])
        gt = np.stack([ground_truth[s] for s in common])
        if pred.shape == gt.shape:
            skel = processor.skeleton or _default_skeleton()
            summary.mpjpe_mm = metrics.mpjpe(pred, gt)
            summary.mpjpe_root_mm = metrics.mpjpe(pred, gt, root=skel.root)
            summary.pa_mpjpe_mm = metrics.pa_mpjpe(pred, gt)
    return summary


def _default_skeleton() -> Any:
    from stereo_pose3d.skeleton import MPII

    return MPII


def _bag_fps(n_frames: int, topics: dict[str, str], bag: str | Path) -> float:
    reader = open_reader(bag)
    try:
        duration = (reader.end_time - reader.start_time) / 1e9
    finally:
        reader.close()
    if n_frames > 1 and duration > 0:
        return float(np.clip((n_frames - 1) / duration, 1.0, 120.0))
    return 30.0


def process_main(args: argparse.Namespace) -> int:
    from stereo_pose3d.checkpoint import CheckpointError
    from stereo_pose3d.estimator import StereoPoseEstimator
    from stereo_pose3d.models.config import parse_estimator_settings
    from stereo_pose3d.node import DEFAULT_WEIGHTS

    if Path(args.out).exists():  # before the (slow) weights loading
        print(
            f"stereo_pose3d_bag process: output bag {args.out!r} exists already; not overwriting",
            file=sys.stderr,
        )
        return 2
    weights = Path(args.weights) if args.weights else DEFAULT_WEIGHTS
    try:
        settings = parse_estimator_settings(args.estimator)
    except ValueError as exc:
        print(f"stereo_pose3d_bag process: {exc}", file=sys.stderr)
        return 2
    try:
        estimator = StereoPoseEstimator.from_checkpoint(weights, device=args.device, **settings)
    except (CheckpointError, ValueError, OSError) as exc:
        print(
            f"stereo_pose3d_bag process: cannot load weights {str(weights)!r}: {exc}",
            file=sys.stderr,
        )
        return 2
    try:
        summary = process_bag(
            args.bag,
            args.out,
            estimator,
            video=args.video,
            sheet=args.sheet,
            namespace=args.namespace,
            queue_size=args.queue_size,
            slop=args.slop,
            min_confidence=args.min_confidence,
            storage=args.storage,
            smoothing=args.smoothing,
        )
    except BagError as exc:
        print(f"stereo_pose3d_bag process: {exc}", file=sys.stderr)
        return 2
    rate = summary.pairs / summary.seconds if summary.seconds > 0 else 0.0
    print(
        f"pairs: {summary.pairs}  processed: {summary.processed}  "
        f"nobody: {summary.no_person}  rejected: {summary.rejected or 0}  "
        f"({rate:.1f} pairs/s on {estimator.device})"
    )
    print(
        f"wrote {summary.out_bag}"
        + (f", {summary.video}" if summary.video else "")
        + (f", {summary.sheet}" if summary.sheet else "")
    )
    if summary.mpjpe_mm is not None:
        print(
            f"MPJPE vs {GROUND_TRUTH_TOPIC} over {summary.gt_frames} frames: "
            f"{summary.mpjpe_mm:.1f} mm (root-relative {summary.mpjpe_root_mm:.1f} mm, "
            f"PA {summary.pa_mpjpe_mm:.1f} mm)"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(summary.as_dict(), indent=2))
    return 0


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="stereo_pose3d_bag", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    play = sub.add_parser("play", help="publish a rosbag2 into ROS with its timing and /clock")
    play.add_argument("bag", help="rosbag2 directory, .mcap or .db3 file")
    play.add_argument("--rate", type=float, default=1.0, help="speed factor (default 1)")
    play.add_argument("--loop", action="store_true", help="start over at the end")
    play.add_argument("--clock-hz", type=float, default=100.0, help="/clock rate (default 100)")
    play.add_argument("--topics", nargs="+", help="publish only these topics")
    play.add_argument(
        "--wait-for-subscribers",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="wait up to SECONDS for subscribers on the image topics first",
    )
    play.add_argument("--delay", type=float, default=0.0, help="seconds to wait before playing")
    proc = sub.add_parser("process", help="run the estimator over a bag, write markers/joints")
    proc.add_argument("bag", help="rosbag2 directory, .mcap or .db3 file")
    proc.add_argument("--out", required=True, help="output rosbag2 directory (must not exist)")
    proc.add_argument("--video", help="write the rendered views to this .mp4")
    proc.add_argument("--sheet", help="write a contact sheet PNG of a few frames")
    proc.add_argument("--json", help="write the summary as JSON")
    proc.add_argument("--weights", default="", help="checkpoint (default: the shipped one)")
    proc.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    proc.add_argument("--namespace", help="stereo namespace, e.g. /stereo (default: detected)")
    proc.add_argument("--queue-size", type=int, default=10)
    proc.add_argument("--slop", type=float, default=0.02)
    proc.add_argument("--min-confidence", type=float, default=0.3)
    proc.add_argument("--storage", choices=("mcap", "sqlite3"), default="mcap")
    proc.add_argument(
        "--smoothing",
        choices=("one_euro", "none"),
        default="one_euro",
        help="temporal smoothing of the joints, as the node's parameter (default one_euro)",
    )
    proc.add_argument(
        "--estimator",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an estimator setting, as the node's parameter of that name (repeatable; YAML "
        "value), e.g. joint_stereo_matching=false or flip_test=true",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Console script ``stereo_pose3d_bag``."""
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    if args.command == "play":
        return play_main(args)
    return process_main(args)


if __name__ == "__main__":
    sys.exit(main())
