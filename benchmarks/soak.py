"""Soak test of the live node: synthetic stereo at 30 Hz for minutes, memory, queues, latency.

    .venv/bin/python benchmarks/soak.py --minutes 10                  # the full soak
    .venv/bin/python benchmarks/soak.py --minutes 3 --model tiny      # shorter, tiny network
    .venv/bin/python benchmarks/soak.py --minutes 10 --weights stereo_pose3d/weights/X.pt

Starts ``stereo_pose3d_node`` as its own process (console script, the shipped YAML, the package's
Fast DDS profile, a private ROS domain) and publishes from this process, like a camera driver
(sensor-data QoS), rectified ``--size`` rgb8 stereo pairs of a moving stick figure with their
camera_info at ``--rate`` Hz. It records

* the node's resident memory (``/proc/PID/status`` VmRSS), threads and open file descriptors
  every ``--sample`` seconds; growth is measured from the end of the ``--warmup``;
* the node's internal queues from ``/diagnostics``: ``pending`` (the worker's one-slot mailbox)
  and ``sync_queued`` (messages held by the synchronizer, at most 2 x queue_size);
* end-to-end latency (this process publishing a pair -> receiving its ``pose3d/joints``, same
  clock), p50/p95/p99/max overall and per sample window, and the node's own processing time;
* frames: pairs sent, received by the node, synchronized, processed, dropped (a newer pair
  replaced a waiting one: the network is slower than the camera), failed.

Weights: ``--weights`` FILE, else the shipped ``stereo_pose3d/weights/cdrnet_synth.pt`` when it
exists, else (``--model full``) a randomly initialised system of the shipped size -- CDRNet
ResNet-18 at 256x256 crops + the default locator, locator threshold 0 so every frame runs the
whole pipeline; the compute does not depend on the weights -- or (``--model tiny``) the test
suite's tiny CDRNet.

Writes ``--out`` (JSON, every sample) and ``--md`` (Markdown tables); exits 1 when a check fails:
RSS growth after warm-up >= ``--max-growth-mb`` (20), a queue above its bound, latency p99 above
``--max-p99-s`` (default 1 s, or 5 x the node's processing p95 if larger), any failed frame, the
node not exiting cleanly.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "test"))

from test_node_harness import (  # noqa: E402  (sets the DDS profile for this process)
    RosPeer,
    diagnostics_values,
    rss_mb,
    start_node,
    stop_process,
    unique_domain,
    wait_for,
)

from stereo_pose3d import ros_io  # noqa: E402

NS = "/stereo"
DEFAULT_WEIGHTS = REPO / "stereo_pose3d" / "weights" / "cdrnet_synth.pt"


def make_weights(model: str, folder: Path) -> Path:
    """A system checkpoint with random weights: ``full`` (the shipped architecture and size) or
    ``tiny`` (the tests' fixture network)."""
    import torch

    from stereo_pose3d.checkpoint import save_checkpoint
    from stereo_pose3d.models import (
        build_model,
        locator_config,
        pose_config,
        system_config,
        tiny_system_config,
    )

    torch.manual_seed(0)
    if model == "tiny":
        config = tiny_system_config(score_threshold=0.0)
    else:
        config = system_config(
            pose_config("cdrnet", "resnet18", (256, 256)), locator_config(), score_threshold=0.0
        )
    path = folder / f"soak_{model}_random.pt"
    save_checkpoint(path, build_model(config, pretrained=False).eval(), config, {"note": "soak"})
    return path


def proc_stats(pid: int) -> dict[str, float]:
    """RSS (MB), threads and open file descriptors of a process."""
    threads = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            threads = int(line.split()[1])
    return {"rss_mb": rss_mb(pid), "threads": threads, "fds": len(os.listdir(f"/proc/{pid}/fd"))}


def percentiles(values: list[float] | np.ndarray) -> dict[str, float | None]:
    """p50/p95/p99/max of ``values`` in milliseconds (inputs in seconds)."""
    a = np.asarray(values, dtype=np.float64) * 1e3
    if a.size == 0:
        return {"p50": None, "p95": None, "p99": None, "max": None, "n": 0}
    return {
        "p50": float(np.percentile(a, 50)),
        "p95": float(np.percentile(a, 95)),
        "p99": float(np.percentile(a, 99)),
        "max": float(a.max()),
        "n": int(a.size),
    }


class StereoDriver:
    """Publishes pre-rendered stereo pairs + camera_info at a fixed rate from a thread."""

    def __init__(self, peer: RosPeer, size: tuple[int, int], rate: float, frames: int = 30):
        from rclpy.qos import qos_profile_sensor_data
        from sensor_msgs.msg import CameraInfo, Image

        sys.path.insert(0, str(REPO / "test"))
        from conftest import render_stereo_pair

        node, qos = peer.node, qos_profile_sensor_data
        self.pubs = {
            "left": node.create_publisher(Image, f"{NS}/left/image_rect", qos),
            "right": node.create_publisher(Image, f"{NS}/right/image_rect", qos),
            "left_info": node.create_publisher(CameraInfo, f"{NS}/left/camera_info", qos),
            "right_info": node.create_publisher(CameraInfo, f"{NS}/right/camera_info", qos),
        }
        w, h = size
        self.frames = []
        for i in range(frames):  # a person walking to and fro, 3 to 4 m away
            pair = render_stereo_pair(
                width=w, height=h, f=0.8 * w,
                position=(0.6 * np.sin(2 * np.pi * i / frames), 0.3, 3.5 + 0.5 * np.cos(
                    2 * np.pi * i / frames)),
            )  # fmt: skip
            self.frames.append((ros_io.rgb_to_image(pair.left), ros_io.rgb_to_image(pair.right)))
        self.infos = (ros_io.camera_info(pair.P_left, w, h), ros_io.camera_info(pair.P_right, w, h))
        self.period = 1.0 / rate
        self.sent: dict[int, float] = {}  # stamp -> perf_counter at publication
        self.lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.late = 0  # publications more than one period behind schedule

    def publish_infos(self) -> None:
        """Both camera_info messages once (a camera driver sends them with every image)."""
        for side in ("left", "right"):
            info = self.infos[side == "right"]
            info.header = ros_io.make_header(time.time_ns(), f"stereo_{side}_optical_frame")
            self.pubs[f"{side}_info"].publish(info)

    def wait_matched(self, timeout: float) -> bool:
        return wait_for(
            lambda: all(p.get_subscription_count() for p in self.pubs.values()), timeout
        )

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        i, next_t = 0, time.perf_counter()
        while not self._stop.is_set():
            left, right = self.frames[i % len(self.frames)]
            stamp = time.time_ns()
            for side, msg in (("left", left), ("right", right)):
                header = ros_io.make_header(stamp, f"stereo_{side}_optical_frame")
                info = self.infos[side == "right"]
                info.header = header
                self.pubs[f"{side}_info"].publish(info)
                msg.header = header
                self.pubs[side].publish(msg)
            with self.lock:
                self.sent[stamp] = time.perf_counter()
            i += 1
            next_t += self.period
            delay = next_t - time.perf_counter()
            if delay < -self.period:
                self.late += 1
                next_t = time.perf_counter()  # do not burst to catch up
            self._stop.wait(max(0.0, delay))

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5.0)


def run_soak(
    seconds: float,
    weights: Path,
    rate: float = 30.0,
    size: tuple[int, int] = (640, 480),
    warmup_s: float = 30.0,
    sample_s: float = 5.0,
    device: str = "cpu",
    queue_size: int = 10,
    log_dir: Path | None = None,
    progress: Callable[[str], None] | None = print,
) -> dict[str, Any]:
    """Run the soak; returns the results (see the module docstring), without judging them."""
    from diagnostic_msgs.msg import DiagnosticArray
    from geometry_msgs.msg import PoseArray

    log_dir = Path(log_dir or tempfile.mkdtemp(prefix="soak_"))
    domain = unique_domain()
    peer = RosPeer(domain, "soak_driver")
    received: list[tuple[float, int]] = []  # (perf_counter, stamp) of pose3d/joints
    lock = threading.Lock()

    def on_joints(msg: Any) -> None:
        t = time.perf_counter()
        with lock:
            received.append((t, ros_io.stamp_to_ns(msg.header.stamp)))

    peer.node.create_subscription(PoseArray, f"{NS}/pose3d/joints", on_joints, 10)
    peer.subscribe(DiagnosticArray, "/diagnostics")
    driver = StereoDriver(peer, size, rate)
    log = log_dir / "node.log"
    proc = start_node(domain, log, weights, f"device:={device}", f"queue_size:={queue_size}",
                      "diagnostics_period:=0.5")  # fmt: skip
    samples: list[dict[str, Any]] = []
    result: dict[str, Any] = {}

    def diag() -> dict[str, str]:
        msgs = peer.messages("/diagnostics")
        return diagnostics_values(msgs[-1]) if msgs else {}

    def latencies(since: float = -np.inf) -> list[float]:
        with lock, driver.lock:
            return [t - driver.sent[s] for t, s in received if s in driver.sent and t >= since]

    try:
        if not driver.wait_matched(60):
            raise RuntimeError("the node did not subscribe:\n" + log.read_text()[-3000:])
        # The publisher can see the node's readers before the node's side of discovery is
        # complete, so the very first messages may be lost (seen: the first pair rejected for
        # "no camera_info" in a CI run). Send camera_info alone until the node has one per side,
        # so the soak measures steady state, not discovery.
        primed = lambda: all(  # noqa: E731
            int(diag().get(f"info_{side}", 0)) >= 1 for side in ("left", "right")
        )
        deadline = time.perf_counter() + 30.0
        while not primed():
            if time.perf_counter() > deadline:
                raise RuntimeError("the node got no camera_info:\n" + log.read_text()[-3000:])
            driver.publish_infos()
            wait_for(primed, 1.0)
        t0 = time.perf_counter()
        driver.start()
        window_start = t0
        while True:
            now = time.perf_counter()
            elapsed = now - t0
            target = (len(samples) + 1) * sample_s
            if elapsed >= seconds:
                break
            time.sleep(max(0.0, min(target, seconds) - elapsed))
            if proc.poll() is not None:
                raise RuntimeError("the node exited:\n" + log.read_text()[-3000:])
            d = diag()
            now = time.perf_counter()
            lat = percentiles(latencies(window_start))
            window_start = now
            with driver.lock:
                sent = len(driver.sent)
            sample = {
                "t_s": round(now - t0, 2),
                **proc_stats(proc.pid),
                "sent": sent,
                "outputs": len(received),
                **{
                    k: int(d[k])
                    for k in (
                        "received_left",
                        "received_right",
                        "synchronized",
                        "processed",
                        "dropped",
                        "failed",
                        "pending",
                        "sync_queued",
                    )
                    if k in d
                },
                "processing_ms_p95": float(d.get("processing_ms.p95", "nan")),
                "latency_window_ms": lat,
            }
            samples.append(sample)
            if progress:
                p99 = lat["p99"]
                progress(
                    f"t={sample['t_s']:7.1f}s rss={sample['rss_mb']:7.1f}MB "
                    f"sent={sent} processed={sample.get('processed')} "
                    f"dropped={sample.get('dropped')} failed={sample.get('failed')} "
                    f"pending={sample.get('pending')} sync_queued={sample.get('sync_queued')} "
                    f"p99={'-' if p99 is None else f'{p99:.0f}'}ms"
                )
        driver.stop()
        t_end = time.perf_counter()
        # let the last pair through, then a fresh diagnostics message
        wait_for(lambda: int(diag().get("pending", 1)) == 0, 10)
        n = len(peer.messages("/diagnostics"))
        wait_for(lambda: len(peer.messages("/diagnostics")) > n + 1, 5)
        final = diag()
        final_proc = proc_stats(proc.pid)
    finally:
        driver.stop()
        code = stop_process(proc)
        peer.close()
    log_text = log.read_text()
    warm = [s for s in samples if s["t_s"] >= warmup_s] or samples[-1:]
    rss_warm = warm[0]["rss_mb"]
    all_lat = latencies()
    post_warm = latencies(t0 + warmup_s)
    slope = (
        float(np.polyfit([s["t_s"] / 60 for s in warm], [s["rss_mb"] for s in warm], 1)[0])
        if len(warm) >= 3
        else None
    )
    thirds = np.array_split(np.asarray(post_warm), 3) if len(post_warm) >= 3 else []
    result = {
        "benchmark": "soak: live node, synthetic stereo",
        "duration_s": round(t_end - t0, 1),
        "rate_hz": rate,
        "size": list(size),
        "weights": str(weights),
        "device": device,
        "queue_size": queue_size,
        "warmup_s": warmup_s,
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "load_average": list(os.getloadavg()),
        "frames": {
            "sent": len(driver.sent),
            "publisher_late": driver.late,
            "received_left": int(final.get("received_left", -1)),
            "received_right": int(final.get("received_right", -1)),
            "synchronized": int(final.get("synchronized", -1)),
            "processed": int(final.get("processed", -1)),
            "dropped": int(final.get("dropped", -1)),
            "failed": int(final.get("failed", -1)),
            "no_person": int(final.get("no_person", -1)),
            "outputs_received": len(received),
            "rejected": {k: int(v) for k, v in final.items() if k.startswith("rejected.")},
        },
        "memory": {
            "rss_start_mb": samples[0]["rss_mb"] if samples else None,
            "rss_after_warmup_mb": rss_warm,
            "rss_end_mb": final_proc["rss_mb"],
            "rss_max_after_warmup_mb": max(s["rss_mb"] for s in warm),
            "growth_after_warmup_mb": final_proc["rss_mb"] - rss_warm,
            "slope_after_warmup_mb_per_min": slope,
            "threads_after_warmup": warm[0]["threads"],
            "threads_end": final_proc["threads"],
            "fds_after_warmup": warm[0]["fds"],
            "fds_end": final_proc["fds"],
        },
        "queues": {
            "pending_max": max(s.get("pending", 0) for s in samples),
            "sync_queued_max": max(s.get("sync_queued", 0) for s in samples),
            "sync_queued_bound": 2 * queue_size,
            "sync_queued_after_warmup_first": warm[0].get("sync_queued"),
            "sync_queued_end": int(final.get("sync_queued", -1)),
        },
        "latency_ms": {
            "end_to_end": percentiles(all_lat),
            "end_to_end_after_warmup": percentiles(post_warm),
            "end_to_end_p50_by_third": [percentiles(t)["p50"] for t in thirds],
            "node_stamp_to_publish_median": float(final.get("latency_ms.median", "nan")),
            "node_processing_median": float(final.get("processing_ms.median", "nan")),
            "node_processing_p95": float(final.get("processing_ms.p95", "nan")),
        },
        "node_exit_code": code,
        "node_log_tracebacks": log_text.count("Traceback"),
        "samples": samples,
    }
    return result


def judge(result: dict[str, Any], max_growth_mb: float = 20.0, max_p99_s: float | None = None):
    """The checks (name -> (ok, detail)) the soak must pass."""
    mem, q, lat, fr = result["memory"], result["queues"], result["latency_ms"], result["frames"]
    proc_p95 = lat["node_processing_p95"]
    bound_ms = 1e3 * (max_p99_s or max(1.0, 5 * proc_p95 / 1e3 if np.isfinite(proc_p95) else 1))
    p99 = lat["end_to_end_after_warmup"]["p99"]
    thirds = [t for t in lat["end_to_end_p50_by_third"] if t is not None]
    drift = thirds[-1] - thirds[0] if len(thirds) >= 2 else 0.0
    drift_bound = max(100.0, 2 * lat["node_processing_median"])
    return {
        "rss_growth": (mem["growth_after_warmup_mb"] < max_growth_mb,
                       f"{mem['growth_after_warmup_mb']:+.1f} MB < {max_growth_mb} MB"),
        "pending": (q["pending_max"] <= 1, f"max {q['pending_max']} <= 1"),
        "sync_queued": (q["sync_queued_max"] <= q["sync_queued_bound"],
                        f"max {q['sync_queued_max']} <= {q['sync_queued_bound']}"),
        "latency_p99": (p99 is not None and p99 < bound_ms, f"{p99 or float('nan'):.0f} ms < "
                                                            f"{bound_ms:.0f} ms"),
        "latency_drift": (drift < drift_bound, f"p50 last - first third {drift:+.0f} ms < "
                                               f"{drift_bound:.0f} ms"),
        "failed": (fr["failed"] == 0, f"{fr['failed']} failed"),
        "processed": (fr["processed"] > 0, f"{fr['processed']} processed"),
        "accounted": (fr["processed"] + fr["dropped"] + fr["failed"] == fr["synchronized"],
                      "processed + dropped + failed == synchronized"),
        "threads": (result["memory"]["threads_end"] <= result["memory"]["threads_after_warmup"] + 2,
                    f"{mem['threads_after_warmup']} -> {mem['threads_end']}"),
        "fds": (mem["fds_end"] <= mem["fds_after_warmup"] + 5,
                f"{mem['fds_after_warmup']} -> {mem['fds_end']}"),
        "clean_exit": (result["node_exit_code"] == 0 and result["node_log_tracebacks"] == 0,
                       f"exit code {result['node_exit_code']}, "
                       f"{result['node_log_tracebacks']} tracebacks"),
    }  # fmt: skip


def to_markdown(result: dict[str, Any], checks: dict[str, tuple[bool, str]]) -> str:
    fr, mem, q, lat = result["frames"], result["memory"], result["queues"], result["latency_ms"]
    e2e, e2e_w = lat["end_to_end"], lat["end_to_end_after_warmup"]

    def ms(v: float | None) -> str:
        return "-" if v is None else f"{v:.0f}"

    w, h = result["size"]
    lines = [
        f"Soak: {result['duration_s'] / 60:.1f} min, {w}x{h} rgb8 pairs at "
        f"{result['rate_hz']:.0f} Hz, weights `{Path(result['weights']).name}` on "
        f"{result['device']}, {result['cpu_count']} CPUs (load average at the end "
        f"{result['load_average'][0]:.1f}), warm-up {result['warmup_s']:.0f} s.",
        "",
        "| frames | sent | received L/R | synchronized | processed | dropped | failed |",
        "|---|---|---|---|---|---|---|",
        f"| pairs | {fr['sent']} | {fr['received_left']}/{fr['received_right']} | "
        f"{fr['synchronized']} | {fr['processed']} | {fr['dropped']} | {fr['failed']} |",
        "",
        "| latency (ms) | p50 | p95 | p99 | max |",
        "|---|---|---|---|---|",
        f"| end-to-end, all | {ms(e2e['p50'])} | {ms(e2e['p95'])} | {ms(e2e['p99'])} | "
        f"{ms(e2e['max'])} |",
        f"| end-to-end, after warm-up | {ms(e2e_w['p50'])} | {ms(e2e_w['p95'])} | "
        f"{ms(e2e_w['p99'])} | {ms(e2e_w['max'])} |",
        f"| node processing (last window) | {ms(lat['node_processing_median'])} | "
        f"{ms(lat['node_processing_p95'])} | | |",
        "",
        "| memory and queues | value |",
        "|---|---|",
        f"| RSS start / after warm-up / end (MB) | {mem['rss_start_mb']:.1f} / "
        f"{mem['rss_after_warmup_mb']:.1f} / {mem['rss_end_mb']:.1f} |",
        f"| RSS growth after warm-up (MB) | {mem['growth_after_warmup_mb']:+.1f} "
        f"(max {mem['rss_max_after_warmup_mb']:.1f}; slope "
        + (
            "-"
            if mem["slope_after_warmup_mb_per_min"] is None
            else f"{mem['slope_after_warmup_mb_per_min']:+.2f} MB/min"
        )
        + ") |",
        f"| threads, open fds (after warm-up -> end) | {mem['threads_after_warmup']} -> "
        f"{mem['threads_end']}, {mem['fds_after_warmup']} -> {mem['fds_end']} |",
        f"| pending (worker mailbox) max | {q['pending_max']} (bound 1) |",
        f"| sync_queued max | {q['sync_queued_max']} (bound {q['sync_queued_bound']}) |",
        "",
        "| check | result | |",
        "|---|---|---|",
        *[f"| {k} | {'pass' if ok else 'FAIL'} | {detail} |" for k, (ok, detail) in checks.items()],
        "",
        "RSS over time:",
        "",
        "| t (s) | RSS (MB) | sent | processed | dropped | failed | pending | sync_queued | "
        "e2e p99 (ms) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    samples = result["samples"]
    step = max(1, len(samples) // 20)
    for s in samples[::step] + ([samples[-1]] if (len(samples) - 1) % step else []):
        lines.append(
            f"| {s['t_s']:.0f} | {s['rss_mb']:.1f} | {s['sent']} | {s.get('processed', '-')} | "
            f"{s.get('dropped', '-')} | {s.get('failed', '-')} | {s.get('pending', '-')} | "
            f"{s.get('sync_queued', '-')} | {ms(s['latency_window_ms']['p99'])} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="duration (default 10)")
    parser.add_argument("--rate", type=float, default=30.0, help="pairs per second (30)")
    parser.add_argument("--size", default="640x480", help="image size WxH (640x480)")
    parser.add_argument("--weights", type=Path, help="checkpoint (default: see the docstring)")
    parser.add_argument(
        "--model",
        choices=("full", "tiny"),
        default="full",
        help="random weights when there is no checkpoint (default full)",
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--warmup", type=float, default=30.0, help="seconds of warm-up (30)")
    parser.add_argument("--sample", type=float, default=5.0, help="seconds between samples")
    parser.add_argument("--queue-size", type=int, default=10)
    parser.add_argument("--max-growth-mb", type=float, default=20.0)
    parser.add_argument("--max-p99-s", type=float, default=None)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks/results/soak.json")
    parser.add_argument("--md", type=Path, default=REPO / "benchmarks/results/soak.md")
    args = parser.parse_args(argv)
    w, h = (int(v) for v in args.size.lower().split("x"))
    with tempfile.TemporaryDirectory(prefix="soak_") as tmp:
        weights = args.weights
        if weights is None:
            weights = DEFAULT_WEIGHTS if DEFAULT_WEIGHTS.is_file() else make_weights(
                args.model, Path(tmp))  # fmt: skip
        result = run_soak(args.minutes * 60, weights, args.rate, (w, h), args.warmup,
                          args.sample, args.device, args.queue_size, Path(tmp))  # fmt: skip
        if args.weights is None and not DEFAULT_WEIGHTS.is_file():
            result["weights"] = f"random {args.model} system (no trained weights)"
    checks = judge(result, args.max_growth_mb, args.max_p99_s)
    result["checks"] = {k: {"ok": bool(ok), "detail": d} for k, (ok, d) in checks.items()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    md = to_markdown(result, checks)
    args.md.write_text(md)
    print(md)
    print(f"wrote {args.out} and {args.md}")
    return 0 if all(ok for ok, _ in checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
