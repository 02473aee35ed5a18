"""Road network: closed, curves of varied radius, lanes 2 m apart, deterministic for a seed."""

import math

from av_td3_ros.sim.road import lane_offset, RoadConfig, RoadNetwork
import numpy as np
import pytest

CFG = RoadConfig()


def _road(seed: int) -> RoadNetwork:
    return RoadNetwork.generate(np.random.default_rng(seed), CFG)


@pytest.fixture(scope='module')
def roads():
    return [_road(seed) for seed in range(6)]


def test_same_seed_same_road_other_seed_other_road():
    np.testing.assert_array_equal(_road(4).xy, _road(4).xy)
    assert not np.allclose(_road(4).xy[:100], _road(5).xy[:100])


def test_closed_loop_in_the_configured_length(roads):
    for road in roads:
        gap = np.hypot(*(road.xy[0] - road.xy[-1]))
        assert gap == pytest.approx(CFG.sample_spacing_m, rel=0.05)
        assert CFG.lap_length_min_m - 1 <= road.length <= CFG.lap_length_max_m + 1
        # pose() is periodic in s
        a = np.array(road.pose(12.3, 1.0))
        b = np.array(road.pose(12.3 + road.length, 1.0))
        np.testing.assert_allclose(a, b, atol=1e-9)
        # total turning of a simple closed curve is one full turn
        turning = abs(np.sum(road.curvature) * CFG.sample_spacing_m)
        assert turning == pytest.approx(2 * math.pi, rel=0.02)


def test_curves_of_varied_radius_and_no_overlap(roads):
    for road in roads:
        radius = 1.0 / np.maximum(np.abs(road.curvature), 1e-9)
        assert radius.min() >= CFG.min_radius_m
        assert radius.min() < 45.0, 'no real bend'
        assert radius.max() > 150.0, 'no near-straight stretch'
        assert road.min_clearance() >= CFG.clearance_m


def test_lane_points_are_2m_apart_on_the_right_of_the_driving_direction(roads):
    road = roads[0]
    for direction in (1, -1):
        xy, centre_s = road.lane_points(40.0, direction, 2.0, 100.0)
        assert len(xy) == 51
        np.testing.assert_allclose(np.hypot(*np.diff(xy, axis=0).T), 2.0, atol=2e-3)
        x, y, heading = road.pose(centre_s, 0.0)
        # lateral offset from the centre line, positive left of increasing s
        offset = (xy[:, 1] - y) * np.cos(heading) - (xy[:, 0] - x) * np.sin(heading)
        np.testing.assert_allclose(offset, lane_offset(direction, CFG), atol=0.05)
        travel = np.arctan2(*np.diff(xy, axis=0).T[::-1])
        # keep right: the centre line is on the left of the direction of travel
        left_normal = np.stack((-np.sin(travel), np.cos(travel)), axis=1)
        to_centre = np.stack((x[:-1] - xy[:-1, 0], y[:-1] - xy[:-1, 1]), axis=1)
        assert (np.sum(left_normal * to_centre, axis=1) > 1.0).all()


def test_lane_lengths_differ_by_the_lane_offset(roads):
    road = roads[1]
    shorter, longer = sorted((road.lane_length(1), road.lane_length(-1)))
    assert longer - shorter == pytest.approx(2 * math.pi * CFG.lane_width_m, rel=0.02)


def test_bad_config_is_refused():
    with pytest.raises(ValueError, match='min_radius_m must exceed the road width'):
        RoadConfig(min_radius_m=5.0)
    with pytest.raises(ValueError, match='lap length range'):
        RoadConfig(lap_length_min_m=300.0, lap_length_max_m=200.0)
    with pytest.raises(RuntimeError, match='no road met the constraints'):
        RoadNetwork.generate(np.random.default_rng(0), RoadConfig(min_radius_m=200.0))
