"""Safe model checkpoints: one file per model, config + weights + provenance.

File format (``torch.save`` zip, readable with ``torch.load(weights_only=True)``, so loading never
executes code from the file)::

    {"format": "stereo_pose3d.checkpoint", "version": 1,
     "storage": "float32" | "float16" | "int8",
     "config_json": "<JSON of the model config>",      # see stereo_pose3d.models.config
     "provenance_json": "<JSON: dataset, split, training config, git commit, metrics, ...>",
     "state_dict": {name: tensor},
     "quant_scales": {name: float32 tensor}}          # int8 storage only

Storage: ``float32`` (training), ``float16`` (floating tensors halved), ``int8`` (weights of
convolutions with >= 1024 elements quantised symmetrically per output slice ``w = q * scale``, the
rest float16; about a quarter of the float32 size). Loading always gives float32 tensors.

Every failure (missing, empty, truncated, foreign or malicious file, wrong architecture, weights
that do not fit the config) raises :class:`CheckpointError` naming the file and the problem.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import pickle
import platform
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from stereo_pose3d.models import build_model
from stereo_pose3d.models.config import ConfigError, validate_config

FORMAT = "stereo_pose3d.checkpoint"
VERSION = 1
STORAGES = ("float32", "float16", "int8")
_INT8_MIN_NUMEL = 1024

__all__ = [
    "Checkpoint",
    "CheckpointError",
    "build_model",
    "load_checkpoint",
    "load_model",
    "save_checkpoint",
]


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message names the file and the problem."""


@dataclass
class Checkpoint:
    """A loaded checkpoint: ``config`` (validated dict), float32 ``state_dict``, ``provenance``."""

    path: Path
    config: dict[str, Any]
    state_dict: dict[str, torch.Tensor]
    provenance: dict[str, Any] = field(default_factory=dict)
    storage: str = "float32"

    @property
    def architecture(self) -> str:
        return self.config["architecture"]


def git_commit(start: Path | None = None) -> str | None:
    """The commit checked out in the repository containing ``start`` (read from ``.git``, without
    running git), or None."""
    here = (start or Path(__file__)).resolve()
    for folder in (here, *here.parents):
        git = folder / ".git"
        if not git.is_dir():
            continue
        try:
            head = (git / "HEAD").read_text().strip()
            if not head.startswith("ref:"):
                return head
            ref = head.split(None, 1)[1]
            if (git / ref).is_file():
                return (git / ref).read_text().strip()
            packed = git / "packed-refs"
            if packed.is_file():
                for line in packed.read_text().splitlines():
                    if line.endswith(" " + ref):
                        return line.split()[0]
        except OSError:
            return None
        return None
    return None


def _encode(state: dict[str, torch.Tensor], storage: str):
    tensors: dict[str, torch.Tensor] = {}
    scales: dict[str, torch.Tensor] = {}
    for name, value in state.items():
        t = value.detach().cpu().contiguous()
        if t.is_floating_point() and storage != "float32":
            if storage == "int8" and t.dim() >= 2 and t.numel() >= _INT8_MIN_NUMEL:
                t = t.float()
                scale = t.abs().amax(dim=tuple(range(1, t.dim())), keepdim=True) / 127.0
                scale = scale.clamp_min(1e-12)
                tensors[name] = torch.round(t / scale).clamp(-127, 127).to(torch.int8)
                scales[name] = scale
                continue
            t = t.half()
        tensors[name] = t.clone()
    return tensors, scales


def save_checkpoint(
    path: str | Path,
    model: nn.Module,
    config: dict[str, Any] | None = None,
    provenance: dict[str, Any] | None = None,
    storage: str = "float32",
) -> Path:
    """Write ``model``'s weights with its config and provenance to ``path`` (atomically).

    Args:
        model: a model built by :func:`stereo_pose3d.models.build_model` (or compatible).
        config: its config; defaults to ``model.config``. Checked to build exactly the model's
            state dict keys and shapes.
        provenance: JSON-serialisable facts, e.g. ``dataset``, ``split``, ``training_config``,
            ``metrics``, ``epoch``; ``created``, ``torch``, ``git_commit`` are filled in when
            absent.
        storage: ``"float32"``, ``"float16"`` or ``"int8"`` (see the module docstring).

    Returns:
        The path written.
    """
    path = Path(path)
    if storage not in STORAGES:
        raise ValueError(f"storage must be one of {STORAGES}, got {storage!r}")
    config = validate_config(config if config is not None else model.config)
    state = model.state_dict()
    with torch.device("meta"):
        expected = build_model(config, pretrained=False).state_dict()
    problem = _state_mismatch(expected, state)
    if problem:
        raise ValueError(f"model does not match its config: {problem}")
    info = {
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "git_commit": git_commit(),
        "storage": storage,
    }
    info.update(provenance or {})
    try:
        provenance_json = json.dumps(info)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"provenance is not JSON-serialisable: {exc}") from None
    tensors, scales = _encode(state, storage)
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "storage": storage,
        "config_json": json.dumps(config),
        "provenance_json": provenance_json,
        "state_dict": tensors,
        "quant_scales": scales,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)
    return path


def _first_line(exc: BaseException) -> str:
    """The useful part of torch's (long) error messages."""
    text = str(exc).strip()
    found = re.search(r"WeightsUnpickler error:\s*([^\n]+)", text)
    if found:
        return re.split(r" was not|\. ", found.group(1))[0].strip()
    if not text:
        return type(exc).__name__
    return text.splitlines()[0].split(". ")[0][:200]


def load_checkpoint(path: str | Path, expect: str | tuple[str, ...] | None = None) -> Checkpoint:
    """Read a checkpoint safely (no code execution) and check its structure.

    Args:
        path: the file.
        expect: architecture(s) the caller needs (e.g. ``"system"``), or None for any.

    Raises:
        CheckpointError: naming ``path`` and what is wrong.
    """
    path = Path(path)

    def fail(msg: str) -> CheckpointError:
        return CheckpointError(f"checkpoint {path}: {msg}")

    if not path.exists():
        raise fail("file not found")
    if not path.is_file():
        raise fail("not a regular file")
    if path.stat().st_size == 0:
        raise fail("file is empty (truncated?)")
    try:
        with warnings.catch_warnings():  # e.g. "pickle protocol 4" notes for foreign files
            warnings.simplefilter("ignore")
            payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise fail(
            "refused to load: the file contains Python objects other than tensors and plain "
            f"containers (unsafe or not a stereo_pose3d checkpoint; {_first_line(exc)})"
        ) from None
    except Exception as exc:  # torch/zip raise many types for corrupt data; never leak them
        raise fail(
            f"cannot be read (truncated, corrupt or not a torch file): "
            f"{type(exc).__name__}: {_first_line(exc)}"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise fail(f"not a stereo_pose3d checkpoint (format {found!r}, expected {FORMAT!r})")
    version = payload.get("version")
    if not isinstance(version, int) or version > VERSION:
        raise fail(f"format version {version!r} is not supported (this code reads <= {VERSION})")
    storage = payload.get("storage", "float32")
    if storage not in STORAGES:
        raise fail(f"unknown storage {storage!r}")
    try:
        config = validate_config(json.loads(payload["config_json"]))
        provenance = json.loads(payload.get("provenance_json", "{}"))
    except KeyError as exc:
        raise fail(f"missing entry {exc}") from None
    except (ConfigError, ValueError, TypeError) as exc:
        raise fail(f"invalid config: {exc}") from None
    arch = config["architecture"]
    if expect is not None:
        wanted = (expect,) if isinstance(expect, str) else tuple(expect)
        if arch not in wanted:
            raise fail(f"holds a {arch!r} model, expected {' or '.join(map(repr, wanted))}")
    tensors = payload.get("state_dict")
    scales = payload.get("quant_scales") or {}
    if not isinstance(tensors, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in tensors.items()
    ):
        raise fail("state_dict is missing or not a dict of tensors")
    state: dict[str, torch.Tensor] = {}
    for name, t in tensors.items():
        if name in scales:
            t = t.float() * scales[name]
        elif t.is_floating_point():
            t = t.float()
        state[name] = t
    return Checkpoint(path, config, state, provenance, storage)


def _state_mismatch(expected: dict[str, torch.Tensor], state: dict[str, torch.Tensor]) -> str:
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [
        f"{k} {tuple(state[k].shape)} vs {tuple(expected[k].shape)}"
        for k in expected
        if k in state and tuple(state[k].shape) != tuple(expected[k].shape)
    ]
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing weights (e.g. {missing[:3]})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected weights (e.g. {unexpected[:3]})")
    if shapes:
        parts.append(f"{len(shapes)} shape mismatches (file vs config, e.g. {shapes[:3]})")
    return "; ".join(parts)


def load_model(
    path: str | Path, expect: str | tuple[str, ...] | None = None, device: str = "cpu"
) -> tuple[nn.Module, Checkpoint]:
    """Load a checkpoint and build its model (eval mode) on ``device``.

    Raises:
        CheckpointError: as :func:`load_checkpoint`, or weights that do not fit the config
            (wrong architecture / backbone / joint count).
    """
    checkpoint = load_checkpoint(path, expect)
    model = build_model(checkpoint.config, pretrained=False)
    problem = _state_mismatch(model.state_dict(), checkpoint.state_dict)
    if problem:
        arch = checkpoint.config["architecture"]
        raise CheckpointError(
            f"checkpoint {checkpoint.path}: weights do not fit its {arch!r} config: {problem}"
        )
    model.load_state_dict(checkpoint.state_dict)
    return model.to(device).eval(), checkpoint
