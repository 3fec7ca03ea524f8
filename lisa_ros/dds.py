"""DDS settings for several ROS processes on one machine (demo, tests, development)."""
from __future__ import annotations

import os
from pathlib import Path

PROFILE = Path(__file__).with_name("fastdds_local.xml")


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
