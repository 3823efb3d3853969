"""``python -m training demo``: the end-to-end demo on the embedded default data.

1. Makes a synthetic stereo bag if it is missing (``python -m training synth --bag ...``).
2. Starts ``stereo_pose3d_node`` as its own process (``python -m stereo_pose3d.node``, the
   package's YAML file, ``use_sim_time``, namespace ``/stereo``, debug image on).
3. Plays the bag into it with :class:`stereo_pose3d.bag.BagPlayer` (original timing + ``/clock``).
4. Records what the node publishes (markers, joints, diagnostics) into a new bag, measures the
   end-to-end latency (image published -> joints received), and compares the joints with the
   bag's ``/ground_truth/joints``.
5. Prints a summary table and writes ``summary.json`` and ``demo.png`` (a debug view next to the
   3D skeleton and its ground truth) into ``--out``.

All processes use the package's Fast DDS profile (:mod:`stereo_pose3d.dds`) so the 640x480 images
cross process boundaries.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
NS = "/stereo"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--bag",
        default="data/demo/synthetic_dance_b.mcap",
        help="input rosbag2; generated when missing (default: %(default)s)",
    )
    parser.add_argument(
        "--clip", default="dance_b", help="clip for a generated bag (dance_b: a validation clip)"
    )
    parser.add_argument("--seconds", type=float, default=10.0, help="length of a generated bag")
    parser.add_argument("--seed", type=int, default=0, help="seed of a generated bag")
    parser.add_argument("--fps", type=float, default=30.0, help="frame rate of a generated bag")
    parser.add_argument(
        "--weights", default="", help="checkpoint (default: the node's, weights/baseline_synth.pt)"
    )
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--rate", type=float, default=1.0, help="playback speed factor")
    parser.add_argument("--out", default="outputs/demo", help="output directory")
    parser.add_argument(
        "--domain-id", type=int, default=None, help="ROS_DOMAIN_ID (default: $ROS_DOMAIN_ID or 0)"
    )
    parser.add_argument(
        "--no-debug-image", action="store_true", help="don't ask the node for pose3d/debug_image"
    )
    parser.add_argument(
        "--startup-timeout",
        type=float,
        default=120.0,
        help="seconds to wait for the node to subscribe",
    )


def _generate_bag(args: argparse.Namespace, bag: Path) -> None:
    bag.parent.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "training",
        "synth",
        "--bag",
        str(bag),
        "--clip",
        args.clip,
        "--seconds",
        str(args.seconds),
        "--seed",
        str(args.seed),
        "--fps",
        str(args.fps),
    ]
    print(f"[demo] generating {bag}: {' '.join(cmd[1:])}", flush=True)
    res = subprocess.run(cmd, cwd=REPO)
    if res.returncode != 0 or not bag.exists():
        raise SystemExit(f"[demo] could not generate the bag (exit {res.returncode})")


class Recorder:
    """Subscribes to the node's outputs (serialized, as recorded) and to /diagnostics."""

    def __init__(self, node: Any, keep_debug: int = 6, expected_stamps: list[int] | None = None):
        from diagnostic_msgs.msg import DiagnosticArray
        from geometry_msgs.msg import PoseArray
        from sensor_msgs.msg import Image
        from visualization_msgs.msg import MarkerArray

        self.lock = threading.Lock()
        self.raw: dict[str, list[tuple[float, bytes]]] = {}
        self.diagnostics: list[Any] = []
        self.debug: dict[int, tuple[int, Any]] = {}  # bucket -> (stamp, Image)
        self.stamps = expected_stamps or []
        self.keep_debug = keep_debug
        self.types = {f"{NS}/pose3d/markers": MarkerArray, f"{NS}/pose3d/joints": PoseArray}
        for topic, cls in self.types.items():
            node.create_subscription(
                cls, topic, lambda m, t=topic: self._on_raw(t, m), 50, raw=True
            )
        node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diag, 10)
        node.create_subscription(Image, f"{NS}/pose3d/debug_image", self._on_debug, 2)

    def _on_raw(self, topic: str, data: bytes) -> None:
        with self.lock:
            self.raw.setdefault(topic, []).append((time.perf_counter(), data))

    def _on_diag(self, msg: Any) -> None:
        with self.lock:
            self.diagnostics.append(msg)

    def _on_debug(self, msg: Any) -> None:
        from stereo_pose3d.ros_io import stamp_to_ns

        if not self.stamps:
            return
        stamp = stamp_to_ns(msg.header.stamp)
        index = int(np.searchsorted(self.stamps, stamp))
        bucket = min(self.keep_debug - 1, index * self.keep_debug // max(1, len(self.stamps)))
        with self.lock:
            if bucket not in self.debug:  # keep a few frames only: memory stays flat
                self.debug[bucket] = (stamp, msg)

    def last_diagnostics(self) -> dict[str, str]:
        with self.lock:
            if not self.diagnostics:
                return {}
            msg = self.diagnostics[-1]
        return {kv.key: kv.value for s in msg.status for kv in s.values}

    def count(self, topic: str) -> int:
        with self.lock:
            return len(self.raw.get(topic, []))


def _bag_truth(bag: Path) -> tuple[list[int], dict[int, np.ndarray], np.ndarray]:
    """Left image stamps, ``{stamp: (J,3)}`` ground truth (left rectified frame), left R."""
    from rclpy.serialization import deserialize_message
    from sensor_msgs.msg import CameraInfo, Image

    from stereo_pose3d.bag import (
        GROUND_TRUTH_TOPIC,
        find_stereo_topics,
        open_reader,
        ros_message_class,
    )
    from stereo_pose3d.ros_io import pose_array_to_numpy, stamp_to_ns

    reader = open_reader(bag)
    try:
        topics = {c.topic: c.msgtype for c in reader.connections}
        names = find_stereo_topics(topics, NS)
        stamps, truth, R = [], {}, np.eye(3)
        gt_cls = (
            ros_message_class(topics[GROUND_TRUTH_TOPIC]) if GROUND_TRUTH_TOPIC in topics else None
        )
        wanted = [
            c
            for c in reader.connections
            if c.topic in (names["left_image"], names["left_info"], GROUND_TRUTH_TOPIC)
        ]
        for conn, _, raw in reader.messages(connections=wanted):
            if conn.topic == names["left_image"]:
                # only the header is needed: deserialising the image is cheap enough here
                stamps.append(stamp_to_ns(deserialize_message(bytes(raw), Image).header.stamp))
            elif conn.topic == names["left_info"]:
                r = np.asarray(deserialize_message(bytes(raw), CameraInfo).r).reshape(3, 3)
                R = r if np.any(r) else np.eye(3)
            elif gt_cls is not None:
                msg = deserialize_message(bytes(raw), gt_cls)
                truth[stamp_to_ns(msg.header.stamp)] = pose_array_to_numpy(msg)[0]
    finally:
        reader.close()
    return sorted(stamps), truth, R


def _write_recording(path: Path, recorder: Recorder) -> None:
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.typesys import Stores, get_typestore

    if path.exists():
        import shutil

        shutil.rmtree(path)
    typestore = get_typestore(Stores.ROS2_KILTED)
    writer = Writer(path, version=8, storage_plugin=StoragePlugin.MCAP)
    writer.open()
    try:
        for topic, cls in recorder.types.items():
            msgtype = f"{cls.__module__.split('.')[0]}/msg/{cls.__name__}"
            conn = writer.add_connection(topic, msgtype, typestore=typestore)
            for wall, data in recorder.raw.get(topic, []):
                writer.write(conn, int(wall * 1e9), data)
    finally:
        writer.close()


def _figure(
    path: Path, debug: Any | None, pred: np.ndarray | None, gt: np.ndarray | None, caption: str
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from stereo_pose3d.skeleton import MPII

    fig = plt.figure(figsize=(15, 4.8), dpi=100)
    ax = fig.add_axes([0.0, 0.08, 0.68, 0.9])
    if debug is not None:
        ax.imshow(debug)
    ax.axis("off")
    ax3 = fig.add_axes([0.69, 0.08, 0.3, 0.9], projection="3d")
    for joints, style, label in ((gt, "--", "ground truth"), (pred, "-", "node output")):
        if joints is None:
            continue
        for k, (a, b) in enumerate(MPII.bones):
            xs, ys, zs = joints[[a, b], 0], joints[[a, b], 2], -joints[[a, b], 1]
            ax3.plot(
                xs,
                ys,
                zs,
                style,
                color=MPII.bone_color((a, b)),
                label=label if k == 0 else None,
                lw=2 if style == "-" else 1,
            )
    ax3.set_xlabel("x (m)")
    ax3.set_ylabel("z (m)")
    ax3.set_zlabel("-y (m)")
    ax3.legend(loc="upper left", fontsize=8)
    if pred is not None or gt is not None:
        pts = np.concatenate([j for j in (pred, gt) if j is not None])
        pts = pts[np.isfinite(pts).all(axis=1)]
        c, r = pts.mean(0), max(0.5, float(np.ptp(pts, axis=0).max()) / 2 + 0.1)
        ax3.set_xlim(c[0] - r, c[0] + r)
        ax3.set_ylim(c[2] - r, c[2] + r)
        ax3.set_zlim(-c[1] - r, -c[1] + r)
    fig.text(0.01, 0.02, caption, fontsize=9, family="monospace")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def main(args: argparse.Namespace) -> int:
    from stereo_pose3d import dds

    dds.configure()
    domain = (
        args.domain_id if args.domain_id is not None else int(os.environ.get("ROS_DOMAIN_ID", 0))
    )
    os.environ["ROS_DOMAIN_ID"] = str(domain)
    import rclpy
    from rclpy.executors import SingleThreadedExecutor

    from stereo_pose3d import metrics
    from stereo_pose3d.bag import BagPlayer
    from stereo_pose3d.node import DEFAULT_WEIGHTS
    from stereo_pose3d.processes import stop_process
    from stereo_pose3d.ros_io import pose_array_to_numpy, stamp_to_ns

    bag = Path(args.bag)
    bag = bag if bag.is_absolute() else REPO / bag
    out = Path(args.out)
    out = out if out.is_absolute() else REPO / out
    out.mkdir(parents=True, exist_ok=True)
    weights = Path(args.weights).resolve() if args.weights else DEFAULT_WEIGHTS
    if not weights.is_file():
        print(
            f"[demo] weights {weights} not found: train them (python -m training finetune-cdr "
            "...) or pass --weights FILE",
            file=sys.stderr,
        )
        return 2
    if not bag.exists():
        _generate_bag(args, bag)
    stamps, truth, R_left = _bag_truth(bag)
    print(f"[demo] bag {bag}: {len(stamps)} stereo pairs, {len(truth)} ground-truth poses")

    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env.update(dds.fastdds_env(base=env))
    node_log = out / "node.log"
    cmd = [
        sys.executable,
        "-m",
        "stereo_pose3d.node",
        "--ros-args",
        "--params-file",
        str(REPO / "config" / "stereo_pose3d.yaml"),
        "-r",
        f"__ns:={NS}",
        "-p",
        "use_sim_time:=true",
        "-p",
        f"weights:={weights}",
        "-p",
        f"device:={args.device}",
        "-p",
        f"publish_debug_image:={'false' if args.no_debug_image else 'true'}",
    ]
    rclpy.init(domain_id=domain)
    node = rclpy.create_node("stereo_pose3d_demo")
    recorder = Recorder(node, expected_stamps=stamps)
    player = BagPlayer(node, bag, rate=args.rate, record_stamps_of=f"{NS}/left/image_rect")
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()
    with open(node_log, "wb") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            print(f"[demo] node started (pid {proc.pid}, log {node_log}); waiting for it")
            t0 = time.monotonic()
            while not player.wait_for_subscribers(1.0):
                if proc.poll() is not None or time.monotonic() - t0 > args.startup_timeout:
                    print(node_log.read_text(), file=sys.stderr)
                    print("[demo] the node did not start", file=sys.stderr)
                    return 1
            print(f"[demo] playing at rate {args.rate} ...", flush=True)
            play = player.play()
            # wait for the node to finish the last pair
            n = play.published.get(f"{NS}/left/image_rect", 0)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                d = recorder.last_diagnostics()
                done = sum(int(d.get(k, 0)) for k in ("processed", "dropped", "failed"))
                if d and int(d.get("synchronized", 0)) >= n - 2 and done >= int(d["synchronized"]):
                    break
                time.sleep(0.2)
            time.sleep(1.2)  # one more diagnostics message
        finally:
            stop_process(proc, timeout=15)
    executor.shutdown(timeout_sec=2.0)
    spinner.join(3)
    diag = recorder.last_diagnostics()

    # outputs vs ground truth and latency
    joints_topic = f"{NS}/pose3d/joints"
    from geometry_msgs.msg import PoseArray
    from rclpy.serialization import deserialize_message

    preds, latencies = {}, []
    for wall, data in recorder.raw.get(joints_topic, []):
        msg = deserialize_message(data, PoseArray)
        stamp = stamp_to_ns(msg.header.stamp)
        if stamp in play.publish_times:
            latencies.append(wall - play.publish_times[stamp])
        if msg.poses:
            joints, confident = pose_array_to_numpy(msg)
            # -> left rectified frame; joints the node flags as not confident (below
            # min_confidence, or invalid: depth-gated, degenerate) are left out, as RViz does.
            preds[stamp] = np.where(confident[:, None], joints @ R_left.T, np.nan)
    common = sorted(set(preds) & set(truth))
    mpjpe = pa = confident_share = None
    if common:
        P = np.stack([preds[s] for s in common])
        G = np.stack([truth[s] for s in common])
        ok = np.isfinite(P).all(axis=-1)
        confident_share = float(ok.mean())
        mpjpe = metrics.mpjpe(P, G, mask=ok)
        whole = ok.all(axis=1)  # PA needs every joint of a frame
        pa = metrics.pa_mpjpe(P[whole], G[whole]) if whole.any() else None
    lat = np.asarray(latencies) * 1e3
    _write_recording(out / "recorded", recorder)
    node.destroy_node()
    rclpy.try_shutdown()

    def fmt(v: Any, unit: str = "") -> str:
        return "n/a" if v is None else (f"{v:.1f}{unit}" if isinstance(v, float) else f"{v}{unit}")

    summary = {
        "bag": str(bag),
        "weights": str(weights),
        "pairs_published": n,
        "received_left": int(diag.get("received_left", 0)),
        "synchronized": int(diag.get("synchronized", 0)),
        "processed": int(diag.get("processed", 0)),
        "dropped": int(diag.get("dropped", 0)),
        "failed": int(diag.get("failed", 0)),
        "outputs_received": recorder.count(joints_topic),
        "with_person": len(preds),
        "latency_ms_median": float(np.median(lat)) if lat.size else None,
        "latency_ms_p95": float(np.percentile(lat, 95)) if lat.size else None,
        "processing_ms_median": float(diag["processing_ms.median"])
        if "processing_ms.median" in diag
        else None,
        "processed_rate_hz": float(diag.get("processed_rate_hz", 0.0)),
        "mpjpe_mm": mpjpe,
        "pa_mpjpe_mm": pa,
        "confident_joints": confident_share,
        "gt_frames": len(common),
    }
    rows = [
        ("stereo pairs played", fmt(n)),
        ("pairs received by the node", f"{summary['received_left']} (images crossed processes)"),
        ("synchronized / processed", f"{summary['synchronized']} / {summary['processed']}"),
        ("dropped (newest-first) / failed", f"{summary['dropped']} / {summary['failed']}"),
        (
            "outputs received (joints)",
            f"{summary['outputs_received']}, {summary['with_person']} with a person",
        ),
        (
            "end-to-end latency median / p95",
            f"{fmt(summary['latency_ms_median'], ' ms')} / {fmt(summary['latency_ms_p95'], ' ms')}",
        ),
        ("node processing time (median)", fmt(summary["processing_ms_median"], " ms")),
        (
            "MPJPE vs ground truth",
            f"{fmt(mpjpe, ' mm')} over {len(common)} frames (PA-MPJPE {fmt(pa, ' mm')}), "
            f"{fmt(None if confident_share is None else 100 * confident_share, ' %')} of joints "
            "confident",
        ),
    ]
    width = max(len(k) for k, _ in rows)
    table = "\n".join(f"  {k:<{width}}  {v}" for k, v in rows)
    print("\n[demo] summary\n" + table)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))

    debug_img, stamp_pick = None, None
    if recorder.debug:
        stamp_pick, msg = recorder.debug[sorted(recorder.debug)[len(recorder.debug) // 2]]
        from stereo_pose3d.ros_io import image_to_rgb

        debug_img = image_to_rgb(msg)
    if stamp_pick is None or stamp_pick not in preds:
        stamp_pick = common[len(common) // 2] if common else None
    caption = (
        f"stereo_pose3d demo: {summary['processed']} of {n} pairs processed, "
        f"latency {fmt(summary['latency_ms_median'], ' ms')} (median), "
        f"MPJPE {fmt(mpjpe, ' mm')} over {len(common)} frames"
    )
    _figure(out / "demo.png", debug_img, preds.get(stamp_pick), truth.get(stamp_pick), caption)
    print(f"[demo] wrote {out / 'demo.png'}, {out / 'summary.json'}, {out / 'recorded'}")
    return 0 if summary["processed"] > 0 else 1
