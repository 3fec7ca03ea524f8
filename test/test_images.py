"""ROS image messages ⇄ numpy, for the encodings cameras publish, padded rows and broken messages."""
import cv2
import numpy as np
import pytest

pytest.importorskip("sensor_msgs", reason="ROS 2 message packages are not installed; make setup installs them")
from sensor_msgs.msg import CompressedImage, Image  # noqa: E402
from std_msgs.msg import Header  # noqa: E402

from lisa_ros.images import (CAMERA_ENCODINGS, DATA_ENCODINGS, ImageDecodeError, RefusedFrame,  # noqa: E402
                             check_frame_size, numpy_to_image_msg, to_rgb)

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


@pytest.mark.parametrize("encoding, width, height, message", [
    ("yuv422_yuy2", 7, 4, "'yuv422_yuy2' needs an even width .*got 7"),
    ("uyvy", 5, 2, "'uyvy' needs an even width"),
    ("nv12", 8, 5, "'nv12' needs an even height .*got 5"),
])
def test_odd_sizes_of_paired_encodings_are_refused_plainly(encoding, width, height, message):
    """Found by bench_robustness's fuzz: OpenCV's assertion text (`sz.width % 2 == 0 in function 'CvtHelper'`)
    reached the requester."""
    data = bytes(width * height * 2)
    step = width if encoding == "nv12" else width * 2
    with pytest.raises(ImageDecodeError, match=message):
        to_rgb(Image(height=height, width=width, encoding=encoding, step=step, data=data))


def test_nv12_keeps_the_image_height():
    colour = np.full((6, 8, 3), (200, 60, 30), np.uint8)
    i420 = cv2.cvtColor(colour, cv2.COLOR_RGB2YUV_I420).reshape(-1)  # Y 48, U 12, V 12 bytes
    nv12 = np.concatenate([i420[:48], np.stack([i420[48:60], i420[60:72]], axis=1).reshape(-1)])
    out = to_rgb(Image(height=6, width=8, encoding="nv12", is_bigendian=0, step=8, data=nv12.tobytes()))
    assert out.shape == (6, 8, 3) and np.abs(out.astype(int) - colour.astype(int)).max() <= 3


@pytest.mark.parametrize("encoding, dtype", [("16UC1", np.uint16), ("32FC1", np.float32), ("8UC1", np.uint8),
                                             ("16SC1", np.int16)])
def test_data_images_are_stretched_to_grey(encoding, dtype):
    depth = np.linspace(500, 4000, 30).reshape(5, 6).astype(np.float64)  # millimetres, as a depth camera sends
    values = (depth / 16).astype(dtype) if dtype == np.uint8 else depth.astype(dtype)
    if dtype == np.float32:
        values[0, 0] = np.nan  # invalid depth: shown as the nearest grey, never breaks the stretch
    out = to_rgb(message(values, encoding))
    assert out.shape == (5, 6, 3) and np.array_equal(out[..., 0], out[..., 2])
    assert out[..., 0].max() == 255 and out[-1, -1, 0] == 255 and out[0, 1, 0] <= 10  # the full grey range
    assert np.all(np.diff(out[..., 0].reshape(-1)[1:].astype(int)) >= 0)  # monotone in depth


def test_every_listed_camera_encoding_decodes_and_others_are_refused_with_the_list():
    from rosbags.image.image import to_cvtype
    for encoding in CAMERA_ENCODINGS:
        _, _, typestr, channels = to_cvtype(encoding)
        row = 8 if encoding in ("nv12", "nv21") else 8 * channels * np.dtype(typestr).itemsize
        rows = 9 if encoding in ("nv12", "nv21") else 6
        data = RNG.integers(0, 256, row * rows, dtype=np.uint8).tobytes()
        out = to_rgb(Image(height=6, width=8, encoding=encoding, is_bigendian=0, step=row, data=data))
        assert out.shape == (6, 8, 3) and out.dtype == np.uint8, encoding
    assert set(DATA_ENCODINGS) <= set(CAMERA_ENCODINGS)
    with pytest.raises(ImageDecodeError, match="'yuv444' is not accepted on the camera topic; it takes rgb8, .*16UC1"):
        to_rgb(Image(height=6, width=8, encoding="yuv444", step=24, data=bytes(144)))


def png_of_size(width: int, height: int) -> bytes:
    """A valid grey PNG of any size in a few kilobytes (one zlib stream of zero rows)."""
    import struct
    import zlib

    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    rows = zlib.compress(b"".join(b"\0" + bytes(width) for _ in range(height)), 9)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", rows) + chunk(b"IEND", b""))


@pytest.mark.parametrize("size, message_part", [
    ((5000, 3000), "compressed image is 5000×3000 = 15000000 pixels, over max_image_pixels \\(8294400\\)"),
    ((20000, 20000), "refused before decoding"),  # 400 Mpx in ~0.4 MB: Pillow's own bomb bound answers first
])
def test_oversized_compressed_frames_are_refused_from_their_header(size, message_part, monkeypatch):
    data = png_of_size(*size)
    decoded = []
    monkeypatch.setattr(cv2, "imdecode", lambda *a: decoded.append(a) or None)
    with pytest.raises(ImageDecodeError, match=message_part):
        to_rgb(CompressedImage(format="png", data=data), max_pixels=3840 * 2160, max_bytes=16 << 20)
    with pytest.raises(ImageDecodeError, match=message_part):
        check_frame_size(CompressedImage(format="png", data=data), 3840 * 2160, 16 << 20)
    assert not decoded  # never handed to the decoder


def test_raw_and_byte_bounds():
    big = Image(height=3000, width=4000, encoding="rgb8", step=12000, data=bytes(16))  # header says 12 Mpx
    with pytest.raises(ImageDecodeError, match="4000×3000 = 12000000 pixels, over max_image_pixels"):
        check_frame_size(big, 3840 * 2160, None)
    with pytest.raises(ImageDecodeError, match="4000×3000 = 12000000 pixels"):
        to_rgb(big, max_pixels=3840 * 2160)
    with pytest.raises(ImageDecodeError, match="1025 bytes, over max_compressed_bytes \\(1024\\)"):
        to_rgb(CompressedImage(format="jpeg", data=bytes(1025)), max_bytes=1024)
    check_frame_size(message(RGB, "rgb8"), 30, None)  # within the bound: nothing said
    check_frame_size(CompressedImage(format="jpeg", data=b"garbage"), 30, 1024)  # unreadable: decoding will say
    with pytest.raises(ImageDecodeError, match="the reason"):
        to_rgb(RefusedFrame("the reason"))


def test_compressed():
    ok, png = cv2.imencode(".png", cv2.cvtColor(RGB, cv2.COLOR_RGB2BGR))
    assert np.array_equal(to_rgb(CompressedImage(format="png", data=png.tobytes())), RGB)
    with pytest.raises(ImageDecodeError, match="cannot decode compressed image"):
        to_rgb(CompressedImage(format="jpeg", data=b"not a jpeg"))
    ok, jpeg = cv2.imencode(".jpg", np.zeros((8, 8, 3), np.uint8))
    truncated = jpeg.tobytes()[: len(jpeg) // 2]  # header readable, data cut
    with pytest.raises(ImageDecodeError, match="cannot decode compressed image"):
        to_rgb(CompressedImage(format="jpeg", data=truncated))


@pytest.mark.parametrize("change, message_part", [
    (dict(encoding="weird42"), "image encoding 'weird42' is not accepted on the camera topic"),
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
