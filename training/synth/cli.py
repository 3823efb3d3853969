"""``python -m training synth``: render the synthetic stereo dataset or a rosbag2 recording.

Dataset::

    python -m training synth --out data/synth_train --split train --frames 10000 --seed 0
    python -m training synth --out data/synth_val --split val --frames 1000 --seed 1

Bag::

    python -m training synth --bag demo.mcap --clip dance_a --seconds 10 [--seed S] [--raw-rig]
        [--storage sqlite3] [--fps 30]

Preview (one sample, joints drawn, left | right)::

    python -m training synth --preview docs/synthetic_example.png --split train --seed 3
"""

from __future__ import annotations

import os

# The worker processes are the parallelism: keep BLAS / OpenMP single threaded in them.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402

from .motion import CLIP_NAMES  # noqa: E402


def add_arguments(parser: argparse.ArgumentParser) -> None:
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--out", metavar="DIR", help="write a dataset to DIR")
    target.add_argument("--bag", metavar="FILE", help="write a rosbag2 recording (a directory)")
    target.add_argument("--preview", metavar="PNG", help="render one sample with joints drawn")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument(
        "--raw-rig",
        action="store_true",
        help="raw (verged, distorted, unrectified) rig instead of rectified",
    )
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument(
        "--supersample",
        type=int,
        default=2,
        help="humanoid render supersampling factor (anti-aliasing)",
    )
    parser.add_argument(
        "--fps",
        type=float,
        default=None,
        help="frame rate (Hz). --bag: default the clip's keyframe rate. --out: each rig renders "
        "--frames-per-rig consecutive video frames at this rate (continuous sequences, for "
        "temporal filters); default: random snapshots of the clip",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    ds = parser.add_argument_group("dataset (--out / --preview)")
    ds.add_argument(
        "--split",
        default="train",
        help="train (12 clips), val (backflip, cartwheel, dance_b), all, or clip names "
        "separated by commas (default train)",
    )
    ds.add_argument("--frames", type=int, default=1000, help="stereo pairs to write")
    ds.add_argument(
        "--frames-per-rig",
        type=int,
        default=8,
        help="frames rendered from each random rig/scene (default 8)",
    )
    ds.add_argument(
        "--raw-fraction",
        type=float,
        default=None,
        help="share of raw rigs (default 0, or 1 with --raw-rig)",
    )
    ds.add_argument(
        "--occluders",
        type=float,
        default=0.3,
        help="probability of an occluding box per rig (default 0.3)",
    )
    ds.add_argument(
        "--workers", type=int, default=None, help="worker processes (default: available CPUs)"
    )
    ds.add_argument("--jpeg-quality", type=int, default=95)
    bag = parser.add_argument_group("bag (--bag)")
    bag.add_argument("--clip", default="dance_a", choices=CLIP_NAMES)
    bag.add_argument("--seconds", type=float, default=10.0)
    bag.add_argument("--storage", default="mcap", choices=("mcap", "sqlite3"))


def main(args: argparse.Namespace) -> int:
    progress = not args.no_progress
    if args.bag:
        from rosbags.rosbag2 import WriterError

        from .bag import write_synthetic_bag

        if os.path.exists(args.bag):
            print(
                f"error: {args.bag} exists already; rosbag2 writers never overwrite",
                file=sys.stderr,
            )
            return 2
        try:
            summary = write_synthetic_bag(
                args.bag,
                args.clip,
                args.seconds,
                seed=args.seed,
                raw=args.raw_rig,
                storage=args.storage,
                fps=args.fps,
                width=args.width,
                height=args.height,
                supersample=args.supersample,
                progress=progress,
            )
        except WriterError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        print(json.dumps(summary, indent=2))
        return 0

    from .generate import DatasetConfig

    raw_fraction = args.raw_fraction if args.raw_fraction is not None else float(args.raw_rig)
    if not 0.0 <= raw_fraction <= 1.0:
        print("--raw-fraction must be in [0, 1]", file=sys.stderr)
        return 2
    try:
        cfg = DatasetConfig(
            split=args.split,
            frames=args.frames,
            seed=args.seed,
            frames_per_rig=args.frames_per_rig,
            width=args.width,
            height=args.height,
            raw_fraction=raw_fraction,
            supersample=args.supersample,
            jpeg_quality=args.jpeg_quality,
            occluder_probability=args.occluders,
            fps=0.0 if args.fps is None else args.fps,
        )
        if args.preview:
            return _preview(args.preview, cfg)
        from .generate import generate_dataset

        summary = generate_dataset(args.out, cfg, workers=args.workers, progress=progress)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=2))
    return 0


def _preview(path: str, cfg, candidates: int = 8) -> int:
    """Render the first frame of the first ``candidates`` rigs; keep the largest person."""
    from .generate import plan_rig
    from .preview import write_preview
    from .render import SynthRenderer

    best = None
    with SynthRenderer(cfg.width, cfg.height, cfg.supersample) as renderer:
        for rig in range(candidates):
            plan = plan_rig(renderer, cfg, rig)
            frame = next(iter(renderer.frames(plan)))
            height = float(frame.labels["box"][0, 3] - frame.labels["box"][0, 1])
            if best is None or height > best[0]:
                best = (height, plan, frame)
    _, plan, frame = best
    write_preview(path, frame.images[0], frame.images[1], frame.labels)
    print(
        f"wrote {path} ({plan.clip}, t={plan.times[0]:.2f} s, baseline {plan.rig.baseline:.3f} m)"
    )
    return 0
