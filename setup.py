"""ament_python build of stereo_pose3d (works with `colcon build` and `pip install -e .`)."""

from glob import glob

from setuptools import find_packages, setup

PACKAGE = "stereo_pose3d"

setup(
    name=PACKAGE,
    version="0.1.0",
    packages=find_packages(include=[PACKAGE, f"{PACKAGE}.*"]),
    package_data={PACKAGE: ["weights/*.pt", "weights/*.json", "weights/*.md"]},
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        (f"share/{PACKAGE}/launch", glob("launch/*.launch.py")),
        (
            f"share/{PACKAGE}/config",
            glob("config/*.yaml") + glob("config/*.rviz") + glob("config/*.xml"),
        ),
    ],
    install_requires=["setuptools"],
    zip_safe=False,
    maintainer="stereo_pose3d developers",
    maintainer_email="stereo-pose3d@example.com",
    description="Live 3D human skeletons from a calibrated stereo camera (CDRNet, ROS 2).",
    license="Apache-2.0",
    tests_require=["pytest"],
    entry_points={
        "console_scripts": [
            f"stereo_pose3d_node = {PACKAGE}.node:main",
            f"stereo_pose3d_bag = {PACKAGE}.bag:main",
        ],
    },
)
