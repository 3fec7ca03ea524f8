"""ROS image messages ⇄ numpy. Decoding checks the header fields first (a size over the bound, zero size, short
step, short data, unknown encoding → ``ImageDecodeError`` naming the problem; a compressed frame's dimensions are read
from its header, before anything is decompressed), then uses ``cv_bridge`` on a ROS install or the maintained
``rosbags-image`` converter elsewhere. Encoding outputs is plain field filling."""
from __future__ import annotations

import io
from types import SimpleNamespace

import cv2
import numpy as np

try:  # a ROS 2 install; the PyPI "cv-bridge" is ROS 1's and is not used
    from cv_bridge import CvBridge
except ImportError:  # pragma: no cover - depends on the machine
    CvBridge = None

from PIL import Image as PILImage
from PIL import UnidentifiedImageError
from rosbags.image import ImageError as RosbagsImageError
from rosbags.image import message_to_cvimage
from rosbags.image.image import to_cvtype

COLOUR_ENCODINGS = ("rgb8", "rgba8", "rgb16", "rgba16", "bgr8", "bgra8", "bgr16", "bgra16", "8UC3", "8SC3", "16UC3",
                    "32FC3", "bayer_rggb8", "bayer_bggr8", "bayer_gbrg8", "bayer_grbg8", "bayer_rggb16",
                    "bayer_bggr16", "bayer_gbrg16", "bayer_grbg16", "yuv422", "uyvy", "yuyv", "yuv422_yuy2",
                    "nv12", "nv21")
GREY_ENCODINGS = ("mono8", "mono16")
# Single-channel data (depth, infrared, thermal): stretched over the frame's own finite range to grey 0–255.
DATA_ENCODINGS = ("8UC1", "8SC1", "16UC1", "16SC1", "32SC1", "32FC1", "64FC1")
CAMERA_ENCODINGS = COLOUR_ENCODINGS + GREY_ENCODINGS + DATA_ENCODINGS
PAIRED_ENCODINGS = ("yuv422", "uyvy", "yuyv", "yuv422_yuy2", "nv12", "nv21")  # chroma shared by two pixels


class ImageDecodeError(ValueError):
    """A camera message that cannot be turned into an RGB image."""


def _refused_encoding(encoding: str) -> ImageDecodeError:
    return ImageDecodeError(f"image encoding '{encoding}' is not accepted on the camera topic; it takes "
                            f"{', '.join(CAMERA_ENCODINGS)}")


def _check_pixels(width: int, height: int, max_pixels: int | None, what: str = "image") -> None:
    if max_pixels and width * height > max_pixels:
        raise ImageDecodeError(f"{what} is {width}×{height} = {width * height} pixels, over max_image_pixels "
                               f"({max_pixels}); refused before decoding")


def _packed_row_bytes(msg) -> int:
    if msg.encoding not in CAMERA_ENCODINGS:
        raise _refused_encoding(msg.encoding)
    _, _, typestr, channels = to_cvtype(msg.encoding)
    return msg.width * channels * np.dtype(typestr).itemsize


def _data_to_grey(msg) -> np.ndarray:
    """A single-channel data image (depth, IR) → uint8, its finite values stretched to 0–255."""
    _, _, typestr, _ = to_cvtype(msg.encoding)
    dtype = np.dtype(typestr).newbyteorder(">" if msg.is_bigendian else "<")
    values = np.frombuffer(msg.data, dtype, msg.width * msg.height).reshape(msg.height, msg.width)
    values = values.astype(np.float64)
    finite = np.isfinite(values)
    if not finite.any():
        return np.zeros(values.shape, np.uint8)
    low, high = values[finite].min(), values[finite].max()
    grey = (np.where(finite, values, low) - low) * (255.0 / (high - low) if high > low else 0.0)
    return grey.round().astype(np.uint8)


def _to_uint8(image: np.ndarray) -> np.ndarray:
    if image.dtype == np.uint8:
        return image
    if image.dtype == np.uint16:
        return (image >> 8).astype(np.uint8)
    return cv2.normalize(image, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)


def raw_image_to_rgb(msg, max_pixels: int | None = None) -> np.ndarray:
    """``sensor_msgs/Image`` (one of ``CAMERA_ENCODINGS``) → H×W×3 uint8 RGB; over ``max_pixels`` is refused."""
    _check_pixels(msg.width, msg.height, max_pixels)
    if msg.width == 0 or msg.height == 0:
        raise ImageDecodeError(f"image has zero size ({msg.width}×{msg.height})")
    if msg.encoding in PAIRED_ENCODINGS and msg.width % 2:
        raise ImageDecodeError(f"'{msg.encoding}' needs an even width (its pixels come in pairs), got {msg.width}")
    if msg.encoding in ("nv12", "nv21") and msg.height % 2:
        raise ImageDecodeError(f"'{msg.encoding}' needs an even height (one chroma row per two rows), got "
                               f"{msg.height}")
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
        if msg.encoding in DATA_ENCODINGS:
            image = _data_to_grey(packed)
        elif msg.encoding in ("nv12", "nv21"):  # the converters take height as the plane rows (3/2 of the image's)
            planes = np.frombuffer(packed.data, np.uint8, row * rows).reshape(rows, row)
            image = cv2.cvtColor(planes, cv2.COLOR_YUV2RGB_NV12 if msg.encoding == "nv12" else cv2.COLOR_YUV2RGB_NV21)
        elif CvBridge is not None:
            image = CvBridge().imgmsg_to_cv2(packed, desired_encoding="rgb8")
        else:
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


def _compressed_dimensions(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a compressed image's header, read without decompressing; None when unreadable."""
    try:
        with PILImage.open(io.BytesIO(data)) as header:
            return header.size
    except PILImage.DecompressionBombError as err:
        raise ImageDecodeError(f"compressed image refused before decoding: {err}") from err
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        return None


def _check_compressed(msg, max_pixels: int | None, max_bytes: int | None) -> tuple[bytes, tuple[int, int] | None]:
    """The message's bytes (copied once, after the byte bound) and its dimensions (None when unreadable)."""
    if max_bytes and len(msg.data) > max_bytes:
        raise ImageDecodeError(f"compressed image is {len(msg.data)} bytes, over max_compressed_bytes ({max_bytes})")
    data = bytes(msg.data)
    size = _compressed_dimensions(data)
    if size is not None:
        _check_pixels(*size, max_pixels, "compressed image")
    return data, size


def compressed_image_to_rgb(msg, max_pixels: int | None = None, max_bytes: int | None = None) -> np.ndarray:
    """``sensor_msgs/CompressedImage`` (jpeg, png, webp, …) → H×W×3 uint8 RGB. Over ``max_bytes``, or over
    ``max_pixels`` by the dimensions in its header, it is refused without being decompressed."""
    data, size = _check_compressed(msg, max_pixels, max_bytes)
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR) if size is not None else None
    if bgr is None:
        reason = "" if size is not None else ": no readable image header"
        raise ImageDecodeError(f"cannot decode compressed image (format '{msg.format}', {len(data)} bytes){reason}")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def to_rgb(msg, max_pixels: int | None = None, max_bytes: int | None = None) -> np.ndarray:
    if isinstance(msg, RefusedFrame):
        raise ImageDecodeError(msg.reason)
    if hasattr(msg, "format"):
        return compressed_image_to_rgb(msg, max_pixels, max_bytes)
    return raw_image_to_rgb(msg, max_pixels)


class RefusedFrame:
    """Stands in for a camera message refused on arrival, so that the message itself is not kept."""

    def __init__(self, reason: str):
        self.reason = reason


def check_frame_size(msg, max_pixels: int | None, max_bytes: int | None) -> None:
    """The bounds, from the message's header alone (raw: height × width; compressed: its bytes and the dimensions
    in the image header): ``ImageDecodeError`` when over one. Costs well under a millisecond."""
    if hasattr(msg, "format"):
        _check_compressed(msg, max_pixels, max_bytes)
    else:
        _check_pixels(msg.width, msg.height, max_pixels)


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
