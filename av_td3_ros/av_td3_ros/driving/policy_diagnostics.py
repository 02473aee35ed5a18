"""
What the policy node reports on /diagnostics: its level, message and values, without ROS.

The node counts events and timings in :class:`ActorStats` as it works; every
``diagnostics_period`` it asks ``policy_status`` for the level and message and
``policy_values`` for the key/value pairs, and publishes them as a DiagnosticStatus.
"""

from __future__ import annotations

from av_td3_ros.driving.actor_core import InsertBudget, NO_POLICY_REASON, RollingStats

COUNTERS = ('frames_answered', 'images_refused', 'odometry_refused', 'waypoints_refused',
            'weights_refused', 'transitions_published', 'watchdog_brakes', 'frames_superseded',
            'frames_repeated')
HOLD_MESSAGE = ('holding the control: the insert allowance of the learner is used up '
                '(waiting for fresh trainer stats)')


class ActorStats:
    """Counters and rolling rates/timings of one configuration of the node."""

    def __init__(self) -> None:
        self.counts = dict.fromkeys(COUNTERS, 0)
        self.image = RollingStats()           # arrivals
        self.odometry = RollingStats()        # arrivals
        self.latency = RollingStats()         # image callback -> control published, s
        self.inference = RollingStats()       # the networks, s

    def answered(self, now: float, received: float, inference_s: float) -> None:
        """Count a frame answered at ``now`` that arrived at ``received``."""
        self.counts['frames_answered'] += 1
        self.latency.add(now, now - received)
        if inference_s > 0:
            self.inference.add(now, inference_s)


def policy_status(held: bool, brake_reason: str | None, train: bool, has_policy: bool,
                  load_error: str) -> tuple[str, str]:
    """
    Return (level name: OK, WARN or ERROR; message) of the node.

    WARN while holding the control for the learner, ERROR while braking (with the reason, and
    in deploy mode without a policy also that cause behind it), OK while driving.
    """
    if held:
        return 'WARN', HOLD_MESSAGE
    if brake_reason is not None:
        reasons = [brake_reason]
        if not train and not has_policy and NO_POLICY_REASON not in brake_reason:
            reasons.append(f'{load_error}; {NO_POLICY_REASON}'.lstrip('; '))
        return 'ERROR', 'full brake: ' + '; '.join(reasons)
    return 'OK', 'driving'


def policy_values(stats: ActorStats, now: float, *, train: bool, control_output: str,
                  policy_info, load_error: str, policy_version: int,
                  budget: InsertBudget) -> dict[str, str]:
    """Return the diagnostics values (docs/policy_node.md, Diagnostics), all strings."""
    info = policy_info

    def ms(rolling: RollingStats, q: float) -> str:
        return f'{rolling.percentile(q) * 1e3:.2f}'
    return {
        'mode': 'train' if train else 'deploy',
        'control_output': control_output,
        'image_rate_hz': f'{stats.image.rate(now):.2f}',
        'odometry_rate_hz': f'{stats.odometry.rate(now):.2f}',
        'inference_ms_p50': ms(stats.inference, 50),
        'inference_ms_p99': ms(stats.inference, 99),
        'image_to_control_ms_p50': ms(stats.latency, 50),
        'image_to_control_ms_p99': ms(stats.latency, 99),
        'checkpoint': info.source if info else (load_error or 'none'),
        'policy_version': str(policy_version),
        'checkpoint_total_it': str(info.total_it) if info else '',
        'checkpoint_sha256': info.sha256 if info else '',
        'insert_allowance': str(budget.allowance),
        'transitions_since_stats': str(budget.since_stats),
        **{name: str(count) for name, count in stats.counts.items()},
    }
