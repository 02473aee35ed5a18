"""
Reward and termination of DESIGN §5: one pure function shared by every simulator backend.

A backend (the embedded simulator, the CARLA episode node) measures a few backend-neutral
quantities per step (:class:`StepMeasurements`); :func:`compute_reward` turns them into the reward,
its named terms, and the termination/truncation decision. Weights come from YAML
(``config/reward.yaml``; see ``docs/simulator.md`` for why each term has its weight).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
import math
from pathlib import Path

import yaml

# Order of the terms in RewardResult.terms and in StepFeedback.reward_term_names.
TERM_NAMES = ('progress', 'efficiency', 'lateral', 'heading', 'comfort', 'collision',
              'departure', 'off_road', 'wrong_way', 'lane_invasion', 'proximity', 'completion')

# Episode end reasons (StepFeedback.reason); '' while the episode runs.
REASON_COLLISION = 'collision'
REASON_LANE_DEPARTURE = 'lane_departure'
REASON_ROUTE_COMPLETE = 'route_complete'
REASON_TIME_LIMIT = 'time_limit'

_PACKAGE_ROOT = Path(__file__).resolve().parents[2]   # av_td3_ros/av_td3_ros/sim/reward.py


@dataclass(frozen=True)
class RewardWeights:
    """Weights and scales of the reward terms; penalties are given as positive magnitudes."""

    target_speed_mps: float
    progress: float
    efficiency: float
    lateral: float
    lateral_scale_m: float
    heading: float
    heading_scale_rad: float
    comfort: float
    jerk_scale_mps3: float
    collision: float
    departure: float
    max_lateral_deviation_m: float
    off_road: float
    wrong_way: float
    lane_invasion: float
    proximity: float
    proximity_headway_s: float
    proximity_min_gap_m: float
    completion: float

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f'reward weight {f.name} must be a number, got {value!r}')
            if not math.isfinite(value) or value < 0:
                raise ValueError(f'reward weight {f.name} must be finite and >= 0, got {value}')
        for name in ('target_speed_mps', 'lateral_scale_m', 'heading_scale_rad',
                     'jerk_scale_mps3', 'max_lateral_deviation_m', 'proximity_min_gap_m'):
            if getattr(self, name) <= 0:
                raise ValueError(f'reward scale {name} must be > 0, got {getattr(self, name)}')

    @classmethod
    def from_dict(cls, data: dict) -> RewardWeights:
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f'unknown reward weight keys: {unknown}')
        missing = sorted(names - set(data))
        if missing:
            raise ValueError(f'missing reward weight keys: {missing}')
        return cls(**data)

    def to_dict(self) -> dict:
        return asdict(self)


def default_reward_config_path() -> Path:
    """Return the packaged ``reward.yaml`` (source tree, or the installed share directory)."""
    candidates = [_PACKAGE_ROOT / 'config' / 'reward.yaml']
    try:  # installed without the source tree: <prefix>/share/av_td3_ros/config
        from ament_index_python.packages import get_package_share_directory
        candidates.append(Path(get_package_share_directory('av_td3_ros')) / 'config'
                          / 'reward.yaml')
    except (ImportError, LookupError):  # ament_index absent or package not indexed
        pass
    for path in candidates:
        if path.is_file():
            return path
    raise FileNotFoundError(f'packaged reward.yaml not found (looked in {candidates})')


def _read_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f'cannot read reward config {path}: {exc}') from exc
    if not isinstance(data, dict):
        raise ValueError(f'reward config {path} must be a mapping of weight names to numbers')
    return data


def load_reward_weights(path: str | Path | None = None) -> RewardWeights:
    """
    Load the weights: the packaged defaults, overridden by the keys of ``path`` if given.

    Raises ValueError with the reason for an unreadable file, unknown keys or bad values.
    """
    data = _read_yaml(default_reward_config_path())
    if path:
        override = _read_yaml(Path(path))
        unknown = sorted(set(override) - set(data))
        if unknown:
            raise ValueError(f'unknown reward weight keys in {path}: {unknown}')
        data.update(override)
    return RewardWeights.from_dict(data)


@dataclass(frozen=True)
class StepMeasurements:
    """
    What a backend measured over one control step; the only input of the reward.

    Lateral deviation, heading error and progress come from ``observation.Route.locate`` on the
    published route, so every backend measures them the same way.
    """

    dt: float                       # step length, s
    step: int                       # index of the frame reached (1 after the first control)
    max_episode_steps: int          # truncation limit
    speed_mps: float                # signed speed, forward positive
    lateral_deviation_m: float      # from the route, positive = left of it
    heading_error_rad: float        # vehicle yaw minus route heading, wrapped
    progress_delta_m: float         # route progress gained during this step
    jerk_mps3: float = 0.0          # |change of the acceleration vector| / dt
    collision: bool = False         # any collision during this step
    off_road_fraction: float = 0.0  # share of the car's width outside the road, 0..1
    wrong_way: bool = False         # driving against the direction of the lane it is in
    lane_invasions: int = 0         # lane markings newly crossed during this step
    gap_ahead_m: float = math.inf   # bumper-to-bumper gap to the vehicle ahead in its path
    route_complete: bool = False    # reached the end of the route

    def validate(self) -> None:
        """Raise ValueError naming the first quantity that is not usable."""
        for name in ('dt', 'speed_mps', 'lateral_deviation_m', 'heading_error_rad',
                     'progress_delta_m', 'jerk_mps3', 'off_road_fraction'):
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f'reward input {name} is not finite: {getattr(self, name)}')
        if self.dt <= 0:
            raise ValueError(f'reward input dt must be > 0, got {self.dt}')
        if math.isnan(self.gap_ahead_m) or self.gap_ahead_m < 0:
            raise ValueError(f'reward input gap_ahead_m must be >= 0, got {self.gap_ahead_m}')
        if self.lane_invasions < 0 or self.step < 0 or self.max_episode_steps < 1:
            raise ValueError('reward inputs lane_invasions, step must be >= 0 and '
                             'max_episode_steps >= 1')


@dataclass(frozen=True)
class RewardResult:
    """The reward of one step, its named terms (summing to it) and how the episode goes on."""

    reward: float
    terms: dict[str, float]
    terminated: bool
    truncated: bool
    reason: str


def jerk_magnitude(prev_accel: tuple[float, float], accel: tuple[float, float],
                   dt: float) -> float:
    """Return |a - a_prev| / dt for (longitudinal, lateral) accelerations in m/s^2."""
    return math.hypot(accel[0] - prev_accel[0], accel[1] - prev_accel[1]) / dt


def compute_reward(m: StepMeasurements, w: RewardWeights) -> RewardResult:
    """
    Compute the reward and termination of one step (pure: same inputs, same result).

    Terms (all per step): progress along the route (capped at the target speed), efficiency
    (speed along the lane toward the target), lane keeping (lateral, heading), comfort (jerk),
    safety (collision, departure, off-road, wrong way, lane invasion, proximity) and a route
    completion bonus. Terminated on collision, |lateral deviation| > limit or route complete;
    truncated at ``max_episode_steps`` otherwise.
    """
    m.validate()
    target = w.target_speed_mps
    v_lane = m.speed_mps * math.cos(m.heading_error_rad)
    if v_lane <= target:
        efficiency = max(v_lane / target, -1.0)
    else:
        efficiency = max(1.0 - (v_lane - target) / target, -1.0)
    departed = abs(m.lateral_deviation_m) > w.max_lateral_deviation_m
    safe_gap = max(w.proximity_min_gap_m, w.proximity_headway_s * max(m.speed_mps, 0.0))
    terms = {
        'progress': w.progress * min(m.progress_delta_m, target * m.dt),
        'efficiency': w.efficiency * efficiency,
        'lateral': -w.lateral * min(abs(m.lateral_deviation_m) / w.lateral_scale_m, 1.0),
        'heading': -w.heading * min(abs(m.heading_error_rad) / w.heading_scale_rad, 1.0),
        'comfort': -w.comfort * min(abs(m.jerk_mps3) / w.jerk_scale_mps3, 1.0),
        'collision': -w.collision if m.collision else 0.0,
        'departure': -w.departure if departed else 0.0,
        'off_road': -w.off_road * min(max(m.off_road_fraction, 0.0), 1.0),
        'wrong_way': -w.wrong_way if m.wrong_way else 0.0,
        'lane_invasion': -w.lane_invasion * m.lane_invasions,
        'proximity': -w.proximity * max(0.0, 1.0 - m.gap_ahead_m / safe_gap),
        'completion': 0.0,
    }
    if m.collision:
        reason = REASON_COLLISION
    elif departed:
        reason = REASON_LANE_DEPARTURE
    elif m.route_complete:
        reason = REASON_ROUTE_COMPLETE
        terms['completion'] = w.completion
    else:
        reason = ''
    terminated = bool(reason)
    truncated = not terminated and m.step >= m.max_episode_steps
    if truncated:
        reason = REASON_TIME_LIMIT
    return RewardResult(reward=float(sum(terms.values())), terms=terms, terminated=terminated,
                        truncated=truncated, reason=reason)
