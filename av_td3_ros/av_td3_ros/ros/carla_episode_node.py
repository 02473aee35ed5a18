"""
The CARLA episode node ``av_td3_carla_episode``: routes, rewards and resets over carla-ros-bridge.

The embedded simulator publishes its own route and step feedback; with CARLA the bridge publishes
camera, odometry, collision and lane invasion topics, and this node adds the rest (DESIGN §4, §8):
the route as a transient-local nav_msgs/Path on ``/carla/<role_name>/waypoints``, one
``/av_td3/step_feedback`` per camera frame stamped with that frame, and ``~/reset``. The logic is
``av_td3_ros.carla_episode`` (no ROS); this module is the glue.

``carla`` (the CARLA Python API) and ``carla_msgs`` (built with carla-ros-bridge) are imported only
by ``main()``, which stops with one clear line when either is missing.

Threads: the subscriptions only queue stamps, odometry and events under a lock. One worker
thread owns the carla client: it connects (retrying while the bridge loads the town and spawns
the ego vehicle), plans routes, teleports the ego vehicle and turns each decided camera frame into
StepFeedback. ``~/reset`` hands its request to the worker and waits in its own callback group,
so frames keep flowing meanwhile.
"""

from __future__ import annotations

from dataclasses import dataclass
import math
import threading
import time
from typing import Any

from av_td3_interfaces.msg import StepFeedback
from av_td3_ros.carla.episode import (
    CarlaEpisode, CarlaEpisodeConfig, CarlaSetupError, CollisionRecord, EpisodePlan, FrameSync,
    LaneInvasionRecord, OdometrySample, RoutePlanningError, StepOutcome)
from av_td3_ros.driving.observation import yaw_from_quaternion
from av_td3_ros.ros.common import (
    camera_qos, DEFAULT_ROLE, LATCHED_QOS, ParameterTable, RELIABLE_QOS, reliable_qos, run_node,
    VehicleTopics)
from av_td3_ros.ros.executor import PooledExecutor
from av_td3_ros.sim.reward import load_reward_weights, TERM_NAMES
from geometry_msgs.msg import PoseStamped
from nav_msgs.msg import Odometry, Path
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.node import Node
from sensor_msgs.msg import CameraInfo
from std_srvs.srv import Trigger

NODE_NAME = 'av_td3_carla_episode'

# every parameter but the topics; read once at start (read-only)
PARAMETERS = ParameterTable({
    'host': ('localhost', 'CARLA server host (the one the bridge connects to)', None),
    'port': (2000, 'CARLA server RPC port', (1, 65535)),
    'timeout_s': (10.0, 'carla client RPC timeout', (0.5, 600.0)),
    'connect_retry_s': (2.0, 'wait between connection attempts (town loading, ego spawning)',
                        (0.1, 60.0)),
    'role_name': (DEFAULT_ROLE, 'role_name of the ego vehicle (carla_spawn_objects id)', None),
    'town': ('', 'expected town (e.g. Town01); empty accepts whatever the bridge loaded', None),
    'random_start': (True, 'start each episode at a random spawn point (else start_xy)', None),
    'start_xy': ([0.0, 0.0], 'start [x, y] in the bridge map frame (ENU), when not random',
                 None),
    'random_goal': (True, 'random route of route_length_m (else plan to goal_xy)', None),
    'goal_xy': ([0.0, 0.0], 'goal [x, y] in the bridge map frame (ENU), when not random', None),
    'route_length_m': (300.0, 'length of a random route', (10.0, 100000.0)),
    'min_route_length_m': (40.0, 'random starts with a shorter route (dead end) are re-drawn',
                           (2.0, 100000.0)),
    'waypoint_spacing_m': (2.0, 'route waypoint spacing (the observation expects 2 m)',
                           (0.5, 10.0)),
    'route_complete_margin_m': (2.0, 'route complete this close to its end', (0.0, 50.0)),
    'spawn_z_offset_m': (0.5, 'lift above the road when teleporting the ego vehicle',
                         (0.0, 5.0)),
    'start_tolerance_m': (2.0, 'odometry this close to the start pose marks step 0',
                          (0.1, 20.0)),
    'start_clearance_m': (15.0, 'NPC vehicles are kept this far from the start pose',
                          (0.0, 200.0)),
    'reset_retry_frames': (40, 're-send the teleport after this many frames without it',
                           (1, 10000)),
    'scenario': (0, 'NPC traffic: 0 none, 1 light, 2 heavy (Traffic Manager autopilot)',
                 (0, 2)),
    'npc_light': (15, 'NPC vehicles in scenario 1', (0, 1000)),
    'npc_heavy': (50, 'NPC vehicles in scenario 2', (0, 1000)),
    'weather': ('', 'carla.WeatherParameters preset (e.g. ClearNoon); empty leaves it', None),
    'seed': (0, 'seed of starts, routes, NPC choice and the Traffic Manager', (0, 2**31 - 1)),
    'tm_port': (8000, 'Traffic Manager port', (1, 65535)),
    'tm_synchronous': (False, 'Traffic Manager synchronous mode; keep false with the bridge '
                       'ticking (docs/carla.md)', None),
    'max_episode_steps': (1000, 'truncate an episode after this many steps', (1, 10_000_000)),
    'auto_reset': (True, 'start the next episode as soon as one ends (else wait for ~/reset)',
                   None),
    'reward_config': ('', 'YAML overriding the packaged reward weights; empty = packaged',
                      None),
    'pair_tolerance_s': (0.06, 'max age of the odometry paired with a camera frame',
                         (0.0, 1.0)),
    'pair_grace_s': (0.03, 'wall time to wait for a frame odometry and events', (0.0, 1.0)),
    'camera_qos_reliability': ('reliable', 'camera_info subscription reliability (DESIGN §4)',
                               ('reliable', 'best_effort')),
    'camera_qos_depth': (10, 'camera_info subscription queue depth (keep-last)', (1, 1000)),
}, read_only=True)

# per-role topic parameters: name -> (VehicleTopics attribute, description); empty (the
# default) takes the role's topic, so a role_name given at launch moves them all
TOPIC_PARAMETERS = {
    'camera_info_topic': ('camera_info', 'front camera_info: one step per frame (same stamp '
                          'as the image, far smaller to receive)'),
    'odometry_topic': ('odometry', 'bridge odometry (nav_msgs/Odometry, map frame)'),
    'collision_topic': ('collision', 'carla_msgs/CarlaCollisionEvent'),
    'lane_invasion_topic': ('lane_invasion', 'carla_msgs/CarlaLaneInvasionEvent'),
    'waypoints_topic': ('waypoints', 'route output (nav_msgs/Path, transient-local)'),
    'step_feedback_topic': ('step_feedback', 'StepFeedback output topic (default role: '
                            '/av_td3/step_feedback, else /av_td3/<role_name>/step_feedback)'),
}


def _stamp_seconds(stamp: Any) -> float:
    return stamp.sec + stamp.nanosec * 1e-9


@dataclass
class _ResetRequest:
    done: threading.Event
    success: bool = False
    message: str = ''


class CarlaEpisodeNode(Node):
    """ROS glue around :class:`CarlaEpisode`; ``carla`` and ``carla_msgs`` are passed in."""

    def __init__(self, carla: Any, carla_msgs: Any, **kwargs: Any) -> None:
        super().__init__(NODE_NAME, **kwargs)
        self._carla = carla
        PARAMETERS.declare(self)
        value = PARAMETERS.read(self)
        role = value['role_name']
        topics = VehicleTopics(role)
        for name, (attribute, description) in TOPIC_PARAMETERS.items():
            default = getattr(topics, attribute)
            value[name] = self.declare_parameter(
                name, '', ParameterDescriptor(description=f'{description}; empty: {default}',
                                              read_only=True)
            ).value or default
        self._p = value
        config = CarlaEpisodeConfig(**{
            name: value[name] for name in CarlaEpisodeConfig.__dataclass_fields__
            if name in value})
        weights = load_reward_weights(value['reward_config'] or None)
        self._episode = CarlaEpisode(carla, None, config, weights)
        self._sync = FrameSync(value['pair_tolerance_s'], value['pair_grace_s'])
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._resets: list[_ResetRequest] = []
        self.feedback_count = 0
        self.last_plan: EpisodePlan | None = None

        inputs = MutuallyExclusiveCallbackGroup()
        self._path_pub = self.create_publisher(Path, value['waypoints_topic'], LATCHED_QOS)
        self._feedback_pub = self.create_publisher(
            StepFeedback, value['step_feedback_topic'], RELIABLE_QOS)
        self.create_subscription(
            CameraInfo, value['camera_info_topic'], self._on_camera_info,
            camera_qos(value['camera_qos_reliability'] == 'reliable', value['camera_qos_depth']),
            callback_group=inputs)
        # 50 Hz odometry against 20 Hz frames: room for a frame's worth of poses
        self.create_subscription(Odometry, value['odometry_topic'], self._on_odometry,
                                 reliable_qos(50), callback_group=inputs)
        self.create_subscription(carla_msgs.CarlaCollisionEvent, value['collision_topic'],
                                 self._on_collision, RELIABLE_QOS, callback_group=inputs)
        self.create_subscription(carla_msgs.CarlaLaneInvasionEvent,
                                 value['lane_invasion_topic'], self._on_lane_invasion,
                                 RELIABLE_QOS, callback_group=inputs)
        self.create_service(Trigger, '~/reset', self._on_reset,
                            callback_group=MutuallyExclusiveCallbackGroup())
        self.get_logger().info(
            f'waiting for CARLA at {value["host"]}:{value["port"]} and ego vehicle '
            f'{role!r}; steps from {value["camera_info_topic"]}')
        self._worker = threading.Thread(target=self._run, name='carla_worker', daemon=True)
        self._worker.start()

    # ------------------------------------------------------------------ subscriptions

    def _on_camera_info(self, msg: CameraInfo) -> None:
        with self._lock:
            self._sync.add_frame(_stamp_seconds(msg.header.stamp), time.monotonic(),
                                 msg.header.stamp)
        self._wake.set()

    def _on_odometry(self, msg: Odometry) -> None:
        p, q, v = msg.pose.pose.position, msg.pose.pose.orientation, msg.twist.twist.linear
        values = (p.x, p.y, p.z, q.x, q.y, q.z, q.w, v.x, v.y, v.z)
        if not all(math.isfinite(x) for x in values) or q.x ** 2 + q.y ** 2 + q.z ** 2 \
                + q.w ** 2 < 1e-12:
            self.get_logger().error(f'dropping odometry with NaN/inf or a zero quaternion: '
                                    f'{values}', throttle_duration_sec=5.0)
            return
        # The bridge's twist is in the vehicle frame: x is the forward speed.
        speed = math.copysign(math.sqrt(v.x ** 2 + v.y ** 2 + v.z ** 2), v.x)
        sample = OdometrySample(stamp=_stamp_seconds(msg.header.stamp), x=p.x, y=p.y, z=p.z,
                                yaw=yaw_from_quaternion(q.x, q.y, q.z, q.w), speed=speed)
        with self._lock:
            self._sync.add_odometry(sample)
        self._wake.set()

    def _on_collision(self, msg: Any) -> None:
        n = msg.normal_impulse
        with self._lock:
            self._episode.events.add_collision(CollisionRecord(
                stamp=_stamp_seconds(msg.header.stamp), other_actor_id=int(msg.other_actor_id),
                impulse=math.sqrt(n.x ** 2 + n.y ** 2 + n.z ** 2)))

    def _on_lane_invasion(self, msg: Any) -> None:
        with self._lock:
            self._episode.events.add_lane_invasion(LaneInvasionRecord(
                stamp=_stamp_seconds(msg.header.stamp),
                markings=tuple(int(m) for m in msg.crossed_lane_markings)))

    def _on_reset(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        pending = _ResetRequest(done=threading.Event())
        with self._lock:
            self._resets.append(pending)
        self._wake.set()
        if not pending.done.wait(self._p['timeout_s'] + 5.0):
            response.success, response.message = False, 'reset timed out (CARLA not answering)'
            return response
        response.success, response.message = pending.success, pending.message
        return response

    # ------------------------------------------------------------------ worker

    def _run(self) -> None:
        next_connect = 0.0
        next_episode = 0.0
        while not self._stop.is_set():
            self._wake.wait(0.01)
            self._wake.clear()
            now = time.monotonic()
            try:
                if not self._episode.connected:
                    if now >= next_connect:
                        next_connect = now + self._p['connect_retry_s']
                        self._connect()
                    self._answer_resets(False, 'not connected to CARLA yet')
                    continue
                for request in self._take_resets():
                    self._start_episode(request)
                    next_episode = 0.0
                ep = self._episode.episode
                waiting = ep is None or (ep.ended and self._p['auto_reset'])
                if waiting and now >= next_episode:
                    next_episode = now + self._p['connect_retry_s']
                    self._start_episode()
                self._process_frames()
            except (CarlaSetupError, RoutePlanningError) as exc:
                self._answer_resets(False, str(exc))
                self.get_logger().error(str(exc), throttle_duration_sec=10.0)
            except RuntimeError as exc:   # the carla client: server gone, time-out
                self._answer_resets(False, f'CARLA error: {exc}')
                self.get_logger().error(f'CARLA error, reconnecting: {exc}',
                                        throttle_duration_sec=10.0)
                self._episode.disconnect()
            except Exception as exc:   # the worker must outlive any one bad step
                self._answer_resets(False, f'internal error: {exc!r}')
                self.get_logger().error(f'CARLA worker error (step skipped): {exc!r}',
                                        throttle_duration_sec=10.0)
                self._stop.wait(0.1)

    def _connect(self) -> None:
        client = self._episode.client
        if client is None:
            client = self._carla.Client(self._p['host'], self._p['port'])
            client.set_timeout(self._p['timeout_s'])
            self._episode.client = client
        try:
            message = self._episode.connect()
        except CarlaSetupError as exc:
            self.get_logger().info(f'{exc}; retrying', throttle_duration_sec=10.0)
            return
        self.get_logger().info(message)
        client_version, server_version = client.get_client_version(), client.get_server_version()
        if client_version != server_version:
            self.get_logger().warning(
                f'carla client {client_version} and server {server_version} differ; install '
                'the carla wheel of the server version')

    def _take_resets(self) -> list[_ResetRequest]:
        with self._lock:
            requests, self._resets = self._resets, []
        return requests

    def _answer_resets(self, success: bool, message: str) -> None:
        for request in self._take_resets():
            request.success, request.message = success, message
            request.done.set()

    def _start_episode(self, request: _ResetRequest | None = None) -> None:
        try:
            with self._lock:
                plan = self._episode.new_episode()
        except (CarlaSetupError, RoutePlanningError) as exc:
            if request is not None:
                request.success, request.message = False, str(exc)
                request.done.set()
            raise
        self.last_plan = plan
        self._publish_route(plan)
        x, y, yaw = plan.start
        message = (f'episode {plan.episode_id}: route of {len(plan.route)} waypoints from '
                   f'({x:.1f}, {y:.1f}, yaw {math.degrees(yaw):.0f} deg)')
        self.get_logger().info(message)
        if request is not None:
            request.success, request.message = True, message
            request.done.set()

    def _publish_route(self, plan: EpisodePlan) -> None:
        path = Path()
        path.header.frame_id = 'map'
        path.header.stamp = self.get_clock().now().to_msg()
        for x, y, yaw in plan.route:
            pose = PoseStamped()
            pose.header = path.header
            pose.pose.position.x, pose.pose.position.y = float(x), float(y)
            pose.pose.orientation.z = math.sin(yaw / 2.0)
            pose.pose.orientation.w = math.cos(yaw / 2.0)
            path.poses.append(pose)
        self._path_pub.publish(path)

    def _process_frames(self) -> None:
        now = time.monotonic()
        with self._lock:
            ready = self._sync.ready(now)
        for stamp, stamp_msg, odom in ready:
            if odom is None:
                self.get_logger().warning(
                    f'no odometry within {self._p["pair_tolerance_s"]} s of camera frame '
                    f'{stamp:.3f}; no step for it', throttle_duration_sec=5.0)
                continue
            with self._lock:
                outcome = self._episode.on_frame(stamp, odom)
            if outcome is not None:
                self._publish_feedback(outcome, stamp_msg)
                if outcome.done:        # the worker loop starts the next one (auto_reset)
                    self.get_logger().info(
                        f'episode {outcome.episode_id} ended after {outcome.step} steps: '
                        f'{outcome.reason}, {outcome.distance_m:.1f} m driven')

    def _publish_feedback(self, outcome: StepOutcome, stamp_msg: Any) -> None:
        msg = StepFeedback()
        msg.header.stamp = stamp_msg
        msg.header.frame_id = self._p['role_name']
        msg.episode_id, msg.step = outcome.episode_id, outcome.step
        msg.reward = float(outcome.reward)
        msg.terminated, msg.truncated, msg.reason = (outcome.terminated, outcome.truncated,
                                                     outcome.reason)
        msg.reward_term_names = list(TERM_NAMES)
        msg.reward_term_values = [float(outcome.terms.get(n, 0.0)) for n in TERM_NAMES]
        msg.distance_m = float(outcome.distance_m)
        msg.lateral_deviation_m = float(outcome.lateral_deviation_m)
        msg.speed_mps = float(outcome.speed_mps)
        self._feedback_pub.publish(msg)
        self.feedback_count += 1

    def destroy_node(self) -> None:
        self._stop.set()
        self._wake.set()
        self._worker.join(timeout=5.0)
        try:
            self._episode.close()
        except RuntimeError as exc:
            self.get_logger().warning(f'could not remove NPC vehicles: {exc}')
        super().destroy_node()


def _import_bridge_modules() -> tuple[Any, Any]:
    """Import carla and carla_msgs.msg; SystemExit with one clear line when either is missing."""
    try:
        import carla
    except ImportError as exc:
        raise SystemExit(
            f'{NODE_NAME}: cannot import the CARLA Python API ({exc}); install the wheel of '
            'your server version, e.g. pip install carla==0.9.16 (docs/carla.md)') from exc
    try:
        import carla_msgs.msg as carla_msgs
    except ImportError as exc:
        raise SystemExit(
            f'{NODE_NAME}: cannot import carla_msgs ({exc}); build carla-ros-bridge and source '
            'its workspace (docs/carla.md)') from exc
    return carla, carla_msgs


def main(args: list[str] | None = None) -> int:
    """Run the episode node (``ros2 run av_td3_ros carla_episode_node``)."""
    carla, carla_msgs = _import_bridge_modules()
    return run_node(lambda: CarlaEpisodeNode(carla, carla_msgs), NODE_NAME, args,
                    lambda: PooledExecutor(num_threads=2))


if __name__ == '__main__':
    raise SystemExit(main())
