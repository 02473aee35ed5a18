"""Pure pursuit + PID baseline: controller behaviour, metrics, laps on scenario 0, the CLI."""

import json
import math

from av_td3_ros.apps import baseline as cli
from av_td3_ros.driving.classical_controller import (
    EpisodeStats, evaluate, PurePursuitController, summarize)
from av_td3_ros.driving.observation import ObservationSpec
import av_td3_ros.sim  # noqa: F401 - registers AvTd3Drive-v0
import gymnasium as gym
import numpy as np
import pytest

SPEC = ObservationSpec()


def _vector(points, speed=8.0):
    v = np.zeros(SPEC.vector_dim, np.float32)
    v[0] = speed / SPEC.speed_scale
    v[3:] = (np.asarray(points) / SPEC.waypoint_scale).reshape(-1)
    return v


def _arc(radius, left=True, n=25):
    s = 2.0 * np.arange(1, n + 1)
    sign = 1.0 if left else -1.0
    return np.stack((radius * np.sin(s / radius), sign * radius * (1 - np.cos(s / radius))), 1)


def test_pure_pursuit_steers_toward_the_route_with_carla_sign():
    c = PurePursuitController()
    straight = np.stack((2.0 * np.arange(1, 26), np.zeros(25)), 1)
    assert c.act(_vector(straight))[0] == pytest.approx(0.0, abs=1e-6)
    assert c.act(_vector(_arc(20.0, left=True)))[0] < -0.1      # left turn: negative steer
    assert c.act(_vector(_arc(20.0, left=False)))[0] > 0.1
    offset = straight + np.array([0.0, -1.0])                    # route 1 m to the right
    assert c.act(_vector(offset))[0] > 0


def test_speed_control_accelerates_brakes_and_slows_for_curves_and_traffic():
    c = PurePursuitController()
    straight = np.stack((2.0 * np.arange(1, 26), np.zeros(25)), 1)
    assert c.act(_vector(straight, speed=2.0))[1] > 0.5
    c.reset()
    assert c.act(_vector(straight, speed=14.0))[1] < -0.5
    tight = c.target_speed(_arc(15.0))
    assert tight == pytest.approx(math.sqrt(c.config.max_lateral_accel_mps2 * 15.0), rel=0.05)
    assert c.target_speed(straight) == pytest.approx(c.config.target_speed_mps)
    assert c.target_speed(straight, gap_ahead_m=8.0) < 2.0
    with pytest.raises(ValueError, match='observation vector must be 53 finite numbers'):
        c.act(np.full(53, np.nan))


def test_summary_metrics():
    episodes = [EpisodeStats(steps=10, episode_return=5.0, distance_m=500.0, speed_sum=80.0,
                             abs_lateral_sum=2.0, reason='route_complete'),
                EpisodeStats(steps=30, episode_return=-5.0, distance_m=500.0, speed_sum=120.0,
                             abs_lateral_sum=6.0, reason='collision')]
    m = summarize(episodes)
    assert m['success_rate'] == 0.5 and m['collisions_per_km'] == pytest.approx(1.0)
    assert m['mean_speed_mps'] == pytest.approx(5.0)
    assert m['mean_abs_lateral_deviation_m'] == pytest.approx(0.2)
    assert m['mean_return'] == 0.0 and m['end_reasons'] == {'route_complete': 1, 'collision': 1}


def test_baseline_completes_laps_on_scenario_0():
    env = gym.make('AvTd3Drive-v0', scenario=0)
    controller = PurePursuitController()
    metrics = evaluate(env, lambda obs, info: controller.act(obs['vector']), episodes=8,
                       seed=100, on_reset=controller.reset)
    assert metrics['success_rate'] >= 0.9
    assert metrics['collisions_per_km'] == 0.0
    assert metrics['mean_abs_lateral_deviation_m'] < 0.4
    assert 7.0 < metrics['mean_speed_mps'] < 8.6
    assert metrics['mean_return'] > 300


def test_cli_prints_json_metrics(capsys):
    assert cli.main(['--episodes', '1', '--scenario', '1', '--seed', '4', '--json']) == 0
    metrics = json.loads(capsys.readouterr().out)
    for key in ('success_rate', 'mean_speed_mps', 'mean_abs_lateral_deviation_m',
                'collisions_per_km', 'mean_return'):
        assert key in metrics
    assert metrics['episodes'] == 1
    assert cli.main(['--episodes', '0']) == 2
