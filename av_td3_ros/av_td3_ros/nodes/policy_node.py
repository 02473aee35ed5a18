"""
The policy node ``av_td3_policy``: camera + odometry + route in, vehicle control out.

A lifecycle node that configures and activates itself unless ``autostart:=false`` (then a
lifecycle manager owns it). The actor's logic lives in ``av_td3_ros.actor`` (no ROS); this
module is the ROS glue: parameters, QoS, callback groups, the load service, diagnostics.

Threads: ``main`` spins the node on a SingleThreadedExecutor, so a camera frame is answered on
the thread that took it (no hand-off between threads). Camera, odometry, feedback, route, stats
and timers share one mutually exclusive callback group (the actor is single-threaded). The slow
work, reading and building a checkpoint for the load service or broadcast weights for the
weights subscription, runs on a worker thread of the node: those two callbacks are coroutines
that await it, which leaves the executor thread to the frames meanwhile. The new policy is
staged under a lock and swapped in between two frames. The node runs as well on a
multi-threaded executor (bringup's PooledExecutor, the tests).
"""

from __future__ import annotations

import array
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
import functools
import os
import socket
import sys
import threading
import time

from av_td3_interfaces.msg import (
    PolicyWeights, StepFeedback, TrainerStats, Transition, VehicleControl)
from av_td3_interfaces.srv import LoadCheckpoint
from av_td3_ros.actor import (
    ActorCore, BRAKE_ACTION, Feedback, InsertBudget, NO_POLICY_REASON, OdometryBuffer, Pose,
    pose_from_odometry, review_weights, RollingStats, route_from_points, stale_input_reason,
    StepResult, twist_from_control)
from av_td3_ros.checkpoint import (
    CheckpointError, newest_checkpoint, resolve_checkpoint_path)
from av_td3_ros.image_cdr import (
    RawImage, read_image, SerializedImageError, UnsupportedEncapsulation)
from av_td3_ros.nodes.allocator import keep_large_buffers
from av_td3_ros.observation import action_to_control, ObservationError
from av_td3_ros.policy import Policy
from av_td3_ros.topics import (
    check_role_name, DEFAULT_ROLE, DIAGNOSTICS, POLICY_WEIGHTS, TRAINER_STATS, TRANSITIONS,
    VehicleTopics)
from builtin_interfaces.msg import Time
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import Twist
from nav_msgs.msg import Odometry, Path
from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor
import rclpy
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.exceptions import ParameterUninitializedException
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.serialization import deserialize_message
from rclpy.task import Future
from sensor_msgs.msg import Image
import torch

NODE_NAME = 'av_td3_policy'
MODES = ('deploy', 'train')
CONTROL_OUTPUTS = ('native', 'carla', 'twist')
RELIABILITIES = ('reliable', 'best_effort')
ODOMETRY_SYNCS = ('stamp', 'latest')

WATCHDOG_PERIOD_S = 0.05
LOG_THROTTLE_S = 2.0

# name -> (default, description, (min, max) or allowed strings or None). One table, so that the
# declarations, config/policy.yaml and the tests agree.
PARAMETERS: dict[str, tuple] = {
    'autostart': (True, 'configure and activate on start; false leaves the node unconfigured '
                  'for a lifecycle manager', None),
    'role_name': (DEFAULT_ROLE, "the vehicle's role name: camera, odometry, route and "
                  'control are /carla/<role_name>/..., step feedback '
                  '/av_td3/<role_name>/step_feedback (default role: /av_td3/step_feedback); '
                  'remap them to fit another stack', None),
    'mode': ('deploy', 'deploy: deterministic policy; train: exploration noise, transitions '
             'published, weights taken from policy_weights', MODES),
    'checkpoint_path': ('', 'checkpoint (.pth v1 or legacy) or policy export (.safetensors) '
                        'loaded on configure; relative paths resolve against checkpoint_dir; '
                        'empty: none (deploy mode then holds the vehicle braked)', None),
    'checkpoint_dir': ('checkpoints', 'directory of checkpoints: base of relative paths and '
                       'of ~/load_checkpoint with an empty path (newest file)', None),
    'allowed_checkpoint_dirs': (Parameter.Type.STRING_ARRAY, 'further directories '
                                '~/load_checkpoint may read from (checkpoint_dir always may); '
                                'empty strings are ignored', None),
    'device': ('cpu', 'torch device for inference (cpu, cuda, cuda:1, ...)', None),
    'num_threads': (1, 'torch intra-op threads for inference (process-wide); 0 leaves the '
                    'torch default (use 0 when sharing a process with the trainer)', (0, 256)),
    'control_output': ('native', 'native: av_td3_interfaces/VehicleControl; carla: '
                       'carla_msgs/CarlaEgoVehicleControl; twist: geometry_msgs/Twist for '
                       'carla_twist_to_control', CONTROL_OUTPUTS),
    'twist_max_steer_angle': (1.2217304763960306, 'twist output: max steering angle of the '
                              'vehicle in rad (carla_twist_to_control reads it from '
                              'vehicle_info; 70 deg by default)', (0.01, 3.15)),
    'image_qos_reliability': ('reliable', 'camera subscription reliability (DESIGN §4: '
                              'reliable keep-last-1 with the LARGE_DATA transport)',
                              RELIABILITIES),
    'image_qos_depth': (1, 'camera subscription queue depth (keep-last)', (1, 100)),
    'odometry_sync': ('stamp', 'stamp: pair each image with the odometry of the same stamp '
                      '(synchronous simulators); latest: use the newest odometry', ODOMETRY_SYNCS),
    'sync_timeout': (0.1, 'stamp pairing: answer an image with the nearest odometry after '
                     'waiting this long (s) for the one of its stamp', (0.0, 10.0)),
    'input_timeout': (0.5, 'watchdog: full brake when no image or odometry arrived within '
                      'this many seconds', (0.01, 60.0)),
    'exploration_noise': (0.1, 'train mode: std of the Gaussian action noise (times '
                          'max_action)', (0.0, 10.0)),
    'exploration_noise_final': (0.1, 'train mode: noise std (times max_action) reached after '
                                'exploration_noise_decay_steps policy actions, decaying '
                                'linearly from exploration_noise', (0.0, 10.0)),
    'exploration_noise_decay_steps': (0, 'train mode: policy actions of this node over which '
                                      'the noise decays; 0 = constant exploration_noise',
                                      (0, 1_000_000_000)),
    'seed': (-1, 'seed of the exploration noise; -1: from the OS', (-1, 2**31 - 1)),
    'actor_id': ('', 'stream id in the transitions; empty: host:pid/namespace/name', None),
    'trainer_stats_topic': (TRAINER_STATS, 'train mode: TrainerStats of the learner, '
                            'whose insert_allowance rate-limits this actor', None),
    'diagnostics_period': (1.0, 'seconds between /diagnostics messages', (0.1, 60.0)),
}


def stamp_to_ns(stamp: Time) -> int:
    return stamp.sec * 1_000_000_000 + stamp.nanosec


def ns_to_stamp(ns: int) -> Time:
    return Time(sec=ns // 1_000_000_000, nanosec=ns % 1_000_000_000)


@dataclass(frozen=True)
class Settings:
    """The validated parameters, read once per configure."""

    topics: VehicleTopics
    train: bool
    checkpoint_path: str
    checkpoint_dir: str
    allowed_dirs: list[str]
    device: str
    num_threads: int
    control_output: str
    twist_max_steer_angle: float
    image_qos: QoSProfile
    odometry_by_stamp: bool
    sync_timeout: float
    input_timeout: float
    exploration_noise: float
    exploration_noise_final: float
    exploration_noise_decay_steps: int
    seed: int | None
    actor_id: str
    trainer_stats_topic: str
    diagnostics_period: float


@dataclass
class _StagedPolicy:
    """A policy built off the executor thread, waiting to be swapped in between frames."""

    policy: Policy
    version: int
    source: str
    total_it: int
    sha256: str


def _decode_image(serialized: bytes) -> RawImage:
    """Read a camera frame's bytes; rclpy decodes the (rare) encapsulations ours does not."""
    try:
        return read_image(serialized)
    except UnsupportedEncapsulation as unsupported:
        try:
            return RawImage.from_message(deserialize_message(serialized, Image))
        except Exception as exc:  # whatever rclpy's decoder raises on bad bytes
            raise SerializedImageError(f'{unsupported}: {exc}') from exc


def _review_and_build(msg: PolicyWeights, current: tuple[int, str] | None,
                      device: str) -> tuple[str, Policy | None]:
    """Review broadcast weights (hashing megabytes): (why, their policy or None if refused)."""
    accept, why = review_weights(msg.format, msg.data, msg.sha256, msg.version, current)
    if not accept:
        return why, None
    return why, Policy.from_export_bytes(msg.data.tobytes(), device=device)


def _settle(future: Future, job) -> None:
    """Hand the outcome of a worker job to the rclpy future that a callback awaits."""
    if job.cancelled():
        future.set_exception(RuntimeError('the node is shutting down'))
    elif job.exception() is not None:
        future.set_exception(job.exception())
    else:
        future.set_result(job.result())


def _guarded(active: bool = True):
    """
    Run a callback of the inference group only while the node is active (or configured).

    Holding the node's busy lock also keeps destroy_node and the lifecycle transitions from
    tearing publishers down under a callback that is still using them. State-only inputs (the
    latched route) are taken once configured, so one delivered before activation is not lost.
    """
    def decorator(callback):
        @functools.wraps(callback)
        def guarded(self, *args) -> None:
            with self._busy:
                if self._active or (not active and self._core is not None):
                    callback(self, *args)
        return guarded
    return decorator


def _is_choice(limits) -> bool:
    return isinstance(limits, tuple) and bool(limits) and isinstance(limits[0], str)


def _descriptor(name: str) -> ParameterDescriptor:
    default, description, limits = PARAMETERS[name]
    descriptor = ParameterDescriptor(description=description)
    if _is_choice(limits):
        descriptor.additional_constraints = 'one of: ' + ', '.join(limits)
    elif isinstance(limits, tuple) and isinstance(default, float):
        descriptor.floating_point_range = [
            FloatingPointRange(from_value=float(limits[0]), to_value=float(limits[1]))]
    elif isinstance(limits, tuple):
        descriptor.integer_range = [IntegerRange(from_value=limits[0], to_value=limits[1])]
    return descriptor


class PolicyNode(LifecycleNode):
    """The actor as a ROS 2 lifecycle node (DESIGN §4, ``av_td3_policy``)."""

    def __init__(self, node_name: str = NODE_NAME, **kwargs) -> None:
        # before the Node exists: a parameter refused while it is built still leaves a node
        # that rclpy's context destroys at shutdown, and destroy_node needs these
        self._lock = threading.Lock()          # guards _staged and _current_weights
        self._busy = threading.RLock()         # held by inference callbacks and teardown
        # loads and weights are read and built here (its thread starts with the first job)
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix='policy_loader')
        super().__init__(node_name, **kwargs)
        for name, (default, _, _) in PARAMETERS.items():
            self.declare_parameter(name, default, _descriptor(name))
        self._staged: _StagedPolicy | None = None
        self._settings: Settings | None = None
        self._core: ActorCore | None = None
        self._entities: list = []
        self._active = False
        # In every lifecycle state (unconfigured: it says so). A service destroyed by a cleanup
        # while a load awaited the worker could not send its answer, and the executor would
        # raise that failure out of spin().
        self.create_service(LoadCheckpoint, '~/load_checkpoint', self._on_load_checkpoint,
                            callback_group=MutuallyExclusiveCallbackGroup())
        self.autostart_failed = False
        if self.get_parameter('autostart').value:
            ok = self.trigger_configure() == TransitionCallbackReturn.SUCCESS
            ok = ok and self.trigger_activate() == TransitionCallbackReturn.SUCCESS
            self.autostart_failed = not ok

    # -- parameters ---------------------------------------------------------------------------

    def _read_settings(self) -> Settings:
        """Validate the parameters; raise ValueError naming the bad one."""
        value = {name: self._parameter(name) for name in PARAMETERS}
        for name, (_, _, limits) in PARAMETERS.items():
            if _is_choice(limits) and value[name] not in limits:
                raise ValueError(f'parameter {name} must be one of {", ".join(limits)}; '
                                 f'got {value[name]!r}')
        if not value['checkpoint_dir']:
            raise ValueError('parameter checkpoint_dir must not be empty')
        check_role_name(value['role_name'])
        for name in ('trainer_stats_topic', 'device'):
            if not value[name]:
                raise ValueError(f'parameter {name} must not be empty')
        try:
            torch.device(value['device'])
        except RuntimeError as exc:
            raise ValueError(f'parameter device: {exc}') from None
        reliability = (ReliabilityPolicy.RELIABLE if value['image_qos_reliability'] == 'reliable'
                       else ReliabilityPolicy.BEST_EFFORT)
        actor_id = value['actor_id'] or (
            f'{socket.gethostname()}:{os.getpid()}{self.get_fully_qualified_name()}')
        return Settings(
            topics=VehicleTopics(value['role_name']),
            train=value['mode'] == 'train',
            checkpoint_path=value['checkpoint_path'],
            checkpoint_dir=value['checkpoint_dir'],
            allowed_dirs=[d for d in value['allowed_checkpoint_dirs'] if d],
            device=value['device'],
            num_threads=value['num_threads'],
            control_output=value['control_output'],
            twist_max_steer_angle=value['twist_max_steer_angle'],
            image_qos=QoSProfile(history=HistoryPolicy.KEEP_LAST,
                                 depth=value['image_qos_depth'], reliability=reliability),
            odometry_by_stamp=value['odometry_sync'] == 'stamp',
            sync_timeout=value['sync_timeout'],
            input_timeout=value['input_timeout'],
            exploration_noise=value['exploration_noise'],
            exploration_noise_final=value['exploration_noise_final'],
            exploration_noise_decay_steps=value['exploration_noise_decay_steps'],
            seed=None if value['seed'] < 0 else value['seed'],
            actor_id=actor_id,
            trainer_stats_topic=value['trainer_stats_topic'],
            diagnostics_period=value['diagnostics_period'])

    def _parameter(self, name: str):
        try:
            return self.get_parameter(name).value
        except ParameterUninitializedException:
            return []          # only the statically typed, unset string array lands here

    def _control_output(self, settings: Settings):
        """Return (message type, builder(stamp_ns, action) -> message) for control_output."""
        if settings.control_output == 'twist':
            def build_twist(stamp_ns: int, action) -> Twist:
                steer, throttle, brake = action_to_control(action)
                msg = Twist()
                msg.linear.x, msg.angular.z = twist_from_control(
                    steer, throttle, brake, settings.twist_max_steer_angle)
                return msg
            return Twist, build_twist
        if settings.control_output == 'carla':
            try:
                from carla_msgs.msg import CarlaEgoVehicleControl as control_type
            except ImportError as exc:
                raise ValueError(
                    'control_output carla needs the carla_msgs package (carla-ros-bridge), '
                    f'which is not installed here ({exc}); use native or twist, or source the '
                    'CARLA ROS bridge workspace') from exc
        else:
            control_type = VehicleControl

        def build(stamp_ns: int, action):
            steer, throttle, brake = action_to_control(action)
            msg = control_type()
            msg.header.stamp = ns_to_stamp(stamp_ns)
            msg.steer, msg.throttle, msg.brake = steer, throttle, brake
            return msg
        return control_type, build

    # -- lifecycle ----------------------------------------------------------------------------

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            settings = self._read_settings()
            control_type, self._build_control = self._control_output(settings)
        except ValueError as exc:
            self.get_logger().error(f'configuration failed: {exc}')
            return TransitionCallbackReturn.FAILURE
        if settings.num_threads > 0:
            torch.set_num_threads(settings.num_threads)
        self._settings = settings
        self._core = ActorCore(train=settings.train,
                               exploration_noise=settings.exploration_noise,
                               exploration_noise_final=settings.exploration_noise_final,
                               exploration_noise_decay_steps=(
                                   settings.exploration_noise_decay_steps),
                               seed=settings.seed,
                               stamp_gap_reset_ns=int(settings.input_timeout * 1e9))
        self._reset_runtime_state()
        self._policy_info: _StagedPolicy | None = None
        self._load_error = ''
        if settings.checkpoint_path:
            self._load_initial_checkpoint(settings)
        try:
            self._create_entities(settings, control_type)
        except Exception as exc:  # e.g. an invalid topic name: say so, stay unconfigured
            self._destroy_entities()
            self.get_logger().error(f'configuration failed: {exc}')
            return TransitionCallbackReturn.FAILURE
        self.get_logger().info(
            f'configured: mode {"train" if settings.train else "deploy"}, control_output '
            f'{settings.control_output}, camera {self._image_sub.topic_name} '
            f'({settings.image_qos.reliability.name.lower()}, depth {settings.image_qos.depth})')
        return TransitionCallbackReturn.SUCCESS

    def _reset_runtime_state(self) -> None:
        self._odometry = OdometryBuffer()
        self._last_image: float | None = None
        self._last_odometry: float | None = None
        self._hold_ended = -1.0      # a released hold restarts the watchdog's clock
        self._pending_image: tuple[int, object, float] | None = None   # waiting for odometry
        self._held_control: tuple[int, object] | None = None           # waiting for the learner
        self._last_answer: tuple[int, object] | None = None            # (stamp, control)
        self._budget = InsertBudget()
        self._current_weights: tuple[int, str] | None = None
        self._brake_reason: str | None = 'not active'
        self._image_stats = RollingStats()
        self._odometry_stats = RollingStats()
        self._latency = RollingStats()
        self._inference = RollingStats()
        self._counts = dict.fromkeys(('frames_answered', 'images_refused', 'odometry_refused',
                                      'waypoints_refused', 'weights_refused',
                                      'transitions_published', 'watchdog_brakes',
                                      'frames_superseded', 'frames_repeated'), 0)

    def _load_initial_checkpoint(self, settings: Settings) -> None:
        """
        Load checkpoint_path (trusted configuration, unlike service requests).

        A failure does not fail the configuration: the node goes active and holds the vehicle
        with full brake, saying why, which is safer than leaving the vehicle uncommanded.
        """
        path = settings.checkpoint_path
        if not os.path.isabs(path):
            path = os.path.join(settings.checkpoint_dir, path)
        try:
            staged = self._build_policy(path, settings)
        except Exception as exc:  # any failure: report it, keep holding
            self._load_error = f'checkpoint_path {path} failed to load: {exc}'
            self.get_logger().error(self._load_error)
            return
        self._core.set_policy(staged.policy, staged.version)
        self._policy_info = staged
        self.get_logger().info(f'loaded {staged.source} (total_it {staged.total_it}, '
                               f'sha256 {staged.sha256[:12]})')

    def _build_policy(self, path, settings: Settings) -> _StagedPolicy:
        policy = Policy.load(path, device=settings.device)
        return _StagedPolicy(policy, policy.version, str(path), policy.version,
                             policy.sha256)

    def _create_entities(self, settings: Settings, control_type) -> None:
        """Create publishers, subscriptions and timers (kept for the cleanup)."""
        self._entities = []

        def keep(entity):
            self._entities.append(entity)
            return entity
        # The actor's callbacks share `infer`. The load service and the weights subscription
        # have groups of their own: they await the worker, and a coroutine keeps its group until
        # it returns, so in `infer` they would hold the frames back (in their own, loads, like
        # weights, are taken one at a time).
        infer = MutuallyExclusiveCallbackGroup()
        reliable = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        deep = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
        latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL)
        topics = settings.topics
        self._control_pub = keep(self.create_lifecycle_publisher(control_type, topics.control,
                                                                 reliable))
        self._diagnostics_pub = keep(self.create_lifecycle_publisher(
            DiagnosticArray, DIAGNOSTICS, reliable))
        self._transitions_pub = keep(self.create_lifecycle_publisher(
            Transition, TRANSITIONS, deep)) if settings.train else None
        self._image_sub = keep(self.create_subscription(
            Image, topics.image, self._on_image, settings.image_qos, callback_group=infer,
            raw=True))
        keep(self.create_subscription(Odometry, topics.odometry, self._on_odometry, reliable,
                                      callback_group=infer))
        keep(self.create_subscription(Path, topics.waypoints, self._on_waypoints, latched,
                                      callback_group=infer))
        keep(self.create_subscription(StepFeedback, topics.step_feedback, self._on_feedback,
                                      deep, callback_group=infer))
        if settings.train:
            keep(self.create_subscription(PolicyWeights, POLICY_WEIGHTS, self._on_weights,
                                          latched,
                                          callback_group=MutuallyExclusiveCallbackGroup()))
            # best effort matches any publisher; a lost stats message only delays a resume
            keep(self.create_subscription(
                TrainerStats, settings.trainer_stats_topic, self._on_trainer_stats,
                QoSProfile(depth=1, reliability=ReliabilityPolicy.BEST_EFFORT),
                callback_group=infer))
        keep(self.create_timer(WATCHDOG_PERIOD_S, self._on_watchdog, callback_group=infer))
        keep(self.create_timer(settings.diagnostics_period, self._publish_diagnostics,
                               callback_group=infer))

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        result = super().on_activate(state)
        self._active = True
        self._brake_reason = 'waiting for input'
        self.get_logger().info('active')
        return result

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        with self._busy:
            self._active = False
            self._stop_vehicle()
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        with self._busy:
            self._destroy_entities()
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        with self._busy:
            if self._active:
                self._active = False
                self._stop_vehicle()
            self._destroy_entities()
        self._worker.shutdown(wait=False, cancel_futures=True)
        return TransitionCallbackReturn.SUCCESS

    def destroy_node(self) -> None:
        """Stop the callbacks first, so that none publishes on a destroyed publisher."""
        with self._busy:
            self._active = False
        self._worker.shutdown(wait=False, cancel_futures=True)
        super().destroy_node()

    def _stop_vehicle(self) -> None:
        """Leave the vehicle braked when the node stops commanding it."""
        if self._core is not None:
            self._control_pub.publish(self._build_control(self._now_ns(), BRAKE_ACTION))

    def _destroy_entities(self) -> None:
        for entity in self._entities:
            destroy = {
                'LifecyclePublisher': self.destroy_lifecycle_publisher,
                'Subscription': self.destroy_subscription,
                'Service': self.destroy_service,
                'Timer': self.destroy_timer,
            }[type(entity).__name__]
            destroy(entity)
        self._entities = []
        self._core = None
        with self._lock:      # a load finishing after this cleanup must not stage its policy
            self._settings = None
            self._staged = None

    # -- inputs -------------------------------------------------------------------------------

    def _now_ns(self) -> int:
        return self.get_clock().now().nanoseconds

    @_guarded()
    def _on_image(self, serialized: bytes) -> None:
        """Take a camera frame from its serialized bytes (raw subscription: no copy of pixels)."""
        received = time.monotonic()
        self._image_stats.add(received)
        try:
            image = _decode_image(serialized)
            gray = self._core.frame_gray(image.data, image.width, image.height, image.encoding,
                                         image.step)
        except (ObservationError, SerializedImageError) as exc:
            self._counts['images_refused'] += 1
            self.get_logger().warning(f'refused camera image: {exc}',
                                      throttle_duration_sec=LOG_THROTTLE_S)
            return
        self._last_image = received
        stamp = image.stamp_ns
        if stamp and self._last_answer is not None and stamp == self._last_answer[0]:
            # a re-published frame (a synchronous simulator missed our control): same answer
            self._counts['frames_repeated'] += 1
            if self._held_control is None:
                self._control_pub.publish(self._last_answer[1])
            return
        if self._pending_image is not None:
            self._counts['frames_superseded'] += 1
            self._pending_image = None
        if self._settings.odometry_by_stamp:
            pose = self._odometry.match(stamp)
            if pose is None:                   # its odometry is on the way (or lost)
                self._pending_image = (stamp, gray, received)
                return
        else:
            pose = self._odometry.latest
        self._answer(stamp, gray, pose, received)

    @_guarded()
    def _on_odometry(self, msg: Odometry) -> None:
        p, q, v = msg.pose.pose.position, msg.pose.pose.orientation, msg.twist.twist.linear
        try:
            pose = pose_from_odometry((p.x, p.y, p.z), (q.x, q.y, q.z, q.w), (v.x, v.y, v.z))
        except ObservationError as exc:
            self._counts['odometry_refused'] += 1
            self.get_logger().warning(f'refused odometry: {exc}',
                                      throttle_duration_sec=LOG_THROTTLE_S)
            return
        now = time.monotonic()
        self._last_odometry = now
        self._odometry_stats.add(now)
        self._odometry.add(stamp_to_ns(msg.header.stamp), pose)
        if self._pending_image is not None:
            stamp, gray, received = self._pending_image
            pose = self._odometry.match(stamp)
            if pose is not None:
                self._pending_image = None
                self._answer(stamp, gray, pose, received)

    @_guarded(active=False)
    def _on_waypoints(self, msg: Path) -> None:
        points = [(s.pose.position.x, s.pose.position.y) for s in msg.poses]
        try:
            route = route_from_points(points)
        except ObservationError as exc:
            self._counts['waypoints_refused'] += 1
            self.get_logger().warning(f'refused waypoints: {exc}',
                                      throttle_duration_sec=LOG_THROTTLE_S)
            return
        self._core.set_route(route)
        self.get_logger().info(f'route of {len(route)} waypoints ({route.length_m:.0f} m)')

    @_guarded()
    def _on_feedback(self, msg: StepFeedback) -> None:
        feedback = Feedback(stamp_to_ns(msg.header.stamp), msg.episode_id, msg.step,
                            float(msg.reward), msg.terminated, msg.truncated)
        self._publish_transitions(self._core.add_feedback(feedback))

    @_guarded()
    def _on_trainer_stats(self, msg: TrainerStats) -> None:
        self._budget.on_stats(msg.insert_allowance)
        if self._held_control is not None and not self._budget.must_hold:
            _, control = self._held_control
            self._held_control = None
            self._hold_ended = time.monotonic()   # the simulator only steps from now on
            self._control_pub.publish(control)

    async def _on_weights(self, msg: PolicyWeights) -> None:
        """Review and build the broadcast policy on the worker thread; swap it in later."""
        settings = self._settings
        if settings is None:
            return
        with self._lock:
            current = self._current_weights
        try:
            why, policy = await self._in_worker(_review_and_build, msg, current, settings.device)
        except Exception as exc:  # bad bytes must not take the node down
            self._counts['weights_refused'] += 1
            self.get_logger().error(f'refused policy weights version {msg.version}: {exc}')
            return
        if policy is None:
            if 'already in use' not in why:
                self._counts['weights_refused'] += 1
                self.get_logger().warning(f'refused policy weights: {why}',
                                          throttle_duration_sec=LOG_THROTTLE_S)
            return
        with self._lock:
            if self._settings is not settings:
                return              # cleaned up or reconfigured meanwhile: weights of the past
            self._current_weights = (msg.version, msg.sha256.lower())
            self._staged = _StagedPolicy(policy, int(msg.version), f'{POLICY_WEIGHTS} ({why})',
                                         int(msg.total_it), msg.sha256.lower())

    # -- acting -------------------------------------------------------------------------------

    def _swap_policy(self) -> None:
        """Take a staged policy (from the service or the weights topic): between two frames."""
        with self._lock:
            staged, self._staged = self._staged, None
        if staged is not None:
            self._core.set_policy(staged.policy, staged.version)
            self._policy_info = staged
            self._load_error = ''

    def _answer(self, stamp: int, gray, pose: Pose | None, received: float) -> None:
        """Act on a frame and publish (or, rate-limited, hold) its control."""
        self._swap_policy()
        stale = stale_input_reason(time.monotonic(), received, self._last_odometry,
                                   self._settings.input_timeout)
        result: StepResult = self._core.step(stamp, gray, pose, stale)
        if result.brake_reason == NO_POLICY_REASON and self._load_error:
            result.brake_reason = f'{self._load_error}; {result.brake_reason}'
        self._publish_transitions(result.transitions)
        control = self._build_control(stamp, result.action)
        if self._held_control is not None:        # superseded before the learner allowed it
            self._core.withdraw_action(self._held_control[0])
            self._counts['frames_superseded'] += 1
            self._held_control = None
        self._last_answer = (stamp, control)
        if self._core.train and self._budget.must_hold:
            self._held_control = (stamp, control)
        else:
            self._control_pub.publish(control)
        done = time.monotonic()
        self._counts['frames_answered'] += 1
        self._latency.add(done, done - received)
        if result.inference_s > 0:
            self._inference.add(done, result.inference_s)
        self._note_brake(result.brake_reason)

    def _note_brake(self, reason: str | None) -> None:
        """Log when the node starts or stops holding the vehicle, and why (once per change)."""
        if reason is not None and reason != self._brake_reason:
            self.get_logger().warning(f'holding the vehicle with full brake: {reason}')
        elif reason is None and self._brake_reason is not None:
            self.get_logger().info('driving')
        self._brake_reason = reason

    def _publish_transitions(self, transitions) -> None:
        if not transitions or self._transitions_pub is None:
            return
        size = self._core.spec.image_size
        for t in transitions:
            msg = Transition()
            msg.header.stamp = ns_to_stamp(t.stamp)
            msg.actor_id = self._settings.actor_id
            msg.episode_id, msg.step, msg.policy_version = t.episode_id, t.step, t.policy_version
            msg.frame_height = msg.frame_width = size
            # array.array from bytes: the generated setters take it without a per-element check
            msg.obs_frames = array.array('B', t.obs_frames.tobytes())
            msg.obs_vector = array.array('f', t.obs_vector.astype('float32').tobytes())
            msg.action = array.array('f', t.action.astype('float32').tobytes())
            msg.reward = t.reward
            msg.next_frame = array.array('B', t.next_frame.tobytes())
            msg.next_vector = array.array('f', t.next_vector.astype('float32').tobytes())
            msg.terminated, msg.truncated = t.terminated, t.truncated
            self._transitions_pub.publish(msg)
            self._budget.on_published()
            self._counts['transitions_published'] += 1

    @_guarded()
    def _on_watchdog(self) -> None:
        """Answer an image whose odometry is late; brake on stale input (not while held)."""
        now = time.monotonic()
        if (self._pending_image is not None and
                now - self._pending_image[2] > self._settings.sync_timeout):
            stamp, gray, received = self._pending_image
            self._pending_image = None
            pose = self._odometry.nearest(stamp)
            if pose is not None:
                self.get_logger().warning(
                    'no odometry with the camera stamp arrived within sync_timeout; pairing '
                    'with the nearest (set odometry_sync:=latest if the clocks differ)',
                    throttle_duration_sec=LOG_THROTTLE_S * 5)
            self._answer(stamp, gray, pose, received)
        if self._held_control is not None:
            return
        last_image, last_odometry = (None if last is None else max(last, self._hold_ended)
                                     for last in (self._last_image, self._last_odometry))
        reason = stale_input_reason(now, last_image, last_odometry,
                                    self._settings.input_timeout)
        if reason is not None:
            self._counts['watchdog_brakes'] += 1
            self._control_pub.publish(self._build_control(self._now_ns(), BRAKE_ACTION))
            self._note_brake(reason)

    # -- worker thread ------------------------------------------------------------------------

    async def _in_worker(self, function, *args):
        """
        Run ``function(*args)`` on the worker thread; return its result or raise its exception.

        The awaiting callback leaves the executor thread free meanwhile. The done callback of
        the future is what wakes the executor when the job ends: rclpy resumes an awaiting
        coroutine only when its wait set wakes, which a future set from another thread does not
        do by itself.
        """
        done = Future(executor=self.executor)
        done.add_done_callback(lambda _: None)
        self._worker.submit(function, *args).add_done_callback(functools.partial(_settle, done))
        return await done

    # -- service ------------------------------------------------------------------------------

    def _read_checkpoint(self, requested: str, settings: Settings) -> _StagedPolicy:
        """Resolve a requested path (empty: the newest checkpoint) and build its policy."""
        if requested:
            path = resolve_checkpoint_path(requested, settings.checkpoint_dir,
                                           settings.allowed_dirs)
        else:
            newest = newest_checkpoint(settings.checkpoint_dir)
            if newest is None:
                raise CheckpointError(f'no checkpoint in {settings.checkpoint_dir}')
            path = resolve_checkpoint_path(str(newest), settings.checkpoint_dir,
                                           settings.allowed_dirs)
        return self._build_policy(path, settings)

    async def _on_load_checkpoint(self, request: LoadCheckpoint.Request,
                                  response: LoadCheckpoint.Response) -> LoadCheckpoint.Response:
        """Load a checkpoint or policy export; any failure leaves the running policy as it is."""
        settings = self._settings
        response.success = False
        if settings is None:
            response.message = 'the node is not configured'
            return response
        try:
            staged = await self._in_worker(self._read_checkpoint, request.path, settings)
        except CheckpointError as exc:
            response.message = f'refused: {exc}'
        except Exception as exc:  # report in words, keep the old weights
            response.message = f'refused: {request.path!r} could not be loaded: {exc}'
        else:
            with self._lock:
                response.success = self._settings is settings
                if response.success:
                    self._staged = staged
            if not response.success:
                response.message = (f'refused: the node was cleaned up or reconfigured while '
                                    f'{request.path!r} was read; nothing changed')
        if response.success:
            response.total_it = staged.total_it
            response.sha256 = staged.sha256
            response.message = (f'loaded {staged.source} (total_it {staged.total_it}); in use '
                                'from the next camera frame')
        # (rclpy ties a severity to each logging call site)
        if response.success:
            self.get_logger().info(f'~/load_checkpoint: {response.message}')
        else:
            self.get_logger().warning(f'~/load_checkpoint: {response.message}')
        return response

    # -- diagnostics --------------------------------------------------------------------------

    @_guarded()
    def _publish_diagnostics(self) -> None:
        now = time.monotonic()
        status = DiagnosticStatus(name=f'{self.get_fully_qualified_name()}: policy',
                                  hardware_id=self._settings.actor_id)
        info = self._policy_info
        if self._held_control is not None:
            status.level = DiagnosticStatus.WARN
            status.message = ('holding the control: the insert allowance of the learner is used '
                              'up (waiting for fresh trainer stats)')
        elif self._brake_reason is not None:
            status.level = DiagnosticStatus.ERROR
            reasons = [self._brake_reason]
            if not self._core.train and self._core.policy is None and (
                    NO_POLICY_REASON not in self._brake_reason):   # the cause behind the rest
                reasons.append(f'{self._load_error}; {NO_POLICY_REASON}'.lstrip('; '))
            status.message = 'full brake: ' + '; '.join(reasons)
        else:
            status.level = DiagnosticStatus.OK
            status.message = 'driving'
        values = {
            'mode': 'train' if self._core.train else 'deploy',
            'control_output': self._settings.control_output,
            'image_rate_hz': f'{self._image_stats.rate(now):.2f}',
            'odometry_rate_hz': f'{self._odometry_stats.rate(now):.2f}',
            'inference_ms_p50': f'{self._inference.percentile(50) * 1e3:.2f}',
            'inference_ms_p99': f'{self._inference.percentile(99) * 1e3:.2f}',
            'image_to_control_ms_p50': f'{self._latency.percentile(50) * 1e3:.2f}',
            'image_to_control_ms_p99': f'{self._latency.percentile(99) * 1e3:.2f}',
            'checkpoint': info.source if info else (self._load_error or 'none'),
            'policy_version': str(self._core.policy_version),
            'checkpoint_total_it': str(info.total_it) if info else '',
            'checkpoint_sha256': info.sha256 if info else '',
            'insert_allowance': str(self._budget.allowance),
            'transitions_since_stats': str(self._budget.since_stats),
            **{name: str(count) for name, count in self._counts.items()},
        }
        status.values = [KeyValue(key=k, value=v) for k, v in values.items()]
        array_msg = DiagnosticArray(status=[status])
        array_msg.header.stamp = self.get_clock().now().to_msg()
        self._diagnostics_pub.publish(array_msg)


def main(args=None) -> int:
    """Run the policy node (``ros2 run av_td3_ros policy_node``)."""
    keep_large_buffers()
    rclpy.init(args=args)
    node = None
    try:
        node = PolicyNode()
        if node.autostart_failed:
            node.get_logger().fatal('autostart failed (see above); exiting')
            return 1
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except rclpy.exceptions.ParameterException as exc:   # a value of the wrong type or range
        print(f'[{NODE_NAME}] {exc}', file=sys.stderr)
        return 2
    finally:
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == '__main__':
    sys.exit(main())
