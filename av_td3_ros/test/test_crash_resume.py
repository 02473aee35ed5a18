"""
The trainer SIGKILLed mid-training and restarted with ``resume: latest`` (issue 14).

The training graph runs in three processes (``bringup``). The trainer writes a periodic
checkpoint every ``CHECKPOINT_EVERY`` updates (networks, both Adam states, counters; no replay
buffer: only ``~/save_checkpoint`` with ``include_replay_buffer`` writes one). It is killed with
SIGKILL, stays away for ``GAP_S`` seconds while the simulator and the policy node keep running,
and is started again with the same command plus ``-p resume:=latest`` (a first start with
``resume: latest`` and an empty checkpoint directory refuses to start, so the first start runs
without it). Checked each round:

- the restarted trainer resumes from the newest checkpoint on disk: its total_it (never below
  the last one logged before the kill), its counters and both optimizers (the critic's Adam step
  count equals total_it in a checkpoint saved after the resume, as it does without a restart);
  its replay buffer starts empty (so updates wait for ``learning_starts`` new transitions);
- while the trainer is gone, in ``synchronous`` mode the policy node uses up the last insert
  allowance, then holds its control (no control and no transition for the rest of the gap: the
  synchronous simulator does not step, the vehicle stands still in simulated time, neither
  driving nor braking); in ``realtime`` mode (no allowance) it keeps driving on its last weights
  and publishing transitions that nobody receives;
- the policy node (same process, never restarted) sends transitions to the new trainer, which
  counts them for its actor id, and acts with the weights the new trainer broadcasts.

Rounds per mode: ``AV_TD3_STRESS_CRASHES`` (1 in the normal suite, ``make stress`` runs 5).
"""

from __future__ import annotations

import io
import os
from pathlib import Path
import re
import signal
import subprocess
import threading
import time

from av_td3_interfaces.msg import TrainerStats, Transition, VehicleControl
from av_td3_interfaces.srv import SaveCheckpoint
from av_td3_ros.formats.checkpoint import newest_checkpoint, read_checkpoint
from av_td3_ros.ros.bringup import ProcessBringup
from av_td3_ros.ros.common import TRAINER_STATS, TRANSITIONS, VehicleTopics
import pytest
from rclpy.qos import QoSProfile, ReliabilityPolicy
from ros_harness import RosHarness, wait_for
from test_graph_processes import fast_graph

pytestmark = [pytest.mark.ros, pytest.mark.stress]

CRASHES = int(os.environ.get('AV_TD3_STRESS_CRASHES', '1'))
CHECKPOINT_EVERY = 40
GAP_S = 6.0
PERIODIC_LOG = re.compile(r'checkpoint (\S+) \(update (\d+), sha256 ([0-9a-f]{64})\)')
RESUMED_LOG = re.compile(r'resumed from (\S+) \(total_it (\d+), sha256 ([0-9a-f]{12})\)')


class Traffic:
    """Transitions, controls and trainer stats as a client process sees them, with times."""

    def __init__(self, harness: RosHarness) -> None:
        self.lock = threading.Lock()
        self.stats: TrainerStats | None = None
        self.transitions: list[tuple[float, int, int, int]] = []   # (t, episode, step, version)
        self.controls: list[tuple[float, float, float]] = []       # (t, throttle, brake)
        node = self._node = harness.client
        self._subs = [
            node.create_subscription(TrainerStats, TRAINER_STATS, self._on_stats,
                                     QoSProfile(depth=1,
                                                reliability=ReliabilityPolicy.BEST_EFFORT)),
            node.create_subscription(Transition, TRANSITIONS, self._on_transition, 500),
            node.create_subscription(VehicleControl, VehicleTopics().control,
                                     self._on_control, 100)]

    def _on_stats(self, msg: TrainerStats) -> None:
        with self.lock:
            self.stats = msg

    def _on_transition(self, msg: Transition) -> None:
        with self.lock:
            self.transitions.append((time.monotonic(), msg.episode_id, msg.step,
                                     msg.policy_version))

    def _on_control(self, msg: VehicleControl) -> None:
        with self.lock:
            self.controls.append((time.monotonic(), msg.throttle, msg.brake))

    def latest(self) -> TrainerStats | None:
        with self.lock:
            return self.stats

    def clear_stats(self) -> None:
        with self.lock:
            self.stats = None

    def since(self, t0: float, t1: float = float('inf')) -> tuple[list, list]:
        with self.lock:
            return ([x for x in self.transitions if t0 <= x[0] < t1],
                    [x for x in self.controls if t0 <= x[0] < t1])

    def close(self) -> None:
        for sub in self._subs:
            self._node.destroy_subscription(sub)


def _adam_steps(path: Path) -> tuple[int, int]:
    """Return (total_it, critic Adam step count) of a v1 checkpoint."""
    learner = read_checkpoint(path).content['learner']
    states = learner['optimizers']['critic']['state']
    steps = {int(s['step']) for s in states.values()}
    assert len(steps) == 1, f'parameters at different Adam steps: {steps}'
    return int(learner['total_it']), steps.pop()


class Restarted:
    """A trainer started by the test with the graph's command and ``resume:=latest``."""

    def __init__(self, graph: ProcessBringup, log: Path) -> None:
        self.log = log
        self._stream = open(log, 'wb')  # noqa: SIM115 (open for the process's lifetime)
        self.process = subprocess.Popen(
            graph.commands['av_td3_trainer'] + ['-p', 'resume:=latest'], env=graph.env,
            stdin=subprocess.DEVNULL, stdout=self._stream, stderr=subprocess.STDOUT,
            start_new_session=True)

    def text(self) -> str:
        return self.log.read_text(errors='replace')

    def kill(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(30)
        self._stream.close()


@pytest.mark.parametrize('mode', ['synchronous', 'realtime'])
def test_trainer_killed_and_resumed_under_running_actors(tmp_path, mode):
    ckpt = tmp_path / 'ckpt'
    overrides = fast_graph(ckpt)
    overrides['av_td3_trainer'].update(checkpoint_every=CHECKPOINT_EVERY, keep_checkpoints=3,
                                       mode=mode)
    output = io.StringIO()
    graph = ProcessBringup('train_sim', overrides=overrides, output=output)
    harness = RosHarness()
    traffic = Traffic(harness)
    trainer_pid = None
    restarted: list[Restarted] = []
    figures = []

    def logs() -> str:
        tail = '\n'.join(f'--- {r.log.name}\n{r.text()[-2000:]}' for r in restarted[-1:])
        return f'{output.getvalue()[-3000:]}\n{tail}'

    try:
        graph.start()
        policy = graph.processes['av_td3_policy']
        trainer_pid = graph.processes['av_td3_trainer'].pid
        trainer_log = output.getvalue
        for round_ in range(CRASHES):
            # train until at least two periodic checkpoints are on disk
            wait_for(lambda log=trainer_log: len(PERIODIC_LOG.findall(log())) >= 2, 180,
                     f'two periodic checkpoints (round {round_}):\n{logs()}')
            before = traffic.latest()
            logged = PERIODIC_LOG.findall(trainer_log())
            last_logged = int(logged[-1][1])
            path, _, _ = logged[-1]
            total_it, step = _adam_steps(Path(path))
            assert step == total_it, f'critic Adam step {step} != total_it {total_it}'
            assert read_checkpoint(Path(path)).content.get('replay') is None, \
                'a periodic checkpoint carries a replay buffer'
            versions_before = [v for *_, v in traffic.transitions]
            os.killpg(trainer_pid, signal.SIGKILL)
            killed = time.monotonic()
            traffic.clear_stats()
            time.sleep(GAP_S)
            assert policy.poll() is None, f'the policy node exited while the trainer was gone:\n' \
                                          f'{logs()}'
            gap_t, gap_c = traffic.since(killed + 0.3, killed + GAP_S)
            late_t, late_c = traffic.since(killed + GAP_S / 2, killed + GAP_S)
            if mode == 'synchronous':
                assert not late_t and not late_c, (
                    f'{len(late_t)} transitions and {len(late_c)} controls in the second half of '
                    f'the gap: the actor should hold once the insert allowance is used up')
            else:
                assert len(late_t) >= 10 and len(late_c) >= 10, (
                    f'realtime: the actor should keep driving (transitions {len(late_t)}, '
                    f'controls {len(late_c)} in the second half of the gap)')
                gap_versions = {v for *_, v in late_t}
                assert len(gap_versions) == 1 and min(gap_versions) >= max(versions_before), (
                    f'realtime: versions {gap_versions} in the gap, {max(versions_before)} '
                    'before it: the actor should act with its last weights')
            # the same command, resuming from the newest checkpoint
            newest = newest_checkpoint(ckpt)
            restart = Restarted(graph, tmp_path / f'trainer_restart_{round_}.log')
            restarted.append(restart)
            trainer_log = restart.text
            trainer_pid = restart.process.pid
            started = time.monotonic()
            match = wait_for(lambda r=restart: RESUMED_LOG.search(r.text()), 60,
                             f'the resume line (round {round_}):\n{logs()}')
            resumed_from, resumed_it = Path(match.group(1)), int(match.group(2))
            assert resumed_from == newest, f'resumed from {resumed_from}, newest is {newest}'
            assert resumed_it >= last_logged, (
                f'resumed at {resumed_it}, the last checkpoint logged was {last_logged}')
            assert resumed_it == _adam_steps(resumed_from)[0]
            first = wait_for(traffic.latest, 60, f'stats of the restarted trainer:\n{logs()}')
            assert first.total_it >= resumed_it, f'total_it went back to {first.total_it}'
            first_buffer = first.buffer_size
            # the actor sends again without a restart of its own; the new trainer learns on
            stats = wait_for(lambda n=resumed_it + 20: (s := traffic.latest()) and
                             s.total_it >= n and s, 120,
                             f'20 updates after the resume (round {round_}):\n{logs()}')
            back = time.monotonic() - started
            assert list(stats.actor_ids) and stats.actor_transitions[0] > 0
            assert policy.poll() is None, 'the policy node exited'
            # its first broadcast (the loaded weights) may carry a version number the actor
            # saw before; later ones go past every version of the killed trainer
            newest_version = max(versions_before)
            wait_for(lambda t=started, old=newest_version:
                     max((v for *_, v in traffic.since(t)[0]), default=0) > old, 120,
                     f'transitions made with weights of the resumed trainer:\n{logs()}')
            answer = harness.call(SaveCheckpoint, '/av_td3_trainer/save_checkpoint',
                                  SaveCheckpoint.Request(path=f'after_resume_{round_}.pth'))
            assert answer.success, answer.message
            total_it, step = _adam_steps(Path(answer.path))
            # a fresh Adam would count only the updates since the resume
            assert step == total_it > resumed_it, (
                f'critic Adam step {step}, total_it {total_it}, resumed at {resumed_it}: '
                'the optimizer state was not restored')
            figures.append(
                f'round {round_}: killed at ~{before.total_it} updates, resumed at {resumed_it} '
                f'(last logged {last_logged}) from {resumed_from.name}; gap: {len(gap_t)} '
                f'transitions, {len(gap_c)} controls; first buffer after resume {first_buffer}; '
                f'+20 updates {back:.1f} s after restart; Adam step {step} at {total_it}')
        died = {k: c for k, c in graph.exited().items() if k != 'av_td3_trainer'}
        assert not died, f'nodes of the graph died: {died}\n{logs()}'
    finally:
        traffic.close()
        for restart in restarted:
            restart.kill()
        code = graph.stop()
        harness.shutdown()
    print(f'\n{mode}: ' + '\n  '.join(figures))
    # the trainer bringup started was killed: its code is 137; the policy and sim ended cleanly
    assert code in (0, 137), output.getvalue()[-3000:]
    log = output.getvalue()
    for key in ('av_td3_sim', 'av_td3_policy'):
        assert f'[bringup] {key} exited with code' not in log, log[-3000:]
    at = log.find('Traceback')
    assert at < 0, log[max(0, at - 1500):at + 3000]
