"""
The policy node's per-frame decisions, without ROS: act on a paired frame, then publish or hold.

:class:`Responder` owns what one configuration of the node decides between its inputs and its
publishers: it swaps a staged policy in between two frames, steps the actor (braking on stale
input), publishes the transitions a frame completes, holds the control while the learner's
insert allowance is used up (train mode) and releases it on fresh stats, answers the frames
whose odometry never came and sends the watchdog's brakes, and logs each change of the reason
it holds the vehicle for. The node gives it the publishing functions and its logger.
"""

from __future__ import annotations

from collections.abc import Callable
import time

from av_td3_ros.driving.actor_core import (
    ActorCore, BRAKE_ACTION, InsertBudget, NO_POLICY_REASON, stale_input_reason,
    TransitionData)
from av_td3_ros.driving.pairing import Answer, Frame, InputPairing
from av_td3_ros.driving.policy_diagnostics import ActorStats
from av_td3_ros.driving.policy_loader import build_policy, StagedPolicy

LATE_ODOMETRY = ('no odometry with the camera stamp arrived within sync_timeout; pairing with '
                 'the nearest (set odometry_sync:=latest if the clocks differ)')


class Responder:
    """One configuration's actor, pairing, rate limit and brake reason, wired to publishers."""

    def __init__(self, core: ActorCore, pairing: InputPairing, input_timeout: float,
                 build_control: Callable[[int, object], object],
                 publish_control: Callable[[object], None],
                 publish_transition: Callable[[TransitionData], None], logger,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.core, self.pairing, self.input_timeout = core, pairing, input_timeout
        self.build_control = build_control
        self._publish_control = publish_control
        self._publish_transition = publish_transition
        self._logger = logger
        self._clock = clock
        self.stats = ActorStats()
        self.budget = InsertBudget()
        self.held: tuple[int, object] | None = None    # (stamp, control) waiting for the learner
        self.hold_ended = -1.0         # a released hold restarts the watchdog's clock
        self.brake_reason: str | None = 'not active'
        self.policy_info: StagedPolicy | None = None
        self.load_error = ''

    def use_policy(self, staged: StagedPolicy | None) -> None:
        """Take a built policy (the initial checkpoint, or a staged one between two frames)."""
        if staged is not None:
            self.core.set_policy(staged.policy, staged.version)
            self.policy_info = staged
            self.load_error = ''

    def load_initial(self, path: str, device: str) -> None:
        """
        Load checkpoint_path (trusted configuration, unlike service requests), logging how.

        A failure does not fail the configuration: the node goes active and holds the vehicle
        with full brake, saying why (``load_error``), which is safer than leaving the vehicle
        uncommanded.
        """
        try:
            staged = build_policy(path, device)
        except Exception as exc:  # any failure: report it, keep holding
            self.load_error = f'checkpoint_path {path} failed to load: {exc}'
            self._logger.error(self.load_error)
            return
        self.use_policy(staged)
        self._logger.info(f'loaded {staged.source} (total_it {staged.total_it}, '
                          f'sha256 {staged.sha256[:12]})')

    def publish_transitions(self, transitions: list[TransitionData]) -> None:
        for transition in transitions:
            self._publish_transition(transition)
            self.budget.on_published()
            self.stats.counts['transitions_published'] += 1

    def answer(self, answer: Answer | None, now: float, staged: StagedPolicy | None = None
               ) -> None:
        """
        Act on a paired frame and publish (or, rate-limited, hold) its control.

        ``staged`` (a policy taken from the loader) is swapped in first, frame or not.
        """
        self.use_policy(staged)
        if answer is None:
            return
        frame = answer.frame
        stale = stale_input_reason(now, frame.received, self.pairing.last_odometry,
                                   self.input_timeout)
        result = self.core.step(frame.stamp, frame.gray, answer.pose, stale)
        if result.brake_reason == NO_POLICY_REASON and self.load_error:
            result.brake_reason = f'{self.load_error}; {result.brake_reason}'
        self.publish_transitions(result.transitions)
        control = self.build_control(frame.stamp, result.action)
        if self.held is not None:              # superseded before the learner allowed it
            self.core.withdraw_action(self.held[0])
            self.stats.counts['frames_superseded'] += 1
            self.held = None
        self.pairing.answered(frame.stamp, control)
        if self.core.train and self.budget.must_hold:
            self.held = (frame.stamp, control)
        else:
            self._publish_control(control)
        self.stats.answered(self._clock(), frame.received, result.inference_s)
        self.note_brake(result.brake_reason)

    def on_image(self, stamp_ns: int, gray, received: float,
                 staged: StagedPolicy | None = None) -> None:
        """
        Take a decoded camera frame: act once its odometry is there (maybe at once).

        A frame re-published with a stamp already answered (a synchronous simulator that missed
        our control) gets the control it already got, unless that control is held.
        """
        repeated = self.pairing.repeated(stamp_ns)
        if repeated is not None:
            self.use_policy(staged)
            self.pairing.last_image = received
            self.stats.counts['frames_repeated'] += 1
            if self.held is None:
                self._publish_control(repeated)
            return
        if self.pairing.pending is not None:        # overtaken before its odometry came
            self.stats.counts['frames_superseded'] += 1
        self.answer(self.pairing.on_image(Frame(stamp_ns, gray, received)), self._clock(),
                    staged)

    def on_odometry(self, stamp_ns: int, pose, staged: StagedPolicy | None = None) -> None:
        """Take a validated pose: act on the frame it pairs with, if one waits for it."""
        now = self._clock()
        self.stats.odometry.add(now)
        self.answer(self.pairing.on_odometry(stamp_ns, pose, now), now, staged)

    def on_stats(self, insert_allowance: int, now: float) -> None:
        """Renew the learner's budget; release a held control it now allows."""
        self.budget.on_stats(insert_allowance)
        if self.held is not None and not self.budget.must_hold:
            _, control = self.held
            self.held = None
            self.hold_ended = now          # the simulator only steps from now on
            self._publish_control(control)

    def on_tick(self, now: float, now_ns: int, staged: StagedPolicy | None = None) -> None:
        """Answer a frame whose odometry is late; brake on stale input (not while holding)."""
        late = self.pairing.on_tick(now)
        if late is not None and late.pose is not None:
            self._logger.warning(LATE_ODOMETRY, throttle_duration_sec=10.0)
        self.answer(late, now, staged)
        if self.held is not None:
            return
        reason = self.pairing.stale_reason(now, self.input_timeout, self.hold_ended)
        if reason is not None:
            self.stats.counts['watchdog_brakes'] += 1
            self._publish_control(self.build_control(now_ns, BRAKE_ACTION))
            self.note_brake(reason)

    def note_brake(self, reason: str | None) -> None:
        """Log when the node starts or stops holding the vehicle, and why (once per change)."""
        if reason is not None and reason != self.brake_reason:
            self._logger.warning(f'holding the vehicle with full brake: {reason}')
        elif reason is None and self.brake_reason is not None:
            self._logger.info('driving')
        self.brake_reason = reason
