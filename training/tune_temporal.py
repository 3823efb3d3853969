"""``python -m training tune-temporal``: choose the temporal filter's parameters on video.

Runs a system checkpoint's full path (what the node runs) once over a *continuous* stereo set
(``python -m training synth --fps 30 ...``, or an extracted recording), then scores a grid of
1-euro (``min_cutoff`` Hz x ``beta`` s/m) and constant-velocity Kalman (``accel_std`` m/s^2 x
``meas_std`` m) parameters at one or more frame rates (every ``k``-th frame: the node on a CPU
processes ~15 of 30 pairs/s). Scores are MPJPE (mm) over the joints the raw estimate has, so a
filter that fills missing joints is not judged on other joints, and the acceleration error
(mm/frame^2, the mean norm of the difference between predicted and true second differences of
each joint, as in video pose estimation: how much the output shakes). Tune on training clips, then
confirm on held-out clips with ``--check DIR`` (the chosen parameters are not re-fit there).

Writes ``tune_temporal.json`` and ``tune_temporal.md`` to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

EURO_MIN_CUTOFF = (0.2, 0.5, 1.0, 2.0, 3.0, 5.0, 8.0, 12.0, 20.0, 30.0, 50.0)
EURO_BETA = (0.0, 0.3, 1.0, 3.0)
KALMAN_ACCEL = (3.0, 10.0, 30.0, 100.0)
KALMAN_MEAS = (0.05, 0.1, 0.2, 0.4)


def cached_full_path(
    ckpt: Path, data: Path, batch_size: int, device: str, cache_dir: Path
) -> tuple[Any, np.ndarray]:
    """(GroundTruth, joints_3d (N, J, 3) m, NaN where none) of the full path, cached in
    ``cache_dir`` by checkpoint, data and the inference code (so that another grid does not
    rerun the network, and a changed estimator does)."""
    import hashlib

    import stereo_pose3d
    from stereo_pose3d.skeleton import get_skeleton
    from training.data.stereo_dataset import StereoDataset
    from training.evaluate import load_ground_truth

    stat = ckpt.stat()
    code = hashlib.sha256()
    for source in sorted(Path(stereo_pose3d.__file__).parent.rglob("*.py")):
        code.update(source.read_bytes())
    key = f"{ckpt.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{data.resolve()}|{code.hexdigest()}"
    cache = cache_dir / f"full_path_{data.name}.npz"
    if cache.is_file():
        with np.load(cache) as z:
            if str(z["key"]) == key:
                labels = StereoDataset(data, load_images=False)
                skeleton = get_skeleton(labels.info["skeleton"])
                gt, _ = load_ground_truth(labels, list(range(len(labels))), skeleton)
                print(f"reusing {cache}")
                return gt, z["joints_3d"]
    gt, pred, _ = run_full_path(ckpt, data, batch_size, device)
    X = np.where(pred.detected[:, None, None], pred.joints_3d, np.nan)
    tmp = cache.with_suffix(".tmp.npz")
    np.savez_compressed(tmp, key=np.array(key), joints_3d=X)
    tmp.replace(cache)
    return gt, X


def run_full_path(ckpt: Path, data: Path, batch_size: int, device: str) -> tuple[Any, Any, Any]:
    """(GroundTruth, Predictions, skeleton) of the checkpoint's full path on every sample."""
    from tqdm import tqdm

    from stereo_pose3d.skeleton import get_skeleton
    from training.data.stereo_dataset import StereoDataset
    from training.evaluate import (
        ModelRunner,
        Predictions,
        load_ground_truth,
        rectified_images,
    )

    dataset = StereoDataset(data)
    skeleton = get_skeleton(dataset.info["skeleton"])
    runner = ModelRunner(ckpt, device=device)
    if runner.estimator is None:
        raise ValueError(f"{ckpt}: not a system checkpoint (no locator): no full path to tune")
    indices = list(range(len(dataset)))
    gt, _ = load_ground_truth(StereoDataset(data, load_images=False), indices, skeleton)
    pred = Predictions.empty(len(gt), skeleton.num_joints)
    for start in tqdm(range(0, len(gt), batch_size), desc=f"full path {data.name}"):
        batch = np.arange(start, min(len(gt), start + batch_size))
        images = [rectified_images(dataset[indices[i]]) for i in batch]
        lefts, rights = [im[0] for im in images], [im[1] for im in images]
        sequences = [gt.sequence[i] for i in batch]
        runner.predict_full(lefts, rights, gt.P[batch], pred, batch, sequences)
    return gt, pred, skeleton


def sequences_at_stride(gt: Any, stride: int) -> list[np.ndarray]:
    """Sample indices of each sequence in time order, keeping every ``stride``-th frame."""
    from training.evaluate import _sequences

    return [idx[::stride] for idx in _sequences(gt)]


def score(X: np.ndarray, gt: Any, seqs) -> float:
    """MPJPE (mm) of ``X`` over the valid joints of the samples in ``seqs``."""
    idx = np.concatenate(seqs)
    err = np.linalg.norm(X[idx] - gt.joints_3d[idx], axis=-1)
    ok = np.isfinite(err) & gt.valid_3d[idx]
    return float(err[ok].mean() * 1000) if ok.any() else float("nan")


def accel_error(X: np.ndarray, gt: Any, seqs) -> float:
    """Mean norm (mm/frame^2) of predicted minus true second differences of the joints, over
    the triples of consecutive kept frames where the joint is valid in all three."""
    errs = []
    for idx in seqs:
        if len(idx) < 3:
            continue
        a_pred = X[idx][2:] - 2 * X[idx][1:-1] + X[idx][:-2]
        a_true = gt.joints_3d[idx][2:] - 2 * gt.joints_3d[idx][1:-1] + gt.joints_3d[idx][:-2]
        err = np.linalg.norm(a_pred - a_true, axis=-1)
        errs.append(err[np.isfinite(err)])
    err = np.concatenate(errs) if errs else np.zeros(0)
    return float(err.mean() * 1000) if err.size else float("nan")


def scored(kind: str, params: tuple[float, ...], X: np.ndarray, gt: Any, seqs, stride: int):
    """One result row: ``kind`` ("none", "one_euro", "kalman_cv") with ``params`` on ``X``."""
    from training.postprocess import temporal_filter

    Xf = X if kind == "none" else temporal_filter(X, gt.time, seqs, kind, params)
    return {
        "filter": kind,
        "params": list(params),
        "stride": stride,
        "mpjpe_mm": score(Xf, gt, seqs),
        "accel_mm": accel_error(Xf, gt, seqs),
    }


def grid(X: np.ndarray, gt: Any, strides: list[int]) -> list[dict[str, Any]]:
    """Every (filter, parameters, stride) with its MPJPE and acceleration error; the raw
    estimate is the filter "none"."""
    space: list[tuple[str, tuple[float, ...]]] = [("none", ())]
    space += [("one_euro", (c, b)) for c in EURO_MIN_CUTOFF for b in EURO_BETA]
    space += [("kalman_cv", (a, m)) for a in KALMAN_ACCEL for m in KALMAN_MEAS]
    rows = []
    for stride in strides:
        seqs = sequences_at_stride(gt, stride)
        rows += [scored(kind, params, X, gt, seqs, stride) for kind, params in space]
    return rows


def best(rows: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    """The parameters of ``kind`` with the lowest MPJPE summed over the strides."""
    totals: dict[tuple[float, ...], float] = {}
    for r in rows:
        if r["filter"] == kind:
            key = tuple(r["params"])
            totals[key] = totals.get(key, 0.0) + r["mpjpe_mm"]
    params = min(totals, key=lambda k: totals[k])
    return {"filter": kind, "params": list(params)}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ckpt", required=True, help="system checkpoint (the node's weights)")
    parser.add_argument("--data", required=True, help="continuous stereo set to tune on")
    parser.add_argument("--check", help="held-out continuous set: report the chosen parameters")
    parser.add_argument(
        "--strides", default="1,2", help="frame strides to score (1 = every frame; default 1,2)"
    )
    parser.add_argument("--out", default="runs/tune_temporal", help="output folder")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--device", default="auto")


def main(args: argparse.Namespace) -> int:
    try:
        strides = [int(s) for s in str(args.strides).split(",") if s.strip()]
        if not strides or min(strides) < 1:
            raise ValueError(f"--strides: positive integers, got {args.strides!r}")
        return _main(args, strides)
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", flush=True)
        return 2


def _main(args: argparse.Namespace, strides: list[int]) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    gt, X = cached_full_path(Path(args.ckpt), Path(args.data), args.batch_size, args.device, out)
    steps = np.concatenate([np.diff(gt.time[i]) for i in sequences_at_stride(gt, 1) if len(i) > 1])
    if steps.size == 0 or float(np.median(steps)) > 0.1:
        raise ValueError(f"{args.data}: not continuous video (make one with synth --fps 30)")
    rows = grid(X, gt, strides)
    chosen = [best(rows, "one_euro"), best(rows, "kalman_cv")]
    report: dict[str, Any] = {
        "ckpt": str(args.ckpt),
        "data": str(args.data),
        "frame_rate_hz": float(1.0 / np.median(steps)),
        "strides": strides,
        "grid": rows,
        "chosen": chosen,
        "seconds": None,
    }
    if args.check:
        gt_c, Xc = cached_full_path(
            Path(args.ckpt), Path(args.check), args.batch_size, args.device, out
        )
        check = []
        for stride in strides:
            seqs = sequences_at_stride(gt_c, stride)
            for c in [{"filter": "none", "params": []}, *chosen]:
                check.append(scored(c["filter"], tuple(c["params"]), Xc, gt_c, seqs, stride))
        report["check"] = {"data": str(args.check), "rows": check}
    report["seconds"] = time.perf_counter() - t0
    (out / "tune_temporal.json").write_text(json.dumps(report, indent=2))
    md = markdown(report)
    (out / "tune_temporal.md").write_text(md)
    print(md)
    print(f"wrote {out / 'tune_temporal.md'} and {out / 'tune_temporal.json'}")
    return 0


def markdown(report: dict[str, Any]) -> str:
    rate = report["frame_rate_hz"]
    lines = [
        f"# Temporal filter tuning: `{report['ckpt']}` on `{report['data']}`",
        "",
        f"Full path, MPJPE (mm) over the joints of the raw estimate; video at {rate:.1f} Hz, "
        f"strides {report['strides']} (every k-th frame: {', '.join(f'{rate / s:.1f} Hz' for s in report['strides'])}).",  # noqa: E501
        "",
        "## Best of each filter (tuning set)",
        "",
        "Each cell: MPJPE (mm) / acceleration error (mm/frame^2).",
        "",
        "| filter | params | " + " | ".join(f"stride {s}" for s in report["strides"]) + " |",
        "|---|---|" + "---|" * len(report["strides"]),
    ]

    def row(rows, kind, params):
        found = [
            next(r for r in rows
                 if r["filter"] == kind and r["params"] == params and r["stride"] == s)
            for s in report["strides"]
        ]  # fmt: skip
        cells = [f"{r['mpjpe_mm']:.1f} / {r['accel_mm']:.1f}" for r in found]
        return f"| {kind} | {params or '-'} | " + " | ".join(cells) + " |"

    lines.append(row(report["grid"], "none", []))
    lines += [row(report["grid"], c["filter"], c["params"]) for c in report["chosen"]]
    if "check" in report:
        lines += [
            "",
            f"## Held-out check: `{report['check']['data']}` (parameters not re-fit)",
            "",
            "| filter | params | " + " | ".join(f"stride {s}" for s in report["strides"]) + " |",
            "|---|---|" + "---|" * len(report["strides"]),
            row(report["check"]["rows"], "none", []),
        ]
        lines += [row(report["check"]["rows"], c["filter"], c["params"]) for c in report["chosen"]]
    lines += ["", "## 1-euro grid (tuning set, stride 1)", ""]
    betas = list(EURO_BETA)
    lines += ["| min_cutoff \\ beta | " + " | ".join(map(str, betas)) + " |",
              "|---|" + "---|" * len(betas)]  # fmt: skip
    s1 = report["strides"][0]
    for c in EURO_MIN_CUTOFF:
        vals = [
            next(r["mpjpe_mm"] for r in report["grid"]
                 if r["filter"] == "one_euro" and r["params"] == [c, b] and r["stride"] == s1)
            for b in betas
        ]  # fmt: skip
        lines.append(f"| {c} | " + " | ".join(f"{v:.1f}" for v in vals) + " |")
    return "\n".join(lines) + "\n"
