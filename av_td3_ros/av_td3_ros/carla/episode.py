"""
CARLA episode logic behind ``carla_episode_node``: free of rclpy, and of ``import carla``.

With carla-ros-bridge, CARLA's sensors arrive as ROS topics, but an RL episode needs what the
bridge does not give: a route on the town's road graph, the reward and termination of the
embedded simulator (the same pure ``reward.compute_reward``), resets (move the ego vehicle to a
start pose, zero its velocity, forget its events) and NPC traffic, weather and a seed. This module
does that through the carla client objects it is handed -- the real ``carla`` module, or a
stand-in with the same API -- so it can be tested without a CARLA server.

Frames: CARLA is left-handed (x forward, y right, yaw clockwise in degrees); ROS is REP-103 ENU.
Like the bridge, we convert by negating y and yaw. Everything this module returns is ENU, in the
bridge's ``map`` frame, so route, odometry and the observation vector agree.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
import heapq
import math
import random
from typing import Any

from av_td3_ros.driving.observation import Route, wrap_angle
from av_td3_ros.sim.reward import (
    compute_reward, jerk_magnitude, RewardWeights, StepMeasurements, TERM_NAMES)
import numpy as np

SCENARIOS = (0, 1, 2)          # DESIGN §8: none, light, heavy NPC traffic
LANE_MARKING_NONE = 10         # carla.LaneMarkingType.NONE: no paint crossed (ignored)
_EPS_S = 1e-3                  # stamp comparison slack, s

LaneKey = tuple[int, int, int]   # (road_id, section_id, lane_id): one lane of one section


class RoutePlanningError(RuntimeError):
    """No route can be planned (no road near a pose, goal unreachable without lane changes)."""


class CarlaSetupError(RuntimeError):
    """The CARLA world is not as the episode needs it (wrong town, no ego vehicle, bad option)."""


# --------------------------------------------------------------------------- frames


def carla_to_enu(x: float, y: float, yaw_deg: float) -> tuple[float, float, float]:
    """CARLA (x, y, yaw in degrees, left-handed) -> ENU (x, y, yaw in radians), as the bridge."""
    return float(x), -float(y), wrap_angle(-math.radians(yaw_deg))


def enu_to_carla(x: float, y: float, yaw: float = 0.0) -> tuple[float, float, float]:
    """ENU (x, y, yaw in radians) -> CARLA (x, y, yaw in degrees)."""
    return float(x), -float(y), math.degrees(wrap_angle(-yaw))


def waypoint_enu(waypoint: Any) -> tuple[float, float, float]:
    """ENU (x, y, yaw) of a carla.Waypoint's transform."""
    t = waypoint.transform
    return carla_to_enu(t.location.x, t.location.y, t.rotation.yaw)


# --------------------------------------------------------------------------- route planning


def lane_key(waypoint: Any) -> LaneKey:
    return (int(waypoint.road_id), int(waypoint.section_id), int(waypoint.lane_id))


class LaneGraph:
    """
    The town's lane graph from ``Map.get_topology()``.

    CARLA's topology lists (start of a lane, start of one successor lane) pairs, so a node is a
    lane (road, section, lane id) and an edge leads to a lane that continues it. The edge cost is
    the straight distance between the two lane starts, a close lower bound of the lane length
    that keeps planning cheap on large towns.
    """

    def __init__(self, carla_map: Any) -> None:
        self.successors: dict[LaneKey, list[tuple[LaneKey, float]]] = {}
        for entry, nxt in carla_map.get_topology():
            a, b = entry.transform.location, nxt.transform.location
            cost = math.hypot(a.x - b.x, a.y - b.y)
            self.successors.setdefault(lane_key(entry), []).append((lane_key(nxt), cost))
        if not self.successors:
            raise RoutePlanningError('the map has no lane topology (get_topology() is empty)')

    def shortest_path(self, start: LaneKey, goal: LaneKey,
                      at_least_one_edge: bool = False) -> list[LaneKey]:
        """Lane sequence from ``start`` to ``goal`` (Dijkstra); raise if there is none."""
        if start == goal and not at_least_one_edge:
            return [start]
        best: dict[LaneKey, float] = {}
        parent: dict[LaneKey, LaneKey] = {}
        heap = [(cost, nxt) for nxt, cost in self.successors.get(start, [])]
        for cost, nxt in heap:
            if cost < best.get(nxt, math.inf):
                best[nxt], parent[nxt] = cost, start
        heapq.heapify(heap)
        while heap:
            cost, key = heapq.heappop(heap)
            if cost > best.get(key, math.inf):
                continue
            if key == goal:
                path = [goal, parent[goal]]
                while path[-1] != start:
                    path.append(parent[path[-1]])
                return path[::-1]
            for nxt, step in self.successors.get(key, []):
                if cost + step < best.get(nxt, math.inf):
                    best[nxt], parent[nxt] = cost + step, key
                    heapq.heappush(heap, (cost + step, nxt))
        raise RoutePlanningError(f'goal lane {goal} is not reachable from start lane {start} '
                                 'by following lanes (routes do not change lanes)')


def _ahead_on_lane(start: Any, goal: Any) -> bool:
    """Whether ``goal`` lies ahead of ``start`` on the same lane (lane ids < 0 drive to +s)."""
    return goal.s >= start.s if start.lane_id < 0 else goal.s <= start.s


def plan_route(carla_map: Any, start: Any, goal: Any | None = None,
               rng: random.Random | None = None, length_m: float = 300.0,
               spacing_m: float = 2.0, graph: LaneGraph | None = None) -> list[Any]:
    """
    Waypoints ``spacing_m`` apart along the lanes from the ``start`` waypoint.

    With a ``goal`` waypoint: the shortest lane sequence to it, ending at the goal. Without: a
    random drive of ``length_m`` (``rng`` picks a branch at every fork), shorter only at a dead
    end. Routes follow lanes; they never change lanes.
    """
    if not spacing_m > 0:
        raise ValueError(f'spacing_m must be > 0, got {spacing_m}')
    route = [start]
    if goal is None:
        rng = rng or random.Random()
        while (len(route) - 1) * spacing_m < length_m - 1e-6:
            candidates = route[-1].next(spacing_m)
            if not candidates:
                break
            route.append(candidates[0] if len(candidates) == 1 else rng.choice(candidates))
        return route

    graph = graph or LaneGraph(carla_map)
    same_lane = lane_key(start) == lane_key(goal)
    plan = graph.shortest_path(lane_key(start), lane_key(goal),
                               at_least_one_edge=same_lane and not _ahead_on_lane(start, goal))
    index = 0                                  # position in plan of the current lane
    limit = 10 * len(plan) + 100_000           # a route cannot be longer than this many points
    while len(route) < limit:
        current = route[-1]
        if index == len(plan) - 1 and _ahead_on_lane(current, goal):
            remaining = abs(goal.s - current.s)
            if remaining <= spacing_m:
                if remaining > 0.1 * spacing_m:
                    route.append(goal)
                return route
        choice = None
        for candidate in current.next(spacing_m):
            key = lane_key(candidate)
            for offset in range(min(3, len(plan) - index)):
                if plan[index + offset] == key and (choice is None or offset < choice[1]):
                    choice = (candidate, offset)
        if choice is None:
            raise RoutePlanningError(
                f'route lost the planned lanes after {len(route)} points near lane '
                f'{lane_key(current)} (expected {plan[index:index + 2]})')
        route.append(choice[0])
        index += choice[1]
    raise RoutePlanningError(f'route to goal exceeds {limit} points')


def route_to_enu(waypoints: list[Any]) -> np.ndarray:
    """(N, 3) array of ENU (x, y, yaw) for a list of carla.Waypoint."""
    return np.array([waypoint_enu(w) for w in waypoints], dtype=np.float64)


# --------------------------------------------------------------------------- inputs per step


@dataclass(frozen=True)
class OdometrySample:
    """The ego state the bridge publishes (nav_msgs/Odometry), already in ENU."""

    stamp: float        # header stamp, s
    x: float
    y: float
    yaw: float          # rad, ENU
    speed: float        # m/s along the vehicle's x axis (the bridge's rotated twist), signed
    z: float = 0.0


@dataclass(frozen=True)
class CollisionRecord:
    """One carla_msgs/CarlaCollisionEvent."""

    stamp: float
    other_actor_id: int
    impulse: float      # |normal_impulse|, N s


@dataclass(frozen=True)
class LaneInvasionRecord:
    """One carla_msgs/CarlaLaneInvasionEvent; markings are carla.LaneMarkingType values."""

    stamp: float
    markings: tuple[int, ...]


class EventLog:
    """
    Collision and lane invasion events waiting to be charged to a step.

    Events belong to the step whose frame stamp is at or after theirs; those older than the
    episode start are dropped, so a crash of the last episode never costs the next one.
    """

    def __init__(self, maxlen: int = 1000) -> None:
        self._collisions: deque[CollisionRecord] = deque(maxlen=maxlen)
        self._invasions: deque[LaneInvasionRecord] = deque(maxlen=maxlen)

    def add_collision(self, event: CollisionRecord) -> None:
        self._collisions.append(event)

    def add_lane_invasion(self, event: LaneInvasionRecord) -> None:
        self._invasions.append(event)

    def take(self, upto: float) -> tuple[list[CollisionRecord], list[LaneInvasionRecord]]:
        """Remove and return the events stamped at or before ``upto``."""
        def split(queue: deque) -> list:
            taken = [e for e in queue if e.stamp <= upto + _EPS_S]
            kept = [e for e in queue if e.stamp > upto + _EPS_S]
            queue.clear()
            queue.extend(kept)
            return taken
        return split(self._collisions), split(self._invasions)

    def clear(self) -> None:
        self._collisions.clear()
        self._invasions.clear()

    def __len__(self) -> int:
        return len(self._collisions) + len(self._invasions)


class FrameSync:
    """
    Pair each camera frame with the odometry of the same simulation time.

    The bridge stamps a camera frame with its sensor time and the odometry with its sim-time clock,
    which can trail by one tick, and DDS delivers the topics independently. A frame is decided
    when odometry at or after its stamp has arrived, or ``grace_s`` (wall time) after it arrived;
    then it takes the newest odometry not after it, if that is within ``tolerance_s``.
    """

    def __init__(self, tolerance_s: float = 0.06, grace_s: float = 0.03,
                 history: int = 64) -> None:
        if not tolerance_s >= 0 or not grace_s >= 0:
            raise ValueError('tolerance_s and grace_s must be >= 0')
        self.tolerance_s, self.grace_s = tolerance_s, grace_s
        self._odometry: deque[OdometrySample] = deque(maxlen=history)
        self._frames: deque[tuple[float, float, Any]] = deque(maxlen=history)

    def add_odometry(self, sample: OdometrySample) -> None:
        self._odometry.append(sample)

    def add_frame(self, stamp: float, now: float, tag: Any = None) -> None:
        """Queue a frame stamped ``stamp``, arrived at wall time ``now``; ``tag`` rides along."""
        self._frames.append((stamp, now, tag))

    def clear(self) -> None:
        self._frames.clear()

    def _match(self, stamp: float) -> OdometrySample | None:
        best = None
        for sample in self._odometry:
            if sample.stamp <= stamp + _EPS_S and (best is None or sample.stamp > best.stamp):
                best = sample
        if best is None or stamp - best.stamp > self.tolerance_s + _EPS_S:
            return None
        return best

    def ready(self, now: float) -> list[tuple[float, Any, OdometrySample | None]]:
        """Pop the frames that can be decided now, oldest first: (stamp, tag, odometry)."""
        out = []
        newest = max((s.stamp for s in self._odometry), default=-math.inf)
        while self._frames:
            stamp, arrival, tag = self._frames[0]
            if newest < stamp - _EPS_S and now - arrival < self.grace_s:
                break
            self._frames.popleft()
            out.append((stamp, tag, self._match(stamp)))
        return out


# --------------------------------------------------------------------------- the episode


@dataclass
class CarlaEpisodeConfig:
    """Everything the episode logic is configured with (the node's parameters)."""

    role_name: str = 'ego_vehicle'
    town: str = ''                      # '' = accept the loaded town
    random_start: bool = True
    start_xy: tuple[float, float] = (0.0, 0.0)     # ENU map frame, when not random
    random_goal: bool = True
    goal_xy: tuple[float, float] = (0.0, 0.0)      # ENU map frame, when not random
    route_length_m: float = 300.0       # length of a random route
    min_route_length_m: float = 40.0    # random starts giving shorter routes are re-drawn
    waypoint_spacing_m: float = 2.0
    route_complete_margin_m: float = 2.0
    spawn_z_offset_m: float = 0.5       # lift above the road when teleporting
    start_tolerance_m: float = 2.0      # odometry this close to the start pose = reset done
    start_clearance_m: float = 15.0     # keep NPCs this far from the start pose
    reset_retry_frames: int = 40        # re-send the teleport after this many frames
    scenario: int = 0
    npc_light: int = 15
    npc_heavy: int = 50
    weather: str = ''                   # carla.WeatherParameters preset name, '' = leave
    seed: int = 0
    tm_port: int = 8000
    tm_synchronous: bool = False        # see docs/carla.md: the bridge ticks, not this client
    max_episode_steps: int = 1000
    fixed_delta_seconds: float = 0.05   # dt when stamps cannot tell it
    path_width_m: float = 3.5           # a vehicle this close to the route is in the ego's path
    lookahead_m: float = 60.0           # how far ahead proximity looks
    ego_width_m: float = 1.8            # used when the actor has no bounding box
    ego_length_m: float = 4.5

    def __post_init__(self) -> None:
        if self.scenario not in SCENARIOS:
            raise ValueError(f'scenario must be one of {SCENARIOS}, got {self.scenario}')
        for name in ('route_length_m', 'min_route_length_m', 'waypoint_spacing_m',
                     'start_tolerance_m', 'fixed_delta_seconds', 'path_width_m', 'lookahead_m',
                     'ego_width_m', 'ego_length_m'):
            if not getattr(self, name) > 0:
                raise ValueError(f'{name} must be > 0, got {getattr(self, name)}')
        for name in ('npc_light', 'npc_heavy', 'reset_retry_frames', 'seed',
                     'route_complete_margin_m', 'spawn_z_offset_m', 'start_clearance_m'):
            if getattr(self, name) < 0:
                raise ValueError(f'{name} must be >= 0, got {getattr(self, name)}')
        if self.max_episode_steps < 1:
            raise ValueError(f'max_episode_steps must be >= 1, got {self.max_episode_steps}')
        if not 1 <= self.tm_port <= 65535:
            raise ValueError(f'tm_port must be a TCP port, got {self.tm_port}')
        for name in ('start_xy', 'goal_xy'):
            value = tuple(float(v) for v in getattr(self, name))
            if len(value) != 2 or not all(math.isfinite(v) for v in value):
                raise ValueError(f'{name} must be two finite numbers [x, y], got {value}')
            setattr(self, name, value)
        if not self.role_name:
            raise ValueError('role_name must not be empty')

    @property
    def npc_count(self) -> int:
        return (0, self.npc_light, self.npc_heavy)[self.scenario]


@dataclass(frozen=True)
class EpisodePlan:
    """A new episode: its id, the ENU route (N, 3: x, y, yaw) and the ENU start pose."""

    episode_id: int
    route: np.ndarray
    start: tuple[float, float, float]


@dataclass(frozen=True)
class StepOutcome:
    """What the node publishes as StepFeedback for one camera frame."""

    stamp: float
    episode_id: int
    step: int
    reward: float
    terms: dict[str, float]
    terminated: bool
    truncated: bool
    reason: str
    distance_m: float
    lateral_deviation_m: float
    speed_mps: float

    @property
    def done(self) -> bool:
        return self.terminated or self.truncated


@dataclass
class _EpisodeState:
    plan: EpisodePlan
    route: Route
    started: bool = False
    step: int = 0
    frames_waiting: int = 0
    start_progress: float = 0.0
    last_progress: float = 0.0
    last_stamp: float = 0.0
    last_speed: float = 0.0
    last_yaw: float = 0.0
    last_accel: tuple[float, float] = (0.0, 0.0)
    ended: bool = False


@dataclass
class _World:
    world: Any
    carla_map: Any
    ego: Any
    traffic_manager: Any
    graph: LaneGraph | None = None
    npcs: list[Any] = field(default_factory=list)


class CarlaEpisode:
    """
    Episodes in a CARLA world driven through carla-ros-bridge.

    ``connect()`` finds the ego vehicle (spawned by carla_spawn_objects with ``role_name``) and
    applies weather and traffic; ``new_episode()`` plans a route and teleports the ego vehicle;
    ``on_frame()`` turns one camera frame, its odometry and the events since the last frame into
    a :class:`StepOutcome`. The first frame at the start pose is step 0 (reward 0); frames before
    it (the teleport not yet simulated) give None. This client never ticks the world: in
    synchronous mode the bridge does.
    """

    def __init__(self, carla: Any, client: Any, config: CarlaEpisodeConfig,
                 weights: RewardWeights) -> None:
        self._carla, self.client = carla, client
        self.config, self.weights = config, weights
        self._rng = random.Random(config.seed)
        self._w: _World | None = None
        self._episode: _EpisodeState | None = None
        self._start_transform: Any = None
        self._stale_npcs: list[Any] = []     # spawned before a lost connection
        self.episode_id = 0
        self.events = EventLog()

    # ------------------------------------------------------------------ set-up

    @property
    def connected(self) -> bool:
        return self._w is not None

    @property
    def episode(self) -> _EpisodeState | None:
        return self._episode

    def find_ego(self, world: Any) -> Any | None:
        for actor in world.get_actors().filter('vehicle.*'):
            if actor.attributes.get('role_name') == self.config.role_name:
                return actor
        return None

    def connect(self) -> str:
        """
        Attach to the world: check the town, find the ego vehicle, set weather and traffic.

        Raises CarlaSetupError (retry later: the bridge may still be loading the town or
        spawning the ego vehicle) or RuntimeError from the client (server unreachable).
        """
        if self.client is None:
            raise CarlaSetupError('no carla client')
        world = self.client.get_world()
        carla_map = world.get_map()
        town = self.config.town
        if town and not town.endswith('.xodr') \
                and carla_map.name.rsplit('/', 1)[-1] != town.rsplit('/', 1)[-1]:
            raise CarlaSetupError(f'the loaded town is {carla_map.name!r}, expected {town!r} '
                                  '(the bridge loads the town given to its launch file)')
        ego = self.find_ego(world)
        if ego is None:
            raise CarlaSetupError(f'no vehicle with role_name {self.config.role_name!r} yet '
                                  '(carla_spawn_objects spawns it from the objects file)')
        if self.config.weather:
            preset = getattr(self._carla.WeatherParameters, self.config.weather, None)
            if preset is None:
                raise CarlaSetupError(f'unknown weather preset {self.config.weather!r}')
            world.set_weather(preset)
        tm = self.client.get_trafficmanager(self.config.tm_port)
        tm.set_synchronous_mode(self.config.tm_synchronous)
        tm.set_random_device_seed(self.config.seed)
        tm.set_global_distance_to_leading_vehicle(2.5)
        self._w = _World(world=world, carla_map=carla_map, ego=ego, traffic_manager=tm)
        for vehicle in self._stale_npcs:    # a time-out, not a restart, leaves them behind
            try:
                if vehicle.is_alive:
                    vehicle.destroy()
            except RuntimeError:
                pass                        # the server restarted: they are gone already
        self._stale_npcs = []
        spawned = self._spawn_traffic(self.config.npc_count)
        settings = world.get_settings()
        mode = (f'synchronous, fixed_delta_seconds {settings.fixed_delta_seconds}'
                if settings.synchronous_mode else 'asynchronous')
        return (f'attached to {carla_map.name} ({mode}), ego vehicle id {ego.id}, '
                f'{spawned} NPC vehicles (scenario {self.config.scenario})')

    def _spawn_traffic(self, count: int) -> int:
        w = self._w
        if count == 0:
            return 0
        blueprints = [bp for bp in w.world.get_blueprint_library().filter('vehicle.*')
                      if not bp.has_attribute('number_of_wheels')
                      or bp.get_attribute('number_of_wheels').as_int() == 4]
        if not blueprints:
            raise CarlaSetupError('no four-wheeled vehicle blueprints for NPC traffic')
        points = list(w.carla_map.get_spawn_points())
        self._rng.shuffle(points)
        ego = w.ego.get_location()
        for point in points:
            if len(w.npcs) >= count:
                break
            if point.location.distance(ego) < self.config.start_clearance_m:
                continue
            blueprint = self._rng.choice(blueprints)
            if blueprint.has_attribute('role_name'):
                blueprint.set_attribute('role_name', 'autopilot')
            vehicle = w.world.try_spawn_actor(blueprint, point)
            if vehicle is not None:
                vehicle.set_autopilot(True, w.traffic_manager.get_port())
                w.npcs.append(vehicle)
        return len(w.npcs)

    def disconnect(self) -> None:
        """Forget the world after a client error (the server may be gone); keep episode ids."""
        if self._w is not None:
            self._stale_npcs.extend(self._w.npcs)
        self._w, self._episode = None, None

    def close(self) -> None:
        """Destroy the NPC vehicles this episode spawned (the ego vehicle is the bridge's)."""
        if self._w is None:
            return
        for vehicle in self._w.npcs:
            if vehicle.is_alive:
                vehicle.destroy()
        self._w.npcs.clear()

    # ------------------------------------------------------------------ episodes

    def _start_waypoint(self) -> Any:
        w, cfg = self._w, self.config
        loc = self._carla.Location
        if not cfg.random_start:
            x, y, _ = enu_to_carla(*cfg.start_xy)
            wp = w.carla_map.get_waypoint(loc(x=x, y=y, z=0.0))
            if wp is None:
                raise RoutePlanningError(f'no driving lane near start_xy {cfg.start_xy}')
            return wp
        points = w.carla_map.get_spawn_points()
        if points:
            return w.carla_map.get_waypoint(self._rng.choice(points).location)
        candidates = [p for p in w.carla_map.generate_waypoints(10.0) if not p.is_junction]
        if not candidates:
            raise RoutePlanningError('the map has neither spawn points nor driving lanes')
        return self._rng.choice(candidates)

    def _plan(self) -> list[Any]:
        w, cfg = self._w, self.config
        goal = None
        if not cfg.random_goal:
            x, y, _ = enu_to_carla(*cfg.goal_xy)
            goal = w.carla_map.get_waypoint(self._carla.Location(x=x, y=y, z=0.0))
            if goal is None:
                raise RoutePlanningError(f'no driving lane near goal_xy {cfg.goal_xy}')
            if w.graph is None:
                w.graph = LaneGraph(w.carla_map)
        attempts = 1 if not cfg.random_start else 20
        for _ in range(attempts):
            start = self._start_waypoint()
            waypoints = plan_route(w.carla_map, start, goal, self._rng, cfg.route_length_m,
                                   cfg.waypoint_spacing_m, w.graph)
            length = (len(waypoints) - 1) * cfg.waypoint_spacing_m
            if goal is not None and len(waypoints) < 2:
                raise RoutePlanningError('start_xy and goal_xy are the same point of the road')
            if goal is not None or length >= cfg.min_route_length_m:
                return waypoints
        raise RoutePlanningError(f'no random start gave a route of at least '
                                 f'{cfg.min_route_length_m} m in {attempts} tries')

    def _clear_start(self, start: Any) -> None:
        """Move NPC vehicles parked on the start pose to a free spawn point."""
        w, radius = self._w, self.config.start_clearance_m
        blocking = [v for v in w.npcs if v.is_alive
                    and v.get_location().distance(start.location) < radius]
        if not blocking:
            return
        occupied = [v.get_location() for v in w.npcs if v.is_alive] + [start.location]
        free = [p for p in w.carla_map.get_spawn_points()
                if all(p.location.distance(o) >= radius for o in occupied)]
        self._rng.shuffle(free)
        for vehicle in blocking:
            if free:
                vehicle.set_transform(free.pop())
            else:
                vehicle.destroy()
        w.npcs = [v for v in w.npcs if v.is_alive]

    def new_episode(self) -> EpisodePlan:
        """Plan a route, teleport the ego vehicle to its start and forget pending events."""
        if self._w is None:
            raise CarlaSetupError('not connected to CARLA yet')
        waypoints = self._plan()
        start_tf = waypoints[0].transform
        carla = self._carla
        transform = carla.Transform(
            carla.Location(x=start_tf.location.x, y=start_tf.location.y,
                           z=start_tf.location.z + self.config.spawn_z_offset_m),
            carla.Rotation(pitch=0.0, yaw=start_tf.rotation.yaw, roll=0.0))
        self._clear_start(transform)
        self._teleport(transform)
        self.episode_id += 1
        route = route_to_enu(waypoints)
        plan = EpisodePlan(episode_id=self.episode_id, route=route,
                           start=tuple(float(v) for v in route[0]))
        self._episode = _EpisodeState(plan=plan, route=Route(route[:, :2]))
        self._start_transform = transform
        self.events.clear()
        return plan

    def _teleport(self, transform: Any) -> None:
        ego, carla = self._w.ego, self._carla
        ego.set_transform(transform)
        ego.set_target_velocity(carla.Vector3D(x=0.0, y=0.0, z=0.0))
        ego.set_target_angular_velocity(carla.Vector3D(x=0.0, y=0.0, z=0.0))
        ego.apply_control(carla.VehicleControl(throttle=0.0, steer=0.0, brake=1.0))

    # ------------------------------------------------------------------ steps

    def on_frame(self, stamp: float, odom: OdometrySample | None) -> StepOutcome | None:
        """
        Account one camera frame: step 0 when the reset has taken effect, else a reward step.

        Returns None when the frame belongs to no step: no episode, the teleport not yet
        simulated, no odometry for the frame (the caller logs it), or a frame not newer than
        the last one accounted.
        """
        ep = self._episode
        if ep is None or ep.ended or odom is None:
            return None
        collisions, invasions = self.events.take(stamp)
        if not ep.started:
            sx, sy, _ = ep.plan.start
            if math.hypot(odom.x - sx, odom.y - sy) > self.config.start_tolerance_m:
                ep.frames_waiting += 1
                if ep.frames_waiting % max(self.config.reset_retry_frames, 1) == 0:
                    self._teleport(self._start_transform)
                return None
            ep.route.reset_hint()
            state = ep.route.locate(odom.x, odom.y, odom.yaw)
            ep.started, ep.step = True, 0
            ep.start_progress = ep.last_progress = state.progress_m
            ep.last_stamp, ep.last_speed, ep.last_yaw = stamp, odom.speed, odom.yaw
            return StepOutcome(stamp=stamp, episode_id=ep.plan.episode_id, step=0, reward=0.0,
                               terms=dict.fromkeys(TERM_NAMES, 0.0), terminated=False,
                               truncated=False, reason='',
                               distance_m=0.0, lateral_deviation_m=state.lateral_deviation,
                               speed_mps=odom.speed)
        if stamp <= ep.last_stamp + _EPS_S:
            return None                         # a frame already accounted (or older)
        dt = stamp - ep.last_stamp
        if dt > 10.0:
            dt = self.config.fixed_delta_seconds
        state = ep.route.locate(odom.x, odom.y, odom.yaw)
        accel = ((odom.speed - ep.last_speed) / dt,
                 odom.speed * wrap_angle(odom.yaw - ep.last_yaw) / dt)
        progress_end = ep.route.length_m - self.config.route_complete_margin_m
        ep.step += 1
        measurements = StepMeasurements(
            dt=dt, step=ep.step, max_episode_steps=self.config.max_episode_steps,
            speed_mps=odom.speed, lateral_deviation_m=state.lateral_deviation,
            heading_error_rad=state.heading_error,
            progress_delta_m=state.progress_m - ep.last_progress,
            jerk_mps3=jerk_magnitude(ep.last_accel, accel, dt),
            collision=bool(collisions),
            off_road_fraction=self.off_road_fraction(odom),
            wrong_way=self.wrong_way(odom),
            lane_invasions=sum(1 for e in invasions for m in e.markings
                               if m != LANE_MARKING_NONE),
            gap_ahead_m=self.gap_ahead(state.progress_m),
            route_complete=state.progress_m >= progress_end)
        result = compute_reward(measurements, self.weights)
        ep.last_progress, ep.last_stamp = state.progress_m, stamp
        ep.last_speed, ep.last_yaw, ep.last_accel = odom.speed, odom.yaw, accel
        ep.ended = result.terminated or result.truncated
        return StepOutcome(stamp=stamp, episode_id=ep.plan.episode_id, step=ep.step,
                           reward=result.reward, terms=dict(result.terms),
                           terminated=result.terminated, truncated=result.truncated,
                           reason=result.reason,
                           distance_m=state.progress_m - ep.start_progress,
                           lateral_deviation_m=state.lateral_deviation, speed_mps=odom.speed)

    # ------------------------------------------------------------------ measurements

    def _ego_size(self) -> tuple[float, float]:
        box = getattr(self._w.ego, 'bounding_box', None)
        if box is None:
            return self.config.ego_width_m, self.config.ego_length_m
        return 2.0 * box.extent.y, 2.0 * box.extent.x

    def off_road_fraction(self, odom: OdometrySample, samples: int = 5) -> float:
        """Share of points across the car's width that lie on no driving lane of the map."""
        width, _ = self._ego_size()
        carla_map, loc = self._w.carla_map, self._carla.Location
        driving = self._carla.LaneType.Driving
        off = 0
        for i in range(samples):
            lateral = (i / (samples - 1) - 0.5) * width
            x = odom.x - math.sin(odom.yaw) * lateral
            y = odom.y + math.cos(odom.yaw) * lateral
            cx, cy, _ = enu_to_carla(x, y)
            if carla_map.get_waypoint(loc(x=cx, y=cy, z=odom.z), False, driving) is None:
                off += 1
        return off / samples

    def wrong_way(self, odom: OdometrySample) -> bool:
        """Tell whether the car moves with a heading over 90 degrees off its lane's direction."""
        if abs(odom.speed) < 0.1:
            return False
        cx, cy, _ = enu_to_carla(odom.x, odom.y)
        wp = self._w.carla_map.get_waypoint(self._carla.Location(x=cx, y=cy, z=odom.z))
        if wp is None:
            return False
        _, _, lane_yaw = waypoint_enu(wp)
        heading = odom.yaw if odom.speed > 0 else odom.yaw + math.pi
        return abs(wrap_angle(heading - lane_yaw)) > math.pi / 2.0

    def gap_ahead(self, ego_progress: float) -> float:
        """Bumper-to-bumper gap along the route to the nearest NPC vehicle on it, ahead."""
        route = self._episode.route
        npcs = [v for v in self._w.npcs if v.is_alive]
        if not npcs:
            return math.inf
        lo = int(np.searchsorted(route.cum_length, ego_progress))
        hi = int(np.searchsorted(route.cum_length, ego_progress + self.config.lookahead_m)) + 1
        window, along = route.xy[lo:hi], route.cum_length[lo:hi]
        if len(window) == 0:
            return math.inf
        _, ego_length = self._ego_size()
        best = math.inf
        for vehicle in npcs:
            t = vehicle.get_transform()
            x, y, _ = carla_to_enu(t.location.x, t.location.y, t.rotation.yaw)
            d2 = (window[:, 0] - x) ** 2 + (window[:, 1] - y) ** 2
            i = int(np.argmin(d2))
            dist2, position = d2[i], along[i]
            for j in (i - 1, i):                # project onto the two segments at vertex i
                if 0 <= j < len(window) - 1:
                    seg = window[j + 1] - window[j]
                    length = float(np.hypot(*seg))
                    u = min(max(float(np.dot((x, y) - window[j], seg)) / length, 0.0), length)
                    foot = window[j] + seg * (u / length)
                    if (foot[0] - x) ** 2 + (foot[1] - y) ** 2 <= dist2:
                        dist2 = (foot[0] - x) ** 2 + (foot[1] - y) ** 2
                        position = along[j] + u
            if dist2 > (self.config.path_width_m / 2.0) ** 2 or position <= ego_progress:
                continue
            box = getattr(vehicle, 'bounding_box', None)
            other_length = 2.0 * box.extent.x if box is not None else self.config.ego_length_m
            gap = position - ego_progress - (ego_length + other_length) / 2.0
            best = min(best, max(gap, 0.0))
        return best
