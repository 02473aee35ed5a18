"""Replay buffer: exact stacks across boundaries/gaps/streams, memory, sampling, save/load."""

from av_td3_ros.driving.observation import FrameStack, ObservationSpec
from av_td3_ros.learning.rate_limiter import SamplesPerInsertLimiter
from av_td3_ros.learning.replay import ReplayBuffer
import numpy as np
import pytest
import torch

SPEC = ObservationSpec()


class Actor:
    """A simulated actor: frame stack, episodes, and the Transition fields it would publish."""

    def __init__(self, name, seed):
        self.name = name
        self.rng = np.random.default_rng(seed)
        self.stack = FrameStack(4, 84)
        self.episode = -1
        self.new_episode()

    def frame(self):
        frame = self.rng.integers(0, 256, (84, 84), dtype=np.uint8)
        if self.rng.random() < 0.1:
            frame[:] = 0            # a black camera frame is data, not padding
        return frame

    def new_episode(self):
        self.episode += 1
        self.step = 0
        self.stack.reset()
        self.obs = self.stack.push(self.frame())
        self.vector = self.rng.standard_normal(53).astype(np.float32)

    def transition(self, terminated=False, truncated=False):
        """Advance one step; return (Transition kwargs, reference (obs stack, next stack))."""
        next_frame = self.frame()
        next_obs = self.stack.push(next_frame)
        next_vector = self.rng.standard_normal(53).astype(np.float32)
        msg = {'stream_id': self.name, 'episode_id': self.episode, 'step': self.step,
               'obs_frames': self.obs, 'obs_vector': self.vector,
               'action': self.rng.uniform(-1, 1, 2).astype(np.float32),
               'reward': float(self.rng.standard_normal()), 'next_frame': next_frame,
               'next_vector': next_vector, 'terminated': terminated, 'truncated': truncated}
        ref = {**msg, 'next_frames': next_obs}
        self.obs, self.vector, self.step = next_obs, next_vector, self.step + 1
        if terminated or truncated:
            self.new_episode()
        return msg, ref


def _scripted_stream(n, seed=0):
    """Two interleaved actors with terminations, truncations, dropped messages and a restart."""
    actors = [Actor('a', seed), Actor('b', seed + 1)]
    rng = np.random.default_rng(seed + 2)
    out = []
    for i in range(n):
        actor = actors[int(rng.integers(0, 2))]
        roll = rng.random()
        msg, ref = actor.transition(terminated=roll < 0.04, truncated=0.04 <= roll < 0.07)
        if rng.random() < 0.08:
            continue                              # message dropped on the way
        if i == n // 2:
            actors[1] = Actor('b', seed + 99)     # actor 'b' restarts: same id, episode 0 again
        out.append((msg, ref))
    return out


def _assert_same(stored, ref):
    np.testing.assert_array_equal(stored['obs_frames'], ref['obs_frames'])
    np.testing.assert_array_equal(stored['next_frames'], ref['next_frames'])
    np.testing.assert_array_equal(stored['obs_vector'], ref['obs_vector'])
    np.testing.assert_array_equal(stored['next_vector'], ref['next_vector'])
    np.testing.assert_array_equal(stored['action'], ref['action'])
    assert stored['reward'] == np.float32(ref['reward'])
    assert stored['terminated'] == ref['terminated']


@pytest.mark.parametrize('capacity', [1000, 37])
def test_stacks_are_rebuilt_exactly(capacity):
    script = _scripted_stream(300)
    replay = ReplayBuffer(capacity, SPEC, seed=0)
    for msg, _ in script:
        replay.add(**msg)
    refs = [ref for _, ref in script]
    n = len(replay)
    assert 0 < n <= min(capacity, len(refs))
    if capacity >= len(refs):
        assert n == len(refs)
    for i in range(n):                             # FIFO: the newest n transitions are kept
        _assert_same(replay.transition(i), refs[len(refs) - n + i])


def test_two_actors_sharing_a_stream_id_stay_exact():
    # Two processes publishing under one actor_id with step counters one apart: the step
    # bookkeeping alone would splice one actor's frames into the other's stacks.
    first, second = Actor('dup', 11), Actor('dup', 12)
    second.transition()
    replay = ReplayBuffer(1000, SPEC)
    refs = []
    for _ in range(40):
        for actor in (first, second):
            msg, ref = actor.transition()
            replay.add(**msg)
            refs.append(ref)
    assert len(replay) == len(refs)
    for i, ref in enumerate(refs):
        _assert_same(replay.transition(i), ref)


def test_each_frame_is_stored_once_within_an_episode():
    actor = Actor('solo', 5)
    replay = ReplayBuffer(500, SPEC)
    for _ in range(200):
        replay.add(**actor.transition()[0])
    # first transition stores its newest obs frame and next frame; each later one, one frame
    assert replay.frames_in_use == 201
    # a gap (dropped message) stores the full stack of the next one once more
    actor.transition()
    replay.add(**actor.transition()[0])
    assert replay.frames_in_use == 201 + 5


def test_bytes_per_transition_under_8_kb_at_one_million():
    replay = ReplayBuffer(1_000_000, SPEC)    # arrays are allocated lazily by the OS
    per = replay.bytes_per_transition()
    assert per == replay.nbytes() / 1_000_000
    print(f'replay bytes per transition at 1M: {per:.0f}')
    assert 84 * 84 < per < 8000
    assert per * 1_000_000 < 8e9


def test_sample_returns_device_tensors_of_stored_transitions():
    script = _scripted_stream(60, seed=3)
    replay = ReplayBuffer(100, SPEC, seed=1)
    for msg, _ in script:
        replay.add(**msg)
    batch = replay.sample(32)
    assert batch.image.dtype == torch.uint8 and batch.image.shape == (32, 4, 84, 84)
    assert batch.next_image.shape == (32, 4, 84, 84)
    assert batch.vector.dtype == torch.float32 and batch.vector.shape == (32, 53)
    assert batch.action.shape == (32, 2) and batch.reward.shape == (32, 1)
    assert batch.not_done.shape == (32, 1)
    assert all(t.device.type == 'cpu' for t in (batch.image, batch.vector, batch.not_done))
    stored = [replay.transition(i) for i in range(len(replay))]
    for row in range(32):
        image = batch.image[row].numpy()
        match = [s for s in stored if np.array_equal(s['obs_frames'], image)
                 and np.array_equal(s['action'], batch.action[row].numpy())]
        assert match, 'a sampled row is not a stored transition'
        s = match[0]
        np.testing.assert_array_equal(batch.next_image[row].numpy(), s['next_frames'])
        np.testing.assert_array_equal(batch.next_vector[row].numpy(), s['next_vector'])
        assert batch.not_done[row, 0] == (0.0 if s['terminated'] else 1.0)
    with pytest.raises(ValueError, match='empty'):
        ReplayBuffer(4, SPEC).sample(2)


def test_truncation_keeps_the_true_final_observation_and_bootstraps():
    actor = Actor('t', 9)
    replay = ReplayBuffer(50, SPEC)
    for _ in range(3):
        replay.add(**actor.transition()[0])
    msg, ref = actor.transition(truncated=True)
    replay.add(**msg)
    replay.add(**actor.transition()[0])     # first step of the next episode
    last_of_episode = replay.transition(3)
    np.testing.assert_array_equal(last_of_episode['next_frames'], ref['next_frames'])
    assert not last_of_episode['terminated']      # truncation bootstraps
    first = replay.transition(4)
    assert not first['obs_frames'][:3].any()     # zero padding at the episode start


def test_bad_input_is_refused_and_nothing_is_stored():
    actor = Actor('x', 1)
    replay = ReplayBuffer(10, SPEC)
    replay.add(**actor.transition()[0])
    msg, _ = actor.transition()
    for change, pattern in [
            ({'obs_frames': msg['obs_frames'][:3]}, 'obs_frames'),
            ({'next_frame': msg['next_frame'].astype(np.float32)}, 'next_frame'),
            ({'obs_vector': np.full(53, np.nan)}, 'obs_vector'),
            ({'action': [0.0]}, 'action'),
            ({'reward': float('inf')}, 'reward')]:
        with pytest.raises(ValueError, match=pattern):
            replay.add(**{**msg, **change})
    assert len(replay) == 1 and replay.frames_in_use == 2
    replay.add(**msg)
    assert len(replay) == 2 and replay.frames_in_use == 3


def test_save_and_load_continue_exactly(tmp_path):
    script = _scripted_stream(120, seed=7)
    replay = ReplayBuffer(80, SPEC, seed=4)
    for msg, _ in script[:-10]:
        replay.add(**msg)
    replay.sample(5)                       # advance the RNG
    path = tmp_path / 'r.replay.npz'
    replay.save(path)
    assert not list(tmp_path.glob('.*.tmp'))
    restored = ReplayBuffer(80, SPEC, seed=999)
    restored.load(path)
    assert len(restored) == len(replay) and restored.inserts == replay.inserts
    for i in range(len(replay)):
        _assert_same(restored.transition(i), replay.transition(i))
    a, b = replay.sample(16), restored.sample(16)
    for field in ('image', 'vector', 'action', 'reward', 'next_image', 'next_vector',
                  'not_done'):
        assert torch.equal(getattr(a, field), getattr(b, field))
    for msg, _ in script[-10:]:            # streams continue: frames reused as before
        replay.add(**msg)
        restored.add(**msg)
    assert restored.frames_in_use == replay.frames_in_use
    for i in range(len(replay)):
        _assert_same(restored.transition(i), replay.transition(i))


def test_bad_replay_files_are_refused_and_leave_the_buffer_unchanged(tmp_path):
    actor = Actor('s', 2)
    replay = ReplayBuffer(20, SPEC)
    for _ in range(5):
        replay.add(**actor.transition()[0])
    good = tmp_path / 'good.npz'
    replay.save(good)
    truncated = tmp_path / 'trunc.npz'
    truncated.write_bytes(good.read_bytes()[:5000])
    junk = tmp_path / 'junk.npz'
    junk.write_bytes(np.random.default_rng(0).bytes(4096))
    flipped = tmp_path / 'flipped.npz'
    data = bytearray(good.read_bytes())
    data[len(data) * 2 // 3] ^= 0xFF              # inside the frames: the zip CRC catches it
    flipped.write_bytes(bytes(data))
    pickled = tmp_path / 'pickled.npz'
    np.savez(pickled, meta=np.array([{'x': 1}], dtype=object))
    target = ReplayBuffer(20, SPEC)
    target.add(**Actor('other', 3).transition()[0])
    before = target.transition(0)
    for bad in (truncated, junk, flipped, pickled, tmp_path / 'missing.npz'):
        with pytest.raises(ValueError):
            target.load(bad)
        assert len(target) == 1
        _assert_same(target.transition(0), before)
    with pytest.raises(ValueError, match='spec'):
        ReplayBuffer(20, ObservationSpec(n_waypoints=10)).load(good)
    with pytest.raises(ValueError, match='capacity'):
        ReplayBuffer(3, SPEC).load(good)


def test_rate_limiter_keeps_the_ratio_and_cannot_deadlock():
    batch = 4
    limiter = SamplesPerInsertLimiter(samples_per_insert=8.0, min_size_to_sample=10,
                                      error_buffer=(8.0 + batch) / 2)
    assert not limiter.can_sample(0, 9, batch)
    assert limiter.insert_allowance(0, 0, batch) >= 10
    inserts = updates = 0
    for _ in range(5000):
        can_insert = limiter.insert_allowance(updates, inserts, batch) > 0
        can_sample = limiter.can_sample(updates, inserts, batch)
        assert can_insert or can_sample, f'deadlock at inserts={inserts} updates={updates}'
        if can_sample:
            updates += 1
        else:
            inserts += 1
    # 8 samples per insert at batch 4 = 2 updates per insert, within the error buffer
    assert abs(updates * batch - 8.0 * (inserts - 10)) <= limiter.error_buffer + batch
    unlimited = SamplesPerInsertLimiter(0.0, 10, 0.0)
    assert unlimited.insert_allowance(10**6, 10, batch) == -1
    assert unlimited.can_sample(10**6, 10, batch) and not unlimited.can_sample(0, 9, batch)
    with pytest.raises(ValueError):
        SamplesPerInsertLimiter(-1.0, 0, 0.0)
