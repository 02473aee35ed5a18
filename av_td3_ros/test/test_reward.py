"""Reward/termination: each term, end reasons, YAML weights and the balance of DESIGN §5."""

import dataclasses
import math

from av_td3_ros.sim.reward import (
    compute_reward, default_reward_config_path, jerk_magnitude, load_reward_weights,
    RewardWeights, StepMeasurements, TERM_NAMES)
import pytest
import yaml

W = load_reward_weights()
DT = 0.05


def _m(**kw) -> StepMeasurements:
    base = {'dt': DT, 'step': 10, 'max_episode_steps': 1000,
            'speed_mps': W.target_speed_mps, 'lateral_deviation_m': 0.0,
            'heading_error_rad': 0.0, 'progress_delta_m': W.target_speed_mps * DT}
    base.update(kw)
    return StepMeasurements(**base)


def test_packaged_yaml_is_the_complete_weight_set():
    data = yaml.safe_load(default_reward_config_path().read_text())
    assert set(data) == {f.name for f in dataclasses.fields(RewardWeights)}
    assert W.to_dict() == data


def test_terms_are_named_in_order_and_sum_to_the_reward():
    r = compute_reward(_m(lateral_deviation_m=0.7, heading_error_rad=0.1, jerk_mps3=3.0,
                          lane_invasions=1, gap_ahead_m=2.0, off_road_fraction=0.2), W)
    assert tuple(r.terms) == TERM_NAMES
    assert r.reward == pytest.approx(sum(r.terms.values()))
    for name in ('lateral', 'heading', 'comfort', 'lane_invasion', 'proximity', 'off_road'):
        assert r.terms[name] < 0, name


def test_good_driving_is_about_plus_072_per_step_and_standing_still_earns_nothing():
    good = compute_reward(_m(), W)
    still = compute_reward(_m(speed_mps=0.0, progress_delta_m=0.0), W)
    assert 0.6 < good.reward <= 1.0
    assert still.reward == pytest.approx(0.0)
    assert not (good.terminated or good.truncated or still.terminated)


def test_efficiency_peaks_at_target_and_progress_is_capped():
    rewards = [compute_reward(_m(speed_mps=v, progress_delta_m=v * DT), W).reward
               for v in (4.0, W.target_speed_mps, 12.0, 16.0)]
    assert rewards[1] == max(rewards)
    assert rewards[0] < rewards[1] and rewards[3] < rewards[2] < rewards[1]
    fast = compute_reward(_m(speed_mps=16.0, progress_delta_m=0.8), W)
    assert fast.terms['progress'] == pytest.approx(W.progress * W.target_speed_mps * DT)
    backwards = compute_reward(_m(speed_mps=3.0, heading_error_rad=math.pi,
                                  progress_delta_m=-0.15), W)
    assert backwards.terms['progress'] < 0 and backwards.terms['efficiency'] < 0


def test_lane_keeping_penalty_grows_with_error():
    values = [compute_reward(_m(lateral_deviation_m=d), W).terms['lateral']
              for d in (0.0, 0.5, 1.0, 2.0)]
    assert values == sorted(values, reverse=True) and values[0] == 0.0
    assert compute_reward(_m(heading_error_rad=-0.3), W).terms['heading'] < 0


@pytest.mark.parametrize('kw,reason', [
    ({'collision': True}, 'collision'),
    ({'lateral_deviation_m': -2.6}, 'lane_departure'),
    ({'lateral_deviation_m': 2.6}, 'lane_departure'),
    ({'route_complete': True}, 'route_complete'),
])
def test_terminations(kw, reason):
    r = compute_reward(_m(**kw), W)
    assert r.terminated and not r.truncated and r.reason == reason


def test_collision_wins_over_route_complete_and_gets_no_bonus():
    r = compute_reward(_m(collision=True, route_complete=True), W)
    assert r.reason == 'collision' and r.terms['completion'] == 0.0
    assert r.terms['collision'] == -W.collision
    done = compute_reward(_m(route_complete=True), W)
    assert done.terms['completion'] == W.completion


def test_truncation_at_the_step_limit_only_when_not_terminated():
    r = compute_reward(_m(step=1000), W)
    assert r.truncated and not r.terminated and r.reason == 'time_limit'
    r = compute_reward(_m(step=999), W)
    assert not r.truncated and r.reason == ''
    r = compute_reward(_m(step=1000, collision=True), W)
    assert r.terminated and not r.truncated


def test_balance_good_episode_beats_standing_still_and_crashing_early():
    steps = 750
    good = sum(compute_reward(_m(step=i), W).reward for i in range(1, steps + 1))
    still = sum(compute_reward(_m(step=i, speed_mps=0.0, progress_delta_m=0.0), W).reward
                for i in range(1, 1001))
    crash_early = sum(compute_reward(_m(step=i), W).reward for i in range(1, 50))
    crash_early += compute_reward(_m(step=50, collision=True), W).reward
    assert good > 400 and still == pytest.approx(0.0)
    assert crash_early < good / 10
    # no single event dwarfs an episode of good driving
    for event in (W.collision, W.departure, W.completion):
        assert event < good / 20


def test_weights_from_yaml_override_and_refusals(tmp_path):
    path = tmp_path / 'r.yaml'
    path.write_text('collision: 25\nprogress: 0.5\n')
    w = load_reward_weights(path)
    assert w.collision == 25 and w.progress == 0.5 and w.lateral == W.lateral
    path.write_text('colision: 25\n')
    with pytest.raises(ValueError, match='unknown reward weight keys'):
        load_reward_weights(path)
    path.write_text('collision: -1\n')
    with pytest.raises(ValueError, match='collision must be finite and >= 0'):
        load_reward_weights(path)
    path.write_text('[1, 2]\n')
    with pytest.raises(ValueError, match='must be a mapping'):
        load_reward_weights(path)
    with pytest.raises(ValueError, match='cannot read reward config'):
        load_reward_weights(tmp_path / 'missing.yaml')


def test_bad_measurements_are_refused_with_the_name():
    with pytest.raises(ValueError, match='lateral_deviation_m is not finite'):
        compute_reward(_m(lateral_deviation_m=math.nan), W)
    with pytest.raises(ValueError, match='gap_ahead_m'):
        compute_reward(_m(gap_ahead_m=-1.0), W)


def test_jerk_magnitude():
    assert jerk_magnitude((0.0, 0.0), (3.0, 4.0), 0.5) == pytest.approx(10.0)
    assert compute_reward(_m(jerk_mps3=1e3), W).terms['comfort'] == pytest.approx(-W.comfort)
