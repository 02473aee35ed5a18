"""
Train on the embedded simulator: sim (synchronous) + policy (train mode) + trainer.

    ros2 launch av_td3_ros train_sim.launch.py scenario:=1 seed:=3 resume:=latest

Machines without ``ros2 launch`` (ROS 2 from PyPI wheels) run the same nodes, YAML files and
fixed parameters in one process with ``bringup train_sim`` (ros/bringup.py; a test keeps the
two in step).
"""

import os

from ament_index_python.packages import get_package_share_directory
from av_td3_ros.ros.dds import dds_environment
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, SetEnvironmentVariable
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue
from launch_ros.substitutions import FindPackageShare


def generate_launch_description() -> LaunchDescription:
    """Describe the training graph of DESIGN §4."""
    config = PathJoinSubstitution([FindPackageShare('av_td3_ros'), 'config'])
    scenario = LaunchConfiguration('scenario')
    seed = LaunchConfiguration('seed')
    # strings stay strings (launch_ros would read '' as YAML null)
    checkpoint_dir = ParameterValue(LaunchConfiguration('checkpoint_dir'), value_type=str)
    resume = ParameterValue(LaunchConfiguration('resume'), value_type=str)
    return LaunchDescription([
        DeclareLaunchArgument('scenario', default_value='0',
                              description='traffic: 0 none, 1 light, 2 heavy'),
        DeclareLaunchArgument('seed', default_value='0', description='simulator seed'),
        DeclareLaunchArgument('checkpoint_dir', default_value='checkpoints',
                              description='where the trainer writes and finds checkpoints'),
        DeclareLaunchArgument('resume', default_value='',
                              description="checkpoint to resume from: a path, 'latest' or ''"),
        DeclareLaunchArgument('sim_params_file',
                              default_value=PathJoinSubstitution([config, 'sim.yaml'])),
        DeclareLaunchArgument('policy_params_file',
                              default_value=PathJoinSubstitution([config, 'policy.yaml'])),
        DeclareLaunchArgument('trainer_params_file',
                              default_value=PathJoinSubstitution([config, 'trainer.yaml'])),
        # 800x600 camera frames over Fast DDS (DESIGN §4): the environment bringup sets too.
        *[SetEnvironmentVariable(name, value) for name, value in dds_environment(
            os.path.join(get_package_share_directory('av_td3_ros'), 'config')).items()],
        Node(package='av_td3_ros', executable='sim_node', name='av_td3_sim', output='screen',
             parameters=[LaunchConfiguration('sim_params_file'),
                         {'scenario': scenario, 'seed': seed}]),
        Node(package='av_td3_ros', executable='policy_node', name='av_td3_policy',
             output='screen',
             parameters=[LaunchConfiguration('policy_params_file'),
                         {'train': True, 'checkpoint_dir': checkpoint_dir}]),
        Node(package='av_td3_ros', executable='trainer_node', name='av_td3_trainer',
             output='screen',
             parameters=[LaunchConfiguration('trainer_params_file'),
                         {'checkpoint_dir': checkpoint_dir,
                          'resume': resume}]),
    ])
