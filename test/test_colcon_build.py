"""The package builds with colcon as a ROS 2 workspace builds it (ament_python), and the install
space has what ``ros2 run`` / ``ros2 launch`` and the node look for.

Runs the real ``colcon build`` (colcon-core + colcon-ros from PyPI, requirements.txt) on a copy of
the package in a temporary workspace; no ROS installation is needed for an ament_python build.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGE = "stereo_pose3d"
# What a colcon workspace needs of the repository (the training module is not part of it).
PACKAGE_FILES = ("package.xml", "setup.py", "setup.cfg", "resource", "launch", "config", PACKAGE)


def test_package_xml_is_format_3_ament_python() -> None:
    from catkin_pkg.package import parse_package

    package = parse_package(str(REPO / "package.xml"))  # validates against the format
    assert package.package_format == 3 and package.name == PACKAGE
    assert package.get_build_type() == "ament_python"
    run_deps = {d.name for d in package.exec_depends}
    assert {"rclpy", "sensor_msgs", "visualization_msgs", "launch_ros"} <= run_deps


def test_colcon_build_installs_a_ros_package(tmp_path: Path) -> None:
    colcon = shutil.which("colcon", path=str(Path(sys.executable).parent)) or shutil.which("colcon")
    assert colcon, "colcon is missing: pip install -r requirements.txt"
    src = tmp_path / "src" / PACKAGE
    src.mkdir(parents=True)
    for name in PACKAGE_FILES:
        path = REPO / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(path, src / name)
    result = subprocess.run(
        [colcon, "--log-base", "log", "build", "--base-paths", "src",
         "--packages-select", PACKAGE, "--event-handlers", "console_direct+"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    install = tmp_path / "install" / PACKAGE
    share = install / "share" / PACKAGE
    # The ament index marker (ros2 pkg list / get_package_share_directory) and the data files.
    assert (install / "share/ament_index/resource_index/packages" / PACKAGE).is_file()
    for rel in ("package.xml", "launch/stereo_pose3d.launch.py", "config/stereo_pose3d.yaml",
                "config/stereo_pose3d.rviz", "config/fastdds_profiles.xml"):  # fmt: skip
        assert (share / rel).is_file(), rel
    # ros2 run looks for executables in lib/<package>.
    for exe in ("stereo_pose3d_node", "stereo_pose3d_bag"):
        assert os.access(install / "lib" / PACKAGE / exe, os.X_OK), exe
    site = next((install / "lib").glob("python3*/site-packages"))
    for weights in ("baseline_synth.pt", "cdrnet_synth.pt"):
        installed = site / PACKAGE / "weights" / weights
        assert installed.stat().st_size == (REPO / PACKAGE / "weights" / weights).stat().st_size
    # The installed package (not this checkout) resolves its default weights inside the install.
    probe = subprocess.run(
        [sys.executable, "-c",
         "import stereo_pose3d.node as n; print(n.__file__); print(n.DEFAULT_WEIGHTS.is_file())"],
        cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(site)},
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert probe.returncode == 0, probe.stderr[-2000:]
    module_file, weights_ok = probe.stdout.split()
    assert Path(module_file).is_relative_to(site) and weights_ok == "True"
