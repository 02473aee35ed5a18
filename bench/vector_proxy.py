"""
Vector-only learning proxy: Stable-Baselines3 TD3 (MLP) on the gym env's 53-dim vector alone.

Why: an exploration or reward question is answered here in ~2 minutes per run instead of the
~12 a pixel run takes on 2 cores. What holds here need not hold on pixels (docs/training.md
"Plain TD3" has both). The noise is the project's own (``driving/exploration.py``).

    python bench/vector_proxy.py --steps 10000 --seeds 0 1 2 --beta 1 --noise 0.3 --n-step 3 \\
        --reward my_weights.yaml

Prints one JSON line per seed: the evaluation (5 episodes, seeds 10000+i, packaged reward) and
the distances of the last training episodes.
"""

from __future__ import annotations

import argparse
import json
import time

from av_td3_ros.driving.classical_controller import evaluate
from av_td3_ros.driving.exploration import ExplorationNoise
import av_td3_ros.sim  # noqa: F401  (registers AvTd3Drive-v0)
import gymnasium as gym
import numpy as np
from stable_baselines3 import TD3
from stable_baselines3.common.noise import ActionNoise
import torch


class VectorOnly(gym.ObservationWrapper):
    """The observation's vector part only; records each training episode's distance."""

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        self.observation_space = env.observation_space['vector']
        self.distances: list[int] = []

    def observation(self, observation: dict) -> np.ndarray:
        return observation['vector']

    def step(self, action):
        obs, reward, terminated, truncated, info = super().step(action)
        if terminated or truncated:
            self.distances.append(round(info['distance_m']))
        return obs, reward, terminated, truncated, info


class Noise(ActionNoise):
    """ExplorationNoise behind SB3's interface (reset at every episode end)."""

    def __init__(self, std: float, beta: float, seed: int) -> None:
        super().__init__()
        self.std = std
        self.noise = ExplorationNoise(2, np.random.default_rng(seed + 100), beta)

    def __call__(self) -> np.ndarray:
        return self.noise.sample(self.std)

    def reset(self) -> None:
        self.noise.reset()


def run(args: argparse.Namespace, seed: int) -> dict:
    """Train one seed, evaluate it on the packaged reward."""
    env = VectorOnly(gym.make('AvTd3Drive-v0', track_seed=0, reward_config=args.reward))
    model = TD3('MlpPolicy', env, learning_rate=3e-4, buffer_size=args.steps,
                learning_starts=1000, batch_size=256, n_steps=args.n_step,
                action_noise=Noise(args.noise, args.beta, seed), seed=seed, device='cpu',
                policy_kwargs={'net_arch': [256, 256]})
    start = time.monotonic()
    model.learn(args.steps)
    metrics = evaluate(VectorOnly(gym.make('AvTd3Drive-v0', track_seed=0)),
                       lambda obs, info: model.predict(obs, deterministic=True)[0], 5,
                       seed=10_000)
    return {'seed': seed, 'steps': args.steps, 'beta': args.beta, 'noise': args.noise,
            'n_step': args.n_step, 'reward': args.reward, 'train_s': time.monotonic() - start,
            'last_training_distances_m': env.distances[-8:],
            **{k: metrics[k] for k in ('success_rate', 'mean_distance_m', 'mean_speed_mps',
                                       'end_reasons')}}


def main() -> None:
    """Run the seeds one after the other (one torch thread)."""
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--steps', type=int, default=10_000)
    parser.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2])
    parser.add_argument('--noise', type=float, default=0.1, help='exploration std')
    parser.add_argument('--beta', type=float, default=0.0, help='noise colour: 0 white, 1 pink')
    parser.add_argument('--n-step', type=int, default=1)
    parser.add_argument('--reward', default=None, help='reward weights YAML for training')
    args = parser.parse_args()
    torch.set_num_threads(1)
    for seed in args.seeds:
        print(json.dumps(run(args, seed)), flush=True)


if __name__ == '__main__':
    main()
