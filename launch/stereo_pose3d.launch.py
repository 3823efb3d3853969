"""Launch stereo_pose3d_node.

    ros2 launch stereo_pose3d stereo_pose3d.launch.py namespace:=/stereo device:=cpu
    ros2 launch stereo_pose3d stereo_pose3d.launch.py \\
        left_image:=/cam/left/image_rect_color right_image:=/cam/right/image_rect_color \\
        left_camera_info:=/cam/left/camera_info right_camera_info:=/cam/right/camera_info

Arguments: namespace, params_file, weights, device, use_sim_time, the four input remappings,
dds_profile (shm | udp | none | a Fast DDS XML path: see docs/ros.md; the camera driver must use
a compatible setting for full-size images between processes), rviz (true: also start RViz with
config/stereo_pose3d.rviz).
"""

from __future__ import annotations

import os

from launch.actions import DeclareLaunchArgument, OpaqueFunction, SetEnvironmentVariable
from launch.conditions import IfCondition
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from launch import LaunchDescription

try:
    from ament_index_python.packages import get_package_share_directory

    SHARE = get_package_share_directory("stereo_pose3d")
except Exception:  # running from the source tree
    SHARE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

DEFAULT_PARAMS = os.path.join(SHARE, "config", "stereo_pose3d.yaml")
DEFAULT_RVIZ = os.path.join(SHARE, "config", "stereo_pose3d.rviz")
INPUTS = {  # launch argument -> the node's (relative) input name
    "left_image": "left/image_rect",
    "left_camera_info": "left/camera_info",
    "right_image": "right/image_rect",
    "right_camera_info": "right/camera_info",
}


def _dds_environment(context, *args, **kwargs):
    """The package's Fast DDS profile for the launched processes (stereo_pose3d.dds)."""
    choice = LaunchConfiguration("dds_profile").perform(context)
    try:
        from stereo_pose3d import dds

        env = dds.fastdds_env(choice)
    except Exception as exc:  # a bad path: say so, launch without it
        print(f"[stereo_pose3d.launch] DDS profile {choice!r} not applied: {exc}")
        env = {}
    return [SetEnvironmentVariable(name, value) for name, value in env.items()]


def generate_launch_description() -> LaunchDescription:
    args = [
        DeclareLaunchArgument(
            "namespace",
            default_value="",
            description="namespace of the node and its relative topics",
        ),
        DeclareLaunchArgument(
            "params_file", default_value=DEFAULT_PARAMS, description="YAML parameter file"
        ),
        DeclareLaunchArgument(
            "weights",
            default_value="",
            description="checkpoint; empty: the params file's (default: shipped)",
        ),
        DeclareLaunchArgument(
            "device",
            default_value="",
            description="auto, cpu, cuda or cuda:N; empty: the params file's",
        ),
        DeclareLaunchArgument(
            "use_sim_time", default_value="false", description="use /clock (bag playback)"
        ),
        DeclareLaunchArgument(
            "dds_profile",
            default_value="shm",
            description="Fast DDS profile: shm, udp, none or an XML path",
        ),
        DeclareLaunchArgument("rviz", default_value="false", description="also start RViz"),
    ]
    for name, topic in INPUTS.items():
        args.append(
            DeclareLaunchArgument(
                name, default_value=topic, description=f"remap the node's {topic}"
            )
        )
    return LaunchDescription(
        [*args, OpaqueFunction(function=_dds_environment), OpaqueFunction(function=_node), _rviz()]
    )


def _node(context, *args, **kwargs):
    """The node; weights/device override the parameter file only when given."""
    sim = LaunchConfiguration("use_sim_time").perform(context).lower() in ("true", "1", "yes")
    overrides: dict[str, object] = {"use_sim_time": sim}
    for name in ("weights", "device"):
        value = LaunchConfiguration(name).perform(context)
        if value:
            overrides[name] = value
    remappings = [
        (topic, LaunchConfiguration(name).perform(context)) for name, topic in INPUTS.items()
    ]
    return [
        Node(
            package="stereo_pose3d",
            executable="stereo_pose3d_node",
            name="stereo_pose3d_node",
            namespace=LaunchConfiguration("namespace").perform(context),
            parameters=[LaunchConfiguration("params_file").perform(context), overrides],
            remappings=remappings,
            output="screen",
            emulate_tty=True,
        )
    ]


def _rviz() -> Node:
    return Node(
        package="rviz2",
        executable="rviz2",
        arguments=["-d", DEFAULT_RVIZ],
        parameters=[{"use_sim_time": LaunchConfiguration("use_sim_time")}],
        condition=IfCondition(LaunchConfiguration("rviz")),
        output="screen",
    )
