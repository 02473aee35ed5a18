"""
bag_tool and the trainer's record_bag over real DDS and real files.

``play`` and ``record`` run as separate processes (``python -m av_td3_ros.tools.bag_tool``) as a
user runs them, talking over DDS to real rclpy nodes in this process (ros_harness); the offline
commands run through the same ``main()`` in-process, which spares a torch import per call.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
import subprocess
import sys
import threading
import time

from av_td3_interfaces.msg import Transition, VehicleControl
from av_td3_ros.bags import BagReader, BagWriter, RawTopics
from av_td3_ros.nodes.trainer_node import TrainerNode
from av_td3_ros.observation import ObservationSpec
from av_td3_ros.tools.bag_tool import main as bag_tool_main
from nav_msgs.msg import Odometry, Path as PathMsg
import numpy as np
import pytest
from rclpy.qos import DurabilityPolicy, QoSProfile
from ros_harness import episode_transitions, overrides, RosHarness, wait_for
from rosbags.highlevel import AnyReader
from rosbags.typesys import get_typestore, Stores
from sensor_msgs.msg import Image
from std_msgs.msg import Float32
from test_bags import write_drive

pytestmark = pytest.mark.ros

TOPICS = RawTopics()


def bag_tool(*args: str, timeout: float = 120.0) -> subprocess.CompletedProcess:
    """Run the bag_tool CLI in its own process, as a user would."""
    return subprocess.run([sys.executable, '-m', 'av_td3_ros.tools.bag_tool', *map(str, args)],
                          capture_output=True, text=True, timeout=timeout, env=os.environ.copy())


def run_cli(capsys, *args) -> tuple[int, str, str]:
    """Run ``bag_tool`` through its entry point in this process; return (rc, stdout, stderr)."""
    capsys.readouterr()
    rc = bag_tool_main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture
def harness():
    harness = RosHarness()
    yield harness
    harness.shutdown()


@pytest.mark.parametrize('storage', ['mcap', 'sqlite3'])
def test_trainer_records_the_transitions_it_receives(tmp_path, harness, storage):
    spec = ObservationSpec()
    bag = tmp_path / 'recorded'
    node = harness.add(TrainerNode(context=harness.context, parameter_overrides=overrides({
        'features_dim': 16, 'hidden': [16, 16], 'batch_size': 4, 'learning_starts': 1000,
        'buffer_capacity': 64, 'num_threads': 1, 'checkpoint_dir': str(tmp_path / 'ckpt'),
        'record_bag': str(bag), 'record_bag_storage': storage})))
    publisher = harness.client.create_publisher(Transition, '/av_td3/transitions', 100)
    wait_for(lambda: publisher.get_subscription_count() > 0, 20, 'the trainer subscription')
    sent = list(episode_transitions(spec, 7, seed=1, episode_id=3))
    for msg in sent:
        publisher.publish(msg)
    wait_for(lambda: node.learner.stats().buffer_size == len(sent), 30, 'the inserts')
    harness.remove(node)   # destroy_node closes the bag (metadata.yaml)

    with AnyReader([bag], default_typestore=get_typestore(Stores.EMPTY)) as reader:
        (connection,) = reader.connections
        assert connection.topic == '/av_td3/transitions' and connection.msgcount == 7
        got = [reader.deserialize(raw, connection.msgtype) for _, _, raw in reader.messages()]
    for msg, decoded in zip(sent, got, strict=True):
        assert (decoded.episode_id, decoded.step) == (3, msg.step)
        np.testing.assert_array_equal(decoded.obs_frames, np.frombuffer(msg.obs_frames, np.uint8))
        np.testing.assert_array_equal(decoded.next_frame, np.frombuffer(msg.next_frame, np.uint8))
        np.testing.assert_allclose(decoded.action, msg.action)
        assert decoded.truncated == msg.truncated
    assert (bag / 'metadata.yaml').read_text().count('storage_identifier: ' + storage) == 1


def test_trainer_refuses_to_overwrite_a_bag(tmp_path, harness):
    (tmp_path / 'exists').mkdir()
    with pytest.raises(ValueError, match='exists already; a bag is never overwritten'):
        TrainerNode(context=harness.context, parameter_overrides=overrides({
            'checkpoint_dir': str(tmp_path / 'ckpt'), 'record_bag': str(tmp_path / 'exists')}))


def test_info_cli(tmp_path, capsys):
    write_drive(tmp_path / 'drive', storage='sqlite3')
    rc, out, err = run_cli(capsys, 'info', tmp_path / 'drive', '--json')
    assert rc == 0, err
    info = json.loads(out)
    assert info['storage'] == 'sqlite3'
    assert info['message_count'] == 1 + 12 * 4
    assert {t['topic']: (t['type'], t['count']) for t in info['topics']} == {
        TOPICS.image: ('sensor_msgs/msg/Image', 12),
        TOPICS.odometry: ('nav_msgs/msg/Odometry', 12),
        TOPICS.waypoints: ('nav_msgs/msg/Path', 1),
        TOPICS.control: ('av_td3_interfaces/msg/VehicleControl', 12),
        TOPICS.feedback: ('av_td3_interfaces/msg/StepFeedback', 12)}
    assert info['duration_s'] == pytest.approx(11 * 0.05 + 0.02 + 1e-3, abs=1e-6)
    text = bag_tool('info', tmp_path / 'drive')   # the console entry point, in its own process
    assert text.returncode == 0 and TOPICS.image in text.stdout and 'duration:' in text.stdout


def _copy_with(src: Path, dst: Path, skip_topic: str | None = None,
               truncate: tuple[str, int] | None = None) -> None:
    """Copy a bag, leaving out a topic or truncating one message's bytes (a corrupt record)."""
    with BagReader(src) as reader, BagWriter(dst, 'mcap', reader.typestore) as writer:
        for topic, msgtype in reader.topics().items():
            if topic != skip_topic:
                writer.add_topic(topic, msgtype)
        for item in reader.messages():
            if item.topic == skip_topic:
                continue
            data = bytes(reader.typestore.serialize_cdr(item.message, item.msgtype))
            if truncate == (item.topic, item.index):
                data = data[:len(data) // 3]
            writer.write(item.topic, data, item.timestamp_ns)


def test_replay_cli_names_a_missing_topic_and_a_corrupt_message(tmp_path, capsys):
    write_drive(tmp_path / 'drive')
    _copy_with(tmp_path / 'drive', tmp_path / 'no_odom', skip_topic=TOPICS.odometry)
    _copy_with(tmp_path / 'drive', tmp_path / 'corrupt', truncate=(TOPICS.image, 4))
    checkpoint = tmp_path / 'policy.pth'
    _untrained_checkpoint(checkpoint)

    rc, out, err = run_cli(capsys, 'replay', tmp_path / 'no_odom', '--checkpoint', checkpoint)
    assert rc == 2 and out == ''
    assert err.strip().splitlines() == [
        f'bag_tool replay: {tmp_path / "no_odom"} has no topic {TOPICS.odometry} '
        f'(nav_msgs/msg/Odometry); it has: ' + ', '.join(
            f'{t} ({m})' for t, m in sorted({
                TOPICS.control: 'av_td3_interfaces/msg/VehicleControl',
                TOPICS.feedback: 'av_td3_interfaces/msg/StepFeedback',
                TOPICS.image: 'sensor_msgs/msg/Image',
                TOPICS.waypoints: 'nav_msgs/msg/Path'}.items()))]

    rc, out, err = run_cli(capsys, 'replay', tmp_path / 'corrupt', '--checkpoint', checkpoint,
                           '--json')
    assert rc == 2 and out == ''
    (line,) = err.strip().splitlines()
    assert line.startswith(f'bag_tool replay: {tmp_path / "corrupt"}: message 4 on '
                           f'{TOPICS.image} (sensor_msgs/msg/Image) at ')
    assert 'cannot be decoded' in line

    rc, out, err = run_cli(capsys, 'replay', tmp_path / 'drive', '--checkpoint', checkpoint,
                           '--json')
    assert rc == 0, err
    report = json.loads(out)
    assert report['compared'] == 12 and len(report['steps']) == 12


def _untrained_checkpoint(path: Path, **config) -> None:
    from av_td3_ros.checkpoint import save_checkpoint
    from av_td3_ros.config import TD3Config
    from av_td3_ros.td3 import TD3
    save_checkpoint(path, TD3(TD3Config(features_dim=16, hidden=(16, 16), **config)))


def test_play_publishes_with_the_recorded_timing(tmp_path, harness):
    write_drive(tmp_path / 'drive', episodes=2, steps=20)
    with BagReader(tmp_path / 'drive') as reader:
        recorded = [item.message for item in reader.messages([TOPICS.image])]
    got = {'image': [], 'odometry': [], 'path': [], 'control': []}
    lock = threading.Lock()

    def keep(key):
        def callback(msg):
            with lock:
                got[key].append((time.monotonic(), msg))
        return callback

    client = harness.client
    client.create_subscription(Image, TOPICS.image, keep('image'), 100)
    client.create_subscription(Odometry, TOPICS.odometry, keep('odometry'), 100)
    client.create_subscription(VehicleControl, TOPICS.control, keep('control'), 100)
    client.create_subscription(PathMsg, TOPICS.waypoints, keep('path'), QoSProfile(
        depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL))
    result = bag_tool('play', tmp_path / 'drive', '--rate', '2', '--wait-for-subscribers', '20',
                      '--topics', TOPICS.image, TOPICS.odometry, TOPICS.waypoints,
                      TOPICS.control)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1])['published'] == {
        TOPICS.image: 40, TOPICS.odometry: 40, TOPICS.waypoints: 1, TOPICS.control: 40}
    wait_for(lambda: len(got['image']) == 40 and len(got['control']) == 40, 10,
             'every played message')
    assert len(got['odometry']) == 40 and len(got['path']) == 1
    images = [msg for _, msg in got['image']]
    for sent, msg in zip(recorded, images, strict=True):
        assert (msg.header.stamp.sec, msg.header.stamp.nanosec) == (
            sent.header.stamp.sec, sent.header.stamp.nanosec)
        assert (msg.width, msg.height, msg.encoding, msg.step) == (32, 24, 'bgra8', 128)
        assert bytes(msg.data) == sent.data.tobytes()
    assert len(got['path'][0][1].poses) == 100
    # 39 frame intervals of 50 ms at rate 2: >= 0.975 s apart (timing kept, not flooded)
    span = got['image'][-1][0] - got['image'][0][0]
    assert 0.9 <= span <= 3.0, span


def test_record_cli(tmp_path, harness):
    publisher = harness.client.create_publisher(Float32, '/bag_test/speed', 10)
    latched = harness.client.create_publisher(PathMsg, '/bag_test/path', QoSProfile(
        depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL))
    latched.publish(PathMsg())
    process = subprocess.Popen(
        [sys.executable, '-m', 'av_td3_ros.tools.bag_tool', 'record', str(tmp_path / 'rec'),
         '--topics', '/bag_test/speed', '/bag_test/path', '--storage', 'sqlite3',
         '--duration', '5'], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: publisher.get_subscription_count() > 0, 20, 'the recorder')
    time.sleep(0.3)
    for i in range(20):
        publisher.publish(Float32(data=float(i)))
        time.sleep(0.01)
    out, err = process.communicate(timeout=30)
    assert process.returncode == 0, err
    assert json.loads(out.strip().splitlines()[-1])['recorded'] == {
        '/bag_test/speed': 20, '/bag_test/path': 1}
    with BagReader(tmp_path / 'rec') as reader:
        assert reader.offered_qos('/bag_test/path') == (True, True)
        values = [m.message.data for m in reader.messages(['/bag_test/speed'])]
    assert values == [float(i) for i in range(20)]
