"""Running ``lisa-node`` as a child process (the demo, the tests and the benchmarks do)."""
from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path


def start_node(params: dict, log: Path, env: dict, namespace: str = "") -> subprocess.Popen:
    """Start the node with ``-p name:=value`` for each non-empty parameter; its output goes to ``log`` (a pipe that
    nobody drains would block it) and it gets its own session, so a terminal's Ctrl-C reaches it only through us."""
    command = [sys.executable, "-m", "lisa_ros.node", "--ros-args",
               *[arg for k, v in params.items() if v != "" for arg in ("-p", f"{k}:={v}")]]
    if namespace:
        command += ["-r", f"__ns:={namespace}"]
    return subprocess.Popen(command, stdout=Path(log).open("w"), stderr=subprocess.STDOUT, env=env,
                            start_new_session=True)


def stop_node(process: subprocess.Popen, timeout: float = 10.0) -> None:
    """SIGINT (a clean rclpy shutdown), then SIGKILL if it is still there after ``timeout`` seconds."""
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
