"""DDS settings for several ROS processes on one machine (demo, tests, development)."""
from __future__ import annotations

import os
from pathlib import Path

from rclpy.qos import QoSProfile, ReliabilityPolicy

PROFILE = Path(__file__).with_name("fastdds_local.xml")
# Requests are small and come in bursts (many clients, scripts): on both ends of the query topic, the services and
# the action's services, histories deep enough that a burst of hundreds is kept whole, so that each request gets
# its answer (or `busy`) instead of being overwritten unread.
REQUESTS = QoSProfile(depth=1000, reliability=ReliabilityPolicy.RELIABLE)


def local_dds_env(domain_id: int | None = None, base: dict | None = None) -> dict:
    """``base`` (default: this process's environment) with discovery kept on this host and the local Fast DDS
    profile, unless the caller already chose a profile."""
    env = dict(os.environ if base is None else base)
    env.setdefault("FASTDDS_DEFAULT_PROFILES_FILE", str(PROFILE))
    env["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    env.setdefault("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp")
    if domain_id is not None:
        env["ROS_DOMAIN_ID"] = str(domain_id)
    return env
