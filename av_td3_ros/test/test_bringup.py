"""bringup: parameter precedence like a launch file, refusals, several actors, node processes."""

import os
from pathlib import Path
import signal
import subprocess
import threading
import time

from ament_index_python.packages import get_package_prefix
from av_td3_ros.ros import bringup
from av_td3_ros.ros.bringup import Bringup, parse_set
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
                     '    input_timeout: 2.0\n    diagnostics_period: 3.0\n    train: true\n')
    second = tmp_path / 'second.yaml'
    second.write_text('av_td3_policy:\n  ros__parameters:\n    diagnostics_period: 4.0\n')
    overrides = {'av_td3_policy': {'input_timeout': 5.0, 'autostart': False}}
    graph = Bringup('drive', [first, second], overrides)
    try:
        node = graph.nodes['av_td3_policy']
        value = {n: node.get_parameter(n).value for n in
                 ('input_timeout', 'diagnostics_period', 'train', 'control_output')}
    finally:
        graph.shutdown()
    assert value == {'input_timeout': 5.0,          # --set beats the files
                     'diagnostics_period': 4.0,     # the later file beats the earlier one
                     'train': False,                # drive's fixed value beats the files
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
        bringup.main(['drive', '--in-process', '--set', 'av_td3_policy.input_timeout=-1',
                      '--set', 'av_td3_policy.autostart=false'])
    assert exit_info.value.code == 2
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and out[0].startswith('[bringup] cannot start drive:')
    assert 'input_timeout' in out[0]


def test_plan_of_several_actors_namespaces_each_pair_and_shares_the_trainer():
    nodes = bringup.plan('train_sim', {'av_td3_sim': {'scenario': 1},
                                       'car1/av_td3_sim': {'seed': 4}},
                         roles=['car0', 'car1'])
    by_key = {n.key: n for n in nodes}
    assert sorted(by_key) == ['av_td3_trainer', 'car0/av_td3_policy', 'car0/av_td3_sim',
                              'car1/av_td3_policy', 'car1/av_td3_sim']
    assert by_key['car1/av_td3_sim'].params == {'role_name': 'car1', 'scenario': 1, 'seed': 4}
    assert by_key['car0/av_td3_sim'].params == {'role_name': 'car0', 'scenario': 1}
    assert by_key['car0/av_td3_policy'].params == {'train': True, 'role_name': 'car0'}
    assert by_key['av_td3_trainer'].namespace == '' and 'role_name' not in \
        by_key['av_td3_trainer'].params
    # one actor with the default role: the names of DESIGN §4, role_name left to the files
    default = bringup.plan('train_sim')
    assert [n.key for n in default] == ['av_td3_sim', 'av_td3_policy', 'av_td3_trainer']
    assert all('role_name' not in n.params for n in default)
    assert bringup.actor_roles(2, 'hostA_car') == ['hostA_car0', 'hostA_car1']
    with pytest.raises(ValueError, match='distinct'):
        bringup.actor_roles(roles=['a', 'a'])
    with pytest.raises(ValueError, match='role_name'):
        bringup.actor_roles(roles=['bad/name'])
    with pytest.raises(ValueError, match='not in train_sim'):
        bringup.plan('train_sim', {'car9/av_td3_sim': {'seed': 1}}, roles=['car0', 'car1'])


def _bringup_cli(*args: str) -> subprocess.Popen:
    script = Path(get_package_prefix('av_td3_ros')) / 'lib' / 'av_td3_ros' / 'bringup'
    return subprocess.Popen([str(script), *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def test_processes_a_node_that_cannot_start_ends_bringup_with_its_code():
    run = _bringup_cli('drive', '--set', 'av_td3_policy.input_timeout=-1')
    out, _ = run.communicate(timeout=120)
    assert run.returncode == 1, out          # every node's "cannot start" status
    assert 'cannot start: ' in out and 'input_timeout' in out
    assert f'[bringup] av_td3_policy exited with code {run.returncode}' in out
    assert 'Traceback' not in out, out


def test_processes_refuse_an_undeclared_parameter_before_starting_anything():
    run = _bringup_cli('drive', '--set', 'av_td3_policy.no_such_parameter=1')
    out, _ = run.communicate(timeout=60)
    assert run.returncode == 2
    assert out.strip().splitlines() == [
        '[bringup] cannot start drive: av_td3_policy has no parameter(s) no_such_parameter']


def test_processes_sigint_stops_every_node_cleanly():
    run = _bringup_cli('drive', '--set', 'av_td3_policy.diagnostics_period=0.2')
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(run.stdout), daemon=True)
    reader.start()
    deadline = time.monotonic() + 60
    while not any('[av_td3_policy]' in line and 'active' in line for line in list(lines)):
        assert time.monotonic() < deadline and run.poll() is None, ''.join(lines)
        time.sleep(0.1)
    pid = int(next(line for line in lines if 'started av_td3_policy' in line)
              .split('pid ')[1].rstrip(')\n'))
    run.send_signal(signal.SIGINT)
    assert run.wait(timeout=30) == 0, ''.join(lines)
    reader.join(timeout=5)
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)              # the node is gone with bringup
    assert 'Traceback' not in ''.join(lines)
