"""``python -m training export`` (training/export.py): node checkpoint format, size, provenance."""

from __future__ import annotations

import argparse
import json

import pytest
import torch

from stereo_pose3d.checkpoint import load_checkpoint
from stereo_pose3d.estimator import StereoPoseEstimator
from stereo_pose3d.models import build_model, tiny_system_config
from training.engine import CHECKPOINT_FORMAT, atomic_torch_save
from training.export import add_arguments, export, main


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(list(argv))


@pytest.fixture(scope="module")
def training_checkpoints(tmp_path_factory):
    """A pose network and a locator as training checkpoints (the engine's format)."""
    root = tmp_path_factory.mktemp("runs")
    torch.manual_seed(0)
    system_cfg = tiny_system_config()
    paths = {}
    for part in ("pose", "locator"):
        cfg = system_cfg[part]
        model = build_model(cfg)
        state = {
            "format": CHECKPOINT_FORMAT, "model": model.state_dict(), "model_config": cfg,
            "step": 7, "epoch": 1, "metrics": {"val/mpjpe_rr_mm": 123.0},
            "config": {"stage": "finetune-cdr", "data": {"source": "stereo", "train": str(root)}},
        }  # fmt: skip
        paths[part] = root / f"{part}.pt"
        atomic_torch_save(state, paths[part])
    return paths


def test_export_pose_and_locator_to_a_system_file(training_checkpoints, tmp_path):
    out = tmp_path / "weights" / "tiny_cdrnet"
    eval_json = tmp_path / "eval.json"
    eval_json.write_text(
        json.dumps(
            {"data": {"path": "d"}, "models": {"m": {"paths": {"full": {"mpjpe_mm": 50.0}}}}}
        )
    )
    path, check = export(
        training_checkpoints["pose"], out, locator=training_checkpoints["locator"],
        metrics=eval_json, estimator={"score_threshold": 0.2}, note="unit test",
    )  # fmt: skip
    assert path == out.with_suffix(".pt") and path.is_file()
    assert check["loads"] and check["size_mb"] < 25 and check["max_2d_deviation_px"] < 1.0
    ckpt = load_checkpoint(path, expect="system")
    assert ckpt.storage == check["storage"] == "int8"  # float16 would be over 25 MB
    assert ckpt.config["estimator"]["score_threshold"] == 0.2
    prov = ckpt.provenance
    assert prov["stage"] == "finetune-cdr" and prov["step"] == 7
    assert prov["metrics"] == {"val/mpjpe_rr_mm": 123.0}
    assert len(prov["sources"]["checkpoint"]["sha256"]) == 64
    assert "locator" in prov["sources"] and prov["note"] == "unit test"
    assert prov["evaluation"]["models"]["m"]["full"]["mpjpe_mm"] == 50.0
    assert "git_commit" in prov and "training_config" in prov
    est = StereoPoseEstimator.from_checkpoint(path, device="cpu")
    assert est.settings["score_threshold"] == 0.2
    # The exported weights are the trained ones (to float16 precision).
    trained = torch.load(training_checkpoints["pose"], weights_only=True)["model"]
    name = "backbone.conv1.weight"
    scale = trained[name].abs().max()
    assert (ckpt.state_dict[f"pose.{name}"] - trained[name]).abs().max() <= scale / 127 * 0.51


def test_export_cli_rewrites_a_system_file_and_checks_the_size(fixture_checkpoint, tmp_path):
    out = tmp_path / "again.pt"
    args = _args("--ckpt", str(fixture_checkpoint), "--out", str(out), "--max-mb", "100")
    assert main(args) == 0
    assert load_checkpoint(out).storage == "float16"
    assert (
        main(_args("--ckpt", str(fixture_checkpoint), "--out", str(out), "--storage", "int8")) == 0
    )
    assert load_checkpoint(out).storage == "int8"
    assert out.stat().st_size < fixture_checkpoint.stat().st_size
    too_big = tmp_path / "big.pt"
    code = main(_args("--ckpt", str(fixture_checkpoint), "--out", str(too_big), "--max-mb", "0.5"))
    assert code == 2 and not too_big.exists() and not list(tmp_path.glob("big*"))


def test_export_refuses_a_pose_network_without_locator(training_checkpoints, tmp_path, capsys):
    code = main(_args("--ckpt", str(training_checkpoints["pose"]), "--out", str(tmp_path / "x")))
    assert code == 2
    assert "--locator" in capsys.readouterr().err
