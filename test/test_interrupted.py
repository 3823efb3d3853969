"""Interrupted work: SIGKILL during synthetic generation and MADS extraction.

The writer process kills itself with SIGKILL at chosen points of its file writes (half-way
through writing an image, a label file or dataset.json, or between a sample's images and its
labels) -- the worst moments, chosen exactly -- and once at an arbitrary moment from outside.
Then:

* the reader (``list_samples``, ``iter_samples``, ``StereoDataset``, all strict) accepts only
  complete samples, each byte-identical to the same sample of an uninterrupted run; an
  interrupted MADS split is not visible at all;
* running the same command again completes the set: byte-identical to the uninterrupted run
  (left-over ``.tmp`` files of the killed writes are hidden files the reader never looks at).

SIGKILL during training: ``test_train.py::test_kill9_then_resume_reaches_identical_parameters``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_node_harness import REPO

from training.data.stereo_dataset import DatasetError, iter_samples, list_samples

# Runs ``python -m training ARGS`` with the dataset writer's atomic file write replaced by one
# that SIGKILLs the process at write number KILL_AT: "mid" after half of the bytes reached the
# temporary file, "before" before anything of that file is written.
CHILD = r"""
import os, signal, sys, tempfile
import training.data.stereo_dataset as sd
kill_at, mode = int(os.environ["KILL_AT"]), os.environ["KILL_MODE"]
original, calls = sd._atomic_write, [0]

def killing_write(path, data):
    calls[0] += 1
    if calls[0] == kill_at:
        if mode == "mid":
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
            os.write(fd, data[: len(data) // 2])
        os.kill(os.getpid(), signal.SIGKILL)
    return original(path, data)

sd._atomic_write = killing_write
from training.__main__ import main
sys.exit(main(sys.argv[1:]))
"""
COUNTS = {"kills": 0, "samples checked": 0}
# the reader warns about the killed sample's images without labels: expected here
pytestmark = pytest.mark.filterwarnings("ignore:.*incomplete sample.*:UserWarning")


@pytest.fixture(scope="module", autouse=True)
def report_counts(request):
    yield
    from test_fuzz_messages import show_counts

    show_counts(request, [f"interrupted-work cases: {COUNTS}"])


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


def run_training(*args: str, kill_at: int = 0, mode: str = "mid") -> int:
    """``python -m training ARGS`` in a subprocess; ``kill_at``: SIGKILL at that file write."""
    if kill_at:
        cmd = [sys.executable, "-c", CHILD, *args]
        e = {**env(), "KILL_AT": str(kill_at), "KILL_MODE": mode}
    else:
        cmd, e = [sys.executable, "-m", "training", *args], env()
    res = subprocess.run(cmd, cwd=REPO, env=e, capture_output=True, text=True, timeout=300)
    if kill_at:
        COUNTS["kills"] += 1
    assert res.returncode in (0, -signal.SIGKILL), res.stderr[-3000:]
    return res.returncode


def files(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` except hidden ones (temporary files, staging folders)."""
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)
    }


def check_reader_accepts_only_complete_samples(root: Path, reference: Path) -> int:
    """Everything the (strict) reader gives is complete and identical to the uninterrupted run;
    returns the number of samples it accepts (0 when it refuses the folder)."""
    from training.data.stereo_dataset import StereoDataset

    try:
        refs = list_samples(root)
    except DatasetError:  # no dataset.json yet: the reader refuses the folder
        assert not (root / "dataset.json").exists()
        return 0
    samples = list(iter_samples(root))  # strict: raises on any unreadable sample
    assert len(samples) == len(refs) == len(StereoDataset(root))
    for ref in refs:
        for path in (ref.labels, ref.left, ref.right):
            rel = path.relative_to(root)
            assert path.read_bytes() == (reference / rel).read_bytes(), rel
        COUNTS["samples checked"] += 1
    return len(refs)


SYNTH = ["synth", "--frames", "6", "--frames-per-rig", "2", "--width", "160", "--height", "120",
         "--workers", "1", "--no-progress", "--seed", "3"]  # fmt: skip


@pytest.fixture(scope="module")
def synth_reference(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth_ref") / "set"
    assert run_training(*SYNTH, "--out", str(out)) == 0
    assert len(list_samples(out)) == 6
    return out


# write 1 is dataset.json; then per sample: left image, right image, labels
@pytest.mark.parametrize(
    ("kill_at", "mode", "complete"),
    [(1, "mid", 0), (5, "before", 1), (8, "mid", 2), (13, "before", 3), (17, "mid", 5)],
)  # fmt: skip
def test_sigkill_during_synthetic_generation(tmp_path, synth_reference, kill_at, mode, complete):
    out = tmp_path / "set"
    assert run_training(*SYNTH, "--out", str(out), kill_at=kill_at, mode=mode) == -signal.SIGKILL
    if kill_at > 1:
        assert list(out.rglob(".*.tmp")) or mode == "before"  # the killed write's remains
    assert check_reader_accepts_only_complete_samples(out, synth_reference) == complete
    assert run_training(*SYNTH, "--out", str(out)) == 0  # the same command again
    assert check_reader_accepts_only_complete_samples(out, synth_reference) == 6
    assert files(out) == files(synth_reference)


def test_sigkill_at_an_arbitrary_moment_of_synthetic_generation(tmp_path, synth_reference):
    out = tmp_path / "set"
    args = [*SYNTH, "--out", str(out)]
    proc = subprocess.Popen([sys.executable, "-m", "training", *args], cwd=REPO, env=env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if any(out.rglob("*.left.jpg")):
                break
            time.sleep(0.002)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(30)
    COUNTS["kills"] += 1
    check_reader_accepts_only_complete_samples(out, synth_reference)
    assert run_training(*args) == 0
    assert files(out) == files(synth_reference)


# ---------------------------------------------------------------------------------------------
# MADS
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mads(tmp_path_factory) -> tuple[Path, Path, int]:
    """(release, reference extraction, number of file writes of the val split)."""
    from test_mads import _write_movement

    root = tmp_path_factory.mktemp("mads_release")
    _write_movement(root, "Kata", om_sign=-1.0, right_in_depth=False)
    _write_movement(root, "Taichi", om_sign=1.0, right_in_depth=True)
    ref = tmp_path_factory.mktemp("mads_ref") / "out"
    assert run_training(*mads_args(root, ref)) == 0
    val_writes = 1 + 3 * len(list_samples(ref / "val"))
    assert len(list_samples(ref / "train")) > 2
    return root, ref, val_writes


def mads_args(root: Path, out: Path) -> list[str]:
    return ["extract-mads", "--root", str(root), "--out", str(out), "--movements", "Kata",
            "Taichi", "--quiet"]  # fmt: skip


@pytest.mark.parametrize(("split", "offset"), [("val", 5), ("train", 1), ("train", 9)])
def test_sigkill_during_mads_extraction(tmp_path, mads, split, offset):
    root, ref, val_writes = mads
    out = tmp_path / "out"
    kill_at = offset + (val_writes if split == "train" else 0)
    assert run_training(*mads_args(root, out), kill_at=kill_at) == -signal.SIGKILL
    # the split being written is invisible; the one finished before is complete
    assert not (out / split).exists()
    assert (out / f".{split}.partial").is_dir()  # staging, hidden
    with pytest.raises(DatasetError):
        list_samples(out / split)
    if split == "train":
        n = check_reader_accepts_only_complete_samples(out / "val", ref / "val")
        assert n == len(list_samples(ref / "val"))
    # the same command again completes the set (the finished split is kept)
    assert run_training(*mads_args(root, out)) == 0
    for s in ("val", "train"):
        check_reader_accepts_only_complete_samples(out / s, ref / s)
        assert files(out / s) == files(ref / s)
    assert sorted(p.name for p in out.iterdir()) == ["train", "val"]  # no staging left
