"""The robot path of the README, as a ROS user runs it: a colcon workspace built from a clean clone with the README's
own `colcon build` line, `source install/setup.bash` in a fresh shell, then the README's `ros2 launch`,
`ros2 topic pub` and `ros2 topic echo` lines as typed (the model argument aside: the embedded model stands in for
LISA-7B, which cannot be downloaded here). The ROS 2 CLI and launch come from ../shared/ros2_cli (the part a ROS
install provides), colcon from PyPI in a prefix of its own (it pins an older setuptools). Takes a few minutes."""
import contextlib
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_CLI = ROOT.parent / "shared" / "ros2_cli"
VENV = Path(sys.prefix)
ROS2_CLI = VENV / "ros2_cli"
COLCON = VENV / "colcon"
DOMAIN = 60 + os.getpid() % 30

pytestmark = pytest.mark.skipif(not (SHARED_CLI / "install.sh").is_file(),
                                reason="../shared/ros2_cli (the ROS 2 CLI and launch sources) is not here, so the "
                                       "README's ros2 commands cannot be run; a ROS install runs them as written")


def readme_robot_lines() -> list[str]:
    """The command lines of the README's robot code blocks (the ROS 2 node section), comments stripped."""
    section = re.search(r"## The ROS 2 node\n(.*?)\n## ", (ROOT / "README.md").read_text(), re.S).group(1)
    blocks = re.findall(r"```bash\n(.*?)```", section, re.S)
    return [line.split("  #")[0].strip() for block in blocks for line in block.splitlines()
            if line and not line.startswith("#")]


def readme_line(prefix: str) -> str:
    lines = [line for line in readme_robot_lines() if line.startswith(prefix)]
    assert lines, f"the README's robot section has no '{prefix} …' line"
    return lines[0]


def shell(ws: Path, *lines: str) -> str:
    """A bash script run in a fresh shell: the 'ROS install' sourced, then ``lines``, in the workspace."""
    return "\n".join(["set -e", f"source {shlex.quote(str(ROS2_CLI / 'setup.bash'))}",
                      f"export PATH={COLCON / 'bin'}:$PATH CMAKE_PREFIX_PATH={VENV}",
                      f"export ROS_DOMAIN_ID={DOMAIN} ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST",
                      "export PYTHONUNBUFFERED=1",  # what `ros2 topic echo` prints reaches the pipe at once
                      f"export FASTDDS_DEFAULT_PROFILES_FILE={ROOT / 'lisa_ros' / 'fastdds_local.xml'}",
                      f"cd {shlex.quote(str(ws))}", *lines])


def fresh_env() -> dict:
    """This process's environment without the venv's Python, ament and ROS settings: a new user's shell."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "AMENT", "ROS_", "COLCON"))}


def run(ws: Path, *lines: str, timeout: float = 900, colcon_path: bool = False, check: bool = True) -> str:
    """stdout of ``lines`` in a fresh shell (with ``check=False``: stdout and stderr, whatever the exit status)."""
    env = fresh_env()
    if colcon_path:  # colcon's setup.py children import colcon_core from its own prefix
        env["PYTHONPATH"] = str(next(COLCON.glob("lib/python3*/site-packages")))
    done = subprocess.run(["bash", "-c", shell(ws, *lines)], capture_output=True, text=True, timeout=timeout,
                          env=env)
    if not check:
        return done.stdout + done.stderr
    assert done.returncode == 0, f"{lines} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


def sourced(ws: Path, line: str, **kwargs) -> str:
    """A README line run in the built workspace, as after `source install/setup.bash`."""
    return run(ws, "source install/setup.bash", line, **kwargs)


CAMERA = """# the robot's camera: the demo room at 10 Hz
import sys
import time

import rclpy
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import Image
from std_msgs.msg import Header

from lisa_core.output import DEMO_IMAGE, read_image
from lisa_ros.images import numpy_to_image_msg

rclpy.init()
node = rclpy.create_node("camera")
publisher = node.create_publisher(Image, sys.argv[1], qos_profile_sensor_data)
frame = numpy_to_image_msg(read_image(DEMO_IMAGE), Header(frame_id="camera"), Image)
while rclpy.ok():
    publisher.publish(frame)
    time.sleep(0.1)
"""


@pytest.fixture(scope="module")
def tools():
    """The ROS 2 CLI/launch and colcon, installed once per venv (minutes the first time, a no-op after)."""
    subprocess.run(["bash", str(SHARED_CLI / "install.sh"), str(VENV)], check=True, capture_output=True, timeout=900)
    if not (COLCON / "bin" / "colcon").is_file():
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--ignore-installed", "--prefix", str(COLCON),
                        "colcon-common-extensions"], check=True, capture_output=True, timeout=900)


@pytest.fixture(scope="module")
def workspace(tools, tmp_path_factory):
    ws = tmp_path_factory.mktemp("ws")
    subprocess.run(["git", "clone", "-q", str(ROOT), str(ws / "src" / "lisa_ros")], check=True, timeout=300)
    run(ws, readme_line("colcon build").split(" && ")[0], colcon_path=True)
    return ws


def test_installed_where_ros2_run_and_launch_look(workspace):
    out = run(workspace, "source install/setup.bash", "python3 - <<'EOF'\n" + """
import os
from ament_index_python.packages import get_package_prefix, get_package_share_directory
from rclpy.type_support import check_for_type_support
import lisa_interfaces.msg as m
prefix, share = get_package_prefix('lisa_ros'), get_package_share_directory('lisa_ros')
for exe in ('lisa_node', 'lisa_query', 'lisa_demo'):
    path = os.path.join(prefix, 'lib', 'lisa_ros', exe)
    assert os.access(path, os.X_OK), path
for f in ('launch/lisa.launch.py', 'config/lisa.yaml', 'package.xml'):
    assert os.path.isfile(os.path.join(share, f)), f
check_for_type_support(m.SegmentationResult)
print('prefix', prefix, m.__file__)
EOF""", "ros2 pkg executables lisa_ros")
    assert f"prefix {workspace}/install/lisa_ros" in out and f"{workspace}/install/lisa_interfaces" in out
    assert "lisa_ros lisa_node" in out
    shown = sourced(workspace, "ros2 launch lisa_ros lisa.launch.py --show-args")
    assert all(f"'{name}'" in shown for name in ("model", "image_topic", "depth_topic", "enclave")), shown


def started(ws: Path, *lines: str) -> subprocess.Popen:
    """A long-running command (the last of ``lines``, exec'd so that signals reach it) in its own session."""
    *setup, command = lines
    return subprocess.Popen(["bash", "-c", shell(ws, "source install/setup.bash", *setup, "exec " + command)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=fresh_env(),
                            start_new_session=True)


def stop(process: subprocess.Popen, timeout: float = 30) -> None:
    """Ctrl-C, as a user stops it. Fails if it does not end by itself within ``timeout``."""
    os.killpg(process.pid, signal.SIGINT)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        raise AssertionError(f"{process.args[-1].splitlines()[-1]} still ran {timeout} s after Ctrl-C")


def without_real_model(line: str) -> str:
    """LISA-7B cannot be downloaded here and bitsandbytes 4-bit needs CUDA: the embedded default model on the CPU."""
    line = re.sub(r" (-p )?model:=\S+", "", line)
    line = re.sub(r" quantization:=\S+", "", line)
    return line + (" -p device:=cpu" if "--ros-args" in line else " device:=cpu")


def ask_until_answered(ws: Path, echo_lines: list[str]) -> list[str]:
    """The README's `ros2 topic pub` line, again until `ros2 topic echo` shows an answer (not `error: …`)."""
    deadline, answers = time.monotonic() + 240, []
    while not answers and time.monotonic() < deadline:
        sourced(ws, readme_line("ros2 topic pub"), timeout=120)
        time.sleep(2)
        answers = [line for line in echo_lines if line.startswith("data:") and "error:" not in line]
    return answers


def reader(process: subprocess.Popen) -> list[str]:
    """Lines the process prints, collected on a thread."""
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(iter(process.stdout.readline, "")), daemon=True).start()
    return lines


@contextlib.contextmanager
def serving(ws: Path, node_line: str, node_stops_within: float = 60):
    """The node started by ``node_line`` and the README's `ros2 topic echo`: yields (node's lines, echoed lines)
    and stops both with Ctrl-C."""
    node = started(ws, without_real_model(node_line))
    echo = started(ws, readme_line("ros2 topic echo"))
    try:
        yield reader(node), reader(echo)
    finally:
        stop(echo)
        stop(node, timeout=node_stops_within)


@pytest.fixture
def camera(workspace):
    (workspace / "camera.py").write_text(CAMERA)
    topic = re.search(r"image_topic:=(\S+)", readme_line("ros2 launch")).group(1)
    process = started(workspace, f"python3 camera.py {topic}")
    yield topic
    stop(process)


def test_readme_launch_topic_pub_echo_and_node_commands_as_typed(workspace, camera):
    with serving(workspace, readme_line("ros2 launch")) as (launched, echoed):
        answers = ask_until_answered(workspace, echoed)
        assert answers, "".join(echoed[-10:] + launched[-40:])
        assert "sink" in answers[0] and "[SEG]" in answers[0], answers

        assert "lisa-tiny-rooms" in sourced(workspace, readme_line("ros2 param get"))
        assert "active [3]" in sourced(workspace, readme_line("ros2 lifecycle get"))
        goal = sourced(workspace, readme_line("ros2 action send_goal"), timeout=180)
        assert "Goal finished with status: SUCCEEDED" in goal and "stage: generating" in goal
        assert re.search(r"reply: .*(chair|sofa|bed)", goal), goal[-2000:]
        follow = sourced(workspace, readme_line("ros2 action send_goal --feedback /lisa/follow"), timeout=180)
        assert "Goal finished with status: SUCCEEDED" in follow and "reason: duration reached" in follow, follow[-2000:]
        assert "tier: answer" in follow and re.search(r"tier: (flow|redecode)", follow), follow[-2000:]
        sessions = sourced(workspace, readme_line("ros2 service call /lisa/list_sessions"))
        assert "SessionInfo(session_id=" in sessions
        query = sourced(workspace, readme_line("ros2 run lisa_ros lisa_query"), timeout=180)
        assert "sink" in query and (workspace / "lisa_reply" / "reply.json").is_file()

        refused = sourced(workspace, readme_line("ros2 param set /lisa adapter"), timeout=60, check=False)
        assert "Setting parameter failed" in refused  # /path/to/adapter does not exist: refused, still serving
        lifecycle = readme_line("ros2 lifecycle set /lisa deactivate")
        sourced(workspace, lifecycle)
        assert "inactive [2]" in sourced(workspace, readme_line("ros2 lifecycle get"))
        sourced(workspace, lifecycle.replace("deactivate", "activate"), timeout=120)
        assert "active [3]" in sourced(workspace, readme_line("ros2 lifecycle get"))
    time.sleep(0.5)  # the reader thread's last lines
    assert "process has finished cleanly" in "".join(launched), "".join(launched[-30:])  # Ctrl-C ends the node too


def test_readme_ros2_run_line_serves_the_topic_query(workspace, camera):
    with serving(workspace, readme_line("ros2 run lisa_ros lisa_node")) as (logged, echoed):
        answers = ask_until_answered(workspace, echoed)
        assert answers and "sink" in answers[0], "".join(logged[-60:])
