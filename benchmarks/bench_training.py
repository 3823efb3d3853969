"""Training throughput: data loading vs optimisation step, samples/s, for one or more recipes.

    .venv/bin/python benchmarks/bench_training.py --data data/synth_train \
        [--config training/configs/synthetic_cdrnet_cpu.yaml] [--steps 6] \
        [--variant input_size=128 --variant input_size=160,batch_size=8 ...]

For each variant (a stage config plus ``key=value`` changes: ``input_size``, ``batch_size``,
``head_channels``, ``backbone``, ``threads``, ``workers``) it measures, on the machine it runs on:

* ``load_ms``: one training sample (read + decode JPEGs + augment + crop) in the main process;
* ``step_ms``: one optimisation step (forward, loss, backward, clipping, Adam) on a fixed batch;
* ``engine``: ``--steps`` steps through :func:`training.engine.fit` with the configured data
  workers (``data_ms``: time the loop waited for data per step, ``compute_ms``, ``samples/s``).

Prints a Markdown table and writes ``benchmarks/results/training.json``.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from stereo_pose3d.models import build_model  # noqa: E402
from training.engine import EngineConfig, fit  # noqa: E402
from training.train import PoseTask, build_datasets, load_config, model_config_from  # noqa: E402

SHORT = {
    "input_size": ("model", "input_size"),
    "head_channels": ("model", "head_channels"),
    "backbone": ("model", "backbone"),
    "latent_channels": ("model", "latent_channels"),
    "fusion_channels": ("model", "fusion_channels"),
    "batch_size": ("train", "batch_size"),
    "threads": ("train", "threads"),
    "workers": ("train", "num_workers"),
}


def apply_variant(config: dict, text: str) -> dict:
    config = copy.deepcopy(config)
    for item in filter(None, text.split(",")):
        key, _, value = item.partition("=")
        section, field = SHORT[key.strip()]
        if key.strip() == "input_size":
            side = int(value)
            config[section][field] = [side, side]
        elif key.strip() == "backbone":
            config[section][field] = value
        else:
            config[section][field] = int(value)
    return config


def measure(config: dict, steps: int) -> dict:
    model_cfg = model_config_from(config)
    threads = int(config["train"].get("threads", 0)) or torch.get_num_threads()
    torch.set_num_threads(threads)
    train_set, _ = build_datasets(config, model_cfg)
    bs = int(config["train"]["batch_size"])
    # Loading + augmentation in this process.
    t0 = time.perf_counter()
    items = [train_set[(0, i % len(train_set))] for i in range(bs)]
    load_ms = (time.perf_counter() - t0) / bs * 1000
    batch = torch.utils.data.default_collate(items)
    torch.manual_seed(0)
    model = build_model(model_cfg)
    task = PoseTask(config, model_cfg, heatmaps_only=config["stage"] == "pretrain-2d")
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    context = {"step": 10**6, "epoch": 100, "steps_per_epoch": 1}  # 3D loss active
    model.train()
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        loss, _ = task.training_loss(model, batch, context)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        times.append(time.perf_counter() - t0)
    step_ms = statistics.median(times[1:]) * 1000
    # Through the engine, with the configured workers.
    with tempfile.TemporaryDirectory() as tmp:
        engine = EngineConfig.from_dict(
            {
                **config["train"], "max_steps": steps, "val_every": 0, "ckpt_every": 0,
                "progress": False, "max_minutes": None,
            }
        )  # fmt: skip
        result = fit(
            build_model(model_cfg), task, train_set, None, engine, tmp,
            optim_config=config["optim"],
        )  # fmt: skip
    t = result.timing
    return {
        "input_size": model_cfg["input_size"],
        "backbone": model_cfg["backbone"]["name"],
        "head_channels": model_cfg["head"]["channels"],
        "batch_size": bs,
        "threads": threads,
        "workers": int(config["train"].get("num_workers", 0)),
        "parameters_M": sum(p.numel() for p in model.parameters()) / 1e6,
        "load_ms_per_sample": load_ms,
        "step_ms": step_ms,
        "step_samples_per_s": bs / (step_ms / 1000),
        "engine_data_ms_per_step": t["data_s_per_step"] * 1000,
        "engine_compute_ms_per_step": t["compute_s_per_step"] * 1000,
        "engine_samples_per_s": t["samples_per_s"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="a stereo training set")
    parser.add_argument(
        "--config", type=Path, default=REPO / "training/configs/synthetic_cdrnet_cpu.yaml"
    )
    parser.add_argument("--variant", action="append", default=[], help="e.g. input_size=160")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "training.json"
    )
    args = parser.parse_args()
    base = load_config(args.config, [f"data.train={args.data}", "data.val=null"])
    rows = []
    for variant in args.variant or [""]:
        config = apply_variant(base, variant)
        row = {"variant": variant or "(config)", **measure(config, args.steps)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    header = (
        "| variant | input | batch | threads | workers | load ms/sample | step ms | "
        "samples/s (step) | engine data ms/step | engine compute ms/step | samples/s (engine) |"
    )
    print("\n" + header + "\n|" + "---|" * 11)
    for r in rows:
        print(
            f"| {r['variant']} | {r['input_size'][0]} | {r['batch_size']} | {r['threads']} | "
            f"{r['workers']} | {r['load_ms_per_sample']:.1f} | {r['step_ms']:.0f} | "
            f"{r['step_samples_per_s']:.1f} | {r['engine_data_ms_per_step']:.0f} | "
            f"{r['engine_compute_ms_per_step']:.0f} | {r['engine_samples_per_s']:.1f} |"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "config": str(args.config), "data": str(args.data), "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
        "load_average": os.getloadavg(), "rows": rows,
    }  # fmt: skip
    args.out.write_text(json.dumps(meta, indent=2) + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
