"""The live node end to end over DDS: image stamp -> markers, processed pairs/s, node overhead.

    .venv/bin/python benchmarks/bench_node.py                        # ~2 min on 2 CPU cores
    .venv/bin/python benchmarks/bench_node.py --device cuda --repeats 5
    .venv/bin/python benchmarks/bench_node.py --plain                # the unmodified console script

Three processes on one machine, each its own ROS participant with the package's Fast DDS profile
(:mod:`stereo_pose3d.dds`, as the launch file and the tests use), on a private ``ROS_DOMAIN_ID``
with discovery limited to localhost:

* **node**: ``stereo_pose3d_node`` with ``config/stereo_pose3d.yaml`` and the shipped weights
  (``stereo_pose3d/weights/cdrnet_synth.pt``, else the training runs' pose + locator, see
  ``bench_model.write_system_file``; ``--weights``). By default it runs the node's own ``main()``
  with light timing hooks (``_node`` mode of this script: wall-clock time of each pair's arrival at
  the synchronizer callback, the worker's take, the pipeline's ``convert / estimate / outputs``
  split, the estimator's ``preprocess / locator / network / triangulation`` split and the end of
  ``publish``, one JSON line per pair); ``--plain`` runs the unmodified console script and takes
  the node's view from ``/diagnostics`` only.
* **camera**: publishes ``--width`` x ``--height`` rgb8 stereo pairs (frames of the synthetic
  validation split, so a person is in view) with their ``camera_info`` at ``--rate`` Hz, sensor-data
  QoS like a camera driver, stamped with the wall clock just before publishing.
* **this process**: subscribes to ``pose3d/markers`` and ``/diagnostics``; latency = receive time
  minus the image stamp (one clock: same machine).

Each of ``--repeats`` runs streams ``--duration`` s after ``--warmup`` s (discarded) to the same
node; figures are medians over the steady window, then the median over runs. The node's *own
overhead* is everything that is not the two networks and the DLT: DDS transport + synchronisation,
image conversion, the estimator's preprocessing (letterbox, crops, normalisation), markers and
publication. The wait for a busy worker (a pair arriving while the previous one is processed) is
reported separately: it is queueing, not work.

Writes ``benchmarks/results/node.json`` (``--out``) and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

NS = "/stereo"
LEFT_FRAME = "stereo_left_optical_frame"


# ----------------------------------------------------------------------------------------------
# node process with timing hooks
# ----------------------------------------------------------------------------------------------


def accelerate(est: Any, backend: str, calib_root: Path, calib_count: int = 32) -> str:
    """Run the estimator's pose network and locator through ONNX Runtime (``"ort"`` float32,
    ``"ort_int8"`` static QDQ calibrated on ``calib_root`` pairs, ``"ort_int8_locator"`` float32
    pose network + int8 locator): what a ``backend`` parameter
    of the estimator would do. Replaces ``est.pose_net.forward_2d`` and ``est.locator.forward``
    (same outputs; the DLT stays in torch). Returns a description."""
    import copy

    import torch
    from bench_model import (
        LocatorCore,
        PoseCore,
        camera_inputs,
        export_onnx,
        locator_input,
        ort_session,
        pick,
        pose_inputs,
        quantize_int8,
    )

    from stereo_pose3d.models.heatmaps import decode_heatmaps, heatmap_to_crop

    workdir = Path(tempfile.mkdtemp(prefix="bench_node_ort_"))
    pose = copy.deepcopy(est.pose_net).to(memory_format=torch.contiguous_format).eval()
    locator = copy.deepcopy(est.locator).to(memory_format=torch.contiguous_format).eval()
    W, H = pose.input_size
    lw, lh = locator.config["input_size"]
    settings = est.settings
    samples = pick(calib_root, calib_count, offset=7) if calib_root.exists() else []
    pose_calib, loc_calib = [], []
    for smp in samples:
        im, Pc = pose_inputs(pose, smp, settings["crop_scale"], settings["min_box_fraction"])
        pose_calib.append((im.flatten(0, 1), *camera_inputs(pose, Pc)))
        loc_calib.append((locator_input(locator, smp)[0],))
    example_P = torch.tensor([[200.0, 0, W / 2, 0], [0, 200, H / 2, 0], [0, 0, 1, 0]])
    example_P = example_P.repeat(1, 2, 1, 1)
    example_P[0, 1, 0, 3] = -20.0
    pose_example = (torch.randn(2, 3, H, W), *camera_inputs(pose, example_P))
    sessions = []
    for name, core, example, calib in (
        ("pose", PoseCore(pose), pose_example, pose_calib),
        ("locator", LocatorCore(locator), (torch.randn(2, 3, lh, lw),), loc_calib),
    ):
        path = workdir / f"{name}.onnx"
        kept = export_onnx(core, example, path)
        if backend == "ort_int8" or (backend == "ort_int8_locator" and name == "locator"):
            feeds = [
                {k: t.numpy() for k, t in zip(("x", "P_c", "P_pinv"), c, strict=False) if k in kept}
                for c in calib
            ]
            q = workdir / f"{name}_int8.onnx"
            quantize_int8(path, q, feeds)
            path = q
        sessions.append((ort_session(path, torch.get_num_threads()), kept))
    (pose_sess, pose_kept), (loc_sess, _) = sessions
    net = est.pose_net

    def forward_2d(
        images: torch.Tensor, P: torch.Tensor, flip_test: bool = False, decoding: str = "global"
    ) -> dict[str, torch.Tensor]:
        if flip_test:
            raise NotImplementedError("the ONNX backends do not run the flip test")
        B, V = images.shape[:2]
        tensors = (images.flatten(0, 1).contiguous(), *camera_inputs(net, P))
        feed = {
            k: t.numpy() for k, t in zip(("x", "P_c", "P_pinv"), tensors, strict=True)
            if k in pose_kept
        }  # fmt: skip
        heatmaps = torch.from_numpy(pose_sess.run(None, feed)[0]).unflatten(0, (B, V))
        uv, confidence = decode_heatmaps(heatmaps, net.beta, decoding)
        stride = W / heatmaps.shape[-1]
        return {
            "heatmaps": heatmaps,
            "joints_2d": heatmap_to_crop(uv, stride),
            "confidence": confidence,
        }

    def locator_forward(x: torch.Tensor) -> dict[str, torch.Tensor]:
        outs = loc_sess.run(None, {"x": x.contiguous().numpy()})
        return dict(zip(("centre", "offset", "size"), map(torch.from_numpy, outs), strict=True))

    net.forward_2d = forward_2d
    est.locator.forward = locator_forward
    if backend.startswith("ort_int8"):
        return f"{backend} (calibrated on {len(samples)} pairs)"
    return backend


def run_instrumented_node(timing_file: str, ros_args: list[str]) -> int:
    """``stereo_pose3d.node.main`` with wall-clock hooks writing one JSON line per pair.

    Environment: ``BENCH_NODE_BACKEND`` (``torch``, ``ort``, ``ort_int8``, ...: see
    :func:`accelerate`), ``BENCH_NODE_SETTINGS`` (JSON estimator settings, e.g. tracking),
    ``BENCH_NODE_CALIB`` (calibration dataset for int8)."""
    from stereo_pose3d import estimator as est_mod
    from stereo_pose3d import node as node_mod
    from stereo_pose3d import pipeline, ros_io

    backend = os.environ.get("BENCH_NODE_BACKEND", "torch")
    extra = json.loads(os.environ.get("BENCH_NODE_SETTINGS", "{}"))
    calib_root = Path(os.environ.get("BENCH_NODE_CALIB", str(REPO / "data" / "synth_train")))
    orig_from_checkpoint = est_mod.StereoPoseEstimator.from_checkpoint.__func__

    def from_checkpoint(cls, path, device="auto", autocast=True, **settings):
        est = orig_from_checkpoint(cls, path, device, autocast, **{**settings, **extra})
        if backend != "torch":
            desc = accelerate(est, backend, calib_root)
            print(f"[bench_node] estimator backend: {desc}", flush=True)
        return est

    est_mod.StereoPoseEstimator.from_checkpoint = classmethod(from_checkpoint)

    out = open(timing_file, "a", buffering=1)  # noqa: SIM115 - lives as long as the process
    lock = threading.Lock()
    arrivals: dict[int, int] = {}
    current: dict[str, Any] = {}

    orig_on_pair = node_mod.StereoPose3DNode._on_pair
    orig_process = pipeline.PoseProcessor.process
    orig_estimate = est_mod.StereoPoseEstimator.estimate
    orig_publish = node_mod.StereoPose3DNode._publish

    def on_pair(self, left, right):
        with lock:
            arrivals[ros_io.stamp_to_ns(left.header.stamp)] = time.time_ns()
            while len(arrivals) > 200:
                arrivals.pop(next(iter(arrivals)))
        return orig_on_pair(self, left, right)

    def process(self, left_msg, right_msg, left_info, right_info):
        current.clear()
        current["take"] = time.time_ns()
        result = orig_process(self, left_msg, right_msg, left_info, right_info)
        current["pipeline"] = dict(result.timings)
        return result

    def estimate(self, *args, **kwargs):
        pose = orig_estimate(self, *args, **kwargs)
        current["estimator"] = dict(pose.timings)
        current["person"] = bool(pose.detected)
        return pose

    def publish(self, result, started):
        orig_publish(self, result, started)
        with lock:
            arrival = arrivals.get(result.stamp_ns)
        line = {
            "stamp": result.stamp_ns,
            "arrival": arrival,
            "published": time.time_ns(),
            **current,
        }
        out.write(json.dumps(line) + "\n")

    node_mod.StereoPose3DNode._on_pair = on_pair
    pipeline.PoseProcessor.process = process
    est_mod.StereoPoseEstimator.estimate = estimate
    node_mod.StereoPose3DNode._publish = publish
    return node_mod.main(["stereo_pose3d_node", *ros_args])


# ----------------------------------------------------------------------------------------------
# camera process
# ----------------------------------------------------------------------------------------------


def run_camera(args: argparse.Namespace) -> int:
    """Publish stereo pairs + camera_info at ``args.rate`` Hz for ``args.seconds`` seconds."""
    from stereo_pose3d import dds

    dds.configure()
    import rclpy
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import CameraInfo, Image

    from stereo_pose3d import ros_io

    frames = load_frames(Path(args.val), args.frames, args.width, args.height)
    rclpy.init()
    node = rclpy.create_node("bench_camera")
    pubs = [
        node.create_publisher(Image, f"{NS}/left/image_rect", qos_profile_sensor_data),
        node.create_publisher(Image, f"{NS}/right/image_rect", qos_profile_sensor_data),
    ]
    info_pubs = [
        node.create_publisher(CameraInfo, f"{NS}/left/camera_info", qos_profile_sensor_data),
        node.create_publisher(CameraInfo, f"{NS}/right/camera_info", qos_profile_sensor_data),
    ]
    msgs = []
    for left, right, P_left, P_right in frames:
        h, w = left.shape[:2]
        msgs.append(
            (
                ros_io.rgb_to_image(left),
                ros_io.rgb_to_image(right),
                ros_io.camera_info(P_left, w, h),
                ros_io.camera_info(P_right, w, h),
            )
        )
    deadline = time.monotonic() + 30.0
    while time.monotonic() < deadline and not all(
        p.get_subscription_count() > 0 for p in (*pubs, *info_pubs)
    ):
        time.sleep(0.05)
    print("READY", flush=True)
    sent = 0
    t_next = time.perf_counter()
    t_end = t_next + args.seconds
    while time.perf_counter() < t_end:
        left, right, info_l, info_r = msgs[sent % len(msgs)]
        stamp = time.time_ns()
        for msg, frame in ((left, LEFT_FRAME), (info_l, LEFT_FRAME),
                           (right, "stereo_right_optical_frame"),
                           (info_r, "stereo_right_optical_frame")):  # fmt: skip
            msg.header = ros_io.make_header(stamp, frame)
        info_pubs[0].publish(info_l)
        info_pubs[1].publish(info_r)
        pubs[0].publish(left)
        pubs[1].publish(right)
        sent += 1
        t_next += 1.0 / args.rate
        delay = t_next - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
    print(f"SENT {sent}", flush=True)
    node.destroy_node()
    rclpy.try_shutdown()
    return 0


def load_frames(val: Path, count: int, width: int, height: int) -> list[tuple[np.ndarray, ...]]:
    """``count`` consecutive validation frames (one sequence: a moving person) resized to
    ``width`` x ``height`` (P scaled to match); a textured synthetic pair if there is no data."""
    import cv2

    out = []
    if val.exists():
        from training.data.stereo_dataset import StereoDataset

        ds = StereoDataset(val)
        for i in range(min(count, len(ds))):
            s = ds[i]
            sx, sy = width / s["left"].shape[1], height / s["left"].shape[0]
            S = np.diag([sx, sy, 1.0])
            left, right = s["left"], s["right"]
            if (sx, sy) != (1.0, 1.0):
                left = cv2.resize(left, (width, height), interpolation=cv2.INTER_AREA)
                right = cv2.resize(right, (width, height), interpolation=cv2.INTER_AREA)
            out.append((left, right, S @ s["P_left"], S @ s["P_right"]))
    if not out:
        from bench_inference import make_pair

        out.append(make_pair(width, height))
    return out


# ----------------------------------------------------------------------------------------------
# orchestration and measurement (this process: the subscriber)
# ----------------------------------------------------------------------------------------------


class Subscriber:
    """Markers and diagnostics receiver on its own context and domain, spun in a thread."""

    def __init__(self, domain: int) -> None:
        import rclpy
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.executors import SingleThreadedExecutor
        from visualization_msgs.msg import Marker, MarkerArray

        from stereo_pose3d import ros_io

        self.context = rclpy.Context()
        rclpy.init(context=self.context, domain_id=domain)
        self.node = rclpy.create_node("bench_subscriber", context=self.context)
        self.lock = threading.Lock()
        self.markers: list[tuple[int, int, bool]] = []  # (receive ns, stamp ns, person)
        self.diagnostics: list[dict[str, str]] = []

        def on_markers(msg: Any) -> None:
            t = time.time_ns()
            person = bool(msg.markers) and msg.markers[0].action != Marker.DELETEALL
            stamp = ros_io.stamp_to_ns(msg.markers[0].header.stamp) if msg.markers else 0
            with self.lock:
                self.markers.append((t, stamp, person))

        def on_diag(msg: Any) -> None:
            values = {kv.key: kv.value for s in msg.status for kv in s.values}
            with self.lock:
                self.diagnostics.append(values)

        self.node.create_subscription(MarkerArray, f"{NS}/pose3d/markers", on_markers, 10)
        self.node.create_subscription(DiagnosticArray, "/diagnostics", on_diag, 10)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.thread = threading.Thread(target=self._spin, daemon=True)
        self.thread.start()

    def _spin(self) -> None:
        with contextlib.suppress(Exception):  # ends when the context shuts down
            self.executor.spin()

    def close(self) -> None:
        self.executor.shutdown(timeout_sec=2.0)
        self.node.destroy_node()
        self.context.try_shutdown()
        self.thread.join(2.0)


def start(cmd: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    handle = open(log, "wb")  # noqa: SIM115 - closed in stop()
    proc = subprocess.Popen(cmd, env=env, stdout=handle, stderr=subprocess.STDOUT)
    proc.log_handle = handle  # type: ignore[attr-defined]
    return proc


def stop(proc: subprocess.Popen) -> int | None:
    """SIGINT, 15 s, kill (:func:`stereo_pose3d.processes.stop_process`); close the log."""
    from stereo_pose3d.processes import stop_process

    code = stop_process(proc, timeout=15)
    proc.log_handle.close()  # type: ignore[attr-defined]
    return code


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a running process (Linux /proc), seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def med(values: list[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def summarise_run(
    markers: list[tuple[int, int, bool]], timings: list[dict], t0: int, t1: int, sent: int
) -> dict[str, Any]:
    """Figures of one run over the steady window [t0, t1) (wall ns, by image stamp)."""
    window = [(t, s, p) for t, s, p in markers if t0 <= s < t1]
    seconds = (t1 - t0) / 1e9
    rows = [r for r in timings if t0 <= r["stamp"] < t1 and "pipeline" in r]
    if rows:  # the estimator found a person (hooked node); else: markers were drawn
        detected = {r["stamp"] for r in rows if r.get("person")}
        window = [(t, s, s in detected) for t, s, _ in window]
    lat = [(t - s) / 1e6 for t, s, _ in window]
    lat_person = [(t - s) / 1e6 for t, s, p in window if p]
    recv = {s: t for t, s, _ in window}

    def col(fn) -> list[float]:
        vals = []
        for r in rows:
            try:
                v = fn(r)
            except (KeyError, TypeError):
                continue
            if v is not None and np.isfinite(v):
                vals.append(v)
        return vals

    ms = 1e3
    split = {
        "transport_sync_ms": col(lambda r: (r["arrival"] - r["stamp"]) / 1e6),
        "wait_for_worker_ms": col(lambda r: (r["take"] - r["arrival"]) / 1e6),
        "convert_ms": col(lambda r: r["pipeline"]["convert"] * ms),
        "preprocess_ms": col(lambda r: r["estimator"]["preprocess"] * ms),
        "locator_ms": col(lambda r: r["estimator"]["locator"] * ms),
        "network_ms": col(lambda r: r["estimator"]["network"] * ms),
        "triangulation_ms": col(lambda r: r["estimator"]["triangulation"] * ms),
        "outputs_ms": col(lambda r: r["pipeline"]["outputs"] * ms),
        "publish_ms": col(
            lambda r: (r["published"] - r["take"]) / 1e6 - sum(r["pipeline"].values()) * ms
        ),
        "delivery_ms": col(lambda r: (recv[r["stamp"]] - r["published"]) / 1e6),
        "processing_ms": col(lambda r: (r["published"] - r["take"]) / 1e6),
    }
    lat_by_stamp = {s: (t - s) / 1e6 for t, s, _ in window}
    own, own_frac, incl_wait, own_person, inside = [], [], [], [], []
    for r in rows:
        try:
            total = lat_by_stamp[r["stamp"]]
            e = r["estimator"]
            compute = (e["locator"] + e["network"] + e["triangulation"]) * ms
            wait = (r["take"] - r["arrival"]) / 1e6
        except (KeyError, TypeError):
            continue
        internal = (
            r["pipeline"]["convert"] + e["preprocess"] + r["pipeline"]["outputs"]
        ) * ms + max(0.0, (r["published"] - r["take"]) / 1e6 - sum(r["pipeline"].values()) * ms)
        inside.append(internal / total)
        own.append(total - wait - compute)
        own_frac.append((total - wait - compute) / total)
        incl_wait.append((total - compute) / total)
        if r.get("person"):
            own_person.append((total - wait - compute) / total)
    return {
        "sent": sent,
        "window_s": seconds,
        "processed": len(window),
        "with_person": int(sum(p for _, _, p in window)),
        "processed_per_s": len(window) / seconds,
        "latency_ms": {"median": med(lat), "p95": pct(lat, 95), "max": max(lat, default=None)},
        "latency_person_ms": {"median": med(lat_person), "p95": pct(lat_person, 95)},
        "own_overhead_fraction_person": med(own_person),
        "split_median_ms": {k: med(v) for k, v in split.items()},
        "own_overhead_ms": med(own),
        "own_overhead_fraction": med(own_frac),
        "own_overhead_fraction_incl_wait": med(incl_wait),
        "node_internal_fraction": med(inside),
    }


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_node"]:
        return run_instrumented_node(argv[1], argv[2:])
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", type=Path, help="system checkpoint (default: shipped)")
    parser.add_argument("--device", default="cpu", help="node device: cpu | cuda[:N] | auto")
    parser.add_argument("--rate", type=float, default=30.0, help="camera rate, Hz")
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--frames", type=int, default=30, help="distinct validation frames")
    parser.add_argument("--duration", type=float, default=20.0, help="measured seconds per run")
    parser.add_argument("--warmup", type=float, default=5.0, help="discarded seconds per run")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--param", action="append", default=[], help="extra node name:=value")
    parser.add_argument("--plain", action="store_true", help="unmodified console script")
    parser.add_argument(
        "--backend",
        default="torch",
        choices=("torch", "ort", "ort_int8", "ort_int8_locator"),
        help="estimator networks in torch (as shipped) or ONNX Runtime float32 / int8 / float32 "
        "pose network + int8 locator (hooked in, see accelerate)",
    )
    parser.add_argument(
        "--estimator-setting",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="estimator setting for the hooked node, e.g. tracking=true",
    )
    parser.add_argument("--val", type=Path, default=REPO / "data" / "synth_val")
    parser.add_argument("--domain", type=int, default=0, help="ROS domain (0: from the pid)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "node.json")
    # internal: the camera process
    parser.add_argument("--camera", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--seconds", type=float, default=0.0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.camera:
        return run_camera(args)

    from stereo_pose3d import dds

    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    dds.configure()
    domain = args.domain or 1 + (os.getpid() * 13) % 101
    env = dds.process_env(domain, REPO)
    if (args.backend != "torch" or args.estimator_setting) and args.plain:
        parser.error("--backend and --estimator-setting need the hooked node (no --plain)")
    import yaml

    env["BENCH_NODE_BACKEND"] = args.backend
    env["BENCH_NODE_SETTINGS"] = json.dumps(
        {k: yaml.safe_load(v) for k, _, v in (x.partition("=") for x in args.estimator_setting)}
    )
    load_before = os.getloadavg()
    from bench_model import machine_record, training_running, write_system_file

    busy = training_running()
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        weights, source = write_system_file(args.weights, tmp)
        timing_file = tmp / "timings.jsonl"
        timing_file.touch()
        ros_args = [
            "--ros-args", "--params-file", str(REPO / "config" / "stereo_pose3d.yaml"),
            "-p", f"weights:={weights}", "-p", f"device:={args.device}",
            "-p", "diagnostics_period:=1.0", "-r", f"__ns:={NS}",
        ]  # fmt: skip
        for p in args.param:
            ros_args += ["-p", p]
        if args.plain:
            node_cmd = [str(Path(sys.executable).parent / "stereo_pose3d_node"), *ros_args]
        else:
            node_cmd = [sys.executable, str(Path(__file__).resolve()), "_node",
                        str(timing_file), *ros_args]  # fmt: skip
        sub = Subscriber(domain)
        node = start(node_cmd, env, tmp / "node.log")
        try:
            for k in range(args.repeats):
                cam_cmd = [
                    sys.executable, str(Path(__file__).resolve()), "--camera",
                    "--seconds", str(args.warmup + args.duration + 0.5),
                    "--rate", str(args.rate), "--width", str(args.width),
                    "--height", str(args.height), "--frames", str(args.frames),
                    "--val", str(args.val),
                ]  # fmt: skip
                log = tmp / f"camera{k}.log"
                children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
                cam = start(cam_cmd, env, log)
                deadline = time.monotonic() + 120
                while "READY" not in log.read_text() and time.monotonic() < deadline:
                    if cam.poll() is not None or node.poll() is not None:
                        break
                    time.sleep(0.1)
                t_start = time.time_ns()
                node_cpu0, wall0 = cpu_seconds(node.pid), time.monotonic()
                cam.wait(args.warmup + args.duration + 150)
                node_cpu = (cpu_seconds(node.pid) - node_cpu0) / (time.monotonic() - wall0)
                stop(cam)
                ru = resource.getrusage(resource.RUSAGE_CHILDREN)
                cam_cpu = (
                    ru.ru_utime + ru.ru_stime - children_before.ru_utime - children_before.ru_stime
                ) / (time.monotonic() - wall0)
                time.sleep(1.5)  # last outputs
                text = log.read_text()
                sent = int(text.split("SENT")[-1].split()[0]) if "SENT" in text else 0
                t0 = t_start + int(args.warmup * 1e9)
                t1 = t0 + int(args.duration * 1e9)
                timings = [json.loads(x) for x in timing_file.read_text().splitlines() if x]
                with sub.lock:
                    markers = list(sub.markers)
                run = summarise_run(markers, timings, t0, t1, sent)
                run["input_pairs_per_s"] = sent / (args.warmup + args.duration + 0.5)
                run["cpu_cores_used"] = {"node": node_cpu, "camera": cam_cpu}
                with sub.lock:
                    run["diagnostics"] = sub.diagnostics[-1] if sub.diagnostics else {}
                runs.append(run)
                print(
                    f"run {k}: {run['processed']} processed ({run['with_person']} with a person) "
                    f"in {run['window_s']:.0f} s, latency median "
                    f"{run['latency_ms']['median']:.1f} ms p95 {run['latency_ms']['p95']:.1f}",
                    file=sys.stderr,
                )
        finally:
            code = stop(node)
            sub.close()
            node_log = (tmp / "node.log").read_text(errors="replace")
        if code not in (0, None) or "Traceback" in node_log:
            print(node_log[-3000:], file=sys.stderr)
    report = {
        "benchmark": "stereo_pose3d_node end to end over DDS (3 processes)",
        "weights": source,
        "device": args.device,
        "mode": "plain console script" if args.plain else "node main() with timing hooks",
        "backend": args.backend,
        "estimator_settings": args.estimator_setting,
        "input": f"{args.width}x{args.height} rgb8 stereo + camera_info at {args.rate} Hz",
        **machine_record(load_before, busy),
        "args": {k: str(v) for k, v in vars(args).items()},
        "runs": runs,
        "median": aggregate(runs),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(table(report))
    print(f"written {args.out}")
    return 0


def aggregate(runs: list[dict[str, Any]]) -> dict[str, Any]:
    if not runs:
        return {}
    out: dict[str, Any] = {
        "latency_median_ms": med([r["latency_ms"]["median"] for r in runs]),
        "latency_p95_ms": med([r["latency_ms"]["p95"] for r in runs]),
        "latency_person_median_ms": med([r["latency_person_ms"]["median"] for r in runs]),
        "latency_person_p95_ms": med([r["latency_person_ms"]["p95"] for r in runs]),
        "own_overhead_fraction_person": med([r["own_overhead_fraction_person"] for r in runs]),
        "processed_per_s": med([r["processed_per_s"] for r in runs]),
        "input_pairs_per_s": med([r["input_pairs_per_s"] for r in runs]),
        "person_fraction": med([r["with_person"] / max(r["processed"], 1) for r in runs]),
        "own_overhead_ms": med([r["own_overhead_ms"] for r in runs]),
        "own_overhead_fraction": med([r["own_overhead_fraction"] for r in runs]),
        "own_overhead_fraction_incl_wait": med(
            [r["own_overhead_fraction_incl_wait"] for r in runs]
        ),
        "node_internal_fraction": med([r["node_internal_fraction"] for r in runs]),
        "cpu_cores_node": med([r["cpu_cores_used"]["node"] for r in runs]),
        "cpu_cores_camera": med([r["cpu_cores_used"]["camera"] for r in runs]),
    }
    out["split_median_ms"] = {
        k: med([r["split_median_ms"][k] for r in runs]) for k in runs[0]["split_median_ms"]
    }
    return out


def table(report: dict[str, Any]) -> str:
    m = report["median"]
    if not m:
        return "no runs"
    s = m["split_median_ms"]
    la, lb = report["load_average_before"], report["load_average_after"]
    lines = [
        f"{report['input']}, device {report['device']}, backend {report['backend']} "
        f"{' '.join(report['estimator_settings'])}, weights {report['weights']}, "
        f"{len(report['runs'])} runs (median)",
        "",
        "| latency median / p95 (ms) | frames with a person: median / p95 (ms) "
        "| processed pairs/s | input pairs/s | with a person "
        "| node's own overhead (ms, % of latency; % with a person; % inside the node, no DDS) |",
        "|---|---|---|---|---|---|",
        f"| {m['latency_median_ms']:.1f} / {m['latency_p95_ms']:.1f} "
        f"| {m['latency_person_median_ms']:.1f} / {m['latency_person_p95_ms']:.1f} "
        f"| {m['processed_per_s']:.1f} | {m['input_pairs_per_s']:.1f} "
        f"| {100 * m['person_fraction']:.0f}% "
        f"| {m['own_overhead_ms']:.1f} ({100 * m['own_overhead_fraction']:.0f}%; "
        f"{100 * m['own_overhead_fraction_person']:.0f}%; inside the node "
        f"{100 * m['node_internal_fraction']:.0f}%) |",
        "",
        "| stage (median ms) | " + " | ".join(k.removesuffix("_ms") for k in s) + " |",
        "|---|" + "---|" * len(s),
        "| | " + " | ".join(f"{v:.1f}" for v in s.values()) + " |",
        "",
        f"load average (1/5/15 min) before {la[0]:.2f}/{la[1]:.2f}/{la[2]:.2f}, after "
        f"{lb[0]:.2f}/{lb[1]:.2f}/{lb[2]:.2f} on {report['cpu_count']} cores; "
        f"training running: {report['training_running']}; CPU cores used: node "
        f"{m['cpu_cores_node']:.2f}, camera publisher {m['cpu_cores_camera']:.2f}",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
