"""Fast DDS transport configuration for full-size images between processes.

Why this exists: with Fast DDS's default transports (UDPv4 + a 512 KiB shared-memory segment per
participant), a 640x480 rgb8 image (921,600 bytes) does not fit the writer's shared-memory segment
and is lost between processes on one host: measured here at 30 Hz, 1-2 of 90 delivered, best effort
or reliable alike. ``FASTDDS_BUILTIN_TRANSPORTS=LARGE_DATA`` delivers them, but participants that
use it and participants that don't never discover each other, so every other ROS process on the
machine (RViz, ``ros2 topic``, camera drivers) would have to change too.

The package ships instead a Fast DDS XML profile (``config/fastdds_profiles.xml``, the text is
:data:`SHM_PROFILE_XML` below) that keeps the default transport *kinds* (shared memory + UDPv4,
same discovery) and only enlarges them: a 32 MiB shared-memory segment and 4 MiB UDP socket
buffers. It stays compatible with default participants (they discover it and talk to it), and
every process that loads it can *send* images of any size to any local reader. The sender's
segment is what matters, so the camera driver (or bag player) must load it too: see docs/ros.md.

The profile is applied by exporting ``FASTDDS_DEFAULT_PROFILES_FILE`` (Fast DDS 3, Kilted and later;
plus ``FASTRTPS_DEFAULT_PROFILES_FILE`` for Fast DDS 2, Humble/Jazzy) before the first participant
is created. :func:`configure` does that for the node, ``stereo_pose3d_bag play``, the demo and the
tests; the launch file sets the same variables. Choose with ``STEREO_POSE3D_DDS_PROFILE``:

* ``shm`` (default): the shared-memory profile above;
* ``udp``: UDPv4 only with 4 MiB socket buffers, for when the camera driver cannot be given the
  profile: an unmodified driver then sends over UDP, which arrives intact when the kernel allows the
  buffer (``sysctl net.core.rmem_max`` >= 4194304);
* ``none``: leave the environment alone (also the behaviour whenever the user already set
  ``FASTDDS_DEFAULT_PROFILES_FILE``, ``FASTRTPS_DEFAULT_PROFILES_FILE`` or
  ``FASTDDS_BUILTIN_TRANSPORTS``, or chose an RMW other than Fast DDS);
* a path: that XML file.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import MutableMapping
from pathlib import Path

ENV_CHOICE = "STEREO_POSE3D_DDS_PROFILE"
PROFILE_ENV_VARS = ("FASTDDS_DEFAULT_PROFILES_FILE", "FASTRTPS_DEFAULT_PROFILES_FILE")
# Any of these set by the user means "I configured DDS myself": never override.
_USER_DDS_VARS = (*PROFILE_ENV_VARS, "FASTDDS_BUILTIN_TRANSPORTS")

SHM_SEGMENT_BYTES = 32 * 1024 * 1024
UDP_BUFFER_BYTES = 4 * 1024 * 1024

_HEADER = '<?xml version="1.0" encoding="UTF-8" ?>\n'

SHM_PROFILE_XML = (
    _HEADER
    + f"""<!-- stereo_pose3d: Fast DDS profile for full-size images between processes.
     Same transport kinds as Fast DDS's defaults (shared memory + UDPv4), so it discovers and
     talks to participants with default settings; the larger shared-memory segment lets a process
     that loads it send messages of several MB (a 640x480 rgb8 image is 0.9 MB; the default
     segment is 512 KiB and such messages are lost). Load it in the camera driver too:
       export FASTDDS_DEFAULT_PROFILES_FILE=<this file>   (Fast DDS 3: Kilted, Rolling)
       export FASTRTPS_DEFAULT_PROFILES_FILE=<this file>  (Fast DDS 2: Humble, Jazzy)
     Generated from stereo_pose3d/dds.py (SHM_PROFILE_XML); keep the two identical. -->
<dds xmlns="http://www.eprosima.com">
  <profiles>
    <transport_descriptors>
      <transport_descriptor>
        <transport_id>stereo_pose3d_shm</transport_id>
        <type>SHM</type>
        <segment_size>{SHM_SEGMENT_BYTES}</segment_size>
      </transport_descriptor>
      <transport_descriptor>
        <transport_id>stereo_pose3d_udp</transport_id>
        <type>UDPv4</type>
        <sendBufferSize>{UDP_BUFFER_BYTES}</sendBufferSize>
        <receiveBufferSize>{UDP_BUFFER_BYTES}</receiveBufferSize>
      </transport_descriptor>
    </transport_descriptors>
    <participant profile_name="stereo_pose3d_large_data" is_default_profile="true">
      <rtps>
        <userTransports>
          <transport_id>stereo_pose3d_shm</transport_id>
          <transport_id>stereo_pose3d_udp</transport_id>
        </userTransports>
        <useBuiltinTransports>false</useBuiltinTransports>
      </rtps>
    </participant>
  </profiles>
</dds>
"""
)

UDP_PROFILE_XML = (
    _HEADER
    + f"""<!-- stereo_pose3d: UDPv4-only Fast DDS profile with 4 MiB socket buffers, for a node
     whose camera driver cannot load fastdds_profiles.xml: an unmodified driver then sends its
     images over UDP to this reader, which arrive intact if the kernel allows the buffer
     (sysctl -w net.core.rmem_max=4194304).
     Generated from stereo_pose3d/dds.py (UDP_PROFILE_XML); keep the two identical. -->
<dds xmlns="http://www.eprosima.com">
  <profiles>
    <transport_descriptors>
      <transport_descriptor>
        <transport_id>stereo_pose3d_udp</transport_id>
        <type>UDPv4</type>
        <sendBufferSize>{UDP_BUFFER_BYTES}</sendBufferSize>
        <receiveBufferSize>{UDP_BUFFER_BYTES}</receiveBufferSize>
      </transport_descriptor>
    </transport_descriptors>
    <participant profile_name="stereo_pose3d_udp_only" is_default_profile="true">
      <rtps>
        <userTransports>
          <transport_id>stereo_pose3d_udp</transport_id>
        </userTransports>
        <useBuiltinTransports>false</useBuiltinTransports>
      </rtps>
    </participant>
  </profiles>
</dds>
"""
)

PROFILES: dict[str, tuple[str, str]] = {
    "shm": ("fastdds_profiles.xml", SHM_PROFILE_XML),
    "udp": ("fastdds_udp_profiles.xml", UDP_PROFILE_XML),
}


def _candidate_config_dirs() -> list[Path]:
    """Where the shipped config/ may be: source tree, then an installed share/ directory."""
    dirs = [Path(__file__).resolve().parent.parent / "config"]
    try:  # colcon / ament install
        from ament_index_python.packages import get_package_share_directory

        dirs.append(Path(get_package_share_directory("stereo_pose3d")) / "config")
    except Exception:  # not installed through ament: fine
        pass
    import sys

    dirs.append(Path(sys.prefix) / "share" / "stereo_pose3d" / "config")
    return dirs


def profile_path(name: str = "shm") -> Path:
    """Path of the shipped XML profile ``name`` ("shm" or "udp").

    Uses the file in ``config/`` when its text is the current one, else writes the embedded text to
    a per-user cache file (so a wheel install without ``config/`` still works).
    """
    if name not in PROFILES:
        raise ValueError(f"unknown DDS profile {name!r}; choose one of {sorted(PROFILES)}")
    filename, text = PROFILES[name]
    for d in _candidate_config_dirs():
        p = d / filename
        try:
            if p.is_file() and p.read_text() == text:
                return p
        except OSError:
            continue
    cache = Path(tempfile.gettempdir()) / f"stereo_pose3d-{os.getuid()}"
    cache.mkdir(parents=True, exist_ok=True)
    p = cache / filename
    if not p.is_file() or p.read_text() != text:
        tmp = p.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(text)
        os.replace(tmp, p)
    return p


def fastdds_env(
    choice: str | None = None, base: MutableMapping[str, str] | None = None
) -> dict[str, str]:
    """The environment variables to add so a process uses the chosen profile ({} for none).

    Args:
        choice: "shm", "udp", "none" or a path; default ``$STEREO_POSE3D_DDS_PROFILE`` or "shm".
        base: environment to inspect (default ``os.environ``): nothing is added when it already
            configures Fast DDS itself or selects a non-Fast-DDS RMW.
    """
    env = os.environ if base is None else base
    choice = choice or env.get(ENV_CHOICE) or "shm"
    if choice == "none":
        return {}
    if any(env.get(v) for v in _USER_DDS_VARS):
        return {}
    rmw = env.get("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp")
    if rmw and "fastrtps" not in rmw:
        return {}
    if choice in PROFILES:
        path = profile_path(choice)
    else:
        path = Path(choice).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"{ENV_CHOICE}={choice}: no such Fast DDS XML file")
    names = PROFILE_ENV_VARS if _fast_dds_major(env) < 3 else PROFILE_ENV_VARS[:1]
    return {v: str(path) for v in names}


def _fast_dds_major(env: MutableMapping[str, str]) -> int:
    """Fast DDS major version in use: 2 reads FASTRTPS_DEFAULT_PROFILES_FILE, 3 reads
    FASTDDS_DEFAULT_PROFILES_FILE (and rmw_fastrtps warns that the other one is deprecated)."""
    distro = env.get("ROS_DISTRO", "")
    if distro:
        return 2 if distro in ("foxy", "galactic", "humble", "iron", "jazzy") else 3
    try:
        from importlib.metadata import version

        return int(version("ros-fastdds").split(".")[0])
    except Exception:  # not the PyPI build: unknown, set both
        return 2


def configure(choice: str | None = None) -> dict[str, str]:
    """Export the profile into ``os.environ``; call before ``rclpy.init()``.

    Returns the variables set ({} when left alone).
    """
    added = fastdds_env(choice)
    os.environ.update(added)
    return added


def process_env(domain: int, pythonpath: str | Path | None = None) -> dict[str, str]:
    """Environment for a ROS subprocess on ``domain``: a copy of ``os.environ`` with loopback
    discovery, unbuffered output, this package's Fast DDS profile (:func:`fastdds_env`) and
    ``pythonpath`` (if given) in front of ``PYTHONPATH``."""
    env = dict(os.environ)
    env["ROS_DOMAIN_ID"] = str(domain)
    env["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    if pythonpath is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(pythonpath), env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    env.update(fastdds_env(base=env))
    return env


def write_config_files(config_dir: Path) -> list[Path]:
    """(Re)write the shipped XML files into ``config_dir`` from the embedded texts."""
    out = []
    for filename, text in PROFILES.values():
        p = Path(config_dir) / filename
        p.write_text(text)
        out.append(p)
    return out


# ---------------------------------------------------------------------------------------------
# measuring delivery between two processes
# ---------------------------------------------------------------------------------------------


def _peer_env(setting: str, domain: int) -> dict[str, str]:
    """Environment of one measurement process: "default" (Fast DDS's own transports),
    "large_data" (FASTDDS_BUILTIN_TRANSPORTS=LARGE_DATA), or a profile choice ("shm", "udp")."""
    env = {k: v for k, v in os.environ.items() if k not in (*_USER_DDS_VARS, ENV_CHOICE)}
    env["ROS_DOMAIN_ID"] = str(domain)
    if setting == "large_data":
        env["FASTDDS_BUILTIN_TRANSPORTS"] = "LARGE_DATA"
    elif setting != "default":
        env.update(fastdds_env(setting, base=env))
    return env


def _peer(role: str, count: int, rate: float, width: int, height: int, reliable: bool) -> None:
    import rclpy
    from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
    from sensor_msgs.msg import Image

    qos = (
        QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        if reliable
        else (qos_profile_sensor_data)
    )
    rclpy.init()
    node = rclpy.create_node(f"stereo_pose3d_dds_{role}")
    if role == "sub":
        got: list[str] = []
        node.create_subscription(Image, "dds_check", lambda m: got.append(m.header.frame_id), qos)
        end = time.monotonic() + 15.0 + count / rate
        while time.monotonic() < end and not (got and got[-1] == "last"):
            rclpy.spin_once(node, timeout_sec=0.05)
        end = time.monotonic() + 0.5
        while time.monotonic() < end:
            rclpy.spin_once(node, timeout_sec=0.05)
        print(f"RECEIVED {len(got)}", flush=True)
    else:
        pub = node.create_publisher(Image, "dds_check", qos)
        end = time.monotonic() + 15.0
        while pub.get_subscription_count() == 0 and time.monotonic() < end:
            time.sleep(0.05)
        time.sleep(0.5)
        msg = Image(
            height=height,
            width=width,
            encoding="rgb8",
            step=width * 3,
            data=bytes(width * height * 3),
        )
        t = time.monotonic()
        for i in range(count):
            msg.header.frame_id = "last" if i == count - 1 else str(i)
            pub.publish(msg)
            t += 1.0 / rate
            time.sleep(max(0.0, t - time.monotonic()))
        time.sleep(1.0)
        print(f"SENT {count}", flush=True)
    node.destroy_node()
    rclpy.try_shutdown()


def measure(
    publisher: str,
    subscriber: str,
    count: int = 90,
    rate: float = 30.0,
    width: int = 640,
    height: int = 480,
    reliable: bool = False,
    domain: int | None = None,
) -> tuple[int, int]:
    """Publish ``count`` rgb8 images at ``rate`` Hz from one process to another; returns
    ``(delivered, sent)``. ``publisher``/``subscriber``: "default", "large_data", "shm", "udp"."""
    import random
    import subprocess
    import sys

    domain = domain if domain is not None else random.randint(120, 200)
    args = [str(count), str(rate), str(width), str(height), "1" if reliable else "0"]
    base = [sys.executable, "-m", "stereo_pose3d.dds", "_peer"]
    sub = subprocess.Popen(
        [*base, "sub", *args], env=_peer_env(subscriber, domain), stdout=subprocess.PIPE, text=True
    )
    try:
        pub = subprocess.run(
            [*base, "pub", *args],
            env=_peer_env(publisher, domain),
            capture_output=True,
            text=True,
            timeout=60 + count / rate,
        )
        out, _ = sub.communicate(timeout=30 + count / rate)
    finally:
        if sub.poll() is None:
            sub.kill()
    sent = int(pub.stdout.split("SENT")[-1].split()[0]) if "SENT" in pub.stdout else 0
    got = int(out.split("RECEIVED")[-1].split()[0]) if "RECEIVED" in out else 0
    return got, sent


def _main(argv: list[str]) -> int:
    import argparse

    if argv[:1] == ["_peer"]:
        role, count, rate, w, h, rel = argv[1:7]
        _peer(role, int(count), float(rate), int(w), int(h), rel == "1")
        return 0
    parser = argparse.ArgumentParser(
        prog="python -m stereo_pose3d.dds",
        description="write the shipped Fast DDS profiles into config/ (no arguments), or measure "
        "image delivery between two processes",
    )
    sub = parser.add_subparsers(dest="cmd")
    m = sub.add_parser("measure", help="delivered/sent of rgb8 images between two processes")
    m.add_argument("--count", type=int, default=90)
    m.add_argument("--rate", type=float, default=30.0)
    m.add_argument("--size", default="640x480")
    m.add_argument("--reliable", action="store_true")
    m.add_argument(
        "--pairs",
        nargs="+",
        default=[
            "default:default",
            "shm:shm",
            "shm:default",
            "default:shm",
            "default:udp",
            "large_data:shm",
        ],
        help="publisher:subscriber settings (default, large_data, shm, udp)",
    )
    args = parser.parse_args(argv)
    if args.cmd != "measure":
        for path in write_config_files(Path(__file__).resolve().parent.parent / "config"):
            print(path)
        return 0
    w, h = (int(v) for v in args.size.split("x"))
    print(
        f"{args.count} rgb8 {w}x{h} images at {args.rate} Hz, "
        f"{'reliable' if args.reliable else 'best effort'}, two processes"
    )
    for pair in args.pairs:
        pub, subscriber = pair.split(":")
        got, sent = measure(pub, subscriber, args.count, args.rate, w, h, args.reliable)
        print(
            f"  publisher {pub:<10} subscriber {subscriber:<10} delivered {got:>4} / {sent}",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(_main(sys.argv[1:]))
