"""Dynamics and world events with their reward: straight, turn, crash, off-road, wrong way."""

import math

from av_td3_ros.driving.classical_controller import PurePursuitController
from av_td3_ros.driving.observation import build_vector, ObservationSpec
from av_td3_ros.sim.reward import compute_reward, load_reward_weights
from av_td3_ros.sim.world import Control, step_vehicle, VehicleParams, VehicleState, World
import numpy as np
import pytest

P = VehicleParams()
DT = 0.05
W = load_reward_weights()
SPEC = ObservationSpec()


def _drive(state, control, steps):
    states = [state]
    for _ in range(steps):
        states.append(step_vehicle(states[-1], control, P, DT))
    return states


def test_full_throttle_straight_accelerates_plausibly_and_keeps_heading():
    states = _drive(VehicleState(0.0, 0.0, 0.3), Control(throttle=1.0), 600)
    speeds = np.array([s.speed for s in states])
    assert (np.diff(speeds) > -1e-9).all()
    assert 0.0 < np.diff(speeds).max() / DT <= P.max_accel_mps2
    assert 3.0 < speeds[200] < P.max_speed_mps          # ~10 s: 20-ish m/s, not instant
    assert speeds[-1] < P.max_speed_mps
    end = states[-1]
    assert end.yaw == pytest.approx(0.3)
    assert math.atan2(end.y, end.x) == pytest.approx(0.3)


def test_brakes_stop_without_reversing_and_coasting_is_gentle():
    moving = VehicleState(0.0, 0.0, 0.0, speed=20.0)
    braked = _drive(moving, Control(brake=1.0), 80)
    stop = next(i for i, s in enumerate(braked) if s.speed == 0.0)
    # brakes plus rolling and air drag: a little quicker than brakes alone
    assert 20.0 / (P.max_brake_mps2 + 1.0) <= stop * DT <= 20.0 / P.max_brake_mps2 + 0.1
    assert min(s.speed for s in braked) == 0.0
    assert braked[-1].x == pytest.approx(braked[stop].x)
    coast = _drive(moving, Control(), 20)
    assert 19.0 < coast[-1].speed < 20.0


def test_steer_sign_radius_rate_and_grip_limits():
    slow = VehicleState(0.0, 0.0, 0.0, speed=3.0)
    one = step_vehicle(slow, Control(steer=1.0, throttle=0.1), P, DT)
    assert one.steer_angle == pytest.approx(-P.steer_rate_rad_s * DT)   # rate limited
    right = _drive(slow, Control(steer=1.0, throttle=0.1), 100)
    assert right[-1].steer_angle == pytest.approx(-P.max_steer_rad)     # angle limited
    assert right[-1].yaw_rate < 0                                        # + steer = right
    beta = math.atan(P.rear_axle_to_cg_m / P.wheelbase_m * math.tan(P.max_steer_rad))
    radius = P.rear_axle_to_cg_m / math.sin(beta)
    assert right[-1].speed / abs(right[-1].yaw_rate) == pytest.approx(radius, rel=1e-6)
    left = _drive(slow, Control(steer=-1.0, throttle=0.1), 30)
    assert left[-1].yaw_rate > 0
    fast = _drive(VehicleState(0.0, 0.0, 0.0, speed=20.0), Control(steer=1.0, throttle=0.6), 40)
    assert max(abs(s.accel_lat) for s in fast) <= P.max_lateral_accel_mps2 + 1e-6


def test_reverse_gear_and_bad_controls():
    back = _drive(VehicleState(0.0, 0.0, 0.0), Control(throttle=1.0, reverse=True), 200)
    assert -P.max_reverse_speed_mps <= back[-1].speed < -3.0 and back[-1].x < 0
    clipped = step_vehicle(VehicleState(0.0, 0.0, 0.0), Control(throttle=7.0, steer=-9.0), P, DT)
    assert clipped.speed == step_vehicle(VehicleState(0.0, 0.0, 0.0), Control(
        throttle=1.0, steer=-1.0), P, DT).speed
    with pytest.raises(ValueError, match='control is not finite'):
        step_vehicle(VehicleState(0.0, 0.0, 0.0), Control(steer=math.nan), P, DT)


# -- the world: events and reward ---------------------------------------------------------------

def _reward(world, step=1):
    return compute_reward(world.measurements(step, 1000), W)


def _follow(world, steps, controller=None, gap=False):
    controller = controller or PurePursuitController()
    results = []
    for i in range(steps):
        ego = world.ego
        vector, _ = build_vector(world.route, ego.x, ego.y, ego.yaw, ego.speed, SPEC,
                                 state=world.route_state)
        action = controller.act(vector, gap_ahead_m=world.events.gap_ahead_m if gap
                                else math.inf)
        world.step(Control(throttle=max(float(action[1]), 0.0), steer=float(action[0]),
                           brake=max(-float(action[1]), 0.0)))
        results.append(_reward(world, i + 1))
        if results[-1].terminated:
            break
    return results


def test_route_is_one_lap_of_2m_waypoints_starting_at_the_ego():
    world = World(seed=2)
    route = world.route
    assert np.hypot(*np.diff(route.xy, axis=0).T) == pytest.approx(2.0, abs=2e-3)
    assert np.hypot(world.ego.x - route.xy[0, 0], world.ego.y - route.xy[0, 1]) < 1e-6
    lane = world.road.lane_length(world.direction)
    assert lane - 4.0 < route.length_m <= lane - 2.0
    assert world.route_state.index == 0 and world.distance_m == pytest.approx(0.0)


def test_straight_and_turning_driving_earns_positive_reward_without_events():
    world = World(seed=1)
    results = _follow(world, 400)
    assert not any(r.terminated for r in results)
    rewards = np.array([r.reward for r in results])
    assert rewards[100:].mean() > 0.5                 # ~0.7 per step of good driving
    assert world.distance_m > 120.0
    # the route bent by more than 60 degrees over those 400 steps: a turn was driven
    headings = np.arctan2(*np.diff(world.route.xy[:70], axis=0).T[::-1])
    assert np.ptp(np.unwrap(headings)) > math.radians(60)
    assert all(r.terms['collision'] == 0 and r.terms['off_road'] == 0 and
               r.terms['wrong_way'] == 0 for r in results)
    assert max(abs(r.terms['lateral']) for r in results[50:]) < 0.3 * W.lateral


def test_crash_into_a_stopped_car_terminates_with_the_collision_penalty():
    world = World(seed=3, scenario=1)
    t = world.traffic
    # park NPC 0 in the ego's lane 25 m ahead; the baseline without its range sensor hits it
    t.direction[0] = world.direction
    t.offset[0] = -1.75 * world.direction
    t.s[0] = (world.ego_s + 25.0 * world.direction) % world.road.length
    t.v[0], t.v_desired[0] = 0.0, 1e-3
    t.update_poses()
    result = _follow(world, 300)[-1]
    assert result.reason == 'collision' and world.events.collision
    assert result.terms['collision'] == -W.collision
    assert result.terms['proximity'] < 0               # it was warned before the crash


def test_off_road_is_penalised_then_terminates_the_episode():
    world = World(seed=4)
    results = []
    for i in range(300):
        world.step(Control(throttle=0.5, steer=0.25))  # keep turning right: off the road
        results.append(_reward(world, i + 1))
        if results[-1].terminated:
            break
    assert results[-1].reason == 'lane_departure'
    assert results[-1].terms['departure'] == -W.departure
    assert world.route_state.lateral_deviation < -2.5
    assert any(r.terms['off_road'] < 0 for r in results[:-1])
    assert any(r.terms['lane_invasion'] < 0 for r in results)   # crossed the edge line


def test_wrong_way_and_lane_invasion_of_the_centre_line():
    world = World(seed=5)
    (x0, y0), (x1, y1) = world.route.xy[40:42]
    # turned around in its own lane: wrong way, and driving loses route progress
    world.place_ego(VehicleState(x=x0, y=y0, yaw=math.atan2(y0 - y1, x0 - x1), speed=5.0))
    world.step(Control(throttle=0.3))
    result = _reward(world)
    assert world.events.wrong_way and result.terms['wrong_way'] == -W.wrong_way
    assert result.terms['progress'] < 0
    # forward but in the opposite lane: wrong way as well (CARLA's definition)
    world = World(seed=5)
    x, y, _ = world.road.pose(world.ego_s, 1.75 * world.direction)
    world.place_ego(VehicleState(x=float(x), y=float(y), yaw=world.ego.yaw, speed=5.0))
    world.step(Control(throttle=0.3))
    assert world.events.wrong_way
    # drift left from the own lane: exactly one lane invasion when the centre line is reached
    world = World(seed=5)
    world.place_ego(VehicleState(x=world.ego.x, y=world.ego.y, yaw=world.ego.yaw + 0.08,
                                 speed=6.0))
    invasions = []
    for _ in range(40):
        world.step(Control(throttle=0.2))
        invasions.append(world.events.lane_invasions)
        if world.route_state.lateral_deviation > 1.9:
            break
    assert sum(invasions) == 1
