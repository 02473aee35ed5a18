"""
ROS: everything that speaks ROS 2, the only package besides ``apps`` that may import rclpy.

The nodes (``sim_node``, ``policy_node``, ``trainer_node``, ``carla_episode_node``) and
``bringup`` (the graph in one process or one per node), their process plumbing (``executor``,
``dds``, ``allocator``), the graph's names (``topics``, plain Python so launch files import it),
the policy node's ROS-typed parts (``policy_settings``: parameter descriptors; ``policy_messages``:
control and transition messages) and rosbag2 files (``bags``: read and written through
``rosbags``, replayed through ``driving.actor_core``). Nodes stay thin glue: it may import
``driving``, ``learning``, ``formats``, ``sim`` and ``carla``; never ``apps``.
"""
