"""
Drive (or, with train:=true, act for training) in CARLA through carla-ros-bridge.

    ros2 launch av_td3_ros drive_carla.launch.py town:=Town01 \
        checkpoint_path:=$PWD/checkpoints/td3_step_20000.pth

Starts carla-ros-bridge (its carla_ros_bridge.launch.py: town, synchronous mode, fixed delta
seconds), carla_spawn_objects with config/carla_objects.json (the ego vehicle ``ego_vehicle`` with
the 800x600 front RGB camera, collision and lane invasion sensors, odometry), the episode node
(routes, step feedback, resets) and the policy node with control_output:=carla. Needs a running
CARLA server (0.9.13-0.9.16), carla-ros-bridge built and sourced, and the carla wheel of the
server's version; see docs/carla.md. train_carla.launch.py includes this file with train:=true.
"""

import os

from ament_index_python.packages import get_package_share_directory
from av_td3_ros.ros.dds import dds_environment
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, IncludeLaunchDescription, SetEnvironmentVariable
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

# launch argument -> (default, description)
ARGUMENTS = {
    'host': ('localhost', 'CARLA server host'),
    'port': ('2000', 'CARLA server port'),
    'timeout': ('10', 'seconds the bridge waits for the CARLA server'),
    'town': ('Town01', 'CARLA town (or an .xodr file) the bridge loads'),
    'role_name': ('ego_vehicle', 'role name of the ego vehicle (objects file id)'),
    'objects_file': ('', 'carla_spawn_objects definition; empty = config/carla_objects.json'),
    'spawn_point': ('None', 'initial ego pose "x,y,z,roll,pitch,yaw" in the ROS map frame '
                    '(degrees); None = a random spawn point'),
    'synchronous_mode': ('True', 'bridge ticks CARLA in synchronous mode'),
    'wait_for_control': ('True', 'in synchronous mode, tick only after the control command '
                         '(synchronous_mode_wait_for_vehicle_control_command)'),
    'fixed_delta_seconds': ('0.05', 'simulated seconds per tick (DESIGN §8: 20 Hz)'),
    'scenario': ('0', 'NPC traffic: 0 none, 1 light, 2 heavy'),
    'weather': ('', 'carla.WeatherParameters preset, e.g. ClearNoon; empty leaves it'),
    'seed': ('0', 'seed of starts, routes and traffic'),
    'train': ('false', 'false: deploy (deterministic policy); true: act for training '
              '(exploration noise, transitions)'),
    'checkpoint_path': ('', 'checkpoint or policy export the policy node loads at start'),
    'episode_params': ('', 'parameter file of the episode node; empty = '
                       'config/carla_episode.yaml'),
}


def _share(*parts: str) -> str:
    return os.path.join(get_package_share_directory('av_td3_ros'), *parts)


def _include(package: str, launch_file: str, arguments: dict) -> IncludeLaunchDescription:
    return IncludeLaunchDescription(
        PythonLaunchDescriptionSource(
            os.path.join(get_package_share_directory(package), launch_file)),
        launch_arguments=arguments.items())


def carla_actions(arg: dict) -> list:
    """Return the bridge, the ego vehicle, the episode node and the policy node."""
    role = arg['role_name']
    return [
        # DESIGN §4: 800x600 frames over Fast DDS (ros/dds.py, as bringup sets them); the
        # bridge, which publishes the camera, is started here and gets the same profile.
        *[SetEnvironmentVariable(name, value)
          for name, value in dds_environment(_share('config')).items()],
        _include('carla_ros_bridge', 'carla_ros_bridge.launch.py', {
            'host': arg['host'], 'port': arg['port'], 'timeout': arg['timeout'],
            'town': arg['town'], 'passive': 'False',
            'synchronous_mode': arg['synchronous_mode'],
            'synchronous_mode_wait_for_vehicle_control_command': arg['wait_for_control'],
            'fixed_delta_seconds': arg['fixed_delta_seconds']}),
        _include('carla_spawn_objects', 'carla_spawn_objects.launch.py', {
            'objects_definition_file': arg['objects_file'],
            'spawn_point_ego_vehicle': arg['spawn_point'], 'spawn_sensors_only': 'False'}),
        Node(package='av_td3_ros', executable='carla_episode_node', name='av_td3_carla_episode',
             output='screen', emulate_tty=True,
             parameters=[arg['episode_params'], {
                 'host': arg['host'], 'port': arg['port'], 'town': arg['town'],
                 'role_name': role, 'scenario': arg['scenario'], 'weather': arg['weather'],
                 'seed': arg['seed']}]),
        Node(package='av_td3_ros', executable='policy_node', name='av_td3_policy',
             output='screen', emulate_tty=True,
             parameters=[_share('config', 'policy.yaml'), {
                 'train': arg['train'], 'control_output': 'carla', 'role_name': role,
                 'checkpoint_path': arg['checkpoint_path']}]),
    ]


def launch_arguments() -> tuple[list, dict]:
    """Declare ARGUMENTS; return the declarations and their LaunchConfigurations."""
    declared = [DeclareLaunchArgument(name, default_value=default, description=description)
                for name, (default, description) in ARGUMENTS.items()]
    declared[list(ARGUMENTS).index('objects_file')] = DeclareLaunchArgument(
        'objects_file', default_value=_share('config', 'carla_objects.json'),
        description=ARGUMENTS['objects_file'][1])
    declared[list(ARGUMENTS).index('episode_params')] = DeclareLaunchArgument(
        'episode_params', default_value=_share('config', 'carla_episode.yaml'),
        description=ARGUMENTS['episode_params'][1])
    return declared, {name: LaunchConfiguration(name) for name in ARGUMENTS}


def generate_launch_description() -> LaunchDescription:
    declared, arg = launch_arguments()
    return LaunchDescription([*declared, *carla_actions(arg)])
