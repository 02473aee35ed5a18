"""DrQ-v2-style learning options: random shifts, n-step returns, exploration-noise decay."""

import json
import weakref
import zipfile

from av_td3_ros.driving.observation import ObservationSpec
from av_td3_ros.formats.checkpoint import load_checkpoint, save_checkpoint
from av_td3_ros.learning.config import TD3Config
from av_td3_ros.learning.replay import Batch, ReplayBuffer
from av_td3_ros.learning.td3 import random_shift, TD3
import numpy as np
import pytest
import torch

SPEC = ObservationSpec()
GAMMA = 0.9


# ---------------------------------------------------------------------- augmentation

def _stacks(n=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 4, 84, 84), generator=g, dtype=torch.uint8)


def test_random_shift_keeps_shape_dtype_and_values_and_is_off_at_pad_0():
    image = _stacks()
    out = random_shift(image, 4, torch.Generator().manual_seed(1))
    assert out.shape == image.shape and out.dtype == torch.uint8
    # every output pixel is a pixel of the same sample and frame (an integer shift)
    for b in range(4):
        assert set(out[b].unique().tolist()) <= set(image[b].unique().tolist())
    assert random_shift(image, 0) is image


def test_random_shift_is_one_replicate_padded_crop_per_stack():
    image = _stacks()
    out = random_shift(image, 4, torch.Generator().manual_seed(3))
    padded = torch.nn.functional.pad(image.float(), (4, 4, 4, 4), mode='replicate')
    shifted = 0
    for b in range(len(image)):
        matches = [(dy, dx) for dy in range(9) for dx in range(9)
                   if torch.equal(padded[b, :, dy:dy + 84, dx:dx + 84], out[b].float())]
        # the same (dy, dx) for all four frames: the crop is compared on the whole stack
        assert len(matches) == 1, f'sample {b}: not one crop of its padded stack'
        shifted += matches[0] != (4, 4)
    assert shifted >= len(image) // 2   # offsets differ per sample (81 possible)


def test_obs_and_next_obs_get_independent_seeded_shifts():
    config = TD3Config(augment_pad=4, features_dim=16, hidden=(8,), batch_size=8)
    frames = _stacks(8, 5)
    batch = Batch(frames, torch.zeros(8, 53), torch.zeros(8, 2), torch.zeros(8, 1), frames,
                  torch.zeros(8, 53), torch.ones(8, 1))
    a, b = TD3(config).augment(batch), TD3(config).augment(batch)
    assert torch.equal(a.image, b.image) and torch.equal(a.next_image, b.next_image)
    assert not torch.equal(a.image, a.next_image)   # same input, independent shifts


# ---------------------------------------------------------------------- n-step

_STACKS = weakref.WeakKeyDictionary()   # replay -> {(stream, episode): next stack}


def _add(replay, stream, episode, step, reward, terminated=False, truncated=False, seed=0):
    """Add one step of a consistent stream: its obs stack is the previous next stack."""
    rng = np.random.default_rng(1000 * episode + step + seed)
    stacks = _STACKS.setdefault(replay, {})
    stack = stacks.get((stream, episode), np.zeros((4, 84, 84), np.uint8))
    frame = rng.integers(0, 256, (84, 84), dtype=np.uint8)
    replay.add(stream, episode, step, stack, np.full(53, step, np.float32),
               np.array([0.1 * step, 0.0], np.float32), reward, frame,
               np.full(53, 100 * episode + step + 1, np.float32), terminated, truncated)
    stacks[(stream, episode)] = np.concatenate([stack[1:], frame[None]])


def _episodes(replay):
    """Episode 0 (4 steps, terminal), episode 1 (3 steps, truncated), episode 2 (2, running)."""
    for step, r in enumerate([1.0, 2.0, 3.0, 4.0]):
        _add(replay, 'a', 0, step, r, terminated=step == 3)
    for step, r in enumerate([10.0, 20.0, 30.0]):
        _add(replay, 'a', 1, step, r, truncated=step == 2)
    for step, r in enumerate([100.0, 200.0]):
        _add(replay, 'a', 2, step, r)


# (position, reward sum, discount, not_done, last position) with n = 3, gamma 0.9
EXPECTED = [
    (0, 1 + 0.9 * 2 + 0.81 * 3, 0.729, 1.0, 2),
    (1, 2 + 0.9 * 3 + 0.81 * 4, 0.0, 0.0, 3),        # reaches the terminal: no bootstrap
    (2, 3 + 0.9 * 4, 0.0, 0.0, 3),
    (3, 4.0, 0.0, 0.0, 3),
    (4, 10 + 0.9 * 20 + 0.81 * 30, 0.729, 1.0, 6),   # ends at the truncation: bootstraps
    (5, 20 + 0.9 * 30, 0.81, 1.0, 6),                # stops at the truncation, gamma^2
    (6, 30.0, 0.9, 1.0, 6),
    (7, 100 + 0.9 * 200, 0.81, 1.0, 8),              # the newest: what has arrived
    (8, 200.0, 0.9, 1.0, 8),
]


def test_n_step_targets_match_a_hand_computed_example():
    replay = ReplayBuffer(32, SPEC, seed=0)
    _episodes(replay)
    last, reward, discount, not_done = replay.n_step_chains(np.arange(9), 3, GAMMA)
    for pos, want_r, want_d, want_nd, want_last in EXPECTED:
        assert reward[pos] == pytest.approx(want_r, rel=1e-6), pos
        assert discount[pos] == pytest.approx(want_d, rel=1e-6), pos
        assert not_done[pos] == want_nd and last[pos] == want_last, pos
    # n = 1 is the one-step transition
    _, reward1, discount1, _ = replay.n_step_chains(np.arange(9), 1, GAMMA)
    assert reward1.tolist() == [1, 2, 3, 4, 10, 20, 30, 100, 200]
    assert discount1.tolist() == pytest.approx([0.9, 0.9, 0.9, 0, 0.9, 0.9, 0.9, 0.9, 0.9])


def test_n_step_sample_bootstraps_from_the_true_next_observation():
    replay = ReplayBuffer(32, SPEC, seed=0)
    _episodes(replay)
    replay.rng = np.random.default_rng(0)
    positions = np.random.default_rng(0).integers(0, 9, 64)
    batch = replay.sample(64, n_step=3, gamma=GAMMA)
    for i, pos in enumerate(positions):
        _, want_r, want_d, want_nd, last = EXPECTED[pos]
        first, final = replay.transition(int(pos)), replay.transition(last)
        assert np.array_equal(batch.image[i].numpy(), first['obs_frames'])
        assert np.array_equal(batch.vector[i].numpy(), first['obs_vector'])
        assert np.array_equal(batch.action[i].numpy(), first['action'])
        assert np.array_equal(batch.next_image[i].numpy(), final['next_frames'])
        assert np.array_equal(batch.next_vector[i].numpy(), final['next_vector'])
        assert batch.reward[i, 0].item() == pytest.approx(want_r, rel=1e-6)
        assert batch.discount[i, 0].item() == pytest.approx(want_d, rel=1e-6)
        assert batch.not_done[i, 0].item() == want_nd


def test_n_step_chains_follow_their_own_stream_and_stop_at_gaps():
    replay = ReplayBuffer(32, SPEC, seed=0)
    _add(replay, 'a', 0, 0, 1.0)
    _add(replay, 'b', 0, 0, 50.0, seed=7)   # another actor in between
    _add(replay, 'a', 0, 1, 2.0)
    _add(replay, 'a', 0, 3, 4.0)            # step 2 was lost: the chain stops before it
    last, reward, discount, _ = replay.n_step_chains(np.arange(4), 3, GAMMA)
    assert last.tolist() == [2, 1, 2, 3]
    assert reward.tolist() == pytest.approx([1 + 0.9 * 2, 50, 2, 4])
    assert discount.tolist() == pytest.approx([0.81, 0.9, 0.9, 0.9])


def test_n_step_links_survive_eviction_and_save_load(tmp_path):
    replay = ReplayBuffer(5, SPEC, seed=0)
    _episodes(replay)                       # 9 transitions into 5: positions 4..8 remain
    expected = replay.n_step_chains((replay._head + np.arange(5)) % 5, 3, GAMMA)[1]
    assert expected.tolist() == pytest.approx([r for _, r, *_ in EXPECTED[4:]])
    replay.save(tmp_path / 'r.npz')
    loaded = ReplayBuffer(5, SPEC)
    loaded.load(tmp_path / 'r.npz')
    assert loaded.n_step_chains(np.arange(5), 3, GAMMA)[1].tolist() == expected.tolist()
    _add(loaded, 'a', 2, 2, 300.0)          # the stream continues across the save
    assert loaded.n_step_chains(np.array([3]), 3, GAMMA)[1][0] == pytest.approx(
        100 + 0.9 * 200 + 0.81 * 300)


def test_replay_files_without_links_still_load(tmp_path):
    replay = ReplayBuffer(16, SPEC, seed=0)
    _episodes(replay)
    path = tmp_path / 'r.npz'
    replay.save(path)
    old = tmp_path / 'old.npz'   # a file of the format before n-step links
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(old, 'w') as dst:
        for item in src.infolist():
            if item.filename not in ('succ.npy', 'stream_last.npy'):
                dst.writestr(item, src.read(item.filename))
    loaded = ReplayBuffer(16, SPEC)
    loaded.load(old)
    assert len(loaded) == 9
    _, reward, _, _ = loaded.n_step_chains(np.arange(9), 3, GAMMA)
    assert reward.tolist() == [1, 2, 3, 4, 10, 20, 30, 100, 200]   # one-step: no links


def test_bytes_per_transition_stay_under_8_kb_with_links():
    assert ReplayBuffer(20_000, SPEC).bytes_per_transition() < 8 * 1024


def test_n_step_target_uses_the_batch_discount():
    config = TD3Config(features_dim=16, hidden=(8,), batch_size=4, n_step=3, gamma=GAMMA)
    frames = _stacks(4, 2)
    batch = Batch(frames, torch.zeros(4, 53), torch.zeros(4, 2), torch.ones(4, 1), frames,
                  torch.zeros(4, 53), torch.ones(4, 1))
    zero = Batch(**{**batch.__dict__, 'discount': torch.zeros(4, 1)})
    one_step = TD3(config)
    no_bootstrap = TD3(config)
    one_step.update_critic(batch)
    no_bootstrap.update_critic(zero)
    assert not torch.equal(one_step.critic.Q1.fc1.weight, no_bootstrap.critic.Q1.fc1.weight)


# ---------------------------------------------------------------------- exploration schedule

def test_exploration_noise_decays_linearly_and_is_constant_by_default():
    assert TD3Config().exploration_std(10**9) == 0.1
    c = TD3Config(exploration_noise=0.5, exploration_noise_final=0.1,
                  exploration_noise_decay_steps=1000)
    assert [c.exploration_std(s) for s in (0, 500, 1000, 5000)] == pytest.approx(
        [0.5, 0.3, 0.1, 0.1])


@pytest.mark.parametrize('field,value', [('augment_pad', -1), ('augment_pad', 17),
                                         ('n_step', 0), ('exploration_noise_decay_steps', -1),
                                         ('exploration_noise_final', -0.1)])
def test_new_fields_are_validated(field, value):
    with pytest.raises(ValueError, match=field):
        TD3Config(**{field: value})


# ---------------------------------------------------------------------- checkpoints

def test_checkpoint_keeps_the_options_and_old_checkpoints_still_load(tmp_path):
    config = TD3Config(augment_pad=4, n_step=3, exploration_noise_decay_steps=100,
                       features_dim=16, hidden=(8,), batch_size=4, learning_starts=0,
                       buffer_capacity=16)
    td3 = TD3(config)
    frames = _stacks(4, 1)
    td3.update(Batch(frames, torch.zeros(4, 53), torch.zeros(4, 2), torch.ones(4, 1), frames,
                     torch.zeros(4, 53), torch.ones(4, 1)))
    path = tmp_path / 'new.pth'
    save_checkpoint(path, td3)
    saved = torch.load(path, weights_only=True)
    assert (saved['learner']['config']['augment_pad'], saved['learner']['config']['n_step'],
            saved['learner']['config']['exploration_noise_decay_steps']) == (4, 3, 100)
    # a file written before these options: no config keys, no augmentation RNG state
    for key in ('augment_pad', 'n_step', 'exploration_noise_final',
                'exploration_noise_decay_steps'):
        del saved['learner']['config'][key]
    del saved['learner']['rng']['augment']
    old = tmp_path / 'old.pth'
    torch.save(saved, old)
    plain = TD3(TD3Config(features_dim=16, hidden=(8,), batch_size=4))
    load_checkpoint(old, plain)
    assert plain.total_it == 1
    assert torch.equal(plain.actor.fc1.weight, td3.actor.fc1.weight)
    assert json.loads(json.dumps(plain.config.to_dict()))['n_step'] == 1


def test_the_actor_decays_its_exploration_noise_over_its_policy_actions():
    from av_td3_ros.driving.actor_core import ActorCore
    core = ActorCore(train=True, exploration_noise=0.4, exploration_noise_final=0.0,
                     exploration_noise_decay_steps=4, seed=0)
    stds = []
    for _ in range(6):
        stds.append(core.exploration_std())
        core.explore_steps += 1
    assert stds == pytest.approx([0.4, 0.3, 0.2, 0.1, 0.0, 0.0])
    assert ActorCore(train=True, exploration_noise=0.2).exploration_std() == 0.2
    with pytest.raises(ValueError, match='decay_steps'):
        ActorCore(exploration_noise_decay_steps=-1)
