"""Helpers for the live ROS tests (no tests here): domains, environments, a peer node, the node
process.

Every live test gets its own ``ROS_DOMAIN_ID`` (and discovery limited to localhost), so tests and
concurrently running test processes don't see each other. The test process and every subprocess
use the package's Fast DDS profile (:mod:`stereo_pose3d.dds`), as the launch file and the console
scripts do, so full-size images cross process boundaries.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import subprocess
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from stereo_pose3d import dds, processes

REPO = Path(__file__).resolve().parent.parent
CONFIG_YAML = REPO / "config" / "stereo_pose3d.yaml"

# The test process is a ROS peer too: its participants must use the same transports.
os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
dds.configure()

_domains = itertools.count()


def unique_domain() -> int:
    """A ROS domain id in [1, 101] distinct for each call in this process and unlikely to clash
    with other test processes."""
    return 1 + (os.getpid() * 17 + next(_domains) * 7) % 101


def ros_env(domain: int) -> dict[str, str]:
    """Environment for a subprocess on ``domain`` (package importable, same DDS profile)."""
    return dds.process_env(domain, REPO)


def node_command() -> list[str]:
    """The installed console script if present, else ``python -m stereo_pose3d.node``."""
    script = Path(sys.executable).parent / "stereo_pose3d_node"
    if script.exists():
        return [str(script)]
    found = shutil.which("stereo_pose3d_node")
    return [found] if found else [sys.executable, "-m", "stereo_pose3d.node"]


def start_node(
    domain: int,
    log: Path,
    weights: Path,
    *params: str,
    namespace: str = "/stereo",
    params_file: Path = CONFIG_YAML,
) -> subprocess.Popen:
    """Start ``stereo_pose3d_node`` with the YAML file; ``params``: extra ``name:=value``."""
    cmd = [
        *node_command(),
        "--ros-args",
        "--params-file",
        str(params_file),
        "-p",
        f"weights:={weights}",
        "-p",
        "device:=cpu",
        "-r",
        f"__ns:={namespace}",
    ]
    for p in params:
        cmd += ["-p", p]
    handle = open(log, "wb")  # noqa: SIM115 - closed with the process
    proc = subprocess.Popen(cmd, env=ros_env(domain), stdout=handle, stderr=subprocess.STDOUT)
    proc.log_handle = handle  # type: ignore[attr-defined]
    proc.log_path = log  # type: ignore[attr-defined]
    return proc


def stop_process(proc: subprocess.Popen, timeout: float = 10.0) -> int:
    """Stop ``proc`` (:func:`stereo_pose3d.processes.stop_process`: SIGINT, ``timeout`` s, kill)
    and close the log file :func:`start_node` gave it; returns the exit code."""
    code = processes.stop_process(proc, timeout)
    handle = getattr(proc, "log_handle", None)
    if handle is not None:
        handle.close()
    return code


def rss_mb(pid: int) -> float:
    """Resident memory of a process in MB (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    raise RuntimeError("no VmRSS")


class RosPeer:
    """An rclpy node in the test process on its own context and domain, spun in a thread.

    ``received[topic]`` collects ``(wall_time, msg)`` of every subscription.
    """

    def __init__(self, domain: int, name: str = "test_peer") -> None:
        import rclpy
        from rclpy.executors import SingleThreadedExecutor

        self.context = rclpy.Context()
        rclpy.init(context=self.context, domain_id=domain)
        self.node = rclpy.create_node(name, context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.received: dict[str, list[tuple[float, Any]]] = defaultdict(list)
        self.lock = threading.Lock()
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._thread.start()

    def _spin(self) -> None:
        with contextlib.suppress(Exception):  # ends when the context shuts down
            self.executor.spin()

    def subscribe(self, msg_type: Any, topic: str, qos: Any = 10) -> None:
        def cb(msg: Any) -> None:
            with self.lock:
                self.received[topic].append((time.perf_counter(), msg))

        self.node.create_subscription(msg_type, topic, cb, qos)

    def messages(self, topic: str) -> list[Any]:
        with self.lock:
            return [m for _, m in self.received[topic]]

    def timed(self, topic: str) -> list[tuple[float, Any]]:
        with self.lock:
            return list(self.received[topic])

    def close(self) -> None:
        self.executor.shutdown(timeout_sec=2.0)
        self.node.destroy_node()
        self.context.try_shutdown()
        self._thread.join(2.0)


def wait_for(predicate: Callable[[], Any], timeout: float, period: float = 0.02) -> Any:
    """Poll ``predicate`` until truthy (returned) or for ``timeout`` s (the last value)."""
    deadline = time.monotonic() + timeout
    value = predicate()
    while not value and time.monotonic() < deadline:
        time.sleep(period)
        value = predicate()
    return value


def diagnostics_values(msg: Any) -> dict[str, str]:
    return {kv.key: kv.value for s in msg.status for kv in s.values}
