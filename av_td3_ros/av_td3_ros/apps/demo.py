"""
The main job behind ``make demo`` (DESIGN §10): learn to drive in minutes, then prove it.

1. Bring up the ``train_sim`` configuration in this process (ros/bringup.py, the same nodes,
   YAML files and fixed parameters as launch/train_sim.launch.py) with the profile's files from
   config/ on top (``--profile``/``DEMO_PROFILE``, ``PROFILES``): embedded simulator (synchronous,
   small camera, ``--scenario``/``DEMO_SCENARIO``), policy node in train mode, trainer node. A
   monitor node prints one progress line every few seconds.
   ``td3bc`` (default): a second actor drives the same road in the gym env with the classical
   baseline (pure pursuit + PID) plus Gaussian noise and publishes 3000 transitions on
   /av_td3/transitions like any actor; the trainer learns from them and from the policy node's
   own experience with TD3+BC (``bc_alpha`` in demo.yaml). ``td3``: plain TD3 from the policy
   node's experience only, which does not yet complete laps in ten minutes here (the pixel
   actor saturates early: docs/training.md "Plain TD3").
2. After ``DEMO_MINUTES`` (default 10) minus the time reserved for evaluation, save a checkpoint
   through the trainer's ``~/save_checkpoint`` service (a real service call over DDS) and stop.
3. Evaluate the deterministic policy loaded from that checkpoint (``Policy.load``) and a uniform
   random policy on the same fresh seeds in the gym env ``AvTd3Drive-v0`` (the same observation
   builder and renderer as the simulator node, without DDS in the loop).
4. Write ``results/demo.json``, ``results/training_curve.png`` and print a small table.
"""

from __future__ import annotations

import argparse
from collections import deque
from dataclasses import asdict, dataclass, field
import json
import math
import os
from pathlib import Path
import sys
import threading
import time
from typing import Any

from av_td3_interfaces.msg import StepFeedback, TrainerStats, Transition
from av_td3_interfaces.srv import SaveCheckpoint
from av_td3_ros.driving.classical_controller import PurePursuitController
from av_td3_ros.ros.bringup import Bringup, config_dir
from av_td3_ros.ros.common import (
    DEEP_QOS, RELIABLE_QOS, TRAINER_STATS, TRANSITIONS, VehicleTopics)
import numpy as np
from rclpy.node import Node
import yaml

EVAL_SEED_BASE = 10_000          # evaluation seeds; training uses the sim's own seed stream
DEMO_SEED_BASE = 20_000          # demonstration episodes: yet other seeds
DEMO_ACTOR_ID = 'demo/baseline'
# --profile: the parameter files (config/, in order) and the default demonstration count
PROFILES: dict[str, dict[str, Any]] = {
    'td3bc': {'files': ['demo.yaml'], 'demonstrations': 3000},
    'td3': {'files': ['demo.yaml', 'demo_plain_td3.yaml'], 'demonstrations': 0},
}
PROGRESS_PERIOD_S = 5.0
TAIL_RESERVE_S = 20.0            # save, shut-down, plotting, writing


@dataclass
class EpisodeRecord:
    """One finished training episode, as the step feedback told it."""

    env_steps: int          # cumulative env steps when it ended
    episode_return: float
    distance_m: float
    steps: int
    reason: str


@dataclass
class EvalEpisode:
    """One evaluation episode in the gym env (success: the route was completed)."""

    seed: int
    episode_return: float
    distance_m: float
    mean_abs_lateral_m: float
    steps: int
    success: bool
    reason: str


@dataclass
class EvalSummary:
    """The numbers demo.json reports per policy."""

    mean_return: float
    mean_distance_m: float
    mean_abs_lateral_m: float
    success_rate: float
    collisions_per_km: float
    episodes: list[EvalEpisode] = field(default_factory=list)


class DemoMonitor(Node):
    """Watch the training graph: episodes from step feedback, progress from trainer stats."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__('av_td3_demo_monitor', **kwargs)
        self._lock = threading.Lock()
        self.env_steps = 0
        self.episodes: list[EpisodeRecord] = []
        self.stats: TrainerStats | None = None
        self._stats_seen = 0        # trainer stats since the last progress line ...
        self._stats_blocked = 0     # ... and how many said: rate limit reached, actors wait
        self._return = 0.0
        self._steps = 0
        self._last_key: tuple[int, int] | None = None
        self.create_subscription(StepFeedback, VehicleTopics().step_feedback, self._on_feedback,
                                 DEEP_QOS)
        self.create_subscription(TrainerStats, TRAINER_STATS, self._on_stats, RELIABLE_QOS)
        self.save_client = self.create_client(SaveCheckpoint, '/av_td3_trainer/save_checkpoint')
        self.transitions = self.create_publisher(Transition, TRANSITIONS, DEEP_QOS)

    def _on_feedback(self, msg: StepFeedback) -> None:
        with self._lock:
            key = (msg.episode_id, msg.step)
            if key == self._last_key:   # the sim re-publishes a frame nobody answered
                return
            self._last_key = key
            if msg.step == 0:   # first frame of an episode: nothing earned yet
                self._return, self._steps = 0.0, 0
                return
            self.env_steps += 1
            self._steps += 1
            self._return += msg.reward
            if msg.terminated or msg.truncated:
                self.episodes.append(EpisodeRecord(
                    self.env_steps, self._return, float(msg.distance_m), self._steps,
                    msg.reason or ('truncated' if msg.truncated else 'terminated')))

    def _on_stats(self, msg: TrainerStats) -> None:
        with self._lock:
            self.stats = msg
            self._stats_seen += 1
            if msg.samples_per_insert > 0 and msg.insert_allowance == 0:
                self._stats_blocked += 1

    def pop_waiting(self) -> float | None:
        """Share of trainer stats since the last call with the rate limit reached (None: none)."""
        with self._lock:
            seen, blocked = self._stats_seen, self._stats_blocked
            self._stats_seen = self._stats_blocked = 0
        return blocked / seen if seen else None

    def snapshot(self) -> tuple[int, list[EpisodeRecord], TrainerStats | None]:
        with self._lock:
            return self.env_steps, list(self.episodes), self.stats

    def publish_demonstrations(self, transitions, window: int = 400,
                               stall_timeout: float = 60.0) -> int:
        """
        Publish demonstration transitions, at most ``window`` ahead of the trainer's count.

        The pacing keeps the reliable keep-last queues from overwriting what the trainer has
        not taken yet. Fails if the trainer takes nothing for ``stall_timeout`` seconds.
        Returns how many were published.
        """
        deadline = time.monotonic() + stall_timeout
        while self._stats_transitions() is None:
            if time.monotonic() > deadline:
                raise RuntimeError('no trainer stats: is the trainer running?')
            time.sleep(0.05)
        base = seen = self._stats_transitions()
        published = 0
        for msg in transitions:
            while (count := self._stats_transitions()) < base + published - window:
                if count > seen:
                    seen, deadline = count, time.monotonic() + stall_timeout
                elif time.monotonic() > deadline:
                    raise RuntimeError('the trainer stopped taking demonstration transitions')
                time.sleep(0.01)
            self.transitions.publish(msg)
            published += 1
        return published

    def _stats_transitions(self) -> int | None:
        with self._lock:
            return None if self.stats is None else int(self.stats.transitions)

    def save_checkpoint(self, timeout: float = 120.0) -> SaveCheckpoint.Response:
        """Call the trainer's save service (empty path: td3_step_<total_it>.pth)."""
        if not self.save_client.wait_for_service(timeout_sec=30.0):
            raise RuntimeError('the trainer save_checkpoint service is not available')
        future = self.save_client.call_async(SaveCheckpoint.Request())
        done = threading.Event()
        future.add_done_callback(lambda _: done.set())
        if not done.wait(timeout):
            raise RuntimeError(f'save_checkpoint did not answer within {timeout:.0f} s')
        return future.result()


def demonstrations(n: int, noise: float, track_seed: int, camera: dict[str, int],
                   scenario: int, max_steps: int, seed: int = 0):
    """
    Yield ``n`` Transition messages of the baseline controller (+ Gaussian noise) driving.

    Same road (``track_seed``), ``camera`` and observation as the simulator node of the demo, so
    the frames match the policy node's (``image_to_gray`` of the sim's bgra8 camera, within 1
    grey level); fresh episode seeds. The executed (noisy) action is stored, as for any actor.
    """
    import gymnasium as gym
    from av_td3_ros.driving.classical_controller import PurePursuitController
    import av_td3_ros.sim  # noqa: F401  (registers AvTd3Drive-v0)
    env = gym.make('AvTd3Drive-v0', scenario=scenario, track_seed=track_seed, camera=camera,
                   max_episode_steps=max_steps)
    controller = PurePursuitController()
    rng = np.random.default_rng(seed)
    episode, produced = 0, 0
    try:
        while produced < n:
            obs, _ = env.reset(seed=DEMO_SEED_BASE + seed + episode)
            controller.reset()
            step, done = 0, False
            while not done and produced < n:
                action = np.clip(controller.act(obs['vector']) + rng.normal(0.0, noise, 2),
                                 -1.0, 1.0).astype(np.float32)
                next_obs, reward, terminated, truncated, _ = env.step(action)
                msg = Transition()
                msg.actor_id = DEMO_ACTOR_ID
                msg.episode_id = episode
                msg.step = step
                msg.frame_height = msg.frame_width = obs['image'].shape[-1]
                msg.obs_frames = obs['image'].tobytes()
                msg.obs_vector = obs['vector'].tolist()
                msg.action = action.tolist()
                msg.reward = float(reward)
                msg.next_frame = next_obs['image'][-1].tobytes()
                msg.next_vector = next_obs['vector'].tolist()
                msg.terminated = bool(terminated)
                msg.truncated = bool(truncated)
                yield msg
                produced += 1
                step += 1
                obs, done = next_obs, terminated or truncated
            episode += 1
    finally:
        env.close()


def _clock(seconds: float) -> str:
    return f'{int(seconds // 60)}:{int(seconds % 60):02d}'


class Progress:
    """One progress line every few seconds (rewritten in place on a terminal)."""

    def __init__(self, start: float, end: float) -> None:
        self.budget_s = end - start
        self.start = start
        self._tty = sys.stdout.isatty()
        self._rates: deque[tuple[float, int, int]] = deque(maxlen=4)

    def show(self, env_steps: int, episodes: list[EpisodeRecord],
             stats: TrainerStats | None, waiting: float | None = None) -> None:
        """
        Print one line; ``waiting``: share of the time the actor waited for the learner.

        While the learner's samples-per-insert limit is reached the policy node holds its
        control, so the simulator re-publishes the frame (its 'no control for frame N' warning):
        the line says that this is the rate limit at work, not a fault.
        """
        print(self.line(env_steps, episodes, stats, waiting), end='' if self._tty else '\n',
              flush=True)

    def line(self, env_steps: int, episodes: list[EpisodeRecord],
             stats: TrainerStats | None, waiting: float | None = None) -> str:
        """Build the progress text (on a terminal: rewritten in place)."""
        now = time.monotonic()
        updates = int(stats.total_it) if stats else 0
        self._rates.append((now, env_steps, updates))
        t0, e0, u0 = self._rates[0]
        dt = max(now - t0, 1e-6)
        recent = episodes[-3:]
        returns = ' '.join(f'{e.episode_return:.0f}' for e in recent) or '-'
        distance = ' '.join(f'{e.distance_m:.0f}' for e in recent) or '-'
        line = (f'[demo] {_clock(now - self.start)}/{_clock(self.budget_s)} '
                f'env steps {env_steps} ({(env_steps - e0) / dt:.0f}/s) '
                f'episodes {len(episodes)} | updates {updates} ({(updates - u0) / dt:.1f}/s) '
                f'| last returns {returns} | distance m {distance}')
        if waiting:
            line += (f' | actor waiting for the learner (rate limit) {waiting:.0%} of the time'
                     ' (sim re-publishes held frames)')
        return '\r' + line[:200].ljust(200) if self._tty else line

    def close(self) -> None:
        if self._tty:
            print(flush=True)


def train(deadline: float, results: Path, params_files: list[Path],
          overrides: dict[str, dict[str, Any]], n_demonstrations: int = 0,
          demonstration_noise: float = 0.2) -> dict[str, Any]:
    """Run the training graph until ``deadline`` (monotonic), save through the service, stop."""
    checkpoint_dir = results / 'checkpoints'
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    trainer = {'checkpoint_dir': str(checkpoint_dir),
               'tensorboard_dir': str(results / 'tensorboard'), **overrides.get(
                   'av_td3_trainer', {})}
    policy = {'checkpoint_dir': str(checkpoint_dir), **overrides.get('av_td3_policy', {})}
    started = time.monotonic()
    bringup = Bringup('train_sim', params_files,
                      {**overrides, 'av_td3_trainer': trainer, 'av_td3_policy': policy})
    monitor = DemoMonitor(context=bringup.context)
    bringup.add_node(monitor)
    bringup.spin_in_background()
    progress = Progress(started, deadline)
    try:
        demos = 0
        sim = bringup.nodes['av_td3_sim']
        track_seed = int(sim.get_parameter('seed').value)
        bc_alpha = float(bringup.nodes['av_td3_trainer'].get_parameter('bc_alpha').value)
        camera = {'width': int(sim.get_parameter('camera_width').value),
                  'height': int(sim.get_parameter('camera_height').value),
                  'fov_deg': float(sim.get_parameter('camera_fov').value)}
        if n_demonstrations:
            demos = monitor.publish_demonstrations(demonstrations(
                n_demonstrations, demonstration_noise, track_seed, camera,
                scenario=int(sim.get_parameter('scenario').value),
                max_steps=int(sim.get_parameter('max_episode_steps').value)))
            print(f'[demo] published {demos} demonstration transitions (baseline controller '
                  f'+ noise {demonstration_noise:g}) as actor {DEMO_ACTOR_ID!r}', flush=True)
        next_line = time.monotonic() + PROGRESS_PERIOD_S
        while time.monotonic() < deadline:
            time.sleep(min(0.2, max(deadline - time.monotonic(), 0.0)))
            if time.monotonic() >= next_line:
                progress.show(*monitor.snapshot(), monitor.pop_waiting())
                next_line += PROGRESS_PERIOD_S
        progress.show(*monitor.snapshot())
        progress.close()
        response = monitor.save_checkpoint()
        if not response.success:
            raise RuntimeError(f'save_checkpoint failed: {response.message}')
        train_s = time.monotonic() - started
        env_steps, episodes, stats = monitor.snapshot()
    finally:
        monitor.destroy_node()
        bringup.shutdown()
    print(f'[demo] saved {response.path} (update {response.total_it}, '
          f'sha256 {response.sha256[:12]}) through ~/save_checkpoint', flush=True)
    return {
        'checkpoint_path': response.path, 'checkpoint_sha256': response.sha256,
        'train_updates': int(response.total_it), 'train_env_steps': env_steps,
        'demonstration_transitions': demos, 'demonstration_noise': demonstration_noise,
        'bc_alpha': bc_alpha, 'track_seed': track_seed, 'camera': camera,
        'train_episodes': len(episodes), 'train_s': train_s,
        'env_steps_per_s': env_steps / train_s if train_s > 0 else 0.0,
        'updates_per_s': int(response.total_it) / train_s if train_s > 0 else 0.0,
        'final_critic_loss': float(stats.critic_loss) if stats else math.nan,
        'final_q_mean': float(stats.q_mean) if stats else math.nan,
        'curve': [asdict(e) for e in episodes],
    }


def eval_step_seconds(samples: int = 60) -> tuple[float, float]:
    """Time one env step and one policy inference here and now (to budget the evaluation)."""
    import gymnasium as gym
    from av_td3_ros.driving.policy import Policy
    from av_td3_ros.formats.policy_export import export_td3_policy
    from av_td3_ros.learning.config import TD3Config
    from av_td3_ros.learning.td3 import TD3
    import av_td3_ros.sim  # noqa: F401  (registers AvTd3Drive-v0)
    policy = Policy.from_export_bytes(export_td3_policy(TD3(TD3Config())))
    env = gym.make('AvTd3Drive-v0')
    obs, _ = env.reset(seed=0)
    for _ in range(5):   # first calls set up kernels: not what a step costs
        obs, *_ = env.step([0.0, 0.3])
        policy.act(obs['image'], obs['vector'])
    start = time.perf_counter()
    for _ in range(samples):
        obs, *_ = env.step([0.0, 0.3])
    env_s = (time.perf_counter() - start) / samples
    start = time.perf_counter()
    for _ in range(samples):
        policy.act(obs['image'], obs['vector'])
    env.close()
    return env_s, (time.perf_counter() - start) / samples


def evaluate(act, seeds: list[int], scenario: int, max_steps: int, track_seed: int,
             camera: dict[str, Any], on_reset=None) -> EvalSummary:
    """
    Run one episode per seed in AvTd3Drive-v0 (the demo's road and camera) with ``act``.

    ``act(obs, info)`` sees the env's info too (the classical baseline reads the privileged gap
    to the car ahead from it); ``on_reset`` runs before each episode.
    """
    import gymnasium as gym
    import av_td3_ros.sim  # noqa: F401  (registers AvTd3Drive-v0)
    env = gym.make('AvTd3Drive-v0', scenario=scenario, track_seed=track_seed, camera=camera,
                   max_episode_steps=max_steps)
    episodes = []
    try:
        for seed in seeds:
            obs, info = env.reset(seed=seed)
            if on_reset is not None:
                on_reset()
            total, lateral, steps = 0.0, 0.0, 0
            terminated = truncated = False
            while not (terminated or truncated):
                obs, reward, terminated, truncated, info = env.step(act(obs, info))
                total += float(reward)
                lateral += abs(float(info['lateral_deviation_m']))
                steps += 1
            reason = info.get('reason') or ('truncated' if truncated else 'terminated')
            episodes.append(EvalEpisode(
                seed, total, float(info['distance_m']), lateral / max(steps, 1), steps,
                success=bool(info['is_success']), reason=reason))
    finally:
        env.close()
    km = sum(e.distance_m for e in episodes) / 1000.0
    collisions = sum(e.reason == 'collision' for e in episodes)
    return EvalSummary(
        collisions_per_km=collisions / km if km > 0 else (math.inf if collisions else 0.0),
        mean_return=float(np.mean([e.episode_return for e in episodes])),
        mean_distance_m=float(np.mean([e.distance_m for e in episodes])),
        mean_abs_lateral_m=float(np.mean([e.mean_abs_lateral_m for e in episodes])),
        success_rate=float(np.mean([e.success for e in episodes])),
        episodes=episodes)


def plot_curve(curve: list[dict], path: Path, policy: EvalSummary, random: EvalSummary,
               baseline: EvalSummary, title: str) -> None:
    """Episode return and distance against env steps, with the evaluation means as lines."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    steps = [c['env_steps'] for c in curve]
    fig, axes = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    for ax, key, label, attr in ((axes[0], 'episode_return', 'episode return', 'mean_return'),
                                 (axes[1], 'distance_m', 'distance driven (m)',
                                  'mean_distance_m')):
        ax.plot(steps, [c[key] for c in curve], '.', alpha=0.5, label='training episodes')
        if len(curve) >= 5:
            values = np.array([c[key] for c in curve])
            smooth = np.convolve(values, np.ones(5) / 5, mode='valid')
            ax.plot(steps[4:], smooth, '-', label='moving mean (5)')
        ax.axhline(getattr(policy, attr), color='green', ls='--', label='eval: trained policy')
        ax.axhline(getattr(baseline, attr), color='black', ls='-.',
                   label='eval: classical baseline')
        ax.axhline(getattr(random, attr), color='red', ls=':', label='eval: random policy')
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend(loc='best', fontsize=8)
    axes[1].set_xlabel('environment steps')
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _table(summaries: dict[str, EvalSummary]) -> str:
    rows = [('', *summaries),
            ('mean return', *(f'{e.mean_return:.1f}' for e in summaries.values())),
            ('mean distance (m)', *(f'{e.mean_distance_m:.1f}' for e in summaries.values())),
            ('mean |lateral| (m)', *(f'{e.mean_abs_lateral_m:.2f}' for e in summaries.values())),
            ('collisions / km', *(f'{e.collisions_per_km:.2f}' for e in summaries.values())),
            ('success rate', *(f'{e.success_rate:.2f}' for e in summaries.values()))]
    return '\n'.join(f'  {row[0]:<20}' + ''.join(f'{c:>20}' for c in row[1:]) for row in rows)


def main(argv: list[str] | None = None) -> int:
    """Run the demo; DEMO_MINUTES sets its total length (default 10)."""
    parser = argparse.ArgumentParser(description='make demo: train, save, evaluate')
    parser.add_argument('--minutes', type=float,
                        default=float(os.environ.get('DEMO_MINUTES', '10')),
                        help='total wall time (default: $DEMO_MINUTES or 10)')
    parser.add_argument('--results', type=Path, default=Path('results'))
    parser.add_argument('--params-file', type=Path, action='append', default=[],
                        help='more ROS parameters files after config/demo.yaml')
    parser.add_argument('--eval-episodes', type=int, default=5)
    parser.add_argument('--profile', choices=sorted(PROFILES),
                        default=os.environ.get('DEMO_PROFILE') or 'td3bc',
                        help='td3bc: TD3+BC with demonstrations of the classical controller '
                        '(default); td3: plain TD3 from its own experience only ($DEMO_PROFILE)')
    parser.add_argument('--scenario', type=int, choices=(0, 1, 2),
                        default=int(os.environ.get('DEMO_SCENARIO') or 0),
                        help='0 empty road, 1 light traffic, 2 heavy ($DEMO_SCENARIO)')
    parser.add_argument('--demonstrations', type=int, default=None,
                        help='baseline-controller transitions fed to the trainer (default: the '
                        "profile's: 3000 for td3bc, 0 for td3)")
    parser.add_argument('--demonstration-noise', type=float, default=0.2,
                        help='Gaussian noise std added to the baseline actions')
    parser.add_argument('--eval-reserve-s', type=float, default=None,
                        help='seconds kept for evaluation (default: from the episode count)')
    args = parser.parse_args(argv)
    wall_start = time.monotonic()
    # Before torch loads: OpenMP threads that spin while waiting make a 2-thread learner and
    # batch-1 inference several times slower whenever the cores are shared (measured:
    # docs/bench.md#design-measurements); passive waiting costs nothing when idle.
    os.environ.setdefault('OMP_WAIT_POLICY', 'PASSIVE')
    results = args.results.resolve()
    results.mkdir(parents=True, exist_ok=True)
    profile_files = [config_dir() / name for name in PROFILES[args.profile]['files']]
    demonstrations = (PROFILES[args.profile]['demonstrations'] if args.demonstrations is None
                      else args.demonstrations)
    scenario, max_steps = args.scenario, 1000
    env_s, act_s = eval_step_seconds()
    # worst case: every evaluation episode runs to the time limit; 10 % margin
    reserve = args.eval_reserve_s if args.eval_reserve_s is not None else \
        1.1 * args.eval_episodes * max_steps * (2 * env_s + act_s)
    train_end = wall_start + args.minutes * 60.0 - reserve - TAIL_RESERVE_S
    if train_end - time.monotonic() < 30:
        print(f'[demo] DEMO_MINUTES={args.minutes:g} leaves '
              f'{train_end - time.monotonic():.0f} s to train (evaluation needs ~{reserve:.0f} s '
              'here); give more minutes', flush=True)
        return 2
    print(f'[demo] training until {_clock(train_end - wall_start)} on the embedded simulator '
          f'(scenario {scenario}), then evaluating {args.eval_episodes} episodes each (~'
          f'{reserve:.0f} s reserved); profile {args.profile} '
          f'({", ".join(str(p) for p in profile_files)})', flush=True)
    outcome = train(train_end, results, [*profile_files, *args.params_file], {
        'av_td3_sim': {'scenario': scenario, 'max_episode_steps': max_steps}},
        demonstrations, args.demonstration_noise)

    from av_td3_ros.driving.policy import Policy
    policy = Policy.load(outcome['checkpoint_path'])
    seeds = [EVAL_SEED_BASE + i for i in range(args.eval_episodes)]
    eval_start = time.monotonic()
    track_seed = outcome['track_seed']
    trained = evaluate(lambda obs, info: policy.act(obs['image'], obs['vector']), seeds,
                       scenario, max_steps, track_seed, outcome['camera'])
    controller = PurePursuitController()
    baseline = evaluate(lambda obs, info: controller.act(obs['vector'],
                                                         gap_ahead_m=info['gap_ahead_m']),
                        seeds, scenario, max_steps, track_seed, outcome['camera'],
                        on_reset=controller.reset)
    rng = np.random.default_rng(0)
    random = evaluate(lambda obs, info: rng.uniform(-1.0, 1.0, 2).astype(np.float32), seeds,
                      scenario, max_steps, track_seed, outcome['camera'])
    eval_s = time.monotonic() - eval_start
    curve = outcome.pop('curve')
    demos = outcome['demonstration_transitions']
    method = (f'TD3+BC (alpha {outcome["bc_alpha"]:g})' if outcome['bc_alpha'] > 0 else 'TD3')
    if demos:
        method += f' with {demos} demonstration steps'
    plot_curve(curve, results / 'training_curve.png', trained, random, baseline,
               f'make demo: {method}, {outcome["train_updates"]} updates (policy node episodes)')
    report = {
        **outcome, 'wall_s': time.monotonic() - wall_start, 'eval_s': eval_s,
        'demo_minutes': args.minutes, 'scenario': scenario, 'eval_seeds': seeds,
        'eval_backend': 'gym env AvTd3Drive-v0 (same observation builder and renderer)',
        'profile': args.profile, 'profile_files': [str(p) for p in profile_files],
        'profile_parameters': [yaml.safe_load(p.read_text()) for p in profile_files],
        'policy': asdict(trained), 'baseline': asdict(baseline), 'random': asdict(random),
        'distance_ratio': trained.mean_distance_m / max(random.mean_distance_m, 1e-6),
        'training_curve': curve,
    }
    (results / 'demo.json').write_text(json.dumps(report, indent=2) + '\n')
    print(f'[demo] {outcome["train_env_steps"]} env steps, {outcome["train_updates"]} updates '
          f'in {_clock(outcome["train_s"])}; evaluation on seeds {seeds[0]}..{seeds[-1]}:')
    print(_table({'trained policy': trained, 'classical baseline': baseline,
                  'random policy': random}))
    print(f'[demo] wrote {results / "demo.json"} and {results / "training_curve.png"} '
          f'({_clock(report["wall_s"])} in all)', flush=True)
    return 0


if __name__ == '__main__':
    sys.exit(main())
