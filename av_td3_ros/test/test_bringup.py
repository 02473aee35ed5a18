"""bringup: parameter precedence like a launch file, clear refusals, the CLI's one-line errors."""

from av_td3_ros.nodes import bringup
from av_td3_ros.nodes.bringup import Bringup, parse_set
import pytest

pytestmark = pytest.mark.ros


def test_parse_set_reads_values_as_yaml():
    assert parse_set(['a.b=3', 'a.c=0.5', 'a.d=true', 'x.y=[1, 2]', 'x.obs.image_size=84',
                      'x.s=text', 'x.e=']) == {
        'a': {'b': 3, 'c': 0.5, 'd': True},
        'x': {'y': [1, 2], 'obs.image_size': 84, 's': 'text', 'e': ''}}
    for bad in ('noequals', 'nodot=1', '.p=1', 'n.=1'):
        with pytest.raises(ValueError, match=r'NODE\.PARAM=VALUE'):
            parse_set([bad])


def test_precedence_node_yaml_then_params_files_then_fixed_then_set(tmp_path):
    first = tmp_path / 'first.yaml'
    first.write_text('/**/av_td3_policy:\n  ros__parameters:\n'
                     '    input_timeout: 2.0\n    diagnostics_period: 3.0\n    mode: train\n')
    second = tmp_path / 'second.yaml'
    second.write_text('av_td3_policy:\n  ros__parameters:\n    diagnostics_period: 4.0\n')
    overrides = {'av_td3_policy': {'input_timeout': 5.0, 'autostart': False}}
    graph = Bringup('drive', [first, second], overrides)
    try:
        node = graph.nodes['av_td3_policy']
        value = {n: node.get_parameter(n).value for n in
                 ('input_timeout', 'diagnostics_period', 'mode', 'control_output')}
    finally:
        graph.shutdown()
    assert value == {'input_timeout': 5.0,          # --set beats the files
                     'diagnostics_period': 4.0,     # the later file beats the earlier one
                     'mode': 'deploy',              # drive's fixed value beats the files
                     'control_output': 'native'}    # config/policy.yaml


def test_refusals(tmp_path):
    with pytest.raises(ValueError, match='unknown configuration'):
        Bringup('nope')
    with pytest.raises(ValueError, match='not in drive'):
        Bringup('drive', overrides={'av_td3_trainer': {'batch_size': 1}})
    with pytest.raises(FileNotFoundError):
        Bringup('drive', [tmp_path / 'missing.yaml'])
    with pytest.raises(ValueError, match='no parameter'):
        Bringup('drive', overrides={'av_td3_policy': {'no_such_parameter': 1,
                                                      'autostart': False}})


def test_cli_says_what_is_wrong_in_one_line(capsys):
    with pytest.raises(SystemExit) as exit_info:
        bringup.main(['drive', '--set', 'av_td3_policy.input_timeout=-1',
                      '--set', 'av_td3_policy.autostart=false'])
    assert exit_info.value.code == 2
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and out[0].startswith('[bringup] cannot start drive:')
    assert 'input_timeout' in out[0]
