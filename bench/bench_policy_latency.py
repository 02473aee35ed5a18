"""
Policy latency over DDS: 800x600 bgra8 image published -> vehicle control received.

The policy node runs as its own process (``python -m av_td3_ros.ros.policy_node``, deploy mode,
a freshly initialised policy export as its checkpoint); this process plays the vehicle: it
latches a route, publishes odometry + camera at 20 Hz with the same stamp, and times each control
by the image stamp it echoes. It runs twice: a reliable camera (the node's default QoS), and a
best-effort one (sensor-data QoS, as CARLA's ROS 2 camera and most camera drivers publish) with
the node's matching ``image_qos_reliability:=best_effort``. Both processes use the project's Fast
DDS profile (config/fastdds.xml: shared memory with a segment large enough for camera images;
with the LARGE_DATA builtin transport alone, odometry beside the images stalls; measured:
docs/bench.md#design-measurements).
"""

import array
import os
import pathlib
import random
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = pathlib.Path(__file__).resolve().parent
FASTDDS_PROFILE = HERE.parent / 'av_td3_ros' / 'config' / 'fastdds.xml'
FRAMES = int(os.environ.get('BENCH_POLICY_FRAMES', '400'))
WARMUP_FRAMES = 40
RATE_HZ = 20.0
WIDTH, HEIGHT = 800, 600


def _environment() -> dict:
    env = dict(os.environ)
    env['FASTDDS_BUILTIN_TRANSPORTS'] = 'LARGE_DATA'
    profile_variable = ('FASTRTPS_DEFAULT_PROFILES_FILE' if env.get('ROS_DISTRO') == 'humble'
                        else 'FASTDDS_DEFAULT_PROFILES_FILE')   # Fast DDS 2 / Fast DDS 3
    env[profile_variable] = str(FASTDDS_PROFILE)
    env.setdefault('ROS_AUTOMATIC_DISCOVERY_RANGE', 'LOCALHOST')
    env.setdefault('ROS_DOMAIN_ID', str(random.randint(60, 99)))
    env['PYTHONUNBUFFERED'] = '1'
    return env


def _write_policy(directory: pathlib.Path) -> pathlib.Path:
    import torch

    from av_td3_ros.formats.policy_export import export_td3_policy
    from av_td3_ros.learning.config import TD3Config
    from av_td3_ros.learning.td3 import TD3
    torch.manual_seed(0)
    path = directory / 'bench_policy.safetensors'
    path.write_bytes(export_td3_policy(TD3(TD3Config())))
    return path


def _measure(frames: int, reliable: bool = True) -> list[float]:
    """Publish camera + odometry, return image-publish -> control-received latencies (s)."""
    from av_td3_interfaces.msg import VehicleControl
    from av_td3_ros.ros.allocator import keep_large_buffers
    from geometry_msgs.msg import PoseStamped
    from nav_msgs.msg import Odometry, Path
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import DurabilityPolicy, QoSProfile, qos_profile_sensor_data, ReliabilityPolicy
    from sensor_msgs.msg import Image

    keep_large_buffers()          # as the embedded simulator's node does
    rclpy.init()
    node = rclpy.create_node('bench_policy_vehicle')
    sent: dict[tuple[int, int], float] = {}
    latencies: list[float] = []
    answered: set = set()

    def on_control(msg: VehicleControl) -> None:
        key = (msg.header.stamp.sec, msg.header.stamp.nanosec)
        start = sent.get(key)
        if start is not None and key not in answered:
            answered.add(key)
            latencies.append(time.perf_counter() - start)

    node.create_subscription(VehicleControl, '/carla/ego_vehicle/vehicle_control_cmd',
                             on_control, 10)
    image_pub = node.create_publisher(
        Image, '/carla/ego_vehicle/rgb_front/image',
        QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE) if reliable
        else qos_profile_sensor_data)
    odom_pub = node.create_publisher(Odometry, '/carla/ego_vehicle/odometry', 10)
    route_pub = node.create_publisher(
        Path, '/carla/ego_vehicle/waypoints',
        QoSProfile(depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL))
    route = Path()
    route.header.frame_id = 'map'
    for i in range(200):
        pose = PoseStamped()
        pose.pose.position.x = 2.0 * i
        route.poses.append(pose)
    route_pub.publish(route)

    image = Image(height=HEIGHT, width=WIDTH, encoding='bgra8', step=WIDTH * 4)
    rng = np.random.default_rng(0)
    image.data = array.array('B', rng.integers(0, 256, HEIGHT * WIDTH * 4, np.uint8).tobytes())
    odometry = Odometry()
    odometry.header.frame_id = 'map'
    odometry.pose.pose.orientation.w = 1.0
    odometry.twist.twist.linear.x = 5.0
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    count = 0

    def publish() -> None:
        nonlocal count
        stamp = node.get_clock().now().to_msg()
        odometry.header.stamp = image.header.stamp = stamp
        odometry.pose.pose.position.x = 0.25 * count
        odom_pub.publish(odometry)
        sent[(stamp.sec, stamp.nanosec)] = time.perf_counter()
        image_pub.publish(image)
        count += 1

    # Wait until the policy node is up and answers (its start-up includes importing torch).
    deadline = time.monotonic() + 120.0
    while not latencies and time.monotonic() < deadline:
        publish()
        end = time.monotonic() + 1.0 / RATE_HZ
        while time.monotonic() < end:
            executor.spin_once(timeout_sec=max(end - time.monotonic(), 0.0))
    if not latencies:
        raise RuntimeError('the policy node never answered an image')
    latencies.clear()
    next_time = time.monotonic()
    for _ in range(frames + WARMUP_FRAMES):
        publish()
        next_time += 1.0 / RATE_HZ
        while time.monotonic() < next_time:
            executor.spin_once(timeout_sec=max(next_time - time.monotonic(), 0.0))
    end = time.monotonic() + 1.0
    while time.monotonic() < end:
        executor.spin_once(timeout_sec=0.05)
    node.destroy_node()
    rclpy.shutdown()
    if len(latencies) < frames // 2:
        raise RuntimeError(f'only {len(latencies)} of {frames + WARMUP_FRAMES} images answered')
    return latencies[WARMUP_FRAMES:]


def _run_once(reliable: bool) -> np.ndarray:
    """Start the policy node in its own process; image -> control latencies in ms."""
    env = _environment()
    os.environ.update(env)
    reliability = 'reliable' if reliable else 'best_effort'
    with tempfile.TemporaryDirectory(prefix='bench_policy_') as tmp:
        policy_path = _write_policy(pathlib.Path(tmp))
        log_path = pathlib.Path(tmp) / 'policy_node.log'
        with open(log_path, 'w') as log:
            node = subprocess.Popen(
                [sys.executable, '-m', 'av_td3_ros.ros.policy_node', '--ros-args',
                 '-p', 'train:=false', '-p', f'checkpoint_path:={policy_path}',
                 '-p', 'num_threads:=1', '-p', f'image_qos_reliability:={reliability}'],
                env=env, stdout=log, stderr=subprocess.STDOUT)
            try:
                latencies = np.array(_measure(FRAMES, reliable)) * 1e3
            except Exception:
                print(log_path.read_text()[-3000:], file=sys.stderr)
                raise
            finally:
                node.terminate()
                try:
                    node.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    node.kill()
                    node.wait()
    return latencies


def run() -> dict:
    """Image -> control latency with a reliable and with a best-effort camera."""
    figures = {}
    for key, reliable in (('policy_latency', True), ('policy_latency_best_effort', False)):
        latencies = _run_once(reliable)
        figures[f'{key}_ms_p50'] = round(float(np.percentile(latencies, 50)), 3)
        figures[f'{key}_ms_p99'] = round(float(np.percentile(latencies, 99)), 3)
        figures[f'{key}_frames'] = int(latencies.size)
    # the node inherits this environment: ONEDNN_MAX_CPU_ISA / ATEN_CPU_CAPABILITY emulate a
    # smaller CPU (e.g. AVX2 without native bf16 on an AVX-512 one)
    from av_td3_ros.learning.td3 import cpu_kernel_limits
    from bench_trainer import cpu_flags
    capability, onednn_isa = cpu_kernel_limits()
    figures.update(policy_latency_cpu_flags=cpu_flags(), policy_latency_cpu_capability=capability,
                   policy_latency_onednn_max_isa=onednn_isa)
    return figures


if __name__ == '__main__':
    print(run())
