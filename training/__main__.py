"""``python -m training <command> ...``: one entry point for every training-side tool.

Each command lives in its own module exposing ``add_arguments(parser)`` and ``main(args) -> int``.
Modules are imported only when their command is chosen, so ``synth`` does not pay for torch and a
broken optional dependency of one command cannot break the others.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# command -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "synth": ("training.synth.cli", "render the synthetic stereo dataset or a rosbag2 recording"),
    "extract-mads": (
        "training.data.mads",
        "convert the MADS release into the stereo sample format",
    ),
    "crop-cache": (
        "training.data.crop_cache",
        "store a compact copy of a stereo set, cut around the people (for fast training)",
    ),
    "pretrain-2d": ("training.train", "2D heatmap pretraining (MPII or synthetic)"),
    "train-baseline": ("training.train", "train the two-view Simple Baselines + DLT model"),
    "finetune-cdr": ("training.train", "train / fine-tune CDRNet end to end (2D + 3D losses)"),
    "train-locator": ("training.train", "train the full-frame person locator"),
    "eval": ("training.evaluate", "evaluate a checkpoint: MPJPE tables, floor, figures"),
    "tune-temporal": (
        "training.tune_temporal",
        "choose the temporal filter's parameters on continuous video",
    ),
    "export": ("training.export", "write the node's checkpoint format"),
    "demo": ("training.demo", "end-to-end demo: synthetic bag -> node -> markers, MPJPE, picture"),
}


def _usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"  {name:<{width}}  {help_}" for name, (_, help_) in COMMANDS.items()]
    return "usage: python -m training <command> [options]\n\ncommands:\n" + "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"unknown command {command!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module_name, help_ = COMMANDS[command]
    module = importlib.import_module(module_name)
    parser = argparse.ArgumentParser(prog=f"python -m training {command}", description=help_)
    module.add_arguments(parser, command) if _takes_command(module) else module.add_arguments(
        parser
    )
    args = parser.parse_args(rest)
    args.command = command
    return int(module.main(args) or 0)


def _takes_command(module) -> bool:
    """Modules serving several commands (training.train) take the command name too."""
    import inspect

    return len(inspect.signature(module.add_arguments).parameters) == 2


if __name__ == "__main__":
    sys.exit(main())
