"""
The embedded driving simulator (no rclpy): road network, vehicles, renderer and gym env.

Importing this package registers the gymnasium environment ``AvTd3Drive-v0``
(``av_td3_ros.sim.env.AvTd3DriveEnv``); ``nodes/sim_node.py`` puts the same world on the ROS graph.
"""

from gymnasium.envs.registration import register, registry

ENV_ID = 'AvTd3Drive-v0'

if ENV_ID not in registry:
    register(id=ENV_ID, entry_point='av_td3_ros.sim.env:AvTd3DriveEnv')
