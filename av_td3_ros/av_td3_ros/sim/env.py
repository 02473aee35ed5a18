"""
The embedded simulator as a gymnasium env, ``AvTd3Drive-v0``, with the observation of DESIGN §5.

Observation ``Dict(image=Box(0, 255, (4, 84, 84), uint8), vector=Box((53,), float32))`` built with
``observation.FrameStack`` and ``observation.build_vector`` (the policy node uses the same ones);
action ``Box(-1, 1, (2,))`` = [steer, throttle_brake] mapped by ``observation.action_to_control``;
reward and termination from ``reward.compute_reward``. The 84x84 frame is rendered directly (not an
800x600 frame shrunk), so the env runs thousands of steps per second.
"""

from __future__ import annotations

from typing import ClassVar

from av_td3_ros.driving.observation import (
    action_to_control, build_vector, FrameStack, ObservationSpec)
from av_td3_ros.sim.render import CameraConfig
from av_td3_ros.sim.reward import compute_reward, load_reward_weights, RewardResult, RewardWeights
from av_td3_ros.sim.world import Control, SCENARIO_NPCS, World
import gymnasium as gym
from gymnasium import spaces
import numpy as np


class AvTd3DriveEnv(gym.Env):
    """
    Drive one lap of a generated two-lane road from a forward camera, with optional traffic.

    Keyword arguments: ``scenario`` (0 empty, 1 light, 2 heavy traffic), ``camera``
    (:class:`CameraConfig` or a dict of its fields: the camera whose 84x84 gray image is observed),
    ``track_seed`` (the road; the same seed gives the road of ``sim_node`` with ``seed``),
    ``randomize_track`` (draw a new road every episode, a fraction of a second each; measured:
    docs/bench.md#design-measurements), ``step_limit`` (episode truncated with reason
    'time_limit', default 1000 = DESIGN §5; ``gym.make``'s own
    ``max_episode_steps`` adds gymnasium's TimeLimit wrapper instead, which truncates without
    setting the reason), ``reward_config`` (YAML path or :class:`RewardWeights`),
    ``render_mode`` ('rgb_array').
    ``reset(options={'scenario': s})`` switches the scenario from that episode on.
    """

    metadata: ClassVar[dict] = {'render_modes': ['rgb_array'], 'render_fps': 20}

    def __init__(self, scenario: int = 0, camera: CameraConfig | dict | None = None,
                 track_seed: int = 0, randomize_track: bool = False,
                 step_limit: int = 1000,
                 reward_config: str | RewardWeights | None = None,
                 dt: float = 0.05, render_mode: str | None = None,
                 obs_spec: ObservationSpec | None = None) -> None:
        if scenario not in SCENARIO_NPCS:
            raise ValueError(f'scenario must be one of {sorted(SCENARIO_NPCS)}, got {scenario}')
        if step_limit < 1:
            raise ValueError(f'step_limit must be >= 1, got {step_limit}')
        if render_mode not in (None, *self.metadata['render_modes']):
            raise ValueError(f'render_mode must be None or rgb_array, got {render_mode!r}')
        self.camera = CameraConfig(**camera) if isinstance(camera, dict) else (
            camera or CameraConfig())
        self.spec_obs = obs_spec or ObservationSpec()
        self.weights = reward_config if isinstance(reward_config, RewardWeights) else \
            load_reward_weights(reward_config)
        self.scenario = scenario
        self.track_seed = int(track_seed)
        self.randomize_track = randomize_track
        self.step_limit = int(step_limit)
        self.dt = float(dt)
        self.render_mode = render_mode
        size = self.spec_obs.image_size
        self.observation_space = spaces.Dict({
            'image': spaces.Box(0, 255, self.spec_obs.image_shape, np.uint8),
            'vector': spaces.Box(-np.inf, np.inf, (self.spec_obs.vector_dim,), np.float32),
        })
        self.action_space = spaces.Box(-1.0, 1.0, (2,), np.float32)
        self._frames = FrameStack(self.spec_obs.frame_stack, size)
        self.world: World | None = None
        self._step = 0
        self._return = 0.0

    # -- gymnasium API ------------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        options = options or {}
        if 'scenario' in options:
            if options['scenario'] not in SCENARIO_NPCS:
                raise ValueError(f'scenario must be one of {sorted(SCENARIO_NPCS)}, '
                                 f'got {options["scenario"]}')
            self.scenario = options['scenario']
        if self.world is None or self.randomize_track:
            road_seed = int(self.np_random.integers(2 ** 31)) if self.randomize_track \
                else self.track_seed
            self.world = World(seed=road_seed, scenario=self.scenario, dt=self.dt,
                               camera=self.camera)
        self.world.reset(scenario=self.scenario, rng=self.np_random)
        self._step = 0
        self._return = 0.0
        self._frames.reset()
        obs = self._observe()
        return obs, self._info(None)

    def step(self, action):
        if self.world is None:
            raise RuntimeError('call reset() before step()')
        action = np.asarray(action, dtype=np.float64).reshape(-1)
        if action.shape != (2,) or not np.isfinite(action).all():
            raise ValueError(f'action must be 2 finite numbers [steer, throttle_brake], '
                             f'got {action!r}')
        steer, throttle, brake = action_to_control(action)
        self.world.step(Control(throttle=throttle, steer=steer, brake=brake))
        self._step += 1
        obs = self._observe()
        result = compute_reward(self.world.measurements(self._step, self.step_limit),
                                self.weights)
        self._return += result.reward
        return obs, result.reward, result.terminated, result.truncated, self._info(result)

    def render(self):
        """RGB frame of the camera at its configured size (render_mode 'rgb_array')."""
        if self.render_mode != 'rgb_array' or self.world is None:
            return None
        return np.ascontiguousarray(self.world.render_bgra()[:, :, 2::-1])

    # -- helpers ------------------------------------------------------------------------------
    def _observe(self) -> dict:
        w = self.world
        ego = w.ego
        vector, _ = build_vector(w.route, ego.x, ego.y, ego.yaw, ego.speed, self.spec_obs,
                                 state=w.route_state)
        image = self._frames.push(w.render_gray(self.spec_obs.image_size))
        return {'image': image, 'vector': vector}

    def _info(self, result: RewardResult | None) -> dict:
        w = self.world
        rs = w.route_state
        return {
            'reward_terms': dict(result.terms) if result else {},
            'reason': result.reason if result else '',
            'is_success': bool(result and result.reason == 'route_complete'),
            'episode_step': self._step,
            'episode_return': self._return,
            'distance_m': w.distance_m,
            'route_length_m': w.route.length_m - w.start_progress,
            'lateral_deviation_m': rs.lateral_deviation,
            'heading_error_rad': rs.heading_error,
            'speed_mps': w.ego.speed,
            'collision': w.events.collision,
            'off_road_fraction': w.events.off_road_fraction,
            'wrong_way': w.events.wrong_way,
            'lane_invasions': w.events.lane_invasions,
            'gap_ahead_m': w.events.gap_ahead_m,
            'scenario': w.scenario,
        }
