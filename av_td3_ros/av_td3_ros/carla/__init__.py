"""
CARLA: the episode logic that carla-ros-bridge lacks, free of rclpy and of ``import carla``.

``episode`` plans routes on the town's road graph, turns bridge events into the embedded
simulator's reward and termination, and decides resets; ``ros/carla_episode_node.py`` is its
ROS glue and the only place that talks to a CARLA server. It may import ``sim.reward`` (the one
reward function) and ``driving.observation`` (routes and angles); never ``ros`` or ``apps``.
"""
