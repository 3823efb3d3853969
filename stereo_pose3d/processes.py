"""Stopping a child process the way Ctrl-C would, with a bounded wait.

Used by the test harness, ``benchmarks/bench_node.py`` and the demo to end the node (and other
ROS subprocesses): SIGINT lets rclpy shut down cleanly and the process report its exit code; a
process that does not end in time is killed. Standard library only (the node may import it).
"""

from __future__ import annotations

import signal
import subprocess


def stop_process(
    proc: subprocess.Popen, timeout: float = 10.0, kill_timeout: float = 5.0
) -> int | None:
    """Stop ``proc``: SIGINT, wait up to ``timeout`` s, then SIGKILL and wait up to
    ``kill_timeout`` s. A process that has already exited is left alone.

    Returns ``proc.returncode``: the process's own exit code when it ended on SIGINT (or before),
    ``-signal.SIGKILL`` when it had to be killed. Raises :class:`subprocess.TimeoutExpired` only if
    the process is still not gone ``kill_timeout`` s after the kill. Output is not collected here:
    the callers send it to a file (or a pipe they read themselves).
    """
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(kill_timeout)
    return proc.returncode
