"""Input pairing without ROS: which pose answers which frame, when, and staleness."""

from av_td3_ros.driving.actor_core import Pose
from av_td3_ros.driving.pairing import Frame, InputPairing
import numpy as np

MS = 1_000_000
GRAY = np.zeros((84, 84), np.uint8)


def pose(x: float) -> Pose:
    return Pose(x, 0.0, 0.0, 1.0)


def frame(stamp: int, received: float = 0.0) -> Frame:
    return Frame(stamp, GRAY, received)


def test_a_frame_waits_for_the_odometry_of_its_stamp_whichever_comes_first():
    pairing = InputPairing(by_stamp=True, sync_timeout=0.1)
    pairing.on_odometry(0, pose(0.0), 0.0)
    assert pairing.on_image(frame(50 * MS)) is None            # its odometry comes next
    answer = pairing.on_odometry(50 * MS, pose(5.0), 0.01)
    assert answer.frame.stamp == 50 * MS and answer.pose.x == 5.0 and not answer.late
    assert pairing.pending is None
    pairing.on_odometry(100 * MS, pose(10.0), 0.05)            # odometry first this time
    assert pairing.on_image(frame(100 * MS)).pose.x == 10.0


def test_a_frame_whose_odometry_never_comes_is_answered_after_sync_timeout():
    pairing = InputPairing(by_stamp=True, sync_timeout=0.1)
    pairing.on_odometry(0, pose(0.0), 0.0)
    pairing.on_odometry(50 * MS, pose(5.0), 0.0)
    assert pairing.on_image(frame(200 * MS, received=1.0)) is None
    assert pairing.on_tick(1.05) is None                       # still within the wait
    late = pairing.on_tick(1.2)
    assert late.late and late.frame.stamp == 200 * MS and late.pose.x == 5.0
    assert pairing.on_tick(1.3) is None                        # answered once


def test_a_newer_frame_overtakes_a_waiting_one():
    pairing = InputPairing(by_stamp=True)
    pairing.on_odometry(0, pose(0.0), 0.0)
    assert pairing.on_image(frame(100 * MS)) is None
    assert pairing.on_image(frame(200 * MS)) is None
    answer = pairing.on_odometry(200 * MS, pose(2.0), 0.0)
    assert answer.frame.stamp == 200 * MS                      # the older one is dropped


def test_latest_mode_takes_the_newest_pose_whatever_its_stamp():
    pairing = InputPairing(by_stamp=False)
    assert pairing.on_image(frame(10)).pose is None            # none yet: the actor brakes
    pairing.on_odometry(999 * MS, pose(9.0), 0.0)
    pairing.on_odometry(5 * MS, pose(1.0), 0.0)
    assert pairing.on_image(frame(10)).pose.x == 1.0


def test_a_re_published_frame_gets_the_control_already_sent():
    pairing = InputPairing()
    assert pairing.repeated(7) is None
    pairing.answered(7, 'control of 7')
    assert pairing.repeated(7) == 'control of 7'
    assert pairing.repeated(8) is None and pairing.repeated(0) is None   # 0: unstamped


def test_stale_input_counts_from_a_released_hold():
    pairing = InputPairing()
    assert pairing.stale_reason(0.0, 0.5) == 'no camera image received yet'
    pairing.on_image(frame(1, received=1.0))
    assert pairing.stale_reason(1.0, 0.5) == 'no odometry received yet'
    pairing.on_odometry(1, pose(0.0), 1.0)
    assert pairing.stale_reason(1.4, 0.5) is None
    assert 'no camera image within' in pairing.stale_reason(2.0, 0.5)
    assert pairing.stale_reason(2.0, 0.5, since=1.8) is None   # the hold ended at 1.8
