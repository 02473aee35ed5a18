"""
The trainer node over real DDS: inserts, rate limiter, stats, weights, checkpoint services.

One trainer (tiny networks so updates are fast) serves the whole module; the tests run in file
order and each states what it expects of the shared state. With samples_per_insert = batch_size
(one update per insert), the learner stops at an exactly known update count, so checks of
"nothing changed" compare an idle learner's weights bit for bit.
"""

import hashlib
import math
import os
from pathlib import Path
import pickle
import threading

from av_td3_interfaces.msg import PolicyWeights, TrainerStats, Transition
from av_td3_interfaces.srv import LoadCheckpoint, SaveCheckpoint
from av_td3_ros.driving.observation import ObservationSpec
from av_td3_ros.driving.policy import Policy
from av_td3_ros.formats.checkpoint import save_checkpoint, sha256_file
from av_td3_ros.formats.policy_export import export_td3_policy
from av_td3_ros.learning.config import TD3Config
from av_td3_ros.learning.td3 import TD3
from av_td3_ros.ros.common import LATCHED_QOS, NodeStartError
from av_td3_ros.ros.trainer_node import TrainerNode
import numpy as np
import pytest
from ros_harness import episode_transitions, overrides, RosHarness, wait_for
import torch

pytestmark = pytest.mark.ros

BATCH = 4
LEARNING_STARTS = 8
SPI = 4.0            # = BATCH: one update per inserted transition
ERROR_BUFFER = 8.0
SMALL = {'features_dim': 16, 'hidden': [16, 16], 'batch_size': BATCH,
         'learning_starts': LEARNING_STARTS, 'buffer_capacity': 256, 'num_threads': 1}


def expected_updates(inserts: int) -> int:
    """Return the updates the limiter allows after ``inserts`` (as its can_sample)."""
    if inserts < LEARNING_STARTS:
        return 0
    return math.floor((SPI * (inserts - LEARNING_STARTS) + ERROR_BUFFER) / BATCH)


class Evil:
    """A pickle that runs a command when unpickled: loading it must never execute it."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f'touch {self.marker}',))


@pytest.fixture(scope='module')
def graph(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp('trainer')
    ckpt, extra, outside = root / 'ckpt', root / 'extra', root / 'outside'
    for d in (ckpt, extra, outside):
        d.mkdir()
    harness = RosHarness()
    node = harness.add(TrainerNode(context=harness.context, parameter_overrides=overrides({
        **SMALL, 'mode': 'synchronous', 'samples_per_insert': SPI,
        'spi_error_buffer': ERROR_BUFFER, 'checkpoint_dir': str(ckpt),
        'allowed_checkpoint_dirs': [str(extra)], 'checkpoint_every': 10,
        'keep_checkpoints': 2, 'broadcast_every': 5, 'stats_period': 0.2,
        'tensorboard_dir': str(root / 'tb')})))
    state = {'inserted': 0, 'stats': [], 'weights': []}
    lock = threading.Lock()

    def keep(key):
        def callback(msg):
            with lock:
                state[key].append(msg)
        return callback

    harness.client.create_subscription(TrainerStats, '/av_td3_trainer/stats', keep('stats'), 10)
    harness.client.create_subscription(PolicyWeights, '/av_td3/policy_weights', keep('weights'),
                                       LATCHED_QOS)
    publisher = harness.client.create_publisher(Transition, '/av_td3/transitions', 100)
    wait_for(lambda: publisher.get_subscription_count() > 0, 20, 'the trainer subscription')
    yield {'harness': harness, 'node': node, 'ckpt': ckpt, 'extra': extra, 'outside': outside,
           'root': root, 'state': state, 'publisher': publisher, 'lock': lock}
    harness.shutdown()


def publish(graph, n, episode):
    for msg in episode_transitions(graph['node'].config.obs, n, seed=episode, episode_id=episode):
        graph['publisher'].publish(msg)
    graph['state']['inserted'] += n
    total = graph['state']['inserted']
    wait_for(lambda: graph['node'].learner.stats().buffer_size == total, 30,
             f'{total} transitions in the buffer')


def weights(node):
    return node.learner.td3.network_state()


def assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for name in a:
        for key in a[name]:
            assert torch.equal(a[name][key], b[name][key]), f'{name}.{key} changed'


def test_no_weights_before_learning_starts(graph):
    # until its first update the learner has nothing to say: actors do TD3's random warm-up
    node = graph['node']
    wait_for(lambda: node.count_subscribers('/av_td3/policy_weights') > 0, 20,
             'the test subscription to policy_weights')
    publish(graph, LEARNING_STARTS - 1, episode=0)
    assert node.learner.stats().total_it == 0
    assert not graph['state']['weights'] and node.learner.stats().weights_version == 0


def test_rate_limiter_stops_at_the_allowed_update_count(graph):
    node = graph['node']
    publish(graph, 20 - (LEARNING_STARTS - 1), episode=1)
    target = expected_updates(20)
    wait_for(lambda: node.learner.stats().total_it >= target, 60, f'{target} updates')
    stats = wait_for(lambda: [s for s in graph['state']['stats'] if s.total_it == target
                              and s.buffer_size == 20], 20, 'stats after the updates')[-1]
    assert node.learner.stats().total_it == target    # and not one more
    assert stats.transitions == 20 and stats.episodes == 2
    assert stats.samples_per_insert == pytest.approx(SPI)
    assert stats.insert_allowance > 0                  # caught up: actors may insert
    assert math.isfinite(stats.critic_loss) and math.isfinite(stats.q_mean)
    assert stats.updates_per_s >= 0.0
    # a periodic checkpoint at update 10 was written by the writer thread
    wait_for(lambda: (graph['ckpt'] / 'td3_step_10.pth').is_file(), 20, 'td3_step_10.pth')
    wait_for(lambda: list((graph['root'] / 'tb').glob('events.out.tfevents.*')), 10,
             'a TensorBoard event file')


def test_weights_broadcast_matches_the_learner(graph):
    node = graph['node']
    total_it = node.learner.td3.total_it
    last = total_it - total_it % 5                      # broadcast_every = 5
    version = node.learner.stats().weights_version
    assert version == total_it // 5                     # one per 5, none before learning
    msg = wait_for(lambda: [m for m in graph['state']['weights'] if m.version == version],
                   20, f'weights version {version}')[-1]
    data = msg.data.tobytes()
    assert hashlib.sha256(data).hexdigest() == msg.sha256
    assert msg.format == 'safetensors' and msg.total_it == last
    # the broadcast holds the learner's actor at that update: same actions as its checkpoint
    broadcast = Policy.from_export_bytes(data)
    saved = Policy.load(graph['ckpt'] / f'td3_step_{last}.pth')
    rng = np.random.default_rng(3)
    spec = node.config.obs
    image = rng.integers(0, 256, spec.image_shape, dtype=np.uint8)
    vector = rng.uniform(-1, 1, spec.vector_dim).astype(np.float32)
    np.testing.assert_array_equal(broadcast.act(image, vector), saved.act(image, vector))


def test_save_load_round_trip(graph):
    harness, node = graph['harness'], graph['node']
    total_it = node.learner.td3.total_it
    saved = weights(node)
    response = harness.call(SaveCheckpoint, '/av_td3_trainer/save_checkpoint',
                            SaveCheckpoint.Request())
    assert response.success, response.message
    path = graph['ckpt'] / f'td3_step_{total_it}.pth'
    assert response.path == str(path) and path.is_file()
    assert response.total_it == total_it
    assert response.sha256 == sha256_file(path)

    publish(graph, 8, episode=2)                      # more data: the learner moves on
    wait_for(lambda: node.learner.td3.total_it > total_it, 60, 'updates after the save')
    target = total_it + expected_updates(28) - expected_updates(20)
    wait_for(lambda: node.learner.td3.total_it == target, 60, f'{target} updates')
    with pytest.raises(AssertionError):
        assert_same_weights(saved, weights(node))

    response = harness.call(LoadCheckpoint, '/av_td3_trainer/load_checkpoint',
                            LoadCheckpoint.Request(path=path.name))
    assert response.success, response.message
    assert response.total_it == total_it and response.sha256 == sha256_file(path)
    assert node.learner.td3.total_it == total_it
    assert_same_weights(saved, weights(node))
    version = node.learner.stats().weights_version   # the loaded weights were broadcast
    wait_for(lambda: [m for m in graph['state']['weights']
                      if m.version == version and m.total_it == total_it], 20,
             'a broadcast of the loaded weights')


def test_save_with_replay_and_to_an_allowed_directory(graph):
    harness, node = graph['harness'], graph['node']
    target = graph['extra'] / 'with_replay.pth'
    response = harness.call(SaveCheckpoint, '/av_td3_trainer/save_checkpoint',
                            SaveCheckpoint.Request(path=str(target),
                                                   include_replay_buffer=True))
    assert response.success, response.message
    assert target.is_file() and (graph['extra'] / 'with_replay.replay.npz').is_file()
    response = harness.call(LoadCheckpoint, '/av_td3_trainer/load_checkpoint',
                            LoadCheckpoint.Request(path=str(target)))
    assert response.success, response.message
    assert node.learner.stats().buffer_size == graph['state']['inserted']


def test_empty_load_path_takes_the_newest_checkpoint(graph):
    harness = graph['harness']
    newest = graph['ckpt'] / 'newest.pth'
    response = harness.call(SaveCheckpoint, '/av_td3_trainer/save_checkpoint',
                            SaveCheckpoint.Request(path='newest.pth'))
    assert response.success, response.message
    response = harness.call(LoadCheckpoint, '/av_td3_trainer/load_checkpoint',
                            LoadCheckpoint.Request())
    assert response.success, response.message
    assert response.sha256 == sha256_file(newest)


def _make_refused_files(graph) -> dict[str, tuple[str, str]]:
    """Create each refusable file; return {case: (requested path, expected reason)}."""
    ckpt, outside, node = graph['ckpt'], graph['outside'], graph['node']
    valid = sorted(ckpt.glob('td3_step_*.pth'))[-1]
    outside_file = outside / 'valid.pth'
    outside_file.write_bytes(valid.read_bytes())
    (ckpt / 'link.pth').symlink_to(outside_file)
    (ckpt / 'linkdir').symlink_to(outside, target_is_directory=True)
    data = valid.read_bytes()
    (ckpt / 'truncated.pth').write_bytes(data[:len(data) // 2])
    (ckpt / 'random.pth').write_bytes(np.random.default_rng(0).bytes(50_000))
    (ckpt / 'empty.pth').write_bytes(b'')
    marker = graph['root'] / 'pwned'
    torch.save(Evil(marker), ckpt / 'evil_torch.pth')
    (ckpt / 'evil_pickle.pth').write_bytes(pickle.dumps(Evil(marker)))
    other = TD3(TD3Config.from_dict({**SMALL, 'features_dim': 24}))
    save_checkpoint(ckpt / 'incompatible.pth', other)
    (ckpt / 'policy_export.safetensors').write_bytes(export_td3_policy(node.learner.td3))
    return {   # case: (requested path, what the refusal must say)
        'absolute path outside': (str(outside_file), 'outside'),
        'dot-dot escape': ('../outside/valid.pth', 'outside'),
        'symlink escape': ('link.pth', 'outside'),
        'symlinked directory escape': ('linkdir/valid.pth', 'outside'),
        'missing': ('missing.pth', 'no such file'),
        'truncated': ('truncated.pth', 'corrupt'),
        'random bytes': ('random.pth', 'not a checkpoint'),
        'empty file': ('empty.pth', 'empty'),
        'malicious torch pickle': ('evil_torch.pth', 'unpickling'),
        'malicious plain pickle': ('evil_pickle.pth', 'unpickling'),
        'incompatible config': ('incompatible.pth', 'incompatible'),
        'policy export': ('policy_export.safetensors', 'policy export'),
        'a directory': (str(graph['extra']), 'directory'),
    }


def test_load_refusals_change_nothing(graph):
    harness, node = graph['harness'], graph['node']
    cases = _make_refused_files(graph)
    before, total_it = weights(node), node.learner.td3.total_it
    version = node.learner.stats().weights_version
    for case, (path, reason) in cases.items():
        for weights_only in (False, True):
            response = harness.call(LoadCheckpoint, '/av_td3_trainer/load_checkpoint',
                                    LoadCheckpoint.Request(path=path, weights_only=weights_only))
            assert not response.success, f'{case}: accepted'
            assert reason in response.message.lower(), f'{case}: {response.message!r}'
    assert not (graph['root'] / 'pwned').exists(), 'a pickle payload was executed'
    assert node.learner.td3.total_it == total_it
    assert node.learner.stats().weights_version == version
    assert_same_weights(before, weights(node))


def test_save_refusals_write_nothing(graph):
    harness = graph['harness']
    outside = graph['outside']
    before = set(outside.iterdir())
    for path in (str(outside / 'x.pth'), '../outside/y.pth', 'linkdir/z.pth',
                 'no_such_dir/w.pth', str(graph['ckpt'])):
        response = harness.call(SaveCheckpoint, '/av_td3_trainer/save_checkpoint',
                                SaveCheckpoint.Request(path=path))
        assert not response.success and response.message, path
    assert set(outside.iterdir()) == before
    assert not (graph['ckpt'] / 'no_such_dir').exists()


def test_bad_transitions_are_dropped_and_the_node_keeps_running(graph):
    node = graph['node']
    size = node.learner.stats().buffer_size
    good = next(episode_transitions(node.config.obs, 1, seed=9, episode_id=9))
    bad = []
    wrong_size = next(episode_transitions(ObservationSpec(image_size=64), 1, seed=9))
    bad.append(wrong_size)
    short = next(episode_transitions(node.config.obs, 1, seed=9))
    short.obs_frames = short.obs_frames[:100]
    bad.append(short)
    nan = next(episode_transitions(node.config.obs, 1, seed=9))
    nan.obs_vector = [float('nan')] * len(nan.obs_vector)
    bad.append(nan)
    wrong_action = next(episode_transitions(node.config.obs, 1, seed=9))
    wrong_action.action = [0.0, 0.0, 0.0]
    bad.append(wrong_action)
    for msg in bad:
        graph['publisher'].publish(msg)
    graph['publisher'].publish(good)
    wait_for(lambda: node.learner.stats().buffer_size == size + 1, 20,
             'the good transition after the bad ones')
    response = graph['harness'].call(SaveCheckpoint, '/av_td3_trainer/save_checkpoint',
                                     SaveCheckpoint.Request(path='after_bad.pth'))
    assert response.success, response.message


def test_resume_latest_at_start_and_a_bad_resume_refuses_to_start(graph, tmp_path):
    harness = graph['harness']
    newest = sorted(graph['ckpt'].glob('*.pth'), key=lambda p: p.stat().st_mtime_ns)[-1]
    expected = int(torch.load(newest, weights_only=True)['learner']['total_it'])
    params = {**SMALL, 'checkpoint_dir': str(graph['ckpt']), 'resume': 'latest'}
    node = TrainerNode(node_name='resumed_trainer', context=harness.context,
                       parameter_overrides=overrides(params))
    try:
        assert node.learner.td3.total_it == expected
        assert node.learner.stats().weights_version >= 1   # resumed weights go out at once
    finally:
        node.destroy_node()
    for resume, reason in (('missing.pth', 'no such file'), ('latest', 'no checkpoint')):
        empty = tmp_path / 'empty'
        empty.mkdir(exist_ok=True)
        with pytest.raises(NodeStartError, match=f'resume={resume}: .*{reason}'):
            TrainerNode(node_name='bad_resume', context=harness.context,
                        parameter_overrides=overrides({**SMALL, 'resume': resume,
                                                       'checkpoint_dir': str(empty)}))
