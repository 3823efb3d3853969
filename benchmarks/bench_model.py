"""The networks against the hardware: FLOPs, the machine's matmul ceiling, and what moves latency.

    .venv/bin/python benchmarks/bench_model.py                       # ~5 min on 2 CPU cores
    .venv/bin/python benchmarks/bench_model.py --device cuda         # CUDA variants only
    .venv/bin/python benchmarks/bench_model.py --quick               # smoke test (seconds)

For the shipped system (``stereo_pose3d/weights/cdrnet_synth.pt``; else the training run's
``runs/cdrnet_synth/pose_best.pt`` + ``runs/locator_synth/locator_best.pt``; ``--weights``) and
for the Simple Baselines two-view model with the same backbone, crop and head (random weights
unless ``--baseline-weights``: latency and FLOPs do not depend on them), it reports:

* **FLOPs per stereo pair** (``torch.utils.flop_counter.FlopCounterMode``; 1 multiply-add = 2
  FLOPs) of the pose network (both crops) and of the locator (both full frames);
* **peak**: the best of a few large float32 matmuls (``--matmul-size``) as the machine's ceiling;
* **latency per variant** (median of ``--iters`` calls, median over ``--repeats`` interleaved
  rounds) of the pose network (``forward_heatmaps`` of one pair) and the locator (two frames):
  ``eager`` (NCHW float32), ``channels_last`` (what the estimator runs), ``+fused BN`` (every
  BatchNorm folded into its convolution / transposed convolution), ``torch.compile`` (inductor),
  ``onnxruntime`` (float32, the exported network; ORT folds BN itself), ``onnxruntime int8``
  (static QDQ quantisation, per-channel weights, calibrated on ``--calib`` training crops; only
  Conv/ConvTranspose are quantised, the camera algebra stays float), and the achieved fraction
  of the peak;
* **accuracy of every variant** on ``--samples`` pairs of the synthetic validation split with
  the ground-truth person boxes (so that only the pose network changes): MPJPE (mm) after the
  weighted DLT, with SVD and with the iterative DLT, the change against float32 eager, and the
  triangulation time of each DLT;
* for the locator variants: the mean IoU of their boxes with the float32 locator's.

Writes ``benchmarks/results/model.json`` (``--out``) and prints Markdown tables. The JSON has the
1-minute load average before and after: other processes on the cores inflate every latency.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import itertools
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from stereo_pose3d.checkpoint import load_model  # noqa: E402
from stereo_pose3d.metrics import mpjpe  # noqa: E402
from stereo_pose3d.models import PoseSystem, build_model, system_config  # noqa: E402
from stereo_pose3d.models.canonical import canonical_projections  # noqa: E402
from stereo_pose3d.models.cdrnet import CDRNet  # noqa: E402
from stereo_pose3d.models.crops import crop_regions, crop_views, letterbox  # noqa: E402
from stereo_pose3d.models.heatmaps import heatmap_to_crop, soft_argmax  # noqa: E402

SHIPPED = REPO / "stereo_pose3d" / "weights" / "cdrnet_synth.pt"
RUN_POSE = REPO / "runs" / "cdrnet_synth" / "pose_best.pt"
RUN_LOCATOR = REPO / "runs" / "locator_synth" / "locator_best.pt"
VARIANTS = ("eager", "channels_last", "fused_bn", "compile", "ort", "ort_int8")
TRAINING_PATTERN = ("training finetune-cdr", "training train-locator")


# ----------------------------------------------------------------------------------------------
# weights
# ----------------------------------------------------------------------------------------------


def load_system(weights: Path | None) -> tuple[PoseSystem, str]:
    """The system to measure and where it came from: ``weights`` (a system file), else the
    shipped file, else the training runs' pose + locator, else random weights."""
    if weights is not None:
        system, _ = load_model(weights, expect="system")
        return system, str(weights)
    if SHIPPED.exists():
        system, _ = load_model(SHIPPED, expect="system")
        return system, str(SHIPPED.relative_to(REPO))
    if RUN_POSE.exists():
        pose, _ = load_model(RUN_POSE)
        if RUN_LOCATOR.exists():
            loc, _ = load_model(RUN_LOCATOR)
            src = f"{RUN_POSE.relative_to(REPO)} + {RUN_LOCATOR.relative_to(REPO)}"
        else:
            from stereo_pose3d.models import locator_config

            loc = build_model(locator_config(), pretrained=False).eval()
            src = f"{RUN_POSE.relative_to(REPO)} + random locator"
        config = system_config(pose.config, loc.config)
        return PoseSystem(config, pose, loc).eval(), src
    from stereo_pose3d.models import locator_config, pose_config

    config = system_config(pose_config("cdrnet", "resnet18", (128, 128)), locator_config())
    return build_model(config, pretrained=False).eval(), "random weights (no trained model found)"


def write_system_file(weights: Path | None, directory: Path) -> tuple[Path, str]:
    """A system checkpoint file for the node (the shipped one when it exists)."""
    if weights is not None:
        return weights, str(weights)
    if SHIPPED.exists():
        return SHIPPED, str(SHIPPED.relative_to(REPO))
    from stereo_pose3d.checkpoint import save_checkpoint

    system, src = load_system(None)
    path = directory / "system.pt"
    save_checkpoint(path, system, system.config, {"note": f"bench: {src}"})
    return path, src


# ----------------------------------------------------------------------------------------------
# BN folding and exportable cores
# ----------------------------------------------------------------------------------------------


def fold_batchnorm(model: nn.Module) -> tuple[nn.Module, int]:
    """A copy of ``model`` (eval) with every BatchNorm2d that directly follows a Conv2d or
    ConvTranspose2d (adjacent children in registration order, which is their call order in
    these networks: Sequential, torchvision blocks, the ResNet stem) folded into it."""
    model = copy.deepcopy(model).eval()
    folded = 0
    for parent in model.modules():
        names = list(parent._modules)
        for a, b in itertools.pairwise(names):
            conv, bn = parent._modules[a], parent._modules[b]
            if not isinstance(bn, nn.BatchNorm2d) or not isinstance(
                conv, nn.Conv2d | nn.ConvTranspose2d
            ):
                continue
            scale = bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps)
            shift = bn.bias.detach() - bn.running_mean * scale
            w = conv.weight.detach()
            if isinstance(conv, nn.ConvTranspose2d):  # (in, out / groups, kh, kw)
                w = w * scale.view(1, -1, 1, 1)
            else:  # (out, in / groups, kh, kw)
                w = w * scale.view(-1, 1, 1, 1)
            bias = conv.bias.detach() * scale + shift if conv.bias is not None else shift
            conv.weight = nn.Parameter(w)
            conv.bias = nn.Parameter(bias)
            parent._modules[b] = nn.Identity()
            folded += 1
    return model, folded


class PoseCore(nn.Module):
    """The pose network's heatmaps as a traceable function of plain tensors.

    ``forward(x (B*V, 3, H, W), P_c (B, V, 3, 4), P_pinv (B, V, 4, 3)) -> (B*V, J, h, w)`` where
    ``P_c`` are the canonical projections and ``P_pinv`` their pseudo-inverses (computed outside:
    ``torch.linalg.pinv`` does not export to ONNX). Same arithmetic as ``forward_heatmaps``
    (checked against it in :func:`main`). The baseline ignores ``P_c`` and ``P_pinv``.
    """

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        self.cdr = isinstance(net, CDRNet)

    def forward(self, x: torch.Tensor, P_c: torch.Tensor, P_pinv: torch.Tensor) -> torch.Tensor:
        net = self.net
        if not self.cdr:
            return net.head(net.backbone(x))
        B, V = P_c.shape[0], P_c.shape[1]
        z = net.encode(net.backbone(x))
        h, w = z.shape[-2], z.shape[-1]
        canonical = (P_pinv @ z.reshape(B, V, 3, -1)).reshape(B * V, -1, h, w)
        pooled = net.fuse_view(canonical).reshape(B, V, -1, h, w).mean(dim=1)
        fused = net.fuse(pooled)
        per_view = (P_c @ fused.reshape(B, 1, 4, -1)).reshape(B * V, net.latent_channels, h, w)
        if x.is_contiguous(memory_format=torch.channels_last):
            per_view = per_view.contiguous(memory_format=torch.channels_last)
        return net.head(net.lift(per_view))


class LocatorCore(nn.Module):
    """The locator's output maps as a tuple (exportable): ``centre, offset, size``."""

    def __init__(self, locator: nn.Module) -> None:
        super().__init__()
        self.locator = locator

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        out = self.locator(x)
        return out["centre"], out["offset"], out["size"]


def camera_inputs(net: nn.Module, P: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``P (B, V, 3, 4)`` crop-adjusted -> ``P_c``, ``pinv(P_c)`` float32 (outside the cores)."""
    P_c, _, _ = canonical_projections(P.float(), net.input_size)
    return P_c, torch.linalg.pinv(P_c)


# ----------------------------------------------------------------------------------------------
# variants: each is fn(x (N, 3, H, W), P_c, P_pinv) -> heatmaps / locator maps (torch tensors)
# ----------------------------------------------------------------------------------------------


def export_onnx(core: nn.Module, args: tuple[torch.Tensor, ...], path: Path) -> list[str]:
    """Export ``core`` with static shapes; returns the ONNX input names actually kept."""
    names = ["x", "P_c", "P_pinv"][: len(args)]
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        torch.onnx.export(core, args, str(path), input_names=names, opset_version=17, dynamo=False)
    import onnx

    graph_inputs = {i.name for i in onnx.load(str(path)).graph.input}
    return [n for n in names if n in graph_inputs]


class CalibrationReader:
    """onnxruntime.quantization calibration data: a list of feed dicts."""

    def __init__(self, feeds: list[dict[str, np.ndarray]]) -> None:
        self.feeds = iter(feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self.feeds, None)


def ort_session(path: Path, threads: int):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def quantize_int8(src: Path, dst: Path, feeds: list[dict[str, np.ndarray]]) -> None:
    """Static QDQ int8 (per-channel weights, uint8 activations) of the Conv/ConvTranspose nodes."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    pre = dst.with_suffix(".pre.onnx")
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        quantize_static(
            str(pre),
            str(dst),
            CalibrationReader(feeds),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            op_types_to_quantize=["Conv", "ConvTranspose"],
        )


def build_variants(
    core: nn.Module,
    example: tuple[torch.Tensor, ...],
    calib: list[tuple[torch.Tensor, ...]],
    names: tuple[str, ...],
    device: torch.device,
    workdir: Path,
    tag: str,
    notes: dict[str, str],
) -> dict[str, Callable[..., Any]]:
    """Variant name -> callable(*inputs) for one core (pose or locator)."""
    variants: dict[str, Callable[..., Any]] = {}
    cl = torch.channels_last
    eager = core.to(device).eval()
    if "eager" in names:
        variants["eager"] = lambda *a: eager(*a)
    if "channels_last" in names:
        core_cl = copy.deepcopy(core).to(device, memory_format=cl)
        variants["channels_last"] = lambda x, *a: core_cl(x.contiguous(memory_format=cl), *a)
    folded, count = fold_batchnorm(core)
    folded = folded.to(device, memory_format=cl)
    notes[f"{tag}_bn_folded"] = str(count)
    if "fused_bn" in names:
        variants["fused_bn"] = lambda x, *a: folded(x.contiguous(memory_format=cl), *a)
    if "compile" in names:
        try:
            t0 = time.perf_counter()
            compiled = torch.compile(folded)
            with torch.inference_mode():
                compiled(example[0].contiguous(memory_format=cl), *example[1:])
            notes[f"{tag}_compile_s"] = f"{time.perf_counter() - t0:.1f}"
            variants["compile"] = lambda x, *a: compiled(x.contiguous(memory_format=cl), *a)
        except Exception as exc:  # no compiler, unsupported op: report, keep going
            notes[f"{tag}_compile"] = f"failed: {type(exc).__name__}: {str(exc)[:200]}"
    if device.type == "cpu" and ("ort" in names or "ort_int8" in names):
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            notes[f"{tag}_ort"] = "onnxruntime not installed"
            return variants
        cpu_example = tuple(t.cpu() for t in example)
        path = workdir / f"{tag}.onnx"
        try:
            kept = export_onnx(copy.deepcopy(core).cpu().eval(), cpu_example, path)
        except Exception as exc:  # onnx missing, an op without an ONNX mapping
            notes[f"{tag}_ort"] = f"export failed: {type(exc).__name__}: {str(exc)[:200]}"
            return variants
        threads = torch.get_num_threads()

        def feed_of(tensors: tuple[torch.Tensor, ...]) -> dict[str, np.ndarray]:
            names_in = ("x", "P_c", "P_pinv")[: len(tensors)]
            return {
                n: t.contiguous().cpu().numpy()
                for n, t in zip(names_in, tensors, strict=True)
                if n in kept
            }

        def runner(session):
            def run(*a: torch.Tensor):
                outs = session.run(None, feed_of(a))
                return outs[0] if len(outs) == 1 else tuple(outs)

            return run

        if "ort" in names:
            variants["ort"] = runner(ort_session(path, threads))
        if "ort_int8" in names:
            feeds = [feed_of(c) for c in calib]
            q = workdir / f"{tag}_int8.onnx"
            try:
                quantize_int8(path, q, feeds)
                variants["ort_int8"] = runner(ort_session(q, threads))
                notes[f"{tag}_int8_mb"] = f"{q.stat().st_size / 1e6:.1f}"
            except Exception as exc:
                notes[f"{tag}_ort_int8"] = f"failed: {type(exc).__name__}: {str(exc)[:200]}"
        notes[f"{tag}_onnx_mb"] = f"{path.stat().st_size / 1e6:.1f}"
    return variants


def as_torch(out: Any) -> Any:
    if isinstance(out, tuple):
        return tuple(as_torch(o) for o in out)
    return torch.as_tensor(out)


def time_call(fn: Callable[[], Any], iters: int, warmup: int, device: torch.device) -> list[float]:
    """Milliseconds of ``iters`` calls after ``warmup`` calls (synchronised on CUDA)."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    with torch.inference_mode():
        for _ in range(warmup):
            fn()
        sync()
        out = []
        for _ in range(iters):
            t0 = time.perf_counter()
            fn()
            sync()
            out.append((time.perf_counter() - t0) * 1e3)
    return out


def matmul_peak(n: int, device: torch.device, reps: int = 5) -> dict[str, float]:
    """Best float32 GEMM throughput, GFLOP/s (2 n^3 FLOPs per n x n product), two ways:
    ``matmul`` (``torch.mm``: MKL sgemm in the CPU wheels) and ``conv1x1`` (the same GEMM as a
    channels_last 1x1 convolution of an ``(1, n, 32, n / 32)`` input: oneDNN, the library that
    runs the networks' convolutions). ``peak`` is the larger one: the ceiling."""
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    mm = 2 * n**3 / (min(time_call(lambda: a @ b, reps, 1, device)) / 1e3) / 1e9
    x = torch.randn(1, n, 32, n // 32, device=device).contiguous(memory_format=torch.channels_last)
    conv = nn.Conv2d(n, n, 1, bias=False).to(device, memory_format=torch.channels_last).eval()
    gemm = 2 * n * n * 32 * (n // 32)
    c1 = gemm / (min(time_call(lambda: conv(x), reps, 1, device)) / 1e3) / 1e9
    return {"matmul": mm, "conv1x1": c1, "peak": max(mm, c1)}


def count_flops(fn: Callable[[], Any]) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


# ----------------------------------------------------------------------------------------------
# data
# ----------------------------------------------------------------------------------------------


def pick(root: Path, count: int, offset: int = 0) -> list[dict[str, Any]]:
    """``count`` samples spread evenly over a dataset (every k-th complete sample)."""
    from training.data.stereo_dataset import StereoDataset

    ds = StereoDataset(root)
    n = len(ds)
    if n == 0 or count <= 0:
        return []
    idx = np.unique(np.linspace(0, n - 1, min(count, n)).round().astype(int))
    idx = (idx + offset) % n
    return [ds[int(i)] for i in idx]


def pose_inputs(
    net: nn.Module, sample: dict[str, Any], crop_scale: float, min_box_fraction: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Ground-truth-box crops of a sample: ``images (1, 2, 3, h, w)``, ``P_crop (1, 2, 3, 4)``."""
    P = np.stack([sample["P_left"], sample["P_right"]])
    images = (sample["left"], sample["right"])
    regions = crop_regions(sample["box"], P, images[0].shape[0], crop_scale, min_box_fraction)
    crops, P_crop, _ = crop_views(images, P, regions, tuple(net.input_size))
    x = torch.from_numpy(crops).permute(0, 3, 1, 2).float().div_(255.0)
    norm = net.config["normalization"]
    x = (x - torch.tensor(norm["mean"]).view(1, 3, 1, 1)) / torch.tensor(norm["std"]).view(
        1, 3, 1, 1
    )
    return x.unsqueeze(0), torch.as_tensor(P_crop, dtype=torch.float32).unsqueeze(0)


def locator_input(locator: nn.Module, sample: dict[str, Any]) -> tuple[torch.Tensor, np.ndarray]:
    """Both frames letterboxed and normalised ``(2, 3, H, W)`` and the letterbox transforms."""
    size = tuple(locator.config["input_size"])
    boxed = [letterbox(im, size) for im in (sample["left"], sample["right"])]
    x = torch.from_numpy(np.stack([b[0] for b in boxed])).permute(0, 3, 1, 2).float() / 255.0
    norm = locator.config["normalization"]
    x = (x - torch.tensor(norm["mean"]).view(1, 3, 1, 1)) / torch.tensor(norm["std"]).view(
        1, 3, 1, 1
    )
    return x, np.stack([b[1] for b in boxed])


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    lt = np.maximum(a[..., :2], b[..., :2])
    rb = np.minimum(a[..., 2:], b[..., 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=-1)
    area = lambda x: np.prod(np.clip(x[..., 2:] - x[..., :2], 0, None), axis=-1)  # noqa: E731
    return inter / np.maximum(area(a) + area(b) - inter, 1e-9)


# ----------------------------------------------------------------------------------------------
# one architecture
# ----------------------------------------------------------------------------------------------


def bench_arch(
    name: str,
    pose: nn.Module,
    locator: nn.Module,
    trained: bool,
    val: list[dict[str, Any]],
    calib: list[dict[str, Any]],
    settings: dict[str, Any],
    args: argparse.Namespace,
    peak_gflops: float,
    workdir: Path,
    with_locator: bool = True,
) -> dict[str, Any]:
    device = torch.device(args.device)
    pose = pose.to(device).eval()
    locator = locator.to(device).eval()
    crop = (settings["crop_scale"], settings["min_box_fraction"])
    notes: dict[str, str] = {}
    W, H = pose.input_size
    if val:
        images, P = pose_inputs(pose, val[0], *crop)
        loc_x, _ = locator_input(locator, val[0])
    else:  # no dataset: synthetic inputs (latency and FLOPs only)
        images = torch.randn(1, 2, 3, H, W)
        P = torch.tensor([[[200.0, 0, W / 2, 0], [0, 200, H / 2, 0], [0, 0, 1, 0]]]).repeat(2, 1, 1)
        P[1, 0, 3] = -20.0
        P = P.unsqueeze(0)
        lw, lh = locator.config["input_size"]
        loc_x = torch.randn(2, 3, lh, lw)
    images, P, loc_x = images.to(device), P.to(device), loc_x.to(device)
    P_c, P_pinv = camera_inputs(pose, P)
    x = images.flatten(0, 1)

    flops_pose = count_flops(lambda: pose.forward_2d(images, P))
    flops_loc = count_flops(lambda: locator(loc_x))

    core = PoseCore(pose).eval()
    with torch.inference_mode():
        ref = pose.forward_heatmaps(images, P).flatten(0, 1)
        mine = core(x, P_c, P_pinv)
    notes["core_vs_forward_heatmaps_max_abs"] = f"{(ref - mine).abs().max().item():.2e}"

    def calib_pose(s):
        im, Pc = pose_inputs(pose, s, *crop)
        return (im.flatten(0, 1), *camera_inputs(pose, Pc))

    pose_calib = [calib_pose(s) for s in calib] or [(x, P_c, P_pinv)]
    loc_calib = [(locator_input(locator, s)[0],) for s in calib] or [(loc_x,)]
    names = tuple(v for v in VARIANTS if v in args.variants)
    pose_vars = build_variants(
        core, (x, P_c, P_pinv), pose_calib, names, device, workdir, f"{name}_pose", notes
    )
    loc_vars = (
        build_variants(
            LocatorCore(locator), (loc_x,), loc_calib, names, device, workdir, "locator", notes
        )
        if with_locator
        else {}
    )
    print(f"[{name}] variants built: {sorted(pose_vars)}", file=sys.stderr)

    # latency: interleaved rounds so that load changes hit every variant alike
    rounds: dict[str, dict[str, list[float]]] = {v: {"pose": [], "locator": []} for v in pose_vars}
    for _ in range(args.repeats):
        for v in pose_vars:
            ms = time_call(lambda v=v: pose_vars[v](x, P_c, P_pinv), args.iters, args.warmup,
                           device)  # fmt: skip
            rounds[v]["pose"].append(statistics.median(ms))
            if v in loc_vars:
                ms = time_call(lambda v=v: loc_vars[v](loc_x), args.iters, args.warmup, device)
                rounds[v]["locator"].append(statistics.median(ms))
    latency = {}
    for v, r in rounds.items():
        pose_ms = statistics.median(r["pose"])
        loc_ms = statistics.median(r["locator"]) if r["locator"] else float("nan")
        latency[v] = {
            "pose_ms": pose_ms,
            "locator_ms": loc_ms,
            "pose_rounds_ms": r["pose"],
            "locator_rounds_ms": r["locator"],
            "pose_fraction_of_peak": flops_pose / (pose_ms / 1e3) / 1e9 / peak_gflops,
            "locator_fraction_of_peak": flops_loc / (loc_ms / 1e3) / 1e9 / peak_gflops,
        }

    # triangulation time (one pair), SVD vs iterative
    with torch.inference_mode():
        out = pose.forward_2d(images, P)
    tri = {}
    for method in ("svd", "iterative"):
        pose.triangulation = method
        ms = time_call(
            lambda: pose.triangulate(out["joints_2d"], out["confidence"], P),
            args.iters, args.warmup, device,
        )  # fmt: skip
        tri[method] = statistics.median(ms)
    pose.triangulation = pose.config["triangulation"]["method"]

    # accuracy: every variant on the same validation pairs (ground-truth boxes)
    accuracy: dict[str, Any] = {}
    loc_iou: dict[str, float] = {}
    if val and trained:
        gt = np.stack([s["joints_3d_cam"] for s in val])
        inputs = [pose_inputs(pose, s, *crop) for s in val]
        preds = {v: {"svd": [], "iterative": []} for v in pose_vars}
        with torch.inference_mode():
            for im, Pc in inputs:
                im, Pc = im.to(device), Pc.to(device)
                cin = camera_inputs(pose, Pc)
                for v, fn in pose_vars.items():
                    hm = as_torch(fn(im.flatten(0, 1), *cin)).float().to(device)
                    hm = hm.unflatten(0, (1, 2))
                    stride = W / hm.shape[-1]
                    uv, conf = soft_argmax(hm, pose.beta)
                    uv = heatmap_to_crop(uv, stride)
                    for method in ("svd", "iterative"):
                        pose.triangulation = method
                        X, _ = pose.triangulate(uv, conf, Pc)
                        preds[v][method].append(X[0].double().cpu().numpy())
        pose.triangulation = pose.config["triangulation"]["method"]
        for v in pose_vars:
            accuracy[v] = {m: mpjpe(np.stack(preds[v][m]), gt) for m in ("svd", "iterative")}
        loc_ref = None
        with torch.inference_mode():
            for v, fn in loc_vars.items():
                boxes = []
                for s in val:
                    lx, _ = locator_input(locator, s)
                    c, o, sz = (t.float() for t in as_torch(fn(lx.to(device))))
                    b, _ = locator.decode({"centre": c, "offset": o, "size": sz})
                    boxes.append(b.cpu().numpy())
                boxes = np.stack(boxes)
                loc_ref = boxes if loc_ref is None else loc_ref
                loc_iou[v] = float(box_iou(boxes, loc_ref).mean())
    return {
        "name": name,
        "architecture": pose.config["architecture"],
        "backbone": pose.config["backbone"]["name"],
        "crop": [W, H],
        "trained_weights": trained,
        "params_pose_M": sum(p.numel() for p in pose.parameters()) / 1e6,
        "params_locator_M": sum(p.numel() for p in locator.parameters()) / 1e6,
        "gflops_pose_per_pair": flops_pose / 1e9,
        "gflops_locator_per_pair": flops_loc / 1e9,
        "latency": latency,
        "triangulation_ms": tri,
        "mpjpe_mm": accuracy,
        "locator_box_iou_vs_eager": loc_iou,
        "samples": len(val) if trained else 0,
        "notes": notes,
    }


# ----------------------------------------------------------------------------------------------
# report
# ----------------------------------------------------------------------------------------------

LABEL = {
    "eager": "eager NCHW fp32",
    "channels_last": "channels_last (estimator today)",
    "fused_bn": "channels_last + fused BN",
    "compile": "torch.compile (fused BN)",
    "ort": "ONNX Runtime fp32",
    "ort_int8": "ONNX Runtime int8 (static QDQ)",
}


def tables(report: dict[str, Any]) -> str:
    lines = []
    peak = report["matmul_peak_gflops"]
    for r in report["results"]:
        lines.append(
            f"\n**{r['name']}** ({r['architecture']}, {r['backbone']}, crop "
            f"{r['crop'][0]}x{r['crop'][1]}, {r['params_pose_M']:.1f}M + locator "
            f"{r['params_locator_M']:.1f}M parameters; "
            f"{'trained weights' if r['trained_weights'] else 'random weights'}): "
            f"pose network {r['gflops_pose_per_pair']:.2f} GFLOP per pair, locator "
            f"{r['gflops_locator_per_pair']:.2f} GFLOP per pair; ceiling {peak:.0f} GFLOP/s "
            f"(float32 GEMM {args_gemm(report)})\n"
        )
        lines.append(
            "| variant | pose net ms | % of peak | locator ms | % of peak | pose + locator ms "
            "| MPJPE svd (mm) | MPJPE iterative (mm) |"
        )
        lines.append("|" + "---|" * 8)
        base = r["mpjpe_mm"].get("eager")
        for v, lat in r["latency"].items():
            acc = r["mpjpe_mm"].get(v)

            def fmt_acc(m: str, acc=acc, base=base) -> str:
                if not acc:
                    return "-"
                delta = acc[m] - base[m] if base else float("nan")
                return f"{acc[m]:.1f} ({delta:+.1f})"

            def num(x: float, pattern: str = "{:.1f}") -> str:
                return "-" if not np.isfinite(x) else pattern.format(x)

            lines.append(
                f"| {LABEL.get(v, v)} | {lat['pose_ms']:.1f} "
                f"| {100 * lat['pose_fraction_of_peak']:.0f}% | {num(lat['locator_ms'])} "
                f"| {num(100 * lat['locator_fraction_of_peak'], '{:.0f}%')} "
                f"| {num(lat['pose_ms'] + lat['locator_ms'])} | {fmt_acc('svd')} "
                f"| {fmt_acc('iterative')} |"
            )
        tri = r["triangulation_ms"]
        iou = r["locator_box_iou_vs_eager"]
        lines.append(
            f"\nDLT per pair: SVD {tri['svd']:.2f} ms, iterative {tri['iterative']:.2f} ms."
            + (" Locator box IoU vs fp32: " if iou else "")
            + ", ".join(f"{k} {v:.3f}" for k, v in iou.items())
        )
        if r["notes"]:
            lines.append("Notes: " + "; ".join(f"{k}={v}" for k, v in r["notes"].items()))
    return "\n".join(lines)


def args_gemm(report: dict[str, Any]) -> str:
    g = report.get("gemm_gflops", {})
    n = report.get("matmul_size")
    return f"n={n}: torch.mm {g.get('matmul', 0):.0f}, 1x1 conv {g.get('conv1x1', 0):.0f} GFLOP/s"


def machine_record(load_before: tuple[float, float, float], busy: bool) -> dict:
    """The machine and its load around a measurement, as every benchmark report records it."""
    return {
        "cpu_count": os.cpu_count(),
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "training_running": busy,
        "platform": platform.platform(),
        "processor": platform.processor(),
    }


def training_running() -> bool:
    import subprocess

    for pattern in TRAINING_PATTERN:
        res = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True)
        if res.stdout.strip():
            return True
    return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", type=Path, help="system checkpoint (default: shipped)")
    parser.add_argument("--baseline-weights", type=Path, help="a baseline pose checkpoint")
    parser.add_argument("--val", type=Path, default=REPO / "data" / "synth_val")
    parser.add_argument("--train", type=Path, default=REPO / "data" / "synth_train",
                        help="calibration crops for int8")  # fmt: skip
    parser.add_argument("--samples", type=int, default=48, help="validation pairs for MPJPE")
    parser.add_argument("--calib", type=int, default=32, help="calibration pairs for int8")
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds (median)")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--archs", nargs="+", default=["cdrnet", "baseline"])
    parser.add_argument("--device", default="cpu", help="cpu | cuda[:N]")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    parser.add_argument("--matmul-size", type=int, default=2048)
    parser.add_argument("--quick", action="store_true", help="smoke test: tiny counts")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "model.json")
    args = parser.parse_args(argv)
    if args.quick:
        args.samples, args.calib, args.iters, args.warmup, args.repeats = 4, 2, 2, 1, 1
        args.matmul_size = 512
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda":  # ONNX Runtime here is the CPU build
        args.variants = [v for v in args.variants if not v.startswith("ort")]
    load_before = os.getloadavg()
    busy = training_running()
    torch.manual_seed(0)
    system, source = load_system(args.weights)
    trained = not source.startswith("random")
    settings = system.config.get("estimator", {})
    from stereo_pose3d.models.config import DEFAULT_ESTIMATOR

    settings = {**DEFAULT_ESTIMATOR, **settings}
    val = pick(args.val, args.samples) if args.val.exists() else []
    calib = pick(args.train, args.calib, offset=7) if args.train.exists() else []
    ceiling = matmul_peak(args.matmul_size, device)
    peak = ceiling["peak"]
    print(f"GEMM ceiling {ceiling}", file=sys.stderr)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for arch in args.archs:
            if arch == "cdrnet":
                pose, is_trained = system.pose, trained
            else:
                cfg = copy.deepcopy(system.pose.config)
                cfg["architecture"] = "baseline"
                cfg.pop("cdr", None)
                if args.baseline_weights:  # a pose checkpoint or a system file
                    pose, _ = load_model(args.baseline_weights)
                    pose = pose.pose if isinstance(pose, PoseSystem) else pose
                    is_trained = True
                else:
                    pose, is_trained = build_model(cfg, pretrained=False).eval(), False
            result = bench_arch(
                arch, pose, system.locator, is_trained, val, calib, settings, args, peak, Path(tmp),
                with_locator=not results,  # the same locator for every architecture: once
            )  # fmt: skip
            results.append(result)
    import importlib.metadata as md

    def version(pkg: str) -> str | None:
        try:
            return md.version(pkg)
        except md.PackageNotFoundError:
            return None

    report = {
        "benchmark": "pose network + locator per stereo pair: FLOPs, peak, variants, accuracy",
        "weights": source,
        "device": str(device),
        "torch": torch.__version__,
        "onnxruntime": version("onnxruntime"),
        "cpu_threads": torch.get_num_threads(),
        **machine_record(load_before, busy),
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "matmul_peak_gflops": peak,
        "gemm_gflops": ceiling,
        "matmul_size": args.matmul_size,
        "val_samples": len(val),
        "calib_samples": len(calib),
        "args": {k: str(v) for k, v in vars(args).items()},
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(tables(report))
    la, lb = report["load_average_before"], report["load_average_after"]
    print(
        f"\nload average (1/5/15 min) before {la[0]:.2f}/{la[1]:.2f}/{la[2]:.2f}, after "
        f"{lb[0]:.2f}/{lb[1]:.2f}/{lb[2]:.2f} on {os.cpu_count()} cores; training running: {busy}"
    )
    print(f"written {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
