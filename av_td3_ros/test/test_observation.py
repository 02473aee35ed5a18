"""Observation builder: encodings, frame stack, route geometry and the 53-dim vector."""

import math

from av_td3_ros.driving.observation import (
    action_to_control, build_vector, FrameStack, image_to_gray, ObservationError,
    ObservationSpec, Route, yaw_from_quaternion)
import cv2
import numpy as np
import pytest


def _color_image(h=60, w=80):
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)


@pytest.mark.parametrize('encoding,code,channels', [
    ('bgr8', cv2.COLOR_BGR2GRAY, 3), ('rgb8', cv2.COLOR_RGB2GRAY, 3),
    ('bgra8', cv2.COLOR_BGRA2GRAY, 4), ('rgba8', cv2.COLOR_RGBA2GRAY, 4)])
def test_every_color_encoding_matches_opencv(encoding, code, channels):
    img = _color_image()
    if channels == 4:
        img = np.concatenate([img, np.full((*img.shape[:2], 1), 255, np.uint8)], axis=2)
    expected = cv2.resize(cv2.cvtColor(img, code), (84, 84), interpolation=cv2.INTER_AREA)
    got = image_to_gray(img.tobytes(), 80, 60, encoding)
    assert got.dtype == np.uint8 and got.shape == (84, 84)
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize('width,height', [(800, 600), (1280, 720), (802, 601)])
def test_large_frames_match_a_one_step_area_resize_within_rounding(width, height):
    rng = np.random.default_rng(width)
    gray = cv2.GaussianBlur(rng.integers(0, 256, (height, width), np.uint8), (9, 9), 3)
    bgra = cv2.cvtColor(gray, cv2.COLOR_GRAY2BGRA)
    got = image_to_gray(bgra.tobytes(), width, height, 'bgra8')
    expected = cv2.resize(gray, (84, 84), interpolation=cv2.INTER_AREA)
    assert np.abs(got.astype(int) - expected).max() <= 1


def test_rgb_and_bgr_of_the_same_scene_agree():
    bgr = _color_image()
    rgb = bgr[:, :, ::-1].copy()
    np.testing.assert_array_equal(image_to_gray(bgr.tobytes(), 80, 60, 'bgr8'),
                                  image_to_gray(rgb.tobytes(), 80, 60, 'rgb8'))


def test_mono8_with_row_padding():
    img = np.arange(60 * 96, dtype=np.uint32).astype(np.uint8).reshape(60, 96)
    got = image_to_gray(img.tobytes(), 80, 60, 'mono8', step=96)
    expected = cv2.resize(np.ascontiguousarray(img[:, :80]), (84, 84),
                          interpolation=cv2.INTER_AREA)
    np.testing.assert_array_equal(got, expected)


def test_bad_images_are_refused_with_the_reason():
    with pytest.raises(ObservationError, match='unsupported image encoding'):
        image_to_gray(b'\0' * 100, 10, 10, '16UC1')
    with pytest.raises(ObservationError, match='expected step x height'):
        image_to_gray(b'\0' * 99, 10, 10, 'mono8')


def test_frame_stack_is_oldest_first_and_zero_filled():
    stack = FrameStack(4, 84)
    out = stack.push(np.full((84, 84), 7, np.uint8))
    assert out[:3].max() == 0 and (out[3] == 7).all()
    for value in (8, 9, 10):
        out = stack.push(np.full((84, 84), value, np.uint8))
    assert [int(f[0, 0]) for f in out] == [7, 8, 9, 10]
    stack.reset()
    assert stack.stack.max() == 0


def test_vector_on_a_straight_route():
    spec = ObservationSpec()
    route = Route(np.stack([np.arange(0, 200, 2.0), np.zeros(100)], axis=1))
    # 1 m left of the route, heading 0.1 rad left of it, 10 m/s, between waypoints 5 and 6
    vector, state = build_vector(route, 10.5, 1.0, 0.1, 10.0, spec)
    assert vector.shape == (53,) and vector.dtype == np.float32
    assert state.index == 5
    assert state.lateral_deviation == pytest.approx(1.0)
    assert state.progress_m == pytest.approx(10.5)
    assert vector[0] == pytest.approx(10.0 / 30)
    assert vector[1] == pytest.approx(1.0 / 3.5)
    assert vector[2] == pytest.approx(0.1 / math.pi)
    # first lookahead point is waypoint 6 at (12, 0): in the vehicle frame it is ahead, right
    dx, dy = 1.5, -1.0
    x_local = math.cos(0.1) * dx + math.sin(0.1) * dy
    y_local = -math.sin(0.1) * dx + math.cos(0.1) * dy
    assert vector[3] == pytest.approx(x_local / 50, abs=1e-6)
    assert vector[4] == pytest.approx(y_local / 50, abs=1e-6)


def test_points_beyond_the_route_end_repeat_the_last_one():
    spec = ObservationSpec()
    route = Route(np.stack([np.arange(0, 20, 2.0), np.zeros(10)], axis=1))
    vector, _ = build_vector(route, 15.0, 0.0, 0.0, 0.0, spec)
    pts = vector[3:].reshape(25, 2)
    assert np.allclose(pts[2:], pts[-1]) and pts[-1][0] == pytest.approx(3.0 / 50)


def test_legacy_23_dim_layout_and_nan_refusal():
    spec = ObservationSpec(n_waypoints=10)
    route = Route(np.stack([np.arange(0, 100, 2.0), np.zeros(50)], axis=1))
    vector, _ = build_vector(route, 0.0, 0.0, 0.0, 0.0, spec)
    assert vector.shape == (23,)
    with pytest.raises(ObservationError, match='not finite'):
        build_vector(route, float('nan'), 0.0, 0.0, 0.0, spec)


def test_yaw_and_action_mapping():
    assert yaw_from_quaternion(0, 0, math.sin(0.35), math.cos(0.35)) == pytest.approx(0.7)
    assert action_to_control([0.3, 0.5]) == (0.3, 0.5, 0.0)
    assert action_to_control([-2.0, -0.25]) == (-1.0, 0.0, 0.25)
