"""
Drive with a trained policy: the policy node alone, for an existing vehicle stack.

    ros2 launch av_td3_ros drive.launch.py checkpoint:=/models/td3_step_20000.pth \
        control_output:=carla namespace:=car1 image_topic:=/car1/camera/image

The stack provides the camera image, odometry and the route (nav_msgs/Path, transient-local) and
consumes the control; each topic is a launch argument remapping the node's default (DESIGN §4).
Machines without ``ros2 launch`` (ROS 2 from PyPI wheels) run the same node and YAML file with
``bringup drive`` (ros/bringup.py; a test keeps the two in step).
"""

import os

from ament_index_python.packages import get_package_share_directory
from av_td3_ros.ros.common import VehicleTopics
from av_td3_ros.ros.dds import dds_environment
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, SetEnvironmentVariable
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue
from launch_ros.substitutions import FindPackageShare

_DEFAULT = VehicleTopics()
# launch argument -> (the node's topic it remaps, description)
TOPICS = {
    'image_topic': (_DEFAULT.image,
                    'camera image (sensor_msgs/Image: bgra8, bgr8, rgb8, rgba8 or mono8)'),
    'odometry_topic': (_DEFAULT.odometry, 'ego odometry (nav_msgs/Odometry)'),
    'waypoints_topic': (_DEFAULT.waypoints,
                        'route (nav_msgs/Path, transient-local, same frame as the odometry)'),
    'control_topic': (_DEFAULT.control,
                      'vehicle control out (type set by control_output)'),
}


def generate_launch_description() -> LaunchDescription:
    """Describe the policy node in deploy mode with its topics remapped."""
    config = PathJoinSubstitution([FindPackageShare('av_td3_ros'), 'config'])
    # strings stay strings (launch_ros would read '' as YAML null)
    checkpoint = ParameterValue(LaunchConfiguration('checkpoint'), value_type=str)
    control_output = ParameterValue(LaunchConfiguration('control_output'), value_type=str)
    return LaunchDescription([
        DeclareLaunchArgument('checkpoint', default_value='',
                              description='checkpoint (.pth) or policy export (.safetensors) '
                                          'to load; relative to checkpoint_dir of the params '
                                          'file. Empty: the node holds the vehicle braked '
                                          'until ~/load_checkpoint is called'),
        DeclareLaunchArgument('control_output', default_value='native',
                              description='native (VehicleControl), carla '
                                          '(CarlaEgoVehicleControl) or twist (Twist for '
                                          'carla_twist_to_control)'),
        DeclareLaunchArgument('namespace', default_value='',
                              description='namespace of the node (and of ~/load_checkpoint)'),
        DeclareLaunchArgument('params_file',
                              default_value=PathJoinSubstitution([config, 'policy.yaml']),
                              description='parameters of av_td3_policy'),
        *[DeclareLaunchArgument(name, default_value=topic, description=description)
          for name, (topic, description) in TOPICS.items()],
        # 800x600 camera frames over Fast DDS (DESIGN §4): the environment bringup sets too.
        # The camera's publisher should use the same profile.
        *[SetEnvironmentVariable(name, value) for name, value in dds_environment(
            os.path.join(get_package_share_directory('av_td3_ros'), 'config')).items()],
        Node(package='av_td3_ros', executable='policy_node', name='av_td3_policy',
             namespace=LaunchConfiguration('namespace'), output='screen',
             parameters=[LaunchConfiguration('params_file'),
                         {'train': False, 'checkpoint_path': checkpoint,
                          'control_output': control_output}],
             remappings=[(topic, LaunchConfiguration(name))
                         for name, (topic, _) in TOPICS.items()]),
    ])
