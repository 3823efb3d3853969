"""Micro-benchmark: triangulation throughput for 10^5 stereo poses of 16 joints.

    .venv/bin/python benchmarks/bench_triangulation.py [--poses 100000] [--repeats 5]

Prints a Markdown table (median of ``--repeats`` runs) and writes
``benchmarks/results/triangulation.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from stereo_pose3d.geometry import project, triangulate_dlt, triangulate_dlt_iterative

SOLVERS = {"svd": triangulate_dlt, "iterative": triangulate_dlt_iterative}


def make_problem(poses: int, joints: int, dtype: torch.dtype, device: str):
    generator = torch.Generator().manual_seed(0)
    f, baseline = 450.0, 0.16
    K = torch.tensor([[f, 0, 320.0], [0, f, 240.0], [0, 0, 1]], dtype=torch.float64)
    P = torch.stack(
        [
            torch.cat([K, torch.zeros(3, 1, dtype=torch.float64)], 1),
            torch.cat([K, torch.tensor([[-f * baseline], [0.0], [0.0]], dtype=torch.float64)], 1),
        ]
    )
    X = torch.rand(poses, joints, 3, generator=generator, dtype=torch.float64)
    X = X * torch.tensor([2.0, 2.0, 4.0], dtype=torch.float64) + torch.tensor([-1.0, -1.0, 2.0])
    uv = project(X[:, None], P) + 0.5 * torch.randn(poses, 2, joints, 2, generator=generator)
    weights = torch.rand(poses, 2, joints, generator=generator) * 0.8 + 0.2
    P = P.expand(poses, 2, 3, 4)
    return [t.to(device=device, dtype=dtype) for t in (uv, P, weights)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--poses", type=int, default=100_000)
    parser.add_argument("--joints", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "triangulation.json"
    )
    args = parser.parse_args()

    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    rows = []
    for device in devices:
        for dtype in (torch.float32, torch.float64):
            uv, P, w = make_problem(args.poses, args.joints, dtype, device)
            reference = triangulate_dlt(uv.double(), P.double(), w.double())
            for name, solve in SOLVERS.items():
                solve(uv[:100], P[:100], w[:100])  # warm-up
                times = []
                for _ in range(args.repeats):
                    if device == "cuda":
                        torch.cuda.synchronize()
                    start = time.perf_counter()
                    out = solve(uv, P, w)
                    if device == "cuda":
                        torch.cuda.synchronize()
                    times.append(time.perf_counter() - start)
                seconds = statistics.median(times)
                error_mm = 1000 * (out.double() - reference).norm(dim=-1).median().item()
                rows.append(
                    {
                        "device": device,
                        "dtype": str(dtype).removeprefix("torch."),
                        "solver": name,
                        "poses": args.poses,
                        "joints": args.joints,
                        "median_s": seconds,
                        "poses_per_s": args.poses / seconds,
                        "median_diff_vs_float64_svd_mm": error_mm,
                    }
                )

    print(
        f"Triangulation of {args.poses} stereo poses x {args.joints} joints "
        f"(median of {args.repeats}; torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads)\n"
    )
    print("| device | dtype | solver | time (s) | poses/s | median diff vs f64 SVD (mm) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['device']} | {r['dtype']} | {r['solver']} | {r['median_s']:.3f} | "
            f"{r['poses_per_s']:,.0f} | {r['median_diff_vs_float64_svd_mm']:.2e} |"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "machine": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }
    args.out.write_text(json.dumps({"meta": meta, "results": rows}, indent=2))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
