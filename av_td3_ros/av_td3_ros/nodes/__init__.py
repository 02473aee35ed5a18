"""ROS 2 nodes: thin glue over the rclpy-free core."""
