"""sim_node over real DDS: topics, types, encodings, QoS, lock-step frames, timeouts, reset."""

import itertools
import math
import pathlib
import threading
import time

from av_td3_interfaces.msg import StepFeedback, VehicleControl
from av_td3_ros.apps.baseline import BaselineNode
from av_td3_ros.ros.common import VehicleTopics
from av_td3_ros.ros.executor import PooledExecutor
from av_td3_ros.ros.sim_node import PARAMETERS, SimNode
from av_td3_ros.sim.reward import TERM_NAMES
from builtin_interfaces.msg import Time
from nav_msgs.msg import Odometry, Path
import pytest
import rclpy
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, Image
from std_msgs.msg import Float32
from std_srvs.srv import Trigger
import yaml

pytestmark = pytest.mark.ros

W, H = 160, 120
TOPICS = {
    '/carla/ego_vehicle/rgb_front/image': 'sensor_msgs/msg/Image',
    '/carla/ego_vehicle/rgb_front/camera_info': 'sensor_msgs/msg/CameraInfo',
    '/carla/ego_vehicle/odometry': 'nav_msgs/msg/Odometry',
    '/carla/ego_vehicle/speedometer': 'std_msgs/msg/Float32',
    '/carla/ego_vehicle/waypoints': 'nav_msgs/msg/Path',
    '/av_td3/step_feedback': 'av_td3_interfaces/msg/StepFeedback',
}
RELIABLE = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
LATCHED = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                     durability=DurabilityPolicy.TRANSIENT_LOCAL)


@pytest.fixture(scope='module', autouse=True)
def ros():
    rclpy.init()
    yield
    rclpy.try_shutdown()


class Probe(Node):
    """A controller stand-in: records every message and can answer frames with controls."""

    def __init__(self, answer: bool = False, name: str = 'probe',
                 role_name: str = 'ego_vehicle') -> None:
        super().__init__(name)
        self.answer = answer
        self.lock = threading.Lock()
        self.msgs = {k: [] for k in ('image', 'info', 'odom', 'speed', 'path', 'feedback')}
        topics = VehicleTopics(role_name)
        self.control = self.create_publisher(VehicleControl, topics.control, RELIABLE)
        camera = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE)
        self.create_subscription(Image, topics.image, self._on_image, camera)
        for key, typ, topic, qos in (
                ('info', CameraInfo, topics.camera_info, camera),
                ('odom', Odometry, topics.odometry, RELIABLE),
                ('speed', Float32, topics.speedometer, RELIABLE),
                ('path', Path, topics.waypoints, LATCHED),
                ('feedback', StepFeedback, topics.step_feedback, RELIABLE)):
            self.create_subscription(typ, topic, self._recorder(key), qos)

    def _recorder(self, key):
        def record(msg):
            with self.lock:
                self.msgs[key].append(msg)
        return record

    def _on_image(self, msg):
        with self.lock:
            self.msgs['image'].append(msg)
        if self.answer:
            self.send(msg.header.stamp, throttle=0.4)

    def send(self, stamp=None, **fields):
        msg = VehicleControl(**fields)
        if stamp is not None:
            msg.header.stamp = stamp
        self.control.publish(msg)

    def count(self, key):
        with self.lock:
            return len(self.msgs[key])

    def get(self, key):
        with self.lock:
            return list(self.msgs[key])


class Graph:
    """A sim node and probes spun by one executor on a background thread."""

    def __init__(self, *nodes):
        self.executor = PooledExecutor(num_threads=3)
        self.nodes = list(nodes)
        for n in nodes:
            self.executor.add_node(n)
        self.thread = threading.Thread(target=self.executor.spin, daemon=True)
        self.thread.start()

    def close(self):
        for n in self.nodes:
            self.executor.remove_node(n)
        time.sleep(0.2)               # let callbacks already handed out finish
        self.executor.shutdown(timeout_sec=5.0)
        self.thread.join(timeout=5.0)
        for n in self.nodes:
            n.destroy_node()


def _sim(**params):
    overrides = {'camera_width': W, 'camera_height': H, 'sync_timeout': 10.0, **params}
    return SimNode(parameter_overrides=[Parameter(k, value=v) for k, v in overrides.items()])


def _wait(predicate, timeout=10.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.01)
    return False


def _stamp(msg):
    return (msg.header.stamp.sec, msg.header.stamp.nanosec)


@pytest.fixture
def graph():
    graphs = []

    def make(*nodes):
        g = Graph(*nodes)
        graphs.append(g)
        return g
    yield make
    for g in graphs:
        g.close()


def test_names_types_qos_and_service(graph):
    sim, probe = _sim(), Probe()
    graph(sim, probe)
    assert _wait(lambda: all(probe.get_publishers_info_by_topic(t) for t in TOPICS))
    for topic, typ in TOPICS.items():
        (info,) = probe.get_publishers_info_by_topic(topic)
        assert info.node_name == 'av_td3_sim' and info.topic_type == typ, topic
        assert info.qos_profile.reliability == ReliabilityPolicy.RELIABLE, topic
    # the history depth is not part of DDS discovery: read it from the publisher itself
    assert sim._pub_image.qos_profile.depth == 1
    assert sim._pub_image.qos_profile.history == HistoryPolicy.KEEP_LAST
    (path,) = probe.get_publishers_info_by_topic('/carla/ego_vehicle/waypoints')
    assert path.qos_profile.durability == DurabilityPolicy.TRANSIENT_LOCAL
    subs = probe.get_subscriptions_info_by_topic('/carla/ego_vehicle/vehicle_control_cmd')
    assert any(s.node_name == 'av_td3_sim' and
               s.topic_type == 'av_td3_interfaces/msg/VehicleControl' and
               s.qos_profile.reliability == ReliabilityPolicy.RELIABLE for s in subs)
    services = dict(probe.get_service_names_and_types_by_node('av_td3_sim', '/'))
    assert services['/av_td3_sim/reset'] == ['std_srvs/srv/Trigger']


def test_parameters_are_described_ranged_read_only_and_validated():
    sim = _sim()
    try:
        for name in PARAMETERS:
            d = sim.describe_parameter(name)
            assert d.description and d.read_only, name
            if isinstance(PARAMETERS[name][0], (int, float)):
                assert d.integer_range or d.floating_point_range, name
        result = sim.set_parameters([Parameter('scenario', value=2)])[0]
        assert not result.successful
    finally:
        sim.destroy_node()
    with pytest.raises(ValueError, match='mode must be one of'):
        _sim(mode='fast')
    with pytest.raises(ValueError, match='image_qos_reliability must be one of'):
        _sim(image_qos_reliability='sometimes')


def test_params_file_lists_every_parameter_with_its_default():
    path = pathlib.Path(__file__).resolve().parent.parent / 'config' / 'sim.yaml'
    params = yaml.safe_load(path.read_text())['/**/av_td3_sim']['ros__parameters']
    assert params == PARAMETERS.defaults()
    text = path.read_text()
    for name in PARAMETERS:     # every parameter is explained by a comment above it
        line = text.splitlines().index(next(ln for ln in text.splitlines()
                                            if ln.strip().startswith(f'{name}:')))
        assert text.splitlines()[line - 1].strip().startswith('#') or name in (
            'camera_height', 'image_qos_depth'), name


def test_synchronous_lock_step_one_frame_per_control(graph):
    sim, probe = _sim(seed=3), Probe(answer=True)
    graph(sim, probe)
    assert _wait(lambda: probe.count('image') >= 31, timeout=30.0)
    probe.answer = False
    time.sleep(0.3)
    images, feedback = probe.get('image'), probe.get('feedback')
    odom, info = probe.get('odom'), probe.get('info')
    n = len(images)
    assert sim.frames_published == n, 'no frame without a control (and no re-publish)'
    stamps = [_stamp(m) for m in images]
    nanos = [s * 10 ** 9 + ns for s, ns in stamps]
    assert all(b - a == 50_000_000 for a, b in itertools.pairwise(nanos))
    assert [f.step for f in feedback[:n]] == list(range(n))
    assert [_stamp(f) for f in feedback[:n]] == stamps
    assert [_stamp(o) for o in odom[:n]] == stamps
    assert [_stamp(c) for c in info[:n]] == stamps
    assert probe.count('speed') == n
    for m in images:
        assert (m.encoding, m.width, m.height, m.step) == ('bgra8', W, H, 4 * W)
        assert len(m.data) == W * H * 4 and m.header.frame_id == 'ego_vehicle/rgb_front'
    assert info[0].k[0] == pytest.approx(W / 2.0) and info[0].k[2] == pytest.approx(W / 2.0)
    assert (odom[0].header.frame_id, odom[0].child_frame_id) == ('map', 'ego_vehicle')
    assert odom[-1].twist.twist.linear.x > 1.0, 'throttle moved the car'
    first, later = feedback[0], feedback[n - 1]
    assert first.reward == 0.0 and list(first.reward_term_names) == list(TERM_NAMES)
    assert later.reward == pytest.approx(sum(later.reward_term_values), abs=1e-4)
    assert later.distance_m > 0 and later.speed_mps == pytest.approx(
        odom[n - 1].twist.twist.linear.x, rel=1e-5)
    path = probe.get('path')
    assert len(path) == 1 and len(path[0].poses) > 100
    assert path[0].header.frame_id == 'map'
    # stale and bad controls are ignored; the node keeps stepping on a good one
    last = images[-1].header.stamp
    probe.send(images[-5].header.stamp, throttle=1.0)            # stale
    probe.send(last, throttle=math.nan)                          # bad values
    time.sleep(0.5)
    assert probe.count('image') == n
    probe.send(last, throttle=0.3)
    assert _wait(lambda: probe.count('image') == n + 1)
    time.sleep(0.3)
    assert probe.count('image') == n + 1


def test_timeout_republishes_the_last_frame(graph):
    sim, probe = _sim(sync_timeout=0.2), Probe()
    graph(sim, probe)
    assert _wait(lambda: probe.count('image') >= 3, timeout=20.0)
    images = probe.get('image')
    assert len({_stamp(m) for m in images}) == 1, 'the same frame, re-published'
    assert all(f.step == 0 for f in probe.get('feedback'))


def test_controls_that_answer_no_frame_do_not_postpone_the_republish(graph):
    # A policy node that has no frame yet brakes at 20 Hz with controls stamped by its own
    # clock. They answer no frame; frame 0 must still be re-published every sync_timeout.
    sim, probe = _sim(sync_timeout=0.3), Probe()
    graph(sim, probe)
    assert _wait(lambda: probe.count('image') >= 1, timeout=20.0)
    first = probe.count('image')
    end = time.monotonic() + 2.0
    while time.monotonic() < end:
        probe.send(Time(sec=1_700_000_000, nanosec=1), brake=1.0)
        time.sleep(0.05)
    images = probe.get('image')
    assert len({_stamp(m) for m in images}) == 1, 'the brakes stepped the simulator'
    # 2 s at a 0.3 s timeout: 6 re-publishes when on time; the flood postponed all of them
    assert len(images) - first >= 3, (len(images), first)
    assert sim.frames_republished >= 3


def test_role_name_puts_every_vehicle_topic_under_it(graph):
    sim, probe = _sim(role_name='car2'), Probe(answer=True, role_name='car2')
    default = Probe(name='default_role')
    graph(sim, probe, default)
    assert _wait(lambda: probe.count('feedback') >= 3 and probe.count('path') == 1,
                 timeout=20.0)
    assert all(probe.count(key) for key in probe.msgs)
    assert all(default.count(key) == 0 for key in default.msgs), 'heard on default topics'
    odom = probe.get('odom')[0]
    assert odom.child_frame_id == 'car2'
    assert probe.get('image')[0].header.frame_id == 'car2/rgb_front'
    names = dict(sim.get_topic_names_and_types())
    assert '/av_td3/car2/step_feedback' in names and '/carla/car2/rgb_front/image' in names


def test_role_name_must_be_a_topic_token():
    with pytest.raises(ValueError, match='role_name'):
        _sim(role_name='car 2/x')


def test_episode_end_next_episode_and_reset_service(graph):
    sim, probe = _sim(max_episode_steps=5), Probe(answer=True)
    late = Probe(name='late')
    graph(sim, probe)
    assert _wait(lambda: probe.count('feedback') >= 8, timeout=30.0)
    probe.answer = False
    time.sleep(0.3)
    fb = probe.get('feedback')
    assert [f.step for f in fb[:8]] == [0, 1, 2, 3, 4, 5, 0, 1]
    assert fb[5].truncated and not fb[5].terminated and fb[5].reason == 'time_limit'
    assert fb[6].episode_id == fb[5].episode_id + 1 and fb[6].reward == 0.0
    # the loop may have run into a third episode before the probe stopped answering
    episodes = {f.episode_id for f in fb}
    assert len(episodes) >= 2
    assert len(probe.get('path')) == len(episodes), 'waypoints re-published per new episode'
    # transient local: a subscriber that joins now still gets the current route
    graph(late)
    assert _wait(lambda: late.count('path') == 1)
    assert late.get('path')[0].poses[0].pose == probe.get('path')[-1].poses[0].pose
    client = probe.create_client(Trigger, '/av_td3_sim/reset')
    assert client.wait_for_service(timeout_sec=10.0)
    before = probe.count('feedback')
    response = client.call(Trigger.Request(), timeout_sec=30.0)
    assert response.success and 'episode' in response.message
    assert _wait(lambda: probe.count('feedback') > before)
    newest = probe.get('feedback')[before]
    assert newest.step == 0 and newest.episode_id == fb[-1].episode_id + 1


def test_realtime_mode_steps_on_a_timer(graph):
    sim, probe = _sim(mode='realtime'), Probe()
    graph(sim, probe)
    assert _wait(lambda: probe.count('image') >= 3, timeout=20.0)
    start, t0 = probe.count('image'), time.monotonic()
    time.sleep(1.0)
    rate = (probe.count('image') - start) / (time.monotonic() - t0)
    # 20 Hz timer; in-process on 2 loaded cores the step itself has run as slow as ~4.5 Hz,
    # so the lower bound only says it steps on its own (no control is sent)
    assert 3.0 < rate < 22.0, rate
    # consecutive steps (the probe may match after the first timer frame went out)
    steps = [f.step for f in probe.get('feedback')]
    assert steps and steps == list(range(steps[0], steps[0] + len(steps)))


def test_baseline_drives_the_sim_node_as_a_ros_controller(graph):
    sim = _sim(max_episode_steps=100)
    baseline = BaselineNode(episodes=1)
    graph(sim, baseline)
    assert _wait(lambda: baseline.done, timeout=60.0)
    (episode,) = baseline.episodes[:1]
    assert episode.steps == 100 and episode.reason == 'time_limit'
    assert episode.distance_m > 22.0 and episode.abs_lateral_sum / episode.steps < 0.5
