"""stereo_pose3d.processes.stop_process on real subprocesses (no ROS)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest

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


def test_node_main_treats_a_shutdown_race_as_a_clean_exit(monkeypatch):
    """SIGINT can shut the context down while spin() builds its wait set; rclpy then raises a
    RuntimeError (RCLError) instead of ExternalShutdownException. main() exits 0 then, and
    re-raises a RuntimeError raised while the context is still up."""
    import rclpy

    from stereo_pose3d import node as node_module

    destroyed = []

    class StubNode:
        def destroy_node(self):
            destroyed.append(True)

    def racing_spin(node):
        rclpy.shutdown()  # what the signal handler does
        raise RuntimeError("failed to initialize wait set: the given context is not valid")

    def failing_spin(node):
        raise RuntimeError("something else")

    monkeypatch.setattr(node_module, "StereoPose3DNode", StubNode)
    monkeypatch.setattr(rclpy, "spin", racing_spin)
    assert node_module.main([]) == 0
    assert destroyed == [True] and not rclpy.ok()
    monkeypatch.setattr(rclpy, "spin", failing_spin)
    with pytest.raises(RuntimeError, match="something else"):
        node_module.main([])
    assert destroyed == [True, True] and not rclpy.ok()  # shut down on the way out
