"""
What every node shares: topic names, QoS profiles, the parameter table, ``main()``.

- **Topic names** (DESIGN §4), for nodes, tools, launch files and tests. Per-vehicle topics live
  under the vehicle's ``role_name``, as carla-ros-bridge names its ego vehicles:
  ``/carla/<role_name>/...`` and ``/av_td3/<role_name>/step_feedback`` (the default role keeps
  ``/av_td3/step_feedback``). The learner's topics are shared by every actor, so N actors on any
  number of machines feed one trainer.
- **QoS profiles**: the few the graph uses, by what they are for.
- **Parameters**: a node lists its parameters once, in a :class:`ParameterTable` (default,
  description, range or allowed values); the table declares them with their descriptors and reads
  them back validated, and the YAML files and the tests use the same table.
- **Worker threads**: :func:`worker_result`, how a callback awaits a job on a worker thread
  without blocking the executor (loads, weight reviews).
- **main()**: :func:`run_node`, the one shape of every node's entry point (ros2/demos
  ``talker.py``: init, the node, spin until shutdown, destroy, shutdown).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
import concurrent.futures
from dataclasses import dataclass
import math
import re
import sys
from typing import Any, NamedTuple

from av_td3_ros.ros.allocator import keep_large_buffers
from av_td3_ros.ros.executor import spin_until_shutdown
from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor
import rclpy
from rclpy.exceptions import ParameterException, ParameterUninitializedException
from rclpy.executors import Executor, ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.task import Future

DEFAULT_ROLE = 'ego_vehicle'
TRANSITIONS = '/av_td3/transitions'
POLICY_WEIGHTS = '/av_td3/policy_weights'
TRAINER_STATS = '/av_td3_trainer/stats'
DIAGNOSTICS = '/diagnostics'

# a ROS name token (what carla-ros-bridge accepts as a role name in a topic)
_ROLE = re.compile(r'[A-Za-z][A-Za-z0-9_]*')


def check_role_name(role_name: str) -> str:
    """Return ``role_name`` if it can stand in a topic name; raise ValueError otherwise."""
    if not _ROLE.fullmatch(role_name):
        raise ValueError(f'role_name must be a letter followed by letters, digits or '
                         f'underscores (it names topics), got {role_name!r}')
    return role_name


@dataclass(frozen=True)
class VehicleTopics:
    """The topics and frames of one vehicle (sensors, control, episode feedback)."""

    role_name: str = DEFAULT_ROLE

    def __post_init__(self) -> None:
        check_role_name(self.role_name)

    @property
    def prefix(self) -> str:
        return f'/carla/{self.role_name}'

    @property
    def image(self) -> str:
        return f'{self.prefix}/rgb_front/image'

    @property
    def camera_info(self) -> str:
        return f'{self.prefix}/rgb_front/camera_info'

    @property
    def odometry(self) -> str:
        return f'{self.prefix}/odometry'

    @property
    def speedometer(self) -> str:
        return f'{self.prefix}/speedometer'

    @property
    def waypoints(self) -> str:
        return f'{self.prefix}/waypoints'

    @property
    def control(self) -> str:
        return f'{self.prefix}/vehicle_control_cmd'

    @property
    def collision(self) -> str:
        return f'{self.prefix}/collision'

    @property
    def lane_invasion(self) -> str:
        return f'{self.prefix}/lane_invasion'

    @property
    def step_feedback(self) -> str:
        if self.role_name == DEFAULT_ROLE:
            return '/av_td3/step_feedback'
        return f'/av_td3/{self.role_name}/step_feedback'

    @property
    def vehicle_frame(self) -> str:
        """Frame id of the vehicle (odometry child frame), as the bridge names it."""
        return self.role_name

    @property
    def camera_frame(self) -> str:
        return f'{self.role_name}/rgb_front'


# -- QoS ----------------------------------------------------------------------------------------

# commands, odometry, diagnostics, stats: reliable, a short queue
RELIABLE_QOS = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
# records that must all arrive (transitions, step feedback): reliable with room for bursts
DEEP_QOS = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
# state whose latest value a late joiner needs (the route, the policy weights): transient local
LATCHED_QOS = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                         durability=DurabilityPolicy.TRANSIENT_LOCAL)
# the newest value only, from any publisher (best effort matches reliable ones too)
LATEST_QOS = QoSProfile(depth=1, reliability=ReliabilityPolicy.BEST_EFFORT)


def reliable_qos(depth: int) -> QoSProfile:
    """Reliable keep-last ``depth`` (a subscription whose depth is a parameter)."""
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=depth,
                      reliability=ReliabilityPolicy.RELIABLE)


def camera_qos(reliable: bool, depth: int) -> QoSProfile:
    """
    Keep-last ``depth`` camera QoS, reliable or best effort (``image_qos_*`` parameters).

    DESIGN §4 asks for reliable keep-last 1 with the LARGE_DATA transport; best effort is
    ``qos_profile_sensor_data``'s reliability, what CARLA's own ROS 2 camera and most camera
    drivers publish.
    """
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=depth,
                      reliability=(ReliabilityPolicy.RELIABLE if reliable
                                   else ReliabilityPolicy.BEST_EFFORT))


# -- parameters ---------------------------------------------------------------------------------

STRING_ARRAY = 'string_array'      # the default of a statically typed, empty string array
INT64_MIN, INT64_MAX = -2**63, 2**63 - 1


class Param(NamedTuple):
    """
    One parameter: its default, what it does, and its limits.

    ``limits`` is ``(lo, hi)`` for a number (``None`` for an open end), the allowed strings for
    a choice, or ``None``.
    """

    default: Any
    description: str
    limits: tuple | None = None

    @property
    def choices(self) -> tuple[str, ...]:
        limits = self.limits
        return limits if limits and isinstance(limits[0], str) else ()

    @property
    def listed_choices(self) -> str:
        """List the allowed strings for a message (the empty one as ``''``)."""
        return ', '.join(choice or "''" for choice in self.choices)

    @property
    def bounds(self) -> tuple[Any, Any] | None:
        return None if self.choices or self.limits is None else self.limits


class ParameterTable(Mapping[str, Param]):
    """
    A node's parameters, listed once: declared with descriptors, read back validated.

    ``read_only`` parameters are read once at start (rclpy then refuses a later set with a
    clear reason); the others are re-read, e.g. on every lifecycle configure.
    """

    def __init__(self, params: Mapping[str, Param | tuple], *, read_only: bool = False) -> None:
        self._params = {name: Param(*spec) for name, spec in params.items()}
        self.read_only = read_only

    def __getitem__(self, name: str) -> Param:
        return self._params[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._params)

    def __len__(self) -> int:
        return len(self._params)

    def defaults(self) -> dict[str, Any]:
        """Name -> default value (an unset string array is ``[]``)."""
        return {name: [] if p.default == STRING_ARRAY else p.default
                for name, p in self._params.items()}

    def descriptor(self, name: str) -> ParameterDescriptor:
        """Build the descriptor ``ros2 param describe`` shows: description, range or choices."""
        param = self._params[name]
        descriptor = ParameterDescriptor(description=param.description,
                                         read_only=self.read_only)
        if param.choices:
            descriptor.additional_constraints = 'one of: ' + param.listed_choices
        elif param.bounds is not None and not isinstance(param.default, bool):
            lo, hi = param.bounds
            if isinstance(param.default, float):
                descriptor.floating_point_range = [FloatingPointRange(
                    from_value=-math.inf if lo is None else float(lo),
                    to_value=math.inf if hi is None else float(hi))]
            elif isinstance(param.default, int):
                descriptor.integer_range = [IntegerRange(
                    from_value=INT64_MIN if lo is None else int(lo),
                    to_value=INT64_MAX if hi is None else int(hi))]
        return descriptor

    def declare(self, node: Node) -> None:
        """Declare every parameter on ``node`` (overrides from the launch apply here)."""
        for name, param in self._params.items():
            default = (Parameter.Type.STRING_ARRAY if param.default == STRING_ARRAY
                       else param.default)
            node.declare_parameter(name, default, self.descriptor(name))

    def read(self, node: Node) -> dict[str, Any]:
        """Read the declared values and validate them (ValueError naming the bad one)."""
        values = {}
        for name in self._params:
            try:
                values[name] = node.get_parameter(name).value
            except ParameterUninitializedException:
                values[name] = []      # only a statically typed, unset string array
        return self.validate(values)

    def validate(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """Check choices and ranges; return the values as a dict, or raise ValueError."""
        for name, param in self._params.items():
            value = values[name]
            if param.choices and value not in param.choices:
                raise ValueError(f'parameter {name} must be one of {param.listed_choices}; '
                                 f'got {value!r}')
            if param.bounds is not None and not isinstance(value, (bool, str, list, tuple)):
                lo, hi = param.bounds
                if (lo is not None and value < lo) or (hi is not None and value > hi):
                    raise ValueError(f'parameter {name} must be in [{lo}, {hi}]; got {value}')
        return dict(values)


# -- worker threads -----------------------------------------------------------------------------

async def worker_result(executor: Executor, job: concurrent.futures.Future) -> Any:
    """
    Await a worker thread's job in a callback; return its result or raise its exception.

    The awaiting callback leaves the executor thread free meanwhile. The done callback of
    the rclpy future is what wakes the executor when the job ends: rclpy resumes an awaiting
    coroutine only when its wait set wakes, which a future set from another thread does not do
    by itself.
    """
    done = Future(executor=executor)
    done.add_done_callback(lambda _: None)

    def settle(job: concurrent.futures.Future) -> None:
        if job.cancelled():
            done.set_exception(RuntimeError('the node is shutting down'))
        elif job.exception() is not None:
            done.set_exception(job.exception())
        else:
            done.set_result(job.result())
    job.add_done_callback(settle)
    return await done


# -- main() -------------------------------------------------------------------------------------

class NodeStartError(Exception):
    """Raised by a node's constructor that cannot start; :func:`run_node` prints the reason."""


# what a node's constructor raises for a bad configuration: one line, no traceback
START_ERRORS = (ValueError, ParameterException, NodeStartError)


def run_node(make_node: Callable[[], Node], name: str, args: list[str] | None = None,
             make_executor: Callable[[], Executor] = SingleThreadedExecutor) -> int:
    """
    Run one node until shutdown; the exit status of every node's ``main()``.

    0 after a shutdown (SIGINT, SIGTERM, the context shut down); 1 when the node cannot start,
    with one line ``[name] cannot start: reason`` on stderr (bad parameters, a resume checkpoint
    that cannot be read, a failed autostart). An error while spinning is raised, traceback and
    all: that is a bug, not a configuration.
    """
    keep_large_buffers()
    rclpy.init(args=args)
    node = None
    try:
        try:
            node = make_node()
        except START_ERRORS as exc:
            print(f'[{name}] cannot start: {exc}', file=sys.stderr, flush=True)
            return 1
        executor = make_executor()
        executor.add_node(node)
        spin_until_shutdown(executor)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
    return 0
