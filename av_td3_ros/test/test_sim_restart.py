"""
The simulator process killed and restarted under a running policy node (issue 14).

``bringup actors_sim`` (simulator + policy, no trainer: no rate limit) runs in two processes;
the simulator is SIGKILLed after ``kill_after`` frames and started again with the same command
and another seed (so its frames differ from the old run's; its stamps restart at the fixed
epoch, its episodes at 0). The policy node runs on. The test records every camera frame and
step feedback of both runs itself and checks every transition the policy publishes from the new
run's first frame on, byte for byte: ``obs_frames`` must be the new run's frames of steps
``step-3 .. step`` of that episode (zero padding before step 0), ``next_frame`` the new run's
frame of ``step+1``; episodes and steps restart at 0. Two cases: a kill after a long run
(stamps of the two runs far apart) and a kill within the policy's frame history (64 frames: the
new run's stamps and (episode, step) keys are the old run's again).

Restarts per case: ``AV_TD3_STRESS_SIM_RESTARTS`` (1 in the normal suite, 5 in ``make
stress``).
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
import threading
import time

from av_td3_interfaces.msg import StepFeedback, Transition
from av_td3_ros.driving.observation import image_to_gray
from av_td3_ros.ros.bringup import ProcessBringup
from av_td3_ros.ros.common import TRANSITIONS, VehicleTopics
import numpy as np
import pytest
from ros_harness import RosHarness, wait_for
from sensor_msgs.msg import Image

pytestmark = [pytest.mark.ros, pytest.mark.stress]

RESTARTS = int(os.environ.get('AV_TD3_STRESS_SIM_RESTARTS', '1'))
SIZE = 84
STACK = 4
CHECKED = 60          # transitions of the new run checked per restart (at least)
HISTORY = 64          # frames the policy's ActorCore keeps (ActorCore history)
FIRST_STEP_MAX = 3    # a new sim's first messages may go out before the policy matched it


class Recorder:
    """Frames, feedback and transitions as the test process receives them, per sim run."""

    def __init__(self, harness: RosHarness) -> None:
        self.lock = threading.Lock()
        self.run = 0
        self.gray: dict[tuple[int, int], np.ndarray] = {}     # (run, stamp ns) -> frame
        self.keys: dict[tuple[int, int, int], int] = {}       # (run, episode, step) -> stamp
        self.transitions: list[tuple[int, Transition]] = []   # (run when received, message)
        self.first_image: dict[int, float] = {}
        topics = VehicleTopics()
        node = self._node = harness.client
        self._subs = [
            node.create_subscription(Image, topics.image, self._on_image, 50),
            node.create_subscription(StepFeedback, topics.step_feedback, self._on_feedback, 50),
            node.create_subscription(Transition, TRANSITIONS, self._on_transition, 500)]

    def _on_image(self, msg: Image) -> None:
        gray = image_to_gray(bytes(msg.data), msg.width, msg.height, msg.encoding, msg.step,
                             SIZE)
        stamp = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
        with self.lock:
            self.gray[(self.run, stamp)] = gray
            self.first_image.setdefault(self.run, time.monotonic())

    def _on_feedback(self, msg: StepFeedback) -> None:
        stamp = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
        with self.lock:
            self.keys[(self.run, msg.episode_id, msg.step)] = stamp

    def _on_transition(self, msg: Transition) -> None:
        with self.lock:
            self.transitions.append((self.run, msg))

    def transitions_of(self, run: int) -> int:
        with self.lock:
            return sum(1 for r, _ in self.transitions if r == run)

    def frames_of(self, run: int) -> int:
        with self.lock:
            return sum(1 for r, _ in self.gray if r == run)

    def expected(self, run: int, episode: int, step: int) -> tuple[np.ndarray, np.ndarray] | None:
        """Return (obs_frames, next_frame) the run's own frames give, None if one is missing."""
        with self.lock:
            stack = np.zeros((STACK, SIZE, SIZE), np.uint8)
            for back in range(min(STACK, step + 1)):
                stamp = self.keys.get((run, episode, step - back))
                if stamp is None or (run, stamp) not in self.gray:
                    return None
                stack[STACK - 1 - back] = self.gray[(run, stamp)]
            stamp = self.keys.get((run, episode, step + 1))
            if stamp is None or (run, stamp) not in self.gray:
                return None
            return stack, self.gray[(run, stamp)]

    def old_frames(self, run: int) -> list[np.ndarray]:
        with self.lock:
            return [g for (r, _), g in self.gray.items() if r < run]

    def close(self) -> None:
        for sub in self._subs:
            self._node.destroy_subscription(sub)


def _check_new_run(recorder: Recorder, run: int) -> dict:
    """Compare every transition of ``run`` with the run's own frames; return the tally."""
    with recorder.lock:
        messages = [m for r, m in recorder.transitions if r == run]
    old = recorder.old_frames(run)
    tally = {'checked': 0, 'unverifiable': 0, 'first': None, 'gaps': 0}
    last = None
    for msg in messages:
        if tally['first'] is None:
            tally['first'] = (msg.episode_id, msg.step)
        elif (msg.episode_id, msg.step) != (last[0], last[1] + 1) and msg.step != 0:
            tally['gaps'] += 1
        last = (msg.episode_id, msg.step)
        expected = recorder.expected(run, msg.episode_id, msg.step)
        frames = np.frombuffer(bytes(msg.obs_frames), np.uint8).reshape(STACK, SIZE, SIZE)
        next_frame = np.frombuffer(bytes(msg.next_frame), np.uint8).reshape(SIZE, SIZE)
        if expected is None:
            tally['unverifiable'] += 1
            continue
        stack, after = expected
        where = f'transition (episode {msg.episode_id}, step {msg.step}) of run {run}'
        for i in range(STACK):
            if not np.array_equal(frames[i], stack[i]):
                of_old = any(np.array_equal(frames[i], g) for g in old)
                raise AssertionError(
                    f"{where}: obs_frames[{i}] is not the new run's frame of step "
                    f'{msg.step - (STACK - 1 - i)}' + (' (it is a frame of the old run)'
                                                       if of_old else '') +
                    ('; zero padding expected' if not stack[i].any() else ''))
        if not np.array_equal(next_frame, after):
            of_old = any(np.array_equal(next_frame, g) for g in old)
            raise AssertionError(f"{where}: next_frame is not the new run's frame of step "
                                 f'{msg.step + 1}' + (' (it is a frame of the old run)'
                                                      if of_old else ''))
        tally['checked'] += 1
    return tally


@pytest.mark.parametrize('kill_after', [150, 20], ids=['long_run', 'within_history'])
def test_sim_restart_never_mixes_runs_in_a_transition(tmp_path, kill_after):
    overrides = {
        'av_td3_sim': {'camera_width': SIZE, 'camera_height': SIZE, 'max_episode_steps': 40,
                       'seed': 0},
        'av_td3_policy': {'checkpoint_dir': str(tmp_path), 'seed': 1}}
    output = io.StringIO()
    graph = ProcessBringup('actors_sim', overrides=overrides, output=output)
    harness = RosHarness()
    recorder = Recorder(harness)
    sims: list[subprocess.Popen] = []
    figures = []
    kills: list[int] = []   # frames of the run at its kill
    try:
        graph.start()
        policy = graph.processes['av_td3_policy']
        sim = graph.processes['av_td3_sim']
        for run in range(RESTARTS + 1):
            if run:
                # kill the running simulator; start the same command with another seed
                os.killpg(sim.pid, signal.SIGKILL)
                sim.wait(30)
                time.sleep(1.0)   # the policy's watchdog brakes meanwhile; nothing in flight
                with recorder.lock:
                    recorder.run = run
                sim = subprocess.Popen(
                    graph.commands['av_td3_sim'] + ['-p', f'seed:={run}'], env=graph.env,
                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                    stderr=subprocess.STDOUT, start_new_session=True)
                sims.append(sim)
                wait_for(lambda r=run: recorder.frames_of(r) >= CHECKED + 5, 120,
                         f'{CHECKED + 5} frames of run {run}:\n{output.getvalue()[-3000:]}')
                # the last transitions of the checked stretch need their feedback too
                time.sleep(1.0)
                tally = _check_new_run(recorder, run)
                episode, step = tally['first']
                assert episode == 0 and step <= FIRST_STEP_MAX, (
                    f'the first transition of run {run} is (episode, step) {tally["first"]}: '
                    f'the transitions of the new run before it were lost')
                assert not tally['gaps'], f'transitions lost within run {run}: {tally}'
                assert tally['checked'] >= CHECKED * 0.9, tally
                figures.append(f'run {run}: {tally}')
                assert policy.poll() is None, output.getvalue()[-3000:]
            if run < RESTARTS:
                wait_for(lambda r=run: recorder.frames_of(r) >= kill_after and
                         recorder.transitions_of(r) >= 5, 120,
                         f'{kill_after} frames and 5 transitions of run {run}:\n'
                         f'{output.getvalue()[-3000:]}')
                frames = recorder.frames_of(run)
                if kill_after < HISTORY:
                    assert frames < HISTORY, (
                        f'run {run} got to {frames} frames before the kill: not within the '
                        f"policy's {HISTORY}-frame history, the case this run is for")
                kills.append(frames)
    finally:
        recorder.close()
        for process in sims:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGINT)
                try:
                    process.wait(15)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)
        code = graph.stop()
        harness.shutdown()
    print(f'\nkill after {kill_after} frames (frames at the kills: {kills}): ' +
          '; '.join(figures))
    log = output.getvalue()
    assert '[bringup] av_td3_policy exited with code' not in log, log[-3000:]
    assert code in (0, 137), log[-3000:]
    at = log.find('Traceback')
    assert at < 0, log[max(0, at - 1500):at + 3000]
