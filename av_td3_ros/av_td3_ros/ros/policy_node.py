"""
The policy node ``av_td3_policy``: camera + odometry + route in, vehicle control out.

ROS glue only: parameters, subscriptions, lifecycle, publishing. The logic is in plain modules:
``actor_core`` (observation, route, transitions), ``pairing`` (which pose answers which frame),
``responder`` (act, publish or hold, watchdog), ``policy_loader`` (checkpoints and weights on a
worker thread, staged and swapped between frames), ``policy_messages``, ``policy_settings``
and ``policy_diagnostics``. Threads: docs/policy_node.md. A lifecycle node after ros2/demos
lifecycle_py; it configures and activates itself unless ``autostart:=false``.
"""

from __future__ import annotations

import functools
import threading
import time

from av_td3_interfaces.msg import PolicyWeights, StepFeedback, TrainerStats, Transition
from av_td3_interfaces.srv import LoadCheckpoint
from av_td3_ros.driving.actor_core import ActorCore, BRAKE_ACTION, Feedback
from av_td3_ros.driving.observation import ObservationError
from av_td3_ros.driving.pairing import InputPairing
from av_td3_ros.driving.policy_loader import PolicyLoader
from av_td3_ros.driving.responder import Responder
from av_td3_ros.formats.image_cdr import SerializedImageError
from av_td3_ros.ros.common import (
    camera_qos, DEEP_QOS, DIAGNOSTICS, LATCHED_QOS, LATEST_QOS, NodeStartError, POLICY_WEIGHTS,
    RELIABLE_QOS, run_node, TRANSITIONS, worker_result)
from av_td3_ros.ros.policy_messages import (
    camera_frame, control_builder, diagnostics_message, odometry_pose, path_route, stamp_to_ns,
    transition_message)
from av_td3_ros.ros.policy_settings import (
    actor_core, camera_qos_advice, PARAMETERS, read_settings, Settings)
from diagnostic_msgs.msg import DiagnosticArray
from nav_msgs.msg import Odometry, Path
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.event_handler import SubscriptionEventCallbacks
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from sensor_msgs.msg import Image
import torch

NODE_NAME = 'av_td3_policy'
WATCHDOG_PERIOD_S = 0.05
LOG_THROTTLE_S = 2.0


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


class PolicyNode(LifecycleNode):
    """The actor as a ROS 2 lifecycle node (DESIGN §4, ``av_td3_policy``)."""

    def __init__(self, node_name: str = NODE_NAME, **kwargs) -> None:
        # before the Node exists: a parameter refused while it is built still leaves a node
        # that rclpy's context destroys at shutdown, and destroy_node needs these
        self._busy = threading.RLock()         # held by inference callbacks and teardown
        self._loader = PolicyLoader()          # loads and weights are built on its thread
        super().__init__(node_name, **kwargs)
        PARAMETERS.declare(self)
        self._settings: Settings | None = None
        self._core: ActorCore | None = None
        self._entities: list = []
        self._active = False
        # In every lifecycle state (unconfigured: it says so). A service destroyed by a cleanup
        # while a load awaited the worker could not send its answer, and the executor would
        # raise that failure out of spin().
        self.create_service(LoadCheckpoint, '~/load_checkpoint', self._on_load_checkpoint,
                            callback_group=MutuallyExclusiveCallbackGroup())
        if self.get_parameter('autostart').value:
            ok = self.trigger_configure() == TransitionCallbackReturn.SUCCESS
            if not (ok and self.trigger_activate() == TransitionCallbackReturn.SUCCESS):
                self.destroy_node()
                raise NodeStartError('autostart failed (see above)')

    # -- lifecycle ----------------------------------------------------------------------------

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            settings = read_settings(PARAMETERS.read(self), self.get_fully_qualified_name())
            control_type, self._build_control = control_builder(
                settings.control_output, settings.twist_max_steer_angle)
        except ValueError as exc:
            self.get_logger().error(f'configuration failed: {exc}')
            return TransitionCallbackReturn.FAILURE
        for deprecation in settings.deprecations:
            self.get_logger().warning(deprecation)
        if settings.num_threads > 0:
            torch.set_num_threads(settings.num_threads)
        self._settings = settings
        self._core = actor_core(settings)
        self._run = Responder(
            self._core, InputPairing(settings.odometry_by_stamp, settings.sync_timeout),
            settings.input_timeout, self._build_control,
            lambda control: self._control_pub.publish(control), self._publish_transition,
            self.get_logger())
        generation = self._loader.begin(settings.checkpoint_dir, settings.allowed_dirs,
                                        settings.device)
        if settings.checkpoint_path:
            self._run.load_initial(
                self._loader.initial_path(generation, settings.checkpoint_path),
                generation.device)
        try:
            self._create_entities(settings, control_type)
        except Exception as exc:  # e.g. an invalid topic name: say so, stay unconfigured
            self._destroy_entities()
            self.get_logger().error(f'configuration failed: {exc}')
            return TransitionCallbackReturn.FAILURE
        self.get_logger().info(
            f'configured: {"train" if settings.train else "deploy"}, control_output '
            f'{settings.control_output}, camera {self._image_sub.topic_name} '
            f'({"reliable" if settings.image_reliable else "best effort"}, depth '
            f'{settings.image_depth})')
        return TransitionCallbackReturn.SUCCESS

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
        topics = settings.topics
        self._control_pub = keep(self.create_lifecycle_publisher(control_type, topics.control,
                                                                 RELIABLE_QOS))
        self._diagnostics_pub = keep(self.create_lifecycle_publisher(
            DiagnosticArray, DIAGNOSTICS, RELIABLE_QOS))
        self._transitions_pub = keep(self.create_lifecycle_publisher(
            Transition, TRANSITIONS, DEEP_QOS)) if settings.train else None
        self._image_sub = keep(self.create_subscription(
            Image, topics.image, self._on_image,
            camera_qos(settings.image_reliable, settings.image_depth), callback_group=infer,
            raw=True, event_callbacks=SubscriptionEventCallbacks(
                incompatible_qos=self._on_image_qos_incompatible)))
        keep(self.create_subscription(Odometry, topics.odometry, self._on_odometry,
                                      RELIABLE_QOS, callback_group=infer))
        keep(self.create_subscription(Path, topics.waypoints, self._on_waypoints, LATCHED_QOS,
                                      callback_group=infer))
        keep(self.create_subscription(StepFeedback, topics.step_feedback, self._on_feedback,
                                      DEEP_QOS, callback_group=infer))
        if settings.train:
            keep(self.create_subscription(PolicyWeights, POLICY_WEIGHTS, self._on_weights,
                                          LATCHED_QOS,
                                          callback_group=MutuallyExclusiveCallbackGroup()))
            # best effort matches any publisher; a lost stats message only delays a resume
            keep(self.create_subscription(
                TrainerStats, settings.trainer_stats_topic, self._on_trainer_stats,
                LATEST_QOS, callback_group=infer))
        keep(self.create_timer(WATCHDOG_PERIOD_S, self._on_watchdog, callback_group=infer))
        keep(self.create_timer(settings.diagnostics_period, self._publish_diagnostics,
                               callback_group=infer))

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        result = super().on_activate(state)
        self._active = True
        self._run.brake_reason = 'waiting for input'
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
        self._loader.shutdown()
        return TransitionCallbackReturn.SUCCESS

    def destroy_node(self) -> None:
        """Stop the callbacks first, so that none publishes on a destroyed publisher."""
        with self._busy:
            self._active = False
        self._loader.shutdown()
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
        self._settings = None
        self._loader.close()    # a load finishing after this cleanup must not stage its policy

    # -- inputs -------------------------------------------------------------------------------

    def _now_ns(self) -> int:
        return self.get_clock().now().nanoseconds

    @_guarded()
    def _on_image(self, serialized: bytes) -> None:
        """Take a camera frame from its serialized bytes (raw subscription: no copy of pixels)."""
        received = time.monotonic()
        self._run.stats.image.add(received)
        try:
            image = camera_frame(serialized)
            gray = self._core.frame_gray(image.data, image.width, image.height, image.encoding,
                                         image.step)
        except (ObservationError, SerializedImageError) as exc:
            self._run.stats.counts['images_refused'] += 1
            self.get_logger().warning(f'refused camera image: {exc}',
                                      throttle_duration_sec=LOG_THROTTLE_S)
            return
        self._run.on_image(image.stamp_ns, gray, received, self._loader.take())

    def _on_image_qos_incompatible(self, event) -> None:
        """Say once per incompatible camera publisher why its frames never arrive."""
        if event.total_count_change > 0:
            self.get_logger().warning(camera_qos_advice(
                self._image_sub.topic_name, event.last_policy_kind.name,
                self._settings is None or self._settings.image_reliable))

    @_guarded()
    def _on_odometry(self, msg: Odometry) -> None:
        try:
            pose = odometry_pose(msg)
        except ObservationError as exc:
            self._run.stats.counts['odometry_refused'] += 1
            self.get_logger().warning(f'refused odometry: {exc}',
                                      throttle_duration_sec=LOG_THROTTLE_S)
            return
        self._run.on_odometry(stamp_to_ns(msg.header.stamp), pose, self._loader.take())

    @_guarded(active=False)
    def _on_waypoints(self, msg: Path) -> None:
        try:
            route = path_route(msg)
        except ObservationError as exc:
            self._run.stats.counts['waypoints_refused'] += 1
            self.get_logger().warning(f'refused waypoints: {exc}',
                                      throttle_duration_sec=LOG_THROTTLE_S)
            return
        change = self._core.set_route(route, self._run.pairing.odometry.latest)
        if change.new_task:
            self.get_logger().info(f'new route of {len(route)} waypoints '
                                   f'({route.length_m:.0f} m), a new task: {change.reason}')
        else:       # planners re-publish at up to 10 Hz: no log line for each
            self.get_logger().debug(f'route of {len(route)} waypoints: {change.reason}')

    @_guarded()
    def _on_feedback(self, msg: StepFeedback) -> None:
        feedback = Feedback(stamp_to_ns(msg.header.stamp), msg.episode_id, msg.step,
                            float(msg.reward), msg.terminated, msg.truncated)
        self._run.publish_transitions(self._core.add_feedback(feedback))

    @_guarded()
    def _on_trainer_stats(self, msg: TrainerStats) -> None:
        self._run.on_stats(msg.insert_allowance, time.monotonic())

    async def _on_weights(self, msg: PolicyWeights) -> None:
        """Review and build the broadcast policy on the worker thread; swap it in later."""
        generation = self._loader.generation
        if generation is None:
            return
        try:
            outcome, why = await worker_result(self.executor, self._loader.submit(
                self._loader.take_weights, msg.format, msg.data.tobytes(), msg.sha256,
                msg.version, msg.total_it, POLICY_WEIGHTS, generation))
        except Exception as exc:  # bad bytes must not take the node down
            self._run.stats.counts['weights_refused'] += 1
            self.get_logger().error(f'refused policy weights version {msg.version}: {exc}')
            return
        if outcome == 'refused':
            self._run.stats.counts['weights_refused'] += 1
            self.get_logger().warning(f'refused policy weights: {why}',
                                      throttle_duration_sec=LOG_THROTTLE_S)

    def _publish_transition(self, transition) -> None:
        self._transitions_pub.publish(transition_message(
            transition, self._settings.actor_id, self._core.spec.image_size))

    @_guarded()
    def _on_watchdog(self) -> None:
        self._run.on_tick(time.monotonic(), self._now_ns(), self._loader.take())

    # -- service ------------------------------------------------------------------------------

    async def _on_load_checkpoint(self, request: LoadCheckpoint.Request,
                                  response: LoadCheckpoint.Response) -> LoadCheckpoint.Response:
        """Load a checkpoint or policy export; any failure leaves the running policy as it is."""
        generation = self._loader.generation
        if generation is None:
            response.success, response.message = False, 'the node is not configured'
            return response
        response.success, response.message, staged = await worker_result(
            self.executor, self._loader.submit(self._loader.serve_request, request.path,
                                               generation))
        if response.success:
            response.total_it, response.sha256 = staged.total_it, staged.sha256
            self.get_logger().info(f'~/load_checkpoint: {response.message}')
        else:      # (rclpy ties a severity to each logging call site)
            self.get_logger().warning(f'~/load_checkpoint: {response.message}')
        return response

    # -- diagnostics --------------------------------------------------------------------------

    @_guarded()
    def _publish_diagnostics(self) -> None:
        self._diagnostics_pub.publish(diagnostics_message(
            self._run, self._core, self._settings.control_output, self.get_fully_qualified_name(),
            self._settings.actor_id, time.monotonic(), self.get_clock().now().to_msg()))


def main(args: list[str] | None = None) -> int:
    """Run the policy node (``ros2 run av_td3_ros policy_node``)."""
    return run_node(PolicyNode, NODE_NAME, args)


if __name__ == '__main__':
    raise SystemExit(main())
