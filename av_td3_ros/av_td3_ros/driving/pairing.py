"""
Input pairing of the policy node: which pose answers which camera frame, and when.

Plain logic, no rclpy: the node hands every decoded frame and every pose to
:class:`InputPairing`, which says whether to answer the frame now (with which pose), to wait
for its odometry, or to repeat the last control (a re-published frame). ``odometry_sync: stamp``
pairs by stamp (``OdometryBuffer.match``), waiting at most ``sync_timeout``; ``latest`` takes
the newest pose. It also keeps the arrival times the watchdog judges staleness by.
"""

from __future__ import annotations

from dataclasses import dataclass

from av_td3_ros.driving.actor_core import OdometryBuffer, Pose, stale_input_reason
import numpy as np


@dataclass(frozen=True)
class Frame:
    """A decoded camera frame waiting for its answer."""

    stamp: int
    gray: np.ndarray
    received: float         # monotonic arrival time


@dataclass(frozen=True)
class Answer:
    """Answer ``frame`` with ``pose`` (None: no pose usable); ``late``: paired after the wait."""

    frame: Frame
    pose: Pose | None
    late: bool = False


class InputPairing:
    """Frames and poses in; the frames to answer now, with their poses, out."""

    def __init__(self, by_stamp: bool = True, sync_timeout: float = 0.1) -> None:
        self.by_stamp = by_stamp
        self.sync_timeout = sync_timeout
        self.odometry = OdometryBuffer()
        self.pending: Frame | None = None             # waiting for its odometry
        self.last_answer: tuple[int, object] | None = None   # (stamp, control) sent last
        self.last_image: float | None = None
        self.last_odometry: float | None = None

    def repeated(self, stamp: int) -> object | None:
        """Return the control already sent for a frame of this stamp (a re-published one)."""
        if stamp and self.last_answer is not None and stamp == self.last_answer[0]:
            return self.last_answer[1]
        return None

    def on_image(self, frame: Frame) -> Answer | None:
        """Take a new frame; return the answer to make now, or None while it waits."""
        self.last_image = frame.received
        self.pending = None                # a waiting frame is overtaken by this newer one
        if not self.by_stamp:
            return Answer(frame, self.odometry.latest)
        pose = self.odometry.match(frame.stamp)
        if pose is None:                   # its odometry is on the way (or lost)
            self.pending = frame
            return None
        return Answer(frame, pose)

    def on_odometry(self, stamp: int, pose: Pose, now: float) -> Answer | None:
        """Take a pose; return the answer to the waiting frame it completes, if any."""
        self.last_odometry = now
        self.odometry.add(stamp, pose)
        if self.pending is None:
            return None
        match = self.odometry.match(self.pending.stamp)
        if match is None:
            return None
        frame, self.pending = self.pending, None
        return Answer(frame, match)

    def on_tick(self, now: float) -> Answer | None:
        """Return the answer to a frame that waited ``sync_timeout`` (the nearest pose)."""
        if self.pending is None or now - self.pending.received <= self.sync_timeout:
            return None
        frame, self.pending = self.pending, None
        return Answer(frame, self.odometry.nearest(frame.stamp), late=True)

    def answered(self, stamp: int, control) -> None:
        self.last_answer = (stamp, control)

    def stale_reason(self, now: float, timeout: float, since: float = -1.0) -> str | None:
        """Say why input is stale; arrivals count from ``since`` at the earliest (a hold)."""
        last_image, last_odometry = (None if last is None else max(last, since)
                                     for last in (self.last_image, self.last_odometry))
        return stale_input_reason(now, last_image, last_odometry, timeout)
