"""
CARLA path without a CARLA server: episode logic, route planning, the node over DDS, launch files.

The carla client objects come from ``carla_standin`` (a STAND-IN of the subset of the CARLA API
the episode logic uses). Where the real ``carla`` wheel is installed, the stand-in is checked
against the real ``carla.Map`` (built offline from the same OpenDRIVE), and route planning runs
on both. The node test needs carla_msgs: the installed one, or a stand-in interface package
built from carla-ros-bridge's documented message definitions; it skips with the reason when
neither can be had. Tests marked ``carla`` need a real CARLA server (``CARLA_HOST``).
"""

import importlib
import json
import math
import os
from pathlib import Path
import random
import threading
import time

from av_td3_ros.carla.episode import (
    carla_to_enu, CarlaEpisode, CarlaEpisodeConfig, CarlaSetupError, CollisionRecord,
    enu_to_carla, EventLog, FrameSync, LaneGraph, LaneInvasionRecord, OdometrySample,
    plan_route, route_to_enu, RoutePlanningError)
from av_td3_ros.driving.observation import wrap_angle
from av_td3_ros.ros.common import VehicleTopics
from av_td3_ros.sim.reward import (
    compute_reward, jerk_magnitude, load_reward_weights, StepMeasurements, TERM_NAMES)
import carla_standin as cs
import numpy as np
import pytest

PACKAGE = Path(__file__).resolve().parent.parent
WEIGHTS = load_reward_weights()
DT = 0.05

try:
    import carla as real_carla
except ImportError:
    real_carla = None
needs_real_carla = pytest.mark.skipif(
    real_carla is None, reason='the carla wheel is not installed (optional: pip install '
    'carla==0.9.16); the stand-in is checked against the real carla.Map only where it is')


# --------------------------------------------------------------------------- helpers


def _make_world(roads=None, name='ring', synchronous=True):
    carla_map = cs.Map(name, roads if roads is not None else cs.ring_roads())
    world = cs.World(carla_map, cs.WorldSettings(synchronous, 0.05 if synchronous else None))
    blueprint = world.get_blueprint_library().find('vehicle.tesla.model3')
    blueprint.set_attribute('role_name', 'ego_vehicle')
    ego = world.spawn_actor(blueprint, carla_map.get_spawn_points()[0])
    return world, ego, cs.Client(world=world)


def _episode(roads=None, name='ring', **config):
    world, ego, client = _make_world(roads, name)
    episode = CarlaEpisode(cs.module(), client, CarlaEpisodeConfig(**config), WEIGHTS)
    episode.connect()
    return episode, world, ego


def _along(route: np.ndarray, s: float, lateral: float = 0.0) -> tuple[float, float, float]:
    """ENU pose at arc length ``s`` along a route, shifted ``lateral`` metres to the left."""
    seg = np.hypot(*np.diff(route[:, :2], axis=0).T)
    cum = np.concatenate(([0.0], np.cumsum(seg)))
    i = int(min(np.searchsorted(cum, s, side='right') - 1, len(seg) - 1))
    t = (s - cum[i]) / seg[i]
    p = route[i, :2] + t * (route[i + 1, :2] - route[i, :2])
    yaw = math.atan2(*(route[i + 1, 1::-1] - route[i, 1::-1]))
    return (float(p[0] - math.sin(yaw) * lateral), float(p[1] + math.cos(yaw) * lateral), yaw)


def _start(episode, stamp=1.0):
    """Run the first frame at the start pose; return its outcome."""
    x, y, yaw = episode.episode.plan.start
    return episode.on_frame(stamp, OdometrySample(stamp, x, y, yaw, 0.0))


def _drive(episode, steps, speed=8.0, lateral=0.0, stamp0=1.0, heading_offset=0.0, first_k=1):
    """Follow the route at ``speed`` for frames first_k.. after step 0; return the outcomes."""
    route = episode.episode.plan.route
    outcomes = []
    for k in range(first_k, first_k + steps):
        stamp = stamp0 + k * DT
        x, y, yaw = _along(route, min(speed * k * DT, episode.episode.route.length_m - 1e-6),
                           lateral)
        outcomes.append(episode.on_frame(stamp, OdometrySample(
            stamp, x, y, wrap_angle(yaw + heading_offset), speed)))
    return outcomes


# --------------------------------------------------------------------------- frames, stand-in


def test_frame_conversion_negates_y_and_yaw_like_the_bridge():
    x, y, yaw = carla_to_enu(10.0, 5.0, 30.0)
    assert (x, y) == (10.0, -5.0) and yaw == pytest.approx(math.radians(-30.0))
    assert enu_to_carla(x, y, yaw) == pytest.approx((10.0, 5.0, 30.0))
    # CARLA yaw 90 deg points along +y (right-handed drivers' right): ENU heading is -y.
    assert carla_to_enu(0.0, 0.0, 90.0)[2] == pytest.approx(-math.pi / 2)


@needs_real_carla
@pytest.mark.parametrize('name,roads', [('ring', cs.ring_roads()), ('fork', cs.junction_roads())])
def test_standin_map_matches_real_carla_map(name, roads):
    """Topology, waypoints, next() and projection of the stand-in equal the real carla.Map."""
    standin = cs.Map(name, roads)
    real = real_carla.Map(name, standin.to_xodr())

    def key(w):
        return (w.road_id, w.section_id, w.lane_id, round(w.s, 2))

    assert sorted((key(a), key(b)) for a, b in real.get_topology()) == \
        sorted((key(a), key(b)) for a, b in standin.get_topology())

    def pose(w):
        t = w.transform
        return (t.location.x, t.location.y, t.rotation.yaw)

    real_wps = {key(w): w for w in real.generate_waypoints(2.0)}
    standin_wps = {key(w): w for w in standin.generate_waypoints(2.0)}
    assert real_wps.keys() == standin_wps.keys()
    for k, w in real_wps.items():
        ax, ay, ayaw = pose(w)
        bx, by, byaw = pose(standin_wps[k])
        assert math.hypot(ax - bx, ay - by) < 1e-3 and abs(wrap_angle(
            math.radians(ayaw - byaw))) < 1e-3, k
    for k in list(real_wps)[::7]:             # next() chains: 120 steps across links/forks
        a, b = [real_wps[k]], [standin_wps[k]]
        for _ in range(120):
            a = sorted((n for w in a[:1] for n in w.next(2.0)), key=key)
            b = sorted((n for w in b[:1] for n in w.next(2.0)), key=key)
            assert [key(w) for w in a] == [key(w) for w in b]
            for wa, wb in zip(a, b, strict=True):
                assert math.dist(pose(wa)[:2], pose(wb)[:2]) < 1e-3
            if not a:
                break
    rng = np.random.default_rng(0)
    for x, y in rng.uniform((-30, -100), (100, 40), size=(150, 2)):
        for project in (True, False):
            a = real.get_waypoint(real_carla.Location(x=x, y=y, z=0.0), project)
            b = standin.get_waypoint(cs.Location(x, y, 0.0), project)
            if not project:
                nearest = standin.get_waypoint(cs.Location(x, y, 0.0))
                edge = abs(math.dist(pose(nearest)[:2], (x, y)) - nearest.lane_width / 2)
                if edge < 0.05:                # on a lane border either answer is right
                    continue
            assert (a is None) == (b is None), (x, y, project)
            if a is not None:   # the same lane centre point; CARLA projects onto arcs in
                far = math.dist(pose(b)[:2], (x, y)) > 4.0      # pieces, coarser further out
                assert math.dist(pose(a)[:2], pose(b)[:2]) < (0.5 if far else 0.2)
                assert np.sign(a.lane_id) == np.sign(b.lane_id)


# --------------------------------------------------------------------------- route planning


def _maps(name, roads):
    out = [cs.Map(name, roads)]
    if real_carla is not None:
        out.append(real_carla.Map(name, out[0].to_xodr()))
    return out


def _loc(carla_map, x, y):
    module = cs if isinstance(carla_map, cs.Map) else real_carla
    return module.Location(x=x, y=y, z=0.0)


@pytest.mark.parametrize('carla_map', _maps('fork', cs.junction_roads()),
                         ids=lambda m: type(m).__module__)
def test_route_to_a_goal_takes_the_branch_that_reaches_it(carla_map):
    start = carla_map.get_waypoint(_loc(carla_map, 5.0, 1.75))
    for goal_xy, branch in (((53.25, 30.0), {12, 14}), ((90.0, 1.75), {11, 13})):
        goal = carla_map.get_waypoint(_loc(carla_map, *goal_xy))
        route = plan_route(carla_map, start, goal)
        roads = {w.road_id for w in route}
        assert roads == {10} | branch
        enu = route_to_enu(route)
        steps = np.hypot(*np.diff(enu[:, :2], axis=0).T)
        # 2 m of road s apart: shorter on the inside of a curve (13.25 m lane, 15 m road radius)
        assert np.all(steps < 2.3) and np.all(steps[:-1] > 1.7)
        assert math.dist(enu[-1, :2], (goal_xy[0], -goal_xy[1])) < 1e-6
    # road 14 is a dead end: nothing on road 10 can be reached from it
    with pytest.raises(RoutePlanningError, match='not reachable'):
        plan_route(carla_map, carla_map.get_waypoint(_loc(carla_map, 53.25, 20.0)),
                   carla_map.get_waypoint(_loc(carla_map, 20.0, 1.75)))


@pytest.mark.parametrize('carla_map', _maps('ring', cs.ring_roads()),
                         ids=lambda m: type(m).__module__)
def test_route_to_a_goal_behind_goes_round_the_ring(carla_map):
    start = carla_map.get_waypoint(_loc(carla_map, 10.0, 1.75))    # lane -1, driving +x
    goal = carla_map.get_waypoint(_loc(carla_map, 5.0, 1.75))      # 5 m behind
    route = plan_route(carla_map, start, goal, graph=LaneGraph(carla_map))
    ring_length = 4 * 50.0 + 4 * math.pi / 2 * 20.0
    assert (len(route) - 1) * 2.0 == pytest.approx(ring_length - 5.0, abs=2.0)
    assert len({w.road_id for w in route}) == 8
    ahead = carla_map.get_waypoint(_loc(carla_map, 30.0, 1.75))
    assert len(plan_route(carla_map, start, ahead)) == 11          # 20 m straight on


@pytest.mark.parametrize('carla_map', _maps('fork', cs.junction_roads()),
                         ids=lambda m: type(m).__module__)
def test_random_routes_have_the_length_asked_and_depend_on_the_seed(carla_map):
    start = carla_map.get_waypoint(_loc(carla_map, 2.0, 1.75))
    routes = {}
    for seed in range(12):
        route = plan_route(carla_map, start, None, random.Random(seed), length_m=70.0)
        assert len(route) == 36                                     # 70 m at 2 m
        routes[seed] = tuple(w.road_id for w in route)
    again = plan_route(carla_map, start, None, random.Random(3), length_m=70.0)
    assert tuple(w.road_id for w in again) == routes[3]
    assert {r[-1] for r in routes.values()} == {13, 14}             # both branches drawn
    short = plan_route(carla_map, start, None, random.Random(0), length_m=500.0)
    assert 96.0 < (len(short) - 1) * 2.0 < 104.0                   # stops at the dead end


# --------------------------------------------------------------------------- pairing, events


def test_frame_sync_pairs_exact_and_trailing_odometry():
    sync = FrameSync(tolerance_s=0.06, grace_s=0.03)
    sync.add_frame(1.0, now=10.0, tag='f1')
    assert sync.ready(now=10.01) == []                 # no odometry yet, within the grace
    sync.add_odometry(OdometrySample(0.95, 0, 0, 0, 0))
    sync.add_odometry(OdometrySample(1.0, 1, 0, 0, 0))
    [(stamp, tag, odom)] = sync.ready(now=10.01)
    assert (stamp, tag, odom.x) == (1.0, 'f1', 1)      # exact stamp wins
    sync.add_frame(1.1, now=11.0, tag='f2')            # odometry trails by a tick
    sync.add_odometry(OdometrySample(1.05, 2, 0, 0, 0))
    assert sync.ready(now=11.01) == []
    [(_, _, odom)] = sync.ready(now=11.05)             # grace over: newest before the frame
    assert odom.x == 2
    sync.add_frame(2.0, now=12.0, tag='f3')            # odometry far older: none
    [(_, _, odom)] = sync.ready(now=12.1)
    assert odom is None
    sync.add_frame(2.5, now=13.0)
    sync.add_odometry(OdometrySample(2.6, 3, 0, 0, 0))  # newer odometry decides at once
    [(_, _, odom)] = sync.ready(now=13.0)
    assert odom is None                                 # 2.0..2.5 has none within 0.06 s


def test_event_log_charges_events_to_the_frame_at_or_after_them():
    log = EventLog()
    log.add_collision(CollisionRecord(1.0, 7, 100.0))
    log.add_lane_invasion(LaneInvasionRecord(1.05, (2,)))
    log.add_collision(CollisionRecord(1.2, 8, 50.0))
    collisions, invasions = log.take(1.05)
    assert [c.other_actor_id for c in collisions] == [7] and len(invasions) == 1
    assert len(log) == 1
    log.clear()
    assert log.take(5.0) == ([], [])


# --------------------------------------------------------------------------- world set-up


def test_connect_checks_town_ego_and_weather():
    world, _, client = _make_world()
    with pytest.raises(CarlaSetupError, match="loaded town is 'ring', expected 'Town01'"):
        CarlaEpisode(cs.module(), client, CarlaEpisodeConfig(town='Town01'), WEIGHTS).connect()
    with pytest.raises(CarlaSetupError, match="role_name 'hero'"):
        CarlaEpisode(cs.module(), client, CarlaEpisodeConfig(role_name='hero'),
                     WEIGHTS).connect()
    with pytest.raises(CarlaSetupError, match='unknown weather preset'):
        CarlaEpisode(cs.module(), client, CarlaEpisodeConfig(weather='Sunny'), WEIGHTS).connect()
    episode = CarlaEpisode(cs.module(), client,
                           CarlaEpisodeConfig(town='Carla/Maps/ring', weather='WetSunset'),
                           WEIGHTS)
    assert 'synchronous' in episode.connect()
    assert world.get_weather().name == 'WetSunset'
    with pytest.raises(ValueError, match='scenario'):
        CarlaEpisodeConfig(scenario=3)
    with pytest.raises(ValueError, match='start_xy'):
        CarlaEpisodeConfig(start_xy=(1.0, float('nan')))


@pytest.mark.parametrize('scenario,expected', [(0, 0), (1, 4), (2, 9)])
def test_scenarios_spawn_autopilot_traffic_away_from_the_ego(scenario, expected):
    episode, world, ego = _episode(scenario=scenario, npc_light=4, npc_heavy=9, seed=5,
                                   tm_port=8123)
    npcs = [a for a in world.get_actors().filter('vehicle.*') if a.id != ego.id]
    assert len(npcs) == expected
    for npc in npcs:
        assert npc.autopilot_port == 8123 and npc.attributes['role_name'] == 'autopilot'
        assert npc.attributes['number_of_wheels'] == '4'
        assert npc.get_location().distance(ego.get_location()) >= 15.0
    tm = episode.client.get_trafficmanager(8123)
    assert tm.seed == 5 and tm.synchronous_mode is False    # the bridge ticks, not this client
    episode.disconnect()                                    # a client time-out, then back:
    episode.connect()                                       # the old NPCs are replaced
    assert len(world.get_actors().filter('vehicle.*')) == expected + 1
    episode.close()
    assert len(world.get_actors().filter('vehicle.*')) == 1


# --------------------------------------------------------------------------- episodes


def test_new_episode_teleports_the_ego_to_the_route_start():
    episode, world, ego = _episode(seed=2, route_length_m=120.0)
    episode.events.add_collision(CollisionRecord(0.5, 1, 1.0))
    ego.set_target_velocity(cs.Vector3D(4.0, 1.0, 0.0))          # moving when the episode ends
    ego.set_target_angular_velocity(cs.Vector3D(0.0, 0.0, 20.0))
    plan = episode.new_episode()
    assert plan.episode_id == 1 and len(plan.route) == 61
    t = ego.get_transform()
    x, y, yaw = carla_to_enu(t.location.x, t.location.y, t.rotation.yaw)
    assert (x, y) == pytest.approx(plan.start[:2]) and yaw == pytest.approx(plan.start[2])
    assert t.location.z == pytest.approx(0.5)                      # road z + spawn_z_offset
    assert ego.get_velocity().length() == 0.0 and ego.angular_velocity.length() == 0.0
    assert ego.control.brake == 1.0 and ego.control.throttle == 0.0
    assert len(episode.events) == 0
    wp = world.get_map().get_waypoint(cs.Location(t.location.x, t.location.y))
    assert math.dist((wp.transform.location.x, -wp.transform.location.y), plan.start[:2]) < 1e-6


def test_same_seed_same_episodes_other_seed_other_episodes():
    def starts(seed):
        episode, _, _ = _episode(seed=seed, scenario=1, npc_light=3)
        return [tuple(np.round(episode.new_episode().route[[0, -1]].ravel(), 6))
                for _ in range(4)]
    assert starts(11) == starts(11)
    assert starts(11) != starts(12)


def test_fixed_start_and_goal_in_the_map_frame():
    episode, _, _ = _episode(cs.junction_roads(), 'fork', random_start=False,
                             start_xy=(3.0, -1.75), random_goal=False,
                             goal_xy=(53.25, -30.0))
    plan = episode.new_episode()
    assert plan.start == pytest.approx((3.0, -1.75, 0.0))
    assert plan.route[-1] == pytest.approx((53.25, -30.0, -math.pi / 2))
    bad, _, _ = _episode(cs.junction_roads(), 'fork', random_start=False,
                         start_xy=(53.25, -20.0), random_goal=False, goal_xy=(20.0, -1.75))
    with pytest.raises(RoutePlanningError, match='not reachable'):
        bad.new_episode()


def test_step_zero_only_once_the_teleport_shows_and_teleport_is_retried():
    episode, _, ego = _episode(seed=1, reset_retry_frames=3)
    plan = episode.new_episode()
    far = OdometrySample(0.0, plan.start[0] + 30.0, plan.start[1], 0.0, 5.0)
    ego.set_transform(cs.Transform(cs.Location(500.0, 500.0, 0.0)))   # teleport "lost"
    assert episode.on_frame(0.05, far) is None
    assert episode.on_frame(0.10, far) is None
    assert ego.get_location().x == 500.0
    assert episode.on_frame(0.15, far) is None                   # third frame: sent again
    cx, cy, _ = enu_to_carla(*plan.start)
    assert math.hypot(ego.get_location().x - cx, ego.get_location().y - cy) < 1e-6
    first = _start(episode, stamp=0.20)
    assert (first.step, first.reward, first.terminated, first.truncated) == (0, 0.0, False,
                                                                             False)
    assert list(first.terms) == list(TERM_NAMES) and not any(first.terms.values())


def test_driving_the_route_is_rewarded_and_completes_it():
    episode, _, _ = _episode(seed=4, route_length_m=60.0)
    episode.new_episode()
    _start(episode)
    outcomes = _drive(episode, 200, speed=8.0)
    done = [o for o in outcomes if o is not None and o.done]
    assert len(done) == 1
    last = done[0]
    assert last.terminated and last.reason == 'route_complete'
    assert last.terms['completion'] == WEIGHTS.completion
    # 60 m of road s; on the outside of the ring's curves the lane is longer
    length = episode.episode.route.length_m
    assert 60.0 < length < 63.0
    assert last.distance_m == pytest.approx(length - 2.0, abs=0.41)
    running = outcomes[2:last.step - 1]
    assert all(0.6 < o.reward < 0.8 for o in running)          # ~ +0.72 per good step
    assert [o.step for o in outcomes[:last.step]] == list(range(1, last.step + 1))
    assert all(o is None for o in outcomes[last.step:])          # ended: no more steps


def test_reward_is_the_shared_pure_function():
    # on the straight road 1 of the ring, lane -1, heading east (ENU yaw 0)
    episode, _, _ = _episode(random_start=False, start_xy=(5.0, -1.75), route_length_m=100.0)
    assert episode.new_episode().start == pytest.approx((5.0, -1.75, 0.0))
    _start(episode, stamp=1.0)
    _, second = _drive(episode, 2, speed=6.0, lateral=0.4, heading_offset=0.1)
    # step 1 accelerated from rest (6 m/s in one tick) and turned 0.1 rad; step 2 held both
    accel_1 = (6.0 / DT, 6.0 * 0.1 / DT)
    expected = compute_reward(StepMeasurements(
        dt=DT, step=2, max_episode_steps=1000, speed_mps=6.0, lateral_deviation_m=0.4,
        heading_error_rad=0.1, progress_delta_m=6.0 * DT,
        jerk_mps3=jerk_magnitude(accel_1, (0.0, 0.0), DT)), WEIGHTS)
    assert second.lateral_deviation_m == pytest.approx(0.4)
    assert second.reward == pytest.approx(expected.reward)
    assert second.terms == pytest.approx(expected.terms)


def test_off_road_and_wrong_way_reach_the_reward():
    # road 1 of the ring, lane -1 (ENU y = -1.75, heading east): the road edge is at y = -3.5
    episode, _, _ = _episode(random_start=False, start_xy=(5.0, -1.75))
    episode.new_episode()
    _start(episode)
    [on_edge] = _drive(episode, 1, lateral=-1.75)
    assert on_edge.terms['off_road'] == pytest.approx(-WEIGHTS.off_road * 0.4)  # 2 of 5 points
    assert on_edge.terms['wrong_way'] == 0.0
    [backwards] = _drive(episode, 1, heading_offset=math.pi, first_k=2)
    assert backwards.terms['wrong_way'] == -WEIGHTS.wrong_way
    assert backwards.terms['off_road'] == 0.0


def test_collisions_lane_invasions_and_stale_events():
    episode, _, _ = _episode(seed=4)
    episode.new_episode()
    episode.events.add_collision(CollisionRecord(0.9, 3, 500.0))       # last episode's crash
    assert _start(episode, stamp=1.0).step == 0
    episode.events.add_lane_invasion(LaneInvasionRecord(1.04, (cs.LaneMarkingType.Solid,
                                                               cs.LaneMarkingType.NONE)))
    first, second = _drive(episode, 2)
    assert first.terms['lane_invasion'] == -WEIGHTS.lane_invasion    # NONE is no paint
    assert not first.done and second.terms['lane_invasion'] == 0.0
    assert _drive(episode, 1, first_k=2) == [None]               # a repeated frame: no step
    episode.events.add_collision(CollisionRecord(1.15, 9, 800.0))
    [third] = _drive(episode, 1, first_k=3)
    assert third.terminated and third.reason == 'collision' and third.step == 3
    assert third.terms['collision'] == -WEIGHTS.collision


def test_departure_off_road_wrong_way_and_truncation():
    episode, _, _ = _episode(seed=4, max_episode_steps=4)
    episode.new_episode()
    _start(episode)
    outcomes = _drive(episode, 6)
    assert outcomes[3].truncated and outcomes[3].reason == 'time_limit'
    assert not outcomes[3].terminated and outcomes[4] is None

    episode.new_episode()
    _start(episode)
    [step] = _drive(episode, 1, lateral=3.0)
    assert step.terminated and step.reason == 'lane_departure'

    episode.new_episode()
    x, y, yaw = episode.episode.plan.start
    normal = (-math.sin(yaw), math.cos(yaw))

    # lane centre on the ring: the other lane is to one side, the road edge 1.75 m to the other
    def pose(lateral, heading=0.0, speed=5.0):
        return OdometrySample(1.0, x + normal[0] * lateral, y + normal[1] * lateral,
                              wrap_angle(yaw + heading), speed)
    sides = [episode.off_road_fraction(pose(d)) for d in (-1.75, 1.75)]
    assert episode.off_road_fraction(pose(0.0)) == 0.0
    assert sorted(sides)[0] == 0.0 and 0.0 < sorted(sides)[1] < 1.0   # half over the edge
    assert episode.off_road_fraction(pose(30.0)) == 1.0
    assert episode.wrong_way(pose(0.0, math.pi)) and not episode.wrong_way(pose(0.0))
    assert not episode.wrong_way(pose(0.0, math.pi, speed=0.0))
    assert not episode.wrong_way(pose(0.0, math.pi, speed=-3.0))     # reversing, facing back


def test_gap_ahead_sees_only_vehicles_on_the_route_ahead():
    episode, world, ego = _episode(seed=4, scenario=1, npc_light=1, route_length_m=100.0)
    [npc] = [a for a in world.get_actors().filter('vehicle.*') if a.id != ego.id]
    episode.new_episode()
    _start(episode)
    route = episode.episode.plan.route

    def put(s, lateral=0.0):
        x, y, yaw = _along(route, s, lateral)
        cx, cy, cyaw = enu_to_carla(x, y, yaw)
        npc.set_transform(cs.Transform(cs.Location(cx, cy, 0.3), cs.Rotation(yaw=cyaw)))

    lengths = (2 * 2.4 + 2 * npc.bounding_box.extent.x) / 2.0
    put(20.0)
    assert episode.gap_ahead(0.0) == pytest.approx(20.0 - lengths, abs=0.05)
    put(20.0, lateral=6.0)
    assert episode.gap_ahead(0.0) == math.inf
    put(3.0)
    assert episode.gap_ahead(10.0) == math.inf                    # behind
    put(6.0)
    [step] = _drive(episode, 1, speed=8.0)
    assert step.terms['proximity'] < 0.0


# --------------------------------------------------------------------------- launch and config


def _node_module():
    return importlib.import_module('av_td3_ros.ros.carla_episode_node')


def test_config_file_sets_every_declared_parameter_and_nothing_else():
    import yaml
    node = _node_module()
    config = yaml.safe_load((PACKAGE / 'config' / 'carla_episode.yaml').read_text())
    params = config['/**/av_td3_carla_episode']['ros__parameters']
    declared = set(node.PARAMETERS) | set(node.TOPIC_PARAMETERS)
    assert set(params) == declared
    for name, default in node.PARAMETERS.defaults().items():
        assert params[name] == default, name
    config_fields = set(CarlaEpisodeConfig.__dataclass_fields__)
    assert config_fields - declared <= {'fixed_delta_seconds', 'path_width_m', 'lookahead_m',
                                        'ego_width_m', 'ego_length_m'}


def test_objects_file_defines_the_ego_vehicle_the_nodes_expect():
    objects = json.loads((PACKAGE / 'config' / 'carla_objects.json').read_text())['objects']
    [ego] = [o for o in objects if o['id'] == 'ego_vehicle']
    assert ego['type'].startswith('vehicle.')
    sensors = {o['id']: o for o in ego['sensors']}   # carla_spawn_objects reads "sensors"
    camera = sensors['rgb_front']
    assert camera['type'] == 'sensor.camera.rgb'
    assert (camera['image_size_x'], camera['image_size_y']) == (800, 600)
    assert sensors['collision']['type'] == 'sensor.other.collision'
    assert sensors['lane_invasion']['type'] == 'sensor.other.lane_invasion'
    assert sensors['odometry']['type'] == 'sensor.pseudo.odom'
    assert sensors['control']['type'] == 'actor.pseudo.control'
    # the node's default topics are the ones the bridge makes from these ids
    topics = VehicleTopics('ego_vehicle')
    defaults = {k: getattr(topics, v[0]) for k, v in _node_module().TOPIC_PARAMETERS.items()}
    assert defaults['camera_info_topic'] == '/carla/ego_vehicle/rgb_front/camera_info'
    assert defaults['collision_topic'] == '/carla/ego_vehicle/collision'
    assert defaults['lane_invasion_topic'] == '/carla/ego_vehicle/lane_invasion'
    assert defaults['step_feedback_topic'] == '/av_td3/step_feedback'
    assert VehicleTopics('hero').step_feedback == '/av_td3/hero/step_feedback'


def test_launch_files_name_existing_executables_and_files():
    import ast
    setup_py = (PACKAGE / 'setup.py').read_text()
    for name in ('drive_carla.launch.py', 'train_carla.launch.py'):
        source = (PACKAGE / 'launch' / name).read_text()
        tree = ast.parse(source)
        strings = {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant)
                   and isinstance(n.value, str)}
        for executable in strings & {'carla_episode_node', 'policy_node', 'trainer_node'}:
            assert f"'{executable} = " in setup_py
        for config in (s for s in strings
                       if s.endswith(('.yaml', '.json', '.xml')) and ' ' not in s):
            assert (PACKAGE / 'config' / config).is_file(), config
    drive = (PACKAGE / 'launch' / 'drive_carla.launch.py').read_text()
    for bridge_file in ('carla_ros_bridge.launch.py', 'carla_spawn_objects.launch.py'):
        assert bridge_file in drive
    for argument in ('synchronous_mode_wait_for_vehicle_control_command',
                     'fixed_delta_seconds', "'control_output': 'carla'"):
        assert argument in drive


def test_launch_descriptions_build_where_ros2_launch_exists():
    pytest.importorskip('launch_ros', reason='launch/launch_ros are not on PyPI; this runs on '
                        'a machine with a ROS 2 distro')
    import importlib.util
    for name in ('drive_carla.launch.py', 'train_carla.launch.py'):
        spec = importlib.util.spec_from_file_location(name[:-3], PACKAGE / 'launch' / name)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        assert module.generate_launch_description().entities


# --------------------------------------------------------------------------- the node over DDS


@pytest.fixture(scope='module')
def carla_msgs():
    module, origin = cs.carla_msgs_module()
    if module is None:
        pytest.skip(origin)
    return module


# carla-ros-bridge's carla_msgs field lists (carla_msgs/msg/*.msg on its master branch)
DOCUMENTED_FIELDS = {
    'CarlaCollisionEvent': {'header': 'std_msgs/Header', 'other_actor_id': 'int32',
                            'normal_impulse': 'geometry_msgs/Vector3'},
    'CarlaLaneInvasionEvent': {'header': 'std_msgs/Header',
                               'crossed_lane_markings': 'sequence<int32>'},
    'CarlaEgoVehicleControl': {'header': 'std_msgs/Header', 'throttle': 'float', 'steer': 'float',
                               'brake': 'float', 'hand_brake': 'boolean', 'reverse': 'boolean',
                               'gear': 'int32', 'manual_gear_shift': 'boolean'},
}


def test_carla_msgs_have_the_documented_fields(carla_msgs):
    for name, fields in DOCUMENTED_FIELDS.items():
        assert getattr(carla_msgs, name).get_fields_and_field_types() == fields, name
    solid = carla_msgs.CarlaLaneInvasionEvent.LANE_MARKING_SOLID
    assert solid == cs.LaneMarkingType.Solid


class _BridgeStandIn:
    """Publishes what carla-ros-bridge would: camera_info, odometry, collision events."""

    def __init__(self, node, carla_msgs, ego):
        from nav_msgs.msg import Odometry, Path
        from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import CameraInfo
        from av_td3_interfaces.msg import StepFeedback
        self.node, self.ego, self.msgs = node, ego, carla_msgs
        self.camera = node.create_publisher(CameraInfo, '/carla/ego_vehicle/rgb_front/camera_info',
                                            10)
        self.odometry = node.create_publisher(Odometry, '/carla/ego_vehicle/odometry', 10)
        self.collision = node.create_publisher(carla_msgs.CarlaCollisionEvent,
                                               '/carla/ego_vehicle/collision', 10)
        self.feedback, self.paths = [], []
        self._lock = threading.Lock()
        node.create_subscription(StepFeedback, '/av_td3/step_feedback', self._on_feedback, 100)
        node.create_subscription(
            Path, '/carla/ego_vehicle/waypoints', self._on_path,
            QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                       durability=DurabilityPolicy.TRANSIENT_LOCAL))
        self.Odometry, self.CameraInfo = Odometry, CameraInfo

    def _on_feedback(self, msg):
        with self._lock:
            self.feedback.append(msg)

    def _on_path(self, msg):
        with self._lock:
            self.paths.append(msg)

    @staticmethod
    def stamp(k):
        from builtin_interfaces.msg import Time
        return Time(sec=k // 20, nanosec=(k % 20) * 50_000_000)

    def frame(self, k, advance_m=0.0, odometry_override=None):
        """Publish frame k: odometry of the ego (moved ``advance_m`` along its heading)."""
        t = self.ego.get_transform()
        x, y, yaw = carla_to_enu(t.location.x, t.location.y, t.rotation.yaw)
        x, y = x + advance_m * math.cos(yaw), y + advance_m * math.sin(yaw)
        cx, cy, _ = enu_to_carla(x, y, yaw)
        self.ego.set_transform(cs.Transform(cs.Location(cx, cy, t.location.z), t.rotation))
        odom = self.Odometry()
        odom.header.stamp, odom.header.frame_id = self.stamp(k), 'map'
        odom.pose.pose.position.x, odom.pose.pose.position.y = x, y
        odom.pose.pose.orientation.z, odom.pose.pose.orientation.w = (math.sin(yaw / 2),
                                                                      math.cos(yaw / 2))
        odom.twist.twist.linear.x = advance_m / DT
        if odometry_override is not None:
            odometry_override(odom)
        info = self.CameraInfo()
        info.header.stamp, info.header.frame_id = self.stamp(k), 'ego_vehicle/rgb_front'
        info.width, info.height = 800, 600
        self.odometry.publish(odom)
        self.camera.publish(info)

    def collide(self, k):
        event = self.msgs.CarlaCollisionEvent()
        event.header.stamp, event.other_actor_id = self.stamp(k), 42
        event.normal_impulse.x = 900.0
        self.collision.publish(event)


def _wait(predicate, timeout=10.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.01)
    return False


@pytest.mark.ros
def test_node_publishes_route_feedback_and_resets_over_dds(carla_msgs, tmp_path):
    import rclpy
    from av_td3_ros.ros.executor import PooledExecutor
    from std_srvs.srv import Trigger
    node_module = _node_module()
    _, ego, client = _make_world()
    api = cs.module()
    api.Client = lambda host, port, worker_threads=0: client     # the stand-in server
    params = tmp_path / 'params.yaml'
    params.write_text((PACKAGE / 'config' / 'carla_episode.yaml').read_text()
                      .replace('route_length_m: 300.0', 'route_length_m: 80.0')
                      .replace('seed: 0', 'seed: 7'))
    context = rclpy.Context()
    rclpy.init(context=context)
    executor = PooledExecutor(num_threads=3, context=context)
    node = node_module.CarlaEpisodeNode(
        api, carla_msgs, context=context,
        cli_args=['--ros-args', '--params-file', str(params)])
    test_node = rclpy.create_node('carla_bridge_standin', context=context)
    bridge = _BridgeStandIn(test_node, carla_msgs, ego)
    reset = test_node.create_client(Trigger, '/av_td3_carla_episode/reset')
    executor.add_node(node)
    executor.add_node(test_node)
    spin = threading.Thread(target=executor.spin, daemon=True)
    spin.start()
    try:
        assert node.get_parameter('route_length_m').value == 80.0
        assert _wait(lambda: bridge.paths and node.last_plan is not None)
        path = bridge.paths[-1]
        route = np.array([(p.pose.position.x, p.pose.position.y) for p in path.poses])
        assert path.header.frame_id == 'map' and len(route) == 41
        np.testing.assert_allclose(route, node.last_plan.route[:, :2], atol=1e-9)
        # the ego was teleported to the route start: frame 1 is step 0
        assert _wait(lambda: all(test_node.count_subscribers(f'/carla/ego_vehicle/{t}') > 0
                                 for t in ('odometry', 'rgb_front/camera_info', 'collision')))
        k = 1
        bridge.frame(k)
        assert _wait(lambda: len(bridge.feedback) == 1)
        first = bridge.feedback[0]
        assert (first.step, first.episode_id, first.reward) == (0, 1, 0.0)
        assert first.header.stamp == bridge.stamp(1)
        assert list(first.reward_term_names) == list(TERM_NAMES)
        for k in range(2, 7):                           # drive on at 8 m/s
            bridge.frame(k, advance_m=0.4)
            assert _wait(lambda n=k: len(bridge.feedback) == n)
        steps = bridge.feedback[1:]
        assert [f.step for f in steps] == [1, 2, 3, 4, 5]
        assert [f.header.stamp for f in steps] == [bridge.stamp(i) for i in range(2, 7)]
        assert all(f.reward > 0.4 and not f.terminated for f in steps[1:])
        assert steps[-1].distance_m == pytest.approx(2.0, abs=0.05)
        # bad odometry: one error line, nothing lost, the node goes on
        bridge.frame(7, advance_m=0.4,
                     odometry_override=lambda o: setattr(o.pose.pose.position, 'x', math.nan))
        time.sleep(0.2)
        bridge.frame(8, advance_m=0.4)
        assert _wait(lambda: bridge.feedback[-1].header.stamp == bridge.stamp(8))
        # a collision ends the episode; the next one starts at a new route
        bridge.collide(9)
        assert _wait(lambda: len(node._episode.events) == 1)   # received before its frame
        bridge.frame(9, advance_m=0.4)
        assert _wait(lambda: bridge.feedback[-1].terminated)
        assert bridge.feedback[-1].reason == 'collision'
        assert _wait(lambda: node.last_plan.episode_id == 2 and len(bridge.paths) >= 2)
        bridge.frame(10)
        assert _wait(lambda: bridge.feedback[-1].episode_id == 2)
        assert bridge.feedback[-1].step == 0
        # ~/reset starts episode 3 at once
        assert reset.wait_for_service(timeout_sec=5.0)
        future = reset.call_async(Trigger.Request())
        assert _wait(future.done)
        assert future.result().success and 'episode 3' in future.result().message
        bridge.frame(11)
        assert _wait(lambda: bridge.feedback[-1].episode_id == 3)
        assert bridge.feedback[-1].step == 0
    finally:
        executor.shutdown()
        node.destroy_node()
        test_node.destroy_node()
        rclpy.shutdown(context=context)
        spin.join(timeout=5.0)


@pytest.mark.ros
def test_node_waits_for_the_server_and_the_ego_vehicle(carla_msgs):
    """No server, then a world without the ego: reset refused, node retries, then starts."""
    import rclpy
    from av_td3_ros.ros.executor import PooledExecutor
    from rclpy.parameter import Parameter
    from std_srvs.srv import Trigger
    world, ego, _ = _make_world()
    ego.destroy()
    client = cs.Client()                                  # no simulator answering yet
    api = cs.module()
    api.Client = lambda host, port, worker_threads=0: client
    context = rclpy.Context()
    rclpy.init(context=context)
    executor = PooledExecutor(num_threads=3, context=context)
    node = _node_module().CarlaEpisodeNode(
        api, carla_msgs, context=context,
        parameter_overrides=[Parameter('connect_retry_s', value=0.1)])
    caller = rclpy.create_node('reset_caller', context=context)
    reset = caller.create_client(Trigger, '/av_td3_carla_episode/reset')
    executor.add_node(node)
    executor.add_node(caller)
    spin = threading.Thread(target=executor.spin, daemon=True)
    spin.start()
    try:
        assert reset.wait_for_service(timeout_sec=5.0)
        time.sleep(0.3)                                   # a few failed connection attempts
        future = reset.call_async(Trigger.Request())
        assert _wait(future.done)
        answer = future.result()                          # refused, whichever step it met
        assert not answer.success and ('not connected' in answer.message
                                       or 'time-out' in answer.message), answer.message
        client._world = world                             # the server is up, no ego yet
        time.sleep(0.3)
        assert node.last_plan is None and not node._episode.connected
        blueprint = world.get_blueprint_library().find('vehicle.audi.tt')
        blueprint.set_attribute('role_name', 'ego_vehicle')
        world.spawn_actor(blueprint, world.get_map().get_spawn_points()[3])
        assert _wait(lambda: node.last_plan is not None)  # found it, first episode planned
    finally:
        executor.shutdown()
        node.destroy_node()
        caller.destroy_node()
        rclpy.shutdown(context=context)
        spin.join(timeout=5.0)


def test_node_refuses_bad_parameters_with_one_clear_error(carla_msgs):
    import rclpy
    from rclpy.parameter import Parameter
    context = rclpy.Context()
    rclpy.init(context=context)
    try:
        with pytest.raises(ValueError, match='camera_qos_reliability'):
            _node_module().CarlaEpisodeNode(
                cs.module(), carla_msgs, context=context,
                parameter_overrides=[Parameter('camera_qos_reliability', value='sometimes')])
        with pytest.raises(ValueError, match='start_xy'):
            _node_module().CarlaEpisodeNode(
                cs.module(), carla_msgs, context=context,
                parameter_overrides=[Parameter('start_xy', value=[1.0, 2.0, 3.0])])
    finally:
        rclpy.shutdown(context=context)


def test_main_fails_with_one_line_without_the_carla_api(monkeypatch):
    import builtins
    real_import = builtins.__import__

    def no_carla(name, *args, **kwargs):
        if name == 'carla':
            raise ImportError("No module named 'carla'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, '__import__', no_carla)
    with pytest.raises(SystemExit) as exc:
        _node_module().main([])
    assert 'cannot import the CARLA Python API' in str(exc.value)
    assert '\n' not in str(exc.value)


# --------------------------------------------------------------------------- a real server

needs_server = pytest.mark.skipif(
    not os.environ.get('CARLA_HOST') or real_carla is None,
    reason='needs a running CARLA server (set CARLA_HOST, CARLA_PORT) and the carla wheel; '
    'run it in asynchronous mode with no bridge attached')


def _real_ego(role):
    client = real_carla.Client(os.environ['CARLA_HOST'], int(os.environ.get('CARLA_PORT', 2000)))
    client.set_timeout(20.0)
    world = client.get_world()
    blueprint = world.get_blueprint_library().find('vehicle.tesla.model3')
    blueprint.set_attribute('role_name', role)
    ego = world.spawn_actor(blueprint, world.get_map().get_spawn_points()[0])
    world.wait_for_tick()
    return client, world, ego


@pytest.mark.carla
@needs_server
def test_episode_on_a_real_carla_server():
    """Plan, teleport, traffic and step 0 on a real town (no bridge needed)."""
    client, world, ego = _real_ego('av_td3_test_ego')
    episode = CarlaEpisode(real_carla, client, CarlaEpisodeConfig(
        role_name='av_td3_test_ego', scenario=1, npc_light=5, seed=3), WEIGHTS)
    try:
        assert 'asynchronous' in episode.connect()
        plan = episode.new_episode()
        assert len(plan.route) > 20
        steps = np.hypot(*np.diff(plan.route[:, :2], axis=0).T)
        assert np.all(steps < 2.5)
        world.wait_for_tick()
        t = ego.get_transform()
        x, y, yaw = carla_to_enu(t.location.x, t.location.y, t.rotation.yaw)
        odom = OdometrySample(1.0, x, y, yaw, 0.0, t.location.z)
        first = episode.on_frame(1.0, odom)
        assert first is not None and first.step == 0
        assert episode.off_road_fraction(odom) == 0.0 and not episode.wrong_way(odom)
    finally:
        episode.close()
        ego.destroy()


@pytest.mark.carla
@needs_server
def test_node_on_a_real_carla_server_publishes_the_route():
    """The node with the real carla module and the installed carla_msgs plans a route."""
    import rclpy
    carla_msgs = pytest.importorskip('carla_msgs.msg', reason='needs carla_msgs (build '
                                     'carla-ros-bridge and source it)')
    _, _, ego = _real_ego('av_td3_test_node_ego')
    context = rclpy.Context()
    rclpy.init(context=context)
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.parameter import Parameter
    node = _node_module().CarlaEpisodeNode(
        real_carla, carla_msgs, context=context, parameter_overrides=[
            Parameter('host', value=os.environ['CARLA_HOST']),
            Parameter('port', value=int(os.environ.get('CARLA_PORT', 2000))),
            Parameter('role_name', value='av_td3_test_node_ego')])
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    try:
        end = time.monotonic() + 30.0
        while node.last_plan is None and time.monotonic() < end:
            executor.spin_once(timeout_sec=0.1)
        assert node.last_plan is not None and len(node.last_plan.route) > 20
    finally:
        node.destroy_node()
        rclpy.shutdown(context=context)
        ego.destroy()
