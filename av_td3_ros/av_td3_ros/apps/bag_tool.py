"""
Bags for learning and testing policies without the ros2 CLI (DESIGN §9).

    bag_tool info BAG [--json]
    bag_tool train BAG [--config CFG] --out CKPT --updates N [--bc-alpha A]
    bag_tool replay BAG --checkpoint CKPT [--json]
    bag_tool play BAG [--rate R] [--topics T ...] [--duration S] [--clock]
    bag_tool record BAG (--topics T ... | --all) [--storage mcap|sqlite3] [--duration S]

``train`` learns offline (TD3+BC) from recorded transitions or from raw drive topics, turned
into transitions by the actor's own code; ``replay`` runs a checkpoint open-loop on a drive and
compares its actions with the recorded controls. ``play`` publishes a bag's messages into the
live graph with their original timing (x rate), so the policy node or the trainer runs from a bag
exactly as from a simulator; ``record`` is ``ros2 bag record`` for ROS 2 installs that lack it.
All decode and encode with the rosbags typestore of ``av_td3_ros.ros.bags``.
"""

from __future__ import annotations

import argparse
import array
import functools
import importlib
import json
from pathlib import Path
import sys
import time

from av_td3_ros.learning.config import TD3Config
from av_td3_ros.ros.bags import (
    bag_transitions, BagError, BagReader, BagWriter, expected_transitions, known_distros,
    RawTopics, replay_policy, resolve_source, SOURCES, STORAGES, TRANSITIONS_TOPIC)
import numpy as np
import rclpy
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from rclpy.utilities import remove_ros_args
from rosidl_parser.definition import AbstractNestedType, BasicType, NamespacedType

CLOCK_TOPIC = '/clock'


# --------------------------------------------------------------------------------------------
# rosbags message <-> rclpy message


@functools.cache
def message_class(msgtype: str) -> type:
    """Resolve ``pkg/msg/Name`` to the rclpy message class; BagError if not installed."""
    parts = msgtype.split('/')
    if len(parts) != 3 or parts[1] != 'msg':
        raise BagError(f'{msgtype!r} is not a ROS 2 message type name (pkg/msg/Name)')
    package, _, name = parts
    try:
        return getattr(importlib.import_module(f'{package}.msg'), name)
    except (ImportError, AttributeError):
        raise BagError(
            f'message type {msgtype} is not available in this ROS 2 environment; install '
            f'{package} or leave its topic out with --topics') from None


def _namespaced_class(slot: NamespacedType) -> type:
    return message_class('/'.join((*slot.namespaces, slot.name)))


def _scalar(value, slot):
    if isinstance(slot, BasicType):
        if slot.typename == 'boolean':
            return bool(value)
        if slot.typename in ('float', 'double', 'long double'):
            return float(value)
        if slot.typename == 'octet':
            return bytes([int(value)])
        return int(value)
    return str(value)


def _convert(value, slot, current):
    if isinstance(slot, NamespacedType):
        return to_ros_message(value, _namespaced_class(slot))
    if not isinstance(slot, AbstractNestedType):
        return _scalar(value, slot)
    inner = slot.value_type
    if isinstance(inner, NamespacedType):
        cls = _namespaced_class(inner)
        return [to_ros_message(v, cls) for v in value]
    if isinstance(current, array.array):   # primitive sequences: one memory copy
        out = array.array(current.typecode)
        out.frombytes(np.ascontiguousarray(value, dtype=current.typecode).tobytes())
        return out
    if isinstance(current, np.ndarray):    # fixed-size primitive arrays
        return np.asarray(value, dtype=current.dtype)
    return [_scalar(v, inner) for v in value]


def to_ros_message(value: object, cls: type) -> object:
    """
    Copy a rosbags message into an rclpy message of ``cls``, field by field.

    Fields are matched by name, so a bag recorded with another distro's definition of a type
    still plays: fields the bag lacks keep their defaults, fields rclpy lacks are dropped.
    """
    msg = cls()
    for (name, slot) in zip(cls.get_fields_and_field_types(), cls.SLOT_TYPES, strict=True):
        if hasattr(value, name):
            setattr(msg, name, _convert(getattr(value, name), slot, getattr(msg, name)))
    return msg


# --------------------------------------------------------------------------------------------
# info


def cmd_info(args: argparse.Namespace) -> int:
    with BagReader(args.bag, args.distro) as reader:
        summary = reader.info()
    if args.json:
        print(json.dumps(summary.to_dict(), indent=2))
        return 0
    print(f'bag:        {summary.path}')
    print(f'storage:    {summary.storage}')
    print(f'ros_distro: {summary.ros_distro or "(not recorded)"}')
    print(f'duration:   {summary.duration_s:.3f} s')
    print(f'messages:   {summary.message_count}')
    width = max((len(t.topic) for t in summary.topics), default=5)
    for topic in summary.topics:
        print(f'  {topic.topic:<{width}}  {topic.msgtype:<40}  {topic.count:>8}')
    return 0


# --------------------------------------------------------------------------------------------
# train


class ProgressBar:
    """A one-line progress bar on stderr, redrawn at most every ``period`` seconds."""

    def __init__(self, total: int, label: str, period: float = 0.5, width: int = 30) -> None:
        self.total = max(total, 1)
        self.label = label
        self._period = period
        self._width = width
        self._start = time.monotonic()
        self._last = 0.0

    def update(self, done: int, extra: str = '', force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last < self._period:
            return
        self._last = now
        fraction = min(done / self.total, 1.0)
        filled = int(self._width * fraction)
        elapsed = now - self._start
        rate = done / elapsed if elapsed > 0 else 0.0
        eta = (self.total - done) / rate if rate > 0 else float('nan')
        sys.stderr.write(
            f'\r{self.label} [{"#" * filled}{"." * (self._width - filled)}] {done}/{self.total} '
            f'{rate:.1f}/s eta {eta:.0f}s {extra}\033[K')
        sys.stderr.flush()

    def close(self, done: int, extra: str = '') -> None:
        self.update(done, extra, force=True)
        sys.stderr.write('\n')
        sys.stderr.flush()


def _raw_topics(args: argparse.Namespace) -> RawTopics:
    return RawTopics(image=args.image_topic, odometry=args.odometry_topic,
                     waypoints=args.waypoints_topic, control=args.control_topic,
                     feedback=args.feedback_topic)


def offline_config(base: TD3Config, bc_alpha: float, n_transitions: int) -> TD3Config:
    """
    Adapt a config to offline learning: TD3+BC weight, no warm-up, no rate limit.

    The buffer holds exactly the bag (capacity is not part of the network architecture, so
    the checkpoint still loads into a trainer with its own capacity).
    """
    return base.replace(bc_alpha=bc_alpha, learning_starts=0, samples_per_insert=0.0,
                        checkpoint_every=0, buffer_capacity=max(n_transitions, 1))


def cmd_train(args: argparse.Namespace) -> int:
    # torch-heavy imports: only the learning commands pay for them (info/play/record start fast)
    from av_td3_ros.learning.learner_loop import Learner, LearnerOptions
    try:
        base = TD3Config.from_yaml(args.config) if args.config else TD3Config()
        if args.seed is not None:
            base = base.replace(seed=args.seed)
    except (OSError, ValueError) as err:
        raise BagError(f'config {args.config}: {err}') from None
    out = Path(args.out).expanduser().resolve()
    if not out.parent.is_dir():
        raise BagError(f'--out {out}: directory {out.parent} does not exist')
    with BagReader(args.bag, args.distro) as reader:
        source = resolve_source(reader, args.source, args.transitions_topic)
        capacity = expected_transitions(reader, source, _raw_topics(args), args.transitions_topic)
        try:
            config = offline_config(base, args.bc_alpha, capacity)
        except ValueError as err:
            raise BagError(f'config: {err}') from None
        learner = Learner(config, LearnerOptions(checkpoint_dir=str(out.parent), mode='realtime'))
        try:
            for stream, index, t in bag_transitions(reader, config.obs, source, _raw_topics(args),
                                                    args.transitions_topic):
                try:
                    learner.insert(stream, t.episode_id, t.step, t.obs_frames, t.obs_vector,
                                   t.action, t.reward, t.next_frame, t.next_vector,
                                   t.terminated, t.truncated)
                except ValueError as err:
                    raise BagError(f'{reader.path}: transition {index} ({source}): {err}'
                                   ) from None
            loaded = len(learner.replay)
            if loaded < config.batch_size:
                raise BagError(f'{reader.path}: {loaded} transitions from {source} topics, fewer '
                               f'than one batch ({config.batch_size}); record a longer drive or '
                               'lower batch_size')
            print(f'{loaded} transitions from {source} topics of {reader.path}; '
                  f'{args.updates} TD3{"+BC" if args.bc_alpha > 0 else ""} updates '
                  f'(bc_alpha {args.bc_alpha:g}, batch {config.batch_size})', file=sys.stderr)
            bar = ProgressBar(args.updates, 'train')
            extra = ''
            for done in range(1, args.updates + 1):
                learner.update_once()
                stats = learner.stats()
                extra = (f'critic {stats.critic_loss:.4f} actor {stats.actor_loss:.3f} '
                         f'Q {stats.q_mean:.2f}')
                bar.update(done, extra)
            bar.close(args.updates, extra)
            info = learner.save(out)
        finally:
            learner.stop()
    stats = learner.stats()
    print(json.dumps({'checkpoint': info.path, 'sha256': info.sha256, 'total_it': info.total_it,
                      'transitions': loaded, 'source': source, 'bc_alpha': args.bc_alpha,
                      'critic_loss': stats.critic_loss, 'actor_loss': stats.actor_loss,
                      'q_mean': stats.q_mean}))
    return 0


# --------------------------------------------------------------------------------------------
# replay


def cmd_replay(args: argparse.Namespace) -> int:
    from av_td3_ros.formats.checkpoint import CheckpointError
    from av_td3_ros.driving.policy import Policy
    try:
        policy = Policy.load(args.checkpoint)
    except CheckpointError as err:  # names the file and what is wrong with it
        raise BagError(str(err)) from None
    except OSError as err:
        raise BagError(f'checkpoint {args.checkpoint}: {err}') from None
    with BagReader(args.bag, args.distro) as reader:
        report = replay_policy(reader, policy, _raw_topics(args), args.steer_tol, args.tb_tol)
    if args.json:
        print(json.dumps(report.to_dict(steps=True)))
        return 0
    print(f'frames {report.frames}, compared {report.compared}')
    for reason, n in sorted(report.skipped.items()):
        print(f'  skipped {n}: {reason}')
    print(f'mean |delta steer|          {report.mean_abs_steer_diff:.4f}')
    print(f'mean |delta throttle_brake| {report.mean_abs_throttle_brake_diff:.4f}')
    print(f'agreement rate              {report.agreement_rate:.3f} (|d steer| <= '
          f'{report.steer_tol:g} and |d throttle_brake| <= {report.throttle_brake_tol:g})')
    return 0


# --------------------------------------------------------------------------------------------
# play


def _publisher_qos(recorded: tuple[bool, bool] | None) -> QoSProfile:
    """
    Choose a publisher QoS that every subscriber of the original topic can match.

    Reliable matches reliable and best-effort subscriptions; transient-local is kept where the
    recording publisher offered it (latched waypoints) or where the bag does not say.
    """
    transient_local = recorded is None or recorded[1]
    return QoSProfile(
        depth=10, reliability=ReliabilityPolicy.RELIABLE,
        durability=(DurabilityPolicy.TRANSIENT_LOCAL if transient_local
                    else DurabilityPolicy.VOLATILE))


class BagPlayer(Node):
    """Publishes a bag's messages with their recorded timing, scaled by ``rate``."""

    def __init__(self, reader: BagReader, topics: list[str] | None, rate: float,
                 clock: bool, duration_s: float = 0.0, **kwargs) -> None:
        super().__init__('av_td3_bag_player', **kwargs)
        self._reader = reader
        self._rate = rate
        self._duration_ns = int(duration_s * 1e9)
        have = reader.topics()
        self.topics = topics or sorted(have)
        reader.require(dict.fromkeys(self.topics))
        self._topic_publishers = {}
        self._classes = {}
        for topic in self.topics:
            self._classes[topic] = message_class(have[topic])
            self._topic_publishers[topic] = self.create_publisher(
                self._classes[topic], topic, _publisher_qos(reader.offered_qos(topic)))
        self._clock = None
        if clock:
            from rosgraph_msgs.msg import Clock
            self._clock = (Clock, self.create_publisher(Clock, CLOCK_TOPIC, 10))
        self.published = dict.fromkeys(self.topics, 0)

    def wait_for_subscribers(self, timeout_s: float) -> bool:
        """Wait until every topic has a subscriber (so nothing is lost to discovery)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if all(p.get_subscription_count() > 0 for p in self._topic_publishers.values()):
                return True
            time.sleep(0.05)
        return False

    def play(self) -> None:
        start_wall = time.monotonic()
        start_bag = None
        for item in self._reader.messages(self.topics):
            if start_bag is None:
                start_bag = item.timestamp_ns
            if self._duration_ns and item.timestamp_ns - start_bag > self._duration_ns:
                break
            delay = start_wall + (item.timestamp_ns - start_bag) / 1e9 / self._rate
            wait = delay - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            if self._clock is not None:
                cls, publisher = self._clock
                clock = cls()
                clock.clock.sec, clock.clock.nanosec = divmod(item.timestamp_ns, 10**9)
                publisher.publish(clock)
            self._topic_publishers[item.topic].publish(
                to_ros_message(item.message, self._classes[item.topic]))
            self.published[item.topic] += 1


def cmd_play(args: argparse.Namespace, ros_args: list[str]) -> int:
    rclpy.init(args=ros_args)
    player = None
    try:
        with BagReader(args.bag, args.distro) as reader:
            player = BagPlayer(reader, args.topics, args.rate, args.clock, args.duration)
            if args.wait_for_subscribers > 0 and not player.wait_for_subscribers(
                    args.wait_for_subscribers):
                player.get_logger().warning(
                    f'not every topic has a subscriber after {args.wait_for_subscribers} s; '
                    'playing anyway')
            began = time.monotonic()
            player.play()
            # Let reliable writers hand over the last samples before the process exits.
            time.sleep(args.linger)
            print(json.dumps({'published': player.published,
                              'wall_s': round(time.monotonic() - began, 3)}))
    finally:
        if player is not None:
            player.destroy_node()
        rclpy.try_shutdown()
    return 0


# --------------------------------------------------------------------------------------------
# record


class BagRecorder(Node):
    """Subscribes to topics as serialised messages and writes them as they arrive."""

    def __init__(self, writer: BagWriter, topics: list[str] | None, **kwargs) -> None:
        super().__init__('av_td3_bag_recorder', **kwargs)
        self._writer = writer
        self._wanted = topics
        self._topic_subscriptions = {}
        self.discover()

    def subscribe(self, topic: str, msgtype: str, *, reliable: bool = True,
                  transient_local: bool = False) -> None:
        """
        Record ``topic`` from now on, whether or not it has a publisher yet.

        Subscribing before the publishers start is how nothing gets lost at the start (the
        first frame of a synchronous simulator); the QoS is what the bag records as offered.
        """
        cls = message_class(msgtype)
        self._writer.add_topic(topic, msgtype, reliable=reliable,
                               transient_local=transient_local)
        qos = QoSProfile(
            depth=100,
            reliability=(ReliabilityPolicy.RELIABLE if reliable
                         else ReliabilityPolicy.BEST_EFFORT),
            durability=(DurabilityPolicy.TRANSIENT_LOCAL if transient_local
                        else DurabilityPolicy.VOLATILE))
        self._topic_subscriptions[topic] = self.create_subscription(
            cls, topic, functools.partial(self._on_message, topic), qos, raw=True)
        self.get_logger().info(f'recording {topic} ({msgtype})')

    def discover(self) -> list[str]:
        """Subscribe to wanted topics that have appeared in the graph; return the missing."""
        types = dict(self.get_topic_names_and_types())
        wanted = self._wanted if self._wanted is not None else sorted(types)
        for topic in wanted:
            if topic in self._topic_subscriptions or topic not in types:
                continue
            infos = self.get_publishers_info_by_topic(topic)
            if not infos:
                continue
            try:
                self.subscribe(
                    topic, types[topic][0],
                    reliable=all(i.qos_profile.reliability == ReliabilityPolicy.RELIABLE
                                 for i in infos),
                    transient_local=all(
                        i.qos_profile.durability == DurabilityPolicy.TRANSIENT_LOCAL
                        for i in infos))
            except BagError as err:
                self.get_logger().error(f'not recording {topic}: {err}')
                self._topic_subscriptions[topic] = None
        return [t for t in wanted if t not in self._topic_subscriptions]

    def _on_message(self, topic: str, data: bytes) -> None:
        self._writer.write(topic, data, self.get_clock().now().nanoseconds)


def cmd_record(args: argparse.Namespace, ros_args: list[str]) -> int:
    rclpy.init(args=ros_args)
    recorder = None
    try:
        with BagWriter(args.bag, args.storage) as writer:
            recorder = BagRecorder(writer, None if args.all else args.topics)
            executor = SingleThreadedExecutor()
            executor.add_node(recorder)
            began = time.monotonic()
            next_discovery = began + 0.5
            try:
                while rclpy.ok() and (args.duration <= 0
                                      or time.monotonic() - began < args.duration):
                    executor.spin_once(timeout_sec=0.1)
                    if time.monotonic() >= next_discovery:
                        recorder.discover()
                        next_discovery = time.monotonic() + 0.5
            except KeyboardInterrupt:
                pass
            print(json.dumps({'bag': str(writer.path), 'recorded': writer.counts}))
    finally:
        if recorder is not None:
            recorder.destroy_node()
        rclpy.try_shutdown()
    return 0


# --------------------------------------------------------------------------------------------
# command line


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f'must be >= 1, got {text}')
    return value


def _positive(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f'must be > 0, got {text}')
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog='bag_tool', description='Inspect, learn from, replay and play rosbag2 bags.')
    sub = parser.add_subparsers(dest='command', required=True)

    def add_bag(p: argparse.ArgumentParser) -> None:
        p.add_argument('bag', help='bag directory (metadata.yaml) or a .db3 / .mcap file')
        p.add_argument('--distro', choices=known_distros(), default=None,
                       help='standard types for messages the bag does not define '
                            '(default: the distro the bag was recorded with)')

    info = sub.add_parser('info', help='topics, types, counts, duration')
    add_bag(info)
    info.add_argument('--json', action='store_true', help='print JSON')

    def add_raw_topics(p: argparse.ArgumentParser) -> None:
        defaults = RawTopics()
        for name in ('image', 'odometry', 'waypoints', 'control', 'feedback'):
            p.add_argument(f'--{name}-topic', default=getattr(defaults, name),
                           help=f'{name} topic (default {getattr(defaults, name)})')

    train = sub.add_parser('train', help='offline TD3(+BC) from a bag; writes a v1 checkpoint')
    add_bag(train)
    train.add_argument('--config', default=None,
                       help='TD3 config YAML (default: the DESIGN defaults)')
    train.add_argument('--out', required=True, help='checkpoint file to write (.pth)')
    train.add_argument('--updates', type=_positive_int, required=True,
                       help='TD3 updates to run')
    train.add_argument('--bc-alpha', type=float, default=2.5,
                       help='TD3+BC alpha (Fujimoto & Gu 2021); 0 = plain TD3 (default 2.5)')
    train.add_argument('--seed', type=int, default=None, help='override the config seed')
    train.add_argument('--source', choices=SOURCES, default='auto',
                       help='transitions topic or raw drive topics (auto: transitions if present)')
    train.add_argument('--transitions-topic', default=TRANSITIONS_TOPIC)
    add_raw_topics(train)

    replay = sub.add_parser('replay', help='compare a policy with the recorded controls')
    add_bag(replay)
    replay.add_argument('--checkpoint', required=True, help='v1/legacy checkpoint or export')
    replay.add_argument('--json', action='store_true', help='print JSON with per-step actions')
    replay.add_argument('--steer-tol', type=float, default=0.1,
                        help='agreement tolerance on steer (default 0.1)')
    replay.add_argument('--tb-tol', type=float, default=0.2,
                        help='agreement tolerance on throttle_brake (default 0.2)')
    add_raw_topics(replay)

    play = sub.add_parser('play', help="publish a bag's messages with their original timing")
    add_bag(play)
    play.add_argument('--rate', type=_positive, default=1.0,
                      help='time scale: 2 plays twice as fast (default 1)')
    play.add_argument('--topics', nargs='+', default=None, help='only these topics')
    play.add_argument('--duration', type=float, default=0.0, metavar='S',
                      help='play only the first S seconds of bag time (default: all)')
    play.add_argument('--clock', action='store_true',
                      help=f'also publish the bag time on {CLOCK_TOPIC} (for use_sim_time)')
    play.add_argument('--wait-for-subscribers', type=float, default=0.0, metavar='S',
                      help='wait up to S seconds until every topic has a subscriber')
    play.add_argument('--linger', type=float, default=0.5, metavar='S',
                      help='seconds to stay up after the last message (default 0.5)')

    record = sub.add_parser('record', help='record live topics into a bag')
    record.add_argument('bag', help='bag directory to create')
    which = record.add_mutually_exclusive_group(required=True)
    which.add_argument('--topics', nargs='+', help='topics to record')
    which.add_argument('--all', action='store_true', help='every topic in the graph')
    record.add_argument('--storage', choices=STORAGES, default='mcap')
    record.add_argument('--duration', type=float, default=0.0, metavar='S',
                        help='stop after S seconds (default: until Ctrl-C)')
    return parser


def main(args: list[str] | None = None) -> int:
    argv = sys.argv[1:] if args is None else list(args)
    ros_args = ['bag_tool', *argv]
    options = build_parser().parse_args(remove_ros_args(ros_args)[1:])
    try:
        if options.command == 'info':
            return cmd_info(options)
        if options.command == 'train':
            return cmd_train(options)
        if options.command == 'replay':
            return cmd_replay(options)
        if options.command == 'play':
            return cmd_play(options, ros_args)
        return cmd_record(options, ros_args)
    except BagError as err:
        print(f'bag_tool {options.command}: {err}', file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == '__main__':
    sys.exit(main())
