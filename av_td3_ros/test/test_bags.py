"""
Bags without rosbag2: types from the .msg files, writing, reading, raw drives -> transitions.

Bags written here are read back with rosbags' own reader and the definitions the bag embeds
(no project code on the reading side), and with rclpy's deserializer, so a wrong definition, a
lost message or a mangled field fails the test.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
import sqlite3
import subprocess
import sys
import threading

from av_td3_interfaces.msg import StepFeedback, Transition
from av_td3_ros.driving.observation import build_vector, image_to_gray, ObservationSpec, Route
from av_td3_ros.ros import bags
from av_td3_ros.ros.bags import (
    bag_transitions, BagError, BagReader, BagWriter, project_typestore, RawTopics,
    replay_policy, TRANSITION_TYPE, TransitionBagWriter)
import numpy as np
import pytest
from rclpy.serialization import deserialize_message, serialize_message
from rosbags.highlevel import AnyReader
from rosbags.rosbag2 import Reader
from rosbags.typesys import get_typestore, Stores
import yaml

SPEC = ObservationSpec()
INTERFACE_TYPES = ('PolicyWeights', 'StepFeedback', 'TrainerStats', 'Transition',
                   'VehicleControl')


def _transition(i: int) -> Transition:
    rng = np.random.default_rng(i)
    msg = Transition()
    msg.header.stamp.sec, msg.header.stamp.nanosec = 100 + i, 7
    msg.actor_id = f'actor_{i % 2}'
    msg.episode_id = i // 3
    msg.step = i % 3
    msg.policy_version = 4
    msg.frame_height = msg.frame_width = 84
    msg.obs_frames = rng.integers(0, 256, 4 * 84 * 84, dtype=np.uint8).tobytes()
    msg.obs_vector = rng.uniform(-1, 1, 53).astype(np.float32).tolist()
    msg.action = [0.25, -0.5]
    msg.reward = 0.5 * i
    msg.next_frame = rng.integers(0, 256, 84 * 84, dtype=np.uint8).tobytes()
    msg.next_vector = rng.uniform(-1, 1, 53).astype(np.float32).tolist()
    msg.terminated = i == 4
    msg.truncated = i == 5
    return msg


def test_interface_types_hash_like_rosidl():
    """The .msg files registered in rosbags give the type hashes rosidl generated."""
    share = bags.interfaces_msg_dir()
    typestore = project_typestore()
    for name in INTERFACE_TYPES:
        generated = json.loads((share / f'{name}.json').read_text())['type_hashes'][0]
        assert generated['type_name'] == f'av_td3_interfaces/msg/{name}'
        assert typestore.hash_rihs01(generated['type_name']) == generated['hash_string'], name


def test_msg_dir_falls_back_to_the_source_tree(monkeypatch):
    def not_installed(name):
        raise bags.PackageNotFoundError(name)

    monkeypatch.setattr(bags, 'get_package_share_directory', not_installed)
    found = bags.interfaces_msg_dir()
    assert found == Path(bags.__file__).resolve().parents[3] / 'av_td3_interfaces' / 'msg'
    assert (found / 'Transition.msg').is_file()


@pytest.mark.parametrize('storage', bags.STORAGES)
def test_transition_bag_reads_back_independently(tmp_path, storage):
    path = tmp_path / 'transitions'
    sent = [_transition(i) for i in range(6)]
    with TransitionBagWriter(path, storage) as writer:
        for i, msg in enumerate(sent):
            writer.write_transition(serialize_message(msg), 1_000_000_000 + i * 50_000_000)

    meta = yaml.safe_load((path / 'metadata.yaml').read_text())['rosbag2_bagfile_information']
    assert meta['storage_identifier'] == storage
    assert meta['message_count'] == 6
    assert meta['duration']['nanoseconds'] == 250_000_000
    assert meta['starting_time']['nanoseconds_since_epoch'] == 1_000_000_000
    (topic,) = meta['topics_with_message_count']
    assert topic['message_count'] == 6
    assert topic['topic_metadata']['name'] == '/av_td3/transitions'
    assert topic['topic_metadata']['type'] == TRANSITION_TYPE
    assert topic['topic_metadata']['serialization_format'] == 'cdr'
    assert topic['topic_metadata']['offered_qos_profiles'][0]['reliability'] == 'reliable'
    rosidl = json.loads((bags.interfaces_msg_dir() / 'Transition.json').read_text())
    assert topic['topic_metadata']['type_description_hash'] == (
        rosidl['type_hashes'][0]['hash_string'])
    for entry in meta['relative_file_paths']:
        assert (path / entry).is_file()

    # rosbags alone, with the definitions the bag carries (empty default store)
    with AnyReader([path], default_typestore=get_typestore(Stores.EMPTY)) as reader:
        (connection,) = reader.connections
        assert (connection.topic, connection.msgtype, connection.msgcount) == (
            '/av_td3/transitions', TRANSITION_TYPE, 6)
        got = [(ts, reader.deserialize(raw, connection.msgtype), raw)
               for _, ts, raw in reader.messages()]
    assert [ts for ts, _, _ in got] == [1_000_000_000 + i * 50_000_000 for i in range(6)]
    for msg, (_, decoded, raw) in zip(sent, got, strict=True):
        assert decoded.actor_id == msg.actor_id and decoded.step == msg.step
        assert decoded.header.stamp.sec == msg.header.stamp.sec
        np.testing.assert_array_equal(decoded.obs_frames, np.frombuffer(msg.obs_frames, np.uint8))
        np.testing.assert_array_equal(decoded.next_vector, np.float32(msg.next_vector))
        assert decoded.reward == pytest.approx(msg.reward)
        assert (decoded.terminated, decoded.truncated) == (msg.terminated, msg.truncated)
        assert deserialize_message(raw, Transition) == msg


def test_writer_is_thread_safe(tmp_path):
    data = serialize_message(_transition(1))
    with TransitionBagWriter(tmp_path / 'threads', 'sqlite3') as writer:
        def worker(k):
            for i in range(50):
                writer.write_transition(data, k * 1000 + i)
        threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    with Reader(tmp_path / 'threads') as reader:
        assert reader.message_count == 200
        assert sorted(ts for _, ts, _ in reader.messages()) == sorted(
            k * 1000 + i for k in range(4) for i in range(50))


def test_writer_refusals(tmp_path):
    with pytest.raises(BagError, match='storage must be one of'):
        BagWriter(tmp_path / 'x', 'rosbag1')
    (tmp_path / 'exists').mkdir()
    with pytest.raises(BagError, match='never overwritten'):
        BagWriter(tmp_path / 'exists')
    with BagWriter(tmp_path / 'ok') as writer:
        with pytest.raises(BagError, match='unknown message type'):
            writer.add_topic('/x', 'foo_msgs/msg/Nope')
        with pytest.raises(BagError, match='was not added'):
            writer.write('/y', b'', 0)
    with pytest.raises(BagError, match='closed'):
        writer.write('/x', b'', 0)


def _feedback_bytes(step: int) -> bytes:
    msg = StepFeedback()
    msg.step = step
    msg.reason = 'r' * step
    return serialize_message(msg)


def test_corrupt_message_and_missing_topic_are_named(tmp_path):
    path = tmp_path / 'corrupt'
    with BagWriter(path, 'mcap') as writer:
        writer.add_topic('/fb', 'av_td3_interfaces/msg/StepFeedback')
        for step in range(4):
            data = _feedback_bytes(step)
            writer.write('/fb', data[:9] if step == 2 else data, step * 10**8)
    with BagReader(path) as reader:
        with pytest.raises(BagError, match=r'no topic /camera .*it has: /fb'):
            reader.require({'/camera': 'sensor_msgs/msg/Image'})
        with pytest.raises(BagError, match='/fb is av_td3_interfaces/msg/StepFeedback, expected'):
            reader.require({'/fb': 'sensor_msgs/msg/Image'})
        seen = []
        with pytest.raises(BagError, match=r'message 2 on /fb .*at 0\.200 s cannot be decoded'):
            for item in reader.messages():
                seen.append(item.message.step)
        assert seen == [0, 1]
    with pytest.raises(BagError, match='no such bag'):
        BagReader(tmp_path / 'nothing')
    (tmp_path / 'empty').mkdir()
    with pytest.raises(BagError, match='not a readable rosbag2 bag'):
        BagReader(tmp_path / 'empty')


@pytest.mark.parametrize('dropped', ['all', 'ours'])
def test_bag_without_definitions_decodes_with_the_distro_types(tmp_path, dropped):
    """
    A Humble-style bag (no definitions, no distro) reads with Humble's types + ours.

    With ``ours`` only the StepFeedback definition is missing (a bag mixing recorders): the
    types the bag defines come from the bag, the rest from the fallback store.
    """
    path = tmp_path / 'humble'
    typestore = project_typestore()
    types = typestore.types
    with BagWriter(path, 'sqlite3', typestore) as writer:
        writer.add_topic('/speed', 'std_msgs/msg/Float32')
        writer.add_topic('/fb', 'av_td3_interfaces/msg/StepFeedback')
        writer.write_message('/speed', types['std_msgs/msg/Float32'](data=3.5), 1)
        writer.write('/fb', _feedback_bytes(3), 2)
    db = sqlite3.connect(path / 'humble.db3')
    where = '' if dropped == 'all' else " WHERE topic_type LIKE 'av_td3_interfaces/%'"
    db.execute('DELETE FROM message_definitions' + where)
    db.execute("UPDATE topics SET type_description_hash = ''")
    db.commit()
    db.close()
    meta_path = path / 'metadata.yaml'
    meta = yaml.safe_load(meta_path.read_text())
    info = meta['rosbag2_bagfile_information']
    del info['ros_distro']
    for topic in info['topics_with_message_count']:
        topic['topic_metadata']['type_description_hash'] = ''
    meta_path.write_text(yaml.safe_dump(meta))

    with BagReader(path) as reader:
        assert reader.ros_distro == ''
        decoded = {m.topic: m.message for m in reader.messages()}
        assert reader.offered_qos('/fb') == (True, False)
    assert decoded['/speed'].data == 3.5
    assert decoded['/fb'].step == 3 and decoded['/fb'].reason == 'rrr'


# ---------------------------------------------------------------------------------- raw drives

ROUTE = np.stack([np.arange(0.0, 200.0, 2.0), np.zeros(100)], axis=1)


def _header(types, stamp: int):
    return types['std_msgs/msg/Header'](
        types['builtin_interfaces/msg/Time'](stamp // 10**9, stamp % 10**9), 'ego')


def _pose_of(step: int) -> tuple[float, float, float, float]:
    return 2.0 * step, 0.3 - 0.05 * step, 0.04 * step, 4.0 + step  # x, y, yaw, speed


def _image_pixels(episode: int, step: int) -> np.ndarray:
    rng = np.random.default_rng(100 * episode + step)
    return rng.integers(0, 256, (24, 32, 4), dtype=np.uint8)


def _action_of(episode: int, step: int) -> tuple[float, float, float]:
    """(steer, throttle, brake) recorded for a frame."""
    return (0.5 if step % 2 else 0.0), (0.0 if step == 3 else 0.6), (0.4 if step == 3 else 0.0)


def write_drive(path: Path, *, episodes: int = 2, steps: int = 6,
                missing_control: tuple[int, int] | None = None,
                route_late: bool = False, storage: str = 'mcap') -> None:
    """
    Write a raw drive: the DESIGN §4 topics as the embedded simulator and the actor publish them.

    Per frame, in recorded order: camera image, step feedback, odometry (after the image, as
    DDS may deliver it), then the control that answers the frame.
    """
    typestore = project_typestore()
    ty = typestore.types
    topics = RawTopics()
    with BagWriter(path, storage, typestore) as writer:
        writer.add_topic(topics.image, 'sensor_msgs/msg/Image')
        writer.add_topic(topics.odometry, 'nav_msgs/msg/Odometry')
        writer.add_topic(topics.waypoints, 'nav_msgs/msg/Path', transient_local=True)
        writer.add_topic(topics.control, 'av_td3_interfaces/msg/VehicleControl')
        writer.add_topic(topics.feedback, 'av_td3_interfaces/msg/StepFeedback')
        point, quat = ty['geometry_msgs/msg/Point'], ty['geometry_msgs/msg/Quaternion']
        pose_cls, vector3 = ty['geometry_msgs/msg/Pose'], ty['geometry_msgs/msg/Vector3']
        start = 5 * 10**9

        def write_route(at):
            poses = [ty['geometry_msgs/msg/PoseStamped'](
                _header(ty, start), pose_cls(point(x, y, 0.0), quat(0.0, 0.0, 0.0, 1.0)))
                for x, y in ROUTE]
            writer.write_message(topics.waypoints, ty['nav_msgs/msg/Path'](
                _header(ty, start), poses), at)

        if not route_late:
            write_route(start - 10**6)
        for episode in range(episodes):
            for step in range(steps):
                stamp = start + (episode * steps + step) * 50_000_000
                pixels = _image_pixels(episode, step)
                writer.write_message(topics.image, ty['sensor_msgs/msg/Image'](
                    _header(ty, stamp), 24, 32, 'bgra8', 0, 128, pixels.reshape(-1)), stamp)
                last = step == steps - 1
                writer.write_message(topics.feedback, ty['av_td3_interfaces/msg/StepFeedback'](
                    _header(ty, stamp), episode, step, 0.0 if step == 0 else 0.5 * step,
                    last and episode == 0, last and episode == 1, '', [], np.zeros(0, np.float32),
                    2.0 * step, 0.0, 0.0), stamp + 1)
                x, y, yaw, speed = _pose_of(step)
                covariance = np.zeros(36)
                odom = ty['nav_msgs/msg/Odometry'](
                    _header(ty, stamp), 'ego',
                    ty['geometry_msgs/msg/PoseWithCovariance'](pose_cls(
                        point(x, y, 0.0), quat(0.0, 0.0, math.sin(yaw / 2), math.cos(yaw / 2))),
                        covariance),
                    ty['geometry_msgs/msg/TwistWithCovariance'](ty['geometry_msgs/msg/Twist'](
                        vector3(speed, 0.0, 0.0), vector3(0.0, 0.0, 0.0)), covariance))
                writer.write_message(topics.odometry, odom, stamp + 2)
                if route_late and episode == 0 and step == 0:
                    write_route(stamp + 3)
                if missing_control != (episode, step):
                    steer, throttle, brake = _action_of(episode, step)
                    control = ty['av_td3_interfaces/msg/VehicleControl'](
                        _header(ty, stamp), throttle, steer, brake, False, False)
                    writer.write_message(topics.control, control, stamp + 20_000_000)


def _expected_stack(episode: int, step: int) -> np.ndarray:
    stack = np.zeros((4, 84, 84), np.uint8)
    for back in range(min(4, step + 1)):
        pixels = _image_pixels(episode, step - back)
        stack[3 - back] = image_to_gray(pixels.tobytes(), 32, 24, 'bgra8')
    return stack


def _expected_vector(step: int) -> np.ndarray:
    x, y, yaw, speed = _pose_of(step)
    return build_vector(Route(ROUTE), x, y, yaw, speed, SPEC)[0]


def test_raw_drive_becomes_the_actors_transitions(tmp_path):
    write_drive(tmp_path / 'drive', missing_control=(1, 2))
    with BagReader(tmp_path / 'drive') as reader:
        got = list(bag_transitions(reader, SPEC, source='auto'))
    # 5 per episode (the last frame only ends one); episode 1 step 2 had no recorded control
    assert [(t.episode_id, t.step) for _, _, t in got] == (
        [(0, s) for s in range(5)] + [(1, s) for s in (0, 1, 3, 4)])
    assert {stream for stream, _, _ in got} == {'bag:drive'}
    for _, _, t in got:
        episode, step = t.episode_id, t.step
        np.testing.assert_array_equal(t.obs_frames, _expected_stack(episode, step))
        np.testing.assert_array_equal(t.next_frame, _expected_stack(episode, step + 1)[-1])
        np.testing.assert_allclose(t.obs_vector, _expected_vector(step), atol=1e-6)
        np.testing.assert_allclose(t.next_vector, _expected_vector(step + 1), atol=1e-6)
        steer, throttle, brake = _action_of(episode, step)
        np.testing.assert_allclose(t.action, [steer, throttle - brake], atol=1e-6)
        assert t.reward == pytest.approx(0.5 * (step + 1))
        last = step + 1 == 5
        assert (t.terminated, t.truncated) == (last and episode == 0, last and episode == 1)


def test_bag_of_transitions_is_read_as_is(tmp_path):
    path = tmp_path / 'transitions'
    sent = [_transition(i) for i in range(4)]
    with TransitionBagWriter(path) as writer:
        for i, msg in enumerate(sent):
            writer.write_transition(serialize_message(msg), i)
    with BagReader(path) as reader:
        got = list(bag_transitions(reader, SPEC))
    assert [(s, i, t.step) for s, i, t in got] == [
        (m.actor_id, i, m.step) for i, m in enumerate(sent)]
    np.testing.assert_array_equal(got[2][2].obs_frames, np.frombuffer(sent[2].obs_frames,
                                                                      np.uint8))
    with BagReader(path) as reader, pytest.raises(BagError, match='frames are 84x84, the config'):
        list(bag_transitions(reader, ObservationSpec(image_size=64)))


def test_raw_drive_without_feedback_cannot_give_rewards(tmp_path):
    path = tmp_path / 'nofb'
    write_drive(tmp_path / 'full')
    with BagReader(tmp_path / 'full') as src, BagWriter(path) as writer:
        for topic, msgtype in src.topics().items():
            if topic != RawTopics().feedback:
                writer.add_topic(topic, msgtype)
        for item in src.messages():
            if item.topic != RawTopics().feedback:
                writer.write_message(item.topic, item.message, item.timestamp_ns)
    with BagReader(path) as reader, pytest.raises(BagError,
                                                  match='no topic /av_td3/step_feedback'):
        list(bag_transitions(reader, SPEC, source='raw'))


class ConstantPolicy:
    """A fixed action; enough to check the arithmetic of the replay report."""

    spec = SPEC

    def act(self, image, vector):
        assert image.shape == (4, 84, 84) and vector.shape == (53,)
        return np.array([0.0, 0.6], np.float32)


def test_replay_report_compares_with_recorded_controls(tmp_path):
    write_drive(tmp_path / 'drive', route_late=True, missing_control=(1, 4))
    with BagReader(tmp_path / 'drive') as reader:
        report = replay_policy(reader, ConstantPolicy())
    assert report.frames == 12
    assert report.skipped == {
        'no route yet: no waypoints (nav_msgs/Path) received': 1,
        'no control recorded for this frame': 1}
    compared = [(e, s) for e in range(2) for s in range(6) if (e, s) not in ((0, 0), (1, 4))]
    assert report.compared == len(compared) == len(report.steps)
    d_steer = [abs(_action_of(e, s)[0]) for e, s in compared]
    d_tb = [abs(0.6 - (_action_of(e, s)[1] - _action_of(e, s)[2])) for e, s in compared]
    assert report.mean_abs_steer_diff == pytest.approx(np.mean(d_steer), abs=1e-6)
    assert report.mean_abs_throttle_brake_diff == pytest.approx(np.mean(d_tb), abs=1e-6)
    agree = [s % 2 == 0 and s != 3 for e, s in compared]
    assert report.agreement_rate == pytest.approx(np.mean(agree))
    assert report.to_dict()['steps'][0]['recorded'] == pytest.approx([0.5, 0.6])


def test_sqlite_bag_keeps_flushed_messages_when_the_writer_dies(tmp_path):
    """A process killed before close(): the .db3 still holds what was committed."""
    script = (
        'import os, sys\n'
        'from av_td3_ros.ros.bags import TransitionBagWriter\n'
        'writer = TransitionBagWriter(sys.argv[1], "sqlite3", flush_period_s=3600.0)\n'
        'for i in range(30):\n'
        '    writer.write_transition(bytes.fromhex(sys.argv[2]), i)\n'
        'writer.flush()\n'
        # a tiny page cache, so that uncommitted pages spill into the file as in a long run
        'writer._thread.submit(writer._writer.storage.conn.execute, "PRAGMA cache_size=4")\n'
        'for i in range(30, 130):\n'
        '    writer.write_transition(bytes.fromhex(sys.argv[2]), i)\n'
        'writer._thread.submit(lambda: None).result()\n'   # written, not committed
        'os._exit(0)\n')
    data = serialize_message(_transition(2))
    subprocess.run([sys.executable, '-c', script, str(tmp_path / 'dead'), data.hex()],
                   check=True, timeout=60)
    assert not (tmp_path / 'dead' / 'metadata.yaml').exists()
    assert (tmp_path / 'dead' / 'dead.db3-journal').exists()   # the unfinished transaction
    with BagReader(tmp_path / 'dead' / 'dead.db3') as reader:
        steps = [m.message.step for m in reader.messages()]
    assert not (tmp_path / 'dead' / 'dead.db3-journal').exists()   # rolled back, not ignored
    assert len(steps) == 30 and set(steps) == {2 % 3}   # the 100 after flush() were not committed
