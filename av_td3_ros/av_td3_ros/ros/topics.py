"""
Topic names of the graph (DESIGN §4): one place for nodes, tools, launch files and tests.

Per-vehicle topics live under the vehicle's ``role_name``, as carla-ros-bridge names its ego
vehicles: ``/carla/<role_name>/...`` and ``/av_td3/<role_name>/step_feedback`` (the default
role keeps ``/av_td3/step_feedback``). The learner's topics are shared by every actor, so N
actors on any number of machines feed one trainer. Plain Python: launch files import it too.
"""

from __future__ import annotations

from dataclasses import dataclass
import re

DEFAULT_ROLE = 'ego_vehicle'
TRANSITIONS = '/av_td3/transitions'
POLICY_WEIGHTS = '/av_td3/policy_weights'
TRAINER_STATS = '/av_td3_trainer/stats'
DIAGNOSTICS = '/diagnostics'

# a ROS name token (what carla-ros-bridge accepts as a role name in a topic)
_ROLE = re.compile(r'[A-Za-z][A-Za-z0-9_]*')


def check_role_name(role_name: str) -> str:
    """Return ``role_name`` if it can stand in a topic name; raise ValueError otherwise."""
    if not _ROLE.fullmatch(role_name):
        raise ValueError(f'role_name must be a letter followed by letters, digits or '
                         f'underscores (it names topics), got {role_name!r}')
    return role_name


@dataclass(frozen=True)
class VehicleTopics:
    """The topics and frames of one vehicle (sensors, control, episode feedback)."""

    role_name: str = DEFAULT_ROLE

    def __post_init__(self) -> None:
        check_role_name(self.role_name)

    @property
    def prefix(self) -> str:
        return f'/carla/{self.role_name}'

    @property
    def image(self) -> str:
        return f'{self.prefix}/rgb_front/image'

    @property
    def camera_info(self) -> str:
        return f'{self.prefix}/rgb_front/camera_info'

    @property
    def odometry(self) -> str:
        return f'{self.prefix}/odometry'

    @property
    def speedometer(self) -> str:
        return f'{self.prefix}/speedometer'

    @property
    def waypoints(self) -> str:
        return f'{self.prefix}/waypoints'

    @property
    def control(self) -> str:
        return f'{self.prefix}/vehicle_control_cmd'

    @property
    def collision(self) -> str:
        return f'{self.prefix}/collision'

    @property
    def lane_invasion(self) -> str:
        return f'{self.prefix}/lane_invasion'

    @property
    def step_feedback(self) -> str:
        if self.role_name == DEFAULT_ROLE:
            return '/av_td3/step_feedback'
        return f'/av_td3/{self.role_name}/step_feedback'

    @property
    def vehicle_frame(self) -> str:
        """Frame id of the vehicle (odometry child frame), as the bridge names it."""
        return self.role_name

    @property
    def camera_frame(self) -> str:
        return f'{self.role_name}/rgb_front'
