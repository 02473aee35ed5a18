"""
What a fleet looks like from one host (run as a script by test_fleet_hosts, not a test module).

``python fleet_observer.py ROLE [ROLE ...]`` prints one JSON line every 0.25 s: the newest
TrainerStats (per actor: transitions inserted, out of order, policy version), the newest
``/diagnostics`` values of every policy node (keyed by its actor id), and, per role, which nodes
publish and subscribe its camera and step-feedback topics (the DDS graph as this host sees it).
"""

from __future__ import annotations

import json
import sys
import time

from av_td3_interfaces.msg import TrainerStats
from av_td3_ros.ros.common import DIAGNOSTICS, TRAINER_STATS, VehicleTopics
from diagnostic_msgs.msg import DiagnosticArray
import rclpy
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy


class FleetObserver(Node):
    """Collect the trainer's and the actors' view; print it as JSON lines."""

    def __init__(self, roles: list[str]) -> None:
        super().__init__('fleet_observer')
        self.roles = roles
        self.trainer: dict | None = None
        self.actors: dict[str, dict[str, str]] = {}
        self.create_subscription(TrainerStats, TRAINER_STATS, self._on_stats,
                                 QoSProfile(depth=1, reliability=ReliabilityPolicy.BEST_EFFORT))
        self.create_subscription(DiagnosticArray, DIAGNOSTICS, self._on_diagnostics, 50)
        self.create_timer(0.25, self._print)

    def _on_stats(self, msg: TrainerStats) -> None:
        self.trainer = {
            'total_it': msg.total_it, 'transitions': msg.transitions,
            'buffer_size': msg.buffer_size, 'weights_version': msg.weights_version,
            'actors': {name: {'transitions': int(n), 'out_of_order': int(o),
                              'missed': int(m), 'policy_version': int(v)}
                       for name, n, o, m, v in zip(msg.actor_ids, msg.actor_transitions,
                                                   msg.actor_out_of_order, msg.actor_missed,
                                                   msg.actor_policy_versions, strict=True)}}

    def _on_diagnostics(self, msg: DiagnosticArray) -> None:
        for status in msg.status:
            values = {kv.key: kv.value for kv in status.values}
            values['level'] = str(int.from_bytes(status.level, 'little')
                                  if isinstance(status.level, bytes) else int(status.level))
            values['message'] = status.message
            self.actors[status.hardware_id] = values

    def _endpoints(self, topic: str, publishers: bool) -> list[str]:
        infos = (self.get_publishers_info_by_topic(topic) if publishers
                 else self.get_subscriptions_info_by_topic(topic))
        return sorted(f'{i.node_namespace.rstrip("/")}/{i.node_name}' for i in infos)

    def _print(self) -> None:
        graph = {}
        for role in self.roles:
            topics = VehicleTopics(role)
            graph[role] = {
                'image_publishers': self._endpoints(topics.image, True),
                'image_subscribers': self._endpoints(topics.image, False),
                'feedback_publishers': self._endpoints(topics.step_feedback, True),
                'feedback_subscribers': self._endpoints(topics.step_feedback, False)}
        print(json.dumps({'t': time.monotonic(), 'trainer': self.trainer,
                          'actors': self.actors, 'graph': graph}), flush=True)


def main() -> None:
    rclpy.init()
    node = FleetObserver(sys.argv[1:])
    try:
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        node.destroy_node()
        rclpy.try_shutdown()


if __name__ == '__main__':
    main()
