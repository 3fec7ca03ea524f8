"""ROS image messages ⇄ numpy. Decoding checks the header fields first (zero size, short step, short data, unknown
encoding → ``ImageDecodeError`` naming the problem), then uses ``cv_bridge`` on a ROS install or the maintained
``rosbags-image`` converter elsewhere. Encoding outputs is plain field filling."""
from __future__ import annotations

from types import SimpleNamespace

import cv2
import numpy as np

try:  # a ROS 2 install; the PyPI "cv-bridge" is ROS 1's and is not used
    from cv_bridge import CvBridge
except ImportError:  # pragma: no cover - depends on the machine
    CvBridge = None

from rosbags.image import ImageError as RosbagsImageError
from rosbags.image import message_to_cvimage
from rosbags.image.image import to_cvtype


class ImageDecodeError(ValueError):
    """A camera message that cannot be turned into an RGB image."""


def _packed_row_bytes(msg) -> int:
    try:
        _, _, typestr, channels = to_cvtype(msg.encoding)
    except (RosbagsImageError, KeyError, ValueError) as err:
        raise ImageDecodeError(f"unknown image encoding '{msg.encoding}'") from err
    return msg.width * channels * np.dtype(typestr).itemsize


def _to_uint8(image: np.ndarray) -> np.ndarray:
    if image.dtype == np.uint8:
        return image
    if image.dtype == np.uint16:
        return (image >> 8).astype(np.uint8)
    return cv2.normalize(image, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)


def raw_image_to_rgb(msg) -> np.ndarray:
    """``sensor_msgs/Image`` → H×W×3 uint8 RGB."""
    if msg.width == 0 or msg.height == 0:
        raise ImageDecodeError(f"image has zero size ({msg.width}×{msg.height})")
    row = _packed_row_bytes(msg)
    if msg.encoding in ("nv12", "nv21"):  # planar: 1.5 rows of bytes per image row, no padding support
        row, rows = msg.width, msg.height * 3 // 2
    else:
        rows = msg.height
    if msg.step < row:
        raise ImageDecodeError(f"step {msg.step} is smaller than a row of {msg.width} '{msg.encoding}' pixels "
                               f"({row} bytes)")
    data = np.frombuffer(msg.data, np.uint8)
    if data.size < msg.step * rows:
        raise ImageDecodeError(f"image data has {data.size} bytes; step × height needs {msg.step * rows}")
    if msg.step != row:  # drop row padding: the converters assume packed rows
        data = data[: msg.step * rows].reshape(rows, msg.step)[:, :row]
    packed = SimpleNamespace(encoding=msg.encoding, width=msg.width, height=msg.height,
                             is_bigendian=msg.is_bigendian, step=row, data=np.ascontiguousarray(data).tobytes()
                             if msg.step != row else msg.data)
    try:
        if CvBridge is not None:
            return _to_uint8(CvBridge().imgmsg_to_cv2(packed, desired_encoding="rgb8"))
        image = message_to_cvimage(packed, "rgb8")
    except (RosbagsImageError, cv2.error, TypeError, ValueError) as err:
        raise ImageDecodeError(f"cannot convert '{msg.encoding}' to rgb8: {err}") from err
    image = _to_uint8(image)
    return np.ascontiguousarray(image if image.ndim == 3 else np.repeat(image[..., None], 3, axis=2))


def depth_image_to_metres(msg) -> np.ndarray:
    """``sensor_msgs/Image`` depth (``16UC1``/``mono16`` millimetres or ``32FC1`` metres) → H×W float32 metres,
    invalid pixels NaN; ``ImageDecodeError`` naming the problem (zero size, unknown encoding, short data)."""
    from lisa_core.geometry import DEPTH_ENCODINGS, DepthError, depth_in_metres

    if msg.width == 0 or msg.height == 0:
        raise ImageDecodeError(f"depth image has zero size ({msg.width}×{msg.height})")
    if msg.encoding not in DEPTH_ENCODINGS:
        raise ImageDecodeError(f"depth encoding '{msg.encoding}' is not one of {', '.join(DEPTH_ENCODINGS)}")
    dtype = np.dtype(np.float32 if msg.encoding == "32FC1" else np.uint16).newbyteorder(">" if msg.is_bigendian
                                                                                         else "<")
    row = msg.width * dtype.itemsize
    if msg.step < row:
        raise ImageDecodeError(f"depth step {msg.step} is smaller than a row of {msg.width} '{msg.encoding}' "
                               f"pixels ({row} bytes)")
    data = np.frombuffer(msg.data, np.uint8)
    if data.size < msg.step * msg.height:
        raise ImageDecodeError(f"depth data has {data.size} bytes; step × height needs {msg.step * msg.height}")
    rows = data[: msg.step * msg.height].reshape(msg.height, msg.step)[:, :row]
    try:
        return depth_in_metres(np.ascontiguousarray(rows).view(dtype).reshape(msg.height, msg.width), msg.encoding)
    except DepthError as err:
        raise ImageDecodeError(str(err)) from err


def compressed_image_to_rgb(msg) -> np.ndarray:
    """``sensor_msgs/CompressedImage`` (jpeg, png, …) → H×W×3 uint8 RGB."""
    data = np.frombuffer(msg.data, np.uint8)
    bgr = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if bgr is None:
        raise ImageDecodeError(f"cannot decode compressed image (format '{msg.format}', {data.size} bytes)")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def to_rgb(msg) -> np.ndarray:
    return compressed_image_to_rgb(msg) if hasattr(msg, "format") else raw_image_to_rgb(msg)


def numpy_to_image_msg(array: np.ndarray, header, msg_type):
    """H×W uint8 → ``mono8`` or H×W×3 uint8 RGB → ``rgb8`` message of ``msg_type`` (sensor_msgs/Image)."""
    msg = msg_type()
    msg.header = header
    msg.height, msg.width = array.shape[:2]
    msg.encoding = "mono8" if array.ndim == 2 else "rgb8"
    msg.is_bigendian = 0
    msg.step = msg.width * (1 if array.ndim == 2 else 3)
    msg.data = np.ascontiguousarray(array, dtype=np.uint8).tobytes()
    return msg
