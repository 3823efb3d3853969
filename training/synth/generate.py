"""Generate the synthetic stereo dataset in parallel, deterministically by seed.

The dataset is cut into *rigs*: rig ``r`` renders ``frames_per_rig`` frames of one clip from one
random camera rig and scene, into the sequence ``<clip>_<r:03d>``. The frames are sorted random
times of one pass through the clip (snapshots: the default, most varied for training) or, with
``fps > 0``, consecutive frames of a video at that rate from a random start (continuous
sequences, on which temporal filters can be evaluated). Everything about rig ``r`` derives from
``SeedSequence([seed, crc32(split), r, attempt])`` alone, so the output does not depend on the
number of workers or their scheduling. Each worker process owns one pybullet DIRECT client and
writes its rigs' samples itself.
"""

from __future__ import annotations

import math
import multiprocessing as mp
import os
import time
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from stereo_pose3d.skeleton import SYNTHETIC

from .motion import CLIP_NAMES, clips_for_split, load_clip

GENERATOR_VERSION = 1
MAX_ATTEMPTS = 8


@dataclass(frozen=True)
class DatasetConfig:
    """Parameters that define a synthetic dataset (stored in ``dataset.json``)."""

    split: str = "train"
    frames: int = 1000
    seed: int = 0
    frames_per_rig: int = 8
    width: int = 640
    height: int = 480
    raw_fraction: float = 0.0  # share of rigs that are raw (verged, distorted) pairs
    supersample: int = 2
    jpeg_quality: int = 95
    occluder_probability: float = 0.3
    fps: float = 0.0  # > 0: consecutive frames at this rate (video); 0: random snapshots

    @property
    def num_rigs(self) -> int:
        return math.ceil(self.frames / self.frames_per_rig)

    def rig_frames(self, rig: int) -> int:
        return min(self.frames_per_rig, self.frames - rig * self.frames_per_rig)


def rig_seed(cfg: DatasetConfig, rig: int, attempt: int = 0) -> np.random.SeedSequence:
    return np.random.SeedSequence([int(cfg.seed), zlib.crc32(cfg.split.encode()), rig, attempt])


def plan_rig(renderer, cfg: DatasetConfig, rig: int):
    """The :class:`~training.synth.render.Plan` of rig ``rig`` (retries with the next attempt
    seed in the rare case no camera placement fits)."""
    clips = clips_for_split(cfg.split)
    last: Exception | None = None
    for attempt in range(MAX_ATTEMPTS):
        choose_ss, plan_ss = rig_seed(cfg, rig, attempt).spawn(2)
        rng = np.random.default_rng(choose_ss)
        clip = str(rng.choice(clips))
        raw = bool(rng.random() < cfg.raw_fraction)
        times = rig_times(rng, load_clip(clip).duration, cfg.rig_frames(rig), cfg.fps)
        try:
            return renderer.plan(
                plan_ss,
                clip,
                times,
                raw=raw,
                follow=False,
                occluder_probability=cfg.occluder_probability,
            )
        except RuntimeError as exc:
            last = exc
    raise RuntimeError(f"rig {rig}: {last}")


def rig_times(rng: np.random.Generator, duration: float, frames: int, fps: float) -> np.ndarray:
    """Clip times (s) of a rig's ``frames``: sorted uniform snapshots of one pass through the clip
    (``fps <= 0``), or ``frames`` consecutive video frames at ``fps`` from a random start that
    keeps them inside the clip when it is long enough (clips past their end loop or hold)."""
    if fps <= 0:
        return np.sort(rng.uniform(0.0, duration, frames))
    span = (frames - 1) / fps
    start = rng.uniform(0.0, max(0.0, duration - span))
    return start + np.arange(frames) / fps


def sequence_name(clip: str, rig: int) -> str:
    return f"{clip}_{rig:03d}"


# --------------------------------------------------------------------------------------------
# Workers
# --------------------------------------------------------------------------------------------

_WORKER: dict = {}


def _limit_threads() -> None:
    """One thread per worker for OpenCV (the workers are the parallelism)."""
    import cv2

    cv2.setNumThreads(1)


def _init_worker(cfg: DatasetConfig, out: str) -> None:
    from training.data.stereo_dataset import StereoDatasetWriter

    from .render import SynthRenderer

    _limit_threads()
    _WORKER["cfg"] = cfg
    _WORKER["renderer"] = SynthRenderer(cfg.width, cfg.height, cfg.supersample)
    _WORKER["writer"] = StereoDatasetWriter.attach(out, jpeg_quality=cfg.jpeg_quality)


def _rig_complete(out: Path, cfg: DatasetConfig, rig: int) -> bool:
    """True if every label file of ``rig`` exists (any clip name: found by the rig suffix)."""
    n = cfg.rig_frames(rig)
    for clip in CLIP_NAMES:
        seq = out / sequence_name(clip, rig)
        if seq.is_dir():
            return all((seq / f"{f:06d}.npz").exists() for f in range(n))
    return False


def _render_rig(rig: int) -> int:
    cfg: DatasetConfig = _WORKER["cfg"]
    renderer = _WORKER["renderer"]
    writer = _WORKER["writer"]
    plan = plan_rig(renderer, cfg, rig)
    seq = sequence_name(plan.clip, rig)
    for f, frame in enumerate(renderer.frames(plan)):
        writer.write_sample(seq, f, frame.images[0], frame.images[1], frame.labels)
    return plan.num_frames


def _close_worker() -> None:
    renderer = _WORKER.pop("renderer", None)
    if renderer is not None:
        renderer.close()


# --------------------------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------------------------


def dataset_info(cfg: DatasetConfig) -> dict:
    """The extra ``dataset.json`` fields of a synthetic dataset."""
    raw = "mixed" if 0.0 < cfg.raw_fraction < 1.0 else cfg.raw_fraction <= 0.0
    return {
        "generator": "training.synth",
        "generator_version": GENERATOR_VERSION,
        "config": asdict(cfg),
        "clips": list(clips_for_split(cfg.split)),
        "rectified": raw,
        "world_frame": "z up, metres; the floor is at the clip's floor height (z <= 0)",
        "humanoid": "pybullet_data humanoid/humanoid.urdf, globalScaling=0.25",
    }


def generate_dataset(
    out: str | Path,
    cfg: DatasetConfig,
    *,
    workers: int | None = None,
    progress: bool = True,
    resume: bool = True,
) -> dict:
    """Write ``cfg.frames`` stereo samples to ``out``; returns a summary with the rate.

    An existing dataset at ``out`` is continued (complete rigs are skipped) when it was made with
    the same config; a different config raises ValueError.
    """
    from tqdm import tqdm

    from training.data.stereo_dataset import INFO_FILE, StereoDatasetWriter, read_info

    out = Path(out)
    clips_for_split(cfg.split)  # validates the split early
    if cfg.frames < 1 or cfg.frames_per_rig < 1:
        raise ValueError("frames and frames_per_rig must be >= 1")
    if not math.isfinite(cfg.fps) or cfg.fps < 0:
        raise ValueError(f"fps must be >= 0 (0 = random snapshots), got {cfg.fps}")
    info = dataset_info(cfg)
    if (out / INFO_FILE).exists():
        existing = read_info(out)
        # Datasets written before a field existed hold its default.
        existing_config = {**asdict(DatasetConfig()), **(existing.get("config") or {})}
        if existing_config != info["config"]:
            raise ValueError(
                f"{out} holds a dataset with a different config {existing.get('config')}; "
                "choose another --out or remove it"
            )
    StereoDatasetWriter(
        out,
        source="synthetic",
        split=cfg.split,
        skeleton=SYNTHETIC.name,
        joint_names=SYNTHETIC.joint_names,
        image_size=(cfg.width, cfg.height),
        extra=info,
        jpeg_quality=cfg.jpeg_quality,
    )
    rigs = [r for r in range(cfg.num_rigs) if not (resume and _rig_complete(out, cfg, r))]
    todo = sum(cfg.rig_frames(r) for r in rigs)
    workers = default_workers() if workers is None else max(1, int(workers))
    workers = min(workers, max(1, len(rigs)))
    start = time.perf_counter()
    bar = tqdm(total=todo, desc=f"synth {cfg.split}", unit="pair", disable=not progress)
    done = 0
    if workers == 1:
        _init_worker(cfg, str(out))
        try:
            for r in rigs:
                n = _render_rig(r)
                done += n
                bar.update(n)
        finally:
            _close_worker()
    else:
        # Fresh interpreters: forking a parent whose OpenCV / OpenMP thread pools are running can
        # deadlock the children; each worker pays ~2 s of imports once.
        ctx = mp.get_context("spawn")
        with ctx.Pool(workers, initializer=_init_worker, initargs=(cfg, str(out))) as pool:
            for n in pool.imap_unordered(_render_rig, rigs, chunksize=1):
                done += n
                bar.update(n)
    bar.close()
    elapsed = time.perf_counter() - start
    return {
        "out": str(out),
        "frames_written": done,
        "frames_total": cfg.frames,
        "rigs": len(rigs),
        "workers": workers,
        "seconds": elapsed,
        "pairs_per_second": done / elapsed if elapsed > 0 else float("nan"),
    }


def default_workers() -> int:
    """Worker processes: the CPUs this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - non-Linux
        return max(1, os.cpu_count() or 1)
