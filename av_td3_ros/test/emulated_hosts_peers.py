"""
Publisher and subscriber processes for test_emulated_hosts (run as a script, not a test module).

``python emulated_hosts_peers.py pub [--count N] [--rate HZ] [--size BYTES] [--wait-subs K]``
publishes, on reliable KEEP_LAST(10) topics, a ``sensor_msgs/Image`` of ``--size`` bytes
(``emu/big``: header.frame_id = sequence number, stamp = send time) and a ``std_msgs/String``
(``emu/small``: the sequence number) at ``--rate``, starting once both topics have ``K``
subscriptions; ``--count 0`` publishes until killed. Lines: ``matched T``, ``pub SEQ T``, ``done``.

``python emulated_hosts_peers.py sub`` prints ``ready`` and then one line per message:
``big SEQ LEN RECV_T SENT_T`` and ``small SEQ RECV_T`` (times from ``time.time()``).
"""

from __future__ import annotations

import argparse
import array
import contextlib
import sys
import time

import rclpy
from rclpy.node import Node
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image
from std_msgs.msg import String

QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=10,
                 reliability=ReliabilityPolicy.RELIABLE)


class Pub(Node):
    """Publish a big and a small message per tick once enough subscriptions matched."""

    def __init__(self, count: int, rate: float, size: int, wait_subs: int) -> None:
        super().__init__('emu_pub')
        self.count, self.size, self.wait_subs = count, size, wait_subs
        self.big = self.create_publisher(Image, 'emu/big', QOS)
        self.small = self.create_publisher(String, 'emu/small', QOS)
        self.seq = 0
        self.matched = False
        self.payload = array.array('B', bytes(size))
        self.timer = self.create_timer(1.0 / rate, self.tick)

    def tick(self) -> None:
        if not self.matched:
            if min(self.big.get_subscription_count(),
                   self.small.get_subscription_count()) < self.wait_subs:
                return
            self.matched = True
            print(f'matched {time.time():.6f}', flush=True)
        if self.count and self.seq >= self.count:
            return
        now = time.time()
        img = Image()
        img.header.frame_id = str(self.seq)
        img.header.stamp.sec = int(now)
        img.header.stamp.nanosec = int((now % 1.0) * 1e9)
        img.height, img.width, img.step, img.encoding = 1, self.size, self.size, 'mono8'
        img.data = self.payload
        self.big.publish(img)
        self.small.publish(String(data=str(self.seq)))
        print(f'pub {self.seq} {now:.6f}', flush=True)
        self.seq += 1
        if self.count and self.seq == self.count:
            print('done', flush=True)


class Sub(Node):
    """Print one line per message received."""

    def __init__(self) -> None:
        super().__init__('emu_sub')
        self.create_subscription(Image, 'emu/big', self.on_big, QOS)
        self.create_subscription(String, 'emu/small', self.on_small, QOS)
        print('ready', flush=True)

    def on_big(self, msg: Image) -> None:
        sent = msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9
        print(f'big {msg.header.frame_id} {len(msg.data)} {time.time():.6f} {sent:.6f}',
              flush=True)

    def on_small(self, msg: String) -> None:
        print(f'small {msg.data} {time.time():.6f}', flush=True)


def main(argv: list[str] | None = None) -> None:
    """Run the publisher or the subscriber until killed."""
    parser = argparse.ArgumentParser()
    parser.add_argument('role', choices=['pub', 'sub'])
    parser.add_argument('--count', type=int, default=0)
    parser.add_argument('--rate', type=float, default=20.0)
    parser.add_argument('--size', type=int, default=35000)
    parser.add_argument('--wait-subs', type=int, default=1)
    args = parser.parse_args(argv)
    rclpy.init()
    node = (Pub(args.count, args.rate, args.size, args.wait_subs) if args.role == 'pub'
            else Sub())
    with contextlib.suppress(KeyboardInterrupt):
        rclpy.spin(node)


if __name__ == '__main__':
    main(sys.argv[1:])
