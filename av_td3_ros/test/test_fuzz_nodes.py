"""
Malformed messages over DDS to running nodes (issue 14): tens of seeded cases per type.

The ROS-free functions get >= 1000 cases each in test_fuzz_inputs.py; here a real trainer node
and a real policy node receive malformed transitions, images, odometry, paths and policy
weights. Each must keep running, still answer a good message afterwards, and keep its state
(trainer buffer, policy version, route).
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
import time

from av_td3_interfaces.msg import PolicyWeights, Transition
from av_td3_interfaces.srv import SaveCheckpoint
from av_td3_ros.driving.observation import ObservationSpec
from av_td3_ros.driving.policy import Policy
from av_td3_ros.formats.policy_export import export_policy_bytes
from av_td3_ros.learning.config import TD3Config
from av_td3_ros.ros.trainer_node import TrainerNode
import numpy as np
import pytest
from rclpy.serialization import serialize_message
from ros_harness import episode_transitions, overrides, RosHarness, wait_for
from safetensors.torch import save as safetensors_save
# the policy node's vehicle side and checkpoints, shared with its own tests
from test_policy_node import (  # noqa: F401 (pytest fixtures)
    checkpoints, expected, image_msg, ros, ROUTE, scene, start, vehicle)
import torch

pytestmark = pytest.mark.ros
SEED = 1415
N = 30   # malformed messages per type


# -- trainer ---------------------------------------------------------------------------------

def _malformed_transitions(rng: np.random.Generator, spec: ObservationSpec, n: int):
    """Yield (msg, kind): n transitions broken in one of eight ways each."""
    good = list(episode_transitions(spec, n, seed=int(rng.integers(1 << 30)), actor_id='bad'))
    for i, msg in enumerate(good):
        kind = i % 8
        if kind == 0:
            msg.frame_height = int(rng.choice([0, 35, 84, 65535]))
        elif kind == 1:
            msg.obs_frames = bytes(msg.obs_frames)[:int(rng.integers(0, len(msg.obs_frames)))]
        elif kind == 2:
            msg.next_vector = msg.next_vector[:int(rng.integers(0, spec.vector_dim))]
        elif kind == 3:
            msg.reward = float(rng.choice([math.nan, math.inf, -math.inf]))
        elif kind == 4:
            msg.action = [float(rng.choice([1.5, -3.0, 1e6])), 0.0]
        elif kind == 5:
            msg.action = [0.0, math.nan]
        elif kind == 6:
            msg.action = [0.1, 0.2, 0.3]
        else:
            msg.reward = 1e39    # finite in float64, inf in the buffer's float32
        yield msg, kind


def test_trainer_node_refuses_malformed_transitions_and_keeps_learning(tmp_path):
    torch.set_num_threads(1)
    rng = np.random.default_rng(SEED)
    harness = RosHarness()
    try:
        node = harness.add(TrainerNode(context=harness.context, parameter_overrides=overrides({
            'features_dim': 16, 'hidden': [16, 16], 'batch_size': 4, 'learning_starts': 8,
            'buffer_capacity': 256, 'num_threads': 1, 'obs.image_size': 36,
            'mode': 'synchronous', 'samples_per_insert': 4.0, 'checkpoint_every': 0,
            'checkpoint_dir': str(tmp_path), 'stats_period': 0.2})))
        spec = node.config.obs
        publisher = harness.client.create_publisher(Transition, '/av_td3/transitions', 1000)
        wait_for(lambda: publisher.get_subscription_count() > 0, 20, 'the trainer subscription')
        good = list(episode_transitions(spec, 12, seed=1, actor_id='good'))
        bad = list(_malformed_transitions(rng, spec, 8 * N))
        sent_good = 0
        for i, (msg, _) in enumerate(bad):
            publisher.publish(msg)
            if i % 20 == 19 and sent_good < len(good):   # good ones in between still go in
                publisher.publish(good[sent_good])
                sent_good += 1
        for msg in good[sent_good:]:
            publisher.publish(msg)
        wait_for(lambda: node.learner.stats().buffer_size == len(good), 30,
                 f'{len(good)} good transitions in the buffer')
        time.sleep(1.0)   # nothing else arrives late: the bad ones were dropped, not queued
        stats = node.learner.stats()
        assert stats.buffer_size == stats.transitions == len(good), stats
        assert stats.total_it > 0   # it learns from the good ones
        rewards = node.learner.replay._reward[:len(good)]
        actions = node.learner.replay._action[:len(good)]
        assert np.isfinite(rewards).all() and (np.abs(actions) <= 1.0).all()
        answer = harness.call(SaveCheckpoint, '/av_td3_trainer/save_checkpoint',
                              SaveCheckpoint.Request(path='after_fuzz.pth'))
        assert answer.success and answer.total_it >= stats.total_it
    finally:
        harness.shutdown()


# -- policy node -----------------------------------------------------------------------------

def _bad_images(rng: np.random.Generator, good, n: int) -> list:
    """Return n malformed camera frames: lying fields, unknown encodings, cut or bent bytes."""
    serialized = serialize_message(good)
    out = []
    for i in range(n):
        kind = i % 5
        if kind == 0:       # 65535 x 65535 claimed, a few bytes sent
            msg = image_msg(np.zeros((4, 4, 4), np.uint8), 'bgra8')
            msg.width = msg.height = 65535
            msg.step = 65535 * 4
            out.append(msg)
        elif kind == 1:     # unknown encoding
            msg = image_msg(np.zeros((8, 8, 3), np.uint8), 'bgr8')
            msg.encoding = str(['yuv422', '16UC1', 'BGR8', 'jpeg', ''][int(rng.integers(5))])
            out.append(msg)
        elif kind == 2:     # step smaller than a row
            msg = image_msg(np.zeros((8, 8, 3), np.uint8), 'bgr8')
            msg.step = int(rng.integers(1, 24))
            out.append(msg)
        elif kind == 3:     # truncated bytes
            out.append(serialized[:int(rng.integers(4, len(serialized) - 1))])
        else:               # a length field claiming 4 GB
            mutated = bytearray(serialized)
            struct.pack_into('<I', mutated, int(rng.choice([12, 20, 24])), 0xFFFFFFF0)
            out.append(bytes(mutated))
    return out


BAD_POSES = [(math.nan, 0.0, 0.0, 1.0), (3.0, math.inf, 0.0, 1.0), (1e300, 0.0, 0.0, 1.0),
             (3.0, 0.4, 0.05, 1e39), (3.0, 0.4, math.nan, 6.0), (-1e30, 1e30, 0.0, 0.0)]


def _fixtures(request) -> tuple:
    return tuple(request.getfixturevalue(name)
                 for name in ('start', 'vehicle', 'scene', 'checkpoints'))


def test_policy_node_refuses_malformed_inputs_and_keeps_driving(request):
    start, vehicle, scene, checkpoints = _fixtures(request)   # noqa: F811 (test_policy_node's)
    rng = np.random.default_rng(SEED + 1)
    messages, gray = scene
    start(checkpoint_path='a.pth')
    want = expected(checkpoints['policy_a'].act, gray)
    vehicle.drive_until(messages['mono8'], want)
    refused_stamps = []
    for image in _bad_images(rng, messages['bgr8'], N):
        refused_stamps.append(vehicle.send(image))   # one by one: the camera QoS is depth 1
        time.sleep(0.05)
    # odometry with NaN / inf / huge values, each with an otherwise good frame
    for i in range(N):
        refused_stamps.append(vehicle.send(messages['mono8'], pose=BAD_POSES[i % len(BAD_POSES)]))
        time.sleep(0.05)
    # paths with 0 points, 1 point, NaN points
    for i in range(N // 3):
        points = [[], [(0.0, 0.0)], [(0.0, 0.0), (math.nan, 1.0), (4.0, 0.0)]][i % 3]
        vehicle.publish_route(points)
        time.sleep(0.05)
    try:
        vehicle.diagnostic(lambda s, v: int(v['images_refused']) >= N // 2
                           and int(v['odometry_refused']) >= N // 2
                           and int(v['waypoints_refused']) >= 3, timeout=10.0)
        # still driving the old route with the same policy (once the stack, reset by the
        # stamp gap of the refused frames, is full again)
        vehicle.drive_until(messages['mono8'], want, timeout=10.0)
        with vehicle.lock:
            answered = [vehicle.controls[s] for s in refused_stamps if s in vehicle.controls]
        for control in answered:   # a frame whose odometry was refused may use an older pose
            assert all(math.isfinite(v) for v in (control.steer, control.throttle,
                                                  control.brake)), control
        assert vehicle.diagnostics is not None
        values = {kv.key: kv.value for kv in vehicle.diagnostics.values}
        assert values['policy_version'] == '1234', values
    finally:
        vehicle.publish_route(ROUTE)


def _bad_weights(rng: np.random.Generator, data: bytes, n: int) -> list[PolicyWeights]:
    """Return n malformed PolicyWeights: bad digest, truncated, garbage, other architecture."""
    policy = Policy.from_export_bytes(data)
    networks = {'actor_cnn': policy.actor_cnn.state_dict(), 'actor': policy.actor.state_dict()}
    header = json.loads(data[8:8 + int.from_bytes(data[:8], 'little')])
    nan = {f'{k}.{p}': t.clone() for k, sd in networks.items() for p, t in sd.items()}
    next(iter(nan.values())).view(-1)[0] = math.nan
    nan_bytes = safetensors_save(nan, metadata=header['__metadata__'])
    other = export_policy_bytes(networks, TD3Config(features_dim=256, hidden=(64, 64)), 1)
    out = []
    for i in range(n):
        kind = i % 5
        payload = [data, data[:int(rng.integers(0, len(data)))],
                   bytes(rng.integers(0, 256, 3000, dtype=np.uint8)), other, nan_bytes][kind]
        digest = hashlib.sha256(payload).hexdigest() if kind else '0' * 64
        out.append(PolicyWeights(version=100 + i, total_it=1, format='safetensors',
                                 data=payload, sha256=digest))
    return out


def test_policy_node_refuses_malformed_weights_and_takes_good_ones(request):
    start, vehicle, scene, checkpoints = _fixtures(request)   # noqa: F811 (test_policy_node's)
    rng = np.random.default_rng(SEED + 2)
    start(mode='train', exploration_noise=0.0, seed=5, sync_timeout=2.0, input_timeout=1.0)
    vehicle.diagnostic(lambda s, v: v['policy_version'] == '0', timeout=10.0)
    frame = scene[0]['mono8']
    data = checkpoints['b'].read_bytes()
    bad = _bad_weights(rng, data, N)
    for msg in bad:
        vehicle.weights_pub.publish(msg)
        time.sleep(0.15)   # latched depth 1: one at a time
        vehicle.send(frame)   # a staged policy is swapped in at a frame
    vehicle.diagnostic(lambda s, v: int(v['weights_refused']) >= N // 2, timeout=10.0)
    assert {kv.key: kv.value for kv in vehicle.diagnostics.values}['policy_version'] == '0'
    vehicle.weights_pub.publish(PolicyWeights(version=7, total_it=567, format='safetensors',
                                              data=data, sha256=hashlib.sha256(data).hexdigest()))

    def taken():
        vehicle.send(frame)
        status = vehicle.diagnostics
        return status is not None and {kv.key: kv.value for kv in status.values}[
            'policy_version'] == '7'
    wait_for(taken, 10.0, 'the good weights (version 7) in use', period=0.2)
