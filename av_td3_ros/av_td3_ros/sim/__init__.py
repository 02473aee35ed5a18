"""
Sim: the embedded driving simulator and the reward, free of rclpy.

``road`` (the procedural road network), ``world`` (bicycle-model ego, NPC traffic, route,
events), ``render`` (the numpy camera), ``env`` (the gymnasium env) and ``reward`` (the one
reward/termination function, also used on CARLA). It may import ``driving.observation`` (the
observation and action mapping the env shares with the policy node); never ``learning``,
``formats``, ``ros`` or ``apps``.

Importing this package registers the gymnasium environment ``AvTd3Drive-v0``
(``av_td3_ros.sim.env.AvTd3DriveEnv``); ``ros/sim_node.py`` puts the same world on the ROS graph.
"""

from gymnasium.envs.registration import register, registry

ENV_ID = 'AvTd3Drive-v0'

if ENV_ID not in registry:
    register(id=ENV_ID, entry_point='av_td3_ros.sim.env:AvTd3DriveEnv')
