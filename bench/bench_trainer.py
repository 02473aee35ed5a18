"""
TD3 learner throughput against the peer, Stable-Baselines3 TD3, in one process on one machine.

Both learners get the same shape of random data (4x84x84 uint8 stacks, a 53-dim vector, 2-dim
actions), the same networks (NatureCNN with 512 features for actor and critic, separate
extractors, MLP heads [256, 256]), batch 256 and the process's torch thread setting. SB3 runs
``MultiInputPolicy`` as shipped (fp32); ours runs the default TD3Config (gradient clipping on,
precision ``auto``: bf16 autocast of the CNNs on a CPU with native bf16, fp32 elsewhere), and once
more in plain fp32 to show what the precision choice contributes.
Rounds rotate between the three (ours, ours fp32, SB3) so that load from other processes hits
all alike; each figure is the median over rounds (the ratios: medians of the per-round ratios),
after a warm-up of a few seconds each. The results name the CPU flags that decide the CNNs'
speed, the kernel levels in force (``ATEN_CPU_CAPABILITY`` and ``ONEDNN_MAX_CPU_ISA`` can hold an
AVX-512 CPU to AVX2) and the precision each figure ran with.
"""

from __future__ import annotations

import os
import statistics
import time

from av_td3_ros.learning.config import TD3Config
from av_td3_ros.learning.replay import ReplayBuffer
from av_td3_ros.learning.td3 import cpu_kernel_limits, TD3
import gymnasium as gym
import numpy as np
import torch

BATCH = 256
N_TRANSITIONS = int(os.environ.get('BENCH_TRANSITIONS', '3000'))
ROUNDS = int(os.environ.get('BENCH_ROUNDS', '5'))
ROUND_SECONDS = float(os.environ.get('BENCH_ROUND_SECONDS', '6'))
WARMUP_SECONDS = float(os.environ.get('BENCH_WARMUP_SECONDS', '4'))
EPISODE = 100


class _SpacesOnly(gym.Env):
    """The observation/action spaces SB3 builds its policy from (no simulation needed)."""

    observation_space = gym.spaces.Dict({
        'image': gym.spaces.Box(0, 255, (4, 84, 84), np.uint8),
        'vector': gym.spaces.Box(-np.inf, np.inf, (53,), np.float32)})
    action_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)

    def reset(self, seed=None, options=None):
        return self.observation_space.sample(), {}

    def step(self, action):
        return self.observation_space.sample(), 0.0, False, False, {}


def _episodes(rng: np.random.Generator):
    """Yield random transitions with consistent stacks (what an actor would send)."""
    stack = np.zeros((4, 84, 84), np.uint8)
    vector = rng.standard_normal(53).astype(np.float32)
    for i in range(N_TRANSITIONS):
        step = i % EPISODE
        if step == 0:
            stack = np.zeros_like(stack)
        frame = rng.integers(0, 256, (84, 84), dtype=np.uint8)
        next_stack = np.concatenate([stack[1:], frame[None]])
        next_vector = rng.standard_normal(53).astype(np.float32)
        yield (i // EPISODE, step, stack, vector, rng.uniform(-1, 1, 2).astype(np.float32),
               float(rng.standard_normal()), frame, next_stack, next_vector,
               step == EPISODE - 1)
        stack, vector = next_stack, next_vector


def _ours(precision: str = 'auto') -> tuple[TD3, ReplayBuffer]:
    config = TD3Config(batch_size=BATCH, buffer_capacity=N_TRANSITIONS, precision=precision)
    replay = ReplayBuffer(N_TRANSITIONS, config.obs, seed=0)
    for episode, step, stack, vec, action, reward, frame, _, next_vec, done in _episodes(
            np.random.default_rng(0)):
        replay.add('bench', episode, step, stack, vec, action, reward, frame, next_vec, done,
                   False)
    return TD3(config), replay


def _sb3():
    from stable_baselines3 import TD3 as SB3TD3
    from stable_baselines3.common.logger import configure

    model = SB3TD3('MultiInputPolicy', _SpacesOnly(), buffer_size=N_TRANSITIONS,
                   batch_size=BATCH, learning_starts=0, device='cpu', seed=0,
                   policy_kwargs={'net_arch': [256, 256],
                                  'features_extractor_kwargs': {'cnn_output_dim': 512}})
    model.set_logger(configure(None, []))
    buffer = model.replay_buffer
    for _, _, stack, vec, action, reward, _, next_stack, next_vec, done in _episodes(
            np.random.default_rng(0)):
        buffer.add({'image': stack[None], 'vector': vec[None]},
                   {'image': next_stack[None], 'vector': next_vec[None]}, action[None],
                   np.array([reward]), np.array([done]), [{}])
    return model


def _rate(run_updates, seconds: float) -> float:
    """Run update chunks for ``seconds``; return updates per second of wall time."""
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds or done == 0:
        done += run_updates()
    return done / (time.perf_counter() - start)


def cpu_flags() -> dict:
    """The CPU's flags that decide the CNNs' speed (Linux /proc/cpuinfo, else torch's cpuinfo)."""
    names = ('avx2', 'avx512f', 'avx512_bf16', 'amx_bf16')
    try:
        with open('/proc/cpuinfo') as f:
            flags = next(line for line in f if line.startswith('flags')).split(':')[1].split()
        return {name: name in flags for name in names}
    except (OSError, StopIteration):
        return {'avx2': torch.cpu._is_avx2_supported(),
                'avx512f': torch.cpu._is_avx512_supported(),
                'avx512_bf16': torch.cpu._is_avx512_bf16_supported(),
                'amx_bf16': torch.cpu._is_amx_tile_supported()}


def run() -> dict:
    """Measure both learners; return the figures for bench/results.json."""
    learner, replay = _ours()
    fp32_learner, fp32_replay = _ours('fp32')   # what the default's precision choice is worth
    model = _sb3()

    def chunk(td3: TD3, buffer: ReplayBuffer):
        def run_chunk() -> int:
            td3.train(buffer, 2)   # metrics are read once per chunk, as the trainer does
            return 2
        return run_chunk

    def sb3_chunk() -> int:
        model.train(gradient_steps=2, batch_size=BATCH)
        return 2

    chunks = {'ours': chunk(learner, replay), 'fp32': chunk(fp32_learner, fp32_replay),
              'sb3': sb3_chunk}
    for run_chunk in chunks.values():
        _rate(run_chunk, WARMUP_SECONDS)
    rates = {name: [] for name in chunks}
    for _ in range(ROUNDS):
        for name, run_chunk in chunks.items():
            rates[name].append(_rate(run_chunk, ROUND_SECONDS))

    def paired_ratio(name: str) -> float:
        # rounds run back to back share the machine's load: the median of paired ratios
        return round(statistics.median(
            o / p for o, p in zip(rates[name], rates['sb3'], strict=True)), 2)

    capability, onednn_isa = cpu_kernel_limits()
    return {
        'trainer_updates_per_s': round(statistics.median(rates['ours']), 3),
        'sb3_td3_updates_per_s': round(statistics.median(rates['sb3']), 3),
        'trainer_vs_sb3_ratio': paired_ratio('ours'),
        'replay_bytes_per_transition': round(
            ReplayBuffer(1_000_000, learner.config.obs).bytes_per_transition(), 1),
        'trainer_fp32_updates_per_s': round(statistics.median(rates['fp32']), 3),
        'trainer_fp32_vs_sb3_ratio': paired_ratio('fp32'),
        'trainer_bench_precision': 'bf16' if learner.bf16 else 'fp32',
        'trainer_fp32_bench_precision': 'bf16' if fp32_learner.bf16 else 'fp32',
        'sb3_bench_precision': 'fp32',
        'trainer_bench_batch_size': BATCH,
        'trainer_bench_torch_threads': torch.get_num_threads(),
        'trainer_bench_cpu_flags': cpu_flags(),
        'trainer_bench_cpu_capability': capability,
        'trainer_bench_onednn_max_isa': onednn_isa,
    }


if __name__ == '__main__':
    import json
    print(json.dumps(run(), indent=2))
