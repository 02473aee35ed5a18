"""
End to end over real DDS: sim + policy (train mode) + trainer in one process via bringup.

A short run with tiny networks (the property is the plumbing, not the learning): transitions
reach the trainer, updates happen, broadcast weights reach the policy node (the transitions it
publishes carry increasing policy versions), periodic checkpoints appear, and a checkpoint saved
through the service deploys as a Policy.
"""

import threading

from av_td3_interfaces.msg import TrainerStats, Transition, VehicleControl
from av_td3_interfaces.srv import SaveCheckpoint
from av_td3_ros.driving.policy import Policy
from av_td3_ros.ros.bringup import Bringup
import numpy as np
import pytest
from rclpy.node import Node
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from ros_harness import tiny_graph, wait_for
import torch

pytestmark = pytest.mark.ros

BATCH = 8
LEARNING_STARTS = 32


class Watcher(Node):
    """Record what flows through the graph: transitions, controls, trainer stats."""

    def __init__(self, **kwargs) -> None:
        super().__init__('e2e_watcher', **kwargs)
        self.lock = threading.Lock()
        self.versions: list[int] = []
        self.actors: set[str] = set()
        self.controls = 0
        self.stats: TrainerStats | None = None
        deep = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=200,
                          reliability=ReliabilityPolicy.RELIABLE)
        self.create_subscription(Transition, '/av_td3/transitions', self._on_transition, deep)
        self.create_subscription(VehicleControl, '/carla/ego_vehicle/vehicle_control_cmd',
                                 self._on_control, deep)
        self.create_subscription(TrainerStats, '/av_td3_trainer/stats', self._on_stats, 10)
        self.save = self.create_client(SaveCheckpoint, '/av_td3_trainer/save_checkpoint')

    def _on_transition(self, msg: Transition) -> None:
        with self.lock:
            self.versions.append(msg.policy_version)
            self.actors.add(msg.actor_id)

    def _on_control(self, msg: VehicleControl) -> None:
        with self.lock:
            self.controls += 1

    def _on_stats(self, msg: TrainerStats) -> None:
        with self.lock:
            self.stats = msg


@pytest.fixture
def graph(tmp_path):
    torch.set_num_threads(1)
    params = tiny_graph(tmp_path, BATCH, LEARNING_STARTS)
    params['av_td3_sim']['seed'] = 3
    params['av_td3_trainer'].update(buffer_capacity=1000, checkpoint_every=10, keep_checkpoints=2)
    bringup = Bringup('train_sim', overrides=params)
    watcher = Watcher(context=bringup.context)
    bringup.add_node(watcher)
    bringup.spin_in_background()
    yield bringup, watcher, tmp_path
    watcher.destroy_node()
    bringup.shutdown()


def test_sim_policy_trainer_learn_together(graph):
    bringup, watcher, checkpoint_dir = graph
    trainer = bringup.nodes['av_td3_trainer']

    def stats():
        with watcher.lock:
            return watcher.stats

    wait_for(lambda: stats() and stats().transitions >= LEARNING_STARTS, 60,
             f'{LEARNING_STARTS} transitions at the trainer')
    wait_for(lambda: stats().total_it >= 20, 60, '20 updates')
    # weights broadcast every 5 updates reach the policy node: it acts with them
    wait_for(lambda: max(watcher.versions, default=0) >= 2, 60,
             'transitions made with broadcast weights version >= 2')
    with watcher.lock:
        versions = list(watcher.versions)
        assert watcher.controls >= len(versions) > LEARNING_STARTS
        assert len(watcher.actors) == 1
    assert versions[0] == 0                 # TD3 warm-up: random actions before any weights
    assert versions == sorted(versions)     # versions only go up
    # periodic checkpoints, the oldest pruned (keep 2)
    wait_for(lambda: len(list(checkpoint_dir.glob('td3_step_*.pth'))) == 2
             and not (checkpoint_dir / 'td3_step_10.pth').exists(), 60,
             'two periodic checkpoints, td3_step_10.pth pruned')
    # the rate limiter held the update-to-data ratio (one update per transition, + slack)
    final = stats()
    assert final.total_it <= final.transitions - LEARNING_STARTS + 8 + 1

    future = watcher.save.call_async(SaveCheckpoint.Request(path='e2e.pth'))
    wait_for(future.done, 60, 'the save_checkpoint answer')
    response = future.result()
    assert response.success, response.message
    policy = Policy.load(response.path)
    action = policy.act(np.zeros((4, 84, 84), np.uint8), np.zeros(53, np.float32))
    assert action.shape == (2,) and np.all(np.abs(action) <= 1.0)
    assert trainer.learner.running
