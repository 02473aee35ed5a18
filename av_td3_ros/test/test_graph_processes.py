"""
The training graph as ``ros2 launch`` runs it: every node in its own process (``bringup``).

Processes start in a random order with random delays (0-3 s), as they do when a user starts
them by hand or on several machines; the synchronous loop must not deadlock on a frame published
before the policy subscribed. The short loop here runs in ``make test``; ``make stress`` sets
``AV_TD3_STRESS_STARTS=100``.
"""

from __future__ import annotations

import io
import os
import random
import threading
import time

from av_td3_interfaces.msg import TrainerStats, Transition
from av_td3_interfaces.srv import SaveCheckpoint
from av_td3_ros.driving.policy import Policy
from av_td3_ros.ros.bringup import ProcessBringup
from av_td3_ros.ros.common import TRAINER_STATS, TRANSITIONS
import numpy as np
import pytest
from rclpy.qos import QoSProfile, ReliabilityPolicy
from ros_harness import RosHarness, tiny_graph, wait_for

pytestmark = pytest.mark.ros

BATCH = 8
LEARNING_STARTS = 32
STARTS = int(os.environ.get('AV_TD3_STRESS_STARTS', '3'))
FIRST_TRANSITION_S = 20.0
STARTUP_S = 120.0
NODES = {'av_td3_sim', 'av_td3_policy', 'av_td3_trainer'}


def fast_graph(checkpoint_dir) -> dict[str, dict]:
    """Return the tiny graph of ros_harness, without periodic checkpoints."""
    params = tiny_graph(checkpoint_dir, BATCH, LEARNING_STARTS)
    params['av_td3_trainer'].update(buffer_capacity=2000, checkpoint_every=0)
    return params


class Watcher:
    """What reaches a client process: trainer stats and the policy versions of transitions."""

    def __init__(self, harness: RosHarness) -> None:
        self.lock = threading.Lock()
        self.stats: TrainerStats | None = None
        self.versions: list[int] = []
        node = harness.client
        self._subs = [
            node.create_subscription(TrainerStats, TRAINER_STATS, self._on_stats,
                                     QoSProfile(depth=1,
                                                reliability=ReliabilityPolicy.BEST_EFFORT)),
            node.create_subscription(Transition, TRANSITIONS, self._on_transition, 200)]
        self._node = node

    def _on_stats(self, msg: TrainerStats) -> None:
        with self.lock:
            self.stats = msg

    def _on_transition(self, msg: Transition) -> None:
        with self.lock:
            self.versions.append(msg.policy_version)

    def latest(self) -> TrainerStats | None:
        with self.lock:
            return self.stats

    def close(self) -> None:
        for sub in self._subs:
            self._node.destroy_subscription(sub)


@pytest.fixture
def harness():
    h = RosHarness()
    yield h
    h.shutdown()


def _start_shuffled(graph: ProcessBringup, rng: random.Random) -> threading.Thread:
    order = list(graph.commands)
    rng.shuffle(order)
    delays = {key: rng.uniform(0.0, 3.0) for key in order}
    starter = threading.Thread(target=graph.start, args=(order, delays), daemon=True)
    starter.start()
    return starter


def test_training_graph_in_separate_processes_learns_and_saves(harness, tmp_path):
    output = io.StringIO()
    graph = ProcessBringup('train_sim', overrides=fast_graph(tmp_path), output=output)
    watcher = Watcher(harness)
    try:
        _start_shuffled(graph, random.Random(0)).join()
        assert len({p.pid for p in graph.processes.values()}) == 3
        wait_for(lambda: (s := watcher.latest()) and s.total_it >= 20, 120,
                 f'20 updates at the trainer (output so far:\n{output.getvalue()[-3000:]})')
        # weights broadcast every 5 updates reach the policy process: it acts with them
        wait_for(lambda: max(watcher.versions, default=0) >= 2, 60,
                 'transitions made with broadcast weights version >= 2')
        stats = watcher.latest()
        assert stats.transitions >= LEARNING_STARTS
        assert list(stats.actor_ids) and stats.actor_transitions[0] > 0
        response = harness.call(SaveCheckpoint, '/av_td3_trainer/save_checkpoint',
                                SaveCheckpoint.Request(path='processes.pth'))
        assert response.success, response.message
        policy = Policy.load(response.path)
        action = policy.act(np.zeros((4, 84, 84), np.uint8), np.zeros(53, np.float32))
        assert action.shape == (2,) and np.all(np.abs(action) <= 1.0)
        assert not graph.exited(), f'a node died:\n{output.getvalue()[-3000:]}'
    finally:
        watcher.close()
        code = graph.stop()
    log = output.getvalue()
    assert code == 0, log[-3000:]
    for name in ('av_td3_sim', 'av_td3_policy', 'av_td3_trainer'):
        assert f'[{name}] ' in log, f'no output prefixed with {name}'
    assert 'Traceback' not in log, log[-3000:]


@pytest.mark.stress
def test_any_start_order_and_delay_trains(harness, tmp_path):
    rng = random.Random(int(os.environ.get('AV_TD3_STRESS_SEED', '1')))
    watcher = Watcher(harness)
    times = []
    try:
        for start in range(STARTS):
            output = io.StringIO()
            graph = ProcessBringup('train_sim', overrides=fast_graph(tmp_path / str(start)),
                                   output=output)
            try:
                _start_shuffled(graph, rng).join()
                launched = time.monotonic()
                # The clock starts when all three nodes are on the DDS graph: starting the
                # interpreters (torch included) alone took over 20 s at a load average of 15.
                wait_for(lambda: NODES.issubset(
                    name for name, _ in harness.client.get_node_names_and_namespaces()),
                         STARTUP_S, f'the three nodes on the graph (start {start}):\n'
                         f'{output.getvalue()[-3000:]}')
                up = time.monotonic()
                # (the stats were cleared after the previous graph's processes had ended)
                wait_for(lambda: (s := watcher.latest()) and s.transitions > 0,
                         FIRST_TRANSITION_S,
                         f'transitions at the trainer within {FIRST_TRANSITION_S} s of the '
                         f'nodes being up (start {start}):\n{output.getvalue()[-3000:]}')
                times.append((up - launched, time.monotonic() - up))
            finally:
                code = graph.stop()
                with watcher.lock:
                    watcher.stats = None
            assert code == 0, output.getvalue()[-3000:]
    finally:
        watcher.close()
    for label, values in (('last process start -> all nodes on the graph', [t[0] for t in times]),
                          ('all nodes up -> first transition at the trainer',
                           [t[1] for t in times])):
        print(f'{STARTS} starts, {label}, s: median {sorted(values)[len(values) // 2]:.2f}, '
              f'max {max(values):.2f}')
