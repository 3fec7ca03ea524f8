"""The launch file and the parameters file agree with the node's declared parameters."""
import ast
from pathlib import Path

import pytest
import yaml

from lisa_ros.params import DEFAULTS, parameters_yaml

ROOT = Path(__file__).resolve().parents[1]
LAUNCH = ROOT / "launch" / "lisa.launch.py"


def launch_arguments() -> dict:
    """ARGUMENTS of the launch file, read statically (``launch`` itself is not installable here)."""
    for node in ast.walk(ast.parse(LAUNCH.read_text())):
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "ARGUMENTS":
            return ast.literal_eval(node.value)
    raise AssertionError("no ARGUMENTS table in the launch file")


def test_launch_arguments_are_node_parameters():
    arguments = launch_arguments()
    assert {"model", "quantization", "image_topic"} <= set(arguments)
    for name, (default, description) in arguments.items():
        assert name in DEFAULTS, f"launch argument {name} is not a node parameter"
        assert default == DEFAULTS[name], f"{name}: launch default {default!r} vs node default {DEFAULTS[name]!r}"
        assert description


def test_parameters_file_matches_the_node():
    text = (ROOT / "config" / "lisa.yaml").read_text()
    assert yaml.safe_load(text)["/**"]["ros__parameters"] == DEFAULTS
    assert text == parameters_yaml(), "config/lisa.yaml is stale: python -m lisa_ros.params > config/lisa.yaml"


def test_launch_file_builds_where_launch_is_installed():
    reason = "ROS 2's launch package is not installed (it is not on PyPI); the file was checked statically above"
    launch = pytest.importorskip("launch", reason=reason)
    if not hasattr(launch, "LaunchDescription"):  # e.g. the repo's own launch/ folder seen as a namespace package
        pytest.skip(reason)
    pytest.importorskip("launch_ros", reason="launch_ros is not installed")
    namespace = {}
    exec(compile(LAUNCH.read_text(), str(LAUNCH), "exec"), namespace)
    description = namespace["generate_launch_description"]()
    declared = {a.name for a in description.get_launch_arguments()}
    assert set(launch_arguments()) | {"namespace", "params_file", "enclave"} == declared
