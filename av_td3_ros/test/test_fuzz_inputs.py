"""
Malformed messages, fuzzed (issue 14): the ROS-free functions the nodes call on every input.

Each message type gets >= 1000 seeded random malformed cases (``AV_TD3_FUZZ_CASES``, default
1000): the function must raise its own clear error (no other exception type), allocate nothing
near what a message claims (tracemalloc), and leave the state it guards unchanged. A few
well-formed cases run alongside, so a check that refused everything would fail too.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import struct
import time
import tracemalloc

from av_td3_ros.driving.actor_core import (
    ActorCore, BRAKE_ACTION, Pose, pose_from_odometry, review_weights, route_from_points)
from av_td3_ros.driving.observation import image_to_gray, ObservationError, ObservationSpec
from av_td3_ros.driving.policy import Policy
from av_td3_ros.formats.checkpoint import CheckpointError
from av_td3_ros.formats.image_cdr import read_image, SerializedImageError
from av_td3_ros.formats.policy_export import export_policy_bytes, export_td3_policy
from av_td3_ros.learning.config import TD3Config
from av_td3_ros.learning.learner_loop import Learner, LearnerOptions
from av_td3_ros.learning.td3 import TD3
import numpy as np
import pytest
from rclpy.serialization import serialize_message
from safetensors.torch import save as safetensors_save
from sensor_msgs.msg import Image
import torch

CASES = int(os.environ.get('AV_TD3_FUZZ_CASES', '1000'))
SEED = int(os.environ.get('AV_TD3_FUZZ_SEED', '1414'))
SPEC = ObservationSpec(image_size=36)
CONFIG = TD3Config(obs=SPEC, features_dim=16, hidden=(16, 16), batch_size=4, learning_starts=8,
                   buffer_capacity=64, num_threads=1, seed=3)
ENCODINGS = {'bgra8': 4, 'rgba8': 4, 'bgr8': 3, 'rgb8': 3, 'mono8': 1}
UNKNOWN_ENCODINGS = ['', 'yuv422', '16UC1', 'bgra16', 'BGRA8', 'mono16', 'jpeg', '\x00',
                     'bgra8 ', 'rgb8\x00', 'x' * 300]
MB = 1 << 20


class Peak:
    """tracemalloc peak (bytes) of the block, to bound what a lying size claim allocates."""

    def __enter__(self) -> Peak:
        tracemalloc.start()
        tracemalloc.reset_peak()
        return self

    def __exit__(self, *exc) -> None:
        self.bytes = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()


def _bad_image(rng: np.random.Generator) -> tuple[bytes, int, int, str, int, str]:
    """One malformed image: (data, width, height, encoding, step, what the error names)."""
    kind = int(rng.integers(5))
    encoding = str(rng.choice(list(ENCODINGS)))
    channels = ENCODINGS[encoding]
    if kind == 0:       # absurd claimed size, small buffer
        width, height = int(rng.choice([65535, 65534, 40000])), int(rng.choice([65535, 30000]))
        return (bytes(int(rng.integers(0, 4096))), width, height, encoding,
                int(rng.choice([0, width * channels])), 'expected step x height')
    if kind == 1:       # unknown encoding
        return (bytes(int(rng.integers(0, 512))), int(rng.integers(1, 64)),
                int(rng.integers(1, 64)),
                UNKNOWN_ENCODINGS[int(rng.integers(len(UNKNOWN_ENCODINGS)))], 0,
                'unsupported image encoding')
    width, height = int(rng.integers(1, 200)), int(rng.integers(1, 200))
    row = width * channels
    if kind == 2:       # step smaller than a row
        return (bytes(row * height), width, height, encoding, int(rng.integers(1, row))
                if row > 1 else 0, 'smaller than width x channels') if row > 1 else \
            (bytes(0), width, height, encoding, 0, 'expected step x height')
    if kind == 3:       # zero size
        return (bytes(int(rng.integers(0, 64))), 0 if rng.random() < 0.5 else width,
                0, encoding, 0, 'image size must be positive')
    step = row + int(rng.integers(0, 8))
    wrong = step * height + int(rng.choice([-1, 1])) * int(rng.integers(1, step * height + 1))
    return bytes(max(wrong, 0) if wrong != step * height else wrong + 1), width, height, \
        encoding, step, 'expected step x height'


def test_image_fuzz_raw_fields():
    rng = np.random.default_rng(SEED)
    refused = 0
    with Peak() as peak:
        for _ in range(CASES):
            data, width, height, encoding, step, says = _bad_image(rng)
            with pytest.raises(ObservationError) as info:
                image_to_gray(data, width, height, encoding, step, SPEC.image_size)
            assert says in str(info.value), (width, height, encoding, step, len(data))
            refused += 1
    assert refused == CASES
    # the buffers themselves are < 64 KB; nothing near a claimed 65535 x 65535 x 4 = 17 GB
    assert peak.bytes < 4 * MB, f'peak {peak.bytes / MB:.1f} MB'
    # well-formed images of the same generator's sizes still convert
    for encoding, channels in ENCODINGS.items():
        width, height = int(rng.integers(1, 200)), int(rng.integers(1, 200))
        gray = image_to_gray(bytes(width * height * channels), width, height, encoding, 0,
                             SPEC.image_size)
        assert gray.shape == (36, 36) and gray.dtype == np.uint8


def test_absurd_image_claim_allocates_nothing():
    with Peak() as peak:
        for encoding in ENCODINGS:
            with pytest.raises(ObservationError, match='expected step x height'):
                image_to_gray(bytes(1000), 65535, 65535, encoding, 0, 84)
    assert peak.bytes < MB, f'peak {peak.bytes / MB:.1f} MB for a 65535x65535 claim'


def _serialized(width: int, height: int, encoding: str, step: int, data: bytes) -> bytes:
    msg = Image()
    msg.header.frame_id = 'cam'
    msg.width, msg.height, msg.encoding, msg.step = width, height, encoding, step
    msg.data = data
    return serialize_message(msg)


def test_image_fuzz_serialized_bytes():
    """The policy node's raw-subscription path: read_image, then the gray conversion."""
    rng = np.random.default_rng(SEED + 1)
    counts = {'read_refused': 0, 'gray_refused': 0, 'converted': 0}
    good = _serialized(40, 30, 'bgr8', 120, bytes(range(256)) * 14 + bytes(16))
    with Peak() as peak:
        for i in range(CASES):
            if i % 3 == 0:      # lying fields in a well-framed message
                data, width, height, encoding, step, _ = _bad_image(rng)
                serialized = _serialized(width, height, encoding, step, data[:4096])
            elif i % 3 == 1:    # truncated bytes
                serialized = good[:int(rng.integers(0, len(good)))]
            else:               # flipped bytes in the header, lengths included
                mutated = bytearray(good)
                for _ in range(int(rng.integers(1, 4))):
                    mutated[int(rng.integers(0, 80))] = int(rng.integers(256))
                if rng.random() < 0.3:   # a length field claiming 4 GB
                    struct.pack_into('<I', mutated, 4 + 8 + 8, 0xFFFFFFF0)
                serialized = bytes(mutated)
            try:
                raw = read_image(serialized)
            except SerializedImageError:
                counts['read_refused'] += 1
                continue
            assert raw.data.size <= len(serialized)
            try:
                gray = image_to_gray(raw.data, raw.width, raw.height, raw.encoding, raw.step,
                                     SPEC.image_size)
            except ObservationError:
                counts['gray_refused'] += 1
                continue
            assert gray.shape == (36, 36)
            counts['converted'] += 1
    assert peak.bytes < 8 * MB, f'peak {peak.bytes / MB:.1f} MB'
    assert counts['read_refused'] > 100 and counts['gray_refused'] > 100, counts


def test_odometry_fuzz():
    rng = np.random.default_rng(SEED + 2)
    specials = [math.nan, math.inf, -math.inf, 1e300, -1e300, 1e30, 1e9, -5e8, 1e200]
    for _ in range(CASES):
        values = list(rng.uniform(-100, 100, 10))
        values[3:7] = [0.0, 0.0, 0.0, 1.0]
        for index in rng.choice(10, int(rng.integers(1, 4)), replace=False):
            special = specials[int(rng.integers(len(specials)))]
            if 3 <= index < 7 and abs(special) < 1e100 and math.isfinite(special):
                special = 1e200   # a quaternion component of 1e9 is merely unnormalised
            values[index] = special
        with pytest.raises(ObservationError, match='odometry'):
            pose_from_odometry(tuple(values[:3]), tuple(values[3:7]), tuple(values[7:]))
    # zero quaternion, and a good message still works
    with pytest.raises(ObservationError, match='zero quaternion'):
        pose_from_odometry((0.0, 0.0, 0.0), (0.0, 0.0, 0.0, 0.0), (1.0, 0.0, 0.0))
    pose = pose_from_odometry((1e6, -2e6, 3.0), (0.0, 0.0, 0.7071, 0.7071), (12.0, 0.0, 0.0))
    assert pose.speed == 12.0 and abs(pose.yaw - math.pi / 2) < 1e-3


def test_absurd_pose_brakes_instead_of_acting_with_inf():
    """A pose that gets past the odometry check (or a far route) must not reach the policy."""

    class Spy:
        spec = SPEC
        calls = 0

        def act(self, image, vector):
            Spy.calls += 1
            return np.zeros(2, np.float32)

    core = ActorCore(SPEC, train=False)
    core.set_policy(Spy(), 1)
    core.set_route(route_from_points([(0.0, 0.0), (1.0, 0.0), (2.0, 0.0)]))
    gray = np.zeros((36, 36), np.uint8)
    result = core.step(1, gray, Pose(1e300, 0.0, 0.0, 0.0))
    assert result.brake_reason and 'not finite' in result.brake_reason
    assert np.array_equal(result.action, BRAKE_ACTION) and Spy.calls == 0
    result = core.step(2, gray, Pose(0.5, 0.1, 0.0, 3.0))
    assert result.brake_reason is None and Spy.calls == 1


def test_nan_action_from_the_policy_brakes():
    class NanPolicy:
        spec = SPEC

        def act(self, image, vector):
            return np.array([math.nan, 0.5], np.float32)

    core = ActorCore(SPEC, train=True, seed=0)
    core.set_policy(NanPolicy(), 1)
    core.set_route(route_from_points([(0.0, 0.0), (1.0, 0.0), (2.0, 0.0)]))
    result = core.step(1, np.zeros((36, 36), np.uint8), Pose(0.5, 0.0, 0.0, 1.0))
    assert 'non-finite action' in result.brake_reason
    assert np.array_equal(result.action, BRAKE_ACTION)


def test_path_fuzz():
    rng = np.random.default_rng(SEED + 3)
    for _ in range(CASES):
        n = int(rng.integers(0, 2)) if rng.random() < 0.3 else int(rng.integers(2, 500))
        points = rng.uniform(-500, 500, (n, 2))
        if n >= 2:
            points[int(rng.integers(n)), int(rng.integers(2))] = rng.choice(
                [math.nan, math.inf, -math.inf])
            says = 'NaN or inf'
        else:
            says = 'needs >= 2'
        as_list = [tuple(p) for p in points] if rng.random() < 0.5 else points
        with pytest.raises(ObservationError, match=says):
            route_from_points(as_list)
    # 100 000 points: accepted, and following it stays cheap
    xy = np.stack([np.arange(100_000) * 2.0, np.zeros(100_000)], axis=1)
    start = time.perf_counter()
    route = route_from_points([tuple(p) for p in xy])
    for x in range(0, 2000, 2):
        route.locate(float(x), 0.3, 0.0)
    assert len(route) == 100_000 and time.perf_counter() - start < 5.0


def _good_transition(rng: np.random.Generator) -> dict:
    return {
        'actor_id': 'fuzz', 'episode_id': 0, 'step': 0,
        'obs_frames': rng.integers(0, 256, SPEC.image_shape, dtype=np.uint8).tobytes(),
        'obs_vector': rng.uniform(-1, 1, SPEC.vector_dim).tolist(),
        'action': rng.uniform(-1, 1, 2).tolist(), 'reward': float(rng.normal()),
        'next_frame': rng.integers(0, 256, (36, 36), dtype=np.uint8).tobytes(),
        'next_vector': rng.uniform(-1, 1, SPEC.vector_dim).tolist(),
        'terminated': False, 'truncated': False}


def _break_transition(rng: np.random.Generator, msg: dict) -> str:
    """Make one field of a good transition bad; return the word the error must contain."""
    kind = int(rng.integers(7))
    if kind == 0:
        field = str(rng.choice(['obs_frames', 'next_frame']))
        size = len(msg[field])
        msg[field] = msg[field][:int(rng.integers(0, size))] if rng.random() < 0.5 else \
            msg[field] + bytes(int(rng.integers(1, 100)))
        return field
    if kind == 1:
        field = str(rng.choice(['obs_vector', 'next_vector']))
        n = int(rng.integers(0, 200))
        msg[field] = rng.uniform(-1, 1, n if n != SPEC.vector_dim else n + 1).tolist()
        return field
    if kind == 2:
        field = str(rng.choice(['obs_vector', 'next_vector']))
        msg[field][int(rng.integers(SPEC.vector_dim))] = float(rng.choice(
            [math.nan, math.inf, -math.inf, 1e39]))
        return field
    if kind == 3:
        msg['reward'] = float(rng.choice([math.nan, math.inf, -math.inf, 1e39, -1e300]))
        return 'reward'
    if kind == 4:
        msg['action'][int(rng.integers(2))] = float(rng.choice(
            [1.01, -1.5, 2.0, 1e6, -1e30]))
        return 'outside'
    if kind == 5:
        msg['action'] = [math.nan, 0.0] if rng.random() < 0.5 else [0.0, math.inf]
        return 'action'
    msg['action'] = rng.uniform(-1, 1, int(rng.choice([0, 1, 3, 10]))).tolist()
    return 'action'


def test_transition_fuzz_changes_nothing():
    torch.set_num_threads(1)
    rng = np.random.default_rng(SEED + 4)
    learner = Learner(CONFIG, LearnerOptions(checkpoint_dir='/nonexistent-never-written'))
    good = 0
    for i in range(CASES):
        msg = _good_transition(rng)
        if i % 50 == 0:     # interleaved good ones must still go in
            learner.insert(**msg)
            good += 1
            continue
        says = _break_transition(rng, msg)
        before = (len(learner.replay), learner.replay.inserts, learner.stats().transitions)
        with pytest.raises(ValueError) as info:
            learner.insert(**msg)
        assert says in str(info.value), (says, str(info.value))
        assert (len(learner.replay), learner.replay.inserts,
                learner.stats().transitions) == before
    assert learner.stats().transitions == good == learner.replay.inserts
    # float32 rounding of a clipped action is not out of range
    msg = _good_transition(rng)
    msg['action'] = [float(np.float32(1.0)), float(np.float32(-0.3))]
    learner.insert(**msg)


def _export(config: TD3Config = CONFIG, seed: int = 0) -> bytes:
    torch.manual_seed(seed)
    return export_td3_policy(TD3(config))


def test_policy_weights_fuzz():
    rng = np.random.default_rng(SEED + 5)
    data = _export()
    policy = Policy.from_export_bytes(data)
    image = rng.integers(0, 256, SPEC.image_shape, dtype=np.uint8)
    vector = rng.uniform(-1, 1, SPEC.vector_dim).astype(np.float32)
    before = policy.act(image, vector)
    sha = hashlib.sha256(data).hexdigest()
    counts = {'sha': 0, 'truncated': 0, 'garbage': 0, 'flipped_refused': 0, 'flipped_ok': 0}
    with Peak() as peak:
        for i in range(CASES):
            kind = i % 4
            if kind == 0:   # a digest that does not match the bytes
                digest = sha
                while digest == sha:
                    digest = bytes(rng.integers(0, 256, 32, dtype=np.uint8)).hex() \
                        if rng.random() < 0.7 else sha[:int(rng.integers(0, 64))]
                accept, why = review_weights('safetensors', data, digest, 5, (4, sha))
                assert not accept and 'sha256 mismatch' in why
                counts['sha'] += 1
                continue
            if kind == 1:
                payload = data[:int(rng.integers(0, len(data)))]
            elif kind == 2:
                payload = bytes(rng.integers(0, 256, int(rng.integers(0, 2000)),
                                             dtype=np.uint8))
                if rng.random() < 0.5:   # a header length claiming terabytes
                    payload = struct.pack('<Q', int(rng.integers(1 << 40, 1 << 62))) + payload
            else:
                mutated = bytearray(data)
                header = int.from_bytes(data[:8], 'little') + 8
                for _ in range(int(rng.integers(1, 4))):
                    mutated[int(rng.integers(0, header))] = int(rng.integers(256))
                payload = bytes(mutated)
            # the digest matches these bytes: the review lets them through to the parser
            accept, _ = review_weights('safetensors', payload,
                                       hashlib.sha256(payload).hexdigest(), 5, (4, sha))
            assert accept
            try:
                Policy.from_export_bytes(payload)
            except CheckpointError as exc:
                assert 'policy export' in str(exc) or 'weights' in str(exc), str(exc)
                counts[('truncated', 'garbage', 'flipped_refused')[kind - 1]] += 1
            else:
                assert kind == 3, 'truncated or random bytes were accepted as a policy'
                counts['flipped_ok'] += 1
    assert peak.bytes < 32 * MB, f'peak {peak.bytes / MB:.1f} MB'
    assert counts['truncated'] == CASES // 4 and counts['garbage'] == CASES // 4, counts
    # the policy in use is untouched by all of it
    assert np.array_equal(policy.act(image, vector), before)
    assert not review_weights('pickle', data, sha, 5, None)[0]


def test_policy_weights_other_architecture_and_nan():
    data = _export()
    header_len = int.from_bytes(data[:8], 'little')
    header = json.loads(data[8:8 + header_len])
    tensors = Policy.from_export_bytes(data)
    networks = {'actor_cnn': tensors.actor_cnn.state_dict(), 'actor': tensors.actor.state_dict()}
    for other in (TD3Config(obs=SPEC, features_dim=32, hidden=(16, 16)),
                  TD3Config(obs=SPEC, features_dim=16, hidden=(16, 8)),
                  TD3Config(obs=ObservationSpec(image_size=36, n_waypoints=10),
                            features_dim=16, hidden=(16, 16)),
                  TD3Config(obs=ObservationSpec(image_size=84), features_dim=16,
                            hidden=(16, 16))):
        # the tensors of CONFIG's networks under another architecture's config
        lying = export_policy_bytes(networks, other, 7)
        with pytest.raises(CheckpointError, match='do not fit the architecture'):
            Policy.from_export_bytes(lying)
    assert header['__metadata__']['format'] == 'av_td3_ros.policy'
    networks['actor']['fc.0.weight' if 'fc.0.weight' in networks['actor']
                      else next(iter(networks['actor']))][0, 0] = math.nan
    tensors_nan = {f'{n}.{k}': v.contiguous() for n in networks for k, v in networks[n].items()}
    nan_bytes = safetensors_save(tensors_nan, metadata=header['__metadata__'])
    with pytest.raises(CheckpointError, match='NaN or inf'):
        Policy.from_export_bytes(nan_bytes)
