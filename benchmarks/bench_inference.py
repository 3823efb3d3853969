"""Inference latency of ``StereoPoseEstimator.estimate`` per stereo pair.

    .venv/bin/python benchmarks/bench_inference.py          # default run: < 1 min on 2 cores
    .venv/bin/python benchmarks/bench_inference.py --iters 50 --warmup 5 --batch 8 --device cuda

For CDRNet and the baseline on ResNet-18 and ResNet-50 (``--archs``, ``--backbones``) at
``--crop`` x ``--crop`` crops, with the default locator (ResNet-18 to layer3 at 256x192) on a
640x480 pair. Randomly initialised weights (the cost does not depend on them; the locator
threshold is 0 so every frame runs the full pipeline). Reports the median and p95 of each stage
(``preprocess`` = letterbox + crops + normalisation, ``locator``, ``network`` = pose network,
``triangulation`` = DLT, ``total``) and throughput (pairs/s) of single-pair calls, and of
``estimate_batch`` with ``--batch`` pairs when ``--batch`` > 1.

Writes ``benchmarks/results/inference.json`` (``--out``) and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stereo_pose3d.estimator import TIMING_KEYS, StereoPoseEstimator
from stereo_pose3d.models import (
    build_model,
    locator_config,
    pose_config,
    system_config,
)


def make_pair(width: int = 640, height: int = 480) -> tuple[np.ndarray, ...]:
    """A textured 640x480 rectified pair and its projections (content is irrelevant here)."""
    rng = np.random.default_rng(0)
    left = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
    right = np.roll(left, -20, axis=1)
    K = np.array([[500.0, 0, (width - 1) / 2], [0, 500, (height - 1) / 2], [0, 0, 1]])
    P_left = np.hstack([K, np.zeros((3, 1))])
    P_right = P_left.copy()
    P_right[0, 3] = -500.0 * 0.12
    return left, right, P_left, P_right


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def bench_one(arch: str, backbone: str, args: argparse.Namespace) -> dict:
    torch.manual_seed(0)
    config = system_config(
        pose_config(arch, backbone, (args.crop, args.crop)),
        locator_config(),
        score_threshold=0.0,
        tracking=args.tracking,
        track_confidence=0.0,
    )
    system = build_model(config)
    est = StereoPoseEstimator(system, device=args.device, autocast=not args.fp32)
    left, right, P_left, P_right = make_pair()
    for _ in range(args.warmup):
        est.estimate(left, right, P_left, P_right)
    samples = {k: [] for k in TIMING_KEYS}
    for _ in range(args.iters):
        pose = est.estimate(left, right, P_left, P_right)
        for k in TIMING_KEYS:
            samples[k].append(pose.timings[k])
    result = {
        "architecture": arch,
        "backbone": backbone,
        "crop": args.crop,
        "device": str(est.device),
        "iters": args.iters,
        "params_pose_M": sum(p.numel() for p in system.pose.parameters()) / 1e6,
        "params_locator_M": sum(p.numel() for p in system.locator.parameters()) / 1e6,
        "median_ms": {k: 1e3 * statistics.median(v) for k, v in samples.items()},
        "p95_ms": {k: 1e3 * percentile(v, 95) for k, v in samples.items()},
    }
    result["throughput_pairs_per_s"] = 1e3 / result["median_ms"]["total"]
    if args.batch > 1:
        lists = ([left] * args.batch, [right] * args.batch, [P_left] * args.batch,
                 [P_right] * args.batch)  # fmt: skip
        est.estimate_batch(*lists)
        times = []
        for _ in range(max(1, args.iters // 2)):
            t0 = time.perf_counter()
            est.estimate_batch(*lists)
            times.append(time.perf_counter() - t0)
        result["batch"] = args.batch
        result["batch_throughput_pairs_per_s"] = args.batch / statistics.median(times)
    return result


def table(results: list[dict]) -> str:
    header = (
        "| model | backbone | device | preprocess | locator | network | triangulation "
        "| total (median / p95) | pairs/s |"
    )
    lines = [header, "|" + "---|" * 9]
    for r in results:
        med, p95 = r["median_ms"], r["p95_ms"]
        rate = f"{r['throughput_pairs_per_s']:.1f}"
        if "batch" in r:
            rate += f" ({r['batch_throughput_pairs_per_s']:.1f} @ batch {r['batch']})"
        lines.append(
            f"| {r['architecture']} | {r['backbone']} | {r['device']} "
            f"| {med['preprocess']:.1f} | {med['locator']:.1f} | {med['network']:.1f} "
            f"| {med['triangulation']:.1f} | {med['total']:.1f} / {p95['total']:.1f} | {rate} |"
        )
    return "\n".join(lines) + "\n\n(milliseconds per stereo pair; median of the stages)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--archs", nargs="+", default=["cdrnet", "baseline"])
    parser.add_argument("--backbones", nargs="+", default=["resnet18", "resnet50"])
    parser.add_argument("--crop", type=int, default=256)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batch", type=int, default=1, help="also time estimate_batch")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda[:N]")
    parser.add_argument("--fp32", action="store_true", help="no autocast on CUDA")
    parser.add_argument("--tracking", action="store_true", help="skip the locator via tracking")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/inference.json"))
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    load_before = os.getloadavg()[0]
    results = []
    for backbone in args.backbones:
        for arch in args.archs:
            results.append(bench_one(arch, backbone, args))
            print(f"done {arch} {backbone}", file=sys.stderr)
    report = {
        "benchmark": "estimate() per stereo pair, 640x480 input",
        "torch": torch.__version__,
        "cpu_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        # 1-minute load average before / after: other processes on the cores inflate latencies.
        "load_average": [load_before, os.getloadavg()[0]],
        "platform": platform.platform(),
        "processor": platform.processor(),
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "args": {k: str(v) for k, v in vars(args).items()},
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(table(results))
    print(
        f"load average before/after: {report['load_average'][0]:.2f} / "
        f"{report['load_average'][1]:.2f} on {os.cpu_count()} cores"
    )
    print(f"\nwritten {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
