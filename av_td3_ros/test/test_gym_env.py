"""The gym env AvTd3Drive-v0: spaces, observation contract, determinism, info, options."""

import math

from av_td3_ros.driving.observation import build_vector, ObservationSpec, Route
import av_td3_ros.sim  # noqa: F401 - registers AvTd3Drive-v0
from av_td3_ros.sim.reward import TERM_NAMES
from av_td3_ros.sim.world import SCENARIO_NPCS
import gymnasium as gym
from gymnasium import spaces
import numpy as np
import pytest

INFO_KEYS = {'reward_terms', 'reason', 'is_success', 'episode_step', 'episode_return',
             'distance_m', 'lateral_deviation_m', 'heading_error_rad', 'speed_mps', 'collision',
             'off_road_fraction', 'wrong_way', 'lane_invasions', 'gap_ahead_m', 'scenario',
             'route_length_m'}


def _rollout(env, seed, steps, action_seed=0):
    rng = np.random.default_rng(action_seed)
    obs, _ = env.reset(seed=seed)
    frames, vectors, rewards = [obs['image']], [obs['vector']], []
    for _ in range(steps):
        action = np.array([rng.uniform(-0.15, 0.15), rng.uniform(0.2, 0.8)], np.float32)
        obs, reward, terminated, truncated, _ = env.step(action)
        frames.append(obs['image'])
        vectors.append(obs['vector'])
        rewards.append(reward)
        if terminated or truncated:
            break
    return np.array(frames), np.array(vectors), np.array(rewards)


@pytest.fixture(scope='module')
def env():
    e = gym.make('AvTd3Drive-v0', scenario=1)
    yield e
    e.close()


def test_spaces_are_the_design_observation_and_action(env):
    space = env.observation_space
    assert isinstance(space, spaces.Dict) and set(space.spaces) == {'image', 'vector'}
    assert space['image'] == spaces.Box(0, 255, (4, 84, 84), np.uint8)
    assert space['vector'].shape == (53,) and space['vector'].dtype == np.float32
    assert env.action_space == spaces.Box(-1.0, 1.0, (2,), np.float32)


def test_observation_contract_at_reset_and_step(env):
    obs, info = env.reset(seed=3)
    assert env.observation_space.contains(obs)
    image = obs['image']
    assert (image[:3] == 0).all() and image[3].std() > 5, 'zero-filled stack, newest last'
    assert set(info) == INFO_KEYS and info['episode_step'] == 0
    obs2, reward, terminated, truncated, info = env.step(np.array([0.0, 0.5]))
    np.testing.assert_array_equal(obs2['image'][2], image[3])      # the stack shifted
    assert set(info) == INFO_KEYS and tuple(info['reward_terms']) == TERM_NAMES
    assert reward == pytest.approx(sum(info['reward_terms'].values()))
    assert not (terminated or truncated) and info['reason'] == ''
    # the vector is what the policy node computes from the published waypoints + odometry
    world = env.unwrapped.world
    ego = world.ego
    expected, _ = build_vector(Route(world.route.xy.copy()), ego.x, ego.y, ego.yaw, ego.speed,
                               ObservationSpec())
    np.testing.assert_array_equal(obs2['vector'], expected)
    assert obs2['vector'][0] == pytest.approx(info['speed_mps'] / 30.0)
    assert obs2['vector'][1] == pytest.approx(info['lateral_deviation_m'] / 3.5)


def test_same_seed_same_observations_and_rewards():
    a = gym.make('AvTd3Drive-v0', scenario=1)
    b = gym.make('AvTd3Drive-v0', scenario=1)
    first = _rollout(a, seed=11, steps=120)
    second = _rollout(b, seed=11, steps=120)
    again = _rollout(a, seed=11, steps=120)        # a used env, re-seeded
    for x, y, z in zip(first, second, again, strict=True):
        np.testing.assert_array_equal(x, y)
        np.testing.assert_array_equal(x, z)
    other = _rollout(b, seed=12, steps=120)
    assert not np.array_equal(first[1][0], other[1][0]), 'another seed, another episode'


def test_scenario_option_and_truncation():
    env = gym.make('AvTd3Drive-v0', scenario=0, step_limit=15)
    env.reset(seed=0)
    assert len(env.unwrapped.world.traffic) == 0
    env.reset(seed=0, options={'scenario': 2})
    assert len(env.unwrapped.world.traffic) >= SCENARIO_NPCS[2] - 2
    for _ in range(15):
        assert not env.unwrapped.world.events.collision
        _, _, terminated, truncated, info = env.step(np.array([0.0, -1.0]))   # stand still
        assert info['reward_terms']['progress'] == 0.0
    assert truncated and not terminated and info['reason'] == 'time_limit'
    assert info['episode_step'] == 15
    with pytest.raises(ValueError, match='scenario must be one of'):
        env.reset(options={'scenario': 7})


def test_bad_actions_are_refused_with_the_reason(env):
    env.reset(seed=0)
    with pytest.raises(ValueError, match='action must be 2 finite numbers'):
        env.step(np.array([math.nan, 0.0]))
    with pytest.raises(ValueError, match='action must be 2 finite numbers'):
        env.step(np.array([0.1, 0.2, 0.3]))
    env.step(np.array([3.0, -7.0]))            # out of range is clipped like CARLA


def test_camera_option_and_rgb_render():
    env = gym.make('AvTd3Drive-v0', camera={'width': 320, 'height': 240, 'fov_deg': 70.0},
                   render_mode='rgb_array')
    obs, _ = env.reset(seed=1)
    frame = env.render()
    assert frame.shape == (240, 320, 3) and frame.dtype == np.uint8
    default = gym.make('AvTd3Drive-v0')
    obs_default, _ = default.reset(seed=1)
    assert np.abs(obs['image'][3].astype(int) - obs_default['image'][3].astype(int)).mean() > 3


def test_randomize_track_draws_a_new_road_each_episode():
    env = gym.make('AvTd3Drive-v0', randomize_track=True)
    env.reset(seed=1)
    first = env.unwrapped.world.road.length
    env.reset()
    assert env.unwrapped.world.road.length != first
