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
import contextlib
from dataclasses import dataclass
import functools
from pathlib import Path
import threading

from ament_index_python.packages import get_package_share_directory, PackageNotFoundError
from rosbags.highlevel import AnyReader, AnyReaderError
from rosbags.interfaces import (
    Qos, QosDurability, QosHistory, QosLiveliness, QosReliability, QosTime)
from rosbags.rosbag2 import Reader as Rosbag2Reader, StoragePlugin, Writer, WriterError
from rosbags.typesys import get_types_from_msg, get_typestore, Stores
from rosbags.typesys.store import Typestore
import yaml

INTERFACES_PACKAGE = 'av_td3_interfaces'
TRANSITIONS_TOPIC = '/av_td3/transitions'
TRANSITION_TYPE = 'av_td3_interfaces/msg/Transition'
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
    candidates.append(Path(__file__).resolve().parents[2] / INTERFACES_PACKAGE / 'msg')
    for candidate in candidates:
        if any(candidate.glob('*.msg')):
            return candidate
    raise BagError(
        f'cannot find the {INTERFACES_PACKAGE} .msg files (looked in '
        f'{", ".join(str(c) for c in candidates)}); source the workspace (install/setup.bash)')


@functools.lru_cache(maxsize=1)
def _interface_fielddefs() -> tuple[tuple[str, object], ...]:
    """Parse the interface ``.msg`` files once (an immutable snapshot, copied per typestore)."""
    types: dict = {}
    for path in sorted(interfaces_msg_dir().glob('*.msg')):
        types.update(get_types_from_msg(
            path.read_text(encoding='utf-8'), f'{INTERFACES_PACKAGE}/msg/{path.stem}'))
    return tuple(types.items())


def project_typestore(distro: str | None = DEFAULT_DISTRO) -> Typestore:
    """
    Return a fresh typestore: a distro's standard ROS 2 types plus ``av_td3_interfaces``.

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
    A rosbag2 writer (sqlite3 or mcap) for serialised CDR messages, safe to call from any thread.

    Messages are written as CDR bytes, so a node can hand over what
    ``rclpy.serialization.serialize_message`` returns and a tool can hand over rosbags
    messages (``write_message``). ``metadata.yaml`` is written by ``close()``: close the writer
    on shutdown, or the bag is left without it (sqlite3 keeps nothing, mcap keeps its chunks).
    """

    def __init__(self, path: str | Path, storage: str = 'mcap',
                 typestore: Typestore | None = None) -> None:
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
        self._lock = threading.Lock()
        self._connections: dict = {}
        self.counts: dict[str, int] = {}
        try:
            self._writer.open()
        except (WriterError, OSError) as err:
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
            self._connections[topic] = self._writer.add_connection(
                topic, msgtype, typestore=self.typestore,
                offered_qos_profiles=[_qos(reliable, transient_local)])
            self.counts[topic] = 0

    def write(self, topic: str, data: bytes, timestamp_ns: int) -> None:
        """Write one serialised (CDR) message received at ``timestamp_ns``."""
        with self._lock:
            self._check_open()
            connection = self._connections.get(topic)
            if connection is None:
                raise BagError(f'topic {topic} was not added to bag {self.path}')
            self._writer.write(connection, int(timestamp_ns), data)
            self.counts[topic] += 1

    def write_message(self, topic: str, message: object, timestamp_ns: int) -> None:
        """Serialise a rosbags message with this writer's typestore and write it."""
        connection = self._connections.get(topic)
        if connection is None:
            raise BagError(f'topic {topic} was not added to bag {self.path}')
        data = self.typestore.serialize_cdr(message, connection.msgtype)
        self.write(topic, bytes(data), timestamp_ns)

    @property
    def is_open(self) -> bool:
        return self._open

    def close(self) -> None:
        """Finish the storage file and write ``metadata.yaml``; idempotent."""
        with self._lock:
            if self._open:
                self._open = False
                self._writer.close()

    def _check_open(self) -> None:
        if not self._open:
            raise BagError(f'bag {self.path} is closed')

    def __enter__(self) -> BagWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class TransitionBagWriter(BagWriter):
    """The trainer's ``record_bag``: every Transition it receives, as ``ros2 bag record`` would."""

    def __init__(self, path: str | Path, storage: str = 'mcap',
                 topic: str = TRANSITIONS_TOPIC) -> None:
        super().__init__(path, storage)
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

    def open(self) -> BagReader:
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

    def __enter__(self) -> BagReader:
        return self.open()

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
