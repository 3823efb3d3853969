"""Training engine and stages (training/engine.py, training/train.py).

Tiny models (ResNet-18 locator at 64x48, CDRNet at 64x64) on a few synthetic samples rendered by
the synth generator into a temporary folder (or, without pybullet, a drawn stick figure written
in the same format).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from test_mpii import json_root as mpii_json_root  # noqa: F401  (an MPII fixture)

from training.engine import (
    EngineConfig,
    EpochSeededDataset,
    ResumableSampler,
    fit,
    load_training_checkpoint,
    lr_factor,
)
from training.train import (
    LocatorTask,
    PoseTask,
    StereoTransform,
    build_datasets,
    load_config,
    model_config_from,
    run_stage,
)

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "training" / "configs"


def fabricate_stereo_dataset(root: Path, split: str, frames: int, seed: int) -> Path:
    """A small stereo dataset in the on-disk format: the synth generator when it runs, else a
    stick figure drawn at random positions (test/conftest.py's renderer)."""
    cmd = [
        sys.executable, "-m", "training", "synth", "--out", str(root), "--split", split,
        "--frames", str(frames), "--seed", str(seed), "--workers", "1", "--no-progress",
        "--width", "320", "--height", "240", "--frames-per-rig", "4",
    ]  # fmt: skip
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    if done.returncode == 0 and (root / "dataset.json").is_file():
        return root
    from conftest import render_stereo_pair

    from stereo_pose3d.skeleton import MPII
    from training.data.stereo_dataset import StereoDatasetWriter

    writer = StereoDatasetWriter(
        root, source="synthetic", split=split, skeleton="mpii16",
        joint_names=MPII.joint_names, image_size=(320, 240),
    )  # fmt: skip
    rng = np.random.default_rng(seed)
    for i in range(frames):
        pos = (rng.uniform(-0.3, 0.3), 0.3, rng.uniform(2.5, 4.0))
        pair = render_stereo_pair(320, 240, 250.0, rng.choice([0.1, 0.2]), pos)
        eye = np.eye(3)
        labels = {
            "K_left": pair.P_left[:, :3], "K_right": pair.P_left[:, :3], "D_left": np.zeros(5),
            "D_right": np.zeros(5), "distortion_model": "plumb_bob", "R_left": eye,
            "R_right": eye, "P_left": pair.P_left, "P_right": pair.P_right,
            "T_world_to_cam": np.eye(4), "joints_3d_cam": pair.joints_3d,
            "joints_3d_world": pair.joints_3d, "joints_2d": pair.joints_2d,
            "visibility": np.ones((2, 16), bool), "box": pair.box, "baseline": pair.baseline,
            "time": i / 30.0, "rectified": True,
        }  # fmt: skip
        writer.write_sample(f"stick_{i // 4:03d}", i % 4, pair.left, pair.right, labels)
    return root


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("stereo")
    return {
        "train": fabricate_stereo_dataset(root / "train", "train", 12, 0),
        "val": fabricate_stereo_dataset(root / "val", "val", 4, 1),
    }


def tiny_config(name: str, data: dict[str, Path], run_dir: Path, *overrides: str) -> dict:
    base = [f"data.train={data['train']}", f"data.val={data['val']}", "train.progress=false"]
    config = load_config(CONFIGS / name, [*base, *overrides])
    config["run_dir"] = str(run_dir)
    return config


def _params(state: dict) -> dict[str, torch.Tensor]:
    return {k: v for k, v in state.items() if torch.is_tensor(v)}


def _assert_same_state(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def _assert_same_optimizer(a: dict, b: dict) -> None:
    assert a["param_groups"] == b["param_groups"]
    assert a["state"].keys() == b["state"].keys()
    for i in a["state"]:
        for key, value in a["state"][i].items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(b["state"][i][key])), key


# --------------------------------------------------------------------------------------------
# Pieces
# --------------------------------------------------------------------------------------------


def test_config_overrides_and_errors(tmp_path):
    config = load_config(
        CONFIGS / "tiny_cdrnet_test.yaml",
        ["train.batch_size=3", "loss.joints_3d.weight=0.5", "augment.cutout=false"],
    )
    assert config["stage"] == "finetune-cdr"
    assert config["train"]["batch_size"] == 3
    assert config["loss"]["joints_3d"]["weight"] == 0.5
    assert config["loss"]["joints_3d"]["type"] == "mse_smooth"  # merged, not replaced
    assert config["augment"]["cutout"] is False
    model = model_config_from(config)
    assert model["architecture"] == "cdrnet" and model["input_size"] == [64, 64]
    with pytest.raises(ValueError, match="unknown train option"):
        load_config(CONFIGS / "tiny_cdrnet_test.yaml", ["train.batchsize=3"])
    with pytest.raises(ValueError, match="unknown augmentation"):
        load_config(CONFIGS / "tiny_cdrnet_test.yaml", ["augment.cutuot=true"])
    with pytest.raises(ValueError, match="not 'train-baseline'"):
        load_config(CONFIGS / "tiny_cdrnet_test.yaml", stage="train-baseline")
    for path in sorted(CONFIGS.glob("*.yaml")):  # every shipped config is valid
        cfg = load_config(path)
        model_config_from(cfg)


def test_sampler_order_is_resumable_and_sharded():
    s = ResumableSampler(10, batch_size=2, seed=3, world_size=1)
    full = list(s)
    assert len(full) == 10 and {i for _, i in full} == set(range(10))
    s.set_epoch(0, start_batch=2)
    assert list(s) == full[4:]
    s.set_epoch(1)
    assert [i for _, i in s] != [i for _, i in full]  # a new order each epoch
    ranks = [ResumableSampler(10, 2, 3, rank=r, world_size=2) for r in range(2)]
    shards = [[i for _, i in r] for r in ranks]
    assert len(shards[0]) == len(shards[1]) == 4  # 2 global batches of 2 x 2
    assert not set(shards[0]) & set(shards[1])
    tiny = ResumableSampler(3, batch_size=4)  # smaller than a batch: tiled
    assert tiny.batches_per_epoch == 1 and len(list(tiny)) == 4


def test_epoch_seeded_augmentation_is_reproducible():
    ds = EpochSeededDataset(list(range(5)), lambda x, rng: (x, rng.random()), seed=7)
    assert ds[(2, 3)] == ds[(2, 3)]
    assert ds[(2, 3)] != ds[(3, 3)]


def test_lr_schedule():
    cfg = {"schedule": "cosine", "warmup_steps": 10, "min_factor": 0.0}
    assert lr_factor(0, 100, cfg) == pytest.approx(0.1)
    assert lr_factor(10, 100, cfg) == pytest.approx(1.0)
    assert lr_factor(100, 100, cfg) == pytest.approx(0.0, abs=1e-9)
    multi = {"schedule": "multistep", "milestones": [0.5], "gamma": 0.1}
    assert lr_factor(49, 100, multi) == 1.0 and lr_factor(50, 100, multi) == pytest.approx(0.1)


def test_one_step_lowers_the_loss(data):
    """A gradient step lowers the full loss (heatmap + soft-argmax 2D + 3D through the DLT) on a
    fixed batch; an Adam step at the recipe's LR lowers the 2D (warm-up) loss."""
    from stereo_pose3d.models import build_model

    config = tiny_config(
        "tiny_cdrnet_test.yaml", data, Path("unused"), "loss.warmup_2d_epochs=0",
        "loss.keypoints_2d.weight=0.01",
    )  # fmt: skip
    model_cfg = model_config_from(config)
    train_set, _ = build_datasets(config, model_cfg)
    batch = torch.utils.data.default_collate([train_set[(0, i)] for i in range(4)])
    task = PoseTask(config, model_cfg)
    context = {"step": 0, "epoch": 0, "steps_per_epoch": 3}
    assert task.weight_3d(context) > 0

    def one_step(optimizer_class, lr: float, ctx: dict) -> tuple[float, float, dict]:
        torch.manual_seed(0)
        model = build_model(model_cfg).train()
        optimizer = optimizer_class(model.parameters(), lr=lr)
        loss0, logs = task.training_loss(model, batch, ctx)
        optimizer.zero_grad()
        loss0.backward()
        optimizer.step()
        loss1, _ = task.training_loss(model, batch, ctx)
        return loss0.item(), loss1.item(), logs

    # At random initialisation the DLT makes the 3D term very curved: a small plain gradient
    # step (first order) must lower the total.
    before, after, logs = one_step(torch.optim.SGD, 1e-5, context)
    assert {"heatmap", "kp2d", "loss3d", "mpjpe_rr_mm"} <= set(logs)
    assert after < before
    warmup = {**context, "step": 0, "steps_per_epoch": 10**6}
    config["loss"]["warmup_2d_epochs"] = 1.0
    assert task.weight_3d(warmup) == 0.0
    before, after, logs = one_step(torch.optim.Adam, 1e-3, warmup)
    assert "loss3d" not in logs and after < before


def test_augmented_batch_matches_projection(data):
    """The transform's crops, P and labels agree: project(P, joints_3d) = joints_2d."""
    from stereo_pose3d.geometry import project

    config = tiny_config("tiny_cdrnet_test.yaml", data, Path("unused"))
    model_cfg = model_config_from(config)
    transform = StereoTransform(config, model_cfg, train=True)
    from training.data.stereo_dataset import StereoDataset

    sample = StereoDataset(data["train"])[0]
    out = transform(sample, np.random.default_rng(0))
    assert out["images"].shape == (2, 3, 64, 64)
    uv = project(out["joints_3d"][None].astype(np.float64), out["P"].astype(np.float64))
    ok = (out["visibility"] > 0) & (out["joints_3d_valid"][None] > 0)
    assert np.abs(uv - out["joints_2d"])[ok].max() < 0.05


# --------------------------------------------------------------------------------------------
# Resume
# --------------------------------------------------------------------------------------------


def _locator_fit(config: dict, run_dir: Path, resume: bool = False, **train):
    from stereo_pose3d.models import build_model

    config = {**config, "train": {**config["train"], **train}}
    model_cfg = model_config_from(config)
    torch.manual_seed(0)
    model = build_model(model_cfg)
    train_set, val_set = build_datasets(config, model_cfg)
    engine = EngineConfig.from_dict({"seed": config["seed"], **config["train"]})
    return fit(
        model, LocatorTask(config, model_cfg), train_set, val_set, engine, run_dir,
        full_config=config, optim_config=config["optim"], resume=resume,
    )  # fmt: skip


def test_resume_continues_at_the_same_step_with_the_same_state(data, tmp_path):
    config = tiny_config(
        "tiny_locator_test.yaml", data, tmp_path, "train.max_steps=8", "train.ckpt_every=4",
        "train.val_every=0", "train.batch_size=4", "train.threads=1",
    )  # fmt: skip
    full = _locator_fit(config, tmp_path / "full")
    assert full.step == 8 and full.reason == "max_steps"
    part = _locator_fit(config, tmp_path / "split", stop_at_step=5)
    assert part.step == 5 and part.reason == "stop_at_step"
    saved = load_training_checkpoint(tmp_path / "split" / "checkpoints" / "last.pt")
    assert saved["step"] == 5 and saved["epoch"] == 0 and saved["batch_in_epoch"] == 5
    assert json.loads((tmp_path / "split/checkpoints/last.json").read_text())["step"] == 5
    assert saved["optimizer"]["state"]  # Adam moments are stored
    resumed = _locator_fit(config, tmp_path / "split", resume=True)
    assert resumed.step == 8
    a = load_training_checkpoint(tmp_path / "full" / "checkpoints" / "last.pt")
    b = load_training_checkpoint(tmp_path / "split" / "checkpoints" / "last.pt")
    assert (a["step"], a["epoch"], a["batch_in_epoch"]) == (
        b["step"],
        b["epoch"],
        b["batch_in_epoch"],
    )
    _assert_same_state(_params(a["model"]), _params(b["model"]))
    _assert_same_optimizer(a["optimizer"], b["optimizer"])
    assert a["scheduler"] == b["scheduler"]


def test_kill9_then_resume_reaches_identical_parameters(data, tmp_path):
    """A training subprocess killed with SIGKILL mid-run resumes to the same step and the
    bit-identical parameters of an uninterrupted run."""
    overrides = [
        f"data.train={data['train']}", f"data.val={data['val']}", "train.max_steps=10",
        "train.ckpt_every=2", "train.val_every=0", "train.batch_size=4", "train.threads=1",
        "train.progress=false",
    ]  # fmt: skip
    code = (
        "import sys; from training.__main__ import main, COMMANDS; "
        "COMMANDS.setdefault('train-locator', ('training.train', 'locator')); "
        "sys.exit(main(sys.argv[1:]))"
    )

    def command(run_dir: Path, resume: bool) -> list[str]:
        cmd = [sys.executable, "-c", code, "train-locator", "--config",
               str(CONFIGS / "tiny_locator_test.yaml"), "--run-dir", str(run_dir)]  # fmt: skip
        for o in overrides:
            cmd += ["-o", o]
        return cmd + (["--resume"] if resume else [])

    env = {**os.environ, "PYTHONPATH": str(REPO)}
    full = subprocess.run(command(tmp_path / "full", False), cwd=REPO, env=env, timeout=300)
    assert full.returncode == 0
    run = tmp_path / "killed"
    proc = subprocess.Popen(command(run, False), cwd=REPO, env=env)
    status = run / "checkpoints" / "last.json"
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if status.is_file() and json.loads(status.read_text())["step"] >= 4:
                break
            time.sleep(0.05)
        assert proc.poll() is None, "training finished before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    killed_at = load_training_checkpoint(run / "checkpoints" / "last.pt")["step"]
    assert 4 <= killed_at < 10
    resumed = subprocess.run(command(run, True), cwd=REPO, env=env, timeout=300)
    assert resumed.returncode == 0
    a = load_training_checkpoint(tmp_path / "full" / "checkpoints" / "last.pt")
    b = load_training_checkpoint(run / "checkpoints" / "last.pt")
    assert a["step"] == b["step"] == 10
    _assert_same_state(_params(a["model"]), _params(b["model"]))
    _assert_same_optimizer(a["optimizer"], b["optimizer"])


def test_time_budget_stops_with_a_checkpoint(data, tmp_path):
    config = tiny_config(
        "tiny_locator_test.yaml", data, tmp_path, "train.max_steps=1000",
        "train.max_minutes=0.0001", "train.val_every=0",
    )  # fmt: skip
    result = _locator_fit(config, tmp_path)
    assert result.reason == "time_budget" and 1 <= result.step < 1000
    assert load_training_checkpoint(tmp_path / "checkpoints" / "last.pt")["step"] == result.step


# --------------------------------------------------------------------------------------------
# End to end
# --------------------------------------------------------------------------------------------


def test_tiny_end_to_end_run_gives_an_estimator_checkpoint(data, tmp_path):
    from stereo_pose3d.estimator import StereoPoseEstimator
    from training.data.stereo_dataset import StereoDataset

    loc = tiny_config(
        "tiny_locator_test.yaml", data, tmp_path / "loc", "train.max_steps=2", "train.val_every=0"
    )
    assert run_stage(loc) == 0
    assert (tmp_path / "loc" / "locator_final.pt").is_file()
    cdr = tiny_config(
        "tiny_cdrnet_test.yaml", data, tmp_path / "cdr", "train.max_steps=4",
        "train.val_every=0", "train.batch_size=2", "data.val_max_samples=2",
        f"system.locator={tmp_path / 'loc' / 'checkpoints' / 'last.pt'}",
        "system.estimator={score_threshold: 0.0}",
    )  # fmt: skip
    assert run_stage(cdr) == 0
    run = tmp_path / "cdr"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["step"] == 4 and summary["reason"] == "max_steps"
    assert {"val/mpjpe_rr_mm", "val/err2d_px"} <= set(summary["metrics"])
    assert list((run / "tb").glob("events.out.tfevents.*"))
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 1  # the final validation
    for name in ("system_final.pt", "system_best.pt", "pose_final.pt"):
        assert (run / name).is_file(), name
    est = StereoPoseEstimator.from_checkpoint(run / "system_final.pt", device="cpu")
    sample = StereoDataset(data["val"])[0]
    pose = est.estimate(sample["left"], sample["right"], sample["P_left"], sample["P_right"])
    assert pose.detected and pose.joints_3d.shape == (16, 3)
    from stereo_pose3d.checkpoint import load_checkpoint

    prov = load_checkpoint(run / "system_final.pt").provenance
    assert prov["stage"] == "finetune-cdr" and prov["dataset"] == "synthetic"
    assert prov["training_config"]["model"]["architecture"] == "cdrnet"
    assert "val/mpjpe_rr_mm" in prov["metrics"]


def test_pretrain_2d_weights_initialise_cdrnet(data, tmp_path):
    pre = tiny_config(
        "tiny_cdrnet_test.yaml", data, tmp_path / "pre", "stage=pretrain-2d",
        "train.max_steps=2", "train.val_every=0",
    )  # fmt: skip
    pre["stage"] = "pretrain-2d"
    assert run_stage(pre) == 0
    ckpt = load_training_checkpoint(tmp_path / "pre" / "checkpoints" / "last.pt")
    assert ckpt["model_config"]["architecture"] == "baseline"
    assert any(k.startswith("backbone.") for k in ckpt["model"])  # adapter prefix stripped
    from stereo_pose3d.models import build_model
    from training.train import init_from

    model = build_model(model_config_from(tiny_config("tiny_cdrnet_test.yaml", data, tmp_path)))
    message = init_from(model, tmp_path / "pre" / "checkpoints" / "last.pt", "cdrnet")
    assert "initialised" in message
    torch.testing.assert_close(
        model.state_dict()["backbone.conv1.weight"], ckpt["model"]["backbone.conv1.weight"]
    )


@pytest.mark.skipif(not torch.distributed.is_available(), reason="no torch.distributed")
def test_ddp_two_cpu_processes(data, tmp_path):
    """torchrun with 2 processes (gloo on CPU): each rank trains on its shard, rank 0 writes."""
    code = (
        "import sys; from training.__main__ import main, COMMANDS; "
        "COMMANDS.setdefault('train-locator', ('training.train', 'locator')); "
        "sys.exit(main(sys.argv[1:]))"
    )
    script = tmp_path / "entry.py"
    script.write_text(code + "\n")
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        str(script), "train-locator", "--config", str(CONFIGS / "tiny_locator_test.yaml"),
        "--run-dir", str(tmp_path / "ddp"), "-o", f"data.train={data['train']}",
        "-o", f"data.val={data['val']}", "-o", "train.max_steps=3", "-o", "train.threads=1",
        "-o", "train.batch_size=2", "-o", "train.val_every=0", "--no-progress",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    ckpt = load_training_checkpoint(tmp_path / "ddp" / "checkpoints" / "last.pt")
    assert ckpt["step"] == 3 and ckpt["world_size"] == 2 and len(ckpt["rng"]) == 2


def test_pretrain_2d_on_mpii_with_pckh(request, tmp_path):
    """pretrain-2d on MPII crops (the JSON-conversion fixture of test_mpii): PCKh is validated,
    and ``eval`` on an MPII folder reports the PCKh table."""
    json_root = request.getfixturevalue("mpii_json_root")
    import argparse

    from training import evaluate

    cfg = load_config(
        CONFIGS / "tiny_cdrnet_test.yaml",
        [
            "stage=pretrain-2d", "data.source=mpii", f"data.train={json_root}",
            f"data.val={json_root}", "train.max_steps=2", "train.val_every=0",
            "train.progress=false", "train.batch_size=2",
        ],
    )  # fmt: skip
    cfg["run_dir"] = str(tmp_path / "mpii")
    assert run_stage(cfg) == 0
    summary = json.loads((tmp_path / "mpii" / "summary.json").read_text())
    assert 0.0 <= summary["metrics"]["val/pckh_mean"] <= 100.0
    parser = argparse.ArgumentParser()
    evaluate.add_arguments(parser)
    out = tmp_path / "eval"
    args = parser.parse_args(
        [
            "--ckpt",
            str(tmp_path / "mpii" / "pose2d_final.pt"),
            "--data",
            str(json_root),
            "--out",
            str(out),
        ]
    )
    assert evaluate.main(args) == 0
    report = json.loads((out / "eval.json").read_text())
    assert "Mean" in report["models"]["pose2d_final"]["pckh"]
