"""
Vehicle-stack conformance: the policy node, in processes of its own, inside a stand-in stack.

``StandInStack`` is a stand-in for the vehicle stacks users have (Nav2, Autoware, CARLA bridges,
camera drivers): a real rclpy node over DDS that publishes a camera, odometry and a latched route
the way those stacks do (route re-published with new stamps, odometry at its own rate and phase,
best-effort sensor QoS, namespaced vehicles, an external lifecycle manager, simulated time) and
records the controls. Each test plays one such behaviour in real time and checks every control
against what ``Policy.act`` computes offline on the frame stack and pose pairing the node should
have used: the stack restarts only at the first frame of a run (its stamps jump by more than
``input_timeout`` from the previous run), each pose is the one of the nearest stamp.

The policy nodes are started once for the module (``python -m av_td3_ros.ros.policy_node``,
one process each, all at once); each test uses its vehicle's node with fresh stamps.
"""

from __future__ import annotations

from collections.abc import Callable
import contextlib
from dataclasses import dataclass, field
import math
import os
import pathlib
import signal
import subprocess
import sys
import threading
import time

from av_td3_interfaces.msg import VehicleControl
from av_td3_ros.driving.observation import (
    action_to_control, build_vector, FrameStack, image_to_gray, Route)
from av_td3_ros.driving.policy import Policy
from av_td3_ros.formats.policy_export import export_td3_policy
from av_td3_ros.learning.config import TD3Config
from av_td3_ros.learning.td3 import TD3
from av_td3_ros.ros.common import VehicleTopics
from geometry_msgs.msg import PoseStamped
from lifecycle_msgs.msg import State, Transition
from lifecycle_msgs.srv import ChangeState, GetState
from nav_msgs.msg import Odometry, Path
import numpy as np
import pytest
from rclpy.node import Node
from rclpy.qos import (
    DurabilityPolicy, qos_profile_sensor_data, QoSProfile, ReliabilityPolicy)
from ros_harness import RosHarness, wait_for
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import Image
import torch

pytestmark = pytest.mark.ros
torch.set_num_threads(1)

SEC = 1_000_000_000
MS = 1_000_000
TOL = 1e-5                 # float32 controls of one float32 network, same code and threads
RELIABLE = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
LATCHED = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                     durability=DurabilityPolicy.TRANSIENT_LOCAL)
# the route every test of a vehicle drives on: straight along x, waypoints 2 m apart
ROUTE = [(2.0 * i - 20.0, 0.0) for i in range(400)]
CHANNELS = {'bgra8': 4, 'rgba8': 4, 'bgr8': 3, 'rgb8': 3, 'mono8': 1}


# -- the policy ----------------------------------------------------------------------------------

@pytest.fixture(scope='module')
def policy_file(tmp_path_factory) -> pathlib.Path:
    """Write a policy export of a seeded actor whose output depends visibly on its input."""
    torch.manual_seed(7)
    td3 = TD3(TD3Config())
    with torch.no_grad():
        td3.actor.fc3.weight.mul_(10.0)     # a fresh head is near zero: make differences show
    path = tmp_path_factory.mktemp('vehicle_stack') / 'policy.safetensors'
    path.write_bytes(export_td3_policy(td3))
    return path


@pytest.fixture(scope='module')
def policy(policy_file) -> Policy:
    policy = Policy.load(policy_file)
    # the checks below can only fail if a wrong stack or pose changes the controls: make sure
    rng = np.random.default_rng(0)
    full = rng.integers(0, 256, policy.spec.image_shape, dtype=np.uint8)
    reset = full.copy()
    reset[:-1] = 0
    vector, _ = build_vector(Route(np.array(ROUTE)), 3.0, 0.4, 0.05, 6.0, policy.spec)
    other, _ = build_vector(Route(np.array(ROUTE)), 3.0, 0.4, 0.05, 9.0, policy.spec)
    act = policy.act(full, vector)
    assert np.abs(act - policy.act(reset, vector)).max() > 100 * TOL
    assert np.abs(act - policy.act(full, other)).max() > 10 * TOL
    return policy


# -- policy node processes -----------------------------------------------------------------------

@dataclass
class NodeProcess:
    """One policy node in a process of its own (as ``ros2 run`` starts it)."""

    name: str
    namespace: str
    params: dict
    log: pathlib.Path
    process: subprocess.Popen | None = None

    @property
    def fqn(self) -> str:
        return f'{self.namespace.rstrip("/")}/av_td3_policy'

    def start(self) -> None:
        args = [sys.executable, '-m', 'av_td3_ros.ros.policy_node', '--ros-args',
                '-r', f'__ns:={self.namespace}']
        for key, value in self.params.items():
            args += ['-p', f'{key}:={value}']
        env = dict(os.environ, PYTHONUNBUFFERED='1')
        with open(self.log, 'wb') as log:
            self.process = subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT)

    def output(self) -> str:
        return self.log.read_text(errors='replace')

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)


NODES = {
    # name: (namespace, role_name, extra parameters)
    'ego': ('/', 'ego_vehicle', {}),
    'best_effort': ('/', 'be_car', {'image_qos_reliability': 'best_effort',
                                    'image_qos_depth': 5}),
    'car1': ('/car1', 'car1', {}),
    'car2': ('/car2', 'car2', {}),
    'managed': ('/managed', 'managed_car', {'autostart': 'false'}),
    'sim_time': ('/', 'sim_car', {'use_sim_time': 'true'}),
}


@pytest.fixture(scope='module')
def ros():
    harness = RosHarness()
    yield harness
    harness.shutdown()


@pytest.fixture(scope='module')
def nodes(policy_file, tmp_path_factory):
    """Start every policy node of the module at once (their start-up overlaps)."""
    logs = tmp_path_factory.mktemp('vehicle_stack_logs')
    procs = {}
    for name, (namespace, role, extra) in NODES.items():
        params = {'role_name': role, 'checkpoint_path': str(policy_file),
                  'checkpoint_dir': str(policy_file.parent), **extra}
        procs[name] = NodeProcess(name, namespace, params, logs / f'{name}.log')
        procs[name].start()
    yield procs
    for proc in procs.values():
        proc.stop()


# -- the stand-in stack --------------------------------------------------------------------------

T0 = time.time_ns()


def moving_pose(stamp: int, origin: float = 0.0) -> tuple[float, float, float, float]:
    """
    Return (x, y, yaw, speed) of the stand-in vehicle at ``stamp``.

    It moves along ROUTE at 3 m/s, weaving a little; the speed reading changes a lot from
    one odometry sample to the next, so that pairing a frame with the wrong one shows.
    """
    t = ((stamp - T0) % (200 * SEC)) / SEC
    x = origin + 3.0 * t
    return x, 0.6 * math.sin(2.0 * t), 0.1 * math.sin(3.0 * t), 2.0 + (stamp // MS) % 37 / 4.0


def pixels_for(stamp: int, width: int, height: int, encoding: str, seed: int) -> np.ndarray:
    """Return a noise image of this size and encoding, different for every stamp."""
    key = (width, height, encoding, seed)
    base = _BASES.get(key)
    if base is None:
        shape = (height, width, CHANNELS[encoding]) if CHANNELS[encoding] > 1 else (height, width)
        base = _BASES[key] = np.random.default_rng(seed).integers(0, 256, shape, np.uint8)
    k = (stamp // MS) % 9973
    return np.roll(base, (k * 7) % width, axis=1) + np.uint8(k % 251)


_BASES: dict = {}


def path_msg(points) -> Path:
    msg = Path()
    msg.header.frame_id = 'map'
    for x, y in points:
        pose = PoseStamped()
        pose.pose.position.x, pose.pose.position.y = float(x), float(y)
        msg.poses.append(pose)
    return msg


def set_stamp(header, stamp: int) -> None:
    header.stamp.sec, header.stamp.nanosec = divmod(stamp, SEC)


@dataclass
class Run:
    """What one played scenario sent: frames (stamp -> gray 84x84), poses, publish times."""

    frames: dict[int, np.ndarray] = field(default_factory=dict)
    poses: dict[int, tuple] = field(default_factory=dict)
    published: dict[int, float] = field(default_factory=dict)


class StandInStack:
    """
    A stand-in vehicle stack (not a real one): camera, odometry and route publishers of one role.

    It publishes what Nav2/Autoware/CARLA-bridge style stacks publish on the policy node's
    topics, with the QoS given, and records every control it receives with its arrival time.
    """

    def __init__(self, ros: RosHarness, role: str, camera_qos: QoSProfile = RELIABLE,
                 seed: int = 0, origin: float = 0.0) -> None:
        self.topics = VehicleTopics(role)
        self.seed, self.origin = seed, origin
        self.node = ros.add(Node(f'stand_in_stack_{role}', context=ros.context))
        self.image_pub = self.node.create_publisher(Image, self.topics.image, camera_qos)
        self.odometry_pub = self.node.create_publisher(Odometry, self.topics.odometry, RELIABLE)
        self.route_pub = self.node.create_publisher(Path, self.topics.waypoints, LATCHED)
        self.lock = threading.Lock()
        self.controls: dict[int, tuple[tuple[float, float, float], float]] = {}
        self.all_controls: list[tuple[int, tuple[float, float, float]]] = []
        self.node.create_subscription(VehicleControl, self.topics.control, self._on_control,
                                      RELIABLE)
        self.routes: list[list[tuple[float, float]]] = []
        self.last_stamp = 0

    def _on_control(self, msg: VehicleControl) -> None:
        stamp = msg.header.stamp.sec * SEC + msg.header.stamp.nanosec
        with self.lock:
            self.controls[stamp] = ((msg.steer, msg.throttle, msg.brake), time.monotonic())
            self.all_controls.append((stamp, (msg.steer, msg.throttle, msg.brake)))

    def wait_matched(self, timeout: float = 90.0) -> None:
        """Wait until the node's subscriptions and control publisher matched ours."""
        wait_for(lambda: (self.image_pub.get_subscription_count() >= 1 and
                          self.odometry_pub.get_subscription_count() >= 1 and
                          self.route_pub.get_subscription_count() >= 1 and
                          self.node.count_publishers(self.topics.control) >= 1),
                 timeout, f'the policy node of {self.topics.role_name} to match the stand-in')

    def publish_route(self, points, stamp: int | None = None) -> None:
        msg = path_msg(points)
        set_stamp(msg.header, stamp if stamp is not None else time.time_ns())
        if points not in self.routes:
            self.routes.append(list(points))
        self.route_pub.publish(msg)

    def publish_odometry(self, stamp: int, pose, run: Run) -> None:
        msg = Odometry()
        set_stamp(msg.header, stamp)
        msg.header.frame_id, msg.child_frame_id = 'map', self.topics.vehicle_frame
        x, y, yaw, speed = pose
        msg.pose.pose.position.x, msg.pose.pose.position.y = x, y
        msg.pose.pose.orientation.z, msg.pose.pose.orientation.w = (math.sin(yaw / 2),
                                                                    math.cos(yaw / 2))
        msg.twist.twist.linear.x = speed
        run.poses[stamp] = pose
        self.odometry_pub.publish(msg)

    def publish_frame(self, stamp: int, run: Run, width: int, height: int,
                      encoding: str) -> None:
        pixels = pixels_for(stamp, width, height, encoding, self.seed)
        msg = Image(width=width, height=height, encoding=encoding,
                    step=width * CHANNELS[encoding])
        set_stamp(msg.header, stamp)
        msg.header.frame_id = self.topics.camera_frame
        msg.data = pixels.tobytes()
        run.frames[stamp] = image_to_gray(msg.data, width, height, encoding)
        run.published[stamp] = time.monotonic()
        self.image_pub.publish(msg)

    def next_base(self, clock: Callable[[], int] = time.time_ns) -> int:
        """First stamp of a new run: 2 s after the last one (more than input_timeout)."""
        return max(clock(), self.last_stamp + 2 * SEC)

    def schedule(self, run: Run, base: int, seconds: float, camera_hz: float = 20.0,
                 odom_hz: float | None = None, odom_stamp_offset: int = 0,
                 odom_delay: float = 0.0, size: tuple[int, int] = (400, 300),
                 encoding: str = 'bgra8', time_scale: float = 1.0
                 ) -> list[tuple[float, int, Callable[[], None]]]:
        """
        Return the (wall time, order, publish) events of ``seconds`` of camera and odometry.

        The odometry runs at the camera's rate and stamps unless ``odom_hz`` is given (then at
        its own rate, phase-shifted 3 ms); ``odom_stamp_offset`` stamps it later (> 0) or
        earlier, ``odom_delay`` publishes it that long after its stamp's time (< 0: before).
        ``time_scale`` is stamp seconds per wall second (simulated time).
        """
        events = []
        n_frames = int(seconds * camera_hz)
        for k in range(n_frames):
            stamp = base + int(k * SEC / camera_hz)
            self.last_stamp = max(self.last_stamp, stamp)
            at = (stamp - base) / SEC / time_scale
            events.append((at, 1, lambda s=stamp: self.publish_frame(s, run, *size, encoding)))
        if odom_hz is None:
            odom_stamps = [base + int(k * SEC / camera_hz) + odom_stamp_offset
                           for k in range(n_frames)]
        else:
            odom_stamps = [base - 10 * MS + 3 * MS + int(k * SEC / odom_hz)
                           for k in range(int(seconds * odom_hz) + 2)]
        for stamp in odom_stamps:
            at = (stamp - odom_stamp_offset - base) / SEC / time_scale + odom_delay
            events.append((at, 0, lambda s=stamp: self.publish_odometry(
                s, moving_pose(s, self.origin), run)))
        return events


def play(events, lead: float = 0.05) -> None:
    """Publish the events in real time (ties: odometry before camera at the same instant)."""
    start = time.monotonic() + lead
    for at, _, publish in sorted(events, key=lambda e: (e[0], e[1])):
        delay = start + at - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        publish()


def nearest_pose(run: Run, stamp: int):
    best = min(run.poses, key=lambda s: abs(s - stamp))
    return run.poses[best]


def expected_controls(policy: Policy, run: Run, stamps: list[int], routes
                      ) -> dict[int, list[tuple[float, float, float]]]:
    """Return, per answered stamp, the controls of the policy under each candidate route."""
    spec = policy.spec
    stack = FrameStack(spec.frame_stack, spec.image_size)
    out = {}
    for stamp in stamps:
        obs = stack.push(run.frames[stamp]).copy()
        x, y, yaw, speed = nearest_pose(run, stamp)
        out[stamp] = []
        for points in routes:
            vector, _ = build_vector(Route(np.array(points)), x, y, yaw, speed, spec)
            out[stamp].append(action_to_control(policy.act(obs, vector)))
    return out


def check_run(stack: StandInStack, policy: Policy, run: Run, min_answered: float = 0.8,
              settle: float = 2.0) -> dict[int, tuple]:
    """
    Check every control answering a frame of ``run`` against the policy offline.

    The node stacks the frames it answers (a frame lost on the way is in no stack), so the
    expected stack is made of the answered frames in stamp order, restarting at the run's first.
    A control may match the policy under any route this stand-in published (which one was in
    force when a re-published route crossed a frame is a matter of delivery order); the stack
    and the pose are exact.
    """
    def answered():
        with stack.lock:
            return {s: c for s, (c, _) in stack.controls.items() if s in run.frames}
    last = max(run.frames)
    with contextlib.suppress(AssertionError):     # a lost last frame: see min_answered
        wait_for(lambda: last in answered(), settle, 'the control of the last frame')
    got = answered()
    assert len(got) >= min_answered * len(run.frames), (
        f'{len(got)} of {len(run.frames)} frames answered')
    stamps = sorted(got)
    want = expected_controls(policy, run, stamps, stack.routes)
    wrong = []
    for i, stamp in enumerate(stamps):
        if not any(all(abs(g - w) <= TOL for g, w in zip(got[stamp], option, strict=True))
                   for option in want[stamp]):
            wrong.append((i, got[stamp], want[stamp][0]))
    assert not wrong, (f'{len(wrong)} of {len(stamps)} controls differ from the policy on the '
                       f'stack the node should have built; first (index, got, want): {wrong[:3]}')
    return got


def warm_up(stack: StandInStack, policy: Policy, route=ROUTE) -> None:
    """Give the node its route and make sure it drives on it (the first route is a new task)."""
    stack.wait_matched()
    stack.publish_route(route)
    deadline = time.monotonic() + 30.0
    while time.monotonic() < deadline:
        run = Run()
        play(stack.schedule(run, stack.next_base(), 0.5))
        time.sleep(0.3)
        with stack.lock:
            answered = [stack.controls[s][0] for s in run.frames if s in stack.controls]
        if answered and all(c[2] < 1.0 or c[0] != 0.0 for c in answered):
            return            # driving (not the full brake of "no route yet")
    raise AssertionError('the policy node never drove on the stand-in route')


@pytest.fixture(scope='module')
def ego(ros, nodes, policy):
    stack = StandInStack(ros, 'ego_vehicle', seed=1)
    warm_up(stack, policy)
    return stack


# -- the route, as planners publish it -----------------------------------------------------------

@pytest.mark.parametrize('route_hz', [1.0, 10.0])
def test_route_re_published_with_new_stamps_keeps_the_stack(ego, policy, route_hz):
    run = Run()
    base = ego.next_base()
    events = ego.schedule(run, base, 3.0)
    events += [(k / route_hz, 2, lambda: ego.publish_route(ROUTE))
               for k in range(1, int(3.0 * route_hz))]
    play(events)
    check_run(ego, policy, run)


def test_route_refreshed_with_shifted_waypoints_keeps_the_stack(ego, policy):
    """A planner re-plans from where the vehicle is: the same road, other samples, pruned."""
    run = Run()
    base = ego.next_base()
    events = ego.schedule(run, base, 3.0)
    for k in range(1, 6):
        shift = 0.5 * (k % 4)
        x = moving_pose(base + k * SEC // 2, ego.origin)[0]
        start = int((x - ROUTE[0][0]) // 2) - 2                       # just behind the vehicle
        refreshed = [(x + shift, y) for x, y in ROUTE[max(start, 0):]]
        events.append((k * 0.5, 2, lambda r=refreshed: ego.publish_route(r)))
    play(events)
    check_run(ego, policy, run)
    ego.publish_route(ROUTE)         # back to the whole route (a continuation)


# -- odometry against the camera -----------------------------------------------------------------

def test_odometry_at_50_hz_with_the_camera_at_20_hz(ego, policy):
    run = Run()
    play(ego.schedule(run, ego.next_base(), 2.5, camera_hz=20.0, odom_hz=50.0))
    check_run(ego, policy, run)


def test_odometry_stamped_and_published_slightly_late(ego, policy):
    run = Run()
    play(ego.schedule(run, ego.next_base(), 2.5, odom_stamp_offset=3 * MS, odom_delay=0.003))
    check_run(ego, policy, run)


def test_odometry_stamped_and_published_slightly_early(ego, policy):
    """An odometry 3 ms before the frame is its pair: answered at once, not a period later."""
    run = Run()
    play(ego.schedule(run, ego.next_base(), 2.5, odom_stamp_offset=-3 * MS,
                      odom_delay=-0.003))
    got = check_run(ego, policy, run)
    with ego.lock:
        latency = sorted(ego.controls[s][1] - run.published[s] for s in got)
    median = latency[len(latency) // 2]
    # waiting for the next odometry (the frame's own came first) costs 47 ms at 20 Hz
    assert median < 0.035, f'median image->control latency {median * 1e3:.1f} ms'


@pytest.mark.parametrize('camera_hz', [10.0, 30.0])
def test_camera_rates(ego, policy, camera_hz):
    run = Run()
    play(ego.schedule(run, ego.next_base(), 2.0, camera_hz=camera_hz))
    check_run(ego, policy, run)


@pytest.mark.parametrize('size,encoding,camera_hz,min_answered', [
    ((1920, 1080), 'bgr8', 10.0, 0.5),    # 6 MB frames: keep-last-1 drops some on a loaded host
    ((640, 480), 'rgb8', 20.0, 0.8)])
def test_camera_frames_of_real_sizes(ego, policy, size, encoding, camera_hz, min_answered):
    run = Run()
    play(ego.schedule(run, ego.next_base(), 2.0, camera_hz=camera_hz, size=size,
                      encoding=encoding))
    check_run(ego, policy, run, min_answered=min_answered)


# -- QoS, several vehicles ----------------------------------------------------------------------

def test_a_best_effort_camera_with_the_matching_image_qos(ros, nodes, policy):
    stack = StandInStack(ros, 'be_car', camera_qos=qos_profile_sensor_data, seed=2)
    warm_up(stack, policy)
    run = Run()
    play(stack.schedule(run, stack.next_base(), 2.0, size=(640, 480), encoding='bgra8'))
    check_run(stack, policy, run, min_answered=0.7)


def test_a_best_effort_camera_on_a_reliable_subscription_is_named_once(ros, nodes, ego):
    """The node's default (reliable) camera QoS and a sensor-data camera: one clear warning."""
    advice = 'set image_qos_reliability:=best_effort'
    before = nodes['ego'].output().count(advice)
    camera = ros.add(Node('best_effort_camera', context=ros.context))
    try:
        camera.create_publisher(Image, ego.topics.image, qos_profile_sensor_data)
        wait_for(lambda: nodes['ego'].output().count(advice) > before, 30.0,
                 'the incompatible-QoS warning')
        time.sleep(1.0)        # discovery goes on: it must not repeat for the same publisher
        lines = [line for line in nodes['ego'].output().splitlines() if advice in line]
    finally:
        ros.remove(camera)
    assert len(lines) == before + 1
    assert 'WARN' in lines[-1] and ego.topics.image in lines[-1] and 'reliability' in lines[-1]


def test_two_namespaced_vehicles_in_one_graph_do_not_cross_talk(ros, nodes, policy):
    car1 = StandInStack(ros, 'car1', seed=11)
    car2 = StandInStack(ros, 'car2', seed=12, origin=50.0)     # other frames, another place
    warm_up(car1, policy)
    warm_up(car2, policy)
    runs = Run(), Run()
    base = max(car1.next_base(), car2.next_base())
    events = car1.schedule(runs[0], base, 2.0) + car2.schedule(runs[1], base + 7 * MS, 2.0)
    play(events)
    check_run(car1, policy, runs[0])
    check_run(car2, policy, runs[1])
    assert not set(car1.controls) & set(runs[1].frames)
    assert not set(car2.controls) & set(runs[0].frames)


# -- an external lifecycle manager ---------------------------------------------------------------

def lifecycle(ros: RosHarness, fqn: str, transition: int) -> bool:
    return ros.call(ChangeState, f'{fqn}/change_state',
                    ChangeState.Request(transition=Transition(id=transition))).success


def lifecycle_state(ros: RosHarness, fqn: str) -> int:
    return ros.call(GetState, f'{fqn}/get_state', GetState.Request()).current_state.id


def quiet_after(stack: StandInStack, seconds: float = 0.6) -> tuple[float, float, float]:
    """Wait until no control came for ``seconds``; return the last control received."""
    def quiet():
        with stack.lock:
            n = len(stack.all_controls)
        time.sleep(seconds)
        with stack.lock:
            return len(stack.all_controls) == n
    wait_for(quiet, 10.0, 'the controls to stop', period=0.0)
    with stack.lock:
        return stack.all_controls[-1][1]


def drive(stack: StandInStack, policy: Policy, seconds: float = 2.0, **kwargs) -> None:
    """Play a short run (the route may still be on its way), then a checked one."""
    play(stack.schedule(Run(), stack.next_base(), 0.75, **kwargs))
    time.sleep(0.3)
    run = Run()
    play(stack.schedule(run, stack.next_base(), seconds, **kwargs))
    check_run(stack, policy, run)


def test_an_external_lifecycle_manager_drives_it(ros, nodes, policy):
    node = nodes['managed']
    stack = StandInStack(ros, 'managed_car', seed=3)
    wait_for(lambda: node.fqn in [f'{ns.rstrip("/")}/{n}' for n, ns in
                                  stack.node.get_node_names_and_namespaces()],
             90.0, 'the managed node')
    assert lifecycle_state(ros, node.fqn) == State.PRIMARY_STATE_UNCONFIGURED
    stack.publish_route(ROUTE)      # latched: a stack publishes it whenever it likes
    assert lifecycle(ros, node.fqn, Transition.TRANSITION_CONFIGURE)
    assert lifecycle_state(ros, node.fqn) == State.PRIMARY_STATE_INACTIVE
    stack.wait_matched()
    idle = Run()
    play(stack.schedule(idle, stack.next_base(), 0.5))
    time.sleep(0.5)
    assert not set(stack.controls) & set(idle.frames), 'inactive, yet it answered frames'
    assert lifecycle(ros, node.fqn, Transition.TRANSITION_ACTIVATE)
    drive(stack, policy)
    assert lifecycle(ros, node.fqn, Transition.TRANSITION_DEACTIVATE)
    assert quiet_after(stack) == (0.0, 0.0, 1.0), 'deactivated: full brake, then silence'
    assert lifecycle(ros, node.fqn, Transition.TRANSITION_CLEANUP)
    assert lifecycle_state(ros, node.fqn) == State.PRIMARY_STATE_UNCONFIGURED
    # configured again, it takes the latched route again and drives from a fresh stack
    assert lifecycle(ros, node.fqn, Transition.TRANSITION_CONFIGURE)
    assert lifecycle(ros, node.fqn, Transition.TRANSITION_ACTIVATE)
    stack.wait_matched()
    drive(stack, policy)
    assert lifecycle(ros, node.fqn, Transition.TRANSITION_ACTIVE_SHUTDOWN)
    assert lifecycle_state(ros, node.fqn) == State.PRIMARY_STATE_FINALIZED
    assert quiet_after(stack) == (0.0, 0.0, 1.0), 'shut down: full brake, then silence'
    late = Run()
    play(stack.schedule(late, stack.next_base(), 0.5))
    time.sleep(0.5)
    assert not set(stack.controls) & set(late.frames), 'finalized, yet it answered frames'
    assert node.process.poll() is None, 'the process keeps running until it is stopped'


# -- simulated time ------------------------------------------------------------------------------

class SimClock:
    """A stand-in simulator clock on /clock: starts at 1000 s, runs at half real speed."""

    def __init__(self, node: Node, scale: float = 0.5) -> None:
        self.scale, self.start = scale, time.monotonic()
        self.pub = node.create_publisher(Clock, '/clock', QoSProfile(depth=10))
        self.timer = node.create_timer(0.01, self.tick)

    def now(self) -> int:
        return 1000 * SEC + int((time.monotonic() - self.start) * self.scale * SEC)

    def tick(self) -> None:
        msg = Clock()
        msg.clock.sec, msg.clock.nanosec = divmod(self.now(), SEC)
        self.pub.publish(msg)


def test_use_sim_time_with_a_clock_publisher(ros, nodes, policy):
    stack = StandInStack(ros, 'sim_car', seed=4)
    clock = SimClock(stack.node)
    stack.last_stamp = clock.now()
    stack.wait_matched()
    stack.publish_route(ROUTE)
    for _ in range(2):           # the first run may come before the route: a second one drives
        run = Run()
        base = stack.next_base(clock.now)
        play(stack.schedule(run, base, 2.0, time_scale=clock.scale))
        time.sleep(0.3)
    check_run(stack, policy, run)
    # the stamps of controls that answer no frame (watchdog, stop) are simulated time
    with stack.lock:
        before = len(stack.all_controls)
    wait_for(lambda: len(stack.all_controls) > before + 3, 5.0, 'watchdog brakes')
    with stack.lock:
        stamps = [s for s, _ in stack.all_controls[before:]]
    now = clock.now()
    assert all(abs(s - now) < 5 * SEC for s in stamps), (stamps, now)
    stack.node.destroy_timer(clock.timer)
