"""
Apps: the programs a person runs, each a ``main()`` over the packages below.

``demo`` (the main job behind ``make demo``), ``bag_tool`` (bags: info, train, replay, play,
record), ``checkpoint_tool`` (inspect, export, convert) and ``baseline`` (the classical
controller on the gym env or a running graph). Apps may import every other sub-package and
rclpy; nothing imports an app.
"""
