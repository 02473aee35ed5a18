"""
Actors only: N embedded simulator + policy (train mode) pairs, for a fleet's actor machines.

They collect experience for one trainer elsewhere (trainer.launch.py).

    ros2 launch av_td3_ros actors_sim.launch.py actors:=2 role_prefix:=hostA_car

Each pair gets the role ``<role_prefix><i>`` (``role_prefix`` alone for one actor): its topics
move to ``/carla/<role>/...`` and ``/av_td3/<role>/step_feedback``, its nodes into namespace
``/<role>``. Role names must be unique across the fleet. Without ``ros2 launch``:
``bringup actors_sim --actors 2 --role-prefix hostA_car`` (ros/bringup.py).
"""

import os

from ament_index_python.packages import get_package_share_directory
from av_td3_ros.ros.dds import dds_environment
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction, SetEnvironmentVariable
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.substitutions import FindPackageShare


def actor_nodes(context) -> list:
    """Return the simulator and policy nodes of every actor (the count is a launch argument)."""
    actors = int(LaunchConfiguration('actors').perform(context))
    prefix = LaunchConfiguration('role_prefix').perform(context)
    roles = [prefix] if actors == 1 else [f'{prefix}{i}' for i in range(actors)]
    sim_params = LaunchConfiguration('sim_params_file')
    policy_params = LaunchConfiguration('policy_params_file')
    nodes = []
    for role in roles:
        # one actor with the default role keeps the names of DESIGN §4
        namespace = '' if roles == ['ego_vehicle'] else role
        nodes += [
            Node(package='av_td3_ros', executable='sim_node', name='av_td3_sim',
                 namespace=namespace, output='screen',
                 parameters=[sim_params, {'role_name': role}]),
            Node(package='av_td3_ros', executable='policy_node', name='av_td3_policy',
                 namespace=namespace, output='screen',
                 parameters=[policy_params, {'train': True, 'role_name': role}]),
        ]
    return nodes


def generate_launch_description() -> LaunchDescription:
    """Describe N actors (simulator + policy) of DESIGN §4."""
    config = PathJoinSubstitution([FindPackageShare('av_td3_ros'), 'config'])
    return LaunchDescription([
        DeclareLaunchArgument('actors', default_value='1',
                              description='simulator + policy pairs on this machine'),
        DeclareLaunchArgument('role_prefix', default_value='ego_vehicle',
                              description='role names: <prefix><i> (one actor: <prefix>); '
                                          'unique across the fleet'),
        DeclareLaunchArgument('sim_params_file',
                              default_value=PathJoinSubstitution([config, 'sim.yaml'])),
        DeclareLaunchArgument('policy_params_file',
                              default_value=PathJoinSubstitution([config, 'policy.yaml'])),
        *[SetEnvironmentVariable(name, value) for name, value in dds_environment(
            os.path.join(get_package_share_directory('av_td3_ros'), 'config')).items()],
        OpaqueFunction(function=actor_nodes),
    ])
