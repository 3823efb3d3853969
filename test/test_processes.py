"""stereo_pose3d.processes.stop_process on real subprocesses (no ROS)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

from stereo_pose3d.processes import stop_process

# Prints "ready" once its SIGINT handler is installed, then sleeps; on SIGINT exits with ``code``.
_HANDLES_SIGINT = (
    "import signal, sys, time\n"
    "signal.signal(signal.SIGINT, lambda *_: sys.exit({code}))\n"
    "print('ready', flush=True)\n"
    "time.sleep(60)\n"
)
_IGNORES_SIGINT = (
    "import signal, time\n"
    "signal.signal(signal.SIGINT, signal.SIG_IGN)\n"
    "print('ready', flush=True)\n"
    "time.sleep(60)\n"
)


def _start(source: str) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", source], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    return proc


def test_sigint_ends_the_process_with_its_own_exit_code() -> None:
    for code in (0, 3):
        proc = _start(_HANDLES_SIGINT.format(code=code))
        t0 = time.monotonic()
        assert stop_process(proc, timeout=5.0) == code
        assert time.monotonic() - t0 < 5.0
        assert proc.returncode == code
        proc.stdout.close()


def test_process_ignoring_sigint_is_killed_after_the_timeout() -> None:
    proc = _start(_IGNORES_SIGINT)
    t0 = time.monotonic()
    assert stop_process(proc, timeout=0.5) == -signal.SIGKILL
    elapsed = time.monotonic() - t0
    assert 0.5 <= elapsed < 0.5 + 5.0  # waited the timeout, then the kill was prompt
    assert proc.poll() == -signal.SIGKILL
    proc.stdout.close()


def test_exited_process_is_left_alone() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "raise SystemExit(7)"])
    proc.wait(10)
    assert stop_process(proc) == 7
    assert stop_process(proc) == 7  # idempotent
