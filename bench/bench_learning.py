"""
Learning benchmark (``make bench-learning``): our TD3 against Stable-Baselines3 TD3, from pixels.

Both learn in-process on the gym env ``AvTd3Drive-v0`` (no ROS) with the same env-step budget, the
same seeds, the same networks (NatureCNN image features + the 53-dim vector, separate actor and
critic extractors, heads [256, 256]), batch, update-to-data ratio, learning starts, exploration
and target noise. Ours is the project's own training code: ``Learner`` (replay buffer, rate
limiter, TD3 update) fed transition by transition as the trainer node feeds it; SB3 runs
``MultiInputPolicy`` (its CombinedExtractor is the same NatureCNN + flattened vector). After
training, each policy drives fixed evaluation episodes (deterministic, seeds 10000+i), and so
does the classical baseline (pure pursuit + PID) on the same seeds.

The profile is the demo's plain-TD3 profile (``make demo DEMO_PROFILE=td3``: batch 64, 0.5
updates per env step, 64 CNN features, one torch thread, white exploration noise 0.1; bc_alpha 0,
no demonstrations). SB3 explores with the same noise generator (``exploration.py``, through an
``ActionNoise`` adapter), so a ``--variant`` of the noise colour applies to both; n-step variants
are ours only (SB3's n-step buffer refuses Dict observations).

    python bench/bench_learning.py                       # ours + sb3, 3 seeds, scenarios 0 1
    BENCH_LEARNING_STEPS=20000 make bench-learning       # a bigger budget
    python bench/bench_learning.py --methods ours --variant aug:augment_pad=4 \\
        --scenarios 0 --out bench/ablation.json          # on/off of one learning option

Writes ``bench/learning.json`` (every run, the per-method means over seeds, the run time) and
``bench/learning.png`` (training-episode distance and return against env steps: mean over seeds
and the min-max spread).
"""

from __future__ import annotations

import argparse
from concurrent.futures import ProcessPoolExecutor
import itertools
import json
import math
import multiprocessing
import os
from pathlib import Path
import platform
import sys
import tempfile
import time
from typing import Any

os.environ.setdefault('OMP_WAIT_POLICY', 'PASSIVE')   # before torch: no spinning on shared cores

EVAL_SEED = 10_000
TRACK_SEED = 0
HERE = Path(__file__).resolve().parent
# the demo's trainer profile (config/demo.yaml) with plain TD3, scaled to the budget
PROFILE = {'batch_size': 64, 'samples_per_insert': 32.0, 'spi_error_buffer': 640.0,
           'features_dim': 64, 'num_threads': 1, 'bc_alpha': 0.0, 'checkpoint_every': 0,
           'exploration_noise': 0.1, 'exploration_noise_beta': 0.0, 'n_step': 1}
METRICS = ('success_rate', 'mean_distance_m', 'mean_return', 'collisions_per_km',
           'mean_abs_lateral_deviation_m')


def _env(scenario: int):
    import gymnasium as gym
    import av_td3_ros.sim  # noqa: F401  (registers AvTd3Drive-v0)
    return gym.make('AvTd3Drive-v0', scenario=scenario, track_seed=TRACK_SEED)


def _evaluate(act, scenario: int, episodes: int) -> dict:
    from av_td3_ros.driving.classical_controller import evaluate
    env = _env(scenario)
    try:
        return evaluate(env, lambda obs, info: act(obs), episodes, seed=EVAL_SEED)
    finally:
        env.close()


def _learning_starts(env_steps: int) -> int:
    return min(1000, max(env_steps // 3, 64))


def train_ours(scenario: int, seed: int, env_steps: int, overrides: dict) -> dict:
    """Train with the project's Learner on the gym env; return the curve and the act function."""
    from av_td3_ros.driving.exploration import ExplorationNoise
    from av_td3_ros.learning.config import TD3Config
    from av_td3_ros.learning.learner_loop import Learner, LearnerOptions
    import numpy as np
    import torch
    torch.set_num_threads(1)
    config = TD3Config(**{**PROFILE, 'seed': seed, 'buffer_capacity': env_steps,
                          'learning_starts': _learning_starts(env_steps), **overrides})
    with tempfile.TemporaryDirectory() as checkpoints:
        learner = Learner(config, LearnerOptions(checkpoint_dir=checkpoints,
                                                 broadcast_every=10**9))
        td3 = learner.td3
        env = _env(scenario)
        rng = np.random.default_rng(seed + 100)
        noise = ExplorationNoise(2, rng, config.exploration_noise_beta)   # as ActorCore explores
        curve: list[dict] = []
        obs, _ = env.reset(seed=seed)
        episode = step = 0
        total = 0.0
        for t in range(env_steps):
            if t < config.learning_starts:
                action = rng.uniform(-1.0, 1.0, 2).astype(np.float32)
            else:
                action = np.clip(td3.act(obs['image'], obs['vector'])
                                 + noise.sample(config.exploration_std(t)), -1.0, 1.0)
            next_obs, reward, terminated, truncated, info = env.step(action)
            learner.insert('bench', episode, step, obs['image'], obs['vector'], action,
                           float(reward), next_obs['image'][-1], next_obs['vector'],
                           terminated, truncated)
            while learner.update_once():   # the rate limiter keeps the update-to-data ratio
                pass
            total += float(reward)
            step += 1
            obs = next_obs
            if (t + 1) % 250 == 0:
                print(f'[bench-learning]   ours s{scenario} seed {seed}: {t + 1} env steps, '
                      f'{td3.total_it} updates', flush=True)
            if terminated or truncated:
                curve.append({'env_steps': t + 1, 'return': total,
                              'distance_m': float(info['distance_m'])})
                obs, _ = env.reset()
                noise.reset()
                episode, step, total = episode + 1, 0, 0.0
        env.close()
        updates = td3.total_it
        learner.stop()
    return {'curve': curve, 'updates': updates,
            'act': lambda o: td3.act(o['image'], o['vector'])}


def train_sb3(scenario: int, seed: int, env_steps: int, overrides: dict) -> dict:
    """Train Stable-Baselines3 TD3 with the same networks and settings on the same env."""
    settings = {**PROFILE, **{k: v for k, v in overrides.items()
                              if k in ('exploration_noise', 'exploration_noise_beta')}}
    from stable_baselines3 import TD3 as SB3TD3
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.logger import configure
    import torch
    torch.set_num_threads(1)
    from vector_proxy import Noise   # ExplorationNoise behind SB3's ActionNoise (bench/)
    curve: list[dict] = []

    class Curve(BaseCallback):
        def __init__(self) -> None:
            super().__init__()
            self.total = 0.0

        def _on_step(self) -> bool:
            if self.num_timesteps % 250 == 0:
                print(f'[bench-learning]   sb3 s{scenario} seed {seed}: {self.num_timesteps} '
                      f'env steps, {self.model._n_updates} updates', flush=True)
            self.total += float(self.locals['rewards'][0])
            if self.locals['dones'][0]:
                info = self.locals['infos'][0]
                curve.append({'env_steps': self.num_timesteps, 'return': self.total,
                              'distance_m': float(info['distance_m'])})
                self.total = 0.0
            return True

    upd = PROFILE['samples_per_insert'] / PROFILE['batch_size']   # 0.5 updates per env step
    env = _env(scenario)
    model = SB3TD3(
        'MultiInputPolicy', env, learning_rate=3e-4, buffer_size=env_steps,
        learning_starts=_learning_starts(env_steps), batch_size=PROFILE['batch_size'],
        tau=0.005, gamma=0.99, train_freq=(round(1 / upd), 'step'), gradient_steps=1,
        # n_steps stays 1: SB3 2.9's n-step buffer refuses Dict observations ("N-step returns
        # are not supported for Dict observation spaces yet")
        action_noise=Noise(settings['exploration_noise'], settings['exploration_noise_beta'],
                           seed), policy_delay=2,
        target_policy_noise=0.2, target_noise_clip=0.5, seed=seed,
        device='cpu', policy_kwargs={
            'net_arch': [256, 256], 'share_features_extractor': False,
            'features_extractor_kwargs': {'cnn_output_dim': PROFILE['features_dim']}})
    model.set_logger(configure(None, []))
    model.learn(total_timesteps=env_steps, callback=Curve())
    env.close()
    return {'curve': curve, 'updates': int(model._n_updates),
            'act': lambda o: model.predict(o, deterministic=True)[0]}


TRAINERS = {'ours': train_ours, 'sb3': train_sb3}


def run_one(job: dict) -> dict:
    """One (method, variant, scenario, seed) run: train, then evaluate; timed."""
    start = time.monotonic()
    trained = TRAINERS[job['method']](job['scenario'], job['seed'], job['env_steps'],
                                      job['overrides'])
    train_s = time.monotonic() - start
    metrics = _evaluate(trained['act'], job['scenario'], job['eval_episodes'])
    return {**{k: v for k, v in job.items()}, 'updates': trained['updates'],
            'train_s': train_s, 'eval_s': time.monotonic() - start - train_s,
            'curve': trained['curve'], 'eval': metrics}


def baseline_row(scenario: int, episodes: int) -> dict:
    """The classical driver (pure pursuit + PID, no range sensor) on the evaluation seeds."""
    from av_td3_ros.driving.classical_controller import PurePursuitController
    controller = PurePursuitController()
    from av_td3_ros.driving.classical_controller import evaluate
    env = _env(scenario)
    try:
        return evaluate(env, lambda obs, info: controller.act(obs['vector']), episodes,
                        seed=EVAL_SEED, on_reset=controller.reset)
    finally:
        env.close()


def _parse_variant(text: str) -> tuple[str, dict]:
    name, _, spec = text.partition(':')
    overrides: dict[str, Any] = {}
    for item in filter(None, spec.split(',')):
        key, _, value = item.partition('=')
        overrides[key] = json.loads(value)
    return name, overrides


def summarize(runs: list[dict]) -> list[dict]:
    """Mean and standard deviation over seeds of each metric, per (label, scenario)."""
    import numpy as np
    groups: dict[tuple[str, int], list[dict]] = {}
    for run in runs:
        groups.setdefault((run['label'], run['scenario']), []).append(run)
    rows = []
    for (label, scenario), group in sorted(groups.items()):
        row: dict[str, Any] = {'label': label, 'scenario': scenario, 'seeds': len(group),
                               'env_steps': group[0]['env_steps'],
                               'updates': float(np.mean([r['updates'] for r in group])),
                               'train_s': float(np.mean([r['train_s'] for r in group]))}
        for key in METRICS:
            values = np.array([r['eval'][key] for r in group], dtype=float)
            row[key] = float(values.mean())
            row[f'{key}_std'] = float(values.std())
        rows.append(row)
    return rows


def plot(runs: list[dict], baselines: dict[int, dict], path: Path, env_steps: int) -> None:
    """Training-episode distance and return against env steps: mean and min-max over seeds."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    import numpy as np
    scenarios = sorted({r['scenario'] for r in runs})
    labels = sorted({r['label'] for r in runs})
    edges = np.linspace(0, env_steps, 11)
    centres = (edges[1:] + edges[:-1]) / 2
    fig, axes = plt.subplots(2, len(scenarios), figsize=(6 * len(scenarios), 7), squeeze=False)
    for col, scenario in enumerate(scenarios):
        for row, (key, name, base_key) in enumerate((
                ('distance_m', 'episode distance (m)', 'mean_distance_m'),
                ('return', 'episode return', 'mean_return'))):
            ax = axes[row][col]
            for label in labels:
                per_seed = []
                for run in (r for r in runs if r['label'] == label and r['scenario'] == scenario):
                    ends = np.array([c['env_steps'] for c in run['curve']], dtype=float)
                    values = np.array([c[key] for c in run['curve']], dtype=float)
                    binned = [values[(ends > a) & (ends <= b)].mean()
                              if ((ends > a) & (ends <= b)).any() else np.nan
                              for a, b in itertools.pairwise(edges)]
                    per_seed.append(binned)
                if not per_seed:
                    continue
                data = np.array(per_seed)
                with np.errstate(all='ignore'), _quiet():
                    mean = np.nanmean(data, axis=0)
                    low, high = np.nanmin(data, axis=0), np.nanmax(data, axis=0)
                line, = ax.plot(centres, mean, 'o-', label=f'{label} (mean of {len(data)})')
                ax.fill_between(centres, low, high, color=line.get_color(), alpha=0.2)
            if scenario in baselines:
                ax.axhline(baselines[scenario][base_key], color='k', ls='--',
                           label='classical baseline (eval)')
            ax.set_title(f'scenario {scenario}')
            ax.set_ylabel(name)
            ax.grid(alpha=0.3)
            if row == 1:
                ax.set_xlabel('environment steps')
    axes[0][0].legend(fontsize=8)
    fig.suptitle('make bench-learning: training episodes, mean and min-max over seeds')
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


class _quiet:
    """Silence numpy's all-NaN slice warnings inside a block."""

    def __enter__(self):
        import warnings
        self._ctx = warnings.catch_warnings()
        self._ctx.__enter__()
        warnings.simplefilter('ignore', RuntimeWarning)

    def __exit__(self, *exc):
        return self._ctx.__exit__(*exc)


def _table(rows: list[dict], baselines: dict[int, dict]) -> str:
    head = (f'{"method":<16}{"scen":>5}{"success":>9}{"distance m":>16}{"return":>16}'
            f'{"coll/km":>9}{"|lat| m":>9}')
    lines = [head]
    for row in rows:
        lines.append(
            f'{row["label"]:<16}{row["scenario"]:>5}{row["success_rate"]:>9.2f}'
            f'{row["mean_distance_m"]:>9.1f} ±{row["mean_distance_m_std"]:<5.1f}'
            f'{row["mean_return"]:>9.1f} ±{row["mean_return_std"]:<5.1f}'
            f'{row["collisions_per_km"]:>9.2f}{row["mean_abs_lateral_deviation_m"]:>9.2f}')
    for scenario, base in sorted(baselines.items()):
        lines.append(f'{"baseline":<16}{scenario:>5}{base["success_rate"]:>9.2f}'
                     f'{base["mean_distance_m"]:>9.1f}{"":7}{base["mean_return"]:>9.1f}{"":7}'
                     f'{base["collisions_per_km"]:>9.2f}'
                     f'{base["mean_abs_lateral_deviation_m"]:>9.2f}')
    return '\n'.join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; see the module docstring."""
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--env-steps', type=int,
                        default=int(os.environ.get('BENCH_LEARNING_STEPS', '1000')),
                        help='env steps per run (default: $BENCH_LEARNING_STEPS or 1000)')
    parser.add_argument('--seeds', type=int, default=int(os.environ.get(
        'BENCH_LEARNING_SEEDS', '3')))
    parser.add_argument('--scenarios', type=int, nargs='+', default=[0, 1])
    parser.add_argument('--methods', nargs='+', default=['ours', 'sb3'], choices=TRAINERS)
    parser.add_argument('--variant', action='append', default=[],
                        help='NAME:key=json,key=json TD3Config overrides of "ours" runs '
                        '(repeatable; the plain profile runs too unless --no-plain)')
    parser.add_argument('--no-plain', action='store_true')
    parser.add_argument('--eval-episodes', type=int, default=int(os.environ.get(
        'BENCH_LEARNING_EVAL_EPISODES', '3')))
    parser.add_argument('--jobs', type=int, default=int(os.environ.get(
        'BENCH_LEARNING_JOBS', '2')), help='runs in parallel (one torch thread each)')
    parser.add_argument('--out', type=Path, default=HERE / 'learning.json')
    parser.add_argument('--no-baseline', action='store_true')
    args = parser.parse_args(argv)
    started = time.monotonic()
    variants = [_parse_variant(v) for v in args.variant]
    jobs = []
    for scenario in args.scenarios:
        for seed in range(args.seeds):
            for method in args.methods:
                configs = [(method, {})] if (method != 'ours' or not args.no_plain) else []
                if method == 'ours':
                    configs += [(f'ours+{name}', o) for name, o in variants]
                for label, overrides in configs:
                    jobs.append({'method': method, 'label': label, 'overrides': overrides,
                                 'scenario': scenario, 'seed': seed,
                                 'env_steps': args.env_steps,
                                 'eval_episodes': args.eval_episodes})
    print(f'[bench-learning] {len(jobs)} runs of {args.env_steps} env steps, '
          f'{args.jobs} at a time', flush=True)
    runs = []
    context = multiprocessing.get_context('spawn')
    with ProcessPoolExecutor(max_workers=args.jobs, mp_context=context) as pool:
        for run in pool.map(run_one, jobs):
            print(f'[bench-learning] {run["label"]} scenario {run["scenario"]} seed '
                  f'{run["seed"]}: {run["updates"]} updates in {run["train_s"]:.0f} s, eval '
                  f'distance {run["eval"]["mean_distance_m"]:.1f} m, success '
                  f'{run["eval"]["success_rate"]:.2f}', flush=True)
            runs.append(run)
    baselines = {} if args.no_baseline else {
        s: baseline_row(s, args.eval_episodes) for s in args.scenarios}
    rows = summarize(runs)
    wall_s = time.monotonic() - started
    png = args.out.with_suffix('.png')
    plot(runs, baselines, png, args.env_steps)
    import torch
    report = {
        'command': ' '.join([Path(sys.executable).name, *sys.argv]),
        'env_steps': args.env_steps, 'seeds': args.seeds, 'scenarios': args.scenarios,
        'eval_episodes': args.eval_episodes, 'eval_seeds': [EVAL_SEED + i for i in
                                                            range(args.eval_episodes)],
        'profile': PROFILE, 'learning_starts': _learning_starts(args.env_steps),
        'jobs': args.jobs, 'wall_s': wall_s, 'cpu_count': os.cpu_count(),
        'load_average': os.getloadavg(), 'machine': platform.machine(),
        'torch_version': str(torch.__version__),
        'summary': rows,
        'baseline': {str(s): {k: v for k, v in b.items() if k != 'end_reasons'} | {
            'end_reasons': b['end_reasons']} for s, b in baselines.items()},
        'runs': runs,
    }
    args.out.write_text(json.dumps(report, indent=1, default=_json_default) + '\n')
    print(_table(rows, baselines))
    print(f'[bench-learning] wrote {args.out} and {png} in {wall_s / 60:.1f} min', flush=True)
    return 0


def _json_default(value: Any) -> Any:
    if isinstance(value, float) and math.isinf(value):
        return str(value)
    if hasattr(value, 'tolist'):
        return value.tolist()
    raise TypeError(f'not JSON serialisable: {type(value).__name__}')


if __name__ == '__main__':
    sys.exit(main())
