"""
Messages the policy node takes and publishes: camera, odometry and route in, controls out.

Input messages become the plain values the actor works on (``RawImage``, ``Pose``, ``Route``;
each raises a ValueError subclass for bad input). The one place that turns an action into a
control message.
``control_output`` (DESIGN §4) selects the message: ``native`` av_td3_interfaces/VehicleControl,
``carla`` carla_msgs/CarlaEgoVehicleControl (imported only when selected) or ``twist``
geometry_msgs/Twist for carla_twist_to_control. No rclpy node: message classes, and rclpy's
deserialiser only for the camera encapsulations ``image_cdr`` does not read.
"""

from __future__ import annotations

import array
from collections.abc import Callable

from av_td3_interfaces.msg import Transition, VehicleControl
from av_td3_ros.driving.actor_core import (
    Pose, pose_from_odometry, route_from_points, TransitionData, twist_from_control)
from av_td3_ros.driving.observation import action_to_control, Route
from av_td3_ros.driving.policy_diagnostics import policy_status, policy_values
from av_td3_ros.formats.image_cdr import (
    RawImage, read_image, SerializedImageError, UnsupportedEncapsulation)
from builtin_interfaces.msg import Time
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import Twist
import numpy as np

CONTROL_OUTPUTS = ('native', 'carla', 'twist')

ControlBuilder = Callable[[int, np.ndarray], object]


def stamp_to_ns(stamp: Time) -> int:
    return stamp.sec * 1_000_000_000 + stamp.nanosec


def ns_to_stamp(ns: int) -> Time:
    return Time(sec=ns // 1_000_000_000, nanosec=ns % 1_000_000_000)


def camera_frame(serialized: bytes) -> RawImage:
    """Read a camera frame's bytes; rclpy decodes the (rare) encapsulations ours does not."""
    try:
        return read_image(serialized)
    except UnsupportedEncapsulation as unsupported:
        from rclpy.serialization import deserialize_message
        from sensor_msgs.msg import Image
        try:
            return RawImage.from_message(deserialize_message(serialized, Image))
        except Exception as exc:  # whatever rclpy's decoder raises on bad bytes
            raise SerializedImageError(f'{unsupported}: {exc}') from exc


def odometry_pose(msg) -> Pose:
    """Return the ego pose of a nav_msgs/Odometry (raises ObservationError for NaN or inf)."""
    p, q, v = msg.pose.pose.position, msg.pose.pose.orientation, msg.twist.twist.linear
    return pose_from_odometry((p.x, p.y, p.z), (q.x, q.y, q.z, q.w), (v.x, v.y, v.z))


def path_route(msg) -> Route:
    """Return the route of a nav_msgs/Path (raises ObservationError: < 2 or bad points)."""
    return route_from_points([(s.pose.position.x, s.pose.position.y) for s in msg.poses])


def control_builder(control_output: str, twist_max_steer_angle: float
                    ) -> tuple[type, ControlBuilder]:
    """
    Return (message type, builder(stamp_ns, action) -> message) for ``control_output``.

    Raises ValueError for an unknown output, and for ``carla`` without carla_msgs installed.
    """
    if control_output == 'twist':
        def build_twist(stamp_ns: int, action) -> Twist:
            steer, throttle, brake = action_to_control(action)
            msg = Twist()
            msg.linear.x, msg.angular.z = twist_from_control(
                steer, throttle, brake, twist_max_steer_angle)
            return msg
        return Twist, build_twist
    if control_output == 'carla':
        try:
            from carla_msgs.msg import CarlaEgoVehicleControl as control_type
        except ImportError as exc:
            raise ValueError(
                'control_output carla needs the carla_msgs package (carla-ros-bridge), '
                f'which is not installed here ({exc}); use native or twist, or source the '
                'CARLA ROS bridge workspace') from exc
    elif control_output == 'native':
        control_type = VehicleControl
    else:
        raise ValueError(f'control_output must be one of {", ".join(CONTROL_OUTPUTS)}; '
                         f'got {control_output!r}')

    def build(stamp_ns: int, action):
        steer, throttle, brake = action_to_control(action)
        msg = control_type()
        msg.header.stamp = ns_to_stamp(stamp_ns)
        msg.steer, msg.throttle, msg.brake = steer, throttle, brake
        return msg
    return control_type, build


def transition_message(t: TransitionData, actor_id: str, frame_size: int) -> Transition:
    """Return the av_td3_interfaces/Transition of one transition (frames uint8, rest float32)."""
    msg = Transition()
    msg.header.stamp = ns_to_stamp(t.stamp)
    msg.actor_id = actor_id
    msg.episode_id, msg.step, msg.policy_version = t.episode_id, t.step, t.policy_version
    msg.frame_height = msg.frame_width = frame_size
    # array.array from bytes: the generated setters take it without a per-element check
    msg.obs_frames = array.array('B', t.obs_frames.tobytes())
    msg.obs_vector = array.array('f', t.obs_vector.astype('float32').tobytes())
    msg.action = array.array('f', t.action.astype('float32').tobytes())
    msg.reward = t.reward
    msg.next_frame = array.array('B', t.next_frame.tobytes())
    msg.next_vector = array.array('f', t.next_vector.astype('float32').tobytes())
    msg.terminated, msg.truncated = t.terminated, t.truncated
    return msg


def diagnostics_message(run, core, control_output: str, name: str, hardware_id: str, now: float,
                        stamp) -> DiagnosticArray:
    """
    Build the node's diagnostics: one status ``<name>: policy`` with its level, message and values.

    ``run`` is the configuration's Responder, ``core`` its ActorCore, ``now`` monotonic.
    """
    level, message = policy_status(run.held is not None, run.brake_reason, core.train,
                                   core.policy is not None, run.load_error)
    values = policy_values(run.stats, now, train=core.train, control_output=control_output,
                           policy_info=run.policy_info, load_error=run.load_error,
                           policy_version=core.policy_version, budget=run.budget)
    status = DiagnosticStatus(name=f'{name}: policy', hardware_id=hardware_id,
                              level=getattr(DiagnosticStatus, level), message=message,
                              values=[KeyValue(key=k, value=v) for k, v in values.items()])
    msg = DiagnosticArray(status=[status])
    msg.header.stamp = stamp
    return msg
