"""``lisa_core.geometry`` results as ROS messages: per-mask ``lisa_interfaces/Target3D``, the first target as a
``geometry_msgs/PointStamped``, RViz markers (a box and a label per mask) and the masks' points as a
``sensor_msgs/PointCloud2``. Plain field filling."""
from __future__ import annotations

import numpy as np
from geometry_msgs.msg import Point, PointStamped, Vector3
from lisa_interfaces.msg import Target3D as Target3DMsg
from sensor_msgs.msg import PointCloud2, PointField
from std_msgs.msg import ColorRGBA, Header
from visualization_msgs.msg import Marker, MarkerArray

from lisa_core.geometry import Target3D
from lisa_core.output import PALETTE

NO_DEPTH = "no depth_topic configured"  # the reason on every target of a node without depth
MIN_BOX_M = 0.02  # markers thinner than this are drawn this thick (a flat surface has zero depth extent)


def point(xyz) -> Point:
    return Point(x=float(xyz[0]), y=float(xyz[1]), z=float(xyz[2]))


def target_msg(target: Target3D, header: Header) -> Target3DMsg:
    return Target3DMsg(header=header, valid=target.valid, reason=target.reason, point=point(target.point),
                       box_min=point(target.box_min), box_max=point(target.box_max),
                       centroid_u=target.centroid_px[0], centroid_v=target.centroid_px[1],
                       valid_depth_share=target.valid_share)


def target_point(msg: Target3DMsg) -> PointStamped:
    return PointStamped(header=msg.header, point=msg.point)


def colour(index: int, alpha: float) -> ColorRGBA:
    r, g, b = PALETTE[index % len(PALETTE)] / 255.0
    return ColorRGBA(r=float(r), g=float(g), b=float(b), a=alpha)


def markers(targets: list[Target3DMsg], query: str, namespace: str = "lisa", replace_all: bool = True) -> MarkerArray:
    """A DELETEALL (the previous answer's markers go; ``replace_all`` False: none, the same ids are replaced), then
    per valid target a box over its extent and a label with what was asked above it."""
    out = [Marker(action=Marker.DELETEALL, ns=namespace)] if replace_all else []
    for i, t in enumerate(targets):
        if not t.valid:
            continue
        low = np.array([t.box_min.x, t.box_min.y, t.box_min.z])
        high = np.array([t.box_max.x, t.box_max.y, t.box_max.z])
        size = np.maximum(high - low, MIN_BOX_M)
        box = Marker(header=t.header, ns=namespace, id=2 * i, type=Marker.CUBE, action=Marker.ADD,
                     color=colour(i, 0.5), scale=Vector3(x=float(size[0]), y=float(size[1]), z=float(size[2])))
        box.pose.position = point((low + high) / 2)
        box.pose.orientation.w = 1.0
        label = Marker(header=t.header, ns=namespace, id=2 * i + 1, type=Marker.TEXT_VIEW_FACING,
                       action=Marker.ADD, text=query if len(targets) == 1 else f"{query} [{i + 1}]",
                       color=colour(i, 1.0), scale=Vector3(z=0.08))
        label.pose.position = point((t.point.x, low[1] - 0.1, t.point.z))  # y points down: above the box
        label.pose.orientation.w = 1.0
        out += [box, label]
    return MarkerArray(markers=out)


def delete_markers(namespace: str, targets: int = 1) -> MarkerArray:
    """DELETE for the box and label ids ``markers`` gives ``targets`` targets in ``namespace`` (only those)."""
    return MarkerArray(markers=[Marker(ns=namespace, id=i, action=Marker.DELETE) for i in range(2 * targets)])


def cloud(points: np.ndarray, header: Header) -> PointCloud2:
    """N×3 float32 points (metres) → an unorganised ``PointCloud2`` with fields x, y, z."""
    points = np.ascontiguousarray(points, dtype=np.float32).reshape(-1, 3)
    fields = [PointField(name=n, offset=4 * i, datatype=PointField.FLOAT32, count=1) for i, n in enumerate("xyz")]
    return PointCloud2(header=header, height=1, width=len(points), fields=fields, is_bigendian=False,
                       point_step=12, row_step=12 * len(points), data=points.tobytes(), is_dense=True)
