"""ROS image messages ⇄ numpy, for the encodings cameras publish, padded rows and broken messages."""
import cv2
import numpy as np
import pytest

pytest.importorskip("sensor_msgs", reason="ROS 2 message packages are not installed; make setup installs them")
from sensor_msgs.msg import CompressedImage, Image  # noqa: E402
from std_msgs.msg import Header  # noqa: E402

from lisa_ros.images import ImageDecodeError, numpy_to_image_msg, to_rgb  # noqa: E402

RNG = np.random.default_rng(0)
RGB = RNG.integers(0, 256, (6, 5, 3), dtype=np.uint8)


def message(array: np.ndarray, encoding: str, pad: int = 0) -> Image:
    rows = array.reshape(array.shape[0], -1).view(np.uint8)
    if pad:
        rows = np.concatenate([rows, np.full((rows.shape[0], pad), 7, np.uint8)], axis=1)
    return Image(height=array.shape[0], width=array.shape[1], encoding=encoding, is_bigendian=0,
                 step=rows.shape[1], data=rows.tobytes())


@pytest.mark.parametrize("encoding, array", [
    ("rgb8", RGB),
    ("bgr8", RGB[..., ::-1].copy()),
    ("rgba8", np.dstack([RGB, np.full(RGB.shape[:2], 255, np.uint8)])),
    ("bgra8", np.dstack([RGB[..., ::-1], np.full(RGB.shape[:2], 9, np.uint8)])),
])
@pytest.mark.parametrize("pad", [0, 3])
def test_color_encodings(encoding, array, pad):
    assert np.array_equal(to_rgb(message(array, encoding, pad)), RGB)


def test_mono_encodings():
    gray = RGB[..., 0].copy()
    assert np.array_equal(to_rgb(message(gray, "mono8")), np.dstack([gray] * 3))
    wide = gray.astype(np.uint16) * 257  # 16-bit image of the same picture
    assert np.array_equal(to_rgb(message(wide, "mono16")), np.dstack([gray] * 3))


def test_yuv422_is_converted():
    yuyv = cv2.cvtColor(cv2.cvtColor(np.full((4, 6, 3), 128, np.uint8), cv2.COLOR_RGB2YUV), cv2.COLOR_YUV2RGB)
    packed = np.full((4, 6, 2), 128, np.uint8)  # Y = U = V = 128 → grey
    out = to_rgb(message(packed, "yuv422_yuy2"))
    assert out.shape == (4, 6, 3) and np.abs(out.astype(int) - yuyv.astype(int)).max() <= 2


def test_compressed():
    ok, png = cv2.imencode(".png", cv2.cvtColor(RGB, cv2.COLOR_RGB2BGR))
    assert np.array_equal(to_rgb(CompressedImage(format="png", data=png.tobytes())), RGB)
    with pytest.raises(ImageDecodeError, match="cannot decode compressed image"):
        to_rgb(CompressedImage(format="jpeg", data=b"not a jpeg"))


@pytest.mark.parametrize("change, message_part", [
    (dict(encoding="weird42"), "unknown image encoding 'weird42'"),
    (dict(height=0), "zero size"),
    (dict(step=14), "step 14 is smaller"),
    (dict(data=bytes(20)), "image data has 20 bytes"),
])
def test_broken_messages(change, message_part):
    msg = message(RGB, "rgb8")
    for key, value in change.items():
        setattr(msg, key, value)
    with pytest.raises(ImageDecodeError, match=message_part):
        to_rgb(msg)


def test_outputs_round_trip():
    header = Header(frame_id="cam")
    mask = (RGB[..., 0] > 128).astype(np.uint8) * 255
    mono = numpy_to_image_msg(mask, header, Image)
    assert (mono.encoding, mono.step, mono.header.frame_id) == ("mono8", 5, "cam")
    assert np.array_equal(to_rgb(mono)[..., 0], mask)
    assert np.array_equal(to_rgb(numpy_to_image_msg(RGB, header, Image)), RGB)
