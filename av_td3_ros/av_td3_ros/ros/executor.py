"""
``PooledExecutor``: rclpy's MultiThreadedExecutor without its re-dispatch storm.

rclpy's executor yields every task that is not yet executing, and the MultiThreadedExecutor
submits what it is given to its thread pool. A task still waiting in the pool's queue is therefore
yielded and submitted again on every turn of the spin loop, without waiting: the spin thread holds
the GIL re-queueing no-op copies, and real callbacks wait behind them (ros2/rclpy#1452, fixed
upstream by ros2/rclpy#1547, not in the Kilted 9.1.2 wheels this workspace uses). With
``sim_node`` in synchronous mode and a trivial controller in one process the stock executor
all but stalls the loop and this one does not (``bench/bench_sim.py``, ``ros_inprocess_*``;
measured: docs/bench.md#design-measurements).

The fix is to submit a task once: while it is queued, the spin loop waits for a pool thread to
start something instead of queueing it again. Everything else (callback groups, futures,
exceptions re-raised on the spin thread) is the stock executor's; on an rclpy with the upstream
fix the duplicate never occurs and this class behaves as the stock one.
"""

from __future__ import annotations

from collections.abc import Callable
import threading
import time
from typing import Any

from rclpy.executors import (
    ConditionReachedException, Executor, ExternalShutdownException, MultiThreadedExecutor,
    ShutdownException, TimeoutException)

# how long the spin loop sleeps when the task it was given is still queued (all pool threads busy);
# any task starting ends the wait early
QUEUED_WAIT_S = 0.05
# how long an error in spin() may precede the context's shutdown and still count as part of it
SHUTDOWN_GRACE_S = 1.0


class PooledExecutor(MultiThreadedExecutor):
    """A MultiThreadedExecutor that submits each ready task to its pool exactly once."""

    def __init__(self, num_threads: int | None = None, **kwargs: Any) -> None:
        super().__init__(num_threads=num_threads, **kwargs)
        self._queued: set[Any] = set()
        self._queued_lock = threading.Lock()
        self._task_started = threading.Event()

    def _run(self, task: Callable[[], Any]) -> None:
        with self._queued_lock:
            self._queued.discard(task)
            self._task_started.set()
        task()

    def _spin_once_impl(self, timeout_sec: Any = None,
                        wait_condition: Callable[[], bool] = lambda: False) -> None:
        try:
            task, _, _ = self.wait_for_ready_callbacks(timeout_sec, None, wait_condition)
        except (ExternalShutdownException, ShutdownException, TimeoutException,
                ConditionReachedException):
            return
        with self._queued_lock:
            queued = task in self._queued
            if queued:
                self._task_started.clear()
            else:
                self._queued.add(task)
        if queued:
            self._task_started.wait(QUEUED_WAIT_S)
            return
        self._executor.submit(self._run, task)
        self._futures.append(task)
        for future in self._futures[:]:
            if future.done():
                self._futures.remove(future)
                future.result()  # re-raise a callback's exception on the spin thread


def spin_until_shutdown(executor: Executor) -> None:
    """
    Spin until the context shuts down (SIGINT/SIGTERM: rclpy's handlers shut it down).

    A callback that fails because the context is going down under it is part of the shutdown,
    not a crash: a node stopped by its launcher then exits 0. rclpy raises e.g. "Unable to
    convert call argument" from ``take_message`` in that race, e.g. in a policy node stopped by
    bringup, and at times while the context still says it is up (observed:
    docs/bench.md#design-measurements), hence the grace period: an error that is not followed
    by the shutdown within ``SHUTDOWN_GRACE_S`` is raised.
    """
    try:
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except Exception:
        deadline = time.monotonic() + SHUTDOWN_GRACE_S
        while executor.context.ok() and time.monotonic() < deadline:
            time.sleep(0.01)
        if executor.context.ok():
            raise
