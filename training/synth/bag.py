"""rosbag2 recordings: a small generic writer (any ROS 2 message) and the synthetic stereo bag.

Generic part (reusable, e.g. by the node's offline tool)::

    with bag_writer("out.mcap") as bag:                 # rosbag2 version 8, mcap or sqlite3
        conn = add_topic(bag, "/chatter", "std_msgs/msg/String")
        write_message(bag, conn, msg, stamp_ns)         # msg: rclpy message or rosbags dataclass

Version 8 metadata is what ``ros2 bag play`` on Humble parses (version 9 changed the QoS
format); newer distributions read it too. Messages built with rclpy are serialised with
``rclpy.serialization.serialize_message`` (exactly the bytes a ROS publisher sends); without rclpy
:class:`MessageFactory` builds rosbags dataclasses and rosbags' CDR serialiser is used.

Synthetic recording (:func:`write_synthetic_bag`): ``/stereo/{left,right}/image_rect`` (rgb8) and
``/stereo/{left,right}/camera_info`` (``image_raw`` for the raw, distorted rig), and
``/ground_truth/joints`` (geometry_msgs/PoseArray, joints in skeleton order, positions in the LEFT
rectified camera frame, metres), all stamped at the clip's time.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

DEFAULT_START_NS = 1_700_000_000 * 10**9  # fixed start time so bags are reproducible
LEFT_FRAME = "stereo_left_optical_frame"
RIGHT_FRAME = "stereo_right_optical_frame"
JOINTS_TOPIC = "/ground_truth/joints"


def _typestore():
    from rosbags.typesys import Stores, get_typestore

    return get_typestore(Stores.ROS2_HUMBLE)


def rclpy_available() -> bool:
    """True if ``rclpy.serialization`` and the message packages import."""
    try:
        import geometry_msgs.msg  # noqa: F401
        import rclpy.serialization  # noqa: F401
        import sensor_msgs.msg  # noqa: F401
    except ImportError:
        return False
    return True


def default_qos():
    """Reliable, volatile, keep-last 10: what a default ROS 2 publisher offers."""
    from rosbags.interfaces import (
        Qos,
        QosDurability,
        QosHistory,
        QosLiveliness,
        QosReliability,
        QosTime,
    )

    zero = QosTime(0, 0)
    return Qos(
        QosHistory.KEEP_LAST,
        10,
        QosReliability.RELIABLE,
        QosDurability.VOLATILE,
        zero,
        zero,
        QosLiveliness.AUTOMATIC,
        zero,
        False,
    )


def open_bag_writer(path: str | Path, storage: str = "mcap"):
    """Open a new rosbag2 (version 8) for writing; ``storage`` is ``"mcap"`` or ``"sqlite3"``.
    The caller must ``close()`` it (or use :func:`bag_writer`). Refuses to overwrite."""
    from rosbags.rosbag2 import StoragePlugin, Writer

    plugins = {"mcap": StoragePlugin.MCAP, "sqlite3": StoragePlugin.SQLITE3}
    if storage not in plugins:
        raise ValueError(f"storage must be one of {sorted(plugins)}, got {storage!r}")
    writer = Writer(Path(path), version=8, storage_plugin=plugins[storage])
    writer.open()
    return writer


@contextmanager
def bag_writer(path: str | Path, storage: str = "mcap") -> Iterator[Any]:
    """Context manager around :func:`open_bag_writer`."""
    writer = open_bag_writer(path, storage)
    try:
        yield writer
    finally:
        writer.close()


def add_topic(writer, topic: str, msgtype: str, qos=None):
    """Register ``topic`` with ROS 2 type ``msgtype`` (e.g. ``"sensor_msgs/msg/Image"``);
    returns the connection to pass to :func:`write_message`."""
    return writer.add_connection(
        topic,
        msgtype,
        typestore=_typestore(),
        offered_qos_profiles=[qos if qos is not None else default_qos()],
    )


def serialize(msg: Any, msgtype: str | None = None) -> bytes:
    """CDR bytes of ``msg``: rclpy's serialiser for rclpy messages, rosbags' otherwise."""
    if hasattr(type(msg), "get_fields_and_field_types"):  # an rclpy (rosidl) message
        from rclpy.serialization import serialize_message

        return serialize_message(msg)
    if msgtype is None:
        msgtype = msg.__msgtype__
    return bytes(_typestore().serialize_cdr(msg, msgtype))


def write_message(writer, connection, msg: Any, timestamp_ns: int) -> None:
    """Serialise ``msg`` and write it on ``connection`` with log time ``timestamp_ns``."""
    writer.write(connection, int(timestamp_ns), serialize(msg, connection.msgtype))


class MessageFactory:
    """Builds the few message types used here as rclpy messages (when rclpy is importable and
    ``use_rclpy``) or as rosbags dataclasses (same fields)."""

    def __init__(self, use_rclpy: bool | None = None) -> None:
        self.rclpy = rclpy_available() if use_rclpy is None else bool(use_rclpy)
        if self.rclpy:
            from builtin_interfaces.msg import Time
            from geometry_msgs.msg import Point, Pose, PoseArray, Quaternion
            from sensor_msgs.msg import CameraInfo, Image, RegionOfInterest
            from std_msgs.msg import Header

            self._types = dict(
                Time=Time,
                Header=Header,
                Image=Image,
                CameraInfo=CameraInfo,
                RegionOfInterest=RegionOfInterest,
                Point=Point,
                Pose=Pose,
                PoseArray=PoseArray,
                Quaternion=Quaternion,
            )
        else:
            t = _typestore().types
            self._types = dict(
                Time=t["builtin_interfaces/msg/Time"],
                Header=t["std_msgs/msg/Header"],
                Image=t["sensor_msgs/msg/Image"],
                CameraInfo=t["sensor_msgs/msg/CameraInfo"],
                RegionOfInterest=t["sensor_msgs/msg/RegionOfInterest"],
                Point=t["geometry_msgs/msg/Point"],
                Pose=t["geometry_msgs/msg/Pose"],
                PoseArray=t["geometry_msgs/msg/PoseArray"],
                Quaternion=t["geometry_msgs/msg/Quaternion"],
            )

    def header(self, stamp_ns: int, frame_id: str):
        T = self._types
        stamp = T["Time"](sec=int(stamp_ns // 10**9), nanosec=int(stamp_ns % 10**9))
        return T["Header"](stamp=stamp, frame_id=frame_id)

    def image(self, rgb: np.ndarray, stamp_ns: int, frame_id: str):
        """sensor_msgs/Image, ``rgb8`` from an ``(H, W, 3) uint8`` array."""
        rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
        h, w = rgb.shape[:2]
        data = rgb.tobytes() if self.rclpy else rgb.reshape(-1)
        return self._types["Image"](
            header=self.header(stamp_ns, frame_id),
            height=h,
            width=w,
            encoding="rgb8",
            is_bigendian=0,
            step=3 * w,
            data=data,
        )

    def camera_info(self, info: dict, stamp_ns: int, frame_id: str):
        """sensor_msgs/CameraInfo from a dict (``width, height, distortion_model, d, k, r, p``)."""
        T = self._types
        roi = T["RegionOfInterest"](x_offset=0, y_offset=0, height=0, width=0, do_rectify=False)
        arr = (lambda v: [float(x) for x in v]) if self.rclpy else (lambda v: np.asarray(v, float))
        return T["CameraInfo"](
            header=self.header(stamp_ns, frame_id),
            height=int(info["height"]),
            width=int(info["width"]),
            distortion_model=str(info["distortion_model"]),
            d=arr(info["d"]),
            k=arr(info["k"]),
            r=arr(info["r"]),
            p=arr(info["p"]),
            binning_x=0,
            binning_y=0,
            roi=roi,
        )

    def pose_array(self, positions: np.ndarray, stamp_ns: int, frame_id: str):
        """geometry_msgs/PoseArray with identity orientations at ``positions (N, 3)`` m."""
        T = self._types
        poses = [
            T["Pose"](
                position=T["Point"](x=float(x), y=float(y), z=float(z)),
                orientation=T["Quaternion"](x=0.0, y=0.0, z=0.0, w=1.0),
            )
            for x, y, z in np.asarray(positions, dtype=np.float64)
        ]
        return T["PoseArray"](header=self.header(stamp_ns, frame_id), poses=poses)


# --------------------------------------------------------------------------------------------
# The synthetic stereo recording
# --------------------------------------------------------------------------------------------


def bag_topics(raw: bool) -> dict[str, str]:
    """Topic names of a synthetic bag (``image_raw`` for the raw rig)."""
    image = "image_raw" if raw else "image_rect"
    return {
        "left_image": f"/stereo/left/{image}",
        "left_info": "/stereo/left/camera_info",
        "right_image": f"/stereo/right/{image}",
        "right_info": "/stereo/right/camera_info",
        "joints": JOINTS_TOPIC,
    }


def write_synthetic_bag(
    path: str | Path,
    clip: str,
    seconds: float,
    *,
    seed: int = 0,
    raw: bool = False,
    storage: str = "mcap",
    fps: float | None = None,
    width: int = 640,
    height: int = 480,
    supersample: int = 2,
    start_ns: int = DEFAULT_START_NS,
    use_rclpy: bool | None = None,
    progress: bool = True,
) -> dict:
    """Render ``seconds`` of ``clip`` from a random rig (deterministic by ``seed``) into a bag.

    Frames are at ``fps`` (default: the clip's keyframe rate), stamped ``start_ns`` + clip time.
    The rig is static when the person stays in view, otherwise it follows the person's smoothed
    path. Returns a summary (frames, fps, topics, rig, whether rclpy serialised the messages).
    """
    from tqdm import tqdm

    from .motion import load_clip
    from .render import SynthRenderer

    motion = load_clip(clip)
    rate = float(fps) if fps else motion.rate
    n = max(1, round(seconds * rate))
    times = np.arange(n) / rate
    factory = MessageFactory(use_rclpy)
    topics = bag_topics(raw)
    ss = np.random.SeedSequence([int(seed), zlib.crc32(b"bag"), zlib.crc32(clip.encode())])
    with SynthRenderer(width, height, supersample) as renderer:
        plan = renderer.plan(ss, clip, times, raw=raw, follow=None, occluder_probability=0.0)
        with bag_writer(path, storage) as bag:
            conns = {
                "left_image": add_topic(bag, topics["left_image"], "sensor_msgs/msg/Image"),
                "left_info": add_topic(bag, topics["left_info"], "sensor_msgs/msg/CameraInfo"),
                "right_image": add_topic(bag, topics["right_image"], "sensor_msgs/msg/Image"),
                "right_info": add_topic(bag, topics["right_info"], "sensor_msgs/msg/CameraInfo"),
                "joints": add_topic(bag, topics["joints"], "geometry_msgs/msg/PoseArray"),
            }
            frames = renderer.frames(plan)
            for f, frame in enumerate(
                tqdm(frames, total=n, desc=f"bag {clip}", unit="frame", disable=not progress)
            ):
                stamp = start_ns + round(times[f] * 1e9)
                rig = plan.rig_at(f)
                for view, side, frame_id in ((0, "left", LEFT_FRAME), (1, "right", RIGHT_FRAME)):
                    img = factory.image(frame.images[view], stamp, frame_id)
                    info = factory.camera_info(rig.camera_info(view), stamp, frame_id)
                    write_message(bag, conns[f"{side}_image"], img, stamp)
                    write_message(bag, conns[f"{side}_info"], info, stamp)
                joints = factory.pose_array(frame.labels["joints_3d_cam"], stamp, LEFT_FRAME)
                write_message(bag, conns["joints"], joints, stamp)
    return {
        "path": str(path),
        "clip": clip,
        "frames": n,
        "fps": rate,
        "seconds": n / rate,
        "storage": storage,
        "raw_rig": bool(raw),
        "follow_camera": plan.camera_path is not None,
        "baseline_m": plan.rig.baseline,
        "topics": topics,
        "serializer": "rclpy" if factory.rclpy else "rosbags",
    }
