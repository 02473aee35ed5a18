"""Checkpoints: v1 round trip, refusals (nothing executed, nothing changed), legacy, paths."""

import json
import os
from pathlib import Path
import pickle

from av_td3_ros.driving.policy import Policy
from av_td3_ros.formats import checkpoint as ckpt
from av_td3_ros.formats.checkpoint import (
    CheckpointError, find_checkpoint, inspect_checkpoint, load_checkpoint, newest_checkpoint,
    read_checkpoint, replay_path_for, resolve_checkpoint_path, save_checkpoint, sha256_file)
from av_td3_ros.formats.policy_export import export_td3_policy
from av_td3_ros.learning.config import TD3Config
from av_td3_ros.learning.replay import Batch, ReplayBuffer
from av_td3_ros.learning.td3 import TD3
from legacy_checkpoint import write_legacy_checkpoint
import numpy as np
import pytest
import torch

torch.set_num_threads(1)
CFG = TD3Config(batch_size=4, learning_starts=0, buffer_capacity=16, features_dim=64,
                hidden=(32, 32))


def _batch(seed=0, dim=53):
    g = torch.Generator().manual_seed(seed)
    frames = torch.randint(0, 256, (4, 5, 84, 84), generator=g, dtype=torch.uint8)
    return Batch(frames[:, :4], torch.randn(4, dim, generator=g), torch.rand(4, 2, generator=g),
                 torch.randn(4, 1, generator=g), frames[:, 1:], torch.randn(4, dim, generator=g),
                 torch.ones(4, 1))


def _trained(config=CFG, n=2):
    td3 = TD3(config)
    for i in range(n):
        td3.update(_batch(i, config.obs.vector_dim))
    return td3


def _equal(a, b):
    """Compare nested state dicts bitwise."""
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    return a == b


def _obs(seed=0, dim=53):
    rng = np.random.default_rng(seed)
    return (rng.integers(0, 256, (4, 84, 84), dtype=np.uint8),
            rng.standard_normal(dim).astype(np.float32))


# ---------------------------------------------------------------------- v1

def test_v1_round_trip_restores_everything(tmp_path):
    td3 = _trained()
    path = tmp_path / 'a.pth'
    info = save_checkpoint(path, td3, counters={'env_steps': 40, 'episodes': 3})
    assert info.kind == 'v1' and info.total_it == 2 and len(info.sha256) == 64
    assert not [p for p in tmp_path.iterdir() if p.name.endswith('.tmp')]
    raw = torch.load(path, weights_only=True)          # plain weights_only load works
    assert raw['format'] == ckpt.FORMAT and raw['version'] == 1
    assert set(raw['learner']['networks']) == {
        'actor_cnn', 'actor', 'critic_cnn', 'critic', 'actor_cnn_target', 'actor_target',
        'critic_cnn_target', 'critic_target'}
    assert {'package_version', 'torch_version', 'created'} <= set(raw['metadata'])
    fresh = TD3(CFG.replace(seed=5))
    loaded, counters = load_checkpoint(path, fresh)
    assert counters == {'env_steps': 40, 'episodes': 3} and loaded.sha256 == info.sha256
    restored, original = fresh.state_dict(), td3.state_dict()
    assert restored.pop('config')['seed'] == 5     # the running learner's config stays
    original.pop('config')
    assert _equal(restored, original)


def test_old_files_with_the_explore_rng_key_still_load(tmp_path):
    td3 = _trained()
    path = tmp_path / 'a.pth'
    save_checkpoint(path, td3)
    saved = torch.load(path, weights_only=True)
    assert 'explore' not in saved['learner']['rng']     # no longer written
    # files from before exploration moved to the actors hold the numpy PCG64 state
    pcg64 = np.random.default_rng(7).bit_generator.state
    saved['learner']['rng']['explore'] = json.dumps(pcg64)
    old = tmp_path / 'old.pth'
    torch.save(saved, old)
    fresh = TD3(CFG.replace(seed=5))
    _, counters = load_checkpoint(old, fresh)
    assert counters == {} and fresh.total_it == td3.total_it
    restored, original = fresh.state_dict(), td3.state_dict()
    restored.pop('config')
    original.pop('config')
    assert _equal(restored, original) and 'explore' not in restored['rng']


def test_weights_only_load_leaves_optimizers_and_counters(tmp_path):
    td3 = _trained(n=4)
    save_checkpoint(tmp_path / 'a.pth', td3)
    other = _trained(CFG.replace(seed=9), n=1)
    optim_before = other.state_dict()['optimizers']
    info, counters = load_checkpoint(tmp_path / 'a.pth', other, weights_only=True)
    assert info.total_it == 4 and counters == {}
    assert other.total_it == 1
    assert _equal(other.network_state(), td3.network_state())
    assert _equal(other.state_dict()['optimizers'], optim_before)


def test_replay_is_saved_beside_and_checked(tmp_path):
    td3 = _trained()
    replay = ReplayBuffer(16, CFG.obs, seed=1)
    rng = np.random.default_rng(0)
    for step in range(6):
        replay.add('a', 0, step, rng.integers(0, 256, (4, 84, 84), dtype=np.uint8),
                   np.zeros(53), [0.0, 0.0], 0.0, rng.integers(0, 256, (84, 84), np.uint8),
                   np.zeros(53), False, False)
    path = tmp_path / 'b.pth'
    save_checkpoint(path, td3, replay)
    assert replay_path_for(path).is_file()
    restored = ReplayBuffer(16, CFG.obs)
    load_checkpoint(path, TD3(CFG), restored)
    assert len(restored) == len(replay)
    # a replay file from another run is refused, and nothing changes
    other = ReplayBuffer(16, CFG.obs)
    other.save(replay_path_for(path))
    target, target_replay = _trained(CFG.replace(seed=3)), ReplayBuffer(16, CFG.obs)
    before = target.state_dict()
    with pytest.raises(CheckpointError, match='does not match'):
        load_checkpoint(path, target, target_replay)
    assert _equal(target.state_dict(), before) and len(target_replay) == 0


def _replay_of(seed: int) -> ReplayBuffer:
    replay = ReplayBuffer(16, CFG.obs)
    rng = np.random.default_rng(seed)
    for step in range(3):
        replay.add('a', 0, step, rng.integers(0, 256, (4, 84, 84), dtype=np.uint8),
                   np.zeros(53), [0.0, 0.0], 0.0, rng.integers(0, 256, (84, 84), np.uint8),
                   np.zeros(53), False, False)
    return replay


def test_a_save_over_a_pair_never_replaces_its_replay_file_in_place(tmp_path):
    """
    Saving over an existing checkpoint + replay: the new replay file gets a name of its own.

    So until the checkpoint's rename (the one commit point) the old pair is whole on disk: a
    crash between the two renames (replay file, then checkpoint) leaves the old checkpoint
    with its own replay file, not with the new one (which the load would refuse).
    """
    path = tmp_path / 'same.pth'
    names = []
    for seed in range(3):
        save_checkpoint(path, _trained(), _replay_of(seed))
        entry = torch.load(path, weights_only=True)['replay']
        names.append(entry['file'])
        old_pair_replays = [p.name for p in tmp_path.glob('*.replay.npz')]
        assert old_pair_replays == [entry['file']], 'the replaced pair left its replay file'
        assert sha256_file(tmp_path / entry['file']) == entry['sha256']
        load_checkpoint(path, TD3(CFG), ReplayBuffer(16, CFG.obs))
    assert names[0] == 'same.replay.npz' and names[1] != names[0] and names[2] == names[0]
    # what a crash before the checkpoint's rename leaves: the old pair still loads
    before = path.read_bytes()
    staged_name = tmp_path / names[1]
    _replay_of(9).save(staged_name)   # the next save's replay, under its own name
    assert path.read_bytes() == before
    load_checkpoint(path, TD3(CFG), ReplayBuffer(16, CFG.obs))


def test_incompatible_architecture_is_refused_unchanged(tmp_path):
    save_checkpoint(tmp_path / 'a.pth', _trained())
    other = TD3(CFG.replace(hidden=(16, 16), obs={'n_waypoints': 10}))
    before = other.state_dict()
    with pytest.raises(CheckpointError, match=r'incompatible.*hidden'):
        load_checkpoint(tmp_path / 'a.pth', other)
    assert _equal(other.state_dict(), before)


def test_failed_write_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / 'a.pth'
    save_checkpoint(path, _trained(n=1))
    good = path.read_bytes()

    def broken_save(obj, stream):
        stream.write(b'PK\x03\x04 partial')
        raise OSError('disk full')

    monkeypatch.setattr(ckpt.torch, 'save', broken_save)
    with pytest.raises(OSError, match='disk full'):
        save_checkpoint(path, _trained(n=2))
    assert path.read_bytes() == good
    assert sorted(p.name for p in tmp_path.iterdir()) == ['a.pth']


# ---------------------------------------------------------------------- refusals

class _Evil:
    """Unpickling this runs a shell command that creates a marker file."""

    marker = ''

    def __reduce__(self):
        return (os.system, (f'touch {self.marker}',))


def _bad_files(tmp_path, marker):
    good = tmp_path / 'good.pth'
    save_checkpoint(good, _trained(n=1))
    data = good.read_bytes()
    files = {
        'truncated': data[:len(data) // 2],
        'random bytes': np.random.default_rng(0).bytes(50_000),
        'empty': b'',
    }
    for name, content in files.items():
        (tmp_path / f'{name}.pth').write_bytes(content)
    torch.save({'model': torch.zeros(3), 'epoch': 4}, tmp_path / 'not a checkpoint.pth')
    _Evil.marker = str(marker)
    with open(tmp_path / 'malicious pickle.pth', 'wb') as stream:
        pickle.dump({'actor_state_dict': _Evil()}, stream)
    torch.save({'format': ckpt.FORMAT, 'payload': _Evil()}, tmp_path / 'malicious torch.pth')
    return [tmp_path / f'{n}.pth' for n in (*files, 'not a checkpoint', 'malicious pickle',
                                            'malicious torch')]


@pytest.mark.filterwarnings('ignore:Detected pickle protocol')
def test_bad_files_are_refused_with_a_reason_and_nothing_runs_or_changes(tmp_path):
    marker = tmp_path / 'pwned'
    learner = _trained(n=3)
    before = learner.state_dict()
    reasons = {}
    for path in _bad_files(tmp_path, marker):
        with pytest.raises(CheckpointError) as info:
            load_checkpoint(path, learner)
        message = str(info.value)
        assert str(path) in message and '\n' not in message
        reasons[path.stem] = message
        with pytest.raises(CheckpointError):
            Policy.load(path)
    assert not marker.exists(), 'a checkpoint load executed code from the file'
    assert _equal(learner.state_dict(), before)
    assert 'truncated or corrupt' in reasons['truncated']
    assert 'not a checkpoint' in reasons['random bytes']
    assert 'empty' in reasons['empty']
    assert 'not an av_td3 checkpoint' in reasons['not a checkpoint']
    assert 'could run code' in reasons['malicious pickle']
    assert 'could run code' in reasons['malicious torch']
    with pytest.raises(CheckpointError, match='no such file'):
        read_checkpoint(tmp_path / 'missing.pth')
    with pytest.raises(CheckpointError, match='directory'):
        read_checkpoint(tmp_path)


def test_policy_export_is_not_a_learner_checkpoint(tmp_path):
    td3 = _trained()
    path = tmp_path / 'p.safetensors'
    path.write_bytes(export_td3_policy(td3))
    with pytest.raises(CheckpointError, match='policy export'):
        load_checkpoint(path, TD3(CFG))
    tampered = tmp_path / 'tampered.safetensors'
    tampered.write_bytes(path.read_bytes().replace(b'av_td3_ros.policy', b'something.else!!!'))
    with pytest.raises(CheckpointError, match='tag'):
        Policy.load(tampered)


# ---------------------------------------------------------------------- policy

def test_policy_from_checkpoint_and_export_acts_like_the_learner(tmp_path):
    td3 = _trained(n=4)
    save_checkpoint(tmp_path / 'a.pth', td3)
    from_file = Policy.load(tmp_path / 'a.pth')
    from_bytes = Policy.from_export_bytes(export_td3_policy(td3))
    assert from_file.version == from_bytes.version == 4
    assert from_file.spec == CFG.obs
    for seed in range(3):
        image, vector = _obs(seed)
        expected = td3.act(image, vector)
        np.testing.assert_array_equal(from_file.act(image, vector), expected)
        np.testing.assert_array_equal(from_bytes.act(image, vector), expected)
    with pytest.raises(ValueError, match='vector'):
        from_file.act(image, vector[:10])


# ---------------------------------------------------------------------- legacy

@pytest.mark.parametrize('state_dim,vector_dim', [(565, 53), (535, 23)])
def test_legacy_file_loads_and_acts_like_the_legacy_networks(tmp_path, state_dim, vector_dim):
    path = tmp_path / 'legacy.pth'
    reference = write_legacy_checkpoint(path, state_dim)
    raw = read_checkpoint(path)
    assert raw.kind == 'legacy'
    assert raw.config.cnn == 'legacy' and raw.config.obs.vector_dim == vector_dim
    assert raw.config.obs.image_scaling == 'minus_one_one'
    assert raw.config.gamma == 0.98          # a numpy float64 in the file, read without pickle
    policy = Policy.load(path)
    learner = TD3(raw.config)
    info, _ = load_checkpoint(path, learner)
    assert info.kind == 'legacy' and learner.total_it == 1234
    assert _equal(learner.actor_target.state_dict(), learner.actor.state_dict())
    assert _equal(learner.critic_cnn_target.state_dict(), learner.critic_cnn.state_dict())
    for seed in range(3):
        image, vector = _obs(seed, vector_dim)
        expected = reference(image, vector)
        np.testing.assert_allclose(policy.act(image, vector), expected, atol=1e-5)
        np.testing.assert_allclose(learner.act(image, vector), expected, atol=1e-5)
    learner.update(_batch(0, vector_dim))         # training resumes from the import
    assert learner.total_it == 1235
    summary = inspect_checkpoint(path)
    assert summary['format'] == 'legacy' and summary['state_dim'] == state_dim


def test_legacy_file_into_a_nature_learner_is_refused(tmp_path):
    write_legacy_checkpoint(tmp_path / 'legacy.pth')
    learner = TD3(CFG)
    before = learner.state_dict()
    with pytest.raises(CheckpointError, match=r'incompatible.*cnn'):
        load_checkpoint(tmp_path / 'legacy.pth', learner)
    assert _equal(learner.state_dict(), before)


# ---------------------------------------------------------------------- paths

def test_resolve_checkpoint_path_confines_to_allowed_dirs(tmp_path):
    base, extra, outside = tmp_path / 'ckpt', tmp_path / 'extra', tmp_path / 'outside'
    for d in (base, extra, outside):
        d.mkdir()
    assert resolve_checkpoint_path('a.pth', base) == (base / 'a.pth').resolve()
    assert resolve_checkpoint_path(str(extra / 'b.pth'), base, [str(extra)]) == \
        (extra / 'b.pth').resolve()
    (base / 'link.pth').symlink_to(outside / 'secret.pth')
    for bad in ('../outside/x.pth', str(outside / 'x.pth'), 'link.pth', '/etc/passwd'):
        with pytest.raises(CheckpointError, match='outside the allowed'):
            resolve_checkpoint_path(bad, base, [str(extra)])
    with pytest.raises(CheckpointError, match='empty'):
        resolve_checkpoint_path('', base)


def test_newest_checkpoint_picks_the_latest_pth(tmp_path):
    assert newest_checkpoint(tmp_path) is None
    assert newest_checkpoint(tmp_path / 'missing') is None
    for i, name in enumerate(('td3_step_10.pth', 'td3_step_20.pth', 'notes.txt')):
        (tmp_path / name).write_bytes(b'x')
        os.utime(tmp_path / name, ns=(10**18 + i, 10**18 + i))
    (tmp_path / '.td3_step_30.pth.123.tmp').write_bytes(b'x')
    assert newest_checkpoint(tmp_path) == tmp_path / 'td3_step_20.pth'
    assert isinstance(newest_checkpoint(str(tmp_path)), Path)


def _touch(path, age_ns):
    path.write_bytes(b'x')
    os.utime(path, ns=(10**18 + age_ns, 10**18 + age_ns))


def test_find_checkpoint_empty_request_means_the_newest(tmp_path):
    base = tmp_path / 'ckpt'
    base.mkdir()
    with pytest.raises(CheckpointError, match=f'no checkpoint in {base}$'):
        find_checkpoint('', base, [])
    with pytest.raises(CheckpointError, match='no checkpoint in'):
        find_checkpoint('', tmp_path / 'missing')
    _touch(base / 'td3_step_10.pth', 1)
    _touch(base / 'td3_step_20.pth', 2)
    _touch(base / 'td3_step_5.pth', 0)
    assert find_checkpoint('', base) == (base / 'td3_step_20.pth').resolve()
    assert find_checkpoint('', str(base), ()) == (base / 'td3_step_20.pth').resolve()


def test_find_checkpoint_resolves_inside_the_allowed_dirs_only(tmp_path):
    base, extra, outside = tmp_path / 'ckpt', tmp_path / 'extra', tmp_path / 'outside'
    for d in (base, extra, outside):
        d.mkdir()
    assert find_checkpoint('a.pth', base, []) == (base / 'a.pth').resolve()           # relative
    assert find_checkpoint('sub/../a.pth', base) == (base / 'a.pth').resolve()
    assert find_checkpoint(str(base / 'a.pth'), base) == (base / 'a.pth').resolve()   # absolute
    assert find_checkpoint(str(extra / 'b.pth'), base, [str(extra)]) == \
        (extra / 'b.pth').resolve()
    (base / 'link.pth').symlink_to(outside / 'secret.pth')
    for bad in ('../outside/x.pth', str(outside / 'x.pth'), str(extra / 'b.pth'), 'link.pth'):
        with pytest.raises(CheckpointError, match='outside the allowed'):
            find_checkpoint(bad, base)


def test_find_checkpoint_refuses_a_newest_file_that_links_outside(tmp_path):
    base, outside = tmp_path / 'ckpt', tmp_path / 'outside'
    base.mkdir()
    outside.mkdir()
    _touch(base / 'td3_step_10.pth', 1)
    _touch(outside / 'secret.pth', 5)
    (base / 'td3_step_99.pth').symlink_to(outside / 'secret.pth')   # newest by its target
    with pytest.raises(CheckpointError, match='outside the allowed'):
        find_checkpoint('', base)
    assert find_checkpoint('', base, [str(outside)]) == (outside / 'secret.pth').resolve()
