"""
Scale-out: 1, 2 and 4 actors (simulator + policy, each node its own process) feeding one
realtime trainer, as ``bringup train_sim --actors N`` starts them.

``actors_env_steps_per_s``: transitions per second that reached the trainer, all actors together
(the sims run synchronously, as fast as their policy answers: 800x600 bgra8 camera, the packaged
parameters); ``actors_trainer_updates_per_s``: TD3 updates per second of the trainer meanwhile
(realtime mode: it updates flat out, batch 256, NatureCNN); ``actors_cpu_s_per_env_step``: CPU
seconds that the actor processes (sims + policies) spent per env step, i.e. what one more actor
costs a fleet machine; ``actors_trainer_cpu_s_per_s``: the trainer's CPU use. On a 2-core machine
the total saturates: the figures say where the cores went. Run alone: ``python
bench/bench_fleet.py``.
"""

from __future__ import annotations

import io
import json
import os
import random
import subprocess
import sys
import time

ACTOR_COUNTS = (1, 2, 4)
MEASURE_S = 20.0
START_TIMEOUT_S = 300.0
TRAINER = {'mode': 'realtime', 'learning_starts': 256, 'buffer_capacity': 20000,
           'checkpoint_every': 0, 'stats_period': 0.5}


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process (0 once it is gone)."""
    try:
        with open(f'/proc/{pid}/stat') as f:
            fields = f.read().rsplit(')', 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf('SC_CLK_TCK')


def _measure(n_actors: int) -> dict:
    """Child process: bring the graph up, wait for updates from every actor, measure a window."""
    import threading

    from av_td3_interfaces.msg import TrainerStats
    from av_td3_ros.ros.bringup import actor_roles, ProcessBringup
    from av_td3_ros.ros.common import TRAINER_STATS
    import rclpy
    from rclpy.qos import QoSProfile, ReliabilityPolicy

    rclpy.init()
    node = rclpy.create_node('bench_fleet_observer')
    latest: list[TrainerStats] = []
    node.create_subscription(TrainerStats, TRAINER_STATS, latest.append,
                             QoSProfile(depth=1, reliability=ReliabilityPolicy.BEST_EFFORT))
    threading.Thread(target=rclpy.spin, args=(node,), daemon=True).start()
    graph = ProcessBringup('train_sim', overrides={'av_td3_trainer': TRAINER},
                           roles=actor_roles(n_actors, 'bench_car'), output=io.StringIO())
    graph.start()
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not (latest and latest[-1].total_it > 0 and len(latest[-1].actor_ids) == n_actors):
            if time.monotonic() > deadline or graph.exited():
                raise RuntimeError(f'{n_actors} actors: no updates with every actor feeding '
                                   f'within {START_TIMEOUT_S:.0f} s (exited: {graph.exited()})')
            time.sleep(0.2)
        actors = [p.pid for key, p in graph.processes.items() if 'trainer' not in key]
        trainer = graph.processes['av_td3_trainer'].pid

        def sample() -> tuple[float, TrainerStats, float, float]:
            return (time.monotonic(), latest[-1], sum(map(_cpu_seconds, actors)),
                    _cpu_seconds(trainer))
        t0, s0, a0, c0 = sample()
        time.sleep(MEASURE_S)
        t1, s1, a1, c1 = sample()
    finally:
        graph.stop()
    steps = s1.transitions - s0.transitions
    return {'env_steps_per_s': steps / (t1 - t0),
            'updates_per_s': (s1.total_it - s0.total_it) / (t1 - t0),
            'cpu_s_per_env_step': (a1 - a0) / steps if steps else float('nan'),
            'trainer_cpu_s_per_s': (c1 - c0) / (t1 - t0)}


def _env() -> dict:
    env = dict(os.environ)
    taken = env.get('ROS_DOMAIN_ID', '')
    env['ROS_DOMAIN_ID'] = str(random.choice([d for d in range(1, 102) if str(d) != taken]))
    env['ROS_AUTOMATIC_DISCOVERY_RANGE'] = 'LOCALHOST'
    return env


def run() -> dict:
    figures: dict[str, dict[str, float]] = {
        'actors_env_steps_per_s': {}, 'actors_trainer_updates_per_s': {},
        'actors_cpu_s_per_env_step': {}, 'actors_trainer_cpu_s_per_s': {}}
    for n in ACTOR_COUNTS:
        out = subprocess.run([sys.executable, __file__, '--measure', str(n)], env=_env(),
                             capture_output=True, text=True, timeout=START_TIMEOUT_S + 200,
                             check=True).stdout
        result = json.loads(out.strip().splitlines()[-1])
        for key, name in (('env_steps_per_s', 'actors_env_steps_per_s'),
                          ('updates_per_s', 'actors_trainer_updates_per_s'),
                          ('cpu_s_per_env_step', 'actors_cpu_s_per_env_step'),
                          ('trainer_cpu_s_per_s', 'actors_trainer_cpu_s_per_s')):
            figures[name][str(n)] = round(result[key], 4 if 'cpu' in key else 2)
    return figures


if __name__ == '__main__':
    if '--measure' in sys.argv:
        print(json.dumps(_measure(int(sys.argv[sys.argv.index('--measure') + 1]))), flush=True)
        os._exit(0)        # the observer's spin thread is mid-spin; nothing to flush
    else:
        print(json.dumps(run()))
