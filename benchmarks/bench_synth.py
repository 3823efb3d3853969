"""Throughput of the synthetic stereo dataset generator (issue 3: 10,000 pairs at 640x480 in
under 10 minutes on the 2-core reference machine).

Renders ``--pairs`` stereo pairs with ``--workers`` processes into a temporary directory, exactly
as ``python -m training synth --out`` does (JPEG files and labels included), and extrapolates the
time for 10,000 pairs. Prints a table and writes JSON (``--json``).

    .venv/bin/python benchmarks/bench_synth.py --pairs 300 --workers 2 --json bench_synth.json
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from training.synth.generate import DatasetConfig, default_workers, generate_dataset  # noqa: E402

TARGET_PAIRS = 10_000
TARGET_SECONDS = 600.0


def run(
    pairs: int,
    workers: int,
    width: int,
    height: int,
    supersample: int,
    seed: int,
    raw_fraction: float,
) -> dict:
    cfg = DatasetConfig(
        split="train",
        frames=pairs,
        seed=seed,
        width=width,
        height=height,
        supersample=supersample,
        raw_fraction=raw_fraction,
    )
    tmp = Path(tempfile.mkdtemp(prefix="bench_synth_"))
    try:
        load_before = os.getloadavg()[0]
        cpu0 = time.process_time()
        summary = generate_dataset(tmp / "ds", cfg, workers=workers, progress=False)
        size = sum(p.stat().st_size for p in (tmp / "ds").rglob("*") if p.is_file())
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    rate = summary["pairs_per_second"]
    return {
        "pairs": pairs,
        "workers": summary["workers"],
        "image_size": [width, height],
        "supersample": supersample,
        "raw_fraction": raw_fraction,
        "seconds": round(summary["seconds"], 2),
        "pairs_per_second": round(rate, 2),
        "extrapolated_seconds_10k": round(TARGET_PAIRS / rate, 1),
        "meets_target": TARGET_PAIRS / rate < TARGET_SECONDS,
        "disk_bytes_per_pair": round(size / pairs),
        "parent_cpu_seconds": round(time.process_time() - cpu0, 2),
        "load_average_before": round(load_before, 2),
        "cpus": os.cpu_count(),
        "machine": platform.processor() or platform.machine(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", type=int, default=300)
    parser.add_argument("--workers", type=int, default=None, help="default: available CPUs")
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--supersample", type=int, nargs="+", default=[2])
    parser.add_argument("--raw-fraction", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    args = parser.parse_args(argv)
    workers = args.workers or default_workers()
    results = [
        run(args.pairs, workers, args.width, args.height, s, args.seed, args.raw_fraction)
        for s in args.supersample
    ]
    header = (
        f"{'pairs':>6} {'workers':>7} {'size':>9} {'ss':>3} {'raw':>4} {'s':>7} "
        f"{'pairs/s':>8} {'10k pairs':>10} {'< 10 min':>8} {'KB/pair':>8} {'load':>5}"
    )
    print(header)
    print("-" * len(header))
    for r in results:
        size = f"{r['image_size'][0]}x{r['image_size'][1]}"
        print(
            f"{r['pairs']:>6} {r['workers']:>7} {size:>9} {r['supersample']:>3} "
            f"{r['raw_fraction']:>4.1f} {r['seconds']:>7.1f} {r['pairs_per_second']:>8.2f} "
            f"{r['extrapolated_seconds_10k'] / 60:>8.1f} m {r['meets_target']!s:>8} "
            f"{r['disk_bytes_per_pair'] / 1024:>8.0f} {r['load_average_before']:>5.2f}"
        )
    print(json.dumps(results, indent=2))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
