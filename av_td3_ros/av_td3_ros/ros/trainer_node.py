"""
The learner node ``av_td3_trainer``: transitions in, TD3 updates, weights and checkpoints out.

Thin ROS glue over ``learner_loop.Learner``: the subscription inserts transitions into the replay
buffer, the updates run in the learner's background thread, ``~/save_checkpoint`` and
``~/load_checkpoint`` follow DESIGN §4 to the letter (paths resolved against ``checkpoint_dir``,
refused outside the allowed directories, nothing changed on failure), fresh weights go out on
``/av_td3/policy_weights`` (transient-local, so a late actor gets the latest) and progress on
``~/stats`` and TensorBoard.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from av_td3_interfaces.msg import PolicyWeights, TrainerStats, Transition
from av_td3_interfaces.srv import LoadCheckpoint, SaveCheckpoint
from av_td3_ros.driving.observation import IMAGE_SCALINGS, ObservationSpec
from av_td3_ros.formats.checkpoint import (
    CheckpointError, CheckpointInfo, find_checkpoint, remove_stale_temp_files,
    resolve_checkpoint_path)
from av_td3_ros.learning.config import TD3Config
from av_td3_ros.learning.learner_loop import (
    Learner, LearnerOptions, LearnerStats, MODES, TensorBoardLog,
    WeightsUpdate)
from av_td3_ros.ros.bags import BagError, STORAGES, TransitionBagWriter
from av_td3_ros.ros.common import (
    LATCHED_QOS, NodeStartError, ParameterTable, POLICY_WEIGHTS, RELIABLE_QOS, reliable_qos,
    run_node, STRING_ARRAY, TRANSITIONS)
from av_td3_ros.ros.executor import PooledExecutor
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.node import Node
from rclpy.publisher import Publisher
from rclpy.serialization import serialize_message

NODE_NAME = 'av_td3_trainer'

# The observation spec is part of the learner config (and of every checkpoint); declared as
# obs.<field> so that YAML can nest it under ``obs:``.
OBS_PARAMETERS = {
    'frame_stack': ('grayscale frames stacked per observation', (1, 16)),
    'image_size': ('side of the square gray frame in pixels (84 in DESIGN §5)', (36, 1024)),
    'n_waypoints': ('route waypoints in the vector (25 in DESIGN §5)', (1, 1000)),
    'waypoint_spacing_m': ('distance between route waypoints in metres', (0.01, 1000.0)),
    'image_scaling': ('network input scaling: zero_one (x/255) or minus_one_one (legacy)',
                      IMAGE_SCALINGS),
    'speed_scale': ('speed divisor of the vector (m/s)', (0.01, 1e6)),
    'lateral_scale': ('lateral deviation divisor of the vector (m)', (0.01, 1e6)),
    'waypoint_scale': ('waypoint coordinate divisor of the vector (m)', (0.01, 1e6)),
}

NODE_PARAMETERS = {
    'checkpoint_dir': ('checkpoints', 'directory of checkpoints: relative save/load paths '
                       'resolve against it, empty save path writes td3_step_<total_it>.pth here'),
    'allowed_checkpoint_dirs': (STRING_ARRAY, 'further directories the services may read and '
                                'write (besides checkpoint_dir)'),
    'keep_checkpoints': (5, 'periodic checkpoints kept (oldest deleted; 0 keeps all)',
                         (0, 1_000_000)),
    'broadcast_every': (100, 'updates between weight broadcasts on /av_td3/policy_weights',
                        (1, 1_000_000_000)),
    'stats_period': (1.0, 'seconds between ~/stats messages and TensorBoard points',
                     (0.01, 3600.0)),
    'tensorboard_dir': ('', 'TensorBoard log directory (empty: no TensorBoard logs)'),
    'resume': ('', 'checkpoint to resume from at start: a path, "latest" (newest in '
               'checkpoint_dir) or empty (start fresh)'),
    'mode': ('synchronous', 'synchronous: keep samples_per_insert (actors wait on the insert '
             'allowance); realtime: update as fast as possible', MODES),
    'record_bag': ('', 'rosbag2 file to record every received transition to (empty: no '
                   'recording)'),
    'record_bag_storage': ('mcap', 'storage of record_bag', STORAGES),
    'transition_queue_depth': (1000, 'depth of the reliable transitions subscription',
                               (1, 1_000_000)),
}


def _parameter_table() -> ParameterTable:
    """Every parameter, read once at start: TD3Config's fields, obs.*, hidden, the node's."""
    spec = ObservationSpec()
    params = {info.name: (info.default, info.description, info.limits)
              for info in TD3Config.parameter_info()}
    params |= {f'obs.{field}': (getattr(spec, field), description, limits)
               for field, (description, limits) in OBS_PARAMETERS.items()}
    params['hidden'] = (list(TD3Config().hidden),
                        'hidden layer sizes of the actor and of each critic head')
    return ParameterTable(params | NODE_PARAMETERS, read_only=True)


PARAMETERS = _parameter_table()


class TrainerNode(Node):
    """The TD3 learner as a ROS 2 node (DESIGN §4, §6)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(kwargs.pop('node_name', NODE_NAME), **kwargs)
        PARAMETERS.declare(self)
        self._params = PARAMETERS.read(self)
        self.config = self._read_config()
        self.checkpoint_dir = Path(self._params['checkpoint_dir']).expanduser().resolve()
        self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        # a save killed half way (SIGKILL, power loss) leaves its temp files behind
        removed = remove_stale_temp_files(self.checkpoint_dir)
        if removed:
            self.get_logger().warning(
                f'removed {len(removed)} leftover temp file(s) of interrupted checkpoint '
                f'writes in {self.checkpoint_dir}: {", ".join(p.name for p in removed[:5])}')
        self.allowed_dirs = [d for d in self._params['allowed_checkpoint_dirs'] if d]
        self.stats_period = self._params['stats_period']

        self._weights_pub = self.create_publisher(PolicyWeights, POLICY_WEIGHTS, LATCHED_QOS)
        self._stats_pub = self.create_publisher(TrainerStats, '~/stats', RELIABLE_QOS)
        self.learner = Learner(
            self.config,
            LearnerOptions(checkpoint_dir=str(self.checkpoint_dir), mode=self._params['mode'],
                           broadcast_every=self._params['broadcast_every'],
                           keep_checkpoints=self._params['keep_checkpoints']),
            on_weights=self._publish_weights, on_checkpoint=self._on_checkpoint,
            on_error=self._on_learner_error, on_unblock=self._publish_stats)
        tensorboard_dir = self._params['tensorboard_dir']
        self._tensorboard = TensorBoardLog(tensorboard_dir) if tensorboard_dir else None
        self._transition_sinks: list = []
        self._bag: TransitionBagWriter | None = None
        record_bag = self._params['record_bag']
        if record_bag:
            self._transition_sinks.append(self._open_bag_recorder(record_bag))

        # A fresh learner broadcasts nothing until its first broadcast_every updates: until
        # then actors explore with uniform random actions (TD3's warm-up of learning_starts
        # transitions). A resumed one broadcasts the loaded weights at once (Learner.load).
        resume = self._params['resume']
        if resume:
            info = self._resume(resume)
            self.get_logger().info(
                f'resumed from {info.path} (total_it {info.total_it}, sha256 {info.sha256[:12]})')

        # One group per concern: inserts never wait for a service, services never wait for
        # inserts, and the learner itself runs on its own thread.
        self._transition_sub = self.create_subscription(
            Transition, TRANSITIONS, self._on_transition,
            reliable_qos(self._params['transition_queue_depth']),
            callback_group=MutuallyExclusiveCallbackGroup())
        services = MutuallyExclusiveCallbackGroup()
        self.create_service(SaveCheckpoint, '~/save_checkpoint', self._save_checkpoint,
                            callback_group=services)
        self.create_service(LoadCheckpoint, '~/load_checkpoint', self._load_checkpoint,
                            callback_group=services)
        self._stats_timer = self.create_timer(
            self.stats_period, self._on_stats_timer,
            callback_group=MutuallyExclusiveCallbackGroup())
        self.learner.start()
        self.get_logger().info(
            f'learning in {self._params["mode"]} mode: batch {self.config.batch_size}, '
            f'learning_starts {self.config.learning_starts}, samples_per_insert '
            f'{self.config.samples_per_insert:g}, checkpoints in {self.checkpoint_dir}')

    # ----------------------------------------------------------------------------- parameters
    def _read_config(self) -> TD3Config:
        """Build the TD3Config from the parameters; an invalid combination stops the node."""
        data: dict[str, Any] = {info.name: self._params[info.name]
                                for info in TD3Config.parameter_info()}
        data['obs'] = {field: self._params[f'obs.{field}'] for field in OBS_PARAMETERS}
        data['hidden'] = tuple(self._params['hidden'])
        if data.get('grad_clip_norm') == 0.0:
            data['grad_clip_norm'] = None
        try:
            return TD3Config.from_dict(data)
        except (TypeError, ValueError) as exc:
            raise ValueError(f'invalid TD3 parameters: {exc}') from None

    # ----------------------------------------------------------------------------- transitions
    def _on_transition(self, msg: Transition) -> None:
        try:
            if msg.frame_height != self.config.obs.image_size or (
                    msg.frame_width != self.config.obs.image_size):
                raise ValueError(f'frames are {msg.frame_height}x{msg.frame_width}, this '
                                 f'learner uses {self.config.obs.image_size}x'
                                 f'{self.config.obs.image_size}')
            self.learner.insert(msg.actor_id, msg.episode_id, msg.step, msg.obs_frames,
                                msg.obs_vector, msg.action, msg.reward, msg.next_frame,
                                msg.next_vector, msg.terminated, msg.truncated,
                                msg.policy_version)
        except ValueError as exc:
            self.get_logger().error(f'dropped a transition from {msg.actor_id!r}: {exc}',
                                    throttle_duration_sec=5.0)
            return
        for sink in self._transition_sinks:
            sink(msg)

    def _open_bag_recorder(self, path: str):
        """Return a transition sink writing to a rosbag2 file (the record_bag hook)."""
        storage = self._params['record_bag_storage']
        try:
            self._bag = TransitionBagWriter(Path(path).expanduser(), storage,
                                            self.resolve_topic_name(TRANSITIONS))
        except BagError as exc:
            raise ValueError(f'record_bag={path!r}: {exc}') from None
        self.get_logger().info(f'recording received transitions to {self._bag.path} ({storage})')
        bag, clock, logger = self._bag, self.get_clock(), self.get_logger()

        def record(msg: Transition) -> None:
            try:
                bag.write_transition(serialize_message(msg), clock.now().nanoseconds)
            except BagError as exc:
                logger.error(f'record_bag: {exc}', throttle_duration_sec=10.0)

        return record

    # ----------------------------------------------------------------------------- publishing
    def _publish_weights(self, update: WeightsUpdate) -> None:
        msg = PolicyWeights()
        msg.header.stamp = self.get_clock().now().to_msg()
        msg.version = update.version
        msg.total_it = update.total_it
        msg.format = 'safetensors'
        msg.data = update.data
        msg.sha256 = update.sha256
        self._publish(self._weights_pub, msg)

    def _publish(self, publisher: Publisher, msg: Any) -> bool:
        """
        Publish from any thread; False when the context went down (SIGINT) during shutdown.

        The learner thread exports weights and stats until ``destroy_node`` stops it, which
        comes after rclpy's signal handler invalidated the context: a publish in that window
        raised "publisher's context is invalid" and ended the thread with a traceback.
        """
        try:
            publisher.publish(msg)
        except Exception:
            if self.context.ok():
                raise
            return False
        return True

    def _publish_stats(self) -> LearnerStats:
        stats = self.learner.stats()
        msg = TrainerStats()
        msg.header.stamp = self.get_clock().now().to_msg()
        msg.total_it = stats.total_it
        msg.transitions = stats.transitions
        msg.buffer_size = stats.buffer_size
        msg.episodes = stats.episodes
        msg.weights_version = stats.weights_version
        msg.updates_per_s = float(stats.updates_per_s)
        msg.critic_loss = float(stats.critic_loss)
        msg.actor_loss = float(stats.actor_loss)
        msg.q_mean = float(stats.q_mean)
        msg.samples_per_insert = float(stats.samples_per_insert)
        msg.insert_allowance = int(stats.insert_allowance)
        for actor_id, tally in stats.actors.items():
            msg.actor_ids.append(actor_id)
            msg.actor_transitions.append(tally.transitions)
            msg.actor_out_of_order.append(tally.out_of_order)
            msg.actor_missed.append(tally.missed)
            msg.actor_policy_versions.append(tally.policy_version)
        self._publish(self._stats_pub, msg)
        return stats

    def _on_stats_timer(self) -> None:
        stats = self._publish_stats()
        if self._tensorboard is not None:
            self._tensorboard.write(stats)

    def _on_checkpoint(self, info: CheckpointInfo) -> None:
        self.get_logger().info(
            f'checkpoint {info.path} (update {info.total_it}, sha256 {info.sha256})')

    def _on_learner_error(self, message: str) -> None:
        self.get_logger().error(message)

    # ----------------------------------------------------------------------------- services
    def _resume(self, resume: str) -> CheckpointInfo:
        """Load the checkpoint to resume from; one that cannot be read stops the start."""
        try:
            path = find_checkpoint('' if resume == 'latest' else resume, self.checkpoint_dir,
                                   self.allowed_dirs)
            return self.learner.load(path)
        except (CheckpointError, OSError) as exc:
            raise NodeStartError(f'resume={resume}: {exc}') from None

    def _save_checkpoint(self, request: SaveCheckpoint.Request,
                         response: SaveCheckpoint.Response) -> SaveCheckpoint.Response:
        try:
            path = (resolve_checkpoint_path(request.path, self.checkpoint_dir, self.allowed_dirs)
                    if request.path else None)
            if path is not None and path.is_dir():
                raise CheckpointError(f'{path} is a directory')
            if path is not None and not path.parent.is_dir():
                raise CheckpointError(f'directory {path.parent} does not exist')
            info = self.learner.save(path, request.include_replay_buffer)
        except (CheckpointError, OSError, ValueError) as exc:
            response.success = False
            response.message = str(exc)
            self.get_logger().error(f'save_checkpoint refused: {exc}')
            return response
        response.success = True
        response.message = f'saved update {info.total_it}'
        response.path = str(info.path)
        response.total_it = int(info.total_it)
        response.sha256 = info.sha256
        self.get_logger().info(
            f'saved {info.path} (update {info.total_it}, sha256 {info.sha256})')
        return response

    def _load_checkpoint(self, request: LoadCheckpoint.Request,
                         response: LoadCheckpoint.Response) -> LoadCheckpoint.Response:
        try:
            path = find_checkpoint(request.path, self.checkpoint_dir, self.allowed_dirs)
            info = self.learner.load(path, weights_only=request.weights_only)
        except (CheckpointError, OSError, ValueError) as exc:
            response.success = False
            response.message = str(exc)
            self.get_logger().error(f'load_checkpoint refused: {exc}')
            return response
        response.success = True
        response.message = (f'loaded {info.path} ({info.kind}, update {info.total_it}'
                            f'{", weights only" if request.weights_only else ""})')
        response.total_it = int(info.total_it)
        response.sha256 = info.sha256
        self.get_logger().info(response.message)
        return response

    def destroy_node(self) -> None:
        """Stop the learner (and wait for checkpoint writes) before the node goes away."""
        # also called by the context's shutdown on a node whose __init__ failed half way
        if getattr(self, 'learner', None) is not None:
            self.learner.stop()
        if getattr(self, '_tensorboard', None) is not None:
            self._tensorboard.close()
        if getattr(self, '_bag', None) is not None:
            try:
                self._bag.close()
            except BagError as exc:
                self.get_logger().error(f'record_bag: {exc}')
        super().destroy_node()


def main(args: list[str] | None = None) -> int:
    """Run the trainer node (``ros2 run av_td3_ros trainer_node``)."""
    return run_node(TrainerNode, NODE_NAME, args,
                    lambda: PooledExecutor(num_threads=max(4, os.cpu_count() or 2)))


if __name__ == '__main__':
    raise SystemExit(main())
