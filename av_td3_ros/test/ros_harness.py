"""
Test helpers for real rclpy graphs: a private context, a background executor, service calls.

Not a test module (no ``test_`` prefix); imported by the trainer and end-to-end tests.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
import threading
import time
from typing import Any

from av_td3_interfaces.msg import Transition
from av_td3_ros.driving.observation import FrameStack, ObservationSpec
from av_td3_ros.ros.executor import PooledExecutor
import numpy as np
import rclpy
from rclpy._rclpy_pybind11 import InvalidHandle
from rclpy.context import Context
from rclpy.node import Node
from rclpy.parameter import Parameter


class RosHarness:
    """A context of its own with an executor spinning in a thread, plus a client node."""

    def __init__(self) -> None:
        self.context = Context()
        rclpy.init(context=self.context)
        self.client = Node('test_client', context=self.context)
        self.executor = PooledExecutor(num_threads=6, context=self.context)
        self.executor.add_node(self.client)
        self._nodes: list[Node] = [self.client]
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._thread.start()

    def _spin(self) -> None:
        while self.context.ok():
            try:
                self.executor.spin_once(timeout_sec=0.1)
            except InvalidHandle:
                # rclpy race: a node removed by a test destroyed an entity (an event handler)
                # while this thread was building the wait set; the next spin no longer sees it.
                # Without this, one such race ended the thread and every later test timed out.
                continue
            except Exception:  # the context went down under the executor at teardown
                if self.context.ok():
                    raise

    def add(self, node: Node) -> Node:
        self._nodes.append(node)
        self.executor.add_node(node)
        return node

    def remove(self, node: Node) -> None:
        self.executor.remove_node(node)
        self._nodes.remove(node)
        node.destroy_node()

    def call(self, srv_type: Any, name: str, request: Any, timeout: float = 60.0) -> Any:
        """Call a service over DDS and return the response (fails the test on timeout)."""
        client = self.client.create_client(srv_type, name)
        try:
            assert client.wait_for_service(timeout_sec=timeout), f'service {name} not available'
            future = client.call_async(request)
            done = threading.Event()
            future.add_done_callback(lambda _: done.set())
            assert done.wait(timeout), f'service {name} did not answer within {timeout} s'
            return future.result()
        finally:
            self.client.destroy_client(client)

    def shutdown(self) -> None:
        for node in reversed(self._nodes):
            self.executor.remove_node(node)
            node.destroy_node()
        self._nodes.clear()
        self.context.try_shutdown()
        self.executor.shutdown(timeout_sec=5.0)
        self._thread.join(timeout=10.0)


def wait_for(predicate: Callable[[], Any], timeout: float, what: str,
             period: float = 0.05) -> Any:
    """Poll until ``predicate()`` is truthy; return its value or fail saying what was awaited."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(period)
    raise AssertionError(f'timed out after {timeout} s waiting for {what}')


def tiny_graph(checkpoint_dir: Any, batch: int, learning_starts: int) -> dict[str, dict]:
    """Return train_sim overrides for a fast graph: small camera, tiny networks, short episodes."""
    return {
        'av_td3_sim': {'camera_width': 84, 'camera_height': 84, 'max_episode_steps': 40},
        'av_td3_policy': {'checkpoint_dir': str(checkpoint_dir), 'seed': 1},
        'av_td3_trainer': {
            'checkpoint_dir': str(checkpoint_dir), 'features_dim': 16, 'hidden': [16, 16],
            'batch_size': batch, 'learning_starts': learning_starts,
            'samples_per_insert': float(batch), 'spi_error_buffer': 8.0 * batch,
            'broadcast_every': 5, 'stats_period': 0.25, 'num_threads': 1}}


def overrides(params: dict[str, Any]) -> list[Parameter]:
    return [Parameter(name, value=value) for name, value in params.items()]


def episode_transitions(spec: ObservationSpec, n: int, seed: int = 0, actor_id: str = 'test',
                        episode_id: int = 0) -> Iterator[Transition]:
    """
    Yield ``n`` Transition messages of one consistent episode (stacks shift frame by frame).

    Frames are random noise and the reward is the throttle, so a learner has something to fit.
    """
    rng = np.random.default_rng(seed)
    stack = FrameStack(spec.frame_stack, spec.image_size)
    obs = stack.push(rng.integers(0, 256, (spec.image_size,) * 2, dtype=np.uint8))
    vector = rng.uniform(-1, 1, spec.vector_dim).astype(np.float32)
    for step in range(n):
        frame = rng.integers(0, 256, (spec.image_size,) * 2, dtype=np.uint8)
        next_vector = rng.uniform(-1, 1, spec.vector_dim).astype(np.float32)
        action = rng.uniform(-1, 1, 2).astype(np.float32)
        msg = Transition()
        msg.actor_id = actor_id
        msg.episode_id = episode_id
        msg.step = step
        msg.frame_height = msg.frame_width = spec.image_size
        msg.obs_frames = obs.tobytes()
        msg.obs_vector = vector.tolist()
        msg.action = action.tolist()
        msg.reward = float(action[1])
        msg.next_frame = frame.tobytes()
        msg.next_vector = next_vector.tolist()
        msg.terminated = False
        msg.truncated = step == n - 1
        yield msg
        obs, vector = stack.push(frame), next_vector
