"""Control messages from actions: native, twist, carla (refused without carla_msgs)."""

import importlib.util

from av_td3_interfaces.msg import VehicleControl
from av_td3_ros.driving.actor_core import BRAKE_ACTION, TransitionData, TWIST_FULL_THROTTLE
from av_td3_ros.ros.policy_messages import (
    control_builder, ns_to_stamp, stamp_to_ns, transition_message)
from geometry_msgs.msg import Twist
import numpy as np
import pytest


def test_stamps_round_trip():
    stamp = ns_to_stamp(1_700_000_000_123_456_789)
    assert (stamp.sec, stamp.nanosec) == (1_700_000_000, 123_456_789)
    assert stamp_to_ns(stamp) == 1_700_000_000_123_456_789


def test_native_control_carries_the_stamp_and_the_action():
    msg_type, build = control_builder('native', 1.0)
    assert msg_type is VehicleControl
    msg = build(5_000_000_001, np.array([0.25, 0.5], np.float32))
    assert (msg.header.stamp.sec, msg.header.stamp.nanosec) == (5, 1)
    assert (msg.steer, msg.throttle, msg.brake) == (0.25, 0.5, 0.0)
    brake = build(0, BRAKE_ACTION)
    assert (brake.steer, brake.throttle, brake.brake) == (0.0, 0.0, 1.0)
    partial = build(0, np.array([-0.5, -0.25], np.float32))
    assert (partial.steer, partial.throttle, partial.brake) == (-0.5, 0.0, 0.25)


def test_twist_control_inverts_carla_twist_to_control():
    msg_type, build = control_builder('twist', 1.2)
    assert msg_type is Twist
    msg = build(0, np.array([0.5, 0.25], np.float32))
    assert msg.linear.x == pytest.approx(0.25 * TWIST_FULL_THROTTLE)
    assert msg.angular.z == pytest.approx(-0.5 * 1.2)
    stop = build(0, np.array([0.5, -0.1], np.float32))       # any brake: the zero Twist
    assert (stop.linear.x, stop.angular.z) == (0.0, 0.0)


def test_unknown_or_unavailable_outputs_are_refused():
    with pytest.raises(ValueError, match='one of native, carla, twist'):
        control_builder('ackermann', 1.0)
    if importlib.util.find_spec('carla_msgs') is None:
        with pytest.raises(ValueError, match='needs the carla_msgs package'):
            control_builder('carla', 1.0)
    else:
        _, build = control_builder('carla', 1.0)
        assert build(0, BRAKE_ACTION).brake == 1.0


def test_transition_message_carries_every_field():
    rng = np.random.default_rng(0)
    t = TransitionData(
        stamp=3 * 10**9 + 5, episode_id=2, step=7, policy_version=9,
        obs_frames=rng.integers(0, 256, (4, 84, 84), dtype=np.uint8),
        obs_vector=rng.standard_normal(53).astype(np.float32),
        action=np.array([0.1, -0.2], np.float32), reward=1.5,
        next_frame=rng.integers(0, 256, (84, 84), dtype=np.uint8),
        next_vector=rng.standard_normal(53).astype(np.float32), terminated=False,
        truncated=True)
    msg = transition_message(t, 'host:1/ns/node', 84)
    assert stamp_to_ns(msg.header.stamp) == t.stamp and msg.actor_id == 'host:1/ns/node'
    assert (msg.episode_id, msg.step, msg.policy_version) == (2, 7, 9)
    assert msg.frame_height == msg.frame_width == 84
    assert bytes(msg.obs_frames) == t.obs_frames.tobytes()
    assert bytes(msg.next_frame) == t.next_frame.tobytes()
    np.testing.assert_array_equal(np.asarray(msg.obs_vector, np.float32), t.obs_vector)
    np.testing.assert_array_equal(np.asarray(msg.action, np.float32), t.action)
    assert msg.reward == 1.5 and not msg.terminated and msg.truncated


def test_odometry_path_and_camera_messages_become_plain_values():
    from array import array

    from av_td3_ros.driving.observation import ObservationError
    from av_td3_ros.ros.policy_messages import camera_frame, odometry_pose, path_route
    from geometry_msgs.msg import PoseStamped
    from nav_msgs.msg import Odometry, Path
    from rclpy.serialization import serialize_message
    from sensor_msgs.msg import Image

    odometry = Odometry()
    odometry.pose.pose.position.x, odometry.pose.pose.orientation.w = 3.0, 1.0
    odometry.twist.twist.linear.x = 4.0
    pose = odometry_pose(odometry)
    assert (pose.x, pose.y, pose.yaw, pose.speed) == (3.0, 0.0, 0.0, 4.0)
    odometry.pose.pose.position.x = float('nan')
    with pytest.raises(ObservationError):
        odometry_pose(odometry)
    path = Path(poses=[PoseStamped() for _ in range(3)])
    for i, pose_stamped in enumerate(path.poses):
        pose_stamped.pose.position.x = 2.0 * i
    assert len(path_route(path)) == 3 and path_route(path).length_m == 4.0
    with pytest.raises(ObservationError):
        path_route(Path(poses=path.poses[:1]))
    image = Image(height=2, width=3, encoding='mono8', step=3, data=array('B', range(6)))
    image.header.stamp.sec, image.header.stamp.nanosec = 2, 5
    frame = camera_frame(serialize_message(image))
    assert (frame.stamp_ns, frame.width, frame.encoding) == (2_000_000_005, 3, 'mono8')
    assert frame.data.tolist() == list(range(6))


def test_the_diagnostics_message_carries_status_and_values():
    from av_td3_ros.driving.actor_core import ActorCore
    from av_td3_ros.driving.pairing import InputPairing
    from av_td3_ros.driving.responder import Responder
    from av_td3_ros.ros.policy_messages import diagnostics_message
    from builtin_interfaces.msg import Time
    from diagnostic_msgs.msg import DiagnosticStatus

    core = ActorCore()
    run = Responder(core, InputPairing(), 0.5, None, None, None, None)
    run.brake_reason = 'no camera image received yet'
    msg = diagnostics_message(run, core, 'native', '/car1/av_td3_policy', 'car1-host', 10.0,
                              Time(sec=5, nanosec=7))
    (status,) = msg.status
    assert (msg.header.stamp.sec, msg.header.stamp.nanosec) == (5, 7)
    assert status.name == '/car1/av_td3_policy: policy' and status.hardware_id == 'car1-host'
    assert status.level == DiagnosticStatus.ERROR
    assert status.message.startswith('full brake: no camera image received yet')
    values = {kv.key: kv.value for kv in status.values}
    assert values['mode'] == 'deploy' and values['control_output'] == 'native'
