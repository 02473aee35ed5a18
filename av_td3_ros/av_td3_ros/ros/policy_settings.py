"""
The policy node's parameters: one table (defaults, descriptions, limits) and their validation.

The node declares ``PARAMETERS`` (a :class:`~av_td3_ros.ros.common.ParameterTable`) and turns
the values it reads into :class:`Settings` with ``read_settings``, once per configure.
``config/policy.yaml`` and the tests use the same table.
"""

from __future__ import annotations

from dataclasses import dataclass
import os
import socket

from av_td3_ros.driving.actor_core import ActorCore
from av_td3_ros.ros.common import (
    check_role_name, DEFAULT_ROLE, ParameterTable, STRING_ARRAY, TRAINER_STATS, VehicleTopics)
from av_td3_ros.ros.policy_messages import CONTROL_OUTPUTS
import torch

MODES = ('deploy', 'train')         # the deprecated ``mode`` parameter's values
RELIABILITIES = ('reliable', 'best_effort')
ODOMETRY_SYNCS = ('stamp', 'latest')


# name -> (default, description, (min, max) or allowed strings or None). One table, so that the
# declarations, config/policy.yaml and the tests agree.
PARAMETERS = ParameterTable({
    'autostart': (True, 'configure and activate on start; false leaves the node unconfigured '
                  'for a lifecycle manager', None),
    'role_name': (DEFAULT_ROLE, "the vehicle's role name: camera, odometry, route and "
                  'control are /carla/<role_name>/..., step feedback '
                  '/av_td3/<role_name>/step_feedback (default role: /av_td3/step_feedback); '
                  'remap them to fit another stack', None),
    'train': (False, 'false: deploy, the deterministic policy; true: act for training '
              '(exploration noise, transitions published, weights taken from policy_weights)',
              None),
    'mode': ('', 'deprecated, use train: deploy (train:=false) or train (train:=true); '
             'empty: not given', ('', *MODES)),
    'checkpoint_path': ('', 'checkpoint (.pth v1 or legacy) or policy export (.safetensors) '
                        'loaded on configure; relative paths resolve against checkpoint_dir; '
                        'empty: none (deploy mode then holds the vehicle braked)', None),
    'checkpoint_dir': ('checkpoints', 'directory of checkpoints: base of relative paths and '
                       'of ~/load_checkpoint with an empty path (newest file)', None),
    'allowed_checkpoint_dirs': (STRING_ARRAY, 'further directories '
                                '~/load_checkpoint may read from (checkpoint_dir always may); '
                                'empty strings are ignored', None),
    'device': ('cpu', 'torch device for inference (cpu, cuda, cuda:1, ...)', None),
    'num_threads': (1, 'torch intra-op threads for inference (process-wide); 0 leaves the '
                    'torch default (use 0 when sharing a process with the trainer)', (0, 256)),
    'control_output': ('native', 'native: av_td3_interfaces/VehicleControl; carla: '
                       'carla_msgs/CarlaEgoVehicleControl; twist: geometry_msgs/Twist for '
                       'carla_twist_to_control', CONTROL_OUTPUTS),
    'twist_max_steer_angle': (1.2217304763960306, 'twist output: max steering angle of the '
                              'vehicle in rad (carla_twist_to_control reads it from '
                              'vehicle_info; 70 deg by default)', (0.01, 3.15)),
    'image_qos_reliability': ('reliable', 'camera subscription reliability (DESIGN §4: '
                              'reliable keep-last-1 with the LARGE_DATA transport)',
                              RELIABILITIES),
    'image_qos_depth': (1, 'camera subscription queue depth (keep-last)', (1, 100)),
    'odometry_sync': ('stamp', 'stamp: pair each image with the odometry of the same stamp '
                      '(synchronous simulators); latest: use the newest odometry', ODOMETRY_SYNCS),
    'sync_timeout': (0.1, 'stamp pairing: answer an image with the nearest odometry after '
                     'waiting this long (s) for the one of its stamp', (0.0, 10.0)),
    'input_timeout': (0.5, 'watchdog: full brake when no image or odometry arrived within '
                      'this many seconds', (0.01, 60.0)),
    'exploration_noise': (0.1, 'train mode: std of the Gaussian action noise (times '
                          'max_action)', (0.0, 10.0)),
    'exploration_noise_final': (0.1, 'train mode: noise std (times max_action) reached after '
                                'exploration_noise_decay_steps policy actions, decaying '
                                'linearly from exploration_noise', (0.0, 10.0)),
    'exploration_noise_decay_steps': (0, 'train mode: policy actions of this node over which '
                                      'the noise decays; 0 = constant exploration_noise',
                                      (0, 1_000_000_000)),
    'exploration_noise_beta': (0.0, 'train mode: colour of the exploration noise, power '
                               'spectrum 1/f^beta: 0 white Gaussian (TD3), 1 pink, 2 red; '
                               'colored noise is drawn as one sequence per episode', (0.0, 3.0)),
    'seed': (-1, 'seed of the exploration noise; -1: from the OS', (-1, 2**31 - 1)),
    'actor_id': ('', 'stream id in the transitions; empty: host:pid/namespace/name', None),
    'trainer_stats_topic': (TRAINER_STATS, 'train mode: TrainerStats of the learner, '
                            'whose insert_allowance rate-limits this actor', None),
    'diagnostics_period': (1.0, 'seconds between /diagnostics messages', (0.1, 60.0)),
})


@dataclass(frozen=True)
class Settings:
    """The validated parameters, read once per configure."""

    topics: VehicleTopics
    train: bool
    checkpoint_path: str
    checkpoint_dir: str
    allowed_dirs: list[str]
    device: str
    num_threads: int
    control_output: str
    twist_max_steer_angle: float
    image_reliable: bool
    image_depth: int
    odometry_by_stamp: bool
    sync_timeout: float
    input_timeout: float
    exploration_noise: float
    exploration_noise_final: float
    exploration_noise_decay_steps: int
    exploration_noise_beta: float
    seed: int | None
    actor_id: str
    trainer_stats_topic: str
    diagnostics_period: float
    deprecations: tuple[str, ...] = ()     # one log line each, said on configure


def read_settings(value: dict, fully_qualified_name: str) -> Settings:
    """
    Validate the parameter values (name -> value); raise ValueError naming the bad one.

    ``fully_qualified_name`` (the node's) makes the default ``actor_id``. The deprecated
    ``mode``, when given, decides over ``train`` and says so in ``deprecations``.
    """
    value = PARAMETERS.validate(value)
    train, deprecations = value['train'], ()
    if value['mode']:
        train = value['mode'] == 'train'
        deprecations = (f'parameter mode is deprecated: use train:={str(train).lower()} '
                        f'(mode:={value["mode"]} taken)',)
    if not value['checkpoint_dir']:
        raise ValueError('parameter checkpoint_dir must not be empty')
    check_role_name(value['role_name'])
    for name in ('trainer_stats_topic', 'device'):
        if not value[name]:
            raise ValueError(f'parameter {name} must not be empty')
    try:
        torch.device(value['device'])
    except RuntimeError as exc:
        raise ValueError(f'parameter device: {exc}') from None
    actor_id = value['actor_id'] or (
        f'{socket.gethostname()}:{os.getpid()}{fully_qualified_name}')
    return Settings(
        topics=VehicleTopics(value['role_name']),
        train=train,
        checkpoint_path=value['checkpoint_path'],
        checkpoint_dir=value['checkpoint_dir'],
        allowed_dirs=[d for d in value['allowed_checkpoint_dirs'] if d],
        device=value['device'],
        num_threads=value['num_threads'],
        control_output=value['control_output'],
        twist_max_steer_angle=value['twist_max_steer_angle'],
        image_reliable=value['image_qos_reliability'] == 'reliable',
        image_depth=value['image_qos_depth'],
        odometry_by_stamp=value['odometry_sync'] == 'stamp',
        sync_timeout=value['sync_timeout'],
        input_timeout=value['input_timeout'],
        exploration_noise=value['exploration_noise'],
        exploration_noise_final=value['exploration_noise_final'],
        exploration_noise_decay_steps=value['exploration_noise_decay_steps'],
        exploration_noise_beta=value['exploration_noise_beta'],
        seed=None if value['seed'] < 0 else value['seed'],
        actor_id=actor_id,
        trainer_stats_topic=value['trainer_stats_topic'],
        diagnostics_period=value['diagnostics_period'],
        deprecations=deprecations)


def camera_qos_advice(topic: str, policy: str, reliable: bool) -> str:
    """
    Say why the camera subscription matches no publisher and which parameter to set.

    ``policy`` names the incompatible QoS policy (``RELIABILITY``, or rmw's
    ``rmw_qos_policy_reliability`` as rclpy's event gives it, ``DURABILITY``, ...).
    The usual case: a camera driver that offers sensor-data QoS (best effort) while the node
    asks for reliable delivery; the node then never gets a frame and brakes for "no image".
    """
    policy = policy.upper().removeprefix('RMW_QOS_POLICY_')
    message = (f'camera {topic}: a publisher offers QoS incompatible with this subscription '
               f'({policy.lower()}); no frame of it will arrive')
    if policy == 'RELIABILITY' and reliable:
        return (f'{message}. It publishes best effort (sensor-data QoS, as most camera drivers '
                f'do): set image_qos_reliability:=best_effort')
    return f"{message}. Check the publisher's QoS and image_qos_reliability / image_qos_depth"


def actor_core(settings: Settings) -> ActorCore:
    """Build a fresh actor as the settings of one configuration ask (no policy yet)."""
    return ActorCore(train=settings.train, exploration_noise=settings.exploration_noise,
                     exploration_noise_final=settings.exploration_noise_final,
                     exploration_noise_decay_steps=settings.exploration_noise_decay_steps,
                     exploration_noise_beta=settings.exploration_noise_beta,
                     seed=settings.seed, stamp_gap_reset_ns=int(settings.input_timeout * 1e9))
