"""
Simulator throughput: the gym env with its 84x84 observation, and the ROS synchronous loop.

``sim_steps_per_s``: ``AvTd3Drive-v0`` (scenario 1, light traffic), env.step + resets timed, the
driving policy (the baseline, so that episodes last) not timed; ``sim_steps_per_cpu_s`` is the same
per CPU second of the process (less sensitive to other load on the machine).
``ros_sync_steps_per_s``: ``sim_node`` (synchronous mode, 400x300 bgra8 camera) and a trivial
controller node answering every frame with a stamped control, in two processes over DDS
(``FASTDDS_BUILTIN_TRANSPORTS=LARGE_DATA``, localhost discovery, a ROS domain of their own).
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


def gym_steps_per_s(steps: int = GYM_STEPS) -> tuple[float, float]:
    """
    Steps per second of env.step (+ resets) for the 84x84 observation, scenario 1.

    Returns (per wall-clock second, per CPU second of this process): on a shared, loaded
    machine the second is the better estimate of what one free core does.
    """
    import gymnasium as gym

    from av_td3_ros.baseline import PurePursuitController
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


def _controller_main() -> None:
    """Child process: a trivial controller answering each camera frame; prints frames/s."""
    from av_td3_interfaces.msg import VehicleControl
    import rclpy
    from rclpy.node import Node
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image

    rclpy.init()
    node = Node('bench_trivial_controller')
    reliable = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
    pub = node.create_publisher(VehicleControl, '/carla/ego_vehicle/vehicle_control_cmd',
                                reliable)
    arrivals = []

    def on_image(msg: Image) -> None:
        arrivals.append(time.monotonic())
        control = VehicleControl(throttle=0.3)
        control.header.stamp = msg.header.stamp
        pub.publish(control)

    node.create_subscription(Image, '/carla/ego_vehicle/rgb_front/image', on_image,
                             QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE))
    end = time.monotonic() + ROS_WARMUP_S + ROS_MEASURE_S + 30.0
    while time.monotonic() < end:
        rclpy.spin_once(node, timeout_sec=0.1)
        if arrivals and arrivals[-1] - arrivals[0] > ROS_WARMUP_S + ROS_MEASURE_S:
            break
    window = [t for t in arrivals if t >= arrivals[0] + ROS_WARMUP_S] if arrivals else []
    rate = (len(window) - 1) / (window[-1] - window[0]) if len(window) > 1 else 0.0
    print(json.dumps({'frames': len(arrivals), 'steps_per_s': rate}), flush=True)
    node.destroy_node()
    rclpy.try_shutdown()


def ros_sync_steps_per_s() -> float:
    """sim_node + trivial controller, separate processes, synchronous mode, 400x300 camera."""
    env = dict(os.environ)
    # a private domain: never disturb (or count frames of) a graph running on this machine
    taken = env.get('ROS_DOMAIN_ID', '')
    env['ROS_DOMAIN_ID'] = str(random.choice([d for d in range(1, 102) if str(d) != taken]))
    env['ROS_AUTOMATIC_DISCOVERY_RANGE'] = 'LOCALHOST'
    env['FASTDDS_BUILTIN_TRANSPORTS'] = 'LARGE_DATA'
    sim = subprocess.Popen(
        [sys.executable, '-m', 'av_td3_ros.nodes.sim_node', '--ros-args', '-p',
         'camera_width:=400', '-p', 'camera_height:=300', '-p', 'mode:=synchronous',
         '-p', 'scenario:=1', '--log-level', 'warn'],
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
    result = json.loads(out.strip().splitlines()[-1])
    if result['frames'] < 10:
        raise RuntimeError(f'the controller received only {result["frames"]} frames')
    return result['steps_per_s']


def run() -> dict:
    wall, cpu = gym_steps_per_s()
    return {'sim_steps_per_s': round(wall, 1), 'sim_steps_per_cpu_s': round(cpu, 1),
            'ros_sync_steps_per_s': round(ros_sync_steps_per_s(), 1)}


if __name__ == '__main__':
    if '--controller' in sys.argv:
        _controller_main()
    else:
        print(json.dumps(run()))
