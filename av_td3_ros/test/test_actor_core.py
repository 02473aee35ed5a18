"""The actor's logic without ROS: observation path, pairing, exact stacks, watchdog, rate limit."""

import hashlib
import math

from av_td3_ros.driving.actor_core import (
    ActorCore, BRAKE_ACTION, classify_route, Feedback, InsertBudget, NO_POLICY_REASON,
    OdometryBuffer, Pose, pose_from_odometry, review_weights, RollingStats, route_from_points,
    stale_input_reason, twist_from_control, TWIST_FULL_THROTTLE)
from av_td3_ros.driving.observation import (
    build_vector, ObservationError, ObservationSpec, Route)
from av_td3_ros.driving.policy import Policy
from av_td3_ros.learning.config import TD3Config
from av_td3_ros.learning.networks import build_actor, build_cnn
import numpy as np
import pytest
import torch

torch.set_num_threads(1)
DT = 50_000_000          # 20 Hz camera, ns
STRAIGHT = [(2.0 * i, 0.0) for i in range(100)]
POSE = Pose(3.0, 0.4, 0.05, 6.0)


def make_policy(seed: int, spec: ObservationSpec | None = None) -> Policy:
    """Return a real actor_cnn + actor with seeded random weights."""
    torch.manual_seed(seed)
    config = TD3Config(obs=spec or ObservationSpec())
    return Policy(config, {'actor_cnn': build_cnn(config).state_dict(),
                           'actor': build_actor(config).state_dict()}, version=seed)


@pytest.fixture(scope='module')
def policy_a():
    return make_policy(1)


@pytest.fixture(scope='module')
def policy_b():
    return make_policy(2)


def frame(value: int, size: int = 84) -> np.ndarray:
    rng = np.random.default_rng(value)
    return rng.integers(0, 256, (size, size), dtype=np.uint8)


def expected_action(policy, frames, pose=POSE, route=STRAIGHT):
    """Compute the policy's action for these frames (newest last, zero padded in front)."""
    spec = policy.spec
    stack = np.zeros(spec.image_shape, np.uint8)
    for i, f in enumerate(frames[-spec.frame_stack:][::-1]):
        stack[spec.frame_stack - 1 - i] = f
    vector, _ = build_vector(Route(np.array(route)), *pose, spec)
    return policy.act(stack, vector), stack, vector


def feedback(stamp, step, episode=0, reward=0.0, terminated=False, truncated=False):
    return Feedback(stamp, episode, step, reward, terminated, truncated)


# -- inputs ------------------------------------------------------------------------------------

def test_pose_from_odometry_yaw_speed_and_refusals():
    half = math.pi / 8
    pose = pose_from_odometry((1.0, 2.0, 0.0), (0.0, 0.0, math.sin(half), math.cos(half)),
                              (3.0, 0.4, 0.0))
    assert pose.x == 1.0 and pose.y == 2.0
    assert pose.yaw == pytest.approx(math.pi / 4)
    assert pose.speed == 3.0                      # forward speed: twist in the vehicle frame
    with pytest.raises(ObservationError, match='NaN or inf'):
        pose_from_odometry((math.nan, 0.0, 0.0), (0, 0, 0, 1), (0, 0, 0))
    with pytest.raises(ObservationError, match='NaN or inf'):
        pose_from_odometry((0.0, 0.0, 0.0), (0, 0, 0, 1), (math.inf, 0, 0))
    with pytest.raises(ObservationError, match='zero quaternion'):
        pose_from_odometry((0.0, 0.0, 0.0), (0, 0, 0, 0), (0, 0, 0))


def test_route_from_points_refuses_unusable_paths():
    assert len(route_from_points(STRAIGHT)) == 100
    with pytest.raises(ObservationError, match='>= 2'):
        route_from_points([(0.0, 0.0)])
    with pytest.raises(ObservationError, match='>= 2'):
        route_from_points([])
    with pytest.raises(ObservationError, match='NaN'):
        route_from_points([(0.0, 0.0), (math.nan, 1.0)])


def test_odometry_buffer_pairs_by_stamp_and_waits_for_a_late_pose():
    buffer = OdometryBuffer(size=4)
    assert buffer.match(100) is None and buffer.latest is None and buffer.nearest(1) is None
    buffer.add(100, POSE)
    buffer.add(200, POSE._replace(x=9.0))
    assert buffer.match(100) == POSE
    assert buffer.match(300) is None               # its pose may still be on the way
    assert buffer.latest.x == 9.0
    buffer.add(400, POSE._replace(x=20.0))
    assert buffer.match(300).x == 9.0              # a later pose came: 300's was lost
    for stamp in (500, 600, 700):
        buffer.add(stamp, POSE)
    assert buffer.match(100).x == 20.0             # evicted: the nearest kept one answers
    assert buffer.match(700) == POSE


def test_odometry_buffer_pairs_a_slightly_early_pose_at_once():
    ms = 1_000_000
    buffer = OdometryBuffer()
    buffer.add(3 * ms, POSE._replace(x=3.0))
    assert buffer.match(5 * ms) is None            # one pose: its rate is unknown, wait
    buffer.add(23 * ms, POSE._replace(x=23.0))     # 50 Hz, 3 ms after the camera's phase
    assert buffer.match(30 * ms).x == 23.0         # 7 ms < 20 / 2: none to come is nearer
    assert buffer.match(35 * ms) is None           # 12 ms: the one at 43 may be nearer
    buffer.add(43 * ms, POSE._replace(x=43.0))
    assert buffer.match(35 * ms).x == 43.0
    assert buffer.match(50 * ms).x == 43.0
    assert buffer.match(53 * ms) is None           # exactly half: the next one may tie
    assert buffer.min_interval() == 20 * ms


# -- deploy mode -------------------------------------------------------------------------------

def test_deploy_action_is_the_policy_on_the_exact_stack_and_vector(policy_a):
    core = ActorCore(policy_a.spec, seed=0)
    core.set_policy(policy_a, 1)
    core.set_route(route_from_points(STRAIGHT))
    frames = [frame(i) for i in range(6)]
    for i, f in enumerate(frames):
        result = core.step(1_000 + i * DT, f, POSE)
        want, _, _ = expected_action(policy_a, frames[:i + 1])
        assert result.brake_reason is None
        np.testing.assert_allclose(result.action, want, atol=1e-6)
        assert result.transitions == [] and result.inference_s > 0


def test_deploy_without_policy_route_or_pose_brakes_and_says_why(policy_a):
    core = ActorCore(seed=0)
    result = core.step(0, frame(0), POSE)
    assert result.brake_reason.startswith('no route')
    np.testing.assert_array_equal(result.action, BRAKE_ACTION)
    core.set_route(route_from_points(STRAIGHT))
    result = core.step(DT, frame(1), POSE)
    assert result.brake_reason == NO_POLICY_REASON
    np.testing.assert_array_equal(result.action, BRAKE_ACTION)
    core.set_policy(policy_a, 1)
    assert core.step(2 * DT, frame(2), None).brake_reason == 'no odometry for this frame'
    forced = core.step(3 * DT, frame(3), POSE, brake_reason='stale odometry')
    assert forced.brake_reason == 'stale odometry' and forced.inference_s == 0
    assert core.step(4 * DT, frame(4), POSE).brake_reason is None


def test_step0_feedback_restarts_the_stack_whichever_arrives_first(policy_a):
    route = route_from_points(STRAIGHT)
    frames = [frame(i) for i in range(5)]
    # feedback of the new episode's first frame arrives before its image
    early = ActorCore(policy_a.spec)
    early.set_policy(policy_a, 1)
    early.set_route(route)
    for i in range(3):
        early.step(i * DT, frames[i], POSE)
    early.add_feedback(feedback(3 * DT, 0, episode=1))
    got = early.step(3 * DT, frames[3], POSE).action
    np.testing.assert_allclose(got, expected_action(policy_a, [frames[3]])[0], atol=1e-6)
    # ... and after it: the stack is rebuilt from that frame on
    late = ActorCore(policy_a.spec)
    late.set_policy(policy_a, 1)
    late.set_route(route)
    for i in range(4):
        late.step(i * DT, frames[i], POSE)
    late.add_feedback(feedback(3 * DT, 0, episode=1))
    got = late.step(4 * DT, frames[4], POSE).action
    np.testing.assert_allclose(got, expected_action(policy_a, frames[3:5])[0], atol=1e-6)


def test_a_stamp_jump_or_a_new_route_restarts_the_stack(policy_a):
    core = ActorCore(policy_a.spec, stamp_gap_reset_ns=10 * DT)
    core.set_policy(policy_a, 1)
    core.set_route(route_from_points(STRAIGHT))
    frames = [frame(i) for i in range(4)]
    core.step(100 * DT, frames[0], POSE)
    core.step(101 * DT, frames[1], POSE)
    back = core.step(5 * DT, frames[2], POSE).action          # simulator restarted
    np.testing.assert_allclose(back, expected_action(policy_a, [frames[2]])[0], atol=1e-6)
    core.step(6 * DT, frames[0], POSE)
    elsewhere = [(x, y + 50.0) for x, y in STRAIGHT]      # a route the vehicle is not on
    assert core.set_route(route_from_points(elsewhere), POSE).new_task
    after_route = core.step(7 * DT, frames[3], POSE).action
    np.testing.assert_allclose(
        after_route, expected_action(policy_a, [frames[3]], route=elsewhere)[0], atol=1e-6)
    core.set_route(route_from_points(STRAIGHT))            # back: a new task again
    core.step(8 * DT, frames[0], POSE)
    jump = core.step(30 * DT, frames[1], POSE).action           # stalled input
    np.testing.assert_allclose(jump, expected_action(policy_a, [frames[1]])[0], atol=1e-6)


def test_classify_route_continuations_and_new_tasks():
    current = route_from_points(STRAIGHT)                 # x = 0 .. 198 m along y = 0

    def change(points, pose=POSE):
        return classify_route(current, route_from_points(points), pose)

    assert classify_route(None, current, POSE) == (True, 'first route')
    assert change(STRAIGHT) == (False, 'the same route again')
    assert not change(STRAIGHT, Pose(0.0, 40.0, 0.0, 0.0)).new_task   # identical: whatever
    continuing = {
        'pruned behind the vehicle': STRAIGHT[1:],
        'refreshed from the vehicle, shifted samples': [(3.0 + 2.0 * i, 0.4) for i in range(90)],
        'resampled 1 m apart': [(0.5 + 1.0 * i, 0.0) for i in range(150)],
        'extended backwards': [(-20.0 + 2.0 * i, 0.0) for i in range(60)],
        'a shorter plan ahead': STRAIGHT[:10],
        'a re-route branching off ahead': STRAIGHT[:5] + [(8.0, 2.0 * i) for i in range(1, 20)],
    }
    for what, points in continuing.items():
        assert not change(points).new_task, what
    new_tasks = {
        'its start is 50.0 m': [(x, y + 50.0) for x, y in STRAIGHT],
        'its start is 30.0 m': [(x, 30.0 - 2.0 * i) for i, (x, _) in enumerate(STRAIGHT)],
        'against the current route': STRAIGHT[::-1],
        'the vehicle is': ([(x, y + 3.0) for x, y in STRAIGHT[:3]] +
                           [(6.0, 3.0 + 2.0 * i) for i in range(1, 20)]),
    }
    for why, points in new_tasks.items():
        result = change(points, POSE if why != 'the vehicle is' else Pose(60.0, 0.0, 0.0, 5.0))
        assert result.new_task and why in result.reason, (why, result)
    assert not change(new_tasks['the vehicle is'], None).new_task   # no pose: overlap decides
    assert change(STRAIGHT[50:], Pose(101.0, 0.0, 0.0, 0.0)).new_task is False
    jump = change(STRAIGHT[50:], POSE)      # its start 100 m ahead, but on the current route
    assert jump.new_task and 'the vehicle is' in jump.reason


def test_a_re_published_or_refreshed_route_keeps_the_stack(policy_a):
    core = ActorCore(policy_a.spec)
    core.set_policy(policy_a, 1)
    assert core.set_route(route_from_points(STRAIGHT), POSE).new_task
    frames = [frame(i) for i in range(6)]
    refreshed = [(1.0 + 2.0 * i, 0.0) for i in range(99)]
    for i, f in enumerate(frames):
        route = STRAIGHT if i % 2 else refreshed
        assert not core.set_route(route_from_points(route), POSE).new_task
        got = core.step((i + 1) * DT, f, POSE).action
        np.testing.assert_allclose(
            got, expected_action(policy_a, frames[:i + 1], route=route)[0], atol=1e-6)
    elsewhere = [(x, y + 50.0) for x, y in STRAIGHT]
    assert core.set_route(route_from_points(elsewhere), POSE).new_task
    got = core.step(7 * DT, frames[0], POSE).action
    np.testing.assert_allclose(
        got, expected_action(policy_a, frames[:1], route=elsewhere)[0], atol=1e-6)


def test_a_re_published_frame_is_not_stacked_twice(policy_a):
    core = ActorCore(policy_a.spec)
    core.set_policy(policy_a, 1)
    core.set_route(route_from_points(STRAIGHT))
    frames = [frame(0), frame(1)]
    core.step(DT, frames[0], POSE)
    first = core.step(2 * DT, frames[1], POSE).action
    again = core.step(2 * DT, frames[1], POSE).action
    np.testing.assert_array_equal(first, again)
    np.testing.assert_allclose(again, expected_action(policy_a, frames)[0], atol=1e-6)


def test_a_policy_with_another_spec_switches_the_observation(policy_a):
    legacy = make_policy(3, ObservationSpec(n_waypoints=10, image_scaling='minus_one_one'))
    small = make_policy(4, ObservationSpec(frame_stack=2, image_size=64))
    core = ActorCore(train=True, exploration_noise=0.0, seed=0)
    core.set_route(route_from_points(STRAIGHT))
    core.set_policy(policy_a, 1)
    _, out = run_episode(core, [frame(0), frame(1)], [0.0, 0.0])
    assert len(out) == 1
    core.set_policy(legacy, 3)                     # same frames, other vector: stack kept
    assert core.spec.vector_dim == 23
    result = core.step(2 * DT, frame(2), POSE)
    np.testing.assert_allclose(result.action, expected_action(legacy, [frame(i) for i in (
        0, 1, 2)])[0], atol=1e-6)
    assert core.add_feedback(feedback(2 * DT, 2)) == []    # no transition across the change
    core.set_policy(small, 4)                      # other frame shape: a new stack
    result = core.step(3 * DT, frame(3, 64), POSE)
    np.testing.assert_allclose(result.action, expected_action(small, [frame(3, 64)])[0],
                               atol=1e-6)


# -- train mode --------------------------------------------------------------------------------

def test_train_mode_without_weights_explores_uniformly_and_reproducibly():
    runs = []
    for _ in range(2):
        core = ActorCore(train=True, seed=7)
        core.set_route(route_from_points(STRAIGHT))
        runs.append(np.array([core.step(i * DT, frame(i), POSE).action for i in range(200)]))
    np.testing.assert_array_equal(runs[0], runs[1])
    actions = runs[0]
    assert actions.min() >= -1.0 and actions.max() <= 1.0
    assert actions.std(axis=0).min() > 0.5        # uniform on [-1, 1]: std 0.577


def test_train_noise_is_gaussian_around_the_policy_and_deploy_has_none(policy_a):
    route = route_from_points(STRAIGHT)
    train = ActorCore(train=True, exploration_noise=0.1, seed=3)
    deploy = ActorCore(seed=3)
    for core in (train, deploy):
        core.set_policy(policy_a, 1)
        core.set_route(route)
    f = frame(0)
    diffs = []
    for i in range(400):
        a = train.step(i * DT, f, POSE).action
        b = deploy.step(i * DT, f, POSE).action
        diffs.append(a - b)
    diffs = np.array(diffs)
    assert abs(diffs.mean()) < 0.02 and 0.08 < diffs.std() < 0.12
    want = expected_action(policy_a, [f] * 4)[0]
    np.testing.assert_allclose(b, want, atol=1e-6)


def run_episode(core, frames, rewards, order='image_first', skip_feedback=(), ends=None,
                episode=0, t0=0):
    """Drive ``core`` like a synchronous simulator; return (executed actions, transitions)."""
    actions, out = [], []
    for step, f in enumerate(frames):
        stamp = t0 + step * DT
        term, trunc = (ends if ends and step == len(frames) - 1 else (False, False))
        fb = feedback(stamp, step, episode, rewards[step], term, trunc)
        if order == 'feedback_first' and step not in skip_feedback:
            out += core.add_feedback(fb)
        result = core.step(stamp, f, POSE)
        actions.append(result.action)
        out += result.transitions
        if order == 'image_first' and step not in skip_feedback:
            out += core.add_feedback(fb)
    return actions, out


@pytest.mark.parametrize('order', ['image_first', 'feedback_first'])
def test_transitions_pair_each_frame_with_the_next_frames_feedback(policy_a, order):
    core = ActorCore(train=True, exploration_noise=0.1, seed=1)
    core.set_policy(policy_a, 5)
    core.set_route(route_from_points(STRAIGHT))
    frames = [frame(i) for i in range(7)]
    rewards = [0.0] + [0.1 * i for i in range(1, 7)]
    actions, out = run_episode(core, frames, rewards, order, ends=(False, True))
    assert [t.step for t in out] == list(range(6))
    vector, _ = build_vector(Route(np.array(STRAIGHT)), *POSE, core.spec)
    for t in out:
        s = t.step
        assert t.stamp == (s + 1) * DT and t.episode_id == 0 and t.policy_version == 5
        np.testing.assert_array_equal(t.obs_frames, expected_action(policy_a,
                                                                    frames[:s + 1])[1])
        np.testing.assert_array_equal(t.next_frame, frames[s + 1])
        np.testing.assert_array_equal(t.action, actions[s])
        np.testing.assert_array_equal(t.obs_vector, vector)
        np.testing.assert_array_equal(t.next_vector, vector)
        assert t.reward == pytest.approx(rewards[s + 1])
        assert not t.terminated and t.truncated == (s == 5)


def test_a_late_step0_feedback_still_gives_zero_padded_stacks(policy_a):
    core = ActorCore(train=True, seed=1)
    core.set_policy(policy_a, 1)
    core.set_route(route_from_points(STRAIGHT))
    old = [frame(100 + i) for i in range(5)]
    run_episode(core, old, [0.0] * 5, episode=3)
    new = [frame(i) for i in range(3)]
    _, out = run_episode(core, new, [0.0, 1.0, 2.0], episode=4, t0=10 * DT)
    assert [t.step for t in out] == [0, 1]
    np.testing.assert_array_equal(out[0].obs_frames[:3], 0)
    np.testing.assert_array_equal(out[0].obs_frames[3], new[0])
    np.testing.assert_array_equal(out[1].obs_frames[2:], np.stack(new[:2]))


def test_no_transition_across_a_lost_feedback(policy_a):
    core = ActorCore(train=True, seed=1)
    core.set_policy(policy_a, 1)
    core.set_route(route_from_points(STRAIGHT))
    frames = [frame(i) for i in range(10)]
    _, out = run_episode(core, frames, [0.0] * 10, skip_feedback={3})
    # 2->3 and 3->4 lack frame 3's feedback; the stacks of 4, 5, 6 would contain frame 3
    assert [t.step for t in out] == [0, 1, 7, 8]
    np.testing.assert_array_equal(out[2].obs_frames, np.stack(frames[4:8]))


def test_termination_ends_the_chain_and_the_next_episode_starts_clean(policy_a):
    core = ActorCore(train=True, seed=1)
    core.set_policy(policy_a, 1)
    core.set_route(route_from_points(STRAIGHT))
    _, out1 = run_episode(core, [frame(i) for i in range(3)], [0, -1, -5], ends=(True, False))
    _, out2 = run_episode(core, [frame(10 + i) for i in range(2)], [0, 1], episode=1,
                          t0=3 * DT)
    assert [(t.episode_id, t.step, t.terminated) for t in out1 + out2] == [
        (0, 0, False), (0, 1, True), (1, 0, False)]
    assert out1[1].reward == -5


@pytest.mark.parametrize('ends', [(True, False), (False, True)])
def test_nothing_follows_an_ended_frame_even_if_steps_continue(policy_a, ends):
    core = ActorCore(train=True, seed=1)
    core.set_policy(policy_a, 1)
    core.set_route(route_from_points(STRAIGHT))
    _, out = run_episode(core, [frame(i) for i in range(3)], [0.0] * 3, ends=ends)
    # a simulator that keeps counting steps in the same episode after the end
    out += core.step(3 * DT, frame(3), POSE).transitions
    out += core.add_feedback(feedback(3 * DT, 3))
    assert [(t.step, t.terminated, t.truncated) for t in out] == [
        (0, False, False), (1, *ends)]


def test_an_action_never_sent_makes_no_transition(policy_a):
    core = ActorCore(train=True, seed=1)
    core.set_policy(policy_a, 1)
    core.set_route(route_from_points(STRAIGHT))
    out = []
    for step in range(4):
        result = core.step(step * DT, frame(step), POSE)
        out += result.transitions + core.add_feedback(feedback(step * DT, step))
        if step == 1:
            core.withdraw_action(step * DT)
    assert [t.step for t in out] == [0, 2]


def test_deploy_mode_makes_no_transitions(policy_a):
    core = ActorCore(seed=1)
    core.set_policy(policy_a, 1)
    core.set_route(route_from_points(STRAIGHT))
    _, out = run_episode(core, [frame(i) for i in range(4)], [0.0] * 4)
    assert out == []


# -- decisions ---------------------------------------------------------------------------------

def test_stale_input_reason():
    assert stale_input_reason(10.0, None, 9.9, 0.5) == 'no camera image received yet'
    assert stale_input_reason(10.0, 9.9, None, 0.5) == 'no odometry received yet'
    assert 'no camera image within' in stale_input_reason(10.0, 9.0, 9.9, 0.5)
    reason = stale_input_reason(10.0, 9.9, 9.2, 0.5)
    assert reason == 'no odometry within input_timeout (0.5 s)'
    assert stale_input_reason(10.0, 9.6, 9.9, 0.5) is None


def test_insert_budget_holds_when_the_allowance_is_used_up():
    budget = InsertBudget()
    budget.on_published(1000)
    assert not budget.must_hold                   # no stats: unlimited
    budget.on_stats(2)
    assert not budget.must_hold
    budget.on_published()
    assert not budget.must_hold
    budget.on_published()
    assert budget.must_hold and budget.since_stats == 2
    budget.on_stats(1)                            # fresh stats renew the budget
    assert not budget.must_hold
    budget.on_stats(0)
    assert budget.must_hold
    budget.on_stats(-1)                           # the learner says: no limit
    budget.on_published(50)
    assert not budget.must_hold


def test_review_weights():
    data = b'weights'
    digest = hashlib.sha256(data).hexdigest()
    assert review_weights('safetensors', data, digest, 3, None) == (True, 'weights version 3')
    ok, why = review_weights('pickle', data, digest, 3, None)
    assert not ok and 'not supported' in why
    ok, why = review_weights('safetensors', data + b'x', digest, 3, None)
    assert not ok and 'sha256 mismatch' in why
    ok, why = review_weights('safetensors', data, digest.upper(), 3, (3, digest))
    assert not ok and 'already in use' in why
    ok, why = review_weights('safetensors', data, digest, 2, (5, 'other'))
    assert ok and 'older' in why


def test_twist_inverts_carla_twist_to_control():
    max_angle = 1.2
    linear, angular = twist_from_control(0.25, 0.6, 0.0, max_angle)
    # carla_twist_to_control: throttle = linear.x / 10, steer = -angular.z / max_steer_angle
    assert linear / TWIST_FULL_THROTTLE == pytest.approx(0.6)
    assert -angular / max_angle == pytest.approx(0.25)
    assert twist_from_control(0.3, 0.0, 0.7, max_angle) == (0.0, 0.0)    # zero Twist = brake
    assert twist_from_control(0.3, 0.0, 0.0, max_angle) == (0.0, 0.0)


def test_rolling_stats():
    stats = RollingStats(size=100)
    assert math.isnan(stats.percentile(50))
    for i in range(50):
        stats.add(10.0 + i * 0.1, float(i))
    assert stats.percentile(50) == pytest.approx(24.5)
    assert stats.rate(now=14.9, window=1.0) == pytest.approx(10.0, abs=1.0)
