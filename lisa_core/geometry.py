"""Masks to places in space. A depth image registered to the colour camera and that camera's pinhole intrinsics
turn each mask into what a robot's navigation or grasping stack consumes: a 3-D target point, the 3-D extent, the
pixel centroid and how much of the mask had valid depth. Camera optical frame: x right, y down, z forward, metres.
No ROS here: the node hands in arrays and intrinsics."""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

DEPTH_ENCODINGS = ("16UC1", "mono16", "32FC1")  # millimetres (uint16) or metres (float32)


class DepthError(ValueError):
    """Depth or camera input that cannot be used; the message names the problem."""


@dataclass(frozen=True)
class Pinhole:
    """Intrinsics of the colour camera (``K`` of its CameraInfo) for images of ``width`` × ``height``."""

    fx: float
    fy: float
    cx: float
    cy: float
    width: int
    height: int

    @classmethod
    def from_k(cls, k, width: int, height: int) -> "Pinhole":
        """From a row-major 3×3 ``K`` (9 numbers); ``DepthError`` on a zero or non-finite focal length or size."""
        k = np.asarray(k, dtype=np.float64).ravel()
        if k.size != 9 or not np.all(np.isfinite(k)):
            raise DepthError(f"camera matrix K must be 9 finite numbers, got {k.size} values")
        if k[0] <= 0 or k[4] <= 0:
            raise DepthError(f"camera info has a zero or negative focal length (fx={k[0]}, fy={k[4]})")
        if width <= 0 or height <= 0:
            raise DepthError(f"camera info has zero size ({width}×{height})")
        return cls(float(k[0]), float(k[4]), float(k[2]), float(k[5]), int(width), int(height))

    def scaled(self, width: int, height: int) -> "Pinhole":
        """The same camera seen at another resolution (a depth image of another size covering the same view)."""
        sx, sy = width / self.width, height / self.height
        return Pinhole(self.fx * sx, self.fy * sy, (self.cx + 0.5) * sx - 0.5, (self.cy + 0.5) * sy - 0.5,
                       width, height)


@dataclass(frozen=True)
class Target3D:
    """One mask in space. ``point``: robust centre of its surface (per-axis median of the back-projected depth
    pixels, edges eroded); ``box_min``/``box_max``: its axis-aligned extent (2nd–98th percentile per axis, so
    flying pixels at depth edges do not stretch it); ``centroid_px``: (u, v) in colour pixels; ``valid_share``: the
    share of mask pixels with valid depth. ``valid`` False: ``reason`` says why and the 3-D fields are NaN."""

    valid: bool
    reason: str
    point: tuple[float, float, float]
    box_min: tuple[float, float, float]
    box_max: tuple[float, float, float]
    centroid_px: tuple[float, float]
    valid_share: float

    @classmethod
    def invalid(cls, reason: str, centroid_px=(float("nan"),) * 2, valid_share: float = 0.0) -> "Target3D":
        nan3 = (float("nan"),) * 3
        return cls(False, reason, nan3, nan3, nan3, tuple(centroid_px), valid_share)


def depth_in_metres(depth: np.ndarray, encoding: str) -> np.ndarray:
    """H×W depth as float32 metres, invalid pixels (0, NaN, ±inf, negative) as NaN. ``16UC1``/``mono16``: uint16
    millimetres; ``32FC1``: float32 metres."""
    if encoding not in DEPTH_ENCODINGS:
        raise DepthError(f"depth encoding '{encoding}' is not one of {', '.join(DEPTH_ENCODINGS)}")
    if depth.ndim != 2 or depth.size == 0:
        raise DepthError(f"depth must be a non-empty H×W array, got shape {depth.shape}")
    metres = depth.astype(np.float32) * (0.001 if encoding != "32FC1" else 1.0)
    metres[~np.isfinite(metres) | (metres <= 0)] = np.nan
    return metres


def centroid(mask: np.ndarray) -> tuple[float, float]:
    v, u = np.nonzero(mask)
    return (float(u.mean()), float(v.mean())) if u.size else (float("nan"), float("nan"))


def mask_at(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """``mask`` (colour resolution) at the depth image's resolution, nearest neighbour."""
    if mask.shape == shape:
        return mask.astype(bool)
    return cv2.resize(mask.astype(np.uint8), (shape[1], shape[0]), interpolation=cv2.INTER_NEAREST).astype(bool)


def erode(mask: np.ndarray, pixels: int, keep_at_least: int) -> np.ndarray:
    """The mask without a ``pixels``-wide rim (depth at object edges mixes foreground and background); the mask
    itself when eroding would leave fewer than ``keep_at_least`` pixels."""
    if pixels <= 0:
        return mask
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * pixels + 1, 2 * pixels + 1))
    inner = cv2.erode(mask.astype(np.uint8), kernel, borderType=cv2.BORDER_CONSTANT, borderValue=0).astype(bool)
    return inner if inner.sum() >= keep_at_least else mask


def back_project(mask: np.ndarray, depth_m: np.ndarray, camera: Pinhole) -> np.ndarray:
    """N×3 float32 points (camera optical frame) of the mask's pixels with valid depth; ``camera`` at the depth
    image's resolution."""
    v, u = np.nonzero(mask & np.isfinite(depth_m))
    z = depth_m[v, u]
    return np.stack([(u - camera.cx) * z / camera.fx, (v - camera.cy) * z / camera.fy, z], axis=1).astype(np.float32)


def check_pair(mask_shape: tuple[int, int], depth_m: np.ndarray, camera: Pinhole) -> Pinhole:
    """``camera`` at the depth image's resolution; ``DepthError`` if the colour image does not match the camera."""
    if mask_shape != (camera.height, camera.width):
        raise DepthError(f"colour image is {mask_shape[1]}×{mask_shape[0]} but its camera info says "
                         f"{camera.width}×{camera.height}")
    return camera.scaled(depth_m.shape[1], depth_m.shape[0])


def mask_target(mask: np.ndarray, depth_m: np.ndarray, camera: Pinhole, erode_px: int = 2,
                min_points: int = 10) -> Target3D:
    """The 3-D target of one H×W bool ``mask`` (colour resolution) from ``depth_m`` (``depth_in_metres``; any
    resolution covering the same view) and the colour camera's intrinsics."""
    depth_camera = check_pair(mask.shape, depth_m, camera)
    at_depth = mask_at(mask, depth_m.shape)
    pixels = int(at_depth.sum())
    if pixels == 0:
        return Target3D.invalid("the mask is empty")
    share = float(np.isfinite(depth_m[at_depth]).sum() / pixels)
    points = back_project(erode(at_depth, erode_px, min_points), depth_m, depth_camera)
    if len(points) < (min_points if pixels >= min_points else 1):
        return Target3D.invalid(f"no valid depth inside the mask ({share:.0%} of its pixels have depth)",
                                centroid(mask), share)
    low, high = np.percentile(points, [2, 98], axis=0)
    return Target3D(True, "", tuple(map(float, np.median(points, axis=0))), tuple(map(float, low)),
                    tuple(map(float, high)), centroid(mask), share)


def mask_points(mask: np.ndarray, depth_m: np.ndarray, camera: Pinhole) -> np.ndarray:
    """N×3 float32 points of every mask pixel with valid depth (no erosion): the mask as a point cloud."""
    return back_project(mask_at(mask, depth_m.shape), depth_m, check_pair(mask.shape, depth_m, camera))
