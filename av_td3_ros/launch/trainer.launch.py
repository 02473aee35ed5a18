"""
The learner alone, for the trainer machine of a fleet (actors elsewhere: actors_sim.launch.py).

    ros2 launch av_td3_ros trainer.launch.py checkpoint_dir:=$HOME/td3_ckpt resume:=latest

Every actor in the same ROS domain feeds it over ``/av_td3/transitions`` and gets its weights
over ``/av_td3/policy_weights``. Without ``ros2 launch``: ``bringup trainer`` (ros/bringup.py).
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
    """Describe the trainer node of DESIGN §4."""
    config = PathJoinSubstitution([FindPackageShare('av_td3_ros'), 'config'])
    checkpoint_dir = ParameterValue(LaunchConfiguration('checkpoint_dir'), value_type=str)
    resume = ParameterValue(LaunchConfiguration('resume'), value_type=str)
    return LaunchDescription([
        DeclareLaunchArgument('checkpoint_dir', default_value='checkpoints',
                              description='where the trainer writes and finds checkpoints'),
        DeclareLaunchArgument('resume', default_value='',
                              description="checkpoint to resume from: a path, 'latest' or ''"),
        DeclareLaunchArgument('trainer_params_file',
                              default_value=PathJoinSubstitution([config, 'trainer.yaml'])),
        *[SetEnvironmentVariable(name, value) for name, value in dds_environment(
            os.path.join(get_package_share_directory('av_td3_ros'), 'config')).items()],
        Node(package='av_td3_ros', executable='trainer_node', name='av_td3_trainer',
             output='screen',
             parameters=[LaunchConfiguration('trainer_params_file'),
                         {'checkpoint_dir': checkpoint_dir, 'resume': resume}]),
    ])
