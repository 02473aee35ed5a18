"""
Train in CARLA through carla-ros-bridge: drive_carla.launch.py with train:=true, plus the trainer.

    ros2 launch av_td3_ros train_carla.launch.py town:=Town01 scenario:=1

Takes every argument of drive_carla.launch.py (town, scenario, weather, seed, ...) and
checkpoint_dir. The policy node explores and publishes transitions; the trainer learns,
broadcasts weights and serves ~/save_checkpoint and ~/load_checkpoint (docs/carla.md).
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, IncludeLaunchDescription
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node


def generate_launch_description() -> LaunchDescription:
    share = get_package_share_directory('av_td3_ros')
    # Arguments given on the command line (town:=..., scenario:=...) reach the included file.
    drive = IncludeLaunchDescription(
        PythonLaunchDescriptionSource(os.path.join(share, 'launch', 'drive_carla.launch.py')),
        launch_arguments={'train': 'true'}.items())
    trainer = Node(package='av_td3_ros', executable='trainer_node', name='av_td3_trainer',
                   output='screen', emulate_tty=True,
                   parameters=[os.path.join(share, 'config', 'trainer.yaml'),
                               {'checkpoint_dir': LaunchConfiguration('checkpoint_dir')}])
    return LaunchDescription([
        DeclareLaunchArgument('checkpoint_dir', default_value='checkpoints',
                              description='where the trainer saves and loads checkpoints'),
        drive, trainer])
