"""Masks to 3-D targets (lisa_core.geometry) on synthetic depth of known geometry."""
import numpy as np
import pytest

from lisa_core.geometry import DepthError, Pinhole, depth_in_metres, mask_points, mask_target

K = [525.0, 0.0, 319.5, 0.0, 525.0, 239.5, 0.0, 0.0, 1.0]
CAMERA = Pinhole.from_k(K, 640, 480)
BOX = (slice(180, 300), slice(380, 500))  # rows, columns of a box's front face in the colour image


def scene_depth(wall_m=3.0, box_m=1.2, shape=(480, 640)) -> np.ndarray:
    """A wall facing the camera with a box's flat front face in front of it, as float metres at ``shape``."""
    depth = np.full(shape, wall_m, np.float32)
    rows = slice(BOX[0].start * shape[0] // 480, BOX[0].stop * shape[0] // 480)
    cols = slice(BOX[1].start * shape[1] // 640, BOX[1].stop * shape[1] // 640)
    depth[rows, cols] = box_m
    return depth


def box_mask(grow: int = 0) -> np.ndarray:
    mask = np.zeros((480, 640), bool)
    mask[BOX[0].start - grow:BOX[0].stop + grow, BOX[1].start - grow:BOX[1].stop + grow] = True
    return mask


def true_box_point(z=1.2):
    u = (BOX[1].start + BOX[1].stop - 1) / 2
    v = (BOX[0].start + BOX[0].stop - 1) / 2
    return np.array([(u - CAMERA.cx) * z / CAMERA.fx, (v - CAMERA.cy) * z / CAMERA.fy, z])


def test_plane_point_within_a_centimetre():
    depth = np.full((480, 640), 1.5, np.float32)
    mask = np.zeros((480, 640), bool)
    mask[100:200, 200:300] = True
    target = mask_target(mask, depth, CAMERA)
    expected = np.array([(249.5 - 319.5) * 1.5 / 525, (149.5 - 239.5) * 1.5 / 525, 1.5])
    assert target.valid and target.reason == ""
    assert np.linalg.norm(np.array(target.point) - expected) < 0.01
    assert target.centroid_px == pytest.approx((249.5, 149.5))
    assert target.valid_share == 1.0


def test_box_before_a_wall_mask_edges_on_the_wall():
    target = mask_target(box_mask(grow=1), scene_depth(), CAMERA)  # the mask spills one pixel onto the wall
    assert np.linalg.norm(np.array(target.point) - true_box_point()) < 0.01
    x_edges = (np.array([BOX[1].start, BOX[1].stop - 1]) - CAMERA.cx) * 1.2 / CAMERA.fx
    assert target.box_min[0] == pytest.approx(x_edges[0], abs=0.02)
    assert target.box_max[0] == pytest.approx(x_edges[1], abs=0.02)
    assert target.box_max[2] == pytest.approx(1.2, abs=0.01)  # the wall's pixels do not stretch the extent


@pytest.mark.parametrize("encoding", ["16UC1", "32FC1"])
def test_noisy_depth_with_holes_within_two_centimetres(encoding):
    rng = np.random.default_rng(0)
    metres = scene_depth() + rng.normal(0, 0.01, (480, 640)).astype(np.float32)
    holes = rng.random((480, 640)) < 0.3
    if encoding == "16UC1":
        raw = np.round(metres * 1000).astype(np.uint16)
        raw[holes] = 0
    else:
        raw = metres.copy()
        raw[holes] = rng.choice([np.nan, np.inf, 0.0], holes.sum())
    target = mask_target(box_mask(grow=1), depth_in_metres(raw, encoding), CAMERA)
    assert target.valid
    assert np.linalg.norm(np.array(target.point) - true_box_point()) < 0.02
    assert 0.65 < target.valid_share < 0.75


def test_depth_of_another_size_than_the_colour_image():
    small = mask_target(box_mask(), scene_depth(shape=(240, 320)), CAMERA)
    assert np.linalg.norm(np.array(small.point) - true_box_point()) < 0.01
    assert small.centroid_px == pytest.approx(mask_target(box_mask(), scene_depth(), CAMERA).centroid_px)


def test_mask_points_are_the_masks_surface():
    points = mask_points(box_mask(), scene_depth(), CAMERA)
    assert points.shape == (box_mask().sum(), 3) and points.dtype == np.float32
    assert np.allclose(points[:, 2], 1.2)


def test_no_valid_depth_is_an_invalid_target_with_the_reason():
    target = mask_target(box_mask(), np.full((480, 640), np.nan, np.float32), CAMERA)
    assert not target.valid and "no valid depth" in target.reason and np.isnan(target.point).all()
    assert target.centroid_px[0] == pytest.approx(439.5)
    assert "empty" in mask_target(np.zeros((480, 640), bool), scene_depth(), CAMERA).reason


def test_bad_depth_and_camera_input_are_clear_errors():
    with pytest.raises(DepthError, match="encoding 'rgb8'"):
        depth_in_metres(np.zeros((4, 4), np.uint16), "rgb8")
    with pytest.raises(DepthError, match="non-empty"):
        depth_in_metres(np.zeros((0, 4), np.uint16), "16UC1")
    with pytest.raises(DepthError, match="focal length"):
        Pinhole.from_k([0, 0, 1, 0, 0, 1, 0, 0, 1], 640, 480)
    with pytest.raises(DepthError, match="zero size"):
        Pinhole.from_k(K, 0, 480)
    with pytest.raises(DepthError, match="camera info says 640×480"):
        mask_target(np.zeros((240, 320), bool), scene_depth(), CAMERA)
