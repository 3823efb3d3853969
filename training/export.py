"""``python -m training export``: write the node's checkpoint format (what the estimator loads).

::

    python -m training export --ckpt runs/cdr/checkpoints/best.pt \
        --locator runs/locator/checkpoints/best.pt --out stereo_pose3d/weights/cdrnet_r18_synth

``--ckpt`` is a training checkpoint (``runs/<run>/checkpoints/*.pt``) or a node checkpoint
(``pose_*.pt`` / ``system_*.pt`` of a run, or an exported file). A pose network needs a locator
(``--locator``, either kind of file) to make a ``system`` checkpoint; a ``system`` file is
re-written (e.g. in another storage or with new estimator settings).

The file (``stereo_pose3d.checkpoint`` format) stores the weights in ``--storage`` (default
``auto``: float16, or int8 -- per-channel symmetric convolution weights -- when float16 would
exceed ``--max-mb``; a ResNet-18 CDRNet + locator is ~28 MB in float16, ~8 MB in int8), the
config (pose network + locator + estimator settings) and the provenance: dataset, split,
training config, git commit, training metrics, the source files (with sha256) and ``--metrics``
(an ``eval.json`` whose summary is embedded). Files larger than ``--max-mb``
(default 25 MB) are refused. The written file is re-loaded and the pose network is run on a
random input to report how much the storage precision moved its 2D output.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import torch
import yaml

__all__ = ["add_arguments", "export", "main"]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _load_any(path: Path) -> tuple[torch.nn.Module, dict[str, Any]]:
    """(model, provenance) from a training checkpoint or a node checkpoint."""
    from training.train import dataset_info, load_training_model

    loaded = load_training_model(path)
    if loaded is not None:
        model, state = loaded
        config = state.get("config") or {}
        data = config.get("data") or {}
        info = dataset_info(data.get("train"))
        provenance = {
            "dataset": info.get("source", data.get("source")),
            "dataset_path": data.get("train"),
            "split": info.get("split", data.get("train_split")),
            "stage": config.get("stage"),
            "training_config": config,
            "metrics": state.get("metrics") or {},
            "step": state.get("step"),
            "epoch": state.get("epoch"),
        }
        return model, provenance
    from stereo_pose3d.checkpoint import load_model

    model, ckpt = load_model(path)
    return model.eval(), dict(ckpt.provenance)


def _summary_of_eval(path: Path) -> dict[str, Any]:
    report = json.loads(Path(path).read_text())
    out: dict[str, Any] = {"file": str(path), "data": report.get("data", {}).get("path")}
    keys = (
        "mpjpe_mm", "mpjpe_rr_mm", "pa_mpjpe_mm", "pck3d_150", "detection_rate", "err2d_px",
        "disparity_err_px",
    )  # fmt: skip
    out["models"] = {
        name: {p: {k: r.get(k) for k in keys} for p, r in m.get("paths", {}).items()}
        for name, m in report.get("models", {}).items()
    }
    out["floor"] = {s: {k: r.get(k) for k in keys[:3]} for s, r in report.get("floor", {}).items()}
    return out


def export(
    ckpt: Path,
    out: Path,
    locator: Path | None = None,
    storage: str = "auto",
    max_mb: float = 25.0,
    metrics: Path | None = None,
    estimator: dict[str, Any] | None = None,
    note: str | None = None,
) -> tuple[Path, dict[str, Any]]:
    """Write ``out`` (``.pt`` added when missing); returns the path and a verification summary.

    Raises:
        ValueError: unusable inputs, a pose network without a locator, or a file over
            ``max_mb`` (the file is not left behind).
    """
    from stereo_pose3d.checkpoint import save_checkpoint
    from stereo_pose3d.models import PoseSystem, system_config

    out = Path(out)
    if out.suffix != ".pt":
        out = out.with_name(out.name + ".pt")
    model, provenance = _load_any(Path(ckpt))
    arch = model.config["architecture"]
    sources = {"checkpoint": {"path": str(ckpt), "sha256": _sha256(Path(ckpt))}}
    if arch == "system":
        pose, loc = model.pose, model.locator
        settings = {**model.config.get("estimator", {}), **(estimator or {})}
        if locator is not None:
            loc, loc_prov = _load_any(Path(locator))
            loc = loc.locator if loc.config["architecture"] == "system" else loc
            sources["locator"] = {"path": str(locator), "sha256": _sha256(Path(locator))}
            provenance["locator_provenance"] = _short(loc_prov)
    elif arch in ("cdrnet", "baseline"):
        if locator is None:
            raise ValueError(
                f"{ckpt} holds a {arch} pose network only: give --locator (a train-locator run's "
                "checkpoint or a system file) so that the estimator can find the person"
            )
        pose = model
        loc, loc_prov = _load_any(Path(locator))
        if loc.config["architecture"] == "system":
            loc = loc.locator
        elif loc.config["architecture"] != "locator":
            raise ValueError(f"{locator} does not hold a locator")
        sources["locator"] = {"path": str(locator), "sha256": _sha256(Path(locator))}
        provenance["locator_provenance"] = _short(loc_prov)
        settings = dict(estimator or {})
    else:
        raise ValueError(f"{ckpt} holds a {arch!r} model; export needs a pose network or system")
    config = system_config(pose.config, loc.config, **settings)
    system = PoseSystem(config, pose, loc).eval()
    provenance = {**provenance, "sources": sources}
    if metrics is not None:
        provenance["evaluation"] = _summary_of_eval(metrics)
    if note:
        provenance["note"] = note
    tmp = out.with_name(out.name + ".export")
    tried = []
    for kind in ("float16", "int8") if storage == "auto" else (storage,):
        provenance["exported_storage"] = kind
        save_checkpoint(tmp, system, config, provenance, storage=kind)
        size_mb = tmp.stat().st_size / 1e6
        tried.append(f"{kind}: {size_mb:.1f} MB")
        if size_mb <= max_mb:
            break
    else:
        tmp.unlink()
        raise ValueError(
            f"the checkpoint would be larger than {max_mb:g} MB ({', '.join(tried)}): use "
            "--storage int8 / auto or a smaller model (ResNet-18, narrower head)"
        )
    tmp.replace(out)
    check = verify(out, system)
    check["size_mb"] = size_mb
    check["storage"] = kind
    return out, check


def _short(provenance: dict[str, Any]) -> dict[str, Any]:
    keys = ("dataset", "split", "stage", "metrics", "step", "git_commit", "created")
    return {k: provenance.get(k) for k in keys if k in provenance}


@torch.inference_mode()
def verify(path: Path, reference: torch.nn.Module, seed: int = 0) -> dict[str, Any]:
    """Reload ``path`` as the estimator does and compare its pose network's 2D output with the
    float32 ``reference`` system on a random input (max deviation in crop pixels)."""
    from stereo_pose3d.estimator import StereoPoseEstimator

    est = StereoPoseEstimator.from_checkpoint(path, device="cpu")
    w, h = est.crop_size
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, 2, 3, h, w, generator=g)
    K = torch.tensor([[w * 1.0, 0, w / 2], [0, w * 1.0, h / 2], [0, 0, 1]])
    P = torch.stack([torch.cat([K, torch.zeros(3, 1)], 1)] * 2)
    P[1, 0, 3] = -K[0, 0] * 0.1
    P[:, :, 3] += (K @ torch.tensor([0.0, 0.0, 3.0]))[None]
    P = P[None]
    a = est.pose_net.forward_2d(x, P)["joints_2d"]
    b = reference.pose.eval().forward_2d(x, P)["joints_2d"]
    return {"max_2d_deviation_px": float((a - b).abs().max()), "loads": True}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ckpt", type=Path, required=True, help="pose network or system file")
    parser.add_argument("--locator", type=Path, help="locator (needed for a pose-only --ckpt)")
    parser.add_argument("--out", type=Path, required=True, help="e.g. stereo_pose3d/weights/NAME")
    parser.add_argument(
        "--storage",
        choices=("auto", "float16", "float32", "int8"),
        default="auto",
        help="weights precision; auto: float16, or int8 when float16 exceeds --max-mb",
    )
    parser.add_argument("--max-mb", type=float, default=25.0, help="refuse larger files")
    parser.add_argument("--metrics", type=Path, help="an eval.json to embed in the provenance")
    parser.add_argument(
        "--estimator",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="estimator setting stored in the file, e.g. score_threshold=0.3",
    )
    parser.add_argument("--note", help="free text stored in the provenance")


def main(args: argparse.Namespace) -> int:
    settings = {}
    for item in args.estimator or []:
        key, sep, value = item.partition("=")
        if not sep:
            print(f"error: --estimator {item!r} must be KEY=VALUE", file=sys.stderr)
            return 2
        settings[key.strip()] = yaml.safe_load(value)
    try:
        path, check = export(
            args.ckpt,
            args.out,
            args.locator,
            args.storage,
            args.max_mb,
            args.metrics,
            settings,
            args.note,
        )
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(
        f"wrote {path} ({check['size_mb']:.1f} MB, {check['storage']}); reloaded with the "
        f"estimator, max 2D change vs float32 {check['max_2d_deviation_px']:.3f} px"
    )
    return 0
