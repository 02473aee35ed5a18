"""
Simulator throughput: the gym env with its 84x84 observation, and the ROS synchronous loop.

``sim_steps_per_s``: ``AvTd3Drive-v0`` (scenario 1, light traffic), env.step + resets timed, the
driving policy (the baseline, so that episodes last) not timed; ``sim_steps_per_cpu_s`` is the same
per CPU second of the process (less sensitive to other load on the machine).
``ros_sync_steps_per_s``: ``sim_node`` (synchronous mode, 400x300 bgra8 camera) and a trivial
controller node answering every frame with a stamped control, in two processes over DDS
(``FASTDDS_BUILTIN_TRANSPORTS=LARGE_DATA``, localhost discovery, a ROS domain of their own).
``ros_inprocess_steps_per_s``: the same two nodes in one process on bringup's ``PooledExecutor``;
``ros_inprocess_stock_executor_steps_per_s`` on rclpy's stock MultiThreadedExecutor
(ros2/rclpy#1452).
Run alone: ``python bench/bench_sim.py``.
"""

import json
import os
import pathlib
import random
import subprocess
import sys
import time

HERE = pathlib.Path(__file__).resolve().parent
GYM_STEPS = 6000
ROS_WARMUP_S = 4.0
ROS_MEASURE_S = 8.0
SIM_PARAMETERS = {'camera_width': 400, 'camera_height': 300, 'mode': 'synchronous', 'scenario': 1}


def gym_steps_per_s(steps: int = GYM_STEPS) -> tuple[float, float]:
    """
    Steps per second of env.step (+ resets) for the 84x84 observation, scenario 1.

    Returns (per wall-clock second, per CPU second of this process): on a shared, loaded
    machine the second is the better estimate of what one free core does.
    """
    import gymnasium as gym

    from av_td3_ros.driving.classical_controller import PurePursuitController
    import av_td3_ros.sim  # noqa: F401 - registers AvTd3Drive-v0

    env = gym.make('AvTd3Drive-v0', scenario=1)
    controller = PurePursuitController()
    obs, info = env.reset(seed=0)
    for _ in range(200):                      # warm-up: textures, caches
        obs, _, terminated, truncated, info = env.step(controller.act(obs['vector']))
    timed, cpu, episode = 0.0, 0.0, 0
    for _ in range(steps):
        action = controller.act(obs['vector'], gap_ahead_m=info['gap_ahead_m'])
        start, start_cpu = time.perf_counter(), time.process_time()
        obs, _, terminated, truncated, info = env.step(action)
        if terminated or truncated:
            episode += 1
            obs, info = env.reset(seed=episode)
        timed += time.perf_counter() - start
        cpu += time.process_time() - start_cpu
        if terminated or truncated:
            controller.reset()
    env.close()
    return steps / timed, steps / cpu


def _trivial_controller():
    """A node answering each camera frame with a stamped control; ``arrivals`` times the frames."""
    from av_td3_interfaces.msg import VehicleControl
    from av_td3_ros.ros.common import VehicleTopics
    from rclpy.node import Node
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image

    node = Node('bench_trivial_controller')
    reliable = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
    topics = VehicleTopics()
    pub = node.create_publisher(VehicleControl, topics.control, reliable)
    node.arrivals = []

    def on_image(msg: Image) -> None:
        node.arrivals.append(time.monotonic())
        control = VehicleControl(throttle=0.3)
        control.header.stamp = msg.header.stamp
        pub.publish(control)

    node.create_subscription(Image, topics.image, on_image,
                             QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE))
    return node


def _steps_per_s(arrivals: list[float]) -> float:
    window = [t for t in arrivals if t >= arrivals[0] + ROS_WARMUP_S] if arrivals else []
    return (len(window) - 1) / (window[-1] - window[0]) if len(window) > 1 else 0.0


def _controller_main() -> None:
    """Child process: the trivial controller alone; prints frames/s."""
    import rclpy

    rclpy.init()
    node = _trivial_controller()
    end = time.monotonic() + ROS_WARMUP_S + ROS_MEASURE_S + 30.0
    while time.monotonic() < end:
        rclpy.spin_once(node, timeout_sec=0.1)
        if node.arrivals and node.arrivals[-1] - node.arrivals[0] > ROS_WARMUP_S + ROS_MEASURE_S:
            break
    print(json.dumps({'frames': len(node.arrivals), 'steps_per_s': _steps_per_s(node.arrivals)}),
          flush=True)
    node.destroy_node()
    rclpy.try_shutdown()


def _inprocess_main(executor_kind: str) -> None:
    """Child process: sim_node and the trivial controller on one executor, as bringup runs them."""
    import threading

    from av_td3_ros.ros.executor import PooledExecutor
    from av_td3_ros.ros.sim_node import SimNode
    import rclpy
    from rclpy.executors import MultiThreadedExecutor
    from rclpy.parameter import Parameter

    rclpy.init()
    sim = SimNode(parameter_overrides=[Parameter(k, value=v) for k, v in SIM_PARAMETERS.items()])
    node = _trivial_controller()
    # bringup's pool size for two nodes
    executor = (PooledExecutor if executor_kind == 'pooled' else MultiThreadedExecutor)(4)
    executor.add_node(sim)
    executor.add_node(node)
    threading.Thread(target=executor.spin, daemon=True).start()
    time.sleep(ROS_WARMUP_S + ROS_MEASURE_S)
    print(json.dumps({'frames': len(node.arrivals), 'steps_per_s': _steps_per_s(node.arrivals)}),
          flush=True)
    os._exit(0)        # the executor thread is mid-spin; nothing to flush


def _ros_env() -> dict:
    env = dict(os.environ)
    # a private domain: never disturb (or count frames of) a graph running on this machine
    taken = env.get('ROS_DOMAIN_ID', '')
    env['ROS_DOMAIN_ID'] = str(random.choice([d for d in range(1, 102) if str(d) != taken]))
    env['ROS_AUTOMATIC_DISCOVERY_RANGE'] = 'LOCALHOST'
    env['FASTDDS_BUILTIN_TRANSPORTS'] = 'LARGE_DATA'
    return env


def _frames_per_s(out: str, what: str) -> float:
    result = json.loads(out.strip().splitlines()[-1])
    if result['frames'] < 10:
        raise RuntimeError(f'{what}: the controller received only {result["frames"]} frames')
    return result['steps_per_s']


def ros_sync_steps_per_s() -> float:
    """sim_node + trivial controller, separate processes, synchronous mode, 400x300 camera."""
    env = _ros_env()
    sim = subprocess.Popen(
        [sys.executable, '-m', 'av_td3_ros.ros.sim_node', '--ros-args',
         *[a for k, v in SIM_PARAMETERS.items() for a in ('-p', f'{k}:={v}')],
         '--log-level', 'warn'],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        out = subprocess.run([sys.executable, __file__, '--controller'], env=env,
                             capture_output=True, text=True, timeout=120, check=True).stdout
    finally:
        sim.terminate()
        try:
            sim.wait(timeout=10)
        except subprocess.TimeoutExpired:
            sim.kill()
    return _frames_per_s(out, 'separate processes')


def ros_inprocess_steps_per_s(executor_kind: str) -> float:
    """The same two nodes in one process on a 4-thread PooledExecutor or rclpy's stock one."""
    out = subprocess.run([sys.executable, __file__, '--inprocess', executor_kind],
                         env=_ros_env(), capture_output=True, text=True, timeout=120,
                         check=True).stdout
    return _frames_per_s(out, f'one process, {executor_kind} executor')


def run() -> dict:
    wall, cpu = gym_steps_per_s()
    return {'sim_steps_per_s': round(wall, 1), 'sim_steps_per_cpu_s': round(cpu, 1),
            'ros_sync_steps_per_s': round(ros_sync_steps_per_s(), 1),
            'ros_inprocess_steps_per_s': round(ros_inprocess_steps_per_s('pooled'), 1),
            'ros_inprocess_stock_executor_steps_per_s':
                round(ros_inprocess_steps_per_s('stock'), 1)}


if __name__ == '__main__':
    if '--controller' in sys.argv:
        _controller_main()
    elif '--inprocess' in sys.argv:
        _inprocess_main(sys.argv[sys.argv.index('--inprocess') + 1])
    else:
        print(json.dumps(run()))
