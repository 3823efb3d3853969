"""Launch file, YAML parameters, RViz config and the Fast DDS profile (no ROS launch installed
here: the launch file runs against minimal stand-ins of ``launch``/``launch_ros``)."""

from __future__ import annotations

import importlib.util
import sys
import types
import xml.etree.ElementTree as ET
from dataclasses import fields
from pathlib import Path

import pytest
import yaml

from stereo_pose3d import dds
from stereo_pose3d.node import PARAMETER_DOCS, NodeConfig, validate_config

REPO = Path(__file__).resolve().parent.parent


def _fake_launch_modules(monkeypatch) -> None:
    class Action:
        def __init__(self, *args, **kwargs):
            self.args, self.kwargs = args, kwargs

    class LaunchConfiguration:
        def __init__(self, name):
            self.name = name

        def perform(self, context):
            return context.values[self.name]

    mods = {
        "launch": types.ModuleType("launch"),
        "launch.actions": types.ModuleType("launch.actions"),
        "launch.conditions": types.ModuleType("launch.conditions"),
        "launch.substitutions": types.ModuleType("launch.substitutions"),
        "launch_ros": types.ModuleType("launch_ros"),
        "launch_ros.actions": types.ModuleType("launch_ros.actions"),
    }
    mods["launch"].LaunchDescription = type("LaunchDescription", (Action,), {})
    for name in ("DeclareLaunchArgument", "OpaqueFunction", "SetEnvironmentVariable"):
        setattr(mods["launch.actions"], name, type(name, (Action,), {}))
    mods["launch.conditions"].IfCondition = type("IfCondition", (Action,), {})
    mods["launch.substitutions"].LaunchConfiguration = LaunchConfiguration
    mods["launch_ros.actions"].Node = type("Node", (Action,), {})
    for name, mod in mods.items():
        monkeypatch.setitem(sys.modules, name, mod)


def test_launch_file_arguments_remappings_parameters_and_dds(monkeypatch):
    _fake_launch_modules(monkeypatch)
    monkeypatch.delenv("FASTDDS_DEFAULT_PROFILES_FILE", raising=False)
    monkeypatch.delenv("FASTRTPS_DEFAULT_PROFILES_FILE", raising=False)
    monkeypatch.delenv("FASTDDS_BUILTIN_TRANSPORTS", raising=False)
    monkeypatch.delenv("STEREO_POSE3D_DDS_PROFILE", raising=False)
    path = REPO / "launch" / "stereo_pose3d.launch.py"
    spec = importlib.util.spec_from_file_location("stereo_pose3d_launch", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    ld = module.generate_launch_description()
    entities = ld.args[0]
    declared = {
        e.args[0]: e.kwargs["default_value"]
        for e in entities
        if type(e).__name__ == "DeclareLaunchArgument"
    }
    for name in (
        "namespace",
        "params_file",
        "weights",
        "device",
        "use_sim_time",
        "left_image",
        "left_camera_info",
        "right_image",
        "right_camera_info",
        "dds_profile",
        "rviz",
    ):
        assert name in declared, name
    assert Path(declared["params_file"]).name == "stereo_pose3d.yaml"
    assert Path(declared["params_file"]).is_file()

    values = dict(
        declared,
        namespace="/stereo",
        weights="/w.pt",
        use_sim_time="true",
        left_image="/cam/left/image_rect_color",
    )
    context = types.SimpleNamespace(values=values)
    opaque = [e for e in entities if type(e).__name__ == "OpaqueFunction"]
    produced = [a for e in opaque for a in e.kwargs["function"](context)]
    env = {a.args[0]: a.args[1] for a in produced if type(a).__name__ == "SetEnvironmentVariable"}
    assert Path(env["FASTDDS_DEFAULT_PROFILES_FILE"]).read_text() == dds.SHM_PROFILE_XML
    (node,) = [a for a in produced if type(a).__name__ == "Node"]
    kw = node.kwargs
    assert kw["executable"] == "stereo_pose3d_node" and kw["namespace"] == "/stereo"
    assert ("left/image_rect", "/cam/left/image_rect_color") in kw["remappings"]
    assert ("right/camera_info", "right/camera_info") in kw["remappings"]
    params_file, overrides = kw["parameters"]
    assert params_file == declared["params_file"]
    assert overrides == {"use_sim_time": True, "weights": "/w.pt"}  # empty device: file's value


def test_yaml_parameters_are_complete_valid_and_documented():
    data = yaml.safe_load((REPO / "config" / "stereo_pose3d.yaml").read_text())
    params = data["/**"]["ros__parameters"]
    assert set(params) == {f.name for f in fields(NodeConfig)} == set(PARAMETER_DOCS)
    assert validate_config(params, check_files=False) == NodeConfig()
    doc = (REPO / "docs" / "ros.md").read_text()
    for name in params:
        assert f"`{name}`" in doc, name


def test_rviz_config_shows_markers_and_debug_image():
    cfg = yaml.safe_load((REPO / "config" / "stereo_pose3d.rviz").read_text())
    displays = {d["Class"]: d for d in cfg["Visualization Manager"]["Displays"]}
    assert (
        displays["rviz_default_plugins/MarkerArray"]["Topic"]["Value"] == "/stereo/pose3d/markers"
    )
    assert displays["rviz_default_plugins/Image"]["Topic"]["Value"] == "/stereo/pose3d/debug_image"
    assert (
        cfg["Visualization Manager"]["Global Options"]["Fixed Frame"] == "stereo_left_optical_frame"
    )


def test_shipped_dds_profiles_match_the_embedded_ones_and_parse():
    for name, (filename, text) in dds.PROFILES.items():
        shipped = REPO / "config" / filename
        assert shipped.read_text() == text, f"regenerate with python -m stereo_pose3d.dds ({name})"
        root = ET.fromstring(text.encode())
        ns = {"d": "http://www.eprosima.com"}
        participant = root.find("d:profiles/d:participant", ns)
        assert participant.get("is_default_profile") == "true"
        kinds = [t.text for t in root.findall(".//d:transport_descriptor/d:type", ns)]
        assert kinds == (["SHM", "UDPv4"] if name == "shm" else ["UDPv4"])
    seg = ET.fromstring(dds.SHM_PROFILE_XML.encode()).find(
        ".//{http://www.eprosima.com}segment_size"
    )
    assert int(seg.text) >= 8 * 640 * 480 * 3  # several full-size images in flight


def test_dds_env_respects_the_users_own_configuration(tmp_path):
    base = {"ROS_DISTRO": "kilted"}
    env = dds.fastdds_env(base=base)
    assert list(env) == ["FASTDDS_DEFAULT_PROFILES_FILE"]
    assert dds.fastdds_env(base={"ROS_DISTRO": "humble"}).keys() == set(dds.PROFILE_ENV_VARS)
    assert dds.fastdds_env("none", base=base) == {}
    assert dds.fastdds_env(base={**base, "FASTDDS_BUILTIN_TRANSPORTS": "LARGE_DATA"}) == {}
    assert dds.fastdds_env(base={**base, "FASTDDS_DEFAULT_PROFILES_FILE": "/mine.xml"}) == {}
    assert dds.fastdds_env(base={**base, "RMW_IMPLEMENTATION": "rmw_cyclonedds_cpp"}) == {}
    udp = dds.fastdds_env(base={**base, "STEREO_POSE3D_DDS_PROFILE": "udp"})
    assert Path(udp["FASTDDS_DEFAULT_PROFILES_FILE"]).read_text() == dds.UDP_PROFILE_XML
    own = tmp_path / "own.xml"
    own.write_text("<dds/>")
    assert dds.fastdds_env(str(own), base=base)["FASTDDS_DEFAULT_PROFILES_FILE"] == str(own)
    with pytest.raises(FileNotFoundError):
        dds.fastdds_env(str(tmp_path / "missing.xml"), base=base)
