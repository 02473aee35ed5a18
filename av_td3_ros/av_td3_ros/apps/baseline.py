"""
``baseline``: run the pure-pursuit + PID reference driver and print its metrics.

Gym mode (default) drives ``AvTd3Drive-v0`` directly. ``--ros`` drives a running simulator over
ROS instead (``sim_node`` or CARLA with the episode node): it answers every camera frame with a
``VehicleControl`` stamped like the frame (so the synchronous simulator steps), builds the
observation vector from odometry + the waypoints Path exactly like the policy node, and reads the
episode metrics from ``/av_td3/step_feedback``.

    baseline --episodes 10 --scenario 0 --json
    baseline --ros --episodes 3 --json          # with sim_node running
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time

from av_td3_interfaces.msg import StepFeedback, VehicleControl
from av_td3_ros.driving.classical_controller import (
    BaselineConfig, EpisodeStats, evaluate, PurePursuitController, summarize)
from av_td3_ros.driving.observation import (
    action_to_control, build_vector, ObservationError, ObservationSpec, Route, yaw_from_quaternion)
from av_td3_ros.ros.common import camera_qos, LATCHED_QOS, RELIABLE_QOS, VehicleTopics
from nav_msgs.msg import Odometry, Path
import numpy as np
import rclpy
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node
from sensor_msgs.msg import Image

TOPICS = VehicleTopics()


def run_gym(episodes: int, scenario: int, seed: int, track_seed: int, gap_sensor: bool,
            max_episode_steps: int) -> dict:
    """Evaluate the baseline on the gym env; ``gap_sensor`` gives it an ideal range sensor."""
    import gymnasium as gym

    import av_td3_ros.sim  # noqa: F401 - registers AvTd3Drive-v0

    env = gym.make('AvTd3Drive-v0', scenario=scenario, track_seed=track_seed,
                   step_limit=max_episode_steps)
    controller = PurePursuitController(BaselineConfig())

    def act(obs, info):
        gap = info['gap_ahead_m'] if gap_sensor else math.inf
        return controller.act(obs['vector'], gap_ahead_m=gap)

    try:
        return evaluate(env, act, episodes, seed=seed, on_reset=controller.reset)
    finally:
        env.close()


def run_ros(episodes: int, timeout_s: float, args: list[str] | None = None) -> dict:
    """Drive a running simulator over ROS for ``episodes`` complete episodes."""
    rclpy.init(args=args)
    node = BaselineNode(episodes)
    try:
        deadline = time.monotonic() + timeout_s
        while rclpy.ok() and not node.done and time.monotonic() < deadline:
            rclpy.spin_once(node, timeout_sec=0.1)
        if not node.episodes:
            raise RuntimeError(f'no episode completed within {timeout_s:g} s: is the simulator '
                               'running (sim_node) on this ROS_DOMAIN_ID?')
        return summarize(node.episodes)
    except ExternalShutdownException:
        return summarize(node.episodes) if node.episodes else {}
    finally:
        node.destroy_node()
        rclpy.try_shutdown()


class BaselineNode(Node):
    """
    The baseline as a ROS controller: answers every camera frame with a stamped control.

    The observation vector is built from odometry + the waypoints Path with
    ``observation.build_vector`` (as the policy node does); a frame is answered once the odometry
    with the same stamp is in, whichever of the two arrives first. Episode metrics come from
    ``step_feedback``. No range sensor: it does not see other vehicles.
    """

    def __init__(self, episodes: int, **kwargs) -> None:
        super().__init__('av_td3_baseline', **kwargs)
        self.target_episodes = episodes
        self.episodes: list[EpisodeStats] = []
        self.spec = ObservationSpec()
        self.controller = PurePursuitController(BaselineConfig(), self.spec)
        self._route: Route | None = None
        self._odometry: dict[tuple[int, int], tuple[float, float, float, float]] = {}
        self._pending: object | None = None       # header of a frame waiting for its odometry
        self._current: EpisodeStats | None = None
        self._last_stamp_s: float | None = None
        self._pub = self.create_publisher(VehicleControl, TOPICS.control, RELIABLE_QOS)
        self.create_subscription(Path, TOPICS.waypoints, self._on_path, LATCHED_QOS)
        self.create_subscription(Odometry, TOPICS.odometry, self._on_odometry, RELIABLE_QOS)
        self.create_subscription(StepFeedback, TOPICS.step_feedback, self._on_feedback,
                                 RELIABLE_QOS)
        self.create_subscription(Image, TOPICS.image, self._on_image, camera_qos(True, 1))

    @property
    def done(self) -> bool:
        return len(self.episodes) >= self.target_episodes

    def _on_path(self, msg: Path) -> None:
        xy = np.array([(p.pose.position.x, p.pose.position.y) for p in msg.poses])
        try:
            self._route = Route(xy)
        except ObservationError as exc:
            self.get_logger().error(f'refused waypoints: {exc}', throttle_duration_sec=5.0)
            return
        self.controller.reset()

    def _on_odometry(self, msg: Odometry) -> None:
        q = msg.pose.pose.orientation
        key = (msg.header.stamp.sec, msg.header.stamp.nanosec)
        self._odometry[key] = (msg.pose.pose.position.x, msg.pose.pose.position.y,
                               yaw_from_quaternion(q.x, q.y, q.z, q.w), msg.twist.twist.linear.x)
        while len(self._odometry) > 20:
            self._odometry.pop(next(iter(self._odometry)))
        if self._pending is not None and key == (self._pending.stamp.sec,
                                                 self._pending.stamp.nanosec):
            self._answer(self._pending)

    def _on_image(self, msg: Image) -> None:
        if (msg.header.stamp.sec, msg.header.stamp.nanosec) in self._odometry:
            self._answer(msg.header)
        else:
            self._pending = msg.header

    def _answer(self, header) -> None:
        self._pending = None
        if self._route is None:
            self.get_logger().warning('no waypoints yet: braking', throttle_duration_sec=5.0)
            action = np.array([0.0, -1.0])
        else:
            x, y, yaw, speed = self._odometry[(header.stamp.sec, header.stamp.nanosec)]
            stamp_s = header.stamp.sec + 1e-9 * header.stamp.nanosec
            dt = 0.05 if self._last_stamp_s is None else min(max(stamp_s - self._last_stamp_s,
                                                                 1e-3), 0.5)
            self._last_stamp_s = stamp_s
            vector, _ = build_vector(self._route, x, y, yaw, speed, self.spec)
            action = self.controller.act(vector, dt=dt)
        steer, throttle, brake = action_to_control(action)
        msg = VehicleControl(throttle=throttle, steer=steer, brake=brake)
        msg.header.stamp = header.stamp
        self._pub.publish(msg)

    def _on_feedback(self, msg: StepFeedback) -> None:
        if msg.step == 0:
            self._current = EpisodeStats()
            return
        if self._current is None:       # joined mid-episode: wait for the next one
            return
        self._current.add_step(msg.reward, msg.speed_mps, msg.lateral_deviation_m,
                               msg.distance_m)
        if msg.terminated or msg.truncated:
            self._current.reason = msg.reason
            self.episodes.append(self._current)
            self._current = None
            self.get_logger().info(f'episode {len(self.episodes)}: {msg.reason}, '
                                   f'{msg.distance_m:.0f} m')


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog='baseline', description=__doc__.split('\n\n')[0])
    p.add_argument('--episodes', type=int, default=10, help='episodes to run (default 10)')
    p.add_argument('--scenario', type=int, default=0, choices=(0, 1, 2),
                   help='traffic: 0 none, 1 light, 2 heavy (gym mode)')
    p.add_argument('--seed', type=int, default=0, help='seed of the first episode (gym mode)')
    p.add_argument('--track-seed', type=int, default=0, help='road seed (gym mode)')
    p.add_argument('--max-episode-steps', type=int, default=1000)
    p.add_argument('--no-gap-sensor', action='store_true',
                   help='drive without the ideal range sensor to the vehicle ahead (gym mode; '
                        'the ROS mode never has one)')
    p.add_argument('--ros', action='store_true', help='drive a running simulator over ROS')
    p.add_argument('--timeout', type=float, default=600.0, help='ROS mode: give up after (s)')
    p.add_argument('--json', action='store_true', help='print the metrics as one JSON object')
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ros_args = argv[argv.index('--ros-args'):] if '--ros-args' in argv else []
    opts = _parser().parse_args(argv[:len(argv) - len(ros_args)])
    if opts.episodes < 1:
        print('baseline: --episodes must be >= 1', file=sys.stderr)
        return 2
    try:
        if opts.ros:
            metrics = run_ros(opts.episodes, opts.timeout, ['baseline', *ros_args])
        else:
            metrics = run_gym(opts.episodes, opts.scenario, opts.seed, opts.track_seed,
                              not opts.no_gap_sensor, opts.max_episode_steps)
    except (RuntimeError, ValueError) as exc:
        print(f'baseline: {exc}', file=sys.stderr)
        return 1
    if opts.json:
        print(json.dumps(metrics, sort_keys=True))
    else:
        for key in sorted(metrics):
            value = metrics[key]
            print(f'{key:>30}: {value:.3f}' if isinstance(value, float) else
                  f'{key:>30}: {value}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
