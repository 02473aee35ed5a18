"""
ROS: everything that speaks ROS 2, the only package besides ``apps`` that may import rclpy.

The nodes (``sim_node``, ``policy_node``, ``trainer_node``, ``carla_episode_node``) and
``bringup`` (the graph in one process or one per node), their process plumbing (``executor``,
``dds``, ``allocator``), what every node shares (``common``: topic names, QoS profiles, the
parameter table, ``run_node``, the one ``main()``; launch files import it for the names),
the policy node's ROS-typed parts (``policy_settings``: its parameter table; ``policy_messages``:
control and transition messages) and rosbag2 files (``bags``: read and written through
``rosbags``, replayed through ``driving.actor_core``). Nodes stay thin glue: it may import
``driving``, ``learning``, ``formats``, ``sim`` and ``carla``; never ``apps``.
"""
