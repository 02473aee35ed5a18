"""
``av_td3_sim``: the embedded simulator on the ROS graph, speaking the carla-ros-bridge contract.

Publishes per frame, in this order (so a consumer acting on the image already has the rest):
odometry, speedometer, waypoints (transient-local, on every new episode),
``/av_td3/step_feedback``, camera_info, then the ``bgra8`` camera image; all stamped with the
frame's sim time (frame counter x ``fixed_delta_seconds``, unique per frame). Subscribes to
``VehicleControl``.

``synchronous`` mode: one step per control command (a control stamped with an older frame than the
last one published is ignored as stale); after an episode ends the terminal frame is published and
the next control starts a new episode (step 0). The last frame is re-published every
``sync_timeout`` until a control answers it (controls that answer no frame do not postpone it), so
a frame sent before the policy subscribed, or any one lost message, cannot deadlock the loop.
Topics live under ``role_name`` (``av_td3_ros.ros.common``). ``realtime`` mode: a
timer steps at 1 / fixed_delta_seconds with the latest control. ``~/reset`` starts a new episode.
All simulation work runs on one worker thread, never on the executor serving the service.
"""

from __future__ import annotations

from dataclasses import dataclass
import math
import queue
import threading
import time

from av_td3_interfaces.msg import StepFeedback, VehicleControl
from av_td3_ros.ros.common import (
    camera_qos, check_role_name, DEFAULT_ROLE, LATCHED_QOS, ParameterTable, RELIABLE_QOS,
    run_node, VehicleTopics)
from av_td3_ros.sim.render import CameraConfig
from av_td3_ros.sim.reward import compute_reward, load_reward_weights, RewardResult, TERM_NAMES
from av_td3_ros.sim.world import Control, SCENARIO_NPCS, World
from geometry_msgs.msg import PoseStamped
from nav_msgs.msg import Odometry, Path
from rclpy.node import Node
from rclpy.qos import QoSProfile
from sensor_msgs.msg import CameraInfo, Image
from std_msgs.msg import Float32
from std_srvs.srv import Trigger

NODE_NAME = 'av_td3_sim'
MAP_FRAME = 'map'
MODES = ('synchronous', 'realtime')
RELIABILITIES = ('reliable', 'best_effort')
# sim time of frame 0: a fixed epoch, so that stamps are reproducible
EPOCH_S = 1_000_000


# every parameter of the node, with its range; read once (read-only)
PARAMETERS = ParameterTable({
    'role_name': (DEFAULT_ROLE, "the vehicle's role name: its topics are "
                  '/carla/<role_name>/... and its step feedback /av_td3/<role_name>/step_feedback '
                  '(default role: /av_td3/step_feedback), as carla-ros-bridge names them'),
    'scenario': (0, 'traffic: 0 empty road, 1 light traffic, 2 heavy traffic',
                 (min(SCENARIO_NPCS), max(SCENARIO_NPCS))),
    'seed': (0, 'seed of the road and of the episodes (same seed, same run)', (0, 2 ** 31 - 1)),
    'camera_width': (800, 'camera image width in pixels (CARLA default 800)', (16, 4096)),
    'camera_height': (600, 'camera image height in pixels (CARLA default 600)', (16, 4096)),
    'camera_fov': (90.0, 'camera horizontal field of view, degrees', (10.0, 170.0)),
    'mode': ('synchronous', 'synchronous: one step per control command (like CARLA '
             'synchronous mode); realtime: a timer steps the world', MODES),
    'fixed_delta_seconds': (0.05, 'simulated seconds per step (20 Hz)', (0.005, 1.0)),
    'max_episode_steps': (1000, 'episode truncated after this many steps', (1, 1_000_000)),
    'sync_timeout': (1.0, 'synchronous mode: re-publish the last frame when no control '
                     'arrives within this many seconds', (0.05, 60.0)),
    'reward_config': ('', 'reward weights YAML (empty: the packaged config/reward.yaml)'),
    'image_qos_reliability': ('reliable', 'camera publisher reliability (DESIGN §4: reliable)',
                              RELIABILITIES),
    'image_qos_depth': (1, 'camera publisher queue depth (keep-last)', (1, 100)),
}, read_only=True)


@dataclass(frozen=True)
class SimSettings:
    """Validated parameters of the node."""

    topics: VehicleTopics
    scenario: int
    seed: int
    camera: CameraConfig
    mode: str
    dt: float
    max_episode_steps: int
    sync_timeout: float
    reward_config: str
    image_qos: QoSProfile


def read_settings(node: Node) -> SimSettings:
    """Read and validate the parameters; raise ValueError naming the bad one."""
    p = PARAMETERS.read(node)
    check_role_name(p['role_name'])
    return SimSettings(
        topics=VehicleTopics(p['role_name']), scenario=p['scenario'], seed=p['seed'],
        camera=CameraConfig(width=p['camera_width'], height=p['camera_height'],
                            fov_deg=p['camera_fov']),
        mode=p['mode'], dt=p['fixed_delta_seconds'], max_episode_steps=p['max_episode_steps'],
        sync_timeout=p['sync_timeout'], reward_config=p['reward_config'],
        image_qos=camera_qos(p['image_qos_reliability'] == 'reliable', p['image_qos_depth']))


def _quaternion(yaw: float) -> tuple[float, float, float, float]:
    return 0.0, 0.0, math.sin(yaw / 2.0), math.cos(yaw / 2.0)


class SimNode(Node):
    """The embedded simulator node (see the module docstring)."""

    def __init__(self, **kwargs) -> None:
        super().__init__(NODE_NAME, **kwargs)
        PARAMETERS.declare(self)
        try:
            self.settings = read_settings(self)
            s = self.settings
            self.weights = load_reward_weights(s.reward_config or None)
            self.world = World(seed=s.seed, scenario=s.scenario, dt=s.dt, camera=s.camera)
        except ValueError:
            super().destroy_node()        # leave nothing behind: the caller gets the reason
            raise
        topics = s.topics
        self._pub_image = self.create_publisher(Image, topics.image, s.image_qos)
        self._pub_info = self.create_publisher(CameraInfo, topics.camera_info, s.image_qos)
        self._pub_odom = self.create_publisher(Odometry, topics.odometry, RELIABLE_QOS)
        self._pub_speed = self.create_publisher(Float32, topics.speedometer, RELIABLE_QOS)
        self._pub_path = self.create_publisher(Path, topics.waypoints, LATCHED_QOS)
        self._pub_feedback = self.create_publisher(StepFeedback, topics.step_feedback,
                                                   RELIABLE_QOS)
        self.create_subscription(VehicleControl, topics.control, self._on_control, RELIABLE_QOS)
        self.create_service(Trigger, '~/reset', self._on_reset)
        self._camera_info = self._make_camera_info()
        self._queue: queue.Queue = queue.Queue()
        self._latest_control = Control()
        self._control_lock = threading.Lock()
        self._tick_pending = threading.Event()
        self._running = True
        # episode state (worker thread only)
        self._frame = -1                # global frame counter: stamps
        self._episode = -1
        self._step = 0
        self._ended = True
        self._last_messages: tuple = ()
        self.frames_published = 0
        self.frames_republished = 0
        self._published_at = 0.0
        self._worker = threading.Thread(target=self._work, name='av_td3_sim_worker', daemon=True)
        self._worker.start()
        if s.mode == 'realtime':
            self.create_timer(s.dt, self._on_timer)
        self.get_logger().info(
            f'{NODE_NAME}: {s.mode} mode, scenario {s.scenario}, seed {s.seed}, camera '
            f'{s.camera.width}x{s.camera.height} fov {s.camera.fov_deg:g}, dt {s.dt:g} s, road '
            f'lap {self.world.road.length:.0f} m')

    # -- callbacks (executor thread: only hand over to the worker) ------------------------------
    def _on_control(self, msg: VehicleControl) -> None:
        values = (msg.throttle, msg.steer, msg.brake)
        if not all(math.isfinite(v) for v in values):
            self.get_logger().error(
                f'refused VehicleControl with non-finite values (throttle={msg.throttle}, '
                f'steer={msg.steer}, brake={msg.brake})', throttle_duration_sec=2.0)
            return
        if self.settings.mode == 'realtime':
            with self._control_lock:
                self._latest_control = self._to_control(msg)
        else:
            self._queue.put(('control', msg))

    def _on_timer(self) -> None:
        if not self._tick_pending.is_set():      # the worker is behind: do not pile up ticks
            self._tick_pending.set()
            self._queue.put(('tick', None))

    def _on_reset(self, request, response):
        done = threading.Event()
        self._queue.put(('reset', done))
        if done.wait(timeout=30.0):
            response.success = True
            response.message = f'episode {self._episode} started'
        else:
            response.success = False
            response.message = 'the simulator worker did not answer within 30 s'
        return response

    @staticmethod
    def _to_control(msg: VehicleControl) -> Control:
        return Control(throttle=float(msg.throttle), steer=float(msg.steer),
                       brake=float(msg.brake), hand_brake=bool(msg.hand_brake),
                       reverse=bool(msg.reverse))

    # -- worker thread ------------------------------------------------------------------------
    def _work(self) -> None:
        self._guarded(self._new_episode)
        sync = self.settings.mode == 'synchronous'
        while self._running:
            timeout = 0.5
            if sync and self._last_messages:
                # The deadline counts from the last publish, not from the last message taken:
                # controls that answer no frame (a watchdog's brakes, stale stamps) must not
                # postpone the re-publish, or a frame lost at start-up is never sent again.
                timeout = self._published_at + self.settings.sync_timeout - time.monotonic()
                if timeout <= 0.0:
                    self._republish()
                    continue
            try:
                kind, payload = self._queue.get(timeout=timeout)
            except queue.Empty:
                continue
            if kind == 'stop':
                break
            if kind == 'reset':
                self._guarded(self._new_episode)
                payload.set()
            elif kind == 'control':
                self._guarded(self._on_sync_control, payload)
            elif kind == 'tick':
                self._tick_pending.clear()
                with self._control_lock:
                    control = self._latest_control
                self._guarded(self._advance, control)

    def _republish(self) -> None:
        """Send the last frame again: its control did not come within ``sync_timeout``."""
        self.get_logger().warning(
            f'no control for frame {self._step} of episode {self._episode} within '
            f'sync_timeout={self.settings.sync_timeout:g} s: re-publishing it',
            throttle_duration_sec=5.0)
        self.frames_republished += 1
        self._guarded(self._publish, *self._last_messages)

    def _guarded(self, fn, *args) -> None:
        """Run one unit of simulation work; an error is logged and the loop goes on."""
        try:
            fn(*args)
        except Exception as exc:  # the node must survive and say why
            if not self.context.ok():     # shutting down: publishers are gone
                self._running = False
                return
            self.get_logger().error(f'simulator step failed: {exc!r}',
                                    throttle_duration_sec=2.0)

    def _on_sync_control(self, msg: VehicleControl) -> None:
        stamp = msg.header.stamp
        if (stamp.sec or stamp.nanosec) and (stamp.sec, stamp.nanosec) != self._stamp_of(
                self._frame):
            self.get_logger().debug(
                f'ignoring a control stamped {stamp.sec}.{stamp.nanosec:09d}: not the last '
                'frame (stale or duplicate)', throttle_duration_sec=5.0)
            return
        self._advance(self._to_control(msg))

    def _advance(self, control: Control) -> None:
        """Step once with ``control`` (or start the next episode after a terminal frame)."""
        if self._ended:
            self._new_episode()
            return
        self.world.step(control)
        self._step += 1
        result = compute_reward(self.world.measurements(self._step,
                                                        self.settings.max_episode_steps),
                                self.weights)
        self._ended = result.terminated or result.truncated
        self._publish_frame(result, new_route=False)

    def _new_episode(self) -> None:
        if self._episode >= 0:
            self.world.reset()
        self._episode += 1
        self._step = 0
        self._ended = False
        self._publish_frame(None, new_route=True)

    def _stamp_of(self, frame: int) -> tuple[int, int]:
        ns = round(frame * self.settings.dt * 1e9)
        return EPOCH_S + ns // 1_000_000_000, ns % 1_000_000_000

    def _publish_frame(self, result: RewardResult | None, new_route: bool) -> None:
        self._frame += 1
        sec, nanosec = self._stamp_of(self._frame)
        w = self.world
        ego = w.ego
        odom = Odometry()
        odom.header.stamp.sec, odom.header.stamp.nanosec = sec, nanosec
        odom.header.frame_id = MAP_FRAME
        odom.child_frame_id = self.settings.topics.vehicle_frame
        odom.pose.pose.position.x, odom.pose.pose.position.y = ego.x, ego.y
        q = odom.pose.pose.orientation
        q.x, q.y, q.z, q.w = _quaternion(ego.yaw)
        odom.twist.twist.linear.x = ego.speed           # child (vehicle) frame, like the bridge
        odom.twist.twist.linear.y = ego.lateral_speed
        odom.twist.twist.angular.z = ego.yaw_rate
        speed = Float32(data=float(ego.speed))
        path = self._make_path(sec, nanosec) if new_route else None
        feedback = StepFeedback()
        feedback.header.stamp = odom.header.stamp
        feedback.header.frame_id = MAP_FRAME
        feedback.episode_id = self._episode
        feedback.step = self._step
        feedback.reward_term_names = list(TERM_NAMES)
        if result is not None:
            feedback.reward = float(result.reward)
            feedback.terminated = result.terminated
            feedback.truncated = result.truncated
            feedback.reason = result.reason
            feedback.reward_term_values = [float(result.terms[n]) for n in TERM_NAMES]
        else:
            feedback.reward_term_values = [0.0] * len(TERM_NAMES)
        feedback.distance_m = float(w.distance_m)
        feedback.lateral_deviation_m = float(w.route_state.lateral_deviation)
        feedback.speed_mps = float(ego.speed)
        info = self._camera_info
        info.header.stamp = odom.header.stamp
        image = Image()
        image.header.stamp = odom.header.stamp
        image.header.frame_id = self.settings.topics.camera_frame
        cam = self.settings.camera
        image.height, image.width = cam.height, cam.width
        image.encoding = 'bgra8'
        image.is_bigendian = 0
        image.step = cam.width * 4
        image.data = w.render_bgra().tobytes()
        self._last_messages = (odom, speed, path, feedback, info, image)
        self._publish(*self._last_messages)

    def _publish(self, odom, speed, path, feedback, info, image) -> None:
        self._pub_odom.publish(odom)
        self._pub_speed.publish(speed)
        if path is not None:
            self._pub_path.publish(path)
        self._pub_feedback.publish(feedback)
        self._pub_info.publish(info)
        self._pub_image.publish(image)
        self.frames_published += 1
        self._published_at = time.monotonic()

    def _make_path(self, sec: int, nanosec: int) -> Path:
        route = self.world.route
        path = Path()
        path.header.stamp.sec, path.header.stamp.nanosec = sec, nanosec
        path.header.frame_id = MAP_FRAME
        d = route.xy[1:] - route.xy[:-1]
        headings = [math.atan2(dy, dx) for dx, dy in d.tolist()]
        headings.append(headings[-1])
        for (x, y), yaw in zip(route.xy.tolist(), headings, strict=True):
            pose = PoseStamped()
            pose.header = path.header
            pose.pose.position.x, pose.pose.position.y = x, y
            q = pose.pose.orientation
            q.x, q.y, q.z, q.w = _quaternion(yaw)
            path.poses.append(pose)
        return path

    def _make_camera_info(self) -> CameraInfo:
        cam = self.settings.camera
        f, cx, cy = cam.intrinsics()
        info = CameraInfo()
        info.header.frame_id = self.settings.topics.camera_frame
        info.height, info.width = cam.height, cam.width
        info.distortion_model = 'plumb_bob'
        info.d = [0.0] * 5
        info.k = [f, 0.0, cx, 0.0, f, cy, 0.0, 0.0, 1.0]
        info.r = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
        info.p = [f, 0.0, cx, 0.0, 0.0, f, cy, 0.0, 0.0, 0.0, 1.0, 0.0]
        return info

    def destroy_node(self) -> None:
        self._running = False
        self._queue.put(('stop', None))
        self._worker.join(timeout=5.0)
        super().destroy_node()


def main(args: list[str] | None = None) -> int:
    """Run the simulator node (``ros2 run av_td3_ros sim_node``)."""
    return run_node(SimNode, NODE_NAME, args)


if __name__ == '__main__':
    raise SystemExit(main())
