"""Camera renderer: road where the road is, markings where they are, cars, sky, any size, gray."""

import math

from av_td3_ros.driving.observation import image_to_gray
from av_td3_ros.sim.render import CameraConfig
from av_td3_ros.sim.world import VehicleState, World
import numpy as np
import pytest


@pytest.fixture(scope='module')
def world():
    w = World(seed=7, scenario=0)
    w.render_bgra()          # builds the textures once for the module
    return w


def _pixel(world, x, y, z=0.0, width=800, height=600):
    uv, depth = world.camera.project(np.array([x, y, z]), (world.ego.x, world.ego.y,
                                                           world.ego.yaw), width, height)
    assert depth > 1.0
    return int(uv[1]), int(uv[0])          # row, col


def _road_point(world, ahead_m, offset_m):
    """World point ``ahead_m`` along the road from the ego, ``offset_m`` left of the centre."""
    s = world.ego_s + ahead_m * world.direction
    x, y, _ = world.road.pose(s, offset_m * world.direction)
    return float(x), float(y)


def test_bgra_frame_of_any_size_with_opaque_alpha(world):
    for w, h in ((800, 600), (400, 300), (64, 48), (37, 91)):
        img = world.render_bgra(w, h)
        assert img.shape == (h, w, 4) and img.dtype == np.uint8
        assert (img[:, :, 3] == 255).all()


def test_sky_above_the_horizon_ground_below(world):
    img = world.render_bgra(800, 600)
    sky = img[:100, :, :3].astype(int)
    assert (sky[..., 0] > sky[..., 2]).all(), 'sky is blue'
    assert sky.std(axis=1).max() < 1.0, 'sky rows are uniform'
    horizon = int(300 - world.camera.focal * math.tan(math.radians(-world.camera.pitch_deg)))
    assert 150 < horizon < 300
    assert (img[horizon - 3, 400, 0] > img[horizon - 3, 400, 1])          # still sky
    assert not np.array_equal(img[horizon + 5:, :, :3].std(axis=(0, 1)), [0, 0, 0])


def test_road_markings_and_grass_where_they_are(world):
    img = world.render_bgra(800, 600)
    half = world.road.config.half_width_m
    # own lane centre 10 m ahead: asphalt (dark gray, no hue)
    b, g, r, _ = img[_pixel(world, *_road_point(world, 10.0, -1.75))].astype(int)
    assert max(b, g, r) < 110 and max(b, g, r) - min(b, g, r) < 12
    # right edge line 8 m ahead: white
    px = img[_pixel(world, *_road_point(world, 8.0, -(half - 0.075)))]
    assert min(px[:3]) > 180
    # grass 8 m right of the road edge: green
    b, g, r, _ = img[_pixel(world, *_road_point(world, 12.0, -(half + 8.0)))].astype(int)
    assert g > r + 20 and g > b + 20
    # the dashed yellow centre line: a point in the middle of a dash, and one in a gap
    cfg = world.road.config
    period = cfg.dash_length_m + cfg.dash_gap_m
    for ahead in np.arange(7.0, 20.0, 0.25):
        s = (world.ego_s + ahead * world.direction) % world.road.length
        if abs(s % period - cfg.dash_length_m / 2) < 0.2:
            break
    b, g, r, _ = img[_pixel(world, *_road_point(world, ahead, 0.0))].astype(int)
    assert r > 180 and g > 150 and b < 90, 'yellow dash'
    b, g, r, _ = img[_pixel(world, *_road_point(world, ahead + cfg.dash_length_m, 0.0))
                     ].astype(int)
    assert max(b, g, r) < 110, 'gap between dashes'


def test_npc_drawn_as_a_shaded_box(world):
    world.reset(scenario=1)
    t = world.traffic
    x, y = _road_point(world, 15.0, -1.75)
    yaw = world.ego.yaw + 0.8                        # turned: rear and right side visible
    t.x[0], t.y[0], t.yaw[0] = x, y, yaw
    t.color[0] = (200.0, 40.0, 40.0)                 # blue in BGR
    img = world.render_bgra(800, 600)
    ux, uy = math.cos(yaw), math.sin(yaw)
    rear = (x - ux * t.length[0] / 2, y - uy * t.length[0] / 2)
    side = (x + uy * t.width[0] / 2, y - ux * t.width[0] / 2)
    colors = [img[_pixel(world, px, py, 0.7)].astype(int) for px, py in (rear, side)]
    for b, g, r, _ in colors:
        assert b > 80 and b > 2 * g and b > 2 * r, 'car faces are blue'
    assert abs(colors[0][0] - colors[1][0]) > 5, 'faces are shaded differently'
    top = img[_pixel(world, x, y, t.height[0] + 1.0)]
    assert top[0] > top[2] and top[1] > 150, 'above the car: sky'
    world.reset(scenario=0)


def test_gray_84_looks_like_the_big_frame_shrunk(world):
    rng = np.random.default_rng(0)
    for _ in range(3):
        i = int(rng.integers(0, len(world.route) - 1))
        (x0, y0), (x1, y1) = world.route.xy[i:i + 2]
        world.place_ego(VehicleState(x=x0, y=y0, yaw=math.atan2(y1 - y0, x1 - x0)))
        small = world.render_gray(84)
        big = world.render_bgra(800, 600)
        reference = image_to_gray(big.tobytes(), 800, 600, 'bgra8')
        diff = np.abs(small.astype(int) - reference.astype(int))
        assert diff.mean() < 4.0 and np.percentile(diff, 99) < 40


def test_camera_fov_changes_the_view():
    wide = World(seed=7, camera=CameraConfig(fov_deg=110.0)).render_gray()
    narrow = World(seed=7, camera=CameraConfig(fov_deg=60.0)).render_gray()
    assert np.abs(wide.astype(int) - narrow.astype(int)).mean() > 5
    with pytest.raises(ValueError, match='fov_deg'):
        CameraConfig(fov_deg=5.0)
