"""lisa_ros: the ROS 2 node around lisa_core (a thin adapter; the node itself comes with its own issue)."""
