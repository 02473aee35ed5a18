"""
The simulated world: ego vehicle (kinematic bicycle), NPC traffic, route and events.

One :class:`World` is one road (fixed by its seed) on which episodes are played: ``reset()``
places the ego at rest on a random lane position with a one-lap route ahead and spawns the traffic
of the scenario; ``step(control)`` advances ``dt`` seconds (20 Hz by default) with CARLA
``VehicleControl`` semantics and measures the events the reward needs (collision, off-road, wrong
way, lane invasion, gap ahead, progress). Everything random comes from the world's generator, so a
seed gives identical episodes.
"""

from __future__ import annotations

from dataclasses import dataclass
import math

from av_td3_ros.driving.observation import Route, RouteState, wrap_angle
from av_td3_ros.sim.render import CameraConfig, Renderer
from av_td3_ros.sim.reward import jerk_magnitude, StepMeasurements
from av_td3_ros.sim.road import lane_offset, RoadConfig, RoadNetwork
import numpy as np

# scenario -> number of NPC vehicles (0: empty road, 1: light traffic, 2: heavy traffic)
SCENARIO_NPCS = {0: 0, 1: 6, 2: 16}
ROUTE_SPACING_M = 2.0
ROUTE_END_GAP_M = 2.0          # the one-lap route stops this short of its start
ROUTE_COMPLETE_TOLERANCE_M = 1.0
GAP_RANGE_M = 80.0             # vehicles further ahead do not count for proximity


@dataclass(frozen=True)
class VehicleParams:
    """A mid-size car (CARLA's Tesla Model 3 class): dimensions and actuator limits."""

    length_m: float = 4.7
    width_m: float = 1.9
    wheelbase_m: float = 2.9
    rear_axle_to_cg_m: float = 1.45
    max_steer_rad: float = 0.61          # 35 degrees at the front wheels
    steer_rate_rad_s: float = 1.6        # centre to full lock in ~0.4 s
    max_lateral_accel_mps2: float = 8.0  # tyre grip: steering beyond it does not turn tighter
    max_accel_mps2: float = 3.5          # 0-100 km/h in ~9 s at full throttle
    max_brake_mps2: float = 8.0
    hand_brake_mps2: float = 5.0
    max_speed_mps: float = 25.0
    max_reverse_speed_mps: float = 5.0
    rolling_mps2: float = 0.15
    drag_per_m: float = 0.0006           # aerodynamic deceleration = drag * v^2


@dataclass(frozen=True)
class Control:
    """CARLA VehicleControl semantics: throttle 0..1, steer -1..1 (+ = right), brake 0..1."""

    throttle: float = 0.0
    steer: float = 0.0
    brake: float = 0.0
    hand_brake: bool = False
    reverse: bool = False


@dataclass(frozen=True)
class VehicleState:
    """Ego state; speed is signed (forward positive), yaw counter-clockwise (REP-103)."""

    x: float
    y: float
    yaw: float
    speed: float = 0.0
    steer_angle: float = 0.0     # front wheel angle, positive = left
    yaw_rate: float = 0.0
    lateral_speed: float = 0.0   # at the centre of gravity, vehicle frame
    accel_long: float = 0.0
    accel_lat: float = 0.0


def step_vehicle(state: VehicleState, control: Control, p: VehicleParams,
                 dt: float) -> VehicleState:
    """Advance the kinematic bicycle model (reference at the centre of gravity) by ``dt``."""
    if not (math.isfinite(control.throttle) and math.isfinite(control.steer)
            and math.isfinite(control.brake)):
        raise ValueError(f'control is not finite: {control}')
    throttle = min(max(control.throttle, 0.0), 1.0)
    brake = min(max(control.brake, 0.0), 1.0)
    target = -min(max(control.steer, -1.0), 1.0) * p.max_steer_rad   # CARLA: positive = right
    max_change = p.steer_rate_rad_s * dt
    steer = state.steer_angle + min(max(target - state.steer_angle, -max_change), max_change)
    v = state.speed
    if control.reverse:
        drive = -throttle * p.max_accel_mps2 * max(0.0, 1.0 - (v / p.max_reverse_speed_mps) ** 2)
    else:
        drive = throttle * p.max_accel_mps2 * max(0.0, 1.0 - (v / p.max_speed_mps) ** 2)
    resist = (p.rolling_mps2 + p.drag_per_m * v * v + brake * p.max_brake_mps2
              + (p.hand_brake_mps2 if control.hand_brake else 0.0)) * dt
    v_new = v + drive * dt
    v_new = max(v_new - resist, 0.0) if v_new > 0 else min(v_new + resist, 0.0)
    # tyre grip: the effective wheel angle cannot demand more than max lateral acceleration
    grip = math.atan(p.max_lateral_accel_mps2 * p.wheelbase_m / max(v_new * v_new, 1e-6))
    effective = min(max(steer, -grip), grip)
    beta = math.atan(p.rear_axle_to_cg_m / p.wheelbase_m * math.tan(effective))
    v_mid = 0.5 * (v + v_new)
    heading = state.yaw + beta
    yaw_rate = v_new / p.rear_axle_to_cg_m * math.sin(beta)
    return VehicleState(
        x=state.x + v_mid * math.cos(heading) * dt,
        y=state.y + v_mid * math.sin(heading) * dt,
        yaw=wrap_angle(state.yaw + yaw_rate * dt),
        speed=v_new, steer_angle=steer, yaw_rate=yaw_rate,
        lateral_speed=v_new * math.sin(beta),
        accel_long=(v_new - v) / dt, accel_lat=v_new * yaw_rate)


def box_corners(x, y, yaw, length, width) -> np.ndarray:
    """Corners (..., 4, 2) of oriented rectangles, counter-clockwise from front-left."""
    c, s = np.cos(yaw), np.sin(yaw)
    hl, hw = np.asarray(length) / 2.0, np.asarray(width) / 2.0
    local = np.stack([np.stack([hl, hw], -1), np.stack([-hl, hw], -1),
                      np.stack([-hl, -hw], -1), np.stack([hl, -hw], -1)], -2)
    rot = np.stack([np.stack([c, -s], -1), np.stack([s, c], -1)], -2)
    return np.einsum('...ij,...kj->...ki', rot, local) + np.stack([x, y], -1)[..., None, :]


def boxes_overlap(a: np.ndarray, b: np.ndarray) -> bool:
    """Separating-axis test for two convex quadrilaterals given as (4, 2) corners."""
    for poly in (a, b):
        edges = np.roll(poly, -1, axis=0) - poly
        axes = np.stack((-edges[:, 1], edges[:, 0]), axis=1)
        pa, pb = a @ axes.T, b @ axes.T
        if np.any((pa.max(0) < pb.min(0)) | (pb.max(0) < pa.min(0))):
            return False
    return True


@dataclass(frozen=True)
class TrafficParams:
    """Intelligent Driver Model parameters of the NPC vehicles."""

    max_accel_mps2: float = 1.5
    comfort_brake_mps2: float = 2.5
    max_brake_mps2: float = 8.0
    headway_s: float = 1.2
    min_gap_m: float = 2.5
    spawn_spacing_m: float = 15.0
    spawn_clear_ahead_m: float = 30.0    # around the ego in its own lane
    spawn_clear_behind_m: float = 20.0
    spawn_clear_oncoming_m: float = 20.0


# NPC paint (BGR), chosen to differ in gray level as well as in colour
NPC_COLORS = ((40.0, 40.0, 200.0), (180.0, 90.0, 30.0), (235.0, 235.0, 235.0),
              (45.0, 45.0, 45.0), (30.0, 200.0, 230.0), (140.0, 140.0, 140.0),
              (60.0, 140.0, 40.0), (20.0, 90.0, 160.0))


class Traffic:
    """
    NPC vehicles that keep their lane (1-D along the road) with IDM car following.

    Per-vehicle state is kept in plain lists: a few dozen vehicles cost less in Python loops
    than in the per-call overhead of many small numpy operations (this runs every step).
    """

    def __init__(self, road: RoadNetwork, rng: np.random.Generator, count: int,
                 ego_s: float, ego_direction: int, scenario: int,
                 params: TrafficParams | None = None) -> None:
        self.road = road
        self.p = params or TrafficParams()
        v_lo, v_hi = (5.5, 8.0) if scenario <= 1 else (4.5, 7.5)
        self.s: list[float] = []
        self.direction: list[int] = []
        for _ in range(count):
            for _attempt in range(100):
                d = int(rng.choice((-1, 1)))
                s = float(rng.uniform(0.0, road.length))
                if self._spawn_ok(s, d, ego_s, ego_direction):
                    self.s.append(s)
                    self.direction.append(d)
                    break
        n = len(self.s)
        self.v_desired: list[float] = rng.uniform(v_lo, v_hi, n).tolist()
        self.v = [0.8 * v for v in self.v_desired]
        self.length: list[float] = rng.uniform(4.2, 4.9, n).tolist()
        self.width: list[float] = rng.uniform(1.8, 2.0, n).tolist()
        self.height: list[float] = rng.uniform(1.4, 1.7, n).tolist()
        self.color = [NPC_COLORS[i] for i in rng.integers(0, len(NPC_COLORS), n).tolist()]
        self.offset = [lane_offset(d, road.config) for d in self.direction]
        self._lane_offsets = (lane_offset(1, road.config), lane_offset(-1, road.config))
        self.update_poses()

    def _spawn_ok(self, s: float, d: int, ego_s: float, ego_d: int) -> bool:
        length = self.road.length
        for s2, d2 in zip(self.s, self.direction, strict=True):
            gap = abs(s - s2) % length
            if d2 == d and min(gap, length - gap) < self.p.spawn_spacing_m:
                return False
        ahead = ((s - ego_s) * ego_d) % length
        if d == ego_d:
            return self.p.spawn_clear_ahead_m <= ahead <= length - self.p.spawn_clear_behind_m
        return min(ahead, length - ahead) >= self.p.spawn_clear_oncoming_m

    def __len__(self) -> int:
        return len(self.s)

    def update_poses(self) -> None:
        """Recompute x, y, yaw from (s, lane); call after changing s or the lane directly."""
        pose = self.road.pose_scalar
        poses = [pose(s, off) for s, off in zip(self.s, self.offset, strict=True)]
        self.x = [p[0] for p in poses]
        self.y = [p[1] for p in poses]
        self.yaw = [p[2] if d > 0 else wrap_angle(p[2] + math.pi)
                    for p, d in zip(poses, self.direction, strict=True)]

    def step(self, dt: float, ego_s: float, ego_offset: float, ego_v_road: float,
             ego_length: float) -> None:
        """
        Advance every NPC by ``dt``, following the vehicle ahead in its lane (IDM).

        The ego counts as a vehicle ahead in every lane it overlaps (``ego_offset`` from the
        centre line, ``ego_v_road`` its speed along increasing s).
        """
        n = len(self.s)
        if n == 0:
            return
        p, length = self.p, self.road.length
        s, v, d, veh_len = self.s, self.v, self.direction, self.length
        gap = [math.inf] * n
        v_lead = [0.0] * n
        for lane, lane_off in ((1, self._lane_offsets[0]), (-1, self._lane_offsets[1])):
            members = [i for i in range(n) if d[i] == lane]
            if len(members) > 1:
                members.sort(key=lambda i: (s[i] * lane) % length)
                for a, i in enumerate(members):
                    j = members[(a + 1) % len(members)]
                    gap[i] = ((s[j] - s[i]) * lane) % length - 0.5 * (veh_len[i] + veh_len[j])
                    v_lead[i] = v[j]
            if abs(ego_offset - lane_off) < 2.6:
                for i in members:
                    g = ((ego_s - s[i]) * lane) % length - 0.5 * (veh_len[i] + ego_length)
                    if g < gap[i]:
                        gap[i], v_lead[i] = g, ego_v_road * lane
        root_ab = 2.0 * math.sqrt(p.max_accel_mps2 * p.comfort_brake_mps2)
        for i in range(n):
            vi = v[i]
            accel = 1.0 - (vi / self.v_desired[i]) ** 4
            if gap[i] < math.inf:
                desired = p.min_gap_m + max(
                    0.0, vi * p.headway_s + vi * (vi - v_lead[i]) / root_ab)
                accel -= (desired / max(gap[i], 0.1)) ** 2
            accel = min(max(p.max_accel_mps2 * accel, -p.max_brake_mps2), p.max_accel_mps2)
            v_new = max(vi + accel * dt, 0.0)
            s[i] = (s[i] + d[i] * 0.5 * (vi + v_new) * dt) % length
            v[i] = v_new
        self.update_poses()


@dataclass(frozen=True)
class StepEvents:
    """What happened to the ego during the last step (inputs of the reward)."""

    collision: bool = False
    lane_invasions: int = 0
    off_road_fraction: float = 0.0
    wrong_way: bool = False
    gap_ahead_m: float = math.inf
    progress_delta_m: float = 0.0
    jerk_mps3: float = 0.0
    route_complete: bool = False


class World:
    """One road from ``seed``; episodes with the traffic of ``scenario``."""

    def __init__(self, seed: int = 0, scenario: int = 0, dt: float = 0.05,
                 camera: CameraConfig | None = None,
                 road_config: RoadConfig | None = None,
                 vehicle: VehicleParams | None = None,
                 traffic: TrafficParams | None = None) -> None:
        if scenario not in SCENARIO_NPCS:
            raise ValueError(f'scenario must be one of {sorted(SCENARIO_NPCS)}, got {scenario}')
        if not dt > 0:
            raise ValueError(f'dt must be > 0, got {dt}')
        self.seed = int(seed)
        self.scenario = scenario
        self.dt = float(dt)
        self.vehicle = vehicle or VehicleParams()
        self.traffic_params = traffic or TrafficParams()
        road_seed, episode_seed = np.random.SeedSequence(self.seed).spawn(2)
        self.road = RoadNetwork.generate(np.random.default_rng(road_seed), road_config)
        self.rng = np.random.default_rng(episode_seed)
        self.renderer = Renderer(self.road, camera or CameraConfig(), seed=self.seed)
        self.reset()

    # -- episodes -----------------------------------------------------------------------------
    def reset(self, scenario: int | None = None, rng: np.random.Generator | None = None) -> None:
        """
        Start an episode: ego at rest in its lane, a one-lap route ahead, fresh traffic.

        Start point, direction and traffic are drawn from ``rng`` (default: the world's own).
        """
        rng = rng or self.rng
        if scenario is not None:
            if scenario not in SCENARIO_NPCS:
                raise ValueError(f'scenario must be one of {sorted(SCENARIO_NPCS)}, '
                                 f'got {scenario}')
            self.scenario = scenario
        road = self.road
        self.direction = int(rng.choice((-1, 1)))
        self.start_s = float(rng.uniform(0.0, road.length))
        route_len = road.lane_length(self.direction) - ROUTE_END_GAP_M
        xy, center_s = road.lane_points(self.start_s, self.direction, ROUTE_SPACING_M, route_len)
        self.route = Route(xy)
        # centreline arc length of each waypoint, unwrapped in the driving direction
        self._route_center = self.start_s + self.direction * (
            (center_s - self.start_s) * self.direction % road.length)
        self._route_center[0] = self.start_s
        self._ego_s_memo: tuple = (None, 0.0)
        x, y, heading = road.pose(self.start_s, lane_offset(self.direction, road.config))
        yaw = float(heading) if self.direction > 0 else wrap_angle(float(heading) + math.pi)
        self.traffic = Traffic(road, rng, SCENARIO_NPCS[self.scenario], self.start_s,
                               self.direction, self.scenario, self.traffic_params)
        self.place_ego(VehicleState(x=float(x), y=float(y), yaw=yaw))
        self.start_progress = self.route_state.progress_m

    def place_ego(self, state: VehicleState) -> None:
        """Teleport the ego (like CARLA's set_transform): events restart from this pose."""
        self.ego = state
        self.route.reset_hint()
        self.route_state = self.route.locate(state.x, state.y, state.yaw)
        self._touching = self._markings_touched(self.route_state)
        self.events = StepEvents(gap_ahead_m=self._gap_ahead(self.route_state))

    @property
    def ego_s(self) -> float:
        """Centreline arc length of the ego's projection on its route."""
        state, value = self._ego_s_memo
        if state is not self.route_state:        # several users per step: compute once
            value = float(np.interp(self.route_state.progress_m, self.route.cum_length,
                                    self._route_center)) % self.road.length
            self._ego_s_memo = (self.route_state, value)
        return value

    @property
    def ego_road_offset(self) -> float:
        """Signed offset of the ego from the centre line, positive left of its route."""
        return self.route_state.lateral_deviation - 0.5 * self.road.config.lane_width_m

    @property
    def distance_m(self) -> float:
        """Distance driven along the route in this episode."""
        return self.route_state.progress_m - self.start_progress

    def step(self, control: Control) -> StepEvents:
        """Advance ``dt`` with ``control`` and return the events of this step."""
        prev = self.ego
        prev_progress = self.route_state.progress_m
        self.ego = step_vehicle(prev, control, self.vehicle, self.dt)
        self.route_state = self.route.locate(self.ego.x, self.ego.y, self.ego.yaw)
        ego_s = self.ego_s
        offset = self.ego_road_offset
        v_road = self.ego.speed * math.cos(self.route_state.heading_error) * self.direction
        self.traffic.step(self.dt, ego_s, offset * self.direction, v_road,
                          self.vehicle.length_m)
        touching = self._markings_touched(self.route_state)
        invasions = bin(touching & ~self._touching).count('1')
        self._touching = touching
        progress = self.route_state.progress_m
        self.events = StepEvents(
            collision=self._collides(),
            lane_invasions=invasions,
            off_road_fraction=self._off_road_fraction(self.route_state),
            wrong_way=self._wrong_way(self.route_state),
            gap_ahead_m=self._gap_ahead(self.route_state),
            progress_delta_m=progress - prev_progress,
            jerk_mps3=jerk_magnitude((prev.accel_long, prev.accel_lat),
                                     (self.ego.accel_long, self.ego.accel_lat), self.dt),
            route_complete=progress >= self.route.length_m - ROUTE_COMPLETE_TOLERANCE_M)
        return self.events

    @property
    def camera(self) -> CameraConfig:
        return self.renderer.camera

    def render_gray(self, size: int = 84) -> np.ndarray:
        """Gray size x size frame, as image_to_gray(render_bgra(camera size)) would give."""
        return self.renderer.render_gray((self.ego.x, self.ego.y, self.ego.yaw), self.traffic,
                                         size, size)

    def render_bgra(self, width: int | None = None, height: int | None = None) -> np.ndarray:
        """BGRA (height, width, 4) camera frame; default size: the camera's."""
        cam = self.renderer.camera
        return self.renderer.render_bgra((self.ego.x, self.ego.y, self.ego.yaw), self.traffic,
                                         width or cam.width, height or cam.height)

    def measurements(self, step: int, max_episode_steps: int) -> StepMeasurements:
        """Reward inputs for the step just taken (``step`` = index of the frame reached)."""
        e, rs = self.events, self.route_state
        return StepMeasurements(
            dt=self.dt, step=step, max_episode_steps=max_episode_steps,
            speed_mps=self.ego.speed, lateral_deviation_m=rs.lateral_deviation,
            heading_error_rad=rs.heading_error, progress_delta_m=e.progress_delta_m,
            jerk_mps3=e.jerk_mps3, collision=e.collision,
            off_road_fraction=e.off_road_fraction, wrong_way=e.wrong_way,
            lane_invasions=e.lane_invasions, gap_ahead_m=e.gap_ahead_m,
            route_complete=e.route_complete)

    # -- events -------------------------------------------------------------------------------
    def _footprint(self, rs: RouteState) -> tuple[float, float]:
        """Lateral extent (lo, hi) of the ego's footprint, as offsets from the centre line."""
        v = self.vehicle
        half = 0.5 * (v.width_m * abs(math.cos(rs.heading_error))
                      + v.length_m * abs(math.sin(rs.heading_error)))
        centre = rs.lateral_deviation - 0.5 * self.road.config.lane_width_m
        return centre - half, centre + half

    def _markings_touched(self, rs: RouteState) -> int:
        """Bit mask of the lane markings under the car: right edge, centre, left edge."""
        lo, hi = self._footprint(rs)
        cfg = self.road.config
        edge = cfg.half_width_m - 0.5 * cfg.edge_line_width_m
        mask = 0
        for bit, line in enumerate((-edge, 0.0, edge)):
            if lo <= line <= hi:
                mask |= 1 << bit
        return mask

    def _off_road_fraction(self, rs: RouteState) -> float:
        lo, hi = self._footprint(rs)
        hw = self.road.config.half_width_m
        outside = max(0.0, hi - hw) + max(0.0, -hw - lo)
        return min(outside / (hi - lo), 1.0)

    def _wrong_way(self, rs: RouteState) -> bool:
        """Driving against the lane the car's centre is in (CARLA's definition)."""
        forward = abs(rs.heading_error) < 0.5 * math.pi
        in_own_lane = rs.lateral_deviation < 0.5 * self.road.config.lane_width_m
        return forward != in_own_lane

    def _gap_ahead(self, rs: RouteState) -> float:
        """Bumper-to-bumper gap to the nearest NPC ahead whose lane the ego's path overlaps."""
        t = self.traffic
        length, ego_s, direction = self.road.length, self.ego_s, self.direction
        offset, ego_len, ego_width = self.ego_road_offset, self.vehicle.length_m, \
            self.vehicle.width_m
        best = math.inf
        for s_i, off_i, len_i, width_i in zip(t.s, t.offset, t.length, t.width, strict=True):
            if abs(off_i * direction - offset) >= 0.5 * (width_i + ego_width) + 0.4:
                continue
            ahead = ((s_i - ego_s) * direction) % length
            reach = 0.5 * (len_i + ego_len)
            gap = 0.0 if ahead > length - reach else ahead - reach
            if gap < min(best, GAP_RANGE_M):
                best = max(gap, 0.0)
        return best

    def _collides(self) -> bool:
        t = self.traffic
        e, v = self.ego, self.vehicle
        ego_box = None
        ego_reach = 0.5 * math.hypot(v.length_m, v.width_m)
        for i, (x, y) in enumerate(zip(t.x, t.y, strict=True)):
            reach = ego_reach + 0.5 * math.hypot(t.length[i], t.width[i])
            if abs(x - e.x) > reach or abs(y - e.y) > reach:
                continue
            if ego_box is None:
                ego_box = box_corners(e.x, e.y, e.yaw, v.length_m, v.width_m)
            other = box_corners(x, y, t.yaw[i], t.length[i], t.width[i])
            if boxes_overlap(ego_box, other):
                return True
        return False
