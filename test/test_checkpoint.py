"""Checkpoints: round trip, storage types, and a clear CheckpointError for every bad file."""

from __future__ import annotations

import json
import pickle
import zipfile
from pathlib import Path

import pytest
import torch

from stereo_pose3d.checkpoint import (
    CheckpointError,
    load_checkpoint,
    load_model,
    save_checkpoint,
)
from stereo_pose3d.estimator import StereoPoseEstimator
from stereo_pose3d.models import build_model, pose_config, tiny_system_config


def tiny_pose_model(backbone: str = "resnet18"):
    torch.manual_seed(0)
    config = pose_config("cdrnet", backbone, (64, 64), latent_channels=30, fusion_channels=32,
                         head_channels=32)  # fmt: skip
    return build_model(config).eval(), config


def run(model, seed: int = 0) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    K = torch.tensor([[80.0, 0, 31.5], [0, 80, 31.5], [0, 0, 1]])
    P = torch.stack([torch.cat([K, torch.zeros(3, 1)], 1),
                     torch.cat([K, K @ torch.tensor([[-0.1], [0.0], [0.0]])], 1)])  # fmt: skip
    with torch.no_grad():
        return model(torch.randn(1, 2, 3, 64, 64), P[None])


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> tuple[Path, torch.nn.Module, dict]:
    model, config = tiny_pose_model()
    path = tmp_path_factory.mktemp("ckpt") / "pose.pt"
    provenance = {"dataset": "synthetic", "split": "train", "metrics": {"mpjpe_mm": 42.0},
                  "training_config": {"lr": 1e-3}}  # fmt: skip
    save_checkpoint(path, model, config, provenance)
    return path, model, config


def test_round_trip(saved):
    path, model, config = saved
    loaded, checkpoint = load_model(path)
    assert checkpoint.config == config and checkpoint.architecture == "cdrnet"
    assert checkpoint.provenance["dataset"] == "synthetic"
    assert checkpoint.provenance["metrics"] == {"mpjpe_mm": 42.0}
    assert {"created", "torch", "git_commit"} <= set(checkpoint.provenance)
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    torch.testing.assert_close(run(loaded)["joints_3d"], run(model)["joints_3d"], rtol=0, atol=0)


@pytest.mark.parametrize("storage", ["float16", "int8"])
def test_compact_storage(saved, tmp_path, storage):
    _, model, config = saved
    path = save_checkpoint(tmp_path / f"{storage}.pt", model, config, storage=storage)
    full = saved[0].stat().st_size
    assert path.stat().st_size < (0.55 if storage == "float16" else 0.3) * full
    loaded, checkpoint = load_model(path)
    assert checkpoint.storage == storage
    assert all(v.dtype != torch.float16 for v in checkpoint.state_dict.values())
    a, b = run(model), run(loaded)
    tol = 0.01 if storage == "float16" else 0.05
    assert (a["heatmaps"] - b["heatmaps"]).abs().max() <= tol * a["heatmaps"].abs().max() + 1e-6


def test_shipped_size_fits_25_mb(tmp_path):
    """The shipped estimator (CDRNet on ResNet-18 at 256x256 + locator) in int8 storage."""
    from stereo_pose3d.models import locator_config, system_config

    config = system_config(pose_config("cdrnet", "resnet18"), locator_config())
    path = save_checkpoint(tmp_path / "system.pt", build_model(config), config, storage="int8")
    assert path.stat().st_size < 25e6


def test_missing_file(tmp_path):
    path = tmp_path / "nope.pt"
    with pytest.raises(CheckpointError, match=r"nope\.pt: file not found"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="not a regular file"):
        load_checkpoint(tmp_path)


@pytest.mark.parametrize("keep", [0, 100, 0.5])
def test_truncated_file(saved, tmp_path, keep):
    data = saved[0].read_bytes()
    n = int(len(data) * keep) if isinstance(keep, float) else keep
    path = tmp_path / "truncated.pt"
    path.write_bytes(data[:n])
    with pytest.raises(CheckpointError, match=r"truncated\.pt: .*(empty|truncated|corrupt)"):
        load_checkpoint(path)


def test_foreign_files(tmp_path):
    text = tmp_path / "notes.pt"
    text.write_text("hello, not a checkpoint")
    with pytest.raises(CheckpointError, match=r"notes\.pt: cannot be read"):
        load_checkpoint(text)
    plain = tmp_path / "plain.pt"
    torch.save({"weight": torch.zeros(3)}, plain)
    with pytest.raises(CheckpointError, match=r"plain\.pt: not a stereo_pose3d checkpoint"):
        load_checkpoint(plain)


def _rewrite(src: Path, dst: Path, **changes) -> Path:
    payload = torch.load(src, weights_only=True)
    payload.update(changes)
    torch.save(payload, dst)
    return dst


def test_wrong_architecture(saved, tmp_path, fixture_checkpoint):
    path = saved[0]
    with pytest.raises(CheckpointError, match="holds a 'cdrnet' model, expected 'system'"):
        load_checkpoint(path, expect="system")
    with pytest.raises(CheckpointError, match="holds a 'cdrnet' model, expected 'system'"):
        StereoPoseEstimator.from_checkpoint(path, device="cpu")
    # Config says ResNet-34, weights are ResNet-18's.
    config = json.loads(torch.load(path, weights_only=True)["config_json"])
    config["backbone"]["name"] = "resnet34"
    bad = _rewrite(path, tmp_path / "r34.pt", config_json=json.dumps(config))
    with pytest.raises(CheckpointError, match=r"r34.pt: weights do not fit its 'cdrnet' config: "
                                              r"\d+ missing weights"):  # fmt: skip
        load_model(bad)
    # Same backbone, other joint count: shape mismatch named.
    config = json.loads(torch.load(path, weights_only=True)["config_json"])
    config.update(skeleton="mads19", joint_names=[f"j{i}" for i in range(19)])
    config["skeleton"] = None
    bad = _rewrite(path, tmp_path / "mads.pt", config_json=json.dumps(config))
    with pytest.raises(CheckpointError, match=r"shape mismatches .*head\.final\.weight"):
        load_model(bad)
    bad = _rewrite(path, tmp_path / "arch.pt",
                   config_json=json.dumps({**config, "architecture": "transformer"}))  # fmt: skip
    with pytest.raises(CheckpointError, match=r"arch\.pt: invalid config: .*unknown architecture"):
        load_model(bad)
    bad = _rewrite(path, tmp_path / "future.pt", version=99)
    with pytest.raises(CheckpointError, match=r"future\.pt: format version 99"):
        load_model(bad)
    assert load_checkpoint(fixture_checkpoint, expect="system").architecture == "system"


class _Exploit:
    """Unpickling this calls ``open(marker, "w")``: it would create the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_malicious_pickles_never_execute(saved, tmp_path):
    marker = tmp_path / "pwned"
    # 1. A plain (non-zip) pickle; 2. a torch zip checkpoint with the exploit inside its payload.
    legacy = tmp_path / "legacy.pt"
    legacy.write_bytes(pickle.dumps({"format": "x", "state_dict": _Exploit(marker)}))
    zipped = tmp_path / "zipped.pt"
    torch.save({"format": "stereo_pose3d.checkpoint", "version": 1, "config_json": "{}",
                "state_dict": {"w": _Exploit(marker)}}, zipped)  # fmt: skip
    assert zipfile.is_zipfile(zipped)
    for path in (legacy, zipped):
        with pytest.raises(CheckpointError, match=f"{path.name}: refused to load"):
            load_checkpoint(path)
        with pytest.raises(CheckpointError, match="refused to load"):
            StereoPoseEstimator.from_checkpoint(path, device="cpu")
    assert not marker.exists()
    # Control: the exploit is real (an unsafe pickle.load does create a marker).
    control = tmp_path / "control"
    pickle.loads(pickle.dumps(_Exploit(control))).close()
    assert control.exists()


def test_save_rejects_inconsistent_input(tmp_path):
    model, config = tiny_pose_model()
    with pytest.raises(ValueError, match="does not match its config"):
        save_checkpoint(tmp_path / "x.pt", model, {**config, "backbone": {"name": "resnet34"}})
    with pytest.raises(ValueError, match="provenance is not JSON"):
        save_checkpoint(tmp_path / "x.pt", model, config, {"bad": object()})
    with pytest.raises(ValueError, match="storage"):
        save_checkpoint(tmp_path / "x.pt", model, config, storage="int4")
    assert not (tmp_path / "x.pt").exists()


def test_system_checkpoint_holds_both_models(fixture_checkpoint):
    _, checkpoint = load_model(fixture_checkpoint, expect="system")
    assert checkpoint.config["pose"]["architecture"] == "cdrnet"
    assert checkpoint.config["locator"]["architecture"] == "locator"
    assert checkpoint.config == tiny_system_config(score_threshold=0.0)
    keys = checkpoint.state_dict.keys()
    assert any(k.startswith("pose.") for k in keys) and any(k.startswith("locator.") for k in keys)
    assert checkpoint.storage == "float16"
