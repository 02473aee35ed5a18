"""av_td3_ros: TD3 with end-to-end CNNs for camera-based driving, as ROS 2 nodes."""

__version__ = '0.1.0'
