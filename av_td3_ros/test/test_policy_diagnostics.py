"""The policy node's diagnostics, without ROS: level, message and values."""

from av_td3_ros.driving.actor_core import InsertBudget, NO_POLICY_REASON
from av_td3_ros.driving.policy_diagnostics import (
    ActorStats, COUNTERS, HOLD_MESSAGE, policy_status, policy_values)
from av_td3_ros.driving.policy_loader import StagedPolicy


def test_levels_and_messages():
    assert policy_status(False, None, False, True, '') == ('OK', 'driving')
    assert policy_status(True, 'no route yet', True, True, '') == ('WARN', HOLD_MESSAGE)
    level, message = policy_status(False, 'no odometry for this frame', False, True, '')
    assert (level, message) == ('ERROR', 'full brake: no odometry for this frame')
    # deploy mode without a policy: the cause behind any other reason is said too
    _, message = policy_status(False, 'no route yet', False, False, 'x.pth failed to load')
    assert message == f'full brake: no route yet; x.pth failed to load; {NO_POLICY_REASON}'
    _, message = policy_status(False, NO_POLICY_REASON, False, False, '')
    assert message == f'full brake: {NO_POLICY_REASON}'
    _, message = policy_status(False, 'no route yet', True, False, '')   # train: explores
    assert message == 'full brake: no route yet'


def test_values_count_and_time_what_happened():
    stats = ActorStats()
    for i in range(10):
        stats.image.add(100.0 + i * 0.1)
        stats.answered(100.0 + i * 0.1, 100.0 + i * 0.1 - 0.004, 0.002)
    stats.counts['images_refused'] += 2
    budget = InsertBudget()
    budget.on_stats(5)
    budget.on_published(2)
    info = StagedPolicy(policy=None, version=3, source='/m/p.pth', total_it=900, sha256='ab')
    values = policy_values(stats, 101.0, train=True, control_output='twist', policy_info=info,
                           load_error='', policy_version=3, budget=budget)
    assert set(COUNTERS) <= set(values)
    assert values['mode'] == 'train' and values['control_output'] == 'twist'
    assert values['frames_answered'] == '10' and values['images_refused'] == '2'
    assert values['image_rate_hz'] == '2.00'                  # 10 in the last 5 s
    assert values['image_to_control_ms_p50'] == '4.00'
    assert values['inference_ms_p99'] == '2.00'
    assert (values['checkpoint'], values['checkpoint_total_it']) == ('/m/p.pth', '900')
    assert (values['insert_allowance'], values['transitions_since_stats']) == ('5', '2')
    empty = policy_values(ActorStats(), 0.0, train=False, control_output='native',
                          policy_info=None, load_error='bad file', policy_version=0,
                          budget=InsertBudget())
    assert empty['checkpoint'] == 'bad file' and empty['inference_ms_p50'] == 'nan'
