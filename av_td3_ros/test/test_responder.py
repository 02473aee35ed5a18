"""The policy node's per-frame decisions without ROS: publish or hold, release, watchdog."""

import time

from av_td3_ros.driving.actor_core import ActorCore, Pose, route_from_points
from av_td3_ros.driving.pairing import Frame, InputPairing
from av_td3_ros.driving.policy_loader import StagedPolicy
from av_td3_ros.driving.responder import Responder
import numpy as np

MS = 1_000_000
POSE = Pose(3.0, 0.0, 0.0, 5.0)
GRAY = np.zeros((84, 84), np.uint8)


class FixedPolicy:
    """A policy stand-in with a fixed action (the networks are tested elsewhere)."""

    def __init__(self, spec, action) -> None:
        self.spec, self.action = spec, np.array(action, np.float32)

    def act(self, image, vector):
        return self.action


class Log:
    """Collects the responder's log lines."""

    def __init__(self) -> None:
        self.lines = []

    def warning(self, text, **_) -> None:
        self.lines.append(('warning', text))

    def info(self, text, **_) -> None:
        self.lines.append(('info', text))


def responder(train: bool = False):
    core = ActorCore(train=train, exploration_noise=0.0, seed=0)
    core.set_route(route_from_points([(2.0 * i, 0.0) for i in range(50)]))
    sent, transitions, log = [], [], Log()
    run = Responder(core, InputPairing(), 0.5, lambda stamp, action: (stamp, tuple(action)),
                    sent.append, transitions.append, log)
    run.brake_reason = 'waiting for input'
    return run, sent, transitions, log


def frame_now(run, stamp, now):
    run.pairing.on_odometry(stamp, POSE, now)
    return run.pairing.on_image(Frame(stamp, GRAY, now))


def test_deploy_publishes_the_policy_action_and_logs_brake_changes():
    run, sent, _, log = responder()
    run.answer(frame_now(run, 50 * MS, 1.0), 1.0)
    assert sent[-1] == (50 * MS, (0.0, -1.0)) and 'no checkpoint' in run.brake_reason
    staged = StagedPolicy(FixedPolicy(run.core.spec, [0.25, 0.5]), 3, 'p', 3, 'ab')
    run.answer(frame_now(run, 100 * MS, 1.05), 1.05, staged)    # swapped in before it
    assert sent[-1] == (100 * MS, (0.25, 0.5)) and run.brake_reason is None
    assert run.policy_info is staged and run.stats.counts['frames_answered'] == 2
    assert [level for level, _ in log.lines] == ['warning', 'info']
    run.on_image(100 * MS, GRAY, 1.06)          # the same frame re-published
    assert sent[-1] == (100 * MS, (0.25, 0.5)) and run.stats.counts['frames_repeated'] == 1


def test_a_repeated_frame_gets_its_control_again_and_swaps_in_a_staged_policy():
    run, sent, _, _ = responder()
    run.use_policy(StagedPolicy(FixedPolicy(run.core.spec, [0.25, 0.5]), 3, 'p', 3, 'ab'))
    run.on_odometry(100 * MS, POSE)
    run.on_image(100 * MS, GRAY, time.monotonic())
    assert sent == [(100 * MS, (0.25, 0.5))]
    staged = StagedPolicy(FixedPolicy(run.core.spec, [0.1, 0.2]), 4, 'q', 4, 'cd')
    run.on_image(100 * MS, GRAY, time.monotonic(), staged)
    # the answer stays the one the frame got; the next frame gets the new policy
    assert sent[-1] == (100 * MS, (0.25, 0.5)) and run.policy_info is staged
    run.on_odometry(150 * MS, POSE)
    run.on_image(150 * MS, GRAY, time.monotonic())
    assert sent[-1] == (150 * MS, (0.1, 0.2)) and run.stats.counts['frames_answered'] == 2


def test_a_staged_policy_is_not_lost_when_no_frame_is_answered():
    run, sent, _, _ = responder()
    staged = StagedPolicy(FixedPolicy(run.core.spec, [0.1, 0.2]), 1, 'p', 1, 'cd')
    run.answer(None, 1.0, staged)
    assert run.core.policy is staged.policy and not sent


def test_train_mode_holds_the_control_until_fresh_stats_allow_it():
    run, sent, _, _ = responder(train=True)
    run.use_policy(StagedPolicy(FixedPolicy(run.core.spec, [0.0, 0.3]), 1, 'p', 1, 'ef'))
    run.on_stats(0, 1.0)                                       # no transitions allowed
    run.answer(frame_now(run, 50 * MS, 1.0), 1.0)
    assert not sent and run.held[0] == 50 * MS
    run.on_tick(1.8, 0)                                         # holding: no watchdog brake
    assert not sent
    run.on_stats(10, 2.0)
    assert sent == [(50 * MS, (0.0, 0.3))] and run.held is None and run.hold_ended == 2.0
    run.on_tick(2.1, 0)                  # the hold restarted the watchdog's clock: no brake
    assert len(sent) == 1


def test_the_watchdog_answers_a_late_frame_then_brakes_on_stale_input():
    run, sent, _, log = responder()
    run.pairing.on_odometry(0, POSE, 1.0)
    assert run.pairing.on_image(Frame(500 * MS, GRAY, 1.0)) is None   # its odometry is late
    run.on_tick(1.2, 77)
    assert sent[0][0] == 500 * MS                              # answered with the nearest
    assert any('sync_timeout' in text for _, text in log.lines)
    run.on_tick(1.8, 88)                                        # nothing for 0.8 s > 0.5 s
    assert sent[-1] == (88, (0.0, -1.0)) and run.stats.counts['watchdog_brakes'] == 1


def test_the_initial_checkpoint_loads_or_says_why_the_vehicle_is_held(tmp_path):
    import torch

    from av_td3_ros.formats.policy_export import export_td3_policy
    from av_td3_ros.learning.config import TD3Config
    from av_td3_ros.learning.td3 import TD3
    torch.manual_seed(0)
    good = tmp_path / 'p.safetensors'
    good.write_bytes(export_td3_policy(TD3(TD3Config())))
    run, _, _, log = responder()
    log.error = lambda text, **_: log.lines.append(('error', text))
    run.load_initial(str(tmp_path / 'missing.pth'), 'cpu')
    assert 'missing.pth failed to load' in run.load_error
    assert log.lines[-1][0] == 'error' and run.core.policy is None
    run.load_initial(str(good), 'cpu')
    assert run.load_error == '' and run.core.policy is not None
    assert run.policy_info.source == str(good) and log.lines[-1][0] == 'info'
