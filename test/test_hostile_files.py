"""Hostile files at every entry point that reads them: clear errors, no code execution, no partial
outputs left behind.

* Checkpoints (empty, truncated, a text file, a foreign torch file, another architecture, weights
  that do not fit their config, pickles whose loading would run code) given to the node (its
  console script and its loader), ``stereo_pose3d_bag process``, ``training eval``,
  ``training export``, and the training code's ``--init`` / ``--resume`` readers.
  ``test_checkpoint.py`` covers ``load_checkpoint`` itself.
* YAML: node parameter files with wrong types (every bad parameter named at once), malformed or
  missing; training configs with wrong types or missing data (named before the run dir is
  created).
* Bags: truncated (mcap and sqlite3), lacking topics, wrong image type, unreadable metadata,
  corrupt serialised messages, an estimator that fails, an interrupted run.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from test_bag import write_stereo_bag
from test_fuzz_messages import fuzz
from test_node_harness import REPO, node_command, ros_env, start_node, stop_process, unique_domain

from stereo_pose3d import bag as bagtool
from stereo_pose3d.checkpoint import CheckpointError, save_checkpoint
from stereo_pose3d.estimator import StereoPoseEstimator
from stereo_pose3d.models import build_model, locator_config
from stereo_pose3d.node import ConfigError, NodeConfig, load_estimator, validate_config
from training.__main__ import main as training_main

# torch notes the crafted pickles' protocol while refusing them
pytestmark = pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")


class Exploit:
    """Unpickling this runs ``os.system("touch MARKER")``."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture(scope="module")
def marker(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("marker") / "code_was_executed"


@pytest.fixture(scope="module")
def hostile(tmp_path_factory, fixture_checkpoint, marker) -> dict[str, Path]:
    """name -> a checkpoint file that must be refused."""
    d = tmp_path_factory.mktemp("hostile")
    good = fixture_checkpoint.read_bytes()
    files = {
        "empty": b"",
        "truncated_half": good[: len(good) // 2],
        "truncated_tail": good[:-200],
        "text": b"weights: please\n",
    }
    out = {}
    for name, data in files.items():
        out[name] = d / f"{name}.pt"
        out[name].write_bytes(data)
    out["foreign_torch"] = d / "foreign_torch.pt"
    torch.save(torch.nn.Linear(3, 2).state_dict(), out["foreign_torch"])
    torch.manual_seed(0)
    config = locator_config(backbone="resnet18", input_size=(128, 96))
    out["other_architecture"] = save_checkpoint(
        d / "locator_only.pt", build_model(config, pretrained=False), config, {"note": "x"}
    )
    payload = torch.load(fixture_checkpoint, weights_only=True)
    cfg = json.loads(payload["config_json"])
    cfg["pose"]["joint_names"] = [f"j{i}" for i in range(19)]
    cfg["pose"]["skeleton"] = None
    payload["config_json"] = json.dumps(cfg)
    out["weights_do_not_fit"] = d / "weights_do_not_fit.pt"
    torch.save(payload, out["weights_do_not_fit"])
    out["pickle_zip"] = d / "pickle_zip.pt"
    torch.save(Exploit(marker), out["pickle_zip"])
    out["pickle_plain"] = d / "pickle_plain.pt"
    out["pickle_plain"].write_bytes(pickle.dumps(Exploit(marker)))
    out["pickle_in_payload"] = d / "pickle_in_payload.pt"
    payload = torch.load(fixture_checkpoint, weights_only=True)
    payload["provenance_json"] = Exploit(marker)
    torch.save(payload, out["pickle_in_payload"])
    out["directory"] = d / "a_directory.pt"
    out["directory"].mkdir()
    # the exploit is real: an unsafe load runs it
    control = d / "control"
    pickle.loads(pickle.dumps(Exploit(control)))
    assert control.exists()
    return out


@pytest.fixture(scope="module")
def small_bag(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("bags") / "small"
    write_stereo_bag(path, frames=3)
    return path


def check_message(text: str, path: Path) -> None:
    """One clear line naming the file, no traceback."""
    assert str(path) in text or path.name in text, text
    assert "Traceback" not in text, text


# ---------------------------------------------------------------------------------------------
# checkpoints
# ---------------------------------------------------------------------------------------------


def test_every_loader_refuses_every_hostile_checkpoint(
    hostile, marker, small_bag, tmp_path, capsys
):
    from training.engine import load_training_checkpoint
    from training.train import read_state_dict

    for name, path in hostile.items():
        with pytest.raises(ConfigError) as info:  # the node's loader
            load_estimator(NodeConfig(weights=str(path), device="cpu"))
        check_message(str(info.value), path)
        with pytest.raises(CheckpointError):
            StereoPoseEstimator.from_checkpoint(path, device="cpu")
        with pytest.raises(ValueError):  # training --resume reads training checkpoints
            load_training_checkpoint(path)
        if name not in ("other_architecture", "weights_do_not_fit"):  # usable for --init
            with pytest.raises((ValueError, OSError)):  # training --init
                read_state_dict(path)
        out = tmp_path / f"out_{name}"
        code = bagtool.main(["process", str(small_bag), "--out", str(out), "--weights", str(path)])
        err = capsys.readouterr().err
        assert code == 2 and "cannot load weights" in err, (name, err)
        check_message(err, path)
        assert not out.exists(), name
    assert not marker.exists(), "a checkpoint executed code"


@pytest.fixture(scope="module")
def tiny_set(tmp_path_factory) -> Path:
    """A 2-sample synthetic stereo dataset (160x120)."""
    out = tmp_path_factory.mktemp("tiny_set") / "set"
    argv = ["synth", "--out", str(out), "--frames", "2", "--frames-per-rig", "2", "--width",
            "160", "--height", "120", "--workers", "1", "--no-progress"]  # fmt: skip
    assert training_main(argv) == 0
    return out


def test_eval_and_export_refuse_hostile_checkpoints(hostile, marker, tiny_set, tmp_path, capsys):
    for name in ("truncated_half", "pickle_zip", "pickle_plain", "pickle_in_payload", "text"):
        path = hostile[name]
        out = tmp_path / f"eval_{name}"
        code = training_main(["eval", "--ckpt", str(path), "--data", str(tiny_set),
                              "--out", str(out), "--device", "cpu"])  # fmt: skip
        err = capsys.readouterr().err
        assert code == 2, (name, err)
        check_message(err, path)
        assert not out.exists(), name
    for name in ("truncated_half", "pickle_zip", "pickle_plain", "other_architecture", "text"):
        path = hostile[name]
        out = tmp_path / f"export_{name}.pt"
        with contextlib.suppress(SystemExit):
            code = training_main(["export", "--ckpt", str(path), "--out", str(out)])
        err = capsys.readouterr().err
        assert code != 0, (name, err)
        check_message(err, path)
        assert not list(tmp_path.glob(f"export_{name}*"))
    assert not marker.exists()


def test_eval_names_a_checkpoint_of_another_architecture_and_a_missing_data_folder(
    hostile, tiny_set, tmp_path, capsys
):
    path = hostile["other_architecture"]
    code = training_main(["eval", "--ckpt", str(path), "--data", str(tiny_set),
                          "--out", str(tmp_path / "a"), "--device", "cpu"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and path.name in err and "locator" in err, err
    assert not (tmp_path / "a").exists()
    missing = tmp_path / "no_such_set"
    argv = ["eval", "--ckpt", str(hostile["truncated_half"]), "--data", str(missing), "--out",
            str(tmp_path / "b"), "--device", "cpu"]  # fmt: skip
    code = training_main(argv)
    assert code == 2 and "no_such_set" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()


def test_node_process_exits_cleanly_on_hostile_weights(hostile, marker, tmp_path):
    path = hostile["pickle_zip"]
    proc = start_node(unique_domain(), tmp_path / "node.log", path)
    try:
        code = proc.wait(60)
    finally:
        stop_process(proc)
    text = proc.log_path.read_text()
    assert code == 2, text
    assert "cannot load weights" in text
    check_message(text, path)
    assert not marker.exists()


# ---------------------------------------------------------------------------------------------
# YAML
# ---------------------------------------------------------------------------------------------


def run_node(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*node_command(), "--ros-args", *args],
        env=ros_env(unique_domain()),
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_node_yaml_with_wrong_types_names_every_bad_parameter(tmp_path):
    bad = tmp_path / "wrong_types.yaml"
    bad.write_text(
        "/**:\n  ros__parameters:\n"
        '    queue_size: "ten"\n    slop: [1.0, 2.0]\n    publish_debug_image: "yes"\n'
        "    min_confidence: high\n    weights: 42\n    marker_scale: .nan\n"
    )
    res = run_node("--params-file", str(bad))
    out = res.stdout + res.stderr
    assert res.returncode == 2, out
    for name in ("queue_size", "slop", "publish_debug_image", "min_confidence", "weights",
                 "marker_scale"):  # fmt: skip
        assert f"  {name}: " in out, (name, out)
    assert "Traceback" not in out
    broken = tmp_path / "broken.yaml"
    broken.write_text("/**:\n  ros__parameters:\n    queue_size: [\n")
    for params in (broken, tmp_path / "missing.yaml"):
        res = run_node("--params-file", str(params))
        out = res.stdout + res.stderr
        assert res.returncode == 2 and "cannot start" in out and params.name in out, out
        assert "Traceback" not in out


VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(-5, 20000), st.floats(allow_nan=True),
    st.text(max_size=6), st.lists(st.integers(0, 3), max_size=3),
)  # fmt: skip


@fuzz(150)
@given(values=st.dictionaries(st.sampled_from(sorted(NodeConfig.__dataclass_fields__)), VALUES))
def test_node_parameter_validation_names_each_bad_value(values):
    """Any values of any type: a NodeConfig, or a ConfigError whose lines name bad keys only."""
    try:
        config = validate_config(values, check_files=False)
    except ConfigError as exc:
        lines = str(exc).splitlines()[1:]
        assert lines, str(exc)
        named = {line.strip().split(":")[0] for line in lines}
        assert named <= set(values), (named, values)
        return
    for key, value in values.items():
        got = getattr(config, key)
        assert got == value or (isinstance(value, int) and got == float(value)), (key, value)


def _training_run(tmp_path: Path, config: str, capsys, *args: str) -> tuple[int | None, str, Path]:
    cfg = tmp_path / "config.yaml"
    cfg.write_text(config)
    run_dir = tmp_path / "run"
    argv = ["finetune-cdr", "--config", str(cfg), "--run-dir", str(run_dir), *args]
    try:
        code = training_main(argv)
    except Exception as exc:  # a traceback is what the user would see
        return None, f"Traceback: {type(exc).__name__}: {exc}", run_dir
    return code, capsys.readouterr().err, run_dir


@pytest.mark.parametrize(
    ("config", "needle"),
    [("- 1\n- 2\n", "mapping"),
     ("stage: finetune-cdr\ntrian: {}\n", "trian"),
     ("stage: finetune-cdr\ntrain: {batchsize: 2}\n", "batchsize"),
     ("stage: finetune-cdr\naugment: {flipp: true}\n", "flipp"),
     ("stage: train-baseline\n", "train-baseline")],
)  # fmt: skip
def test_training_config_structure_errors_are_clear(tmp_path, capsys, config, needle):
    code, err, run_dir = _training_run(tmp_path, config, capsys)
    assert code == 2 and needle in err and "Traceback" not in err, err
    assert not run_dir.exists()


DATA = "data: {train: TINY_SET, val: TINY_SET}\n"


@pytest.mark.parametrize(
    ("config", "key"),
    [("stage: finetune-cdr\ntrain: {batch_size: eight}\n" + DATA, "batch_size"),
     ("stage: finetune-cdr\noptim: {lr: fast}\n" + DATA, "lr"),
     ("stage: finetune-cdr\nmodel: {input_size: big}\n" + DATA, "input_size"),
     ("stage: finetune-cdr\ntrain: [1, 2]\n", "train"),
     ("stage: finetune-cdr\ntrain: {max_steps: 1\n", "config.yaml"),
     ("stage: finetune-cdr\ndata: {train: /nonexistent/set}\n", "/nonexistent/set")],
)  # fmt: skip
def test_training_config_wrong_types_are_named_before_anything_is_written(
    tmp_path, tiny_set, capsys, config, key
):
    config = config.replace("TINY_SET", str(tiny_set))  # a real dataset: only the type is wrong
    code, err, run_dir = _training_run(tmp_path, config, capsys)
    assert code == 2 and key in err and "Traceback" not in err, err
    assert not run_dir.exists(), "a partial run directory was left behind"


# ---------------------------------------------------------------------------------------------
# bags
# ---------------------------------------------------------------------------------------------


def _process(bag: Path, out: Path, weights: Path, capsys) -> tuple[int, str]:
    code = bagtool.main(["process", str(bag), "--out", str(out), "--weights", str(weights),
                         "--device", "cpu"])  # fmt: skip
    captured = capsys.readouterr()
    return code, captured.out + captured.err


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_truncated_bags_are_refused_without_outputs(tmp_path, fixture_checkpoint, storage, capsys):
    src = tmp_path / "src"
    write_stereo_bag(src, frames=3, storage=storage)
    for keep in (0.5, 0.95):
        bag = tmp_path / f"truncated_{keep}"
        shutil.copytree(src, bag)
        (data,) = [p for p in bag.iterdir() if p.name != "metadata.yaml"]
        data.write_bytes(data.read_bytes()[: int(data.stat().st_size * keep)])
        out = tmp_path / f"out_{keep}"
        code, text = _process(bag, out, fixture_checkpoint, capsys)
        assert code == 2 and "cannot read bag" in text, text
        check_message(text, bag)
        assert not out.exists()
    if storage == "mcap":  # play says the same (in its own process: it starts ROS)
        res = subprocess.run(
            [sys.executable, "-m", "stereo_pose3d.bag", "play", str(bag)],
            env=ros_env(unique_domain()), capture_output=True, text=True, timeout=60, cwd=REPO,
        )  # fmt: skip
        assert res.returncode == 2 and "cannot read bag" in res.stderr, res.stderr
        assert "Traceback" not in res.stderr


def test_bags_lacking_topics_or_with_bad_metadata_are_refused(
    tmp_path, small_bag, fixture_checkpoint, capsys
):
    from rosbags.rosbag2 import Writer
    from rosbags.typesys import Stores, get_typestore

    ts = get_typestore(Stores.ROS2_KILTED)
    cases = {
        "left_only": {"/stereo/left/image_rect": "sensor_msgs/msg/Image"},
        "no_camera_info": {"/stereo/left/image_rect": "sensor_msgs/msg/Image",
                           "/stereo/right/image_rect": "sensor_msgs/msg/Image"},
        "compressed": {"/stereo/left/image_rect": "sensor_msgs/msg/CompressedImage",
                       "/stereo/right/image_rect": "sensor_msgs/msg/CompressedImage"},
    }  # fmt: skip
    for name, topics in cases.items():
        bag = tmp_path / name
        writer = Writer(bag, version=8)
        writer.open()
        for topic, msgtype in topics.items():
            writer.add_connection(topic, msgtype, typestore=ts)
        writer.close()
        out = tmp_path / f"out_{name}"
        code, text = _process(bag, out, fixture_checkpoint, capsys)
        assert code == 2 and ("lacks topics" in text or "no <ns>/left/image_rect" in text), text
        assert "Traceback" not in text and not out.exists()
    bad_meta = tmp_path / "bad_metadata"
    shutil.copytree(small_bag, bad_meta)
    meta = bad_meta / "metadata.yaml"
    meta.write_text(meta.read_text().replace("message_count:", "message_count: many #"))
    no_data = tmp_path / "no_data_file"
    shutil.copytree(small_bag, no_data)
    for p in no_data.iterdir():
        if p.name != "metadata.yaml":
            p.unlink()
    for bag in (bad_meta, no_data):
        out = tmp_path / f"out_{bag.name}"
        code, text = _process(bag, out, fixture_checkpoint, capsys)
        assert code == 2 and "cannot read bag" in text, text
        check_message(text, bag)
        assert not out.exists()


def test_corrupt_messages_and_failing_estimator_are_counted(
    tmp_path, small_bag, fixture_checkpoint, capsys
):
    """Corrupt serialised messages are skipped and counted, images the estimator cannot take
    (too small) are counted as estimator errors, the output bag is complete and readable."""
    from rosbags.rosbag2 import Reader, Writer
    from rosbags.typesys import Stores, get_typestore

    ts = get_typestore(Stores.ROS2_KILTED)
    bag = tmp_path / "mixed"
    writer = Writer(bag, version=8)
    writer.open()
    reader = Reader(small_bag)
    reader.open()
    conns = {c.id: writer.add_connection(c.topic, c.msgtype, typestore=ts)
             for c in reader.connections}  # fmt: skip
    messages = list(reader.messages())
    reader.close()
    for i, (conn, t, raw) in enumerate(messages):
        if conn.topic.endswith("left/image_rect") and i < len(messages) // 2:
            raw = bytes(raw[:4]) + os.urandom(64)  # corrupt CDR
        writer.write(conns[conn.id], t, raw)
    writer.close()
    out = tmp_path / "out"
    code, text = _process(bag, out, fixture_checkpoint, capsys)
    assert code == 0, text
    assert "corrupt_message" in text and "Traceback" not in text
    assert bagtool.open_reader(out)  # a complete, readable bag

    from test_bag import render_stereo_pair

    from stereo_pose3d import ros_io

    tiny = tmp_path / "tiny_images"
    writer = Writer(tiny, version=8)
    writer.open()
    pair = render_stereo_pair(width=24, height=16, f=20.0)
    topics = {"/s/left/image_rect": ("sensor_msgs/msg/Image", ros_io.rgb_to_image(pair.left)),
              "/s/right/image_rect": ("sensor_msgs/msg/Image", ros_io.rgb_to_image(pair.right)),
              "/s/left/camera_info": ("sensor_msgs/msg/CameraInfo",
                                      ros_io.camera_info(pair.P_left, 24, 16)),
              "/s/right/camera_info": ("sensor_msgs/msg/CameraInfo",
                                       ros_io.camera_info(pair.P_right, 24, 16))}  # fmt: skip
    from rclpy.serialization import serialize_message

    conns = {t: writer.add_connection(t, ty, typestore=ts) for t, (ty, _) in topics.items()}
    for k in range(2):
        for t, (_, msg) in topics.items():
            msg.header = ros_io.make_header(10**18 + k * 10**8, "f")
            writer.write(conns[t], 10**18 + k * 10**8, serialize_message(msg))
    writer.close()
    code, text = _process(tiny, tmp_path / "out_tiny", fixture_checkpoint, capsys)
    assert code == 0 and "estimator_error" in text and "Traceback" not in text, text


def test_interrupted_processing_leaves_no_output(tmp_path, small_bag, fixture_checkpoint):
    estimator = StereoPoseEstimator.from_checkpoint(fixture_checkpoint, device="cpu")
    out, video = tmp_path / "out", tmp_path / "out.mp4"

    def interrupt(n: int) -> None:
        if n == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        bagtool.process_bag(small_bag, out, estimator, video=video, progress=interrupt)
    assert not out.exists() and not video.exists()
