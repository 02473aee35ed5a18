"""The demo's progress line says when the actor waits for the learner's rate limit."""

import time

from av_td3_interfaces.msg import TrainerStats
from av_td3_ros.apps.demo import Progress


def test_progress_line_names_the_rate_limit_wait_only_when_there_is_one():
    progress = Progress(time.monotonic(), time.monotonic() + 60)
    progress._tty = False
    stats = TrainerStats(total_it=10, samples_per_insert=32.0, insert_allowance=0)
    waiting = progress.line(100, [], stats, waiting=0.75)
    assert 'actor waiting for the learner (rate limit) 75% of the time' in waiting
    assert 'waiting' not in progress.line(120, [], stats, waiting=0.0)
    assert 'waiting' not in progress.line(140, [], stats)
