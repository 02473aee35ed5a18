"""
Exact resume (DESIGN §7): N updates, save with replay, load in a NEW process, N more updates.

The result must equal 2N updates in one go, bit for bit on CPU: every network and target, both
optimizers, the noise generators and the replay sampling RNG.
"""

import json
from pathlib import Path
import subprocess
import sys

from av_td3_ros.formats.checkpoint import load_checkpoint, save_checkpoint
from av_td3_ros.learning.config import TD3Config
from av_td3_ros.learning.replay import ReplayBuffer
from av_td3_ros.learning.td3 import TD3
import numpy as np
import pytest
import torch

N = 3
CONFIG = TD3Config(batch_size=6, learning_starts=0, buffer_capacity=64, num_threads=1, seed=7,
                   features_dim=128, hidden=(64, 64))
# the DrQ-v2-style options: random shifts (their RNG is resumed too) and n-step sampling
DRQ = CONFIG.replace(augment_pad=4, n_step=3)


def _filled_replay(config: TD3Config = CONFIG) -> ReplayBuffer:
    replay = ReplayBuffer(config.buffer_capacity, config.obs, seed=config.seed)
    rng = np.random.default_rng(1)
    stack = np.zeros((4, 84, 84), np.uint8)
    vector = rng.standard_normal(53).astype(np.float32)
    for i in range(40):
        step = i % 15
        frame = rng.integers(0, 256, (84, 84), dtype=np.uint8)
        next_vector = rng.standard_normal(53).astype(np.float32)
        replay.add('actor', i // 15, step, stack, vector, rng.uniform(-1, 1, 2),
                   float(rng.standard_normal()), frame, next_vector, step == 14 and i < 20,
                   step == 14 and i >= 20)
        stack = np.concatenate([stack[1:], frame[None]])
        vector = next_vector
        if step == 14:
            stack = np.zeros_like(stack)
    return replay


def _continue(checkpoint: str, out: str, config_json: str) -> None:
    """Child process: load checkpoint + replay, N more updates, save the result."""
    config = TD3Config.from_dict(json.loads(config_json))
    learner = TD3(config)
    replay = ReplayBuffer(config.buffer_capacity, config.obs, seed=12345)
    _, counters = load_checkpoint(checkpoint, learner, replay)
    learner.train(replay, N)
    save_checkpoint(out, learner, replay, counters)


def _flat(state, prefix=''):
    """Flatten a nested state into {path: tensor or value} for a bitwise comparison."""
    if isinstance(state, dict):
        out = {}
        for key, value in state.items():
            out.update(_flat(value, f'{prefix}/{key}'))
        return out
    if isinstance(state, (list, tuple)):
        out = {}
        for i, value in enumerate(state):
            out.update(_flat(value, f'{prefix}/{i}'))
        return out
    return {prefix: state}


@pytest.mark.parametrize('config', [CONFIG, DRQ], ids=['td3', 'augment+n_step'])
def test_resume_in_a_new_process_is_bitwise_exact(tmp_path, config):
    torch.set_num_threads(1)
    straight = TD3(config)
    straight_replay = _filled_replay(config)
    straight.train(straight_replay, 2 * N)

    first = TD3(config)
    first_replay = _filled_replay(config)
    first.train(first_replay, N)
    half = tmp_path / 'half.pth'
    save_checkpoint(half, first, first_replay, {'env_steps': 40})
    out = tmp_path / 'resumed.pth'
    result = subprocess.run([sys.executable, __file__, str(half), str(out),
                             json.dumps(config.to_dict())],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]

    resumed = torch.load(out, weights_only=True)
    assert resumed['counters'] == {'env_steps': 40}
    expected = _flat(straight.state_dict())
    got = _flat(resumed['learner'])
    assert got.keys() == expected.keys()
    assert got['/total_it'] == 2 * N
    differing = [key for key, value in expected.items()
                 if not (torch.equal(value, got[key]) if isinstance(value, torch.Tensor)
                         else value == got[key])]
    assert not differing, f'resumed run differs from the straight run in {differing[:5]}'
    # the replay sampling RNG continued exactly too
    check = ReplayBuffer(config.buffer_capacity, config.obs)
    check.load(Path(out).with_name('resumed.replay.npz'))
    assert json.dumps(check.rng.bit_generator.state) == json.dumps(
        straight_replay.rng.bit_generator.state)
    # and the first half alone is not already the answer (the test can tell runs apart)
    assert not torch.equal(first.actor_cnn.linear[0].weight, straight.actor_cnn.linear[0].weight)


if __name__ == '__main__':
    _continue(sys.argv[1], sys.argv[2], sys.argv[3])
