"""The policy node's parameter table and its validation, without ROS."""

from av_td3_ros.ros.policy_settings import (
    actor_core, camera_qos_advice, PARAMETERS, read_settings)
import pytest


def defaults() -> dict:
    return PARAMETERS.defaults()


def test_the_defaults_make_valid_settings():
    settings = read_settings(defaults(), '/car1/av_td3_policy')
    assert settings.topics.image == '/carla/ego_vehicle/rgb_front/image'
    assert not settings.train and settings.control_output == 'native'
    assert settings.image_reliable and settings.image_depth == 1
    assert settings.odometry_by_stamp and settings.seed is None
    assert settings.actor_id.endswith('/car1/av_td3_policy')


def test_values_are_translated():
    value = defaults() | {'train': True, 'image_qos_reliability': 'best_effort',
                          'image_qos_depth': 5, 'odometry_sync': 'latest', 'seed': 3,
                          'allowed_checkpoint_dirs': ['', '/models'], 'actor_id': 'me',
                          'role_name': 'car7'}
    settings = read_settings(value, '/x')
    assert settings.train and not settings.image_reliable and settings.image_depth == 5
    assert not settings.odometry_by_stamp and settings.seed == 3
    assert settings.allowed_dirs == ['/models'] and settings.actor_id == 'me'
    assert settings.topics.control == '/carla/car7/vehicle_control_cmd'
    assert settings.deprecations == ()


@pytest.mark.parametrize('mode,train', [('train', True), ('deploy', False)])
def test_the_deprecated_mode_still_decides_and_says_so(mode, train):
    settings = read_settings(defaults() | {'mode': mode, 'train': not train}, '/x')
    assert settings.train is train
    assert settings.deprecations == (
        f'parameter mode is deprecated: use train:={str(train).lower()} (mode:={mode} taken)',)


def test_the_actor_explores_as_the_settings_say():
    value = defaults() | {'train': True, 'exploration_noise': 0.3,
                          'exploration_noise_beta': 1.0, 'seed': 3}
    core = actor_core(read_settings(value, '/x'))
    assert core.train and core.exploration_std() == 0.3
    assert core._noise.beta == 1.0


@pytest.mark.parametrize('name,value,says', [
    ('mode', 'race', "mode must be one of '', deploy, train"),
    ('control_output', 'ackermann', 'control_output must be one of'),
    ('image_qos_reliability', 'sometimes', 'image_qos_reliability must be one of'),
    ('checkpoint_dir', '', 'checkpoint_dir must not be empty'),
    ('device', 'gpu7', 'parameter device'),
    ('role_name', 'car-1', 'role_name must be'),
    ('trainer_stats_topic', '', 'trainer_stats_topic must not be empty'),
])
def test_bad_values_are_refused_naming_the_parameter(name, value, says):
    with pytest.raises(ValueError, match=says):
        read_settings(defaults() | {name: value}, '/x')


def test_descriptors_carry_the_limits():
    descriptor = PARAMETERS.descriptor
    assert descriptor('mode').additional_constraints == "one of: '', deploy, train"
    assert 'deprecated, use train' in descriptor('mode').description
    timeout = descriptor('input_timeout').floating_point_range[0]
    assert (timeout.from_value, timeout.to_value) == (0.01, 60.0)
    depth = descriptor('image_qos_depth').integer_range[0]
    assert (depth.from_value, depth.to_value) == (1, 100)
    assert 'lifecycle manager' in descriptor('autostart').description


def test_camera_qos_advice_names_the_parameter_to_set():
    advice = camera_qos_advice('/carla/ego_vehicle/rgb_front/image', 'RELIABILITY', True)
    assert '/carla/ego_vehicle/rgb_front/image' in advice
    assert 'set image_qos_reliability:=best_effort' in advice
    assert advice == camera_qos_advice('/carla/ego_vehicle/rgb_front/image',
                                       'rmw_qos_policy_reliability', True)   # rclpy's name
    other = camera_qos_advice('/cam', 'DURABILITY', True)
    assert 'durability' in other and 'image_qos_reliability' in other
    assert ':=best_effort' not in other
