"""
The classical reference driver: pure pursuit for steering, PID for speed.

It reads the same ego/route vector as the learned policy (DESIGN §5: speed, lateral deviation,
heading error and 25 route waypoints in the vehicle frame), so it runs unchanged on the gym env, on
a ROS graph (vector built from odometry + the waypoints Path) and on recorded bags. Optionally it
takes the gap to the vehicle ahead (an ideal range sensor) to follow traffic; without it, it
drives as if the road were empty. Every learned policy is compared with it.
"""

from __future__ import annotations

from dataclasses import dataclass
import math

from av_td3_ros.driving.observation import ObservationSpec
import numpy as np


@dataclass(frozen=True)
class BaselineConfig:
    """Gains and limits; the defaults suit the embedded simulator's car (wheelbase 2.9 m)."""

    target_speed_mps: float = 8.33        # the reward's target speed
    lookahead_min_m: float = 4.0
    lookahead_gain_s: float = 0.6         # lookahead = min + gain * speed (pure pursuit)
    lookahead_max_m: float = 12.0
    wheelbase_m: float = 2.9
    rear_axle_to_centre_m: float = 1.45   # waypoints are relative to the vehicle centre
    max_steer_rad: float = 0.61           # wheel angle of steer = 1
    max_lateral_accel_mps2: float = 3.0   # slow down for curves ahead
    curve_preview_m: float = 25.0
    kp: float = 0.6
    ki: float = 0.08
    kd: float = 0.0
    integral_limit: float = 5.0
    follow_headway_s: float = 1.6         # car following: keep this time gap...
    follow_min_gap_m: float = 6.0         # ...plus this distance to the vehicle ahead

    def __post_init__(self) -> None:
        for name in ('target_speed_mps', 'lookahead_min_m', 'lookahead_max_m', 'wheelbase_m',
                     'max_steer_rad', 'max_lateral_accel_mps2', 'follow_headway_s'):
            if not getattr(self, name) > 0:
                raise ValueError(f'{name} must be > 0, got {getattr(self, name)}')


class PurePursuitController:
    """Pure pursuit + PID on the observation vector; ``act`` returns [steer, throttle_brake]."""

    def __init__(self, config: BaselineConfig | None = None,
                 spec: ObservationSpec | None = None) -> None:
        self.config = config or BaselineConfig()
        self.spec = spec or ObservationSpec()
        self.reset()

    def reset(self) -> None:
        """Clear the PID state (call at every episode start)."""
        self._integral = 0.0
        self._prev_error: float | None = None

    def target_speed(self, waypoints: np.ndarray, gap_ahead_m: float = math.inf) -> float:
        """Speed limited by the target, the curvature ahead and the vehicle ahead."""
        c = self.config
        speed = c.target_speed_mps
        curvature = _max_curvature(waypoints, c.curve_preview_m)
        if curvature > 1e-6:
            speed = min(speed, math.sqrt(c.max_lateral_accel_mps2 / curvature))
        if math.isfinite(gap_ahead_m):
            speed = min(speed, max(0.0, (gap_ahead_m - c.follow_min_gap_m) / c.follow_headway_s))
        return speed

    def act(self, vector: np.ndarray, dt: float = 0.05,
            gap_ahead_m: float = math.inf) -> np.ndarray:
        """Return the action [steer, throttle_brake] in [-1, 1] for an observation vector."""
        c, spec = self.config, self.spec
        vector = np.asarray(vector, dtype=np.float64)
        if vector.shape != (spec.vector_dim,) or not np.isfinite(vector).all():
            raise ValueError(f'observation vector must be {spec.vector_dim} finite numbers, '
                             f'got shape {vector.shape}')
        speed = float(vector[0]) * spec.speed_scale
        waypoints = vector[3:].reshape(-1, 2) * spec.waypoint_scale
        steer = self._steer(waypoints, speed)
        error = self.target_speed(waypoints, gap_ahead_m) - speed
        self._integral = min(max(self._integral + error * dt, -c.integral_limit),
                             c.integral_limit)
        derivative = 0.0 if self._prev_error is None else (error - self._prev_error) / dt
        self._prev_error = error
        throttle_brake = c.kp * error + c.ki * self._integral + c.kd * derivative
        return np.array([steer, min(max(throttle_brake, -1.0), 1.0)], dtype=np.float32)

    def _steer(self, waypoints: np.ndarray, speed: float) -> float:
        """Pure pursuit toward the route point one lookahead distance from the rear axle."""
        c = self.config
        lookahead = min(max(c.lookahead_min_m + c.lookahead_gain_s * max(speed, 0.0),
                            c.lookahead_min_m), c.lookahead_max_m)
        pts = waypoints + np.array([c.rear_axle_to_centre_m, 0.0])     # rear-axle frame
        dist = np.hypot(pts[:, 0], pts[:, 1])
        beyond = np.flatnonzero((dist >= lookahead) & (pts[:, 0] > 0))
        if beyond.size:
            k = int(beyond[0])
            if k > 0 and dist[k - 1] < lookahead:
                # interpolate between the waypoints that bracket the lookahead circle
                t = (lookahead - dist[k - 1]) / max(dist[k] - dist[k - 1], 1e-9)
                target = pts[k - 1] + t * (pts[k] - pts[k - 1])
            else:
                target = pts[k]
        else:
            target = pts[-1]
        ld = max(math.hypot(target[0], target[1]), 1e-3)
        alpha = math.atan2(target[1], target[0])
        wheel = math.atan2(2.0 * c.wheelbase_m * math.sin(alpha), ld)
        # CARLA convention: positive steer turns right, i.e. against positive (left) wheel angle
        return min(max(-wheel / c.max_steer_rad, -1.0), 1.0)


def _max_curvature(points: np.ndarray, preview_m: float) -> float:
    """Largest |curvature| of circles through consecutive waypoint triples within preview."""
    dist = np.hypot(points[:, 0], points[:, 1])
    pts = points[dist <= preview_m]
    if len(pts) < 3:
        return 0.0
    a, b, c = pts[:-2], pts[1:-1], pts[2:]
    ab, bc, ca = (np.hypot(*(b - a).T), np.hypot(*(c - b).T), np.hypot(*(a - c).T))
    cross = np.abs((b[:, 0] - a[:, 0]) * (c[:, 1] - a[:, 1])
                   - (b[:, 1] - a[:, 1]) * (c[:, 0] - a[:, 0]))
    denom = ab * bc * ca
    valid = denom > 1e-9
    if not valid.any():
        return 0.0
    return float((2.0 * cross[valid] / denom[valid]).max())


@dataclass
class EpisodeStats:
    """Per-episode totals from which the comparison metrics are computed."""

    steps: int = 0
    episode_return: float = 0.0
    distance_m: float = 0.0
    speed_sum: float = 0.0
    abs_lateral_sum: float = 0.0
    reason: str = ''

    def add_step(self, reward: float, speed_mps: float, lateral_deviation_m: float,
                 distance_m: float) -> None:
        self.steps += 1
        self.episode_return += reward
        self.speed_sum += speed_mps
        self.abs_lateral_sum += abs(lateral_deviation_m)
        self.distance_m = distance_m


def summarize(episodes: list[EpisodeStats]) -> dict:
    """
    Comparison metrics over episodes (the same for the baseline and any learned policy).

    success_rate: share of episodes that completed the route; mean_speed_mps and
    mean_abs_lateral_deviation_m: over all steps; collisions_per_km: collisions per km driven;
    mean_return: mean episode return.
    """
    if not episodes:
        raise ValueError('no episodes to summarize')
    steps = sum(e.steps for e in episodes)
    km = sum(e.distance_m for e in episodes) / 1000.0
    collisions = sum(e.reason == 'collision' for e in episodes)
    reasons: dict[str, int] = {}
    for e in episodes:
        reasons[e.reason or 'unfinished'] = reasons.get(e.reason or 'unfinished', 0) + 1
    return {
        'episodes': len(episodes),
        'success_rate': sum(e.reason == 'route_complete' for e in episodes) / len(episodes),
        'mean_speed_mps': sum(e.speed_sum for e in episodes) / max(steps, 1),
        'mean_abs_lateral_deviation_m': sum(e.abs_lateral_sum for e in episodes) / max(steps, 1),
        'collisions_per_km': collisions / km if km > 0 else (math.inf if collisions else 0.0),
        'mean_return': sum(e.episode_return for e in episodes) / len(episodes),
        'mean_distance_m': 1000.0 * km / len(episodes),
        'mean_episode_steps': steps / len(episodes),
        'end_reasons': reasons,
    }


def evaluate(env, act, episodes: int, seed: int = 0, on_reset=None) -> dict:
    """
    Run ``episodes`` episodes of the gym env with ``act(obs, info) -> action``; return metrics.

    Episode ``i`` is reset with ``seed + i``, so two policies evaluated with the same seed face
    the same start points and traffic. ``on_reset`` is called before each episode.
    """
    if episodes < 1:
        raise ValueError(f'episodes must be >= 1, got {episodes}')
    stats = []
    for i in range(episodes):
        obs, info = env.reset(seed=seed + i)
        if on_reset is not None:
            on_reset()
        episode = EpisodeStats()
        while True:
            obs, reward, terminated, truncated, info = env.step(act(obs, info))
            episode.add_step(reward, info['speed_mps'], info['lateral_deviation_m'],
                             info['distance_m'])
            if terminated or truncated:
                episode.reason = info['reason']
                break
        stats.append(episode)
    return summarize(stats)
