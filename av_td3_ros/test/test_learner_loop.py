"""The rclpy-free learner loop: inserts, rate limiter, checkpoint schedule, save/load, threads."""

import math
import threading
import time

from av_td3_ros.driving.observation import FrameStack, ObservationSpec
from av_td3_ros.learning.config import TD3Config
from av_td3_ros.learning.learner_loop import Learner, LearnerOptions, step_checkpoint_path
import numpy as np
import pytest
import torch

SPEC = ObservationSpec(image_size=36)


def config(**changes) -> TD3Config:
    base = {'obs': SPEC.to_dict(), 'features_dim': 8, 'hidden': (8, 8), 'batch_size': 4,
            'learning_starts': 8, 'buffer_capacity': 200, 'samples_per_insert': 4.0,
            'spi_error_buffer': 8.0, 'checkpoint_every': 0, 'num_threads': 1}
    return TD3Config.from_dict({**base, **changes})


def feed(learner: Learner, n: int, episode: int = 0, seed: int = 0) -> None:
    """Insert ``n`` transitions of one consistent episode (flat frames, like a message)."""
    rng = np.random.default_rng(seed)
    stack = FrameStack(SPEC.frame_stack, SPEC.image_size)
    obs = stack.push(rng.integers(0, 256, (36, 36), dtype=np.uint8))
    vector = rng.uniform(-1, 1, SPEC.vector_dim).astype(np.float32)
    for step in range(n):
        frame = rng.integers(0, 256, (36, 36), dtype=np.uint8)
        next_vector = rng.uniform(-1, 1, SPEC.vector_dim).astype(np.float32)
        learner.insert('a', episode, step, obs.tobytes(), vector, rng.uniform(-1, 1, 2),
                       float(rng.normal()), frame.tobytes(), next_vector, False, step == n - 1)
        obs, vector = stack.push(frame), next_vector


def run_until_idle(learner: Learner) -> int:
    n = 0
    while learner.update_once():
        n += 1
    return n


@pytest.fixture(autouse=True)
def one_thread():
    torch.set_num_threads(1)


def test_capacity_below_learning_starts_is_refused(tmp_path):
    with pytest.raises(ValueError, match='buffer_capacity'):
        Learner(config(buffer_capacity=6), LearnerOptions(str(tmp_path)))


def test_bad_transitions_are_refused_and_nothing_is_stored(tmp_path):
    learner = Learner(config(), LearnerOptions(str(tmp_path)))
    frames = np.zeros(4 * 36 * 36, np.uint8)
    good = {'actor_id': 'a', 'episode_id': 0, 'step': 0, 'obs_frames': frames,
            'obs_vector': np.zeros(53), 'action': [0.0, 0.0], 'reward': 0.0,
            'next_frame': np.zeros(36 * 36, np.uint8), 'next_vector': np.zeros(53),
            'terminated': False, 'truncated': False}
    for field, value in (('obs_frames', frames[:-1]), ('next_frame', b'\x00' * 10),
                         ('obs_vector', np.zeros(52)), ('action', [math.nan, 0.0]),
                         ('reward', math.inf)):
        with pytest.raises(ValueError):
            learner.insert(**{**good, field: value})
    assert learner.stats().buffer_size == 0 and learner.stats().transitions == 0
    learner.insert(**good)
    assert learner.stats().buffer_size == 1


def test_synchronous_mode_keeps_the_samples_per_insert_ratio(tmp_path):
    learner = Learner(config(), LearnerOptions(str(tmp_path), mode='synchronous'))
    feed(learner, 7)
    assert run_until_idle(learner) == 0                  # below learning_starts
    assert learner.stats().insert_allowance > 0          # actors may go on
    feed(learner, 13, episode=1)                         # 20 inserts in all
    done = run_until_idle(learner)
    # can_sample: (n + 1) * batch <= spi * (inserts - learning_starts) + error_buffer
    assert done == math.floor((4.0 * (20 - 8) + 8.0) / 4)
    stats = learner.stats()
    assert stats.total_it == done and stats.episodes == 2 and stats.samples_per_insert == 4.0
    assert math.isfinite(stats.critic_loss)


def test_realtime_mode_ignores_the_ratio(tmp_path):
    learner = Learner(config(), LearnerOptions(str(tmp_path), mode='realtime'))
    feed(learner, 10)
    for _ in range(30):
        assert learner.update_once()
    assert learner.stats().insert_allowance == -1


def test_weights_broadcast_and_periodic_checkpoints_with_pruning(tmp_path):
    weights, written = [], []
    done = threading.Semaphore(0)

    def on_checkpoint(info):
        written.append(info)
        done.release()

    learner = Learner(config(checkpoint_every=5), LearnerOptions(
        str(tmp_path), mode='realtime', broadcast_every=4, keep_checkpoints=2),
        on_weights=weights.append, on_checkpoint=on_checkpoint)
    feed(learner, 10)
    for _ in range(15):
        learner.update_once()
        if learner.td3.total_it % 5 == 0:   # the writer thread finishes it (a write still
            assert done.acquire(timeout=30)  # running when the next is due is skipped)
    assert [w.version for w in weights] == [1, 2, 3]
    assert [w.total_it for w in weights] == [4, 8, 12]
    assert [c.total_it for c in written] == [5, 10, 15]
    remaining = sorted(p.name for p in tmp_path.glob('td3_step_*.pth'))
    assert remaining == ['td3_step_10.pth', 'td3_step_15.pth']
    learner.stop()


def test_background_thread_learns_while_inserts_go_on(tmp_path):
    learner = Learner(config(), LearnerOptions(str(tmp_path), mode='synchronous'))
    learner.start()
    try:
        feed(learner, 40)
        target = math.floor((4.0 * (40 - 8) + 8.0) / 4)
        deadline = time.monotonic() + 30
        while learner.stats().total_it < target and time.monotonic() < deadline:
            time.sleep(0.02)
        assert learner.stats().total_it == target
        assert learner.running
    finally:
        learner.stop()
    assert not learner.running


def test_save_names_the_file_after_total_it_and_a_full_load_restores_everything(tmp_path):
    learner = Learner(config(), LearnerOptions(str(tmp_path), mode='synchronous'))
    feed(learner, 20)
    run_until_idle(learner)
    info = learner.save()
    assert info.path == str(step_checkpoint_path(tmp_path, learner.td3.total_it))
    with_replay = learner.save(tmp_path / 'full.pth', include_replay=True)
    saved = learner.td3.network_state()
    feed(learner, 10, episode=1)
    run_until_idle(learner)

    fresh = Learner(config(), LearnerOptions(str(tmp_path), mode='synchronous'))
    fresh.load(with_replay.path)
    stats = fresh.stats()
    assert stats.total_it == with_replay.total_it and stats.buffer_size == 20
    assert stats.transitions == 20 and stats.weights_version == 1
    for name, tensors in saved.items():
        for key, value in tensors.items():
            assert torch.equal(fresh.td3.network_state()[name][key], value)
    # the limiter continues where the saved learner stood: caught up, no free updates
    assert not fresh.update_once()
