"""
A camera at a chosen rate for the flood test: bgra8 images, odometry and a route, one process.

Not a test module. ``python flood_publisher.py RATE SECONDS WIDTH HEIGHT`` publishes odometry
then an image with the same stamp (wall-clock ns at publish, so another process on this host
can time the answer) at RATE Hz for SECONDS, the route once a second, and prints the rate it
achieved as ``published N images in S s``.
"""

from __future__ import annotations

import sys
import time

from av_td3_ros.ros.common import VehicleTopics
from geometry_msgs.msg import PoseStamped
from nav_msgs.msg import Odometry, Path
import numpy as np
import rclpy
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image


def main() -> None:
    """Publish the flood; print what was achieved."""
    rate, seconds, width, height = (float(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3]),
                                    int(sys.argv[4]))
    rclpy.init()
    node = rclpy.create_node('flood_camera')
    topics = VehicleTopics()
    images = node.create_publisher(Image, topics.image, QoSProfile(
        depth=1, reliability=ReliabilityPolicy.RELIABLE))
    odometry = node.create_publisher(Odometry, topics.odometry, 10)
    route = node.create_publisher(Path, topics.waypoints, QoSProfile(
        depth=1, reliability=ReliabilityPolicy.RELIABLE,
        durability=DurabilityPolicy.TRANSIENT_LOCAL))
    path = Path()
    path.header.frame_id = 'map'
    for i in range(100):
        pose = PoseStamped()
        pose.pose.position.x = 2.0 * i
        path.poses.append(pose)
    rng = np.random.default_rng(0)
    pixels = [rng.integers(0, 256, height * width * 4, dtype=np.uint8).tobytes()
              for _ in range(8)]
    image = Image(height=height, width=width, encoding='bgra8', step=width * 4)
    odom = Odometry()
    odom.pose.pose.position.x = 1.0
    odom.pose.pose.orientation.w = 1.0
    odom.twist.twist.linear.x = 5.0
    period = 1.0 / rate
    start = time.monotonic()
    next_time, next_route, count = start, start, 0
    while time.monotonic() - start < seconds:
        now = time.monotonic()
        if now >= next_route:
            route.publish(path)
            next_route += 1.0
        stamp = time.time_ns()
        for msg in (odom, image):
            msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamp, 1_000_000_000)
            msg.header.frame_id = 'ego_vehicle'
        odometry.publish(odom)
        image.data = pixels[count % len(pixels)]
        images.publish(image)
        count += 1
        next_time += period
        delay = next_time - time.monotonic()
        if delay > 0:
            time.sleep(delay)
    print(f'published {count} images in {time.monotonic() - start:.2f} s', flush=True)
    node.destroy_node()
    rclpy.shutdown()


if __name__ == '__main__':
    main()
