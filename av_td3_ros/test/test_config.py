"""TD3Config: DESIGN §6 defaults, validation, YAML (flat and ROS params file), parameter info."""

import dataclasses
import json
from pathlib import Path

from av_td3_ros.driving.observation import ObservationSpec
from av_td3_ros.learning.config import TD3Config
import pytest
import yaml

CONFIG_YAML = Path(__file__).resolve().parents[1] / 'config' / 'td3.yaml'


def test_defaults_are_design_section_6():
    c = TD3Config()
    assert (c.gamma, c.tau, c.policy_delay, c.target_noise, c.noise_clip) == (
        0.99, 0.005, 2, 0.2, 0.5)
    assert (c.actor_lr, c.critic_lr, c.batch_size, c.hidden) == (3e-4, 3e-4, 256, (256, 256))
    assert (c.exploration_noise, c.learning_starts, c.features_dim) == (0.1, 10_000, 512)
    assert c.cnn == 'nature' and c.precision == 'auto' and c.device == 'cpu'
    assert c.obs == ObservationSpec() and c.obs.vector_dim == 53


@pytest.mark.parametrize('field,value', [
    ('gamma', 1.5), ('tau', 0.0), ('batch_size', 0), ('policy_delay', 0),
    ('cnn', 'resnet'), ('precision', 'fp16'), ('actor_lr', float('nan')),
    ('batch_size', 2.5), ('learning_starts', True), ('device', ''), ('device', 'gpu0'),
    ('grad_clip_norm', -1.0),
])
def test_out_of_range_values_name_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        TD3Config(**{field: value})


def test_hidden_and_cross_field_checks():
    with pytest.raises(ValueError, match='hidden'):
        TD3Config(hidden=())
    with pytest.raises(ValueError, match='spi_error_buffer'):
        TD3Config(samples_per_insert=1000.0, spi_error_buffer=10.0)
    with pytest.raises(ValueError, match='image_size'):
        TD3Config(cnn='legacy', obs=ObservationSpec(image_size=64))
    assert TD3Config(samples_per_insert=0.0, spi_error_buffer=0.0).updates_per_insert == 0.0


def test_grad_clip_zero_or_none_disables_and_ints_become_floats():
    assert TD3Config(grad_clip_norm=0).grad_clip_norm is None
    assert TD3Config(grad_clip_norm=None).grad_clip_norm is None
    c = TD3Config(max_action=2, gamma=1)
    assert isinstance(c.max_action, float) and isinstance(c.gamma, float)


def test_dict_round_trip_is_plain_json_and_unknown_keys_fail():
    c = TD3Config(cnn='legacy', hidden=(64, 32), obs=ObservationSpec(
        n_waypoints=10, image_scaling='minus_one_one'), grad_clip_norm=None)
    data = json.loads(json.dumps(c.to_dict()))
    assert TD3Config.from_dict(data) == c
    with pytest.raises(ValueError, match='gama'):
        TD3Config.from_dict({**data, 'gama': 0.9})
    with pytest.raises(ValueError, match='unknown observation spec keys'):
        TD3Config.from_dict({**data, 'obs': {**data['obs'], 'colour': 1}})
    assert c.replace(batch_size=32).batch_size == 32
    with pytest.raises(ValueError, match='batch_size'):
        c.replace(batch_size=-1)


def test_shipped_yaml_holds_every_field_with_the_defaults():
    raw = yaml.safe_load(CONFIG_YAML.read_text())
    params = raw['/**']['ros__parameters']
    names = {f.name for f in dataclasses.fields(TD3Config)}
    assert set(params) == names
    assert set(params['obs']) == set(ObservationSpec.__dataclass_fields__)
    assert TD3Config.from_yaml(CONFIG_YAML) == TD3Config()
    # every hyperparameter line is commented
    for line in CONFIG_YAML.read_text().splitlines():
        if ':' in line and not line.strip().startswith('#') and 'ros__parameters' not in line \
                and line.strip() not in ('/**:', 'obs:'):
            assert '#' in line, f'uncommented line in td3.yaml: {line!r}'


def test_from_yaml_flat_file_and_errors_name_the_file(tmp_path):
    flat = tmp_path / 'flat.yaml'
    flat.write_text('batch_size: 64\nobs:\n  n_waypoints: 10\n')
    c = TD3Config.from_yaml(flat)
    assert c.batch_size == 64 and c.obs.vector_dim == 23
    bad = tmp_path / 'bad.yaml'
    bad.write_text('tau: 7\n')
    with pytest.raises(ValueError, match=r'bad\.yaml.*tau'):
        TD3Config.from_yaml(bad)


def test_parameter_info_covers_every_scalar_field():
    infos = {p.name: p for p in TD3Config.parameter_info()}
    scalar = {f.name for f in dataclasses.fields(TD3Config)} - {'obs', 'hidden'}
    assert set(infos) == scalar
    defaults = TD3Config()
    for name, info in infos.items():
        assert info.description
        expected = getattr(defaults, name)
        assert info.default == (0.0 if expected is None else expected)
        if isinstance(info.default, (int, float)):
            assert info.min_value is not None and info.max_value is not None
            assert info.min_value <= info.default <= info.max_value
    assert 'nature' in infos['cnn'].description and 'legacy' in infos['cnn'].description
    assert infos['gamma'].limits == (0.0, 1.0) and infos['gamma'].choices == ()
    assert 'nature' in infos['cnn'].choices and infos['cnn'].limits == infos['cnn'].choices
