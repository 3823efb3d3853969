"""The training engine: plain PyTorch with DDP (``torchrun``), AMP, TensorBoard, exact resume.

One loop serves every stage (``training.train`` supplies a :class:`Task` with the loss and the
validation). What it does:

* **Devices / processes.** One process per GPU (or one CPU process). ``torchrun`` sets
  ``WORLD_SIZE`` / ``RANK`` / ``LOCAL_RANK``; with ``WORLD_SIZE > 1`` the process group is
  initialised from the environment (``nccl`` on CUDA, ``gloo`` on CPU), the model is wrapped in
  ``DistributedDataParallel`` and every rank reads its own shard of each epoch. Rank 0 alone
  prints, logs and writes checkpoints.
* **Mixed precision** on CUDA (``torch.autocast`` fp16 + ``GradScaler``, or bf16 without scaler);
  off on CPU. The task computes its losses in float32.
* **Determinism and resume.** The data order is a function of ``(seed, epoch)``
  (:class:`ResumableSampler`), each sample's augmentation a function of ``(seed, epoch, index)``
  (:class:`EpochSeededDataset`), so neither depends on worker processes or on where a run was
  interrupted. A checkpoint stores model, optimizer, LR scheduler, grad scaler, step, epoch, the
  batch position inside the epoch, the best metric and every RNG state (per rank). Resuming
  skips the batches already seen and continues with the identical next batch: on CPU a resumed
  run reaches bit-identical parameters (tested with ``kill -9``).
* **Checkpoints** are written atomically (temporary file in the same folder, fsync,
  ``os.replace``): ``checkpoints/last.pt`` (+ ``last.json``: step, epoch, metrics) every
  ``ckpt_every`` steps and at the end, numbered
  snapshots every ``snapshot_every`` steps (``keep_snapshots`` kept), ``checkpoints/best.pt``
  (weights and metrics, no optimizer state) whenever the validation metric improves.
* **Fitting a time budget.** With ``fit_to_budget`` and ``max_minutes``, the run measures its
  speed over the first ``budget_calibration_steps`` steps and plans its total number of steps
  (at most ``max_steps``) so that the LR schedule ends when the budget does; every
  ``replan_every`` steps it re-measures (machines shared with other jobs change speed) and
  adjusts the plan. The task's warm-up fractions refer to the first plan. Plans are stored in
  checkpoints; a run that re-plans is not bit-reproducible across a resume (timing-dependent).
* **Stopping.** ``max_steps``; a wall-clock budget (``max_minutes``: stops in time to write the
  last checkpoint); SIGTERM / SIGINT (checkpoint, then exit). In DDP rank 0 decides and every
  rank follows.
* **Progress** with tqdm (rank 0) and TensorBoard scalars under ``<run_dir>/tb``; validation
  metrics are also appended to ``<run_dir>/metrics.jsonl``.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler

__all__ = [
    "CHECKPOINT_FORMAT",
    "DistInfo",
    "EngineConfig",
    "EpochSeededDataset",
    "FitResult",
    "ResumableSampler",
    "Task",
    "atomic_torch_save",
    "build_optimizer",
    "build_scheduler",
    "cleanup_distributed",
    "fit",
    "load_training_checkpoint",
    "setup_distributed",
]

CHECKPOINT_FORMAT = "stereo_pose3d.train/1"


# --------------------------------------------------------------------------------------------
# Distributed setup
# --------------------------------------------------------------------------------------------


@dataclass
class DistInfo:
    """Where this process runs: ``rank`` of ``world_size``, its ``device``."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def setup_distributed(device: str = "auto") -> DistInfo:
    """Initialise ``torch.distributed`` from the ``torchrun`` environment when ``WORLD_SIZE > 1``.

    Args:
        device: ``"auto"`` (CUDA when available), ``"cuda"`` or ``"cpu"``.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() if device == "auto" else device.startswith("cuda")
    if use_cuda and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' requested but CUDA is not available")
    if use_cuda:
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
        dev = torch.device("cuda", torch.cuda.current_device())
    else:
        dev = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if use_cuda else "gloo"
        kwargs: dict[str, Any] = {"backend": backend}
        if use_cuda:
            kwargs["device_id"] = dev
        dist.init_process_group(**kwargs)
    return DistInfo(rank=rank, local_rank=local_rank, world_size=world_size, device=dev)


def cleanup_distributed() -> None:
    """Tear the process group down (no-op when not distributed)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _barrier(info: DistInfo) -> None:
    if info.distributed:
        dist.barrier()


def _broadcast_flag(flag: bool, info: DistInfo) -> bool:
    """Rank 0's ``flag`` on every rank."""
    if not info.distributed:
        return flag
    t = torch.tensor([1 if flag else 0], device=info.device)
    dist.broadcast(t, src=0)
    return bool(t.item())


# --------------------------------------------------------------------------------------------
# Data order and per-sample randomness
# --------------------------------------------------------------------------------------------


class ResumableSampler(Sampler):
    """Deterministic, shardable, resumable order; yields ``(epoch, index)`` keys.

    Epoch ``e``'s order is a permutation drawn from ``torch.Generator().manual_seed(seed + e)``
    (tiled when the dataset is smaller than one global batch), truncated to whole global batches
    of ``batch_size * world_size``; rank ``r`` takes every ``world_size``-th index from ``r``.
    :meth:`set_epoch` ``(epoch, start_batch)`` skips the first ``start_batch`` batches of this
    rank, which is how a resumed run continues mid-epoch.
    """

    def __init__(
        self, size: int, batch_size: int, seed: int = 0, rank: int = 0, world_size: int = 1,
        shuffle: bool = True,
    ) -> None:  # fmt: skip
        if size <= 0:
            raise ValueError("the training set is empty")
        self.size, self.batch_size, self.seed = size, batch_size, seed
        self.rank, self.world_size, self.shuffle = rank, world_size, shuffle
        self.epoch, self.start_batch = 0, 0

    @property
    def batches_per_epoch(self) -> int:
        """Batches per rank per epoch (at least 1)."""
        return max(1, self.size // (self.batch_size * self.world_size))

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = int(epoch), int(start_batch)

    def epoch_indices(self, epoch: int) -> list[int]:
        """This rank's indices of ``epoch`` (all batches, none skipped)."""
        total = self.batches_per_epoch * self.batch_size * self.world_size
        g = torch.Generator().manual_seed(self.seed + epoch)
        order: list[int] = []
        while len(order) < total:
            perm = (
                torch.randperm(self.size, generator=g) if self.shuffle else torch.arange(self.size)
            )
            order.extend(perm.tolist())
        return order[:total][self.rank :: self.world_size]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        indices = self.epoch_indices(self.epoch)[self.start_batch * self.batch_size :]
        return iter([(self.epoch, i) for i in indices])

    def __len__(self) -> int:
        return (self.batches_per_epoch - self.start_batch) * self.batch_size


class EpochSeededDataset(Dataset):
    """Wraps ``base`` so that item ``(epoch, index)`` is ``transform(base[index], rng)`` with
    ``rng = np.random.default_rng([seed, epoch, index])``.

    The augmentation of a sample thus depends only on the seed, the epoch and the index: not on
    the worker that loads it, nor on how often the run was interrupted. ``transform`` may be
    None (``base[index]`` is returned; ``base`` must then be deterministic itself, or expose a
    ``seed`` attribute that is set to ``hash(seed, epoch)`` before each item, as MPIIDataset).
    Plain integer keys mean epoch 0 (validation).
    """

    def __init__(
        self,
        base: Any,
        transform: Callable[[Any, np.random.Generator], Any] | None = None,
        seed: int = 0,
    ) -> None:
        self.base, self.transform, self.seed = base, transform, int(seed)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, key: int | tuple[int, int]) -> Any:
        epoch, index = key if isinstance(key, tuple) else (0, key)
        if self.transform is None:
            if hasattr(self.base, "seed"):
                self.base.seed = (self.seed * 1_000_003 + epoch) % (2**63)
            return self.base[index]
        rng = np.random.default_rng([self.seed, int(epoch), int(index)])
        return self.transform(self.base[index], rng)


def _worker_init(_: int) -> None:
    """Data workers: one thread each (the main process owns the cores for the network)."""
    torch.set_num_threads(1)
    with contextlib.suppress(Exception):
        import cv2

        cv2.setNumThreads(1)


# --------------------------------------------------------------------------------------------
# Optimisation
# --------------------------------------------------------------------------------------------


def build_optimizer(params: Any, cfg: dict[str, Any]) -> torch.optim.Optimizer:
    """Adam (default), AdamW or SGD from the ``optim`` config section."""
    name = str(cfg.get("name", "adam")).lower()
    lr = float(cfg.get("lr", 1e-3))
    wd = float(cfg.get("weight_decay", 0.0))
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=wd)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=wd)
    if name == "sgd":
        momentum = float(cfg.get("momentum", 0.9))
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=wd)
    raise ValueError(f"unknown optimizer {name!r} (adam | adamw | sgd)")


def lr_factor(step: int, total_steps: int, cfg: dict[str, Any]) -> float:
    """LR multiplier at ``step``: linear warm-up over ``warmup_steps``, then ``schedule``:
    ``constant``, ``cosine`` (down to ``min_factor``) or ``multistep`` (``gamma`` at each of
    ``milestones``, given as fractions of the run when <= 1, else as steps)."""
    warmup = int(cfg.get("warmup_steps", 0))
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    kind = str(cfg.get("schedule", "constant"))
    if kind == "constant":
        return 1.0
    if kind == "cosine":
        low = float(cfg.get("min_factor", 0.01))
        span = max(1, total_steps - warmup)
        t = min(1.0, max(0.0, (step - warmup) / span))
        return low + (1.0 - low) * 0.5 * (1.0 + math.cos(math.pi * t))
    if kind == "multistep":
        gamma = float(cfg.get("gamma", 0.1))
        marks = [m * total_steps if m <= 1 else m for m in cfg.get("milestones", [0.7, 0.9])]
        return gamma ** sum(step >= m for m in marks)
    raise ValueError(f"unknown LR schedule {kind!r} (constant | cosine | multistep)")


def build_scheduler(
    optimizer: torch.optim.Optimizer, total_steps: int | dict[str, int], cfg: dict[str, Any]
) -> torch.optim.lr_scheduler.LambdaLR:
    """Step-wise LR schedule (:func:`lr_factor`); its state is just the step counter.
    ``total_steps`` may be a dict ``{"total": n}`` read at every step (a plan that changes)."""
    plan = total_steps if isinstance(total_steps, dict) else {"total": int(total_steps)}
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, plan["total"], cfg)
    )


# --------------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------------


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` to a temporary file next to ``path``, fsync, then ``os.replace``: a reader
    (or a run killed mid-write) sees the old file or the new one, never half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    with contextlib.suppress(OSError):  # persist the rename (not possible on every platform)
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp.{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def load_training_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a training checkpoint (``weights_only``: no code execution); ``ValueError`` if the
    file is not one."""
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ValueError(f"training checkpoint not found: {path}") from None
    except Exception as exc:
        raise ValueError(f"cannot read training checkpoint {path}: {exc}") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a training checkpoint ({CHECKPOINT_FORMAT})")
    return state


def _rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": (
            np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2]),
            int(np_state[3]), float(np_state[4]),
        ),
        "python": random.getstate(),
    }  # fmt: skip
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    if "cuda" in state and torch.cuda.is_available():
        with contextlib.suppress(RuntimeError):
            torch.cuda.set_rng_state_all(state["cuda"])


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# --------------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------------


class Task(Protocol):
    """What a training stage supplies to :func:`fit`."""

    #: validation metric to select ``best.pt`` (a key of :meth:`validate`'s result) and whether
    #: lower is better.
    best_metric: str
    best_mode: str  # "min" | "max"

    def training_loss(
        self, model: nn.Module, batch: dict[str, Any], context: dict[str, Any]
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Forward + loss of one batch (already on the device, inside autocast).

        ``context``: ``step`` (0-based optimisation step), ``epoch``, ``steps_per_epoch``.
        Returns the scalar loss and floats to log (e.g. the loss terms).
        """
        ...

    def validate(
        self, model: nn.Module, loader: DataLoader, device: torch.device
    ) -> dict[str, float]:
        """Metrics on the validation loader (called on rank 0 with the unwrapped model)."""
        ...


@dataclass
class EngineConfig:
    """The ``train`` section of a stage config (defaults shown)."""

    batch_size: int = 16
    max_steps: int = 1000
    num_workers: int = 1
    worker_start: str = "forkserver"  # forkserver | spawn | fork (data worker processes)
    seed: int = 0
    device: str = "auto"
    amp: str = "auto"  # auto (fp16 on CUDA, off on CPU) | fp16 | bf16 | off
    grad_clip_norm: float | None = None
    log_every: int = 10
    val_every: int = 500  # steps; 0 = only at the end
    ckpt_every: int = 100  # steps between last.pt writes
    snapshot_every: int = 0  # numbered snapshots (0 = none)
    keep_snapshots: int = 3
    max_minutes: float | None = None
    fit_to_budget: bool = False  # plan the schedule's length from the measured speed
    budget_calibration_steps: int = 20
    replan_every: int = 100  # re-measure the speed and adjust the plan (0: plan once)
    stop_at_step: int | None = None  # stop this invocation after this step (resumable later)
    channels_last: bool = False
    sync_bn: bool = False  # DDP: synchronise BatchNorm statistics across processes
    threads: int = 0  # torch intra-op threads in the main process (0: leave torch's default)
    max_bad_steps: int = 20  # consecutive non-finite losses before giving up
    progress: bool = True

    @classmethod
    def from_dict(cls, values: dict[str, Any] | None) -> EngineConfig:
        values = dict(values or {})
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown train option(s) {unknown}; known: {sorted(known)}")
        return cls(**values)


@dataclass
class FitResult:
    """How a :func:`fit` call ended."""

    step: int
    epoch: int
    reason: str  # "max_steps" | "time_budget" | "signal" | "stop_at_step"
    best: float | None
    metrics: dict[str, float]
    last_checkpoint: Path | None
    best_checkpoint: Path | None
    timing: dict[str, float]


def _amp_settings(amp: str, device: torch.device) -> tuple[bool, torch.dtype, bool]:
    """(autocast enabled, dtype, use GradScaler)."""
    if device.type != "cuda" or amp == "off":
        if amp in ("fp16", "bf16") and device.type != "cuda":
            return False, torch.float32, False  # AMP is a GPU feature here; CPU runs fp32
        return False, torch.float32, False
    if amp in ("auto", "fp16"):
        return True, torch.float16, True
    if amp == "bf16":
        return True, torch.bfloat16, False
    raise ValueError(f"unknown amp setting {amp!r} (auto | fp16 | bf16 | off)")


def _to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: _to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, list | tuple):
        return type(batch)(_to_device(v, device) for v in batch)
    return batch


class _StopRequest:
    """SIGTERM / SIGINT -> stop at the next step boundary with a checkpoint."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> _StopRequest:
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(ValueError):  # not the main thread
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, _frame: Any) -> None:
        if self.signal is not None:  # second signal: give up immediately
            raise KeyboardInterrupt
        self.signal = signum

    def __exit__(self, *exc: Any) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


def _plan_steps(
    plan: dict[str, Any],
    step: int,
    timing: dict[str, float],
    elapsed: float,
    budget_s: float,
    config: EngineConfig,
    info: DistInfo,
) -> None:
    """Set ``plan["total"]`` to the steps that fit the budget at the speed measured since the
    previous plan (rank 0's estimate, shared with every rank). The first plan also fixes
    ``plan["first"]``, the length the task's warm-up fractions refer to."""
    window = plan.get("window") or (0.0, 0)
    spent = timing["step_s"] + timing["data_s"] - window[0]
    per_step = spent / max(1, timing["steps"] - window[1])
    val_s = timing["val_s"] or 0.4 * per_step * timing.get("val_batches", 0)  # forward only
    n_val = 0
    reserve = 3 * timing["ckpt_s"] + min(30.0, 0.05 * budget_s)  # final val and checkpoints
    remaining = budget_s - elapsed - reserve
    if per_step > 0:
        more = int(max(0.0, remaining) / per_step)
        if config.val_every:  # validation passes take time too
            n_val = (step + more) // config.val_every - step // config.val_every
            more = int(max(0.0, remaining - n_val * val_s) / per_step)
        total = min(config.max_steps, step + max(0, more))
    else:
        total = config.max_steps
    if info.distributed:
        t = torch.tensor([total], device=info.device)
        dist.broadcast(t, src=0)
        total = int(t.item())
    first = plan.get("first") or total
    if info.is_main and (not plan["planned"] or abs(total - plan["total"]) > 0.02 * total):
        print(
            f"time budget: {per_step:.2f} s/step -> planned {total} steps "
            f"(max_steps {config.max_steps})",
            flush=True,
        )
    window = (timing["step_s"] + timing["data_s"], timing["steps"])
    plan.update(total=total, planned=True, first=first, at=step, window=window)


def fit(
    model: nn.Module,
    task: Task,
    train_set: Dataset,
    val_set: Dataset | None,
    config: EngineConfig,
    run_dir: str | Path,
    full_config: dict[str, Any] | None = None,
    optim_config: dict[str, Any] | None = None,
    resume: bool = False,
    info: DistInfo | None = None,
    on_checkpoint: Callable[[str, nn.Module, dict[str, Any]], None] | None = None,
    collate_fn: Callable | None = None,
) -> FitResult:
    """Train ``model`` on ``train_set`` (items keyed ``(epoch, index)``: wrap your dataset in
    :class:`EpochSeededDataset`) and return how it ended.

    Args:
        config: loop settings; ``optim_config``: the ``optim`` section (optimizer, LR, schedule).
        run_dir: checkpoints, TensorBoard logs and ``metrics.jsonl`` go here.
        full_config: the whole stage config, stored in every checkpoint.
        resume: continue from ``run_dir/checkpoints/last.pt`` when it exists.
        info: from :func:`setup_distributed` (default: set up here).
        on_checkpoint: ``(kind, unwrapped_model, metrics)`` called on rank 0 after each ``last``,
            ``best`` and the ``final`` checkpoint (the stage writes the node's format there).
    """
    info = info or setup_distributed(config.device)
    run_dir = Path(run_dir)
    ckpt_dir = run_dir / "checkpoints"
    optim_config = dict(optim_config or {})
    full_config = full_config or {}
    if config.threads > 0:
        torch.set_num_threads(config.threads)
    _seed_everything(config.seed + info.rank)

    device = info.device
    model.to(device)
    if config.channels_last:
        model.to(memory_format=torch.channels_last)
    if info.distributed and config.sync_bn:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    unwrapped = model
    core = getattr(model, "wrapped_model", model)  # what checkpoints hold (adapters stripped)
    if info.distributed:
        model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=bool(optim_config.get("find_unused_parameters", False)),
        )  # fmt: skip
    optimizer = build_optimizer(
        [p for p in unwrapped.parameters() if p.requires_grad], optim_config
    )
    plan = {"total": int(config.max_steps), "planned": False}
    scheduler = build_scheduler(optimizer, plan, optim_config)
    autocast_on, amp_dtype, use_scaler = _amp_settings(config.amp, device)
    scaler = torch.amp.GradScaler("cuda", enabled=use_scaler)

    step, epoch, batch_in_epoch = 0, 0, 0
    best: float | None = None
    last_metrics: dict[str, float] = {}
    if resume and (ckpt_dir / "last.pt").is_file():
        state = load_training_checkpoint(ckpt_dir / "last.pt")
        core.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        step, epoch, batch_in_epoch = state["step"], state["epoch"], state["batch_in_epoch"]
        if state.get("planned_steps"):
            total = min(int(state["planned_steps"]), config.max_steps)
            first = int(state.get("planned_first") or total)
            plan.update(total=total, planned=True, first=first, at=state["step"])
        best = state.get("best")
        last_metrics = dict(state.get("metrics") or {})
        rng = state.get("rng") or []
        if info.rank < len(rng):
            _set_rng_state(rng[info.rank])
        if info.is_main:
            print(f"resumed from {ckpt_dir / 'last.pt'} at step {step} (epoch {epoch}, "
                  f"batch {batch_in_epoch})", flush=True)  # fmt: skip
    elif resume and info.is_main:
        print(f"--resume: no checkpoint in {ckpt_dir}, starting from scratch", flush=True)

    sampler = ResumableSampler(
        len(train_set), config.batch_size, config.seed, info.rank, info.world_size
    )
    steps_per_epoch = sampler.batches_per_epoch
    loader_kwargs: dict[str, Any] = {
        "batch_size": config.batch_size,
        "num_workers": config.num_workers,
        "pin_memory": device.type == "cuda",
        "worker_init_fn": _worker_init,
        "collate_fn": collate_fn,
    }
    if config.num_workers > 0:
        loader_kwargs["persistent_workers"] = True
        loader_kwargs["prefetch_factor"] = 2
        if config.worker_start != "fork":
            # A forked worker inherits the parent's OpenMP / thread-pool state and can hang once
            # the parent has run parallel kernels; forkserver / spawn workers start clean.
            loader_kwargs["multiprocessing_context"] = config.worker_start
    loader = DataLoader(train_set, sampler=sampler, drop_last=False, **loader_kwargs)
    val_loader = None
    if val_set is not None and len(val_set) > 0 and info.is_main:
        val_loader = DataLoader(
            val_set, batch_size=config.batch_size, shuffle=False, num_workers=0,
            collate_fn=collate_fn,
        )  # fmt: skip

    writer = None
    if info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(run_dir / "tb"), purge_step=step if step > 0 else None)

    def checkpoint_state() -> dict[str, Any]:
        rng_states = [_rng_state()]
        if info.distributed:
            gathered: list[Any] = [None] * info.world_size
            dist.all_gather_object(gathered, rng_states[0])
            rng_states = gathered
        return {
            "format": CHECKPOINT_FORMAT,
            "model": core.state_dict(),
            "model_config": getattr(core, "config", None),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict() if use_scaler else {},
            "step": step,
            "epoch": epoch,
            "batch_in_epoch": batch_in_epoch,
            "planned_steps": plan["total"] if plan["planned"] else None,
            "planned_first": plan.get("first") if plan["planned"] else None,
            "best": best,
            "metrics": last_metrics,
            "rng": rng_states,
            "config": full_config,
            "world_size": info.world_size,
            "time": time.time(),
        }

    timing = {"data_s": 0.0, "step_s": 0.0, "steps": 0, "samples": 0, "ckpt_s": 0.0, "val_s": 0.0}

    def save(kind: str, final: bool = False) -> Path | None:
        """Write last.pt (+ a snapshot) or best.pt; every rank must call (RNG gather).
        ``final``: the end of this invocation (``on_checkpoint`` gets kind ``"final"``)."""
        t0 = time.perf_counter()
        state = checkpoint_state()
        if kind == "best":  # weights + metrics only (resuming always uses last.pt)
            for key in ("optimizer", "scheduler", "scaler", "rng"):
                state.pop(key, None)
        path = None
        if info.is_main:
            path = ckpt_dir / f"{kind}.pt"
            atomic_torch_save(state, path)
            summary = {"step": step, "epoch": epoch, "batch_in_epoch": batch_in_epoch,
                       "best": best, "metrics": last_metrics, "time": time.time()}  # fmt: skip
            _atomic_write_text(ckpt_dir / f"{kind}.json", json.dumps(summary) + "\n")
            if kind == "last" and config.snapshot_every and step % config.snapshot_every == 0:
                atomic_torch_save(state, ckpt_dir / f"step_{step:08d}.pt")
                snaps = sorted(ckpt_dir.glob("step_*.pt"))
                for old in snaps[: max(0, len(snaps) - config.keep_snapshots)]:
                    old.unlink(missing_ok=True)
            if on_checkpoint is not None:
                on_checkpoint("final" if final else kind, unwrapped, last_metrics)
        _barrier(info)
        timing["ckpt_s"] = time.perf_counter() - t0
        return path

    def validate() -> None:
        nonlocal best, last_metrics
        improved = False
        if info.is_main and val_loader is not None:
            t0 = time.perf_counter()
            unwrapped.eval()
            with torch.no_grad(), torch.autocast(device.type, amp_dtype, enabled=autocast_on):
                metrics = task.validate(unwrapped, val_loader, device)
            unwrapped.train()
            timing["val_s"] = time.perf_counter() - t0
            last_metrics = {k: float(v) for k, v in metrics.items()}
            for key, value in last_metrics.items():
                if writer is not None and math.isfinite(value):
                    writer.add_scalar(key, value, step)
            with open(run_dir / "metrics.jsonl", "a") as f:
                f.write(json.dumps({"step": step, "epoch": epoch, **last_metrics}) + "\n")
            value = last_metrics.get(task.best_metric)
            if value is not None and math.isfinite(value):
                better = best is None or (value < best if task.best_mode == "min" else value > best)
                if better:
                    best, improved = value, True
            summary = ", ".join(f"{k}={v:.4g}" for k, v in last_metrics.items())
            print(f"[step {step}] validation: {summary}", flush=True)
        if _broadcast_flag(improved, info):
            save("best")

    timing["val_batches"] = len(val_loader) if val_loader is not None else 0
    start = time.monotonic()
    budget_s = config.max_minutes * 60.0 if config.max_minutes else None
    reason = "max_steps"
    bad_steps = 0
    pbar = None
    if info.is_main and config.progress:
        from tqdm import tqdm

        pbar = tqdm(total=plan["total"], initial=step, desc="train", dynamic_ncols=True)
    running: dict[str, float] = {}
    running_n = 0
    model.train()
    last_path: Path | None = None
    stop = config.stop_at_step is not None and step >= config.stop_at_step
    if stop:
        reason = "stop_at_step"
    with _StopRequest() as stop_request:
        while step < plan["total"] and not stop:
            sampler.set_epoch(epoch, batch_in_epoch)
            t_data = time.perf_counter()
            for batch in loader:
                t_step = time.perf_counter()
                timing["data_s"] += t_step - t_data
                batch = _to_device(batch, device)
                context = {
                    "step": step, "epoch": epoch, "steps_per_epoch": steps_per_epoch,
                    "total_steps": plan.get("first") or plan["total"],
                }  # fmt: skip
                with torch.autocast(device.type, amp_dtype, enabled=autocast_on):
                    loss, logs = task.training_loss(model, batch, context)
                optimizer.zero_grad(set_to_none=True)
                finite = bool(torch.isfinite(loss.detach()).item())
                grad_norm = float("nan")
                if finite or use_scaler:
                    scaler.scale(loss).backward()
                    if config.grad_clip_norm:
                        scaler.unscale_(optimizer)
                        grad_norm = float(
                            nn.utils.clip_grad_norm_(unwrapped.parameters(), config.grad_clip_norm)
                        )
                    scaler.step(optimizer)
                    scaler.update()
                    bad_steps = 0
                else:
                    bad_steps += 1
                    if bad_steps > config.max_bad_steps:
                        raise FloatingPointError(
                            f"{bad_steps} consecutive non-finite losses at step {step}"
                        )
                scheduler.step()
                step += 1
                batch_in_epoch += 1
                if batch_in_epoch >= steps_per_epoch:
                    epoch, batch_in_epoch = epoch + 1, 0
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                now = time.perf_counter()
                timing["step_s"] += now - t_step
                timing["steps"] += 1
                batch_size = int(
                    next(v for v in batch.values() if isinstance(v, torch.Tensor)).shape[0]
                )
                timing["samples"] += batch_size * info.world_size

                logs = {"loss": float(loss.detach()), **logs}
                if config.grad_clip_norm:
                    logs["grad_norm"] = grad_norm
                for k, v in logs.items():
                    running[k] = running.get(k, 0.0) + float(v)
                running_n += 1
                if info.is_main and (step % config.log_every == 0 or step == plan["total"]):
                    means = {k: v / running_n for k, v in running.items()}
                    if writer is not None:
                        for k, v in means.items():
                            writer.add_scalar(f"train/{k}", v, step)
                        writer.add_scalar("train/lr", optimizer.param_groups[0]["lr"], step)
                        if timing["steps"]:
                            writer.add_scalar(
                                "perf/samples_per_s",
                                timing["samples"] / max(1e-9, timing["data_s"] + timing["step_s"]),
                                step,
                            )
                    if pbar is not None:
                        pbar.set_postfix({k: f"{v:.4g}" for k, v in means.items()}, refresh=False)
                    running, running_n = {}, 0
                if pbar is not None:
                    pbar.update(1)

                if timing["steps"] == 2 and not plan["planned"]:  # speed: skip the first steps
                    plan["window"] = (timing["step_s"] + timing["data_s"], timing["steps"])
                if (
                    budget_s is not None
                    and config.fit_to_budget
                    and timing["steps"] >= config.budget_calibration_steps
                    and (
                        not plan["planned"]
                        or (config.replan_every and step - plan["at"] >= config.replan_every)
                        or (step >= plan["total"] and step - plan["at"] >= 5)  # ran faster
                    )
                ):
                    _plan_steps(
                        plan, step, timing, time.monotonic() - start, budget_s, config, info
                    )
                    if pbar is not None:
                        pbar.total = plan["total"]
                if config.val_every and step % config.val_every == 0 and step < plan["total"]:
                    validate()
                want_stop = False
                if stop_request.signal is not None:
                    want_stop, reason = True, "signal"
                elif config.stop_at_step is not None and step >= config.stop_at_step:
                    want_stop, reason = True, "stop_at_step"
                elif budget_s is not None:
                    per_step = timing["step_s"] / max(1, timing["steps"]) + timing["data_s"] / max(
                        1, timing["steps"]
                    )
                    reserve = 1.5 * (per_step + timing["ckpt_s"]) + timing["val_s"]
                    if time.monotonic() - start + reserve >= budget_s:
                        want_stop, reason = True, "time_budget"
                stop = _broadcast_flag(want_stop, info)
                if stop or step >= plan["total"]:
                    break
                if config.ckpt_every and step % config.ckpt_every == 0:
                    last_path = save("last")
                t_data = time.perf_counter()
    if pbar is not None:
        pbar.close()
    if reason in ("max_steps", "time_budget"):  # the budget reserves time for this
        validate()
    last_path = save("last", final=True)
    if writer is not None:
        writer.flush()
        writer.close()
    elapsed = time.monotonic() - start
    steps = max(1, timing["steps"])
    timing_out = {
        "elapsed_s": elapsed,
        "steps": float(timing["steps"]),
        "data_s_per_step": timing["data_s"] / steps,
        "compute_s_per_step": timing["step_s"] / steps,
        "samples_per_s": timing["samples"] / max(1e-9, timing["data_s"] + timing["step_s"]),
    }
    if info.is_main:
        print(
            f"stopped at step {step} ({reason}); {timing_out['samples_per_s']:.2f} samples/s, "
            f"data {timing_out['data_s_per_step'] * 1000:.0f} ms/step, "
            f"compute {timing_out['compute_s_per_step'] * 1000:.0f} ms/step",
            flush=True,
        )
    best_path = ckpt_dir / "best.pt"
    return FitResult(
        step=step, epoch=epoch, reason=reason, best=best, metrics=last_metrics,
        last_checkpoint=last_path, best_checkpoint=best_path if best_path.is_file() else None,
        timing=timing_out,
    )  # fmt: skip
