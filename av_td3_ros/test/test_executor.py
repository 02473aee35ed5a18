"""PooledExecutor: callbacks of nodes in one process keep flowing, errors still surface."""

import threading

from av_td3_ros.ros.executor import PooledExecutor
import pytest
import rclpy
from rclpy.context import Context
from rclpy.qos import QoSProfile, ReliabilityPolicy
from std_msgs.msg import Header

RELIABLE = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
ROUND_TRIPS = 300


@pytest.fixture
def context():
    context = Context()
    rclpy.init(context=context)
    yield context
    context.try_shutdown()


def test_two_nodes_bounce_a_message_in_one_process(context):
    """
    A ping-pong between two nodes on one executor completes its round trips.

    rclpy's stock MultiThreadedExecutor (rclpy 9.1.2) managed about 1 round trip per second here
    with 2 threads (ros2/rclpy#1452): 300 of them would take minutes, not the deadline below.
    """
    ping_node = rclpy.create_node('ping', context=context)
    pong_node = rclpy.create_node('pong', context=context)
    ping = ping_node.create_publisher(Header, 'ping', RELIABLE)
    pong = pong_node.create_publisher(Header, 'pong', RELIABLE)
    done = threading.Event()
    count = [0]

    def on_pong(msg: Header) -> None:
        count[0] += 1
        if count[0] >= ROUND_TRIPS:
            done.set()
        else:
            ping.publish(msg)

    pong_node.create_subscription(Header, 'ping', pong.publish, RELIABLE)
    ping_node.create_subscription(Header, 'pong', on_pong, RELIABLE)
    executor = PooledExecutor(num_threads=2, context=context)
    executor.add_node(ping_node)
    executor.add_node(pong_node)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()
    try:
        # discovery: publish until the first answer comes back
        while count[0] == 0 and not done.wait(0.2):
            ping.publish(Header())
        assert done.wait(30.0), f'only {count[0]} of {ROUND_TRIPS} round trips in 30 s'
    finally:
        executor.shutdown(timeout_sec=5.0)
        spinner.join(timeout=5.0)
        ping_node.destroy_node()
        pong_node.destroy_node()


def test_a_callbacks_exception_reaches_the_spinning_thread(context):
    node = rclpy.create_node('faulty', context=context)

    def fail() -> None:
        raise RuntimeError('callback failed')

    timer = node.create_timer(0.01, fail)
    executor = PooledExecutor(num_threads=2, context=context)
    executor.add_node(node)
    try:
        with pytest.raises(RuntimeError, match='callback failed'):
            for _ in range(500):
                executor.spin_once(timeout_sec=0.1)
    finally:
        timer.cancel()
        executor.shutdown(timeout_sec=5.0)
        node.destroy_node()
