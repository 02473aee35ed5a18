"""
Bags for learning and testing policies without the ros2 CLI (DESIGN §9).

    bag_tool info BAG [--json]
    bag_tool play BAG [--rate R] [--topics T ...] [--clock]
    bag_tool record BAG (--topics T ... | --all) [--storage mcap|sqlite3] [--duration S]

``play`` publishes a bag's messages into the live graph with their original timing (x rate), so
the policy node or the trainer runs from a bag exactly as from a simulator; ``record`` is
``ros2 bag record`` for ROS 2 installs that lack it. Both decode and encode with the rosbags
typestore of ``av_td3_ros.bags`` and talk to DDS through rclpy.
"""

from __future__ import annotations

import argparse
import array
import functools
import importlib
import json
import sys
import time

from av_td3_ros.bags import BagError, BagReader, BagWriter, known_distros, STORAGES
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
                 clock: bool) -> None:
        super().__init__('av_td3_bag_player')
        self._reader = reader
        self._rate = rate
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
            player = BagPlayer(reader, args.topics, args.rate, args.clock)
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

    def __init__(self, writer: BagWriter, topics: list[str] | None) -> None:
        super().__init__('av_td3_bag_recorder')
        self._writer = writer
        self._wanted = topics
        self._topic_subscriptions = {}
        self.discover()

    def discover(self) -> list[str]:
        """Subscribe to wanted topics that have appeared in the graph; return the missing."""
        types = dict(self.get_topic_names_and_types())
        wanted = self._wanted if self._wanted is not None else sorted(types)
        for topic in wanted:
            if topic in self._topic_subscriptions or topic not in types:
                continue
            msgtype = types[topic][0]
            infos = self.get_publishers_info_by_topic(topic)
            if not infos:
                continue
            reliable = all(i.qos_profile.reliability == ReliabilityPolicy.RELIABLE
                           for i in infos)
            latched = all(i.qos_profile.durability == DurabilityPolicy.TRANSIENT_LOCAL
                          for i in infos)
            try:
                self._writer.add_topic(topic, msgtype, reliable=reliable,
                                       transient_local=latched)
                cls = message_class(msgtype)
            except BagError as err:
                self.get_logger().error(f'not recording {topic}: {err}')
                self._topic_subscriptions[topic] = None
                continue
            qos = QoSProfile(
                depth=100,
                reliability=(ReliabilityPolicy.RELIABLE if reliable
                             else ReliabilityPolicy.BEST_EFFORT),
                durability=(DurabilityPolicy.TRANSIENT_LOCAL if latched
                            else DurabilityPolicy.VOLATILE))
            self._topic_subscriptions[topic] = self.create_subscription(
                cls, topic, functools.partial(self._on_message, topic), qos, raw=True)
            self.get_logger().info(f'recording {topic} ({msgtype})')
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

    play = sub.add_parser('play', help="publish a bag's messages with their original timing")
    add_bag(play)
    play.add_argument('--rate', type=_positive, default=1.0,
                      help='time scale: 2 plays twice as fast (default 1)')
    play.add_argument('--topics', nargs='+', default=None, help='only these topics')
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
