"""
Rosbag2 files without rosbag2 (DESIGN §9), through the pure-Python ``rosbags`` library.

ROS 2 from PyPI wheels has no ``ros2 bag``, so this module is how the project reads and writes
bags: a typestore with the standard types of any distro plus ``av_td3_interfaces`` registered
from the package's own ``.msg`` files (so the type hashes equal the ones rosidl generates), a
thread-safe writer for sqlite3 or mcap bags, and a reader that turns undecodable data into one
clear error. No rclpy here: the trainer node, ``bag_tool`` and the tests build on these
functions.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
import contextlib
from dataclasses import dataclass
import functools
from pathlib import Path
import sqlite3
import threading
import time

from ament_index_python.packages import get_package_share_directory, PackageNotFoundError
from av_td3_ros.driving.actor_core import (
    ActorCore, BRAKE_ACTION, Feedback, OdometryBuffer, PolicyLike, Pose, pose_from_odometry,
    route_from_points, StepResult, TransitionData)
from av_td3_ros.driving.observation import ObservationError, ObservationSpec
from av_td3_ros.ros.common import TRANSITIONS, VehicleTopics
import numpy as np
from rosbags.highlevel import AnyReader, AnyReaderError
from rosbags.interfaces import (
    Qos, QosDurability, QosHistory, QosLiveliness, QosReliability, QosTime)
from rosbags.rosbag2 import Reader as Rosbag2Reader, StoragePlugin, Writer, WriterError
from rosbags.typesys import get_types_from_msg, get_typestore, Stores
from rosbags.typesys.store import Typestore
import yaml

INTERFACES_PACKAGE = 'av_td3_interfaces'
TRANSITIONS_TOPIC = TRANSITIONS
TRANSITION_TYPE = 'av_td3_interfaces/msg/Transition'
IMAGE_TYPE = 'sensor_msgs/msg/Image'
ODOMETRY_TYPE = 'nav_msgs/msg/Odometry'
PATH_TYPE = 'nav_msgs/msg/Path'
FEEDBACK_TYPE = 'av_td3_interfaces/msg/StepFeedback'
CONTROL_TYPES = ('av_td3_interfaces/msg/VehicleControl', 'carla_msgs/msg/CarlaEgoVehicleControl')
# DESIGN §4 gives its fields; registering them lets bags from CARLA setups without embedded
# definitions (Humble) decode. A bag's own definition, when it has one, takes precedence.
CARLA_CONTROL_MSG = """std_msgs/Header header
float32 throttle
float32 steer
float32 brake
bool hand_brake
bool reverse
int32 gear
bool manual_gear_shift
"""
STORAGES = ('mcap', 'sqlite3')
# The runtime distro of the PyPI wheels; bags that carry their own definitions do not need it.
DEFAULT_DISTRO = 'kilted'
# A bag without embedded definitions and without a recorded distro predates Iron.
UNDEFINED_DISTRO = 'humble'
_STORAGE_PLUGINS = {'mcap': StoragePlugin.MCAP, 'sqlite3': StoragePlugin.SQLITE3}
_DISTRO_STORES = {
    store.value.removeprefix('ros2_'): store for store in Stores
    if store.value.startswith('ros2_')}


class BagError(Exception):
    """A bag that cannot be used as asked; the message says why, in one line."""


# --------------------------------------------------------------------------------------------
# Types


def interfaces_msg_dir() -> Path:
    """
    Find the ``av_td3_interfaces/msg`` directory with the ``.msg`` files.

    The installed share directory comes first (what is deployed), then the source tree next to
    this package (a checkout used without ``colcon build``).
    """
    candidates = []
    with contextlib.suppress(PackageNotFoundError, ValueError, LookupError):
        candidates.append(Path(get_package_share_directory(INTERFACES_PACKAGE)) / 'msg')
    candidates.append(Path(__file__).resolve().parents[3] / INTERFACES_PACKAGE / 'msg')
    for candidate in candidates:
        if any(candidate.glob('*.msg')):
            return candidate
    raise BagError(
        f'cannot find the {INTERFACES_PACKAGE} .msg files (looked in '
        f'{", ".join(str(c) for c in candidates)}); source the workspace (install/setup.bash)')


@functools.lru_cache(maxsize=1)
def _interface_fielddefs() -> tuple[tuple[str, object], ...]:
    """Parse the interface ``.msg`` files once (an immutable snapshot, copied per typestore)."""
    types: dict = get_types_from_msg(CARLA_CONTROL_MSG, CONTROL_TYPES[1])
    for path in sorted(interfaces_msg_dir().glob('*.msg')):
        types.update(get_types_from_msg(
            path.read_text(encoding='utf-8'), f'{INTERFACES_PACKAGE}/msg/{path.stem}'))
    return tuple(types.items())


def project_typestore(distro: str | None = DEFAULT_DISTRO) -> Typestore:
    """
    Return a fresh typestore: a distro's standard ROS 2 types plus ``av_td3_interfaces``.

    ``carla_msgs/msg/CarlaEgoVehicleControl`` is included too (the ``carla`` control output).

    ``distro`` is a ROS 2 distro name (``humble``, ``jazzy``, ``kilted``, ...); None or an
    unknown name (e.g. ``rosbags``, what the rosbags writer records) means the runtime default.
    """
    store = _DISTRO_STORES.get((distro or '').lower(), _DISTRO_STORES[DEFAULT_DISTRO])
    typestore = get_typestore(store)
    typestore.register(dict(_interface_fielddefs()))
    return typestore


def known_distros() -> list[str]:
    """ROS 2 distros whose standard types are known (for ``--distro`` choices)."""
    return sorted(_DISTRO_STORES)


def _qos(reliable: bool = True, transient_local: bool = False, depth: int = 10) -> Qos:
    zero = QosTime(0, 0)
    return Qos(
        history=QosHistory.KEEP_LAST, depth=depth,
        reliability=QosReliability.RELIABLE if reliable else QosReliability.BEST_EFFORT,
        durability=(QosDurability.TRANSIENT_LOCAL if transient_local
                    else QosDurability.VOLATILE),
        deadline=zero, lifespan=zero, liveliness=QosLiveliness.AUTOMATIC,
        liveliness_lease_duration=zero, avoid_ros_namespace_conventions=False)


# --------------------------------------------------------------------------------------------
# Writing


class BagWriter:
    """
    A rosbag2 writer (sqlite3 or mcap) for serialised CDR messages, callable from any thread.

    All storage work happens on one writer thread of its own (sqlite connections belong to the
    thread that made them, and a subscription callback should not wait for the disk). ``write``
    queues the message (blocking only when ``max_pending`` are queued) and reports a failed
    earlier write at the next call. Messages are CDR bytes, so a node hands over what
    ``rclpy.serialization.serialize_message`` returns; a tool hands over rosbags messages
    (``write_message``). ``metadata.yaml`` is written by ``close()``: close the writer on
    shutdown, or the bag is left without it. A process that dies without closing loses an
    mcap file (its summary is written last); sqlite3 commits every ``flush_period_s``, so the
    ``.db3`` file keeps what was written until then and reads as a bare storage file.
    """

    def __init__(self, path: str | Path, storage: str = 'mcap',
                 typestore: Typestore | None = None, max_pending: int = 1024,
                 flush_period_s: float = 5.0) -> None:
        if storage not in _STORAGE_PLUGINS:
            raise BagError(f'bag storage must be one of {STORAGES}, got {storage!r}')
        self.path = Path(path)
        self.storage = storage
        self.typestore = typestore or project_typestore()
        if self.path.exists():
            raise BagError(f'{self.path} exists already; a bag is never overwritten')
        if not self.path.parent.is_dir():
            raise BagError(f'cannot create bag {self.path}: {self.path.parent} is not a directory')
        self._writer = Writer(self.path, version=Writer.VERSION_LATEST,
                              storage_plugin=_STORAGE_PLUGINS[storage])
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix='bag-writer')
        self._pending = threading.BoundedSemaphore(max_pending)
        self._lock = threading.Lock()
        self._connections: dict = {}
        self._failure: str | None = None
        self._flush_period_s = flush_period_s
        self._flushed_at = time.monotonic()
        self.counts: dict[str, int] = {}
        try:
            self._thread.submit(self._writer.open).result()
        except (WriterError, OSError) as err:
            self._thread.shutdown()
            raise BagError(f'cannot create bag {self.path}: {err}') from None
        self._open = True

    def add_topic(self, topic: str, msgtype: str, *, reliable: bool = True,
                  transient_local: bool = False) -> None:
        """Declare a topic, with the QoS its publisher offers (``ros2 bag play`` reuses it)."""
        with self._lock:
            self._check_open()
            if topic in self._connections:
                if self._connections[topic].msgtype != msgtype:
                    raise BagError(
                        f'topic {topic} is already in the bag as '
                        f'{self._connections[topic].msgtype}, not {msgtype}')
                return
            if msgtype not in self.typestore.fielddefs:
                raise BagError(
                    f'unknown message type {msgtype} for topic {topic}: not a standard ROS 2 '
                    f'type nor one of {INTERFACES_PACKAGE}')
            self._connections[topic] = self._thread.submit(
                self._writer.add_connection, topic, msgtype, typestore=self.typestore,
                offered_qos_profiles=[_qos(reliable, transient_local)]).result()
            self.counts[topic] = 0

    def write(self, topic: str, data: bytes, timestamp_ns: int) -> None:
        """Queue one serialised (CDR) message received at ``timestamp_ns``."""
        with self._lock:
            self._check_open()
            connection = self._connections.get(topic)
            if connection is None:
                raise BagError(f'topic {topic} was not added to bag {self.path}')
        self._pending.acquire()
        try:
            self._thread.submit(self._write, topic, connection, int(timestamp_ns), bytes(data))
        except RuntimeError:  # closed meanwhile
            self._pending.release()
            raise BagError(f'bag {self.path} is closed') from None

    def _write(self, topic: str, connection: object, timestamp_ns: int, data: bytes) -> None:
        try:
            if self._failure is None:
                self._writer.write(connection, timestamp_ns, data)
                self.counts[topic] += 1
                if time.monotonic() - self._flushed_at >= self._flush_period_s:
                    self._commit()   # what a crash would otherwise lose
        except Exception as err:  # disk full, I/O error: reported by the next call
            self._failure = f'writing to bag {self.path} failed: {err}'
        finally:
            self._pending.release()

    def write_message(self, topic: str, message: object, timestamp_ns: int) -> None:
        """Serialise a rosbags message with this writer's typestore and queue it."""
        connection = self._connections.get(topic)
        if connection is None:
            raise BagError(f'topic {topic} was not added to bag {self.path}')
        data = self.typestore.serialize_cdr(message, connection.msgtype)
        self.write(topic, bytes(data), timestamp_ns)

    def flush(self) -> None:
        """Wait until every queued message is written (and, for sqlite3, committed)."""
        with self._lock:
            self._check_open()
        self._thread.submit(self._commit).result()
        if self._failure is not None:
            raise BagError(self._failure)

    def _commit(self) -> None:
        if self.storage == 'sqlite3' and self._failure is None:
            self._writer.storage.conn.commit()
        self._flushed_at = time.monotonic()

    @property
    def is_open(self) -> bool:
        return self._open

    def close(self) -> None:
        """Write what is queued, finish the storage file and ``metadata.yaml``; idempotent."""
        with self._lock:
            if not self._open:
                return
            self._open = False
        try:
            self._thread.submit(self._writer.close).result()
        finally:
            self._thread.shutdown()
        if self._failure is not None:
            raise BagError(self._failure)

    def _check_open(self) -> None:
        if self._failure is not None:
            raise BagError(self._failure)
        if not self._open:
            raise BagError(f'bag {self.path} is closed')

    def __enter__(self) -> BagWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class TransitionBagWriter(BagWriter):
    """The trainer's ``record_bag``: every Transition it receives, as ``ros2 bag record`` would."""

    def __init__(self, path: str | Path, storage: str = 'mcap',
                 topic: str = TRANSITIONS_TOPIC, flush_period_s: float = 5.0) -> None:
        super().__init__(path, storage, flush_period_s=flush_period_s)
        self.topic = topic
        self.add_topic(topic, TRANSITION_TYPE)

    def write_transition(self, data: bytes, timestamp_ns: int) -> None:
        """Write one serialised ``av_td3_interfaces/msg/Transition``."""
        self.write(self.topic, data, timestamp_ns)


# --------------------------------------------------------------------------------------------
# Reading


@dataclass(frozen=True)
class TopicSummary:
    """One topic of a bag."""

    topic: str
    msgtype: str
    count: int


@dataclass(frozen=True)
class BagInfo:
    """What ``bag_tool info`` prints: topics, types, counts, time span."""

    path: str
    storage: str
    ros_distro: str
    message_count: int
    start_ns: int
    end_ns: int
    topics: tuple[TopicSummary, ...]

    @property
    def duration_s(self) -> float:
        return max(self.end_ns - self.start_ns, 0) / 1e9

    def to_dict(self) -> dict:
        return {
            'path': self.path, 'storage': self.storage, 'ros_distro': self.ros_distro,
            'message_count': self.message_count, 'start_ns': self.start_ns,
            'end_ns': self.end_ns, 'duration_s': self.duration_s,
            'topics': [{'topic': t.topic, 'type': t.msgtype, 'count': t.count}
                       for t in self.topics]}


@dataclass(frozen=True)
class BagMessage:
    """A decoded message with where it came from."""

    topic: str
    msgtype: str
    timestamp_ns: int   # when it was recorded (receive time for ros2 bag record)
    index: int          # position within its topic, from 0
    message: object     # a rosbags message dataclass


def _storage_of(path: Path) -> str:
    """Storage identifier of a bag directory (from metadata.yaml) or of a bare storage file."""
    if path.is_dir():
        try:
            meta = yaml.safe_load((path / 'metadata.yaml').read_text(encoding='utf-8'))
            return str(meta['rosbag2_bagfile_information']['storage_identifier'])
        except (OSError, yaml.YAMLError, KeyError, TypeError):
            return 'unknown'
    return {'.mcap': 'mcap', '.db3': 'sqlite3'}.get(path.suffix, 'unknown')


def _roll_back_hot_journal(db3: Path) -> None:
    """
    Undo the unfinished transaction of a writer that died (a ``-journal`` beside the file).

    rosbags opens sqlite files immutable, which would read the half-written pages as they are;
    opening the file once read-write makes sqlite restore the last committed state.
    """
    if not db3.with_name(db3.name + '-journal').exists():
        return
    try:
        connection = sqlite3.connect(db3)
        try:
            connection.execute('SELECT count(*) FROM sqlite_master').fetchone()
        finally:
            connection.close()
    except sqlite3.Error as err:
        raise BagError(f'{db3}: cannot recover the unfinished write: {err}') from None


class BagReader:
    """
    Read a rosbag2 bag (directory with ``metadata.yaml``, or a bare ``.db3`` / ``.mcap`` file).

    Types come from the definitions the bag carries (Iron and later record them); types the
    bag does not define come from the standard types of the distro it was recorded with
    (``distro`` overrides; a bag with neither is taken as Humble) plus ``av_td3_interfaces``.
    Use as a context manager. Every failure is a ``BagError`` naming the bag and the reason.
    """

    def __init__(self, path: str | Path, distro: str | None = None) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise BagError(f'{self.path}: no such bag')
        if self.path.suffix == '.bag':
            raise BagError(f'{self.path} is a ROS 1 bag; convert it with rosbags-convert first')
        self.storage = _storage_of(self.path)
        if self.storage == 'sqlite3' and self.path.is_file():
            _roll_back_hot_journal(self.path)
        self.ros_distro = distro or self._recorded_distro()
        self._reader = AnyReader(
            [self.path], default_typestore=project_typestore(self._fallback_distro()))
        self._open = False

    def _recorded_distro(self) -> str:
        try:
            with Rosbag2Reader(self.path) as reader:
                return reader.ros_distro or ''
        except Exception as err:  # any reader failure means a bad bag
            raise BagError(f'{self.path} is not a readable rosbag2 bag: {err}') from None

    def _fallback_distro(self) -> str:
        if self.ros_distro in _DISTRO_STORES:
            return self.ros_distro
        return DEFAULT_DISTRO if self.ros_distro else UNDEFINED_DISTRO

    def __enter__(self) -> BagReader:
        try:
            self._reader.open()
        except (AnyReaderError, OSError) as err:
            raise BagError(f'{self.path} is not a readable rosbag2 bag: {err}') from None
        # Bags mixing defined and undefined types: fill the gaps from the fallback store.
        fallback = project_typestore(self._fallback_distro()).fielddefs
        known = self._reader.typestore.fielddefs
        self._reader.typestore.register(
            {name: fields for name, fields in fallback.items() if name not in known})
        self._open = True
        return self

    def close(self) -> None:
        if self._open:
            self._open = False
            self._reader.close()

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def typestore(self) -> Typestore:
        return self._reader.typestore

    def topics(self) -> dict[str, str]:
        """Topic name -> message type."""
        return {c.topic: c.msgtype for c in self._reader.connections}

    def offered_qos(self, topic: str) -> tuple[bool, bool] | None:
        """
        Return (reliable, transient_local) as the recorded publishers offered them.

        None when the bag does not record QoS for the topic (e.g. a bare storage file).
        """
        profiles = [profile for c in self._reader.connections if c.topic == topic
                    for profile in getattr(c.ext, 'offered_qos_profiles', ())]
        if not profiles:
            return None
        return (all(p.reliability == QosReliability.RELIABLE for p in profiles),
                all(p.durability == QosDurability.TRANSIENT_LOCAL for p in profiles))

    def info(self) -> BagInfo:
        counts: dict[tuple[str, str], int] = {}
        for connection in self._reader.connections:
            key = (connection.topic, connection.msgtype)
            counts[key] = counts.get(key, 0) + connection.msgcount
        total = self._reader.message_count
        return BagInfo(
            path=str(self.path), storage=self.storage, ros_distro=self.ros_distro or '',
            message_count=total,
            start_ns=self._reader.start_time if total else 0,
            end_ns=self._reader.end_time - 1 if total else 0,  # rosbags: one past the last
            topics=tuple(TopicSummary(t, m, n) for (t, m), n in sorted(counts.items())))

    def require(self, topics: dict[str, str | Iterable[str] | None]) -> None:
        """
        Check that each topic is in the bag with one of the expected types.

        ``topics`` maps a topic to a type name, to accepted names, or to None (any type); a
        missing topic or a wrong type raises ``BagError`` that lists what the bag has instead.
        """
        have = self.topics()
        for topic, expected in topics.items():
            accepted = (set() if expected is None
                        else {expected} if isinstance(expected, str) else set(expected))
            wanted = f' ({" or ".join(sorted(accepted))})' if accepted else ''
            if topic not in have:
                listing = ', '.join(f'{t} ({m})' for t, m in sorted(have.items())) or 'nothing'
                raise BagError(f'{self.path} has no topic {topic}{wanted}; it has: {listing}')
            if accepted and have[topic] not in accepted:
                raise BagError(
                    f'{self.path}: topic {topic} is {have[topic]}, expected '
                    f'{" or ".join(sorted(accepted))}')

    def messages(self, topics: Iterable[str] | None = None) -> Iterator[BagMessage]:
        """
        Yield decoded messages in time order, of the given topics (all when None).

        A message that cannot be decoded (corrupt bytes, a definition that does not match)
        raises ``BagError`` naming the topic, the message's index and time.
        """
        if not self._open:
            raise BagError(f'bag {self.path} is not open')
        wanted = None if topics is None else set(topics)
        connections = [c for c in self._reader.connections
                       if wanted is None or c.topic in wanted]
        if not connections:
            return
        known = self._reader.typestore.fielddefs
        for connection in connections:
            if connection.msgtype not in known:
                raise BagError(
                    f'{self.path}: topic {connection.topic} has type {connection.msgtype}, '
                    'which the bag does not define and which is neither a standard ROS 2 '
                    f'type nor one of {INTERFACES_PACKAGE}')
        index: dict[str, int] = {}
        start = self._reader.start_time
        try:
            for connection, timestamp, raw in self._reader.messages(connections=connections):
                n = index.get(connection.topic, 0)
                index[connection.topic] = n + 1
                try:
                    message = self._reader.deserialize(raw, connection.msgtype)
                except Exception as err:  # any decode failure is corruption
                    raise BagError(
                        f'{self.path}: message {n} on {connection.topic} '
                        f'({connection.msgtype}) at {(timestamp - start) / 1e9:.3f} s cannot '
                        f'be decoded ({type(err).__name__}: {err}); the bag is corrupt or its '
                        'type definition does not match the data') from None
                yield BagMessage(connection.topic, connection.msgtype, timestamp, n, message)
        except BagError:
            raise
        except Exception as err:  # storage-level corruption
            raise BagError(f'{self.path}: cannot read messages: {err}') from None


def bag_info(path: str | Path, distro: str | None = None) -> BagInfo:
    """Summarise a bag without decoding its messages."""
    with BagReader(path, distro) as reader:
        return reader.info()


# --------------------------------------------------------------------------------------------
# Raw driving topics -> the actor's observation path


_DEFAULT = VehicleTopics()


@dataclass(frozen=True)
class RawTopics:
    """Topic names of a recorded drive (DESIGN §4 defaults; every one can be remapped)."""

    image: str = _DEFAULT.image
    odometry: str = _DEFAULT.odometry
    waypoints: str = _DEFAULT.waypoints
    control: str = _DEFAULT.control
    feedback: str = _DEFAULT.step_feedback

    def required(self, with_feedback: bool) -> dict[str, tuple[str, ...]]:
        """Topic -> accepted types, for ``BagReader.require``."""
        topics = {self.image: (IMAGE_TYPE,), self.odometry: (ODOMETRY_TYPE,),
                  self.waypoints: (PATH_TYPE,), self.control: CONTROL_TYPES}
        if with_feedback:
            topics[self.feedback] = (FEEDBACK_TYPE,)
        return topics


def stamp_ns(header: object) -> int:
    """Return a std_msgs/Header stamp in ns (the key pairing frames, poses and controls)."""
    return int(header.stamp.sec) * 1_000_000_000 + int(header.stamp.nanosec)


def control_action(message: object) -> np.ndarray:
    """Return the action [steer, throttle_brake] of a VehicleControl / CarlaEgoVehicleControl."""
    steer = float(np.clip(message.steer, -1.0, 1.0))
    throttle_brake = float(np.clip(float(message.throttle) - float(message.brake), -1.0, 1.0))
    return np.array([steer, throttle_brake], dtype=np.float32)


def _pose(message: object) -> Pose:
    pose, twist = message.pose.pose, message.twist.twist
    return pose_from_odometry(
        (pose.position.x, pose.position.y, pose.position.z),
        (pose.orientation.x, pose.orientation.y, pose.orientation.z, pose.orientation.w),
        (twist.linear.x, twist.linear.y, twist.linear.z))


def _feedback(message: object) -> Feedback:
    return Feedback(stamp=stamp_ns(message.header), episode_id=int(message.episode_id),
                    step=int(message.step), reward=float(message.reward),
                    terminated=bool(message.terminated), truncated=bool(message.truncated))


@dataclass
class FrameOutcome:
    """What the actor did with one recorded camera frame."""

    stamp: int
    result: StepResult | None       # None: a step feedback (not a frame) completed transitions
    recorded: np.ndarray | None     # the control recorded for this frame (None: none)
    transitions: list[TransitionData]


class RecordedDriver:
    """
    The driver who produced a bag, seen as the actor's policy: it returns the recorded control.

    Building transitions from raw topics runs the actor in train mode with this policy, so the
    transitions come from the very code the live actor uses, with the actions as executed.
    """

    def __init__(self, spec: ObservationSpec) -> None:
        self.spec = spec
        self.action: np.ndarray | None = None

    def act(self, image: np.ndarray, vector: np.ndarray) -> np.ndarray:
        return self.action if self.action is not None else BRAKE_ACTION.copy()


def run_actor_on_bag(reader: BagReader, core: ActorCore, topics: RawTopics = RawTopics(),
                     driver: RecordedDriver | None = None) -> Iterator[FrameOutcome]:
    """
    Feed a bag's camera, odometry, waypoints and step feedback through ``core``, frame by frame.

    Messages go in in recorded order, as they reached the live node. Poses are paired with
    images by stamp exactly as the policy node does (``OdometryBuffer.match``, which may look
    at the next pose); controls are matched by the camera stamp they answer. With ``driver``
    (train mode) the recorded control is the action taken, and a frame whose control was not
    recorded is withdrawn so that no transition claims an action nobody executed. Bad input
    raises ``BagError`` naming the message.
    """
    have = reader.topics()
    with_feedback = topics.feedback in have
    if core.train and not with_feedback:
        reader.require({topics.feedback: FEEDBACK_TYPE})  # raises: rewards need feedback
    reader.require(topics.required(with_feedback))
    poses: list[tuple[int, Pose]] = []
    controls: dict[int, np.ndarray] = {}
    for item in reader.messages([topics.odometry, topics.control]):
        try:
            if item.topic == topics.odometry:
                poses.append((stamp_ns(item.message.header), _pose(item.message)))
            else:
                controls[stamp_ns(item.message.header)] = control_action(item.message)
        except (ObservationError, ValueError) as err:
            raise BagError(f'{reader.path}: message {item.index} on {item.topic}: {err}') from None
    poses.sort(key=lambda entry: entry[0])
    odometry = OdometryBuffer()
    next_pose = 0
    wanted = [topics.image, topics.waypoints] + ([topics.feedback] if with_feedback else [])
    for item in reader.messages(wanted):
        message = item.message
        try:
            if item.topic == topics.waypoints:
                core.set_route(route_from_points(
                    [(p.pose.position.x, p.pose.position.y) for p in message.poses]))
                continue
            if item.topic == topics.feedback:
                transitions = core.add_feedback(_feedback(message))
                if transitions:
                    yield FrameOutcome(stamp_ns(message.header), None, None, transitions)
                continue
            stamp = stamp_ns(message.header)
            gray = core.frame_gray(message.data, int(message.width), int(message.height),
                                   message.encoding, int(message.step))
        except ObservationError as err:
            raise BagError(f'{reader.path}: message {item.index} on {item.topic}: {err}') from None
        while next_pose < len(poses) and (next_pose == 0 or poses[next_pose - 1][0] <= stamp):
            odometry.add(*poses[next_pose])
            next_pose += 1
        recorded = controls.get(stamp)
        if driver is not None:
            driver.action = recorded
        result = core.step(stamp, gray, odometry.match(stamp))
        if driver is not None and recorded is None:
            core.withdraw_action(stamp)
        yield FrameOutcome(stamp, result, recorded, result.transitions)


# --------------------------------------------------------------------------------------------
# Offline data and open-loop evaluation

SOURCES = ('auto', 'transitions', 'raw')


def resolve_source(reader: BagReader, source: str = 'auto',
                   transitions_topic: str = TRANSITIONS_TOPIC) -> str:
    """Pick ``transitions`` when the bag has the transitions topic (auto), else ``raw``."""
    if source not in SOURCES:
        raise BagError(f'source must be one of {SOURCES}, got {source!r}')
    if source == 'auto':
        return 'transitions' if transitions_topic in reader.topics() else 'raw'
    return source


def expected_transitions(reader: BagReader, source: str, topics: RawTopics = RawTopics(),
                         transitions_topic: str = TRANSITIONS_TOPIC) -> int:
    """Upper bound of the transitions a bag yields (to size a replay buffer)."""
    counts = {t.topic: t.count for t in reader.info().topics}
    return counts.get(transitions_topic if source == 'transitions' else topics.image, 0)


def _transition_data(message: object, spec: ObservationSpec) -> TransitionData:
    size = spec.image_size
    if (message.frame_height, message.frame_width) != (size, size):
        raise ValueError(f'frames are {message.frame_height}x{message.frame_width}, the '
                         f'config uses {size}x{size}')
    return TransitionData(
        stamp=stamp_ns(message.header), episode_id=int(message.episode_id),
        step=int(message.step), policy_version=int(message.policy_version),
        obs_frames=message.obs_frames, obs_vector=message.obs_vector, action=message.action,
        reward=float(message.reward), next_frame=message.next_frame,
        next_vector=message.next_vector, terminated=bool(message.terminated),
        truncated=bool(message.truncated))


def bag_transitions(reader: BagReader, spec: ObservationSpec, source: str = 'auto',
                    topics: RawTopics = RawTopics(),
                    transitions_topic: str = TRANSITIONS_TOPIC
                    ) -> Iterator[tuple[str, int, TransitionData]]:
    """
    Yield ``(stream_id, message_index, transition)`` from a bag of transitions or raw topics.

    Recorded Transition messages come as they are (stream_id = their actor_id). Raw topics
    go through the actor in train mode with the recorded controls as actions
    (``RecordedDriver``), so the stacks, vectors, rewards and episode ends are built exactly as
    the live actor builds them.
    """
    source = resolve_source(reader, source, transitions_topic)
    if source == 'transitions':
        reader.require({transitions_topic: TRANSITION_TYPE})
        for item in reader.messages([transitions_topic]):
            try:
                data = _transition_data(item.message, spec)
            except ValueError as err:
                raise BagError(f'{reader.path}: message {item.index} on {item.topic}: '
                               f'{err}') from None
            yield item.message.actor_id, item.index, data
        return
    core = ActorCore(spec, train=True, exploration_noise=0.0)
    driver = RecordedDriver(spec)
    core.set_policy(driver, version=0)
    stream = f'bag:{reader.path.name}'
    count = 0
    for outcome in run_actor_on_bag(reader, core, topics, driver):
        for transition in outcome.transitions:
            yield stream, count, transition
            count += 1


@dataclass(frozen=True)
class ReplayStep:
    """One compared frame: what the policy did and what was recorded."""

    stamp: int
    action: tuple[float, float]
    recorded: tuple[float, float]


@dataclass
class ReplayReport:
    """Open-loop comparison of a policy with a bag's recorded controls."""

    frames: int
    compared: int
    skipped: dict[str, int]
    mean_abs_steer_diff: float
    mean_abs_throttle_brake_diff: float
    agreement_rate: float
    steer_tol: float
    throttle_brake_tol: float
    steps: list[ReplayStep]

    def to_dict(self, steps: bool = True) -> dict:
        out = {k: getattr(self, k) for k in (
            'frames', 'compared', 'skipped', 'mean_abs_steer_diff',
            'mean_abs_throttle_brake_diff', 'agreement_rate', 'steer_tol',
            'throttle_brake_tol')}
        if steps:
            out['steps'] = [{'stamp': s.stamp, 'action': list(s.action),
                             'recorded': list(s.recorded)} for s in self.steps]
        return out


def replay_policy(reader: BagReader, policy: PolicyLike, topics: RawTopics = RawTopics(),
                  steer_tol: float = 0.1, throttle_brake_tol: float = 0.2) -> ReplayReport:
    """
    Run ``policy`` on a bag's camera + odometry + waypoints and compare with recorded controls.

    The frames go through the policy node's own path (``ActorCore`` in deploy mode). A frame
    counts as agreeing when |Δsteer| <= steer_tol and |Δthrottle_brake| <= throttle_brake_tol.
    Frames where the actor would brake (no route, no pose) or without a recorded control are
    counted in ``skipped`` by reason.
    """
    core = ActorCore(policy.spec, train=False)
    core.set_policy(policy, version=1)
    steps: list[ReplayStep] = []
    skipped: dict[str, int] = {}
    frames = 0
    for outcome in run_actor_on_bag(reader, core, topics):
        if outcome.result is None:
            continue
        frames += 1
        reason = outcome.result.brake_reason
        if reason is None and outcome.recorded is None:
            reason = 'no control recorded for this frame'
        if reason is not None:
            skipped[reason] = skipped.get(reason, 0) + 1
            continue
        steps.append(ReplayStep(outcome.stamp,
                                tuple(float(v) for v in outcome.result.action),
                                tuple(float(v) for v in outcome.recorded)))
    if not steps:
        raise BagError(f'{reader.path}: no frame could be compared ({frames} frames; skipped: '
                       f'{skipped or "none"})')
    diff = np.abs(np.array([s.action for s in steps]) - np.array([s.recorded for s in steps]))
    agree = (diff[:, 0] <= steer_tol) & (diff[:, 1] <= throttle_brake_tol)
    return ReplayReport(
        frames=frames, compared=len(steps), skipped=skipped,
        mean_abs_steer_diff=float(diff[:, 0].mean()),
        mean_abs_throttle_brake_diff=float(diff[:, 1].mean()),
        agreement_rate=float(agree.mean()), steer_tol=steer_tol,
        throttle_brake_tol=throttle_brake_tol, steps=steps)
